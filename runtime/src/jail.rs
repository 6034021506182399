//! Every VMM runs jailed (`mvm-jailer`, see its crate docs): this module
//! is the runtime's side of it. It finds the jailer, lists the VMM's
//! shared libraries once (they are bound into every jail), and gives each
//! sandbox a uid/gid of its own from a configured range, recorded on disk
//! so a restart of the sandbox or of mvmd keeps it and no two sandboxes
//! ever share one.
//!
//! The allocation is a directory of files named by uid (`<root>/jail-uids/
//! <uid>`), each holding the directory of the sandbox that owns it,
//! created with `O_EXCL`: atomic across threads and processes without a
//! lock or the caller's database (the builder's transient sandboxes and the
//! containerd shim allocate the same way). A uid whose owner directory is
//! gone (a crash between removal steps) is taken back.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;

/// `--jail-uid-range` default: Docker's userns-remap style, above the
/// host's users.
pub const DEFAULT_UID_START: u32 = 100_000;
/// Default number of uids (one per sandbox that exists at once).
pub const DEFAULT_UID_COUNT: u32 = 65_536;
/// Environment variable naming the jailer (default: next to the VMM).
pub const JAILER_ENV: &str = "MVM_JAILER";
/// The jailer's file name.
pub const JAILER_NAME: &str = "mvm-jailer";
/// A sandbox's record of its uid, in its directory.
pub const UID_RECORD: &str = "jail.uid";

/// Why a VMM cannot be jailed.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("no {JAILER_NAME} at {looked} (every VMM runs jailed); run `make build` or `make install`, set {JAILER_ENV}, or start mvmd with --no-jail (debugging only)")]
    NoJailer { looked: PathBuf },
    #[error("invalid uid range {0:?}: give START-END or START:COUNT, above 0 and below 2^32 (e.g. 100000-165535)")]
    Range(String),
    #[error("all {count} uids of the jail range {start}-{} are in use: remove sandboxes or widen --jail-uid-range", start + (count - 1))]
    Exhausted { start: u32, count: u32 },
    #[error("jail: {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("cannot list the shared libraries of {} with ldd ({detail}); they must be bound into the jail", vmm.display())]
    Libraries { vmm: PathBuf, detail: String },
    #[error("the jailer failed: {0}")]
    Jailer(String),
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> JailError + 'a {
    move |source| JailError::Io {
        op,
        path: path.into(),
        source,
    }
}

/// The uids (and gids, the same numbers) VMMs run as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UidRange {
    /// First uid.
    pub start: u32,
    /// How many.
    pub count: u32,
}

impl Default for UidRange {
    fn default() -> Self {
        Self {
            start: DEFAULT_UID_START,
            count: DEFAULT_UID_COUNT,
        }
    }
}

impl FromStr for UidRange {
    type Err = JailError;
    /// `START-END` (inclusive) or `START:COUNT`.
    fn from_str(s: &str) -> Result<Self, JailError> {
        let bad = || JailError::Range(s.to_string());
        let num = |v: &str| v.trim().parse::<u32>().map_err(|_| bad());
        let (start, count) = if let Some((a, b)) = s.split_once('-') {
            let (a, b) = (num(a)?, num(b)?);
            (
                a,
                b.checked_sub(a)
                    .and_then(|d| d.checked_add(1))
                    .ok_or_else(bad)?,
            )
        } else if let Some((a, c)) = s.split_once(':') {
            (num(a)?, num(c)?)
        } else {
            return Err(bad());
        };
        // uid 2^32-1 is (uid_t)-1, "no change" to setresuid.
        if start == 0 || count == 0 || start.checked_add(count).is_none() {
            return Err(bad());
        }
        Ok(Self { start, count })
    }
}

impl std::fmt::Display for UidRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.start, self.start + (self.count - 1))
    }
}

/// How VMMs are jailed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailConfig {
    /// The `mvm-jailer` binary.
    pub jailer: PathBuf,
    /// The uids VMMs get.
    pub uids: UidRange,
    /// The VMM's shared libraries and loader, bound into every jail.
    pub libraries: Vec<PathBuf>,
}

impl JailConfig {
    /// Find the jailer (`jailer`, then `MVM_JAILER`, then next to `vmm`)
    /// and list `vmm`'s libraries.
    pub fn locate(vmm: &Path, jailer: Option<PathBuf>, uids: UidRange) -> Result<Self, JailError> {
        let jailer = jailer
            .or_else(|| {
                std::env::var_os(JAILER_ENV)
                    .filter(|v| !v.is_empty())
                    .map(PathBuf::from)
            })
            .unwrap_or_else(|| vmm.with_file_name(JAILER_NAME));
        if !jailer.is_file() {
            return Err(JailError::NoJailer { looked: jailer });
        }
        Ok(Self {
            jailer,
            uids,
            libraries: libraries(vmm)?,
        })
    }
}

/// The absolute paths `ldd` lists for `bin` (its loader and libraries);
/// none for a static binary.
pub fn libraries(bin: &Path) -> Result<Vec<PathBuf>, JailError> {
    let out = Command::new("ldd")
        .arg(bin)
        .output()
        .map_err(|e| JailError::Libraries {
            vmm: bin.into(),
            detail: e.to_string(),
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if text.contains("not a dynamic executable") || err.contains("not a dynamic executable") {
            return Ok(Vec::new());
        }
        return Err(JailError::Libraries {
            vmm: bin.into(),
            detail: err.trim().to_string(),
        });
    }
    Ok(parse_ldd(&text))
}

fn parse_ldd(text: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let p = match l.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            p.starts_with('/').then(|| PathBuf::from(p))
        })
        .collect();
    v.sort();
    v.dedup();
    v
}

