//! `mvctl cp`: copy between a sandbox and the local filesystem, as
//! `docker cp` (`NAME:/path` names the sandbox side; `-` is a tar stream
//! on stdin or stdout). Both directions move a tar stream through the
//! guest agent (`GET`/`PUT /v1/sandboxes/{id}/archive?path=`).
//!
//! Copying out, the tar comes from the guest, which is hostile: it is
//! streamed (never held whole in memory) into `mvm_unpack`, which
//! resolves every path beneath the destination (no writes through
//! symlinks or hard links, new or already there, nor `..`), never creates
//! device nodes, drops setuid/setgid bits and file capabilities unless
//! `-a` is given, leaves the owners to the caller unless `-a` is given
//! (and mvctl runs as root), bounds sizes and counts, and never replaces a
//! directory with a file or the other way round. To `-`, the stream is
//! re-serialised by `mvm_unpack::sanitize` under the same rules, so what
//! reaches stdout is a clean archive.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use bytes::{Buf, Bytes};
use clap::Args;
use http_body_util::BodyExt;
use mvm_unpack::{Limits, Options, Stats};
use tokio::sync::mpsc;

use super::{CmdError, CmdResult, Ctx};
use crate::client::{Body, Client, ClientError};

/// What one copy out of a sandbox may write: generous (a sandbox's files
/// can be large), but bounded.
pub const LIMITS: Limits = Limits {
    max_entry_size: 64 << 30,
    max_total_size: 256 << 30,
    max_entries: 4_000_000,
    max_path_len: 4096,
    max_header_size: 1 << 20,
};

/// `mvctl cp`.
#[derive(Debug, Clone, Args)]
pub struct CpArgs {
    /// Archive mode: files copied out of a sandbox keep their uid/gid (when
    /// mvctl runs as root) and their setuid/setgid bits, which are dropped
    /// otherwise. (Files copied in always keep them.)
    #[arg(short = 'a', long)]
    pub archive: bool,
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

/// Whether the guest sends the contents of `path` rather than an archive
/// named by its last component, by the guest agent's own rule: `path/.`,
/// `/`, and paths whose last component is `.` or `..`.
pub fn is_contents(path: &str) -> bool {
    path.ends_with("/.") || path == "/" || Path::new(path).file_name().is_none()
}

/// `mvctl cp`.
pub async fn cp(ctx: &Ctx, a: CpArgs) -> CmdResult {
    let (src, dest) = (parse(&a.src)?, parse(&a.dest)?);
    match (src, dest) {
        (Side::Sandbox { name, path }, dest @ (Side::Local(_) | Side::Stdio)) => {
            let client = ctx.client().await?;
            copy_out(client, &name, &path, dest, a.archive).await
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

async fn copy_out(client: &Client, name: &str, path: &str, dest: Side, archive: bool) -> CmdResult {
    let mut body = client.archive_get(name, path).await?;
    let contents = is_contents(path);
    // The body is handed to the blocking extractor frame by frame; the
    // bounded channel stops reading from the daemon when the disk is
    // slower.
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    let job = tokio::task::spawn_blocking(move || {
        let reader = ChannelReader {
            rx,
            cur: Bytes::new(),
        };
        match dest {
            Side::Stdio => {
                let out = io::BufWriter::with_capacity(256 * 1024, io::stdout().lock());
                write_clean(reader, out, archive).map(|(_, stats)| stats)
            }
            Side::Local(p) => extract(reader, &p, contents, archive),
            Side::Sandbox { .. } => unreachable!("checked by cp"),
        }
    });
    let mut pumped = Ok(());
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                let Ok(data) = f.into_data() else { continue };
                // A closed channel: the extractor is done (the end of the
                // archive) or failed; its result says which.
                if tx.send(data).await.is_err() {
                    break;
                }
            }
            Err(source) => {
                pumped = Err(ClientError::Http {
                    host: client.host().to_string(),
                    source,
                });
                break;
            }
        }
    }
    drop(tx);
    let result = job.await.map_err(|e| CmdError::Invalid(e.to_string()))?;
    // A broken transfer explains a truncated archive better than the
    // extractor can.
    pumped?;
    let stats = result?;
    if stats.skipped_devices > 0 {
        eprintln!(
            "mvctl: warning: left out {} device node(s): cp never creates device nodes",
            stats.skipped_devices
        );
    }
    if stats.setid_dropped > 0 {
        eprintln!(
            "mvctl: warning: cleared the setuid/setgid bits of {} file(s) (-a keeps them)",
            stats.setid_dropped
        );
    }
    Ok(0)
}

/// A blocking reader over the frames of a response body.
struct ChannelReader {
    rx: mpsc::Receiver<Bytes>,
    cur: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                Some(b) => self.cur = b,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        self.cur.advance(n);
        Ok(n)
    }
}

