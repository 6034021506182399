//! The programs the machine runs: mvmd, mvm-vmm, mvm-jailer, virtiofsd,
//! the guest init and the guest kernel. The machine keeps its own copies of them on its disk
//! (`/var/lib/mvm/machine/` in L1) and runs mvmd from there with explicit
//! `--kernel/--init/--vmm/--jailer` (and `MVM_VIRTIOFSD`), so it depends neither on where mvm was built
//! or installed on the host (a checkout under /tmp works, though L1 has a
//! /tmp of its own) nor on those files staying put while it runs (a
//! rebuild does not change the programs of a running machine).
//!
//! At each start mvctl finds the host's files (as mvmd would find them
//! next to itself, see [`locate`]), hashes them (SHA-256, remembered per
//! file identity in `artifact-hashes.json` so an unchanged file is not
//! read again) and writes the list to the boot dir (`artifacts`: name,
//! hash, size, host path). `machine-l1` copies a file onto the disk only
//! when its hash differs from the copy's, reading it through L1's view of
//! the host root as it is (`/run/hostroot`, which has the host's /tmp),
//! and checks the copy's hash before it replaces the old one.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Environment variable naming the guest kernel (as for mvmd).
pub const KERNEL_ENV: &str = "MVM_KERNEL";
/// Environment variable naming the guest init (as for mvmd).
pub const INIT_ENV: &str = "MVM_INIT";
/// Environment variable naming mvm-vmm (as for mvmd).
pub const VMM_ENV: &str = "MVM_VMM";
/// Environment variable naming mvm-jailer (as for mvmd).
pub const JAILER_ENV: &str = "MVM_JAILER";
/// Environment variable naming virtiofsd (as for mvmd).
pub const VIRTIOFSD_ENV: &str = "MVM_VIRTIOFSD";

/// Errors finding or hashing the programs.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// Nothing found.
    #[error(
        "cannot find {what} for the machine (looked at {looked}); build it (make build kernel), install mvm \
         (make install), or set {env}"
    )]
    Missing {
        /// What is missing.
        what: &'static str,
        /// The variable that names it.
        env: &'static str,
        /// Where we looked.
        looked: String,
    },
    /// Reading a file failed.
    #[error("read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A path that cannot be written to the line-based list.
    #[error("{path:?} contains a newline; the machine cannot use it")]
    Newline {
        /// The path.
        path: PathBuf,
    },
}

/// One program of the machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    /// Its name on the machine's disk, one of [`NAMES`].
    pub name: String,
    /// The host file it is copied from.
    pub source: PathBuf,
    /// SHA-256 of its content, hex.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
}

/// The host files of the programs, in the order of [`NAMES`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sources {
    /// mvmd.
    pub mvmd: PathBuf,
    /// mvm-vmm.
    pub vmm: PathBuf,
    /// The static guest init.
    pub init: PathBuf,
    /// The guest kernel (ELF vmlinux).
    pub kernel: PathBuf,
    /// mvm-jailer, which starts every VMM.
    pub jailer: PathBuf,
    /// virtiofsd, the virtio-fs backend of volumes and bind mounts.
    pub virtiofsd: PathBuf,
}

/// Names of the copies on the machine's disk (machine-l1 uses them too).
pub const NAMES: [&str; 6] = [
    "mvmd",
    "mvm-vmm",
    "mvm-init",
    "vmlinux",
    "mvm-jailer",
    "virtiofsd",
];

impl Sources {
    fn paths(&self) -> [&Path; 6] {
        [
            &self.mvmd,
            &self.vmm,
            &self.init,
            &self.kernel,
            &self.jailer,
            &self.virtiofsd,
        ]
    }

    /// The sources a machine was started with, from its artifact list;
    /// `None` if one is missing (a machine started by an older mvctl).
    fn of(running: &[Artifact]) -> Option<Self> {
        let by_name = |n: &str| {
            running
                .iter()
                .find(|a| a.name == n)
                .map(|a| a.source.clone())
        };
        Some(Sources {
            mvmd: by_name("mvmd")?,
            vmm: by_name("mvm-vmm")?,
            init: by_name("mvm-init")?,
            kernel: by_name("vmlinux")?,
            jailer: by_name("mvm-jailer")?,
            virtiofsd: by_name("virtiofsd")?,
        })
    }
}

