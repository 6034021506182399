//! Image commands, as clients of the image endpoints: pull, push, images,
//! image inspect, tag, rmi, image prune, load, save, import, login, logout.

use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};

use http_body_util::BodyExt;
use indicatif::ProgressBar;
use mvm_api::images::{
    ImageSummary, LoginRequest, Platform, PullResult, PushResult, TagRequest, TransferRequest,
};
use serde_json::Value;
use tokio::io::AsyncWriteExt;

use super::{
    confirm, credentials, for_each, progress, prompt, report, stdout_is_terminal, CmdError,
    CmdResult, Ctx,
};
use crate::cli::{
    ArchiveFormat, ImagesArgs, ImportArgs, ListFormat, LoadArgs, LoginArgs, LogoutArgs, PruneArgs,
    PullArgs, PushArgs, RmiArgs, SaveArgs, TagArgs,
};
use crate::client::{Body, Client, ClientError};
use crate::format;

fn strings(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect(),
        Some(Value::String(s)) => vec![s.clone()],
        _ => Vec::new(),
    }
}

/// Pulls `reference` through mvmd with the user's credentials for its
/// registry, showing progress on stderr (nothing with `quiet`). Shared by
/// `pull`, `run` and `create`.
pub async fn pull_image(
    client: &Client,
    reference: &str,
    insecure: bool,
    platform: Option<Platform>,
    quiet: bool,
) -> Result<PullResult, CmdError> {
    let auth = credentials::header_for(reference)?;
    let req = TransferRequest {
        reference: reference.to_string(),
        insecure,
        platform,
    };
    let v = progress::show(client.pull(&req, auth.as_deref()).await?, quiet).await?;
    serde_json::from_value(v).map_err(|e| {
        CmdError::Client(ClientError::Decode {
            what: "POST /v1/images/pull".into(),
            why: format!("the result is not a pull result ({e})"),
        })
    })
}

/// `mvctl pull`: progress on stderr, then Docker's `Digest:` and
/// `Status:` lines and the full name on stdout (only the name with `-q`).
pub async fn pull(ctx: &Ctx, a: PullArgs) -> CmdResult {
    if a.reference.trim().is_empty() {
        return Err(CmdError::Invalid("the image name is empty".into()));
    }
    let client = ctx.client().await?;
    if !a.quiet && !has_tag_or_digest(&a.reference) {
        eprintln!("Using default tag: latest");
    }
    let r = pull_image(client, &a.reference, a.insecure, a.platform, a.quiet).await?;
    if !a.quiet {
        println!("Digest: {}", r.digest);
        println!("Status: {}", r.status);
    }
    println!("{}", r.reference);
    Ok(0)
}

/// Whether a reference names a tag or digest (`app:1`, `app@sha256:..`;
/// not the port of `localhost:5000/app`).
fn has_tag_or_digest(reference: &str) -> bool {
    let last = reference.rsplit('/').next().unwrap_or(reference);
    reference.contains('@') || last.contains(':')
}

/// `mvctl push`: progress on stderr, then Docker's `TAG: digest: D size: N`.
pub async fn push(ctx: &Ctx, a: PushArgs) -> CmdResult {
    if a.reference.trim().is_empty() {
        return Err(CmdError::Invalid("the image name is empty".into()));
    }
    let auth = credentials::header_for(&a.reference)?;
    let client = ctx.client().await?;
    let req = TransferRequest {
        reference: a.reference.clone(),
        insecure: a.insecure,
        platform: None,
    };
    let v = progress::show(client.push(&req, auth.as_deref()).await?, a.quiet).await?;
    let r: PushResult = serde_json::from_value(v).map_err(|e| {
        CmdError::Client(ClientError::Decode {
            what: "POST /v1/images/push".into(),
            why: format!("the result is not a push result ({e})"),
        })
    })?;
    let tag = r
        .reference
        .rsplit_once(':')
        .filter(|(_, t)| !t.contains('/'))
        .map(|(_, t)| t.to_string())
        .unwrap_or_else(|| r.reference.clone());
    println!("{tag}: digest: {} size: {}", r.digest, r.size);
    Ok(0)
}

