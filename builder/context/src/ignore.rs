//! `.dockerignore` parsing and matching (the semantics are in the crate
//! docs), and the path cleaning both ends use.

use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

/// Why a `.dockerignore` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum IgnoreError {
    /// The file exists but cannot be read.
    #[error("build context {}: {source}", path.display())]
    Io {
        /// The `.dockerignore` path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// A pattern that cannot be parsed.
    #[error(".dockerignore line {line}: bad pattern {pattern:?}: {reason}")]
    BadPattern {
        /// Line number, from 1.
        line: usize,
        /// The line.
        pattern: String,
        /// Why.
        reason: &'static str,
    },
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
    pub fn load(root: &Path) -> Result<Ignore, IgnoreError> {
        let path = root.join(".dockerignore");
        match fs::read_to_string(&path) {
            Ok(t) => Ignore::parse(&t),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Ignore::default()),
            Err(source) => Err(IgnoreError::Io { path, source }),
        }
    }

    /// Parses the text of a `.dockerignore`.
    pub fn parse(text: &str) -> Result<Ignore, IgnoreError> {
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
                        return Err(IgnoreError::BadPattern {
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
        let e = Ignore::parse("ok\n[abc\n").unwrap_err();
        assert!(matches!(e, IgnoreError::BadPattern { line: 2, .. }), "{e}");
        // Patterns above the root never match anything.
        let ig = Ignore::parse("../x\n").unwrap();
        assert!(!ig.excluded("x"));
    }

    #[test]
    fn paths_are_cleaned_beneath_the_root() {
        assert_eq!(clean_rel("/a/./b/").as_deref(), Some("a/b"));
        assert_eq!(clean_rel("a/../b").as_deref(), Some("b"));
        assert_eq!(clean_rel("./").as_deref(), Some(""));
        assert_eq!(clean_rel("a/../../b"), None);
        assert_eq!(clean_rel(".."), None);
    }

    #[test]
    fn a_missing_dockerignore_excludes_nothing() {
        let d = tempfile::tempdir().unwrap();
        let ig = Ignore::load(d.path()).unwrap();
        assert!(!ig.excluded("anything"));
        std::fs::write(d.path().join(".dockerignore"), "*.log\n").unwrap();
        assert!(Ignore::load(d.path()).unwrap().excluded("a.log"));
    }
}
