//! Packing a context directory into the tarball a client sends.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::ignore::{clean_rel, Ignore, IgnoreError};

/// Why a directory could not be packed.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    /// A file or directory of the context is unusable, or the output
    /// could not be written.
    #[error("build context {}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The context's `.dockerignore` is unusable.
    #[error(transparent)]
    Ignore(#[from] IgnoreError),
}

/// Writes the directory `dir` as a tarball context to `out`, leaving out
/// what its `.dockerignore` excludes (as the Docker CLI does, so ignored
/// files are never sent). The Dockerfile (`dockerfile`, relative) and
/// `.dockerignore` are always included. Symlinks are archived as links;
/// sockets, FIFOs and devices are left out. `extra` adds one more file
/// first (a Dockerfile from outside the directory, under a private name).
pub fn pack_dir(
    dir: &Path,
    dockerfile: Option<&str>,
    extra: Option<(&str, &[u8])>,
    out: impl Write,
) -> Result<(), PackError> {
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PackError::Io { path, source }
    };
    let root = fs::canonicalize(dir).map_err(io_err(dir))?;
    if !root.is_dir() {
        return Err(PackError::Io {
            path: dir.to_path_buf(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "not a directory"),
        });
    }
    let ignore = Ignore::load(&root)?;
    let mut b = tar::Builder::new(out);
    b.follow_symlinks(false);
    if let Some((name, data)) = extra {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, data).map_err(io_err(dir))?;
    }
    let always: Vec<String> = [Some(".dockerignore"), dockerfile]
        .into_iter()
        .flatten()
        .filter_map(clean_rel)
        .collect();
    let walker = Walker {
        root: &root,
        ignore: &ignore,
        always: &always,
    };
    walker.walk(&mut b, "")?;
    b.into_inner()
        .map_err(io_err(dir))?
        .flush()
        .map_err(io_err(dir))?;
    Ok(())
}

struct Walker<'a> {
    root: &'a Path,
    ignore: &'a Ignore,
    always: &'a [String],
}

impl Walker<'_> {
    fn walk<W: Write>(&self, b: &mut tar::Builder<W>, rel: &str) -> Result<(), PackError> {
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| PackError::Io { path, source }
        };
        let dir = if rel.is_empty() {
            self.root.to_path_buf()
        } else {
            self.root.join(rel)
        };
        let mut names: Vec<_> = fs::read_dir(&dir)
            .map_err(io_err(&dir))?
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect();
        names.sort();
        for n in names {
            let child = join_rel(rel, &n.to_string_lossy());
            let abs = self.root.join(&child);
            let md = fs::symlink_metadata(&abs).map_err(io_err(&abs))?;
            let excluded = self.ignore.excluded(&child) && !self.always.contains(&child);
            if md.is_dir() {
                if !excluded {
                    b.append_path_with_name(&abs, &child)
                        .map_err(io_err(&abs))?;
                }
                if !excluded || self.ignore.may_include_below(&child) {
                    self.walk(b, &child)?;
                }
            } else if !excluded && (md.is_file() || md.file_type().is_symlink()) {
                b.append_path_with_name(&abs, &child)
                    .map_err(io_err(&abs))?;
            }
        }
        Ok(())
    }
}

fn join_rel(base: &str, name: &str) -> String {
    if base.is_empty() {
        name.to_string()
    } else {
        format!("{base}/{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// (name, type, content or link target) of each entry, in order.
    fn listing(data: &[u8]) -> Vec<(String, tar::EntryType, String)> {
        tar::Archive::new(data)
            .entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let name = e.path().unwrap().to_string_lossy().into_owned();
                let kind = e.header().entry_type();
                let mut body = match e.link_name().unwrap() {
                    Some(l) => l.to_string_lossy().into_owned(),
                    None => String::new(),
                };
                e.read_to_string(&mut body).unwrap();
                (name, kind, body)
            })
            .collect()
    }

    #[test]
    fn packing_a_directory_leaves_out_ignored_files() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("logs")).unwrap();
        fs::write(d.path().join("Dockerfile"), "FROM scratch").unwrap();
        fs::write(d.path().join("app.py"), "x").unwrap();
        fs::write(d.path().join("logs/a.log"), "a").unwrap();
        fs::write(d.path().join("logs/keep.log"), "k").unwrap();
        fs::write(
            d.path().join(".dockerignore"),
            "logs\n!logs/keep.log\nDockerfile\n.dockerignore\n",
        )
        .unwrap();
        let mut out = Vec::new();
        pack_dir(
            d.path(),
            Some("./Dockerfile"),
            Some(("extra.Dockerfile", b"FROM x")),
            &mut out,
        )
        .unwrap();
        let got = listing(&out);
        let names: Vec<&str> = got.iter().map(|(n, _, _)| n.as_str()).collect();
        // The extra file first, then the walk in name order; the
        // Dockerfile and .dockerignore although excluded; a re-included
        // file without its excluded directory.
        assert_eq!(
            names,
            [
                "extra.Dockerfile",
                ".dockerignore",
                "Dockerfile",
                "app.py",
                "logs/keep.log"
            ]
        );
        assert_eq!(got[0].2, "FROM x");
        assert_eq!(got[4].2, "k");
    }

    #[test]
    fn symlinks_are_archived_as_links() {
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("secret"), "s").unwrap();
        let d = tempfile::tempdir().unwrap();
        fs::create_dir(d.path().join("sub")).unwrap();
        fs::write(d.path().join("sub/f"), "f").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), d.path().join("out")).unwrap();
        std::os::unix::fs::symlink(outside.path(), d.path().join("outdir")).unwrap();
        let mut out = Vec::new();
        pack_dir(d.path(), None, None, &mut out).unwrap();
        let got = listing(&out);
        let secret = outside.path().join("secret");
        assert_eq!(
            got,
            [
                (
                    "out".to_string(),
                    tar::EntryType::Symlink,
                    secret.to_string_lossy().into_owned()
                ),
                (
                    "outdir".to_string(),
                    tar::EntryType::Symlink,
                    outside.path().to_string_lossy().into_owned()
                ),
                ("sub".to_string(), tar::EntryType::Directory, String::new()),
                (
                    "sub/f".to_string(),
                    tar::EntryType::Regular,
                    "f".to_string()
                ),
            ],
            "links are not followed: nothing outside the directory is read"
        );
    }

    #[test]
    fn unusable_contexts_are_errors() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("file");
        fs::write(&file, "x").unwrap();
        let e = pack_dir(&file, None, None, io::sink()).unwrap_err();
        assert!(e.to_string().contains("not a directory"), "{e}");
        let e = pack_dir(&d.path().join("missing"), None, None, io::sink()).unwrap_err();
        assert!(matches!(e, PackError::Io { .. }), "{e}");
        fs::write(d.path().join(".dockerignore"), "[bad\n").unwrap();
        let e = pack_dir(d.path(), None, None, io::sink()).unwrap_err();
        assert!(
            matches!(
                e,
                PackError::Ignore(IgnoreError::BadPattern { line: 1, .. })
            ),
            "{e}"
        );
    }
}