/// Does `img` have a name in `repository` (`busybox` matches
/// `docker.io/library/busybox:*`)?
fn in_repository(img: &ImageSummary, repository: &str) -> bool {
    let (want_repo, want_tag) = match repository.rsplit_once(':') {
        Some((r, t)) if !t.contains('/') => (r, Some(t)),
        _ => (repository, None),
    };
    img.repo_tags.iter().any(|t| {
        let (full_repo, tag) = t.rsplit_once(':').unwrap_or((t, ""));
        let (short, _) = format::repo_and_tag(t);
        (short == want_repo || full_repo == want_repo) && want_tag.is_none_or(|w| w == tag)
    })
}

/// `mvctl images` / `mvctl image ls`.
pub async fn list(ctx: &Ctx, a: ImagesArgs) -> CmdResult {
    let client = ctx.client().await?;
    let mut list = client.images().await?;
    if let Some(r) = &a.repository {
        list.retain(|i| in_repository(i, r));
    }
    // Newest first, as Docker lists them.
    list.sort_by(|x, y| y.created.cmp(&x.created));
    if a.quiet {
        let mut seen = std::collections::HashSet::new();
        for i in &list {
            if seen.insert(i.id.clone()) {
                println!("{}", format::short_id(&i.id));
            }
        }
        return Ok(0);
    }
    match a.format {
        ListFormat::Json => {
            for i in &list {
                println!("{}", serde_json::to_string(i).unwrap_or_default());
            }
        }
        ListFormat::Table => print!("{}", format::images_table(&list, chrono::Utc::now())),
    }
    Ok(0)
}

/// `mvctl image inspect`.
pub async fn inspect(ctx: &Ctx, references: &[String]) -> CmdResult {
    let client = ctx.client().await?;
    let mut out = Vec::new();
    let mut failed = 0;
    for r in references {
        match client.image_inspect(r).await {
            Ok(v) => out.push(v),
            Err(e) => {
                report(&e);
                failed += 1;
            }
        }
    }
    println!(
        "{}",
        serde_json::to_string_pretty(&Value::Array(out)).unwrap_or_default()
    );
    if failed > 0 {
        return Err(CmdError::Partial(format!(
            "{failed} of {} not found",
            references.len()
        )));
    }
    Ok(0)
}

/// `mvctl tag`.
pub async fn tag(ctx: &Ctx, a: TagArgs) -> CmdResult {
    let client = ctx.client().await?;
    client
        .tag(&TagRequest {
            source: a.source,
            target: a.target,
        })
        .await?;
    Ok(0)
}

/// `mvctl rmi` / `mvctl image rm`.
pub async fn rm(ctx: &Ctx, a: RmiArgs) -> CmdResult {
    let client = ctx.client().await?;
    let force = a.force;
    for_each(&a.references, |r| async move {
        let v = client.image_remove(&r, force).await?;
        let untagged = strings(v.get("untagged"));
        let deleted = strings(v.get("deleted"));
        if untagged.is_empty() && deleted.is_empty() {
            println!("Untagged: {r}");
        }
        for u in untagged {
            println!("Untagged: {u}");
        }
        for d in deleted {
            println!("Deleted: {d}");
        }
        Ok(())
    })
    .await
}

/// Bytes freed, from either the API's `PruneResponse` or the image store's
/// report.
fn reclaimed(v: &Value) -> u64 {
    ["space_reclaimed", "bytes_freed"]
        .iter()
        .find_map(|k| v.get(*k).and_then(Value::as_u64))
        .or_else(|| {
            v.get("pruned")
                .and_then(|p| p.get("bytes_freed"))
                .and_then(Value::as_u64)
        })
        .unwrap_or(0)
}

