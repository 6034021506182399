//! The build context (a directory, or a tarball unpacked into a private
//! directory) as the builder reads it.
//!
//! `.dockerignore` (Docker's semantics) and packing a directory into a
//! context tarball live in `mvm-build-context`, which `mvctl` links
//! without linking the builder; they are re-exported here ([`Ignore`],
//! [`glob_match`], [`clean_rel`], [`pack_dir`]) so both ends read the
//! file one way.
//!
//! Every path a COPY names is resolved beneath the root: `..` that leaves
//! the context and symlinks that point out of it are refused, because a
//! build must not read the builder's files.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use mvm_images::layer;

pub use mvm_build_context::{clean_rel, glob_match, pack_dir, Ignore, IgnoreError, PackError};

/// Errors about the context.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    /// The context directory is unusable.
    #[error("build context {}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// A context tarball could not be unpacked.
    #[error("the build context tarball is not usable: {0}")]
    Tar(#[from] Box<mvm_unpack::Error>),
    /// A path leaves the context.
    #[error("{0:?} is outside the build context: COPY and ADD can only read files inside the context directory")]
    Outside(String),
    /// A symlink leads out of the context.
    #[error("{0:?} is a symlink pointing outside the build context; copy the target into the context instead")]
    SymlinkOut(String),
    /// A source does not exist (or is excluded by .dockerignore).
    #[error("{0:?} not found in the build context{1}")]
    NotFound(String, &'static str),
    /// A bad `.dockerignore` pattern.
    #[error(".dockerignore line {line}: bad pattern {pattern:?}: {reason}")]
    BadPattern {
        /// Line number.
        line: usize,
        /// The pattern.
        pattern: String,
        /// Why.
        reason: &'static str,
    },
}

impl From<IgnoreError> for ContextError {
    fn from(e: IgnoreError) -> Self {
        match e {
            IgnoreError::Io { path, source } => ContextError::Io { path, source },
            IgnoreError::BadPattern {
                line,
                pattern,
                reason,
            } => ContextError::BadPattern {
                line,
                pattern,
                reason,
            },
        }
    }
}

type Result<T, E = ContextError> = std::result::Result<T, E>;

/// A build context on disk.
#[derive(Debug)]
pub struct Context {
    root: PathBuf,
    ignore: Ignore,
    _tmp: Option<tempfile::TempDir>,
}

impl Context {
    /// A directory context; reads its `.dockerignore`.
    pub fn from_dir(dir: &Path) -> Result<Context> {
        let root = fs::canonicalize(dir).map_err(|source| ContextError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        if !root.is_dir() {
            return Err(ContextError::Io {
                path: dir.to_path_buf(),
                source: io::Error::new(io::ErrorKind::InvalidInput, "not a directory"),
            });
        }
        let ignore = Ignore::load(&root)?;
        Ok(Context {
            root,
            ignore,
            _tmp: None,
        })
    }

    /// A directory read without `.dockerignore` (another stage's or
    /// image's filesystem, for COPY --from).
    pub fn from_dir_unfiltered(dir: &Path) -> Result<Context> {
        let root = fs::canonicalize(dir).map_err(|source| ContextError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        Ok(Context {
            root,
            ignore: Ignore::default(),
            _tmp: None,
        })
    }

    /// A context from a tarball (plain, gzip or zstd), unpacked with
    /// `mvm_unpack` (see [`tar_options`]) into a private temp directory
    /// (mode 0700) under `tmp_parent`. The tarball comes from an API client:
    /// hostile.
    pub fn from_tar(reader: impl Read, tmp_parent: &Path) -> Result<Context> {
        let io_err = |source| ContextError::Io {
            path: tmp_parent.to_path_buf(),
            source,
        };
        fs::create_dir_all(tmp_parent).map_err(io_err)?;
        // Explicitly 0700 (tempfile uses the default mode): the context
        // may hold setuid files (COPY keeps modes), which nobody else may
        // reach.
        let tmp = tempfile::Builder::new()
            .prefix("context-")
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .tempdir_in(tmp_parent)
            .map_err(io_err)?;
        let (plain, _) = layer::decompress(reader, None).map_err(|source| {
            ContextError::Tar(Box::new(mvm_unpack::Error::Archive {
                after: None,
                source,
            }))
        })?;
        let mut stats = mvm_unpack::Stats::default();
        mvm_unpack::unpack(plain, tmp.path(), &tar_options(), &mut stats)
            .map_err(|e| ContextError::Tar(Box::new(e)))?;
        let root = tmp.path().to_path_buf();
        let ignore = Ignore::load(&root)?;
        Ok(Context {
            root,
            ignore,
            _tmp: Some(tmp),
        })
    }

    /// The context's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The `.dockerignore` rules.
    pub fn ignore(&self) -> &Ignore {
        &self.ignore
    }

    /// Reads a file of the context (the Dockerfile), by relative path.
    pub fn read_file(&self, rel: &str) -> Result<Vec<u8>> {
        let (abs, _) = self.resolve(rel, true)?;
        fs::read(&abs).map_err(|source| ContextError::Io { path: abs, source })
    }

    /// Resolves a user-given path beneath the root: returns the absolute
    /// path (symlinks at the end followed if `follow`, and checked to stay
    /// inside) and the cleaned relative path.
    pub fn resolve(&self, user: &str, follow: bool) -> Result<(PathBuf, String)> {
        let rel = clean_rel(user).ok_or_else(|| ContextError::Outside(user.to_string()))?;
        if rel.is_empty() {
            return Ok((self.root.clone(), rel));
        }
        let abs = self.root.join(&rel);
        // Every parent component must stay inside: resolve the parent
        // fully and check it.
        let parent = abs.parent().unwrap_or(&self.root);
        let canon_parent = match fs::canonicalize(parent) {
            Ok(p) => p,
            Err(_) => return Err(ContextError::NotFound(user.to_string(), "")),
        };
        if !canon_parent.starts_with(&self.root) {
            return Err(ContextError::SymlinkOut(user.to_string()));
        }
        let abs = canon_parent.join(abs.file_name().unwrap_or_default());
        let md =
            fs::symlink_metadata(&abs).map_err(|_| ContextError::NotFound(user.to_string(), ""))?;
        if md.file_type().is_symlink() && follow {
            let target = fs::canonicalize(&abs)
                .map_err(|_| ContextError::NotFound(user.to_string(), " (a dangling symlink)"))?;
            if !target.starts_with(&self.root) {
                return Err(ContextError::SymlinkOut(user.to_string()));
            }
            return Ok((target, rel));
        }
        Ok((abs, rel))
    }

    /// Expands a COPY source (possibly a glob) into relative paths that
    /// exist and are not excluded. An empty result is an error naming it.
    pub fn expand(&self, src: &str) -> Result<Vec<String>> {
        let rel = clean_rel(src).ok_or_else(|| ContextError::Outside(src.to_string()))?;
        if !has_glob(&rel) {
            self.resolve(src, true)?;
            if !rel.is_empty() && self.ignore.excluded(&rel) {
                return Err(ContextError::NotFound(
                    src.to_string(),
                    " (it is excluded by .dockerignore)",
                ));
            }
            return Ok(vec![rel]);
        }
        let mut found = vec![String::new()];
        for seg in rel.split('/') {
            let mut next = Vec::new();
            for base in &found {
                let dir = if base.is_empty() {
                    self.root.clone()
                } else {
                    self.root.join(base)
                };
                if !has_glob(seg) {
                    let p = join_rel(base, seg);
                    if fs::symlink_metadata(self.root.join(&p)).is_ok() {
                        next.push(p);
                    }
                    continue;
                }
                let Ok(rd) = fs::read_dir(&dir) else { continue };
                let mut names: Vec<String> = rd
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| glob_match(seg, n))
                    .collect();
                names.sort();
                next.extend(names.into_iter().map(|n| join_rel(base, &n)));
            }
            found = next;
        }
        found.retain(|p| !self.ignore.excluded(p));
        if found.is_empty() {
            return Err(ContextError::NotFound(
                src.to_string(),
                " (no file matches the pattern)",
            ));
        }
        for p in &found {
            self.resolve(p, true)?;
        }
        Ok(found)
    }
}

/// How a context tarball is unpacked: `mvm_unpack`'s copy preset
/// (plain names: a `.wh.` file is a file; no device nodes; files owned by
/// the daemon; merge semantics, so a `./` entry cannot change the private
/// directory's mode), with setuid/setgid bits kept, because COPY keeps a
/// context file's mode as Docker does (the files sit in a 0700 directory
/// nobody else can enter), and no xattrs, which COPY does not carry.
pub fn tar_options() -> mvm_unpack::Options {
    mvm_unpack::Options {
        keep_setid: true,
        xattrs: mvm_unpack::XattrPolicy::None,
        ..mvm_unpack::Options::copy()
    }
}

fn join_rel(base: &str, name: &str) -> String {
    if base.is_empty() {
        name.to_string()
    } else {
        format!("{base}/{name}")
    }
}

fn has_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_outside_the_context_are_refused() {
        let outer = tempfile::tempdir().unwrap();
        let ctx_dir = outer.path().join("ctx");
        fs::create_dir_all(ctx_dir.join("sub")).unwrap();
        fs::write(outer.path().join("secret"), "s").unwrap();
        fs::write(ctx_dir.join("ok"), "o").unwrap();
        std::os::unix::fs::symlink(outer.path().join("secret"), ctx_dir.join("out")).unwrap();
        std::os::unix::fs::symlink("ok", ctx_dir.join("in")).unwrap();
        std::os::unix::fs::symlink(outer.path(), ctx_dir.join("outdir")).unwrap();
        let ctx = Context::from_dir(&ctx_dir).unwrap();
        assert!(matches!(
            ctx.resolve("../secret", true),
            Err(ContextError::Outside(_))
        ));
        assert!(matches!(
            ctx.resolve("sub/../../secret", true),
            Err(ContextError::Outside(_))
        ));
        assert!(matches!(
            ctx.resolve("out", true),
            Err(ContextError::SymlinkOut(_))
        ));
        assert!(matches!(
            ctx.resolve("outdir/secret", true),
            Err(ContextError::SymlinkOut(_))
        ));
        assert!(matches!(ctx.expand("o*"), Err(ContextError::SymlinkOut(_))));
        let (p, rel) = ctx.resolve("in", true).unwrap();
        assert_eq!(rel, "in");
        assert_eq!(p, ctx.root().join("ok"));
        assert_eq!(ctx.resolve("./sub/../ok", true).unwrap().1, "ok");
        assert!(matches!(
            ctx.resolve("missing", true),
            Err(ContextError::NotFound(..))
        ));
    }

    #[test]
    fn expansion_respects_dockerignore() {
        let d = tempfile::tempdir().unwrap();
        for f in ["a.py", "b.py", "c.txt", "ignored.py"] {
            fs::write(d.path().join(f), f).unwrap();
        }
        fs::write(d.path().join(".dockerignore"), "ignored.py\n").unwrap();
        let ctx = Context::from_dir(d.path()).unwrap();
        assert_eq!(ctx.expand("*.py").unwrap(), ["a.py", "b.py"]);
        assert!(ctx
            .expand("ignored.py")
            .unwrap_err()
            .to_string()
            .contains("excluded by .dockerignore"));
        assert!(ctx.expand("*.rs").is_err());
    }

    /// What a client packs (`mvm-build-context`) reads back here as the
    /// same context, with the same `.dockerignore`.
    #[test]
    fn a_packed_directory_reads_back_as_the_context() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("logs")).unwrap();
        fs::write(d.path().join("Dockerfile"), "FROM scratch").unwrap();
        fs::write(d.path().join("app.py"), "x").unwrap();
        fs::write(d.path().join("logs/a.log"), "a").unwrap();
        fs::write(d.path().join("logs/keep.log"), "k").unwrap();
        fs::write(
            d.path().join(".dockerignore"),
            "logs\n!logs/keep.log\nDockerfile\n",
        )
        .unwrap();
        let mut out = Vec::new();
        pack_dir(
            d.path(),
            Some("Dockerfile"),
            Some(("extra.Dockerfile", b"FROM x")),
            &mut out,
        )
        .unwrap();
        let parent = tempfile::tempdir().unwrap();
        let ctx = Context::from_tar(&out[..], parent.path()).unwrap();
        assert_eq!(ctx.read_file("app.py").unwrap(), b"x");
        assert_eq!(ctx.read_file("Dockerfile").unwrap(), b"FROM scratch");
        assert_eq!(ctx.read_file("extra.Dockerfile").unwrap(), b"FROM x");
        assert!(!ctx.root().join("logs/a.log").exists(), "never sent");
        assert_eq!(ctx.expand("logs/*").unwrap(), ["logs/keep.log"]);
        // Sent so the builder can read it, but COPY still honours the
        // exclusion.
        assert!(ctx
            .expand("Dockerfile")
            .unwrap_err()
            .to_string()
            .contains("excluded by .dockerignore"));
    }

    #[test]
    fn a_bad_dockerignore_names_its_line() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join(".dockerignore"), "ok\n[bad\n").unwrap();
        let e = Context::from_dir(d.path()).unwrap_err();
        assert!(matches!(e, ContextError::BadPattern { line: 2, .. }), "{e}");
    }

    #[test]
    fn tar_contexts_unpack_beneath_a_temp_dir() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(2);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "Dockerfile", &b"hi"[..]).unwrap();
        let data = b.into_inner().unwrap();
        let parent = tempfile::tempdir().unwrap();
        let ctx = Context::from_tar(&data[..], parent.path()).unwrap();
        assert_eq!(ctx.read_file("Dockerfile").unwrap(), b"hi");
        // A hostile entry is refused.
        let mut raw = Vec::new();
        {
            let mut h = tar::Header::new_old();
            h.as_old_mut().name[..9].copy_from_slice(b"../escape");
            h.set_size(0);
            h.set_mode(0o644);
            h.set_cksum();
            raw.extend_from_slice(h.as_bytes());
            raw.extend_from_slice(&[0u8; 1024]);
        }
        assert!(Context::from_tar(&raw[..], parent.path()).is_err());
    }

    /// Entries written raw: the tar crate's builder refuses hostile ones.
    fn raw_tar(entries: &[(&str, tar::EntryType, u32, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, kind, mode, link) in entries {
            let mut h = tar::Header::new_gnu();
            h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
            h.set_entry_type(*kind);
            h.set_mode(*mode);
            h.set_size(0);
            h.set_cksum();
            out.extend_from_slice(h.as_bytes());
        }
        out.extend_from_slice(&[0u8; 1024]);
        out
    }

    #[test]
    fn hostile_tar_contexts_stay_in_their_directory() {
        use std::os::unix::fs::PermissionsExt;
        use tar::EntryType as T;
        let parent = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let out = outside.path().to_str().unwrap();
        for bad in [
            raw_tar(&[
                ("l", T::Symlink, 0o777, out),
                ("l/pwned", T::Regular, 0o644, ""),
            ]),
            raw_tar(&[
                ("up", T::Symlink, 0o777, ".."),
                ("up/pwned", T::Regular, 0o644, ""),
            ]),
            raw_tar(&[("h", T::Link, 0o644, "/etc/passwd")]),
        ] {
            let e = Context::from_tar(&bad[..], parent.path()).unwrap_err();
            assert!(matches!(e, ContextError::Tar(_)), "{e}");
            assert!(fs::read_dir(outside.path()).unwrap().next().is_none());
        }
        // A root entry does not open up the private directory; `.wh.`
        // names are plain files; devices are left out; setuid is kept
        // (COPY keeps modes).
        let ok = raw_tar(&[
            ("./", T::Directory, 0o777, ""),
            (".wh.keep", T::Regular, 0o644, ""),
            ("null", T::Char, 0o666, ""),
            ("su", T::Regular, 0o4755, ""),
        ]);
        let ctx = Context::from_tar(&ok[..], parent.path()).unwrap();
        let mode = |p: &Path| fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(ctx.root()), 0o700);
        assert!(ctx.root().join(".wh.keep").is_file());
        assert!(!ctx.root().join("null").exists());
        assert_eq!(mode(&ctx.root().join("su")), 0o4755);
    }
}
