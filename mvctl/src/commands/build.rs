//! `mvctl build [OPTIONS] PATH|URL-less tarball|-`: Dockerfile builds by
//! the daemon (`POST /v1/build`), whose RUN steps run in microVMs.
//!
//! The context is sent as a tarball: a directory is packed here, leaving
//! out what its `.dockerignore` excludes (as the Docker CLI does); a
//! tarball file or stdin (`-`) is sent as is. A Dockerfile given with
//! `-f` outside the context is added to the tarball under a private name.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use mvm_api::images::Progress;
use mvm_api::ApiError;
use serde_json::Value;

use super::credentials;
use super::progress::BuildView;
use super::{CmdError, CmdResult, Ctx};
use crate::client::{Answer, Body, ClientError, Query};

/// Where a Dockerfile from outside the context is put in the tarball.
const OUTSIDE_DOCKERFILE: &str = ".mvm-build.Dockerfile";

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProgressMode {
    /// Plain lines (BuildKit's plain format).
    Plain,
    /// BuildKit's live view (steps with timers, the last output lines of
    /// running steps); needs a terminal on stderr.
    Tty,
    /// Tty when stderr is a terminal (with TERM set, not dumb), plain
    /// otherwise.
    Auto,
}

/// `mvctl build`.
#[derive(Debug, Clone, Args)]
pub struct BuildArgs {
    /// Build context: a directory, a tarball, or - (a tarball on stdin)
    #[arg(value_name = "PATH|-")]
    pub context: String,
    /// Dockerfile (default: PATH/Dockerfile)
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Name and optionally a tag (name:tag); repeatable
    #[arg(short = 't', long = "tag", value_name = "NAME[:TAG]")]
    pub tags: Vec<String>,
    /// Build-time variable; repeatable
    #[arg(long = "build-arg", value_name = "KEY=VALUE")]
    pub build_args: Vec<String>,
    /// Label for the image; repeatable
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Stage to build
    #[arg(long)]
    pub target: Option<String>,
    /// Do not use the build cache
    #[arg(long)]
    pub no_cache: bool,
    /// Network of the RUN steps: default (the default bridge, with
    /// outbound NAT), none (loopback only) or a network's name
    #[arg(long, value_name = "default|none|NAME")]
    pub network: Option<String>,
    /// Progress output
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
    pub progress: ProgressMode,
    /// Print only the image ID
    #[arg(short, long)]
    pub quiet: bool,
}

fn key_values(list: &[String], what: &str) -> Result<BTreeMap<String, String>, CmdError> {
    let mut m = BTreeMap::new();
    for kv in list {
        match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => {
                m.insert(k.to_string(), v.to_string());
            }
            // Docker: `--build-arg NAME` takes the value from the
            // environment.
            None if what == "--build-arg" && !kv.is_empty() => {
                if let Ok(v) = std::env::var(kv) {
                    m.insert(kv.clone(), v);
                }
            }
            _ => return Err(CmdError::Invalid(format!("{what} {kv:?}: use KEY=VALUE"))),
        }
    }
    Ok(m)
}

/// Packs a directory context (and an outside Dockerfile) into memory.
fn pack(dir: &Path, file: Option<&Path>) -> Result<(Vec<u8>, Option<String>), CmdError> {
    let canon_dir = std::fs::canonicalize(dir).map_err(|source| CmdError::Io {
        what: format!("build context {}", dir.display()),
        source,
    })?;
    let mut dockerfile = None;
    let mut outside = None;
    if let Some(f) = file {
        let canon = std::fs::canonicalize(f).map_err(|source| CmdError::Io {
            what: format!("Dockerfile {}", f.display()),
            source,
        })?;
        match canon.strip_prefix(&canon_dir) {
            Ok(rel) => dockerfile = Some(rel.to_string_lossy().into_owned()),
            Err(_) => {
                let data = std::fs::read(&canon).map_err(|source| CmdError::Io {
                    what: format!("reading {}", f.display()),
                    source,
                })?;
                outside = Some(data);
                dockerfile = Some(OUTSIDE_DOCKERFILE.to_string());
            }
        }
    }
    let mut out = Vec::new();
    mvm_build_context::pack_dir(
        &canon_dir,
        dockerfile.as_deref(),
        outside.as_deref().map(|d| (OUTSIDE_DOCKERFILE, d)),
        &mut out,
    )
    .map_err(|e| CmdError::Invalid(e.to_string()))?;
    Ok((out, dockerfile))
}