/// `mvctl image prune`.
pub async fn prune(ctx: &Ctx, a: PruneArgs) -> CmdResult {
    if !a.force {
        let what = if a.all {
            "all images without at least one sandbox"
        } else {
            "all dangling images"
        };
        if !confirm(&format!(
            "WARNING! This will remove {what}.\nAre you sure you want to continue?"
        )) {
            return Ok(0);
        }
    }
    let client = ctx.client().await?;
    let v = client.image_prune(a.all).await?;
    let deleted: Vec<String> = ["deleted", "images_removed"]
        .iter()
        .flat_map(|k| strings(v.get(*k)))
        .collect();
    if !deleted.is_empty() {
        println!("Deleted Images:");
        for d in deleted {
            println!("deleted: {d}");
        }
        println!();
    }
    println!(
        "Total reclaimed space: {}",
        format::human_size(reclaimed(&v))
    );
    Ok(0)
}

/// A request body from a file, or stdin for `None`/`-`.
async fn input_body(path: Option<&Path>, what: &str) -> Result<Body, CmdError> {
    Ok(Body::reader(input_reader(path, what).await?.0))
}

/// A tarball to send: a file (and its size), or stdin for `None`/`-`
/// (refused when it is a terminal).
pub(crate) async fn input_reader(
    path: Option<&Path>,
    what: &str,
) -> Result<
    (
        std::pin::Pin<Box<dyn tokio::io::AsyncRead + Send>>,
        Option<u64>,
    ),
    CmdError,
> {
    match path {
        Some(p) if p != Path::new("-") => {
            let f = tokio::fs::File::open(p)
                .await
                .map_err(|source| CmdError::Io {
                    what: format!("cannot open {}", p.display()),
                    source,
                })?;
            let size = f.metadata().await.ok().map(|m| m.len());
            Ok((Box::pin(f), size))
        }
        _ => {
            if std::io::stdin().is_terminal() {
                return Err(CmdError::Invalid(format!(
                    "{what} reads the tarball from stdin, but stdin is a terminal: redirect a file or name one on the command line"
                )));
            }
            Ok((Box::pin(tokio::io::stdin()), None))
        }
    }
}

/// `mvctl load [-i FILE]`.
pub async fn load(ctx: &Ctx, a: LoadArgs) -> CmdResult {
    let body = input_body(a.input.as_deref(), "load").await?;
    let client = ctx.client().await?;
    let v = progress::show(client.load(body).await?, a.quiet).await?;
    for line in loaded_lines(&v) {
        println!("{line}");
    }
    Ok(0)
}

/// Docker's `Loaded image: NAME` lines (or `Loaded image ID: ID` for an
/// image without names) from a load result: one `{id, names}` object, or
/// an array of them (an archive may hold several images).
fn loaded_lines(v: &Value) -> Vec<String> {
    let items = match v {
        Value::Array(items) => items.iter().collect(),
        other => vec![other],
    };
    let mut lines = Vec::new();
    for item in items {
        let names = strings(item.get("names"));
        if names.is_empty() {
            match item.get("id").and_then(Value::as_str) {
                Some(id) => lines.push(format!("Loaded image ID: {id}")),
                None => lines.push(item.to_string()),
            }
        }
        for n in names {
            lines.push(format!("Loaded image: {n}"));
        }
    }
    lines
}

/// `mvctl import FILE|- [NAME[:TAG]]`: prints the new image's id.
pub async fn import(ctx: &Ctx, a: ImportArgs) -> CmdResult {
    if a.file.contains("://") {
        return Err(CmdError::Invalid(format!(
            "import takes a file or - for stdin, not a URL ({}): download it first",
            a.file
        )));
    }
    let body = input_body(Some(Path::new(&a.file)), "import").await?;
    let client = ctx.client().await?;
    let v = progress::show(client.import(a.reference.as_deref(), body).await?, true).await?;
    match v.get("id").and_then(Value::as_str) {
        Some(id) => println!("{id}"),
        None => println!("{v}"),
    }
    Ok(0)
}

