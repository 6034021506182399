//! Entry path validation: the one place that decides whether a name in a
//! tar archive may be used at all.
//!
//! Names are handled as bytes (Linux file names need not be UTF-8) and
//! normalised lexically: empty and `.` components vanish, so `./a//b/` is
//! `a/b`. Refused: absolute names, any `..` component (even one that would
//! stay inside, as `a/../b`: archives from honest tools never need it, and
//! refusing keeps the rule simple to audit), NUL bytes, names longer than
//! the limit. The empty result is the archive's root (`./`).

/// Why an entry path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// Longer than the limit.
    TooLong,
    /// Starts with `/`.
    Absolute,
    /// Has a `..` component.
    DotDot,
    /// Has a NUL byte.
    Nul,
}

impl PathError {
    /// The reason shown in errors, for an entry's own name or for the
    /// target of a hard link.
    pub fn reason(self, hard_link_target: bool) -> &'static str {
        match (self, hard_link_target) {
            (PathError::TooLong, false) => "path longer than the limit",
            (PathError::TooLong, true) => "hard link target longer than the limit",
            (PathError::Absolute, false) => "absolute path",
            (PathError::Absolute, true) => "hard link target is an absolute path",
            (PathError::DotDot, false) => "path has a '..' component",
            (PathError::DotDot, true) => {
                "hard link target has a '..' component (would point outside the tree)"
            }
            (PathError::Nul, false) => "NUL byte in path",
            (PathError::Nul, true) => "NUL byte in hard link target",
        }
    }
}

impl std::fmt::Display for PathError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason(false))
    }
}

impl std::error::Error for PathError {}

/// A validated entry path: components that are never empty, `.` or `..`
/// and hold no `/` or NUL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryPath {
    comps: Vec<Vec<u8>>,
}

impl EntryPath {
    /// Validates and normalises `raw` (an archive name, or a hard link
    /// target, which follows the same rules). `max_len` bounds the raw
    /// name in bytes.
    pub fn parse(raw: &[u8], max_len: usize) -> Result<EntryPath, PathError> {
        if raw.len() > max_len {
            return Err(PathError::TooLong);
        }
        if raw.first() == Some(&b'/') {
            return Err(PathError::Absolute);
        }
        let mut comps = Vec::new();
        for c in raw.split(|b| *b == b'/') {
            match c {
                b"" | b"." => {}
                b".." => return Err(PathError::DotDot),
                c if c.contains(&0) => return Err(PathError::Nul),
                c => comps.push(c.to_vec()),
            }
        }
        Ok(EntryPath { comps })
    }

    /// The archive's root (`./` or an empty name).
    pub fn is_root(&self) -> bool {
        self.comps.is_empty()
    }

    /// The components, outermost first.
    pub fn components(&self) -> &[Vec<u8>] {
        &self.comps
    }

    /// The last component (`.` for the root).
    pub fn file_name(&self) -> &[u8] {
        self.comps.last().map(Vec::as_slice).unwrap_or(b".")
    }

    /// The parent's components (empty for top-level names and the root).
    pub fn parent(&self) -> &[Vec<u8>] {
        &self.comps[..self.comps.len().saturating_sub(1)]
    }

    /// The normalised name, components joined by `/` (empty for the root).
    pub fn to_bytes(&self) -> Vec<u8> {
        self.comps.join(&b'/')
    }
}

/// [`crate::Options::rename_top`]: the first entry's first component is
/// the archive's top-level name; every later entry (and hard link target)
/// must start with it, and it is replaced by the new name.
pub(crate) struct TopRename {
    new: Option<Vec<u8>>,
    seen: Option<Vec<u8>>,
}

impl TopRename {
    /// `new` must pass [`is_component`] (checked by the caller).
    pub(crate) fn new(new: Option<Vec<u8>>) -> TopRename {
        TopRename { new, seen: None }
    }