/// `mvctl build`.
pub async fn build(ctx: &Ctx, a: BuildArgs) -> CmdResult {
    // Progress is drawn on stderr (stdout is for the image ID with -q),
    // and only where the cursor can move: indicatif draws nothing when
    // TERM is unset or `dumb`, so that falls back to plain lines.
    let on_terminal = std::io::stderr().is_terminal()
        && std::env::var("TERM").is_ok_and(|t| !t.is_empty() && t != "dumb");
    let tty = match a.progress {
        ProgressMode::Plain => false,
        ProgressMode::Auto => on_terminal,
        ProgressMode::Tty if on_terminal => true,
        ProgressMode::Tty => {
            return Err(CmdError::Invalid(
                "--progress tty needs a terminal on stderr with TERM set (not dumb); use --progress plain".into(),
            ))
        }
    };
    let build_args = key_values(&a.build_args, "--build-arg")?;
    let labels = key_values(&a.labels, "--label")?;
    let (body, dockerfile) = if a.context == "-" {
        if std::io::stdin().is_terminal() {
            return Err(CmdError::Invalid(
                "build - reads a context tarball from stdin, but stdin is a terminal".into(),
            ));
        }
        let df = a.file.as_ref().map(|f| f.to_string_lossy().into_owned());
        (Body::reader(tokio::io::stdin()), df)
    } else {
        let p = Path::new(&a.context);
        if p.is_dir() {
            let (dir, file) = (p.to_path_buf(), a.file.clone());
            let (data, df) = tokio::task::spawn_blocking(move || pack(&dir, file.as_deref()))
                .await
                .map_err(|e| CmdError::Invalid(e.to_string()))??;
            (Body::full(data), df)
        } else if p.is_file() {
            let f = tokio::fs::File::open(p)
                .await
                .map_err(|source| CmdError::Io {
                    what: format!("cannot open {}", p.display()),
                    source,
                })?;
            let df = a.file.as_ref().map(|f| f.to_string_lossy().into_owned());
            (Body::reader(f), df)
        } else {
            return Err(CmdError::Invalid(format!(
                "build context {:?} is not a directory, a tarball or -",
                a.context
            )));
        }
    };
    let mut q = Query::new("/v1/build");
    for t in &a.tags {
        q = q.push("t", t);
    }
    q = q.opt("dockerfile", dockerfile.as_deref());
    if !build_args.is_empty() {
        q = q.push(
            "buildargs",
            serde_json::to_string(&build_args).unwrap_or_default(),
        );
    }
    if !labels.is_empty() {
        q = q.push("labels", serde_json::to_string(&labels).unwrap_or_default());
    }
    q = q
        .opt("target", a.target.as_deref())
        .opt("network", a.network.as_deref())
        .flag("nocache", a.no_cache);
    // The base images' registries get the user's credentials, for the
    // FROMs the daemon must pull (a tarball context's Dockerfile is not
    // read here: its builds pull anonymously).
    let dockerfile_text = match (Path::new(&a.context).is_dir(), &a.file) {
        (true, Some(f)) => std::fs::read_to_string(f).unwrap_or_default(),
        (true, None) => {
            std::fs::read_to_string(Path::new(&a.context).join("Dockerfile")).unwrap_or_default()
        }
        (false, _) => String::new(),
    };
    let creds = credentials::config_header_for(&credentials::from_images(&dockerfile_text))?;
    let client = ctx.client().await?;
    let answer = client
        .build_image(&q.build(), body, creds.as_deref())
        .await?;
    let mut stream = match answer {
        Answer::Json(v) => return print_result(&v, a.quiet),
        Answer::Progress(s) => s,
    };
    let mut view = (tty && !a.quiet).then(BuildView::new);
    while let Some(p) = stream.next().await? {
        match p {
            Progress::Build { event } if !a.quiet => match view.as_mut() {
                Some(v) => v.event(event),
                None => eprint!("{}", event.plain()),
            },
            Progress::Status { message } if !a.quiet => match view.as_mut() {
                Some(v) => v.message(&message),
                None => eprintln!("{message}"),
            },
            Progress::Error { code, message } => {
                if let Some(v) = view.as_mut() {
                    v.end(false);
                }
                return Err(ClientError::Api(ApiError::new(code, message)).into());
            }
            Progress::Result { value } => {
                if let Some(v) = view.as_mut() {
                    v.end(true);
                }
                return print_result(&value, a.quiet);
            }
            _ => {}
        }
    }
    if let Some(v) = view.as_mut() {
        v.end(false);
    }
    Err(CmdError::Invalid(
        "the daemon's build stream ended without a result: the build may be incomplete".into(),
    ))
}

fn print_result(v: &Value, quiet: bool) -> CmdResult {
    let id = v.get("id").and_then(Value::as_str).unwrap_or_default();
    if quiet {
        println!("{id}");
    } else {
        eprintln!("Successfully built {id}");
        for t in v
            .get("tags")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            eprintln!("Successfully tagged {t}");
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_args_and_labels() {
        let m = key_values(&["A=1".into(), "B=".into()], "--label").unwrap();
        assert_eq!(m.get("A").map(String::as_str), Some("1"));
        assert_eq!(m.get("B").map(String::as_str), Some(""));
        assert!(key_values(&["=x".into()], "--label").is_err());
    }

    #[test]
    fn an_outside_dockerfile_travels_in_the_tarball() {
        let ctx = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        std::fs::write(ctx.path().join("app.py"), "x").unwrap();
        std::fs::write(other.path().join("Custom"), "FROM scratch\n").unwrap();
        let (data, df) = pack(ctx.path(), Some(&other.path().join("Custom"))).unwrap();
        assert_eq!(df.as_deref(), Some(OUTSIDE_DOCKERFILE));
        let mut files = BTreeMap::new();
        for e in tar::Archive::new(&data[..]).entries().unwrap() {
            let mut e = e.unwrap();
            let name = e.path().unwrap().to_string_lossy().into_owned();
            let mut body = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut body).unwrap();
            files.insert(name, body);
        }
        assert_eq!(files[OUTSIDE_DOCKERFILE], b"FROM scratch\n");
        assert_eq!(files["app.py"], b"x");
        assert_eq!(files.len(), 2, "{:?}", files.keys());
    }
}