/// `mvctl save [-o FILE] [--format docker|oci] IMAGE...`.
pub async fn save(ctx: &Ctx, a: SaveArgs) -> CmdResult {
    if a.output.is_none() && stdout_is_terminal() {
        return Err(CmdError::Invalid(
            "refusing to write a tarball to a terminal: use -o FILE or redirect stdout".into(),
        ));
    }
    let format = match a.format {
        ArchiveFormat::Docker => "docker",
        ArchiveFormat::Oci => "oci",
    };
    let client = ctx.client().await?;
    let body = client.save(&a.references, format).await?;
    let none = ProgressBar::hidden();
    match &a.output {
        Some(path) => save_to_file(body, path, &client.host().to_string(), &none).await,
        None => copy_body(
            body,
            tokio::io::stdout(),
            "stdout",
            &client.host().to_string(),
            &none,
        )
        .await
        .map(|_| 0),
    }
}

/// Write to a temporary file next to `path` and rename it into place, so
/// a failed save never leaves a truncated tarball under the final name;
/// `progress` counts the bytes.
pub(crate) async fn save_to_file(
    body: hyper::body::Incoming,
    path: &Path,
    host: &str,
    progress: &ProgressBar,
) -> CmdResult {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image.tar".into());
    let tmp = dir.join(format!(".{name}.mvctl-{}", std::process::id()));
    let file = tokio::fs::File::create(&tmp)
        .await
        .map_err(|source| CmdError::Io {
            what: format!("cannot create {}", tmp.display()),
            source,
        })?;
    let result = copy_body(body, file, &tmp.display().to_string(), host, progress).await;
    match result {
        Ok(f) => {
            f.sync_all().await.map_err(|source| CmdError::Io {
                what: format!("sync {}", tmp.display()),
                source,
            })?;
            tokio::fs::rename(&tmp, path)
                .await
                .map_err(|source| CmdError::Io {
                    what: format!("rename to {}", path.display()),
                    source,
                })?;
            Ok(0)
        }
        Err(e) => {
            let _ = tokio::fs::remove_file(&tmp).await;
            Err(e)
        }
    }
}

/// Copies a response body to `w`, counting the bytes on `progress`.
pub(crate) async fn copy_body<W: tokio::io::AsyncWrite + Unpin>(
    mut body: hyper::body::Incoming,
    mut w: W,
    what: &str,
    host: &str,
    progress: &ProgressBar,
) -> Result<W, CmdError> {
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|source| ClientError::Http {
            host: host.to_string(),
            source,
        })?;
        if let Ok(data) = frame.into_data() {
            w.write_all(&data).await.map_err(|source| CmdError::Io {
                what: format!("write {what}"),
                source,
            })?;
            progress.inc(data.len() as u64);
        }
    }
    w.flush().await.map_err(|source| CmdError::Io {
        what: format!("write {what}"),
        source,
    })?;
    Ok(w)
}

/// `mvctl login [SERVER]`: mvmd checks the credentials against the
/// registry (it may be the only one that reaches it, in machine mode);
/// then they are stored here, where Docker would store them (a credential
/// helper if one is configured for the registry, else mvm's file, 0600).
pub async fn login(ctx: &Ctx, a: LoginArgs) -> CmdResult {
    let server = a.server.clone().unwrap_or_default();
    let username = match a.username.clone() {
        Some(u) => u,
        None => prompt::line("Username: ").map_err(|source| CmdError::Io {
            what: "no user name given (-u) and no terminal to ask on".into(),
            source,
        })?,
    };
    if username.is_empty() {
        return Err(CmdError::Invalid("the user name is empty".into()));
    }
    let password = if a.password_stdin {
        if a.password.is_some() {
            return Err(CmdError::Invalid(
                "--password and --password-stdin are mutually exclusive".into(),
            ));
        }
        let mut s = String::new();
        std::io::stdin()
            .take(64 << 10)
            .read_to_string(&mut s)
            .map_err(|source| CmdError::Io {
                what: "read the password from stdin".into(),
                source,
            })?;
        s.trim_end_matches(['\n', '\r']).to_string()
    } else if let Some(p) = a.password.clone() {
        eprintln!(
            "WARNING! Using --password via the command line is insecure. Use --password-stdin."
        );
        p
    } else {
        prompt::secret("Password: ").map_err(|source| CmdError::Io {
            what: "no password given and no terminal to ask on (use --password-stdin)".into(),
            source,
        })?
    };
    if password.is_empty() {
        return Err(CmdError::Invalid("the password is empty".into()));
    }
    let creds = mvm_auth::Credentials::new(username.clone(), password.clone());
    creds
        .validate()
        .map_err(|e| CmdError::Invalid(e.to_string()))?;
    // Where they would go is checked before the registry is asked, so a
    // broken credentials file fails fast.
    let file = credentials::auth_file()?;
    let client = ctx.client().await?;
    let answer = client
        .login(&LoginRequest {
            server,
            username,
            password,
            insecure: a.insecure,
        })
        .await?;
    let stored = file.store(&answer.server, &creds).map_err(|e| {
        CmdError::Invalid(format!(
            "the registry accepted the credentials, but storing them failed: {e}"
        ))
    })?;
    if let mvm_auth::Source::File(p) = &stored {
        eprintln!(
            "WARNING! Your password is stored unencrypted in {} (mode 0600).\nConfigure a credential helper (credsStore) to store it in a keychain instead.",
            p.display()
        );
    }
    println!("{}", answer.status);
    Ok(0)
}

