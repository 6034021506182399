//! The build context (a directory, or a tarball unpacked into a private
//! directory) and `.dockerignore` with Docker's semantics.
//!
//! `.dockerignore` rules, as Docker's `patternmatcher`: one pattern per
//! line, `#` comments, blank lines ignored; patterns are cleaned (`./a/`
//! is `a`, a leading `/` is dropped) and matched against the slash
//! separated path relative to the context root; a pattern that matches a
//! directory excludes everything below it; `!pattern` re-includes; the
//! last matching line wins. Globs: `*` and `?` do not cross `/`, `[...]`
//! classes, `\` escapes, `**` matches any number of directories.
//!
//! Every path a COPY names is resolved beneath the root: `..` that leaves
//! the context and symlinks that point out of it are refused, because a
//! build must not read the builder's files.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};

use mvm_images::layer;

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

/// Writes the directory `dir` as a tarball context to `out`, leaving out
/// what its `.dockerignore` excludes (as the Docker CLI does, so ignored
/// files are never sent). The Dockerfile (`dockerfile`, relative) and
/// `.dockerignore` are always included. Symlinks are archived as links.
/// `extra` adds one more file first (a Dockerfile from outside the
/// directory, under a private name).
pub fn pack_dir(
    dir: &Path,
    dockerfile: Option<&str>,
    extra: Option<(&str, &[u8])>,
    out: impl Write,
) -> Result<()> {
    let ctx = Context::from_dir(dir)?;
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ContextError::Io { path, source }
    };
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
    fn walk<W: Write>(
        ctx: &Context,
        b: &mut tar::Builder<W>,
        rel: &str,
        always: &[String],
    ) -> Result<()> {
        let dir = if rel.is_empty() {
            ctx.root.clone()
        } else {
            ctx.root.join(rel)
        };
        let mut names: Vec<_> = fs::read_dir(&dir)
            .map_err(|source| ContextError::Io {
                path: dir.clone(),
                source,
            })?
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect();
        names.sort();
        for n in names {
            let child = join_rel(rel, &n.to_string_lossy());
            let abs = ctx.root.join(&child);
            let md = fs::symlink_metadata(&abs).map_err(|source| ContextError::Io {
                path: abs.clone(),
                source,
            })?;
            let excluded = ctx.ignore.excluded(&child) && !always.contains(&child);
            if md.is_dir() {
                if !excluded {
                    b.append_path_with_name(&abs, &child)
                        .map_err(|source| ContextError::Io {
                            path: abs.clone(),
                            source,
                        })?;
                }
                if !excluded || ctx.ignore.may_include_below(&child) {
                    walk(ctx, b, &child, always)?;
                }
            } else if !excluded && (md.is_file() || md.file_type().is_symlink()) {
                b.append_path_with_name(&abs, &child)
                    .map_err(|source| ContextError::Io {
                        path: abs.clone(),
                        source,
                    })?;
            }
        }
        Ok(())
    }
    walk(&ctx, &mut b, "", &always)?;
    b.into_inner()
        .map_err(io_err(dir))?
        .flush()
        .map_err(io_err(dir))?;
    Ok(())
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

/// Cleans a user path into a relative slash path without `.`/`..`
/// (`/a/./b/` -> `a/b`); None if it climbs above the root.
pub fn clean_rel(p: &str) -> Option<String> {
    let mut out: Vec<&str> = Vec::new();
    for c in Path::new(p).components() {
        match c {
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => {
                out.pop()?;
            }
            Component::Normal(s) => out.push(s.to_str()?),
        }
    }
    Some(out.join("/"))
}

/// Parsed `.dockerignore`.
#[derive(Debug, Clone, Default)]
pub struct Ignore {
    rules: Vec<(Vec<Seg>, bool)>,
}

/// One path segment of a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    /// `**`: any number of segments.
    Any,
    /// A glob for one segment.
    Glob(String),
}

impl Ignore {
    /// Reads `<root>/.dockerignore` (absent: nothing is excluded).
    pub fn load(root: &Path) -> Result<Ignore> {
        match fs::read_to_string(root.join(".dockerignore")) {
            Ok(t) => Ignore::parse(&t),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Ignore::default()),
            Err(source) => Err(ContextError::Io {
                path: root.join(".dockerignore"),
                source,
            }),
        }
    }

    /// Parses the text of a `.dockerignore`.
    pub fn parse(text: &str) -> Result<Ignore> {
        let mut rules = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let l = line.trim();
            if l.is_empty() || l.starts_with('#') {
                continue;
            }
            let (neg, pat) = match l.strip_prefix('!') {
                Some(p) => (true, p.trim()),
                None => (false, l),
            };
            let Some(clean) = clean_rel(pat) else {
                // Docker keeps `..` patterns; they can never match.
                continue;
            };
            if clean.is_empty() {
                continue;
            }
            let segs: Vec<Seg> = clean
                .split('/')
                .map(|s| {
                    if s == "**" {
                        Seg::Any
                    } else {
                        Seg::Glob(s.to_string())
                    }
                })
                .collect();
            for s in &segs {
                if let Seg::Glob(g) = s {
                    if !glob_valid(g) {
                        return Err(ContextError::BadPattern {
                            line: i + 1,
                            pattern: l.to_string(),
                            reason: "unterminated [ class",
                        });
                    }
                }
            }
            rules.push((segs, neg));
        }
        Ok(Ignore { rules })
    }

    /// True if the relative path (or one of its parents) is excluded,
    /// taking exceptions into account.
    pub fn excluded(&self, rel: &str) -> bool {
        if self.rules.is_empty() {
            return false;
        }
        let parts: Vec<&str> = rel.split('/').filter(|s| !s.is_empty()).collect();
        let mut excluded = false;
        for (segs, neg) in &self.rules {
            // A pattern matching the path or any of its parents.
            let m = (1..=parts.len()).any(|n| seg_match(segs, &parts[..n]));
            if m {
                excluded = !neg;
            }
        }
        excluded
    }

    /// True if some exception could re-include something below `dir`
    /// (so an excluded directory must still be walked).
    pub fn may_include_below(&self, dir: &str) -> bool {
        let _ = dir;
        self.rules.iter().any(|(_, neg)| *neg)
    }
}