/// Find the programs that go with `mvmd`: a variable if set (an explicit
/// choice must exist: no silent fallback), else where mvmd itself would
/// look relative to its own binary (`<prefix>/lib/mvm/...` of an install,
/// the cargo target dir of a build tree), else `/usr/local`, and for the
/// kernel the newest build in the kernel cache. The same order as mvmd's
/// (mvm-runtime's artifacts), but from mvmd's path rather than mvctl's.
pub fn locate(mvmd: &Path) -> Result<Sources, ArtifactError> {
    locate_with(mvmd, &|k| std::env::var_os(k))
}

/// [`locate`] with `env` in place of the environment.
pub fn locate_with(
    mvmd: &Path,
    env: &dyn Fn(&str) -> Option<std::ffi::OsString>,
) -> Result<Sources, ArtifactError> {
    let pick = |what, var, defaults| pick(what, var, env(var), defaults);
    let dir = mvmd.parent().unwrap_or(Path::new("/"));
    let prefix = dir.parent().unwrap_or(Path::new("/"));
    let vmm = pick(
        "mvm-vmm",
        VMM_ENV,
        vec![dir.join("mvm-vmm"), "/usr/local/bin/mvm-vmm".into()],
    )?;
    let init = pick(
        "the guest init (mvm-init)",
        INIT_ENV,
        vec![
            prefix.join("lib/mvm/mvm-init"),
            // A build tree: target/<profile>/mvmd and
            // target/x86_64-unknown-linux-gnu/release/mvm-init.
            prefix.join("x86_64-unknown-linux-gnu/release/mvm-init"),
            "/usr/local/lib/mvm/mvm-init".into(),
        ],
    )?;
    let mut kernels = vec![
        prefix.join("lib/mvm/vmlinux"),
        "/usr/local/lib/mvm/vmlinux".into(),
    ];
    kernels.extend(cached("kernel", "vmlinux"));
    let kernel = pick("the guest kernel (vmlinux)", KERNEL_ENV, kernels)?;
    let jailer = pick(
        "mvm-jailer",
        JAILER_ENV,
        vec![dir.join("mvm-jailer"), "/usr/local/bin/mvm-jailer".into()],
    )?;
    let mut virtiofsds = vec![
        prefix.join("lib/mvm/virtiofsd"),
        "/usr/local/lib/mvm/virtiofsd".into(),
    ];
    virtiofsds.extend(cached("virtiofsd", "bin/virtiofsd"));
    let virtiofsd = pick("virtiofsd", VIRTIOFSD_ENV, virtiofsds)?;
    Ok(Sources {
        mvmd: mvmd.to_path_buf(),
        vmm,
        init,
        kernel,
        jailer,
        virtiofsd,
    })
}

/// Builds in the cache of resources/<what>/build.sh (`<cache>/<what>/<version>/<file>`),
/// newest first.
fn cached(what: &str, file: &str) -> Vec<PathBuf> {
    let cache = std::env::var_os("MVM_CACHE")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/mvm"));
    let Ok(rd) = fs::read_dir(cache.join(what)) else {
        return Vec::new();
    };
    let mut found: Vec<(std::time::SystemTime, PathBuf)> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.path().join(file))
        .filter_map(|p| Some((fs::metadata(&p).ok()?.modified().ok()?, p)))
        .collect();
    found.sort_by_key(|f| std::cmp::Reverse(f.0));
    found.into_iter().map(|f| f.1).collect()
}

