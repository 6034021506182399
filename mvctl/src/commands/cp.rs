//! `mvctl cp`: copy between a sandbox and the local filesystem, as
//! `docker cp` (`NAME:/path` names the sandbox side; `-` is a tar stream
//! on stdin or stdout). Both directions move a tar stream through the
//! guest agent (`GET`/`PUT /v1/sandboxes/{id}/archive?path=`).

use std::io::Write;
use std::path::{Component, Path, PathBuf};

use clap::Args;
use http_body_util::BodyExt;

use super::{CmdError, CmdResult, Ctx};
use crate::client::{Body, Client, ClientError};

/// Largest archive copied out of a sandbox (it is held in memory).
const MAX_ARCHIVE: usize = 4 << 30;

/// `mvctl cp`.
#[derive(Debug, Clone, Args)]
pub struct CpArgs {
    /// Source: NAME:PATH, a local path, or - (a tar stream on stdin)
    pub src: String,
    /// Destination: NAME:PATH, a local path, or - (a tar stream on stdout)
    pub dest: String,
}

/// One side of a copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Side {
    /// `NAME:PATH` in a sandbox.
    Sandbox {
        /// Name or id.
        name: String,
        /// Path in the sandbox.
        path: String,
    },
    /// A local path.
    Local(PathBuf),
    /// `-`: a tar stream on stdin/stdout.
    Stdio,
}

/// Parse a `cp` argument as Docker does: `-` is stdio, a path starting
/// with `/` or `.` is local, `NAME:PATH` is a sandbox's, anything else
/// local.
pub fn parse(arg: &str) -> Result<Side, CmdError> {
    if arg == "-" {
        return Ok(Side::Stdio);
    }
    if arg.starts_with('/') || arg.starts_with('.') {
        return Ok(Side::Local(PathBuf::from(arg)));
    }
    match arg.split_once(':') {
        Some((name, path)) if !name.is_empty() && !name.contains('/') => {
            if path.is_empty() {
                return Err(CmdError::Invalid(format!(
                    "{arg:?}: the path in the sandbox is empty; use NAME:/path"
                )));
            }
            Ok(Side::Sandbox {
                name: name.to_string(),
                path: path.to_string(),
            })
        }
        _ => Ok(Side::Local(PathBuf::from(arg))),
    }
}

/// The last component of a path (`.` for `dir/.`, which copies contents).
fn base_name(p: &str) -> String {
    let t = p.trim_end_matches('/');
    t.rsplit('/').next().unwrap_or(t).to_string()
}

/// The directory part of a sandbox path.
fn dir_name(p: &str) -> String {
    let t = p.trim_end_matches('/');
    match t.rsplit_once('/') {
        Some(("", _)) | None => "/".into(),
        Some((d, _)) => d.to_string(),
    }
}

/// `mvctl cp`.
pub async fn cp(ctx: &Ctx, a: CpArgs) -> CmdResult {
    let (src, dest) = (parse(&a.src)?, parse(&a.dest)?);
    match (src, dest) {
        (Side::Sandbox { name, path }, dest @ (Side::Local(_) | Side::Stdio)) => {
            let client = ctx.client().await?;
            copy_out(client, &name, &path, dest).await
        }
        (src @ (Side::Local(_) | Side::Stdio), Side::Sandbox { name, path }) => {
            let client = ctx.client().await?;
            copy_in(client, src, &name, &path).await
        }
        (Side::Sandbox { .. }, Side::Sandbox { .. }) => Err(CmdError::Invalid(
            "copying between two sandboxes is not supported: copy to a local path first".into(),
        )),
        _ => Err(CmdError::Invalid(
            "one of SRC and DEST must be NAME:PATH (a path in a sandbox)".into(),
        )),
    }
}

async fn copy_out(client: &Client, name: &str, path: &str, dest: Side) -> CmdResult {
    let body = client.archive_get(name, path).await?;
    let data =
        crate::client::read_limited(body, MAX_ARCHIVE, "GET archive", &client.host().to_string())
            .await?;
    match dest {
        Side::Stdio => {
            let mut out = std::io::stdout().lock();
            out.write_all(&data)
                .and_then(|_| out.flush())
                .map_err(|source| CmdError::Io {
                    what: "writing the tar stream to stdout".into(),
                    source,
                })?;
        }
        Side::Local(p) => {
            tokio::task::spawn_blocking(move || extract(&data, &p))
                .await
                .map_err(|e| CmdError::Invalid(e.to_string()))??;
        }
        Side::Sandbox { .. } => unreachable!("checked by cp"),
    }
    Ok(0)
}

/// Extract a tar from a sandbox at `dest`: into it when it is a directory,
/// otherwise as it (the archive's top entry renamed), as `docker cp`.
fn extract(data: &[u8], dest: &Path) -> Result<(), CmdError> {
    let io = |what: String| move |source| CmdError::Io { what, source };
    let (root, rename) = if dest.is_dir() {
        (dest.to_path_buf(), None)
    } else {
        let parent = dest
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if !parent.is_dir() {
            return Err(CmdError::Invalid(format!(
                "destination directory {} does not exist",
                parent.display()
            )));
        }
        let name = dest.file_name().ok_or_else(|| {
            CmdError::Invalid(format!("destination {} has no file name", dest.display()))
        })?;
        (parent.to_path_buf(), Some(name.to_os_string()))
    };
    let mut ar = tar::Archive::new(data);
    ar.set_preserve_permissions(true);
    ar.set_overwrite(true);
    for entry in ar.entries().map_err(io("reading the archive".into()))? {
        let mut entry = entry.map_err(io("reading the archive".into()))?;
        let path = entry
            .path()
            .map_err(io("reading the archive".into()))?
            .into_owned();
        // Hostile input: only plain relative components.
        let mut parts: Vec<_> = Vec::new();
        for c in path.components() {
            match c {
                Component::Normal(n) => parts.push(n.to_os_string()),
                Component::CurDir => {}
                _ => {
                    return Err(CmdError::Invalid(format!(
                        "the archive from the sandbox has an unsafe path {}",
                        path.display()
                    )))
                }
            }
        }
        if parts.is_empty() {
            continue;
        }
        if let Some(r) = &rename {
            parts[0] = r.clone();
        }
        let target: PathBuf = parts.iter().fold(root.clone(), |p, c| p.join(c));
        entry
            .unpack(&target)
            .map_err(io(format!("writing {}", target.display())))?;
    }
    Ok(())
}