    /// Renames `path` in place, or says why it cannot be. The root entry
    /// is left alone.
    pub(crate) fn apply(&mut self, path: &mut EntryPath, link: bool) -> Result<(), &'static str> {
        let Some(new) = &self.new else {
            return Ok(());
        };
        if path.is_root() {
            return Ok(());
        }
        let first = &path.comps[0];
        match &self.seen {
            Some(top) if top == first => {}
            Some(_) if link => {
                return Err("hard link target is outside the archive's top-level directory")
            }
            Some(_) => {
                return Err(
                    "entry is outside the archive's top-level directory (the first entry's)",
                )
            }
            None if link => return Err("hard link target does not exist in the tree"),
            None => self.seen = Some(first.clone()),
        }
        path.comps[0] = new.clone();
        Ok(())
    }
}

/// Validates and normalises an archive name: see [`EntryPath::parse`].
/// Returns the normalised name (empty for the root).
pub fn normalize(raw: &[u8], max_len: usize) -> Result<Vec<u8>, PathError> {
    EntryPath::parse(raw, max_len).map(|p| p.to_bytes())
}

/// Whether `name` can be a single path component (for names given by the
/// caller, such as a rename target).
pub(crate) fn is_component(name: &[u8]) -> bool {
    !name.is_empty() && name != b"." && name != b".." && !name.contains(&b'/') && !name.contains(&0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> Result<String, PathError> {
        normalize(s.as_bytes(), 4096).map(|b| String::from_utf8(b).unwrap())
    }

    #[test]
    fn normalises_harmless_forms() {
        assert_eq!(norm("./a//b/").unwrap(), "a/b");
        assert_eq!(norm("a/./b").unwrap(), "a/b");
        assert_eq!(norm("./").unwrap(), "");
        assert_eq!(norm("").unwrap(), "");
        assert_eq!(norm(".wh..wh..opq").unwrap(), ".wh..wh..opq");
        assert_eq!(norm("...").unwrap(), "...", "three dots is a name");
    }

    #[test]
    fn refuses_escapes() {
        assert_eq!(norm("/etc/passwd"), Err(PathError::Absolute));
        assert_eq!(norm("../x"), Err(PathError::DotDot));
        assert_eq!(norm("a/../b"), Err(PathError::DotDot));
        assert_eq!(norm("a/.."), Err(PathError::DotDot));
        assert_eq!(normalize(b"a/b\0c", 4096), Err(PathError::Nul));
        assert_eq!(normalize(&[b'a'; 5000], 4096), Err(PathError::TooLong));
        assert_eq!(normalize(&[b'a'; 4096], 4096).unwrap().len(), 4096);
    }

    #[test]
    fn non_utf8_names_are_kept_as_bytes() {
        let p = EntryPath::parse(b"d/\xff\xfe", 4096).unwrap();
        assert_eq!(p.file_name(), b"\xff\xfe");
        assert_eq!(p.parent(), [b"d".to_vec()]);
    }

    #[test]
    fn top_rename() {
        let p = |s: &str| EntryPath::parse(s.as_bytes(), 4096).unwrap();
        let mut r = TopRename::new(Some(b"new".to_vec()));
        let mut a = p("etc/");
        r.apply(&mut a, false).unwrap();
        assert_eq!(a.to_bytes(), b"new");
        let mut b = p("etc/hosts");
        r.apply(&mut b, false).unwrap();
        assert_eq!(b.to_bytes(), b"new/hosts");
        let mut l = p("etc/hosts");
        r.apply(&mut l, true).unwrap();
        assert_eq!(l.to_bytes(), b"new/hosts");
        assert!(r.apply(&mut p("other/x"), false).is_err());
        assert!(r.apply(&mut p("other/x"), true).is_err());
        let mut root = p("./");
        r.apply(&mut root, false).unwrap();
        assert!(root.is_root());
        let mut none = TopRename::new(None);
        let mut x = p("x/y");
        none.apply(&mut x, false).unwrap();
        assert_eq!(x.to_bytes(), b"x/y");
    }

    #[test]
    fn components_for_callers() {
        assert!(is_component(b"x"));
        for bad in [&b""[..], b".", b"..", b"a/b", b"a\0"] {
            assert!(!is_component(bad), "{bad:?}");
        }
    }
}