/// Hands out uids of a range to sandbox directories.
#[derive(Debug, Clone)]
pub struct UidAllocator {
    dir: PathBuf,
    range: UidRange,
}

impl UidAllocator {
    /// Allocations recorded in `dir` (created if needed, root's alone).
    pub fn new(dir: impl Into<PathBuf>, range: UidRange) -> Self {
        Self {
            dir: dir.into(),
            range,
        }
    }

    fn owner_of(&self, uid: u32) -> Option<PathBuf> {
        fs::read_to_string(self.dir.join(uid.to_string()))
            .ok()
            .map(PathBuf::from)
    }

    /// The uid of the sandbox whose directory is `owner`: the one it had
    /// (its record in `owner` and the allocation agree), else a free one.
    pub fn uid_for(&self, owner: &Path) -> Result<u32, JailError> {
        use std::os::unix::fs::DirBuilderExt;
        let record = owner.join(UID_RECORD);
        if let Some(uid) = fs::read_to_string(&record)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
        {
            let in_range = uid >= self.range.start && uid - self.range.start < self.range.count;
            if in_range && self.owner_of(uid).as_deref() == Some(owner) {
                return Ok(uid);
            }
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(io_err("creating", &self.dir))?;
        // Start where this owner hashes to, so allocations spread and a
        // scan is short while the range is far from full.
        let h = owner
            .as_os_str()
            .as_encoded_bytes()
            .iter()
            .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(*b)));
        for i in 0..self.range.count {
            let uid = self.range.start + (h.wrapping_add(i) % self.range.count);
            let f = self.dir.join(uid.to_string());
            match fs::OpenOptions::new().write(true).create_new(true).open(&f) {
                Ok(mut file) => {
                    use std::io::Write;
                    file.write_all(owner.as_os_str().as_encoded_bytes())
                        .map_err(io_err("writing", &f))?;
                    fs::write(&record, uid.to_string()).map_err(io_err("writing", &record))?;
                    return Ok(uid);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    // Taken back if its owner is gone; one of several
                    // racing allocators wins the create_new above.
                    match self.owner_of(uid) {
                        Some(o) if !o.exists() => {
                            let _ = fs::remove_file(&f);
                        }
                        _ => continue,
                    }
                    if let Ok(mut file) =
                        fs::OpenOptions::new().write(true).create_new(true).open(&f)
                    {
                        use std::io::Write;
                        file.write_all(owner.as_os_str().as_encoded_bytes())
                            .map_err(io_err("writing", &f))?;
                        fs::write(&record, uid.to_string()).map_err(io_err("writing", &record))?;
                        return Ok(uid);
                    }
                }
                Err(e) => return Err(io_err("creating", &f)(e)),
            }
        }
        Err(JailError::Exhausted {
            start: self.range.start,
            count: self.range.count,
        })
    }

    /// Give back the uid of `owner` (being removed).
    pub fn release(&self, owner: &Path) {
        let Some(uid) = fs::read_to_string(owner.join(UID_RECORD))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
        else {
            return;
        };
        if self.owner_of(uid).as_deref() == Some(owner) {
            let _ = fs::remove_file(self.dir.join(uid.to_string()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_refuse_root() {
        assert_eq!(
            "100000-165535".parse::<UidRange>().unwrap(),
            UidRange::default()
        );
        assert_eq!(
            "200000:10".parse::<UidRange>().unwrap(),
            UidRange {
                start: 200_000,
                count: 10
            }
        );
        for bad in ["0-10", "10-5", "x", "5:0", "4294967295:2", "100000"] {
            let e = bad.parse::<UidRange>().unwrap_err().to_string();
            assert!(e.contains("START-END"), "{bad}: {e}");
        }
        assert_eq!(UidRange::default().to_string(), "100000-165535");
    }

    #[test]
    fn each_sandbox_keeps_its_own_uid() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a");
        let b = d.path().join("b");
        let c = d.path().join("c");
        for x in [&a, &b, &c] {
            fs::create_dir(x).unwrap();
        }
        let alloc = UidAllocator::new(
            d.path().join("uids"),
            UidRange {
                start: 500_000,
                count: 2,
            },
        );
        let ua = alloc.uid_for(&a).unwrap();
        let ub = alloc.uid_for(&b).unwrap();
        assert_ne!(ua, ub);
        assert!((500_000..500_002).contains(&ua) && (500_000..500_002).contains(&ub));
        // A restart (a new allocator over the same records) keeps them.
        let again = UidAllocator::new(d.path().join("uids"), alloc.range);
        assert_eq!(again.uid_for(&a).unwrap(), ua);
        assert_eq!(again.uid_for(&b).unwrap(), ub);
        // Full: a clear error.
        let e = again.uid_for(&c).unwrap_err().to_string();
        assert!(e.contains("--jail-uid-range"), "{e}");
        // Released: reused.
        again.release(&a);
        assert_eq!(again.uid_for(&c).unwrap(), ua);
        // An owner that vanished without releasing gives its uid back.
        fs::remove_dir_all(&b).unwrap();
        fs::create_dir(&a).ok();
        fs::remove_file(a.join(UID_RECORD)).ok();
        assert_eq!(again.uid_for(&a).unwrap(), ub);
    }

    #[test]
    fn ldd_output_gives_the_loader_and_libraries() {
        let out = "\tlinux-vdso.so.1 (0x00007ffd5b1f0000)\n\
                   \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            parse_ldd(out),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                "/lib/x86_64-linux-gnu/libgcc_s.so.1".into(),
                "/lib64/ld-linux-x86-64.so.2".into(),
            ]
        );
        // This test binary is dynamic: its loader is found.
        let me = std::env::current_exe().unwrap();
        assert!(libraries(&me)
            .unwrap()
            .iter()
            .any(|p| p.to_string_lossy().contains("ld-linux")));
    }
}