fn pick(
    what: &'static str,
    env: &'static str,
    value: Option<std::ffi::OsString>,
    defaults: Vec<PathBuf>,
) -> Result<PathBuf, ArtifactError> {
    let resolve = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
    if let Some(v) = value.filter(|v| !v.is_empty()) {
        let p = PathBuf::from(v);
        if p.is_file() {
            return Ok(resolve(&p));
        }
        return Err(ArtifactError::Missing {
            what,
            env,
            looked: format!("{}={}", env, p.display()),
        });
    }
    if let Some(p) = defaults.iter().find(|p| p.is_file()) {
        return Ok(resolve(p));
    }
    Err(ArtifactError::Missing {
        what,
        env,
        looked: defaults
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// What identifies a file's content without reading it: if none of these
/// changed, neither did the content (a write changes mtime and ctime, a
/// replacement the inode).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Identity {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl Identity {
    fn of(m: &fs::Metadata) -> Self {
        Identity {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Known {
    identity: Identity,
    sha256: String,
}

/// Hash the programs, reusing the hashes remembered in `memo` for files
/// that did not change, and remember the new ones there.
pub fn hash_all(sources: &Sources, memo: &Path) -> Result<Vec<Artifact>, ArtifactError> {
    let mut known: BTreeMap<PathBuf, Known> = fs::read(memo)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let mut changed = false;
    let mut out = Vec::new();
    for (name, path) in NAMES.iter().zip(sources.paths()) {
        if path.as_os_str().as_encoded_bytes().contains(&b'\n') {
            return Err(ArtifactError::Newline {
                path: path.to_path_buf(),
            });
        }
        let read_err = |source| ArtifactError::Read {
            path: path.to_path_buf(),
            source,
        };
        let id = Identity::of(&fs::metadata(path).map_err(read_err)?);
        let sha256 = match known.get(path) {
            Some(k) if k.identity == id => k.sha256.clone(),
            _ => {
                let h = sha256_file(path).map_err(read_err)?;
                // Changed while being read: hash what it is now next time.
                let after = fs::metadata(path).map(|m| Identity::of(&m)).ok();
                if after.as_ref() == Some(&id) {
                    known.insert(
                        path.to_path_buf(),
                        Known {
                            identity: id.clone(),
                            sha256: h.clone(),
                        },
                    );
                    changed = true;
                }
                h
            }
        };
        out.push(Artifact {
            name: name.to_string(),
            source: path.to_path_buf(),
            sha256,
            size: id.size,
        });
    }
    if changed {
        // Only the files in use: the memo does not grow without bound.
        known.retain(|p, _| sources.paths().contains(&p.as_path()));
        let _ = write_atomic(memo, &serde_json::to_vec_pretty(&known).unwrap_or_default());
    }
    Ok(out)
}

/// SHA-256 of a file, hex.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let r = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(data)?;
        fs::rename(&tmp, path)
    })();
    if r.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    r
}

/// The `artifacts` file of the boot dir, one line per program:
/// `NAME SHA256 SIZE HOST-PATH` (the path last: it may hold spaces).
pub fn manifest(artifacts: &[Artifact]) -> String {
    artifacts
        .iter()
        .map(|a| {
            format!(
                "{} {} {} {}\n",
                a.name,
                a.sha256,
                a.size,
                a.source.display()
            )
        })
        .collect()
}

/// The names of the programs whose host files no longer hash as
/// `running` (what a running machine was started with); a file that is
/// gone counts as changed.
pub fn changed_since(running: &[Artifact], memo: &Path) -> Vec<String> {
    let Some(sources) = Sources::of(running) else {
        // Started by an mvctl that knew fewer programs: restart it.
        return running.iter().map(|a| a.name.clone()).collect();
    };
    match hash_all(&sources, memo) {
        Ok(now) => running
            .iter()
            .zip(&now)
            .filter(|(a, b)| a.sha256 != b.sha256)
            .map(|(a, _)| a.name.clone())
            .collect(),
        Err(_) => running.iter().map(|a| a.name.clone()).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<std::ffi::OsString> {
        None
    }

    #[test]
    fn an_explicit_choice_must_exist() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().canonicalize().unwrap();
        let mvmd = tree(&root);
        let other = root.join("other-init");
        fs::write(&other, "i2").unwrap();
        let env = |k: &str| (k == INIT_ENV).then(|| other.clone().into_os_string());
        assert_eq!(locate_with(&mvmd, &env).unwrap().init, other);
        let env = |k: &str| (k == KERNEL_ENV).then(|| "/no/such/vmlinux".into());
        let e = locate_with(&mvmd, &env).unwrap_err().to_string();
        assert!(e.contains("MVM_KERNEL=/no/such/vmlinux"), "{e}");
    }

    fn tree(root: &Path) -> PathBuf {
        // An install layout: bin/{mvmd,mvm-vmm,mvm-jailer},
        // lib/mvm/{mvm-init,vmlinux,virtiofsd}.
        fs::create_dir_all(root.join("bin")).unwrap();
        fs::create_dir_all(root.join("lib/mvm")).unwrap();
        for (p, c) in [
            ("bin/mvmd", "d"),
            ("bin/mvm-vmm", "v"),
            ("lib/mvm/mvm-init", "i"),
            ("lib/mvm/vmlinux", "k"),
            ("bin/mvm-jailer", "j"),
            ("lib/mvm/virtiofsd", "f"),
        ] {
            fs::write(root.join(p), c).unwrap();
        }
        root.join("bin/mvmd")
    }

    #[test]
    fn found_next_to_mvmd_and_hashed_once() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().canonicalize().unwrap();
        let mvmd = tree(&root);
        let s = locate_with(&mvmd, &no_env).unwrap();
        assert_eq!(s.vmm, root.join("bin/mvm-vmm"));
        assert_eq!(s.init, root.join("lib/mvm/mvm-init"));
        assert_eq!(s.kernel, root.join("lib/mvm/vmlinux"));

        let memo = root.join("memo.json");
        let a = hash_all(&s, &memo).unwrap();
        assert_eq!(
            a.iter().map(|a| a.name.as_str()).collect::<Vec<_>>(),
            NAMES.to_vec()
        );
        // sha256("d")
        assert_eq!(
            a[0].sha256,
            "18ac3e7343f016890c510e93f935261169d9e3f565436429830faf0934f4f8e4"
        );
        assert_eq!(a[0].size, 1);
        assert!(memo.is_file());
        assert!(changed_since(&a, &memo).is_empty());

        // A remembered hash is trusted while the file is unchanged...
        let mut m: BTreeMap<PathBuf, Known> =
            serde_json::from_slice(&fs::read(&memo).unwrap()).unwrap();
        m.get_mut(&s.vmm).unwrap().sha256 = "remembered".into();
        fs::write(&memo, serde_json::to_vec(&m).unwrap()).unwrap();
        assert_eq!(hash_all(&s, &memo).unwrap()[1].sha256, "remembered");
        // ...and not once it changed (new content, new size and ctime).
        fs::write(&s.vmm, "v2").unwrap();
        let b = hash_all(&s, &memo).unwrap();
        assert_eq!(b[1].sha256, sha256_file(&s.vmm).unwrap());
        assert_eq!(changed_since(&a, &memo), vec!["mvm-vmm".to_string()]);

        let text = manifest(&b);
        let first = text.lines().next().unwrap();
        assert_eq!(
            first,
            format!("mvmd {} 1 {}", a[0].sha256, root.join("bin/mvmd").display())
        );
        assert_eq!(text.lines().count(), NAMES.len());

        // A missing program is named with where it was looked for.
        fs::remove_file(root.join("lib/mvm/mvm-init")).unwrap();
        let e = locate_with(&mvmd, &no_env).unwrap_err().to_string();
        assert!(
            e.contains("mvm-init") && e.contains("lib/mvm/mvm-init") && e.contains(INIT_ENV),
            "{e}"
        );
        // A file gone since the machine started counts as changed.
        assert!(changed_since(&a, &memo).contains(&"mvm-init".to_string()));
    }

    #[test]
    fn build_tree_layout() {
        let d = tempfile::tempdir().unwrap();
        let t = d.path().canonicalize().unwrap();
        fs::create_dir_all(t.join("debug")).unwrap();
        fs::create_dir_all(t.join("x86_64-unknown-linux-gnu/release")).unwrap();
        fs::write(t.join("debug/mvmd"), "d").unwrap();
        fs::write(t.join("debug/mvm-vmm"), "v").unwrap();
        fs::write(t.join("debug/mvm-jailer"), "j").unwrap();
        fs::write(t.join("x86_64-unknown-linux-gnu/release/mvm-init"), "i").unwrap();
        // The kernel and virtiofsd come from the cache or /usr/local when
        // the tree has none; skip the check if this host has neither.
        match locate_with(&t.join("debug/mvmd"), &no_env) {
            Ok(s) => {
                assert_eq!(s.init, t.join("x86_64-unknown-linux-gnu/release/mvm-init"));
                assert_eq!(s.vmm, t.join("debug/mvm-vmm"));
                assert_eq!(s.jailer, t.join("debug/mvm-jailer"));
            }
            Err(e) => assert!(
                e.to_string().contains("guest kernel") || e.to_string().contains("virtiofsd"),
                "{e}"
            ),
        }
    }
}