/// The unpack options of a copy out of a sandbox: `mvm_unpack`'s copy
/// preset, [`LIMITS`], and with `archive` (`-a`) the owners and
/// setuid/setgid bits kept.
pub fn options(archive: bool) -> Options {
    Options {
        limits: LIMITS,
        keep_setid: archive,
        preserve_ownership: archive,
        ..Options::copy()
    }
}

/// Extracts a tar from a sandbox at `dest`, with `docker cp`'s naming:
/// into `dest` when it is a directory; otherwise as `dest` (the archive's
/// top-level name renamed, `dest`'s parent must exist). When the
/// sandbox sent a directory's contents (`contents`, see
/// [`is_contents`]), a missing `dest` is created as a directory and an
/// existing file is an error. Returns what was counted (devices left out,
/// setuid bits dropped).
pub fn extract(
    reader: impl Read,
    dest: &Path,
    contents: bool,
    archive: bool,
) -> Result<Stats, CmdError> {
    let mut opts = options(archive);
    let io = |what: String| move |source| CmdError::Io { what, source };
    let root = match std::fs::metadata(dest) {
        // The user's own path: a symlink to a directory is followed, as
        // Docker does. Nothing of the archive is.
        Ok(m) if m.is_dir() => dest.to_path_buf(),
        Ok(_) if contents => {
            return Err(CmdError::Invalid(format!(
                "cannot copy a directory's contents to {}: it is not a directory",
                dest.display()
            )))
        }
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            return Err(io(format!("cannot read {}", dest.display()))(e))
        }
        // Missing, or a file to replace.
        _ => {
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
            if contents {
                std::fs::create_dir(dest).map_err(io(format!("creating {}", dest.display())))?;
                dest.to_path_buf()
            } else {
                use std::os::unix::ffi::OsStrExt;
                opts.rename_top = Some(name.as_bytes().to_vec());
                parent.to_path_buf()
            }
        }
    };
    let mut stats = Stats::default();
    mvm_unpack::unpack(reader, &root, &opts, &mut stats).map_err(|source| CmdError::Unpack {
        dest: dest.to_path_buf(),
        source,
    })?;
    Ok(stats)
}

/// Re-serialises a tar from a sandbox into a clean one on `out` (for
/// `cp NAME:PATH -`), under the same rules as [`extract`]: no device
/// nodes, setuid/setgid dropped unless `archive`, names validated.
pub fn write_clean<W: Write>(
    reader: impl Read,
    out: W,
    archive: bool,
) -> Result<(W, Stats), CmdError> {
    let mut stats = Stats::default();
    let out =
        mvm_unpack::sanitize(reader, out, &options(archive), &mut stats).map_err(|source| {
            CmdError::Unpack {
                dest: PathBuf::from("-"),
                source,
            }
        })?;
    Ok((out, stats))
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
        extract(&tar[..], &out, false, false).unwrap();
        let got = out.join("f.sh");
        assert_eq!(std::fs::read(&got).unwrap(), b"echo x\n");
        let mode = std::fs::metadata(&got).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o751);
        // To a new name.
        extract(&tar[..], &d.path().join("renamed"), false, false).unwrap();
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
        assert!(extract(&data[..], d.path(), false, false).is_err());
    }
}