fn seg_match(pat: &[Seg], parts: &[&str]) -> bool {
    match pat.first() {
        None => parts.is_empty(),
        Some(Seg::Any) => (0..=parts.len()).any(|i| seg_match(&pat[1..], &parts[i..])),
        Some(Seg::Glob(g)) => match parts.first() {
            Some(p) => glob_match(g, p) && seg_match(&pat[1..], &parts[1..]),
            None => false,
        },
    }
}

fn glob_valid(g: &str) -> bool {
    let mut chars = g.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                chars.next();
            }
            '[' if !chars.by_ref().any(|c| c == ']') => return false,
            _ => {}
        }
    }
    true
}

/// Go's `filepath.Match` for one segment: `*`, `?`, `[...]` (with `^` or
/// `!` negation and ranges), `\` escapes.
pub fn glob_match(pat: &str, name: &str) -> bool {
    let p: Vec<char> = pat.chars().collect();
    let n: Vec<char> = name.chars().collect();
    glob_rec(&p, &n)
}

fn glob_rec(p: &[char], n: &[char]) -> bool {
    match p.first() {
        None => n.is_empty(),
        Some('*') => (0..=n.len()).any(|i| glob_rec(&p[1..], &n[i..])),
        Some('?') => !n.is_empty() && glob_rec(&p[1..], &n[1..]),
        Some('[') => {
            let Some(&c) = n.first() else { return false };
            let Some(end) = p.iter().skip(1).position(|&x| x == ']').map(|i| i + 1) else {
                return false;
            };
            let mut class = &p[1..end];
            let negate = matches!(class.first(), Some('^') | Some('!'));
            if negate {
                class = &class[1..];
            }
            let mut hit = false;
            let mut i = 0;
            while i < class.len() {
                if i + 2 < class.len() && class[i + 1] == '-' {
                    if class[i] <= c && c <= class[i + 2] {
                        hit = true;
                    }
                    i += 3;
                } else {
                    if class[i] == c {
                        hit = true;
                    }
                    i += 1;
                }
            }
            hit != negate && glob_rec(&p[end + 1..], &n[1..])
        }
        Some('\\') if p.len() > 1 => n.first() == Some(&p[1]) && glob_rec(&p[2..], &n[1..]),
        Some(&c) => n.first() == Some(&c) && glob_rec(&p[1..], &n[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("*.py", "a.py"));
        assert!(!glob_match("*.py", "a.pyc"));
        assert!(glob_match("a?c", "abc"));
        assert!(glob_match("[a-c]x", "bx"));
        assert!(!glob_match("[!a-c]x", "bx"));
        assert!(glob_match("\\*", "*"));
        assert!(!glob_match("\\*", "a"));
    }

    #[test]
    fn dockerignore_semantics() {
        let ig = Ignore::parse(
            "# comment\n\n*.log\n!keep.log\nbuild/\n/secret\n**/*.tmp\ndocs\n!docs/README.md\n",
        )
        .unwrap();
        assert!(ig.excluded("a.log"));
        assert!(
            !ig.excluded("keep.log"),
            "exception wins when it comes later"
        );
        assert!(!ig.excluded("sub/a.log"), "* does not cross directories");
        assert!(
            ig.excluded("build/x/y"),
            "a directory excludes its contents"
        );
        assert!(ig.excluded("secret"));
        assert!(ig.excluded("x/y/z.tmp"));
        assert!(ig.excluded("z.tmp"), "** matches zero directories");
        assert!(ig.excluded("docs/other.md"));
        assert!(!ig.excluded("docs/README.md"));
        assert!(!ig.excluded("src/main.rs"));
        // Order matters: a later exclusion overrides an earlier exception.
        let ig = Ignore::parse("!a.txt\n*.txt\n").unwrap();
        assert!(ig.excluded("a.txt"));
        assert!(Ignore::parse("[abc\n").is_err());
    }

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
        let mut names: Vec<String> = tar::Archive::new(&out[..])
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                ".dockerignore",
                "Dockerfile",
                "app.py",
                "extra.Dockerfile",
                "logs/keep.log"
            ]
        );
        let parent = tempfile::tempdir().unwrap();
        let ctx = Context::from_tar(&out[..], parent.path()).unwrap();
        assert_eq!(ctx.read_file("app.py").unwrap(), b"x");
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