async fn copy_in(client: &Client, src: Side, name: &str, path: &str) -> CmdResult {
    let body = match src {
        Side::Stdio => {
            client
                .archive_put(name, path, Body::reader(tokio::io::stdin()))
                .await?;
            return Ok(0);
        }
        Side::Local(p) => p,
        Side::Sandbox { .. } => unreachable!("checked by cp"),
    };
    let meta = std::fs::symlink_metadata(&body).map_err(|source| CmdError::Io {
        what: format!("cannot read {}", body.display()),
        source,
    })?;
    // Where to extract and under which name: into `path` when it is a
    // directory in the sandbox, otherwise as `path`.
    let (dir, entry_name) = match dest_is_dir(client, name, path).await? {
        Some(true) => {
            let n = body
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| ".".into());
            (path.to_string(), n)
        }
        Some(false) | None => (dir_name(path), base_name(path)),
    };
    let src = body.clone();
    let tarball = tokio::task::spawn_blocking(move || pack(&src, meta.is_dir(), &entry_name))
        .await
        .map_err(|e| CmdError::Invalid(e.to_string()))??;
    client.archive_put(name, &dir, Body::full(tarball)).await?;
    Ok(0)
}

/// Whether `path` in the sandbox is a directory (`None`: it does not
/// exist), from the first tar header of its archive.
async fn dest_is_dir(client: &Client, name: &str, path: &str) -> Result<Option<bool>, CmdError> {
    let mut body = match client.archive_get(name, path).await {
        Ok(b) => b,
        Err(e) if e.is_not_found() => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mut head = Vec::new();
    while head.len() < 512 {
        match body.frame().await {
            Some(Ok(f)) => {
                if let Ok(d) = f.into_data() {
                    head.extend_from_slice(&d);
                }
            }
            Some(Err(source)) => {
                return Err(ClientError::Http {
                    host: client.host().to_string(),
                    source,
                }
                .into())
            }
            None => break,
        }
    }
    // Byte 156 of a tar header is the entry type; '5' is a directory.
    Ok(Some(head.get(156) == Some(&b'5')))
}

/// A tar of `src` whose top entry is `name`.
fn pack(src: &Path, is_dir: bool, name: &str) -> Result<Vec<u8>, CmdError> {
    let io = |source| CmdError::Io {
        what: format!("packing {}", src.display()),
        source,
    };
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(false);
    if is_dir {
        b.append_dir_all(name, src).map_err(io)?;
    } else {
        b.append_path_with_name(src, name).map_err(io)?;
    }
    b.into_inner().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_parse_like_docker_cp() {
        assert_eq!(parse("-").unwrap(), Side::Stdio);
        assert_eq!(
            parse("web:/etc/hosts").unwrap(),
            Side::Sandbox {
                name: "web".into(),
                path: "/etc/hosts".into()
            }
        );
        assert_eq!(parse("./a:b").unwrap(), Side::Local("./a:b".into()));
        assert_eq!(parse("/x:y").unwrap(), Side::Local("/x:y".into()));
        assert_eq!(parse("file.txt").unwrap(), Side::Local("file.txt".into()));
        assert_eq!(parse("dir/a:b").unwrap(), Side::Local("dir/a:b".into()));
        assert!(parse("web:").is_err());
    }

    #[test]
    fn sandbox_path_parts() {
        assert_eq!(base_name("/etc/hosts"), "hosts");
        assert_eq!(base_name("/etc/"), "etc");
        assert_eq!(dir_name("/etc/hosts"), "/etc");
        assert_eq!(dir_name("/hosts"), "/");
        assert_eq!(dir_name("hosts"), "/");
    }

    #[test]
    fn pack_and_extract_keep_content_and_mode() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("f.sh");
        std::fs::write(&f, "echo x\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o751)).unwrap();
        let tar = pack(&f, false, "f.sh").unwrap();
        // Into an existing directory: same name.
        let out = d.path().join("out");
        std::fs::create_dir(&out).unwrap();
        extract(&tar, &out).unwrap();
        let got = out.join("f.sh");
        assert_eq!(std::fs::read(&got).unwrap(), b"echo x\n");
        let mode = std::fs::metadata(&got).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o751);
        // To a new name.
        extract(&tar, &d.path().join("renamed")).unwrap();
        assert_eq!(
            std::fs::read(d.path().join("renamed")).unwrap(),
            b"echo x\n"
        );
    }

    #[test]
    fn unsafe_archive_paths_are_refused() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o644);
        // Bypass the builder's own check by writing the name directly.
        h.as_gnu_mut().unwrap().name[..5].copy_from_slice(b"../x\0");
        h.set_cksum();
        b.append(&h, &b"x"[..]).unwrap();
        let data = b.into_inner().unwrap();
        let d = tempfile::tempdir().unwrap();
        assert!(extract(&data, d.path()).is_err());
    }
}