/// `mvctl logout [SERVER]`: forgets the credentials here (mvm's file and
/// the credential helper configured for the registry); mvmd has none.
pub async fn logout(_ctx: &Ctx, a: LogoutArgs) -> CmdResult {
    let server = a
        .server
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .unwrap_or(credentials::DOCKER_HUB)
        .to_string();
    let file = credentials::auth_file()?;
    let r = file
        .remove(&server)
        .map_err(|e| CmdError::Invalid(e.to_string()))?;
    for w in &r.warnings {
        eprintln!("mvctl: warning: {w}");
    }
    let key = mvm_auth::registry_key(&server);
    if r.removed.is_empty() {
        println!("Not logged in to {key}");
    } else {
        println!("Removing login credentials for {key}");
    }
    if let Some(rest) = r.remaining {
        eprintln!(
            "mvctl: warning: credentials for {key} remain in {rest}, which mvm does not change (run docker logout {server} to remove them)"
        );
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_filter() {
        let img = ImageSummary {
            repo_tags: vec![
                "docker.io/library/busybox:latest".into(),
                "localhost:5000/app:1".into(),
            ],
            id: "sha256:x".into(),
            ..Default::default()
        };
        assert!(in_repository(&img, "busybox"));
        assert!(in_repository(&img, "busybox:latest"));
        assert!(!in_repository(&img, "busybox:1"));
        assert!(in_repository(&img, "localhost:5000/app"));
        assert!(in_repository(&img, "docker.io/library/busybox"));
        assert!(!in_repository(&img, "alpine"));
    }

    #[test]
    fn default_tag_detection() {
        assert!(!has_tag_or_digest("busybox"));
        assert!(!has_tag_or_digest("localhost:5000/app"));
        assert!(has_tag_or_digest("localhost:5000/app:1"));
        assert!(has_tag_or_digest("app@sha256:00"));
    }

    #[test]
    fn prune_answers() {
        assert_eq!(
            reclaimed(&serde_json::json!({"deleted": [], "space_reclaimed": 5})),
            5
        );
        assert_eq!(reclaimed(&serde_json::json!({"bytes_freed": 7})), 7);
        assert_eq!(
            reclaimed(&serde_json::json!({"pruned": {"bytes_freed": 9}})),
            9
        );
        assert_eq!(reclaimed(&Value::Null), 0);
    }

    #[test]
    fn loaded_lines_from_one_or_several_images() {
        let one = serde_json::json!({"id": "sha256:ab", "names": ["a:1", "b:2"]});
        assert_eq!(
            loaded_lines(&one),
            ["Loaded image: a:1", "Loaded image: b:2"]
        );
        let several = serde_json::json!([
            {"id": "sha256:ab", "names": ["docker.io/e2e/x:1"]},
            {"id": "sha256:cd", "names": []}
        ]);
        assert_eq!(
            loaded_lines(&several),
            [
                "Loaded image: docker.io/e2e/x:1",
                "Loaded image ID: sha256:cd"
            ]
        );
    }
}
