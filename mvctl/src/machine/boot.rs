//! The boot dir: L1's out dir in machine mode.
//!
//! The testhost init (`resources/testhost/init`) reads its instructions
//! from the out dir: `testhost.conf` (`out=`, `mode=pipe`) and `job.sh`,
//! and reports there (`job-started`, `exit-status`, `init-error`,
//! `timings`). In machine mode the job is `machine-l1` (copied here, so L1
//! sees it whatever the host path of the scripts), which installs the
//! programs listed in `artifacts` on the machine's disk and runs mvmd until
//! the host writes `stop` on the control port. The API token is generated
//! here too, 0600, fresh for every boot; mvmd in L1 reads it through the
//! share, mvctl reads it on the host.
//!
//! Host directories shared writable into the machine ([`host_shares`]:
//! the user's home and the directory the machine is started from, as
//! podman machine shares the home) are `rw=` lines of `testhost.conf`
//! (the testhost init mounts them at their host paths, over L1's
//! read-only view of the host root) and the `shares` file, from which
//! `machine-l1` gives them to mvmd (`--machine-share`): a bind mount of a
//! path in one of them then writes through to the host, and mvmd refuses
//! one elsewhere, naming the shared ones.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::paths::BootFiles;

/// Errors preparing the boot dir.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// I/O.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> BootError {
    let path = path.to_path_buf();
    move |source| BootError::Io { what, path, source }
}

/// What the job in L1 needs.
#[derive(Debug, Clone)]
pub struct Job {
    /// The `machine-l1` script to copy.
    pub script: PathBuf,
    /// The `artifacts` list ([`super::artifacts::manifest`]).
    pub artifacts: String,
    /// Variables for mvmd (`MVMD_LOG`, `RUST_BACKTRACE`).
    pub env: Vec<(String, String)>,
    /// Host directories shared writable at their paths ([`host_shares`]).
    pub shares: Vec<PathBuf>,
}

/// Paths L1 mounts filesystems of its own on: a share there would be
/// hidden or would hide them.
const L1_OWN: [&str; 3] = ["/proc", "/sys", "/dev"];

/// The host directories the machine shares writable at their host paths:
/// `home` and `cwd` (canonical), the root and paths under L1's own
/// `/proc`, `/sys`, `/dev` left out, as are paths with a newline (the
/// testhost's line-based contract) or inside another share.
pub fn host_shares(home: Option<&Path>, cwd: Option<&Path>) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    for p in [home, cwd].into_iter().flatten() {
        let Ok(p) = fs::canonicalize(p) else { continue };
        if p == Path::new("/")
            || !p.is_dir()
            || L1_OWN.iter().any(|o| p.starts_with(o))
            || p.to_string_lossy().contains('\n')
        {
            continue;
        }
        out.push(p);
    }
    out.sort();
    out.dedup();
    let all = out.clone();
    out.retain(|p| !all.iter().any(|o| o != p && p.starts_with(o)));
    out
}

/// Make a fresh boot dir `dir` (the previous one becomes `previous`):
/// the testhost contract files, the job, the token. Returns the token.
pub fn prepare(dir: &Path, previous: &Path, job: &Job) -> Result<String, BootError> {
    if dir.exists() {
        if previous.exists() {
            fs::remove_dir_all(previous).map_err(io("remove", previous))?;
        }
        fs::rename(dir, previous).map_err(io("rename", dir))?;
    }
    fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .map_err(io("create", dir))?;
    let files = BootFiles::new(dir);

    let mut conf = format!("out={}\nmode=pipe\n", dir.display());
    let mut list = String::new();
    for (i, p) in job.shares.iter().enumerate() {
        conf.push_str(&format!("rw={} {}\n", share_tag(i), p.display()));
        list.push_str(&format!("{}\n", p.display()));
    }
    fs::write(dir.join("testhost.conf"), conf).map_err(io("write", &dir.join("testhost.conf")))?;
    fs::write(dir.join("shares"), list).map_err(io("write", &dir.join("shares")))?;

    let script = dir.join("machine-l1");
    fs::copy(&job.script, &script).map_err(io("copy", &job.script))?;
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755))
        .map_err(io("chmod", &script))?;

    let token = new_token().map_err(io("generate a token for", &files.token()))?;
    write_private(&files.token(), token.as_bytes())?;

    fs::write(files.artifacts(), &job.artifacts).map_err(io("write", &files.artifacts()))?;
    fs::write(dir.join("job.sh"), job_script(dir, job))
        .map_err(io("write", &dir.join("job.sh")))?;
    // The files QEMU appends to; created now so they exist (empty) even
    // when QEMU fails before opening them.
    for f in [
        files.console_log(),
        files.machine_log(),
        files.mvmd_log(),
        files.qemu_log(),
    ] {
        fs::File::create(&f).map_err(io("create", &f))?;
    }
    Ok(token)
}

/// The 9p tag of share `i` (the testhost's `rw<N>`, as `run --rw`).
pub fn share_tag(i: usize) -> String {
    format!("rw{i}")
}

/// `job.sh`: exports, `cd /`, exec the machine job (bash, as the testhost
/// init runs it).
pub fn job_script(dir: &Path, job: &Job) -> String {
    let mut s = String::from(
        "#!/bin/bash\n# Written by mvctl machine start; run by the testhost init in L1.\n",
    );
    for (k, v) in &job.env {
        s.push_str(&format!("export {k}={}\n", sh_quote(v)));
    }
    s.push_str("cd / || exit 125\n");
    s.push_str(&format!(
        "exec /bin/bash {} {} {}\n",
        sh_quote(&dir.join("machine-l1").to_string_lossy()),
        sh_quote(&dir.to_string_lossy()),
        sh_quote(&BootFiles::new(dir).token().to_string_lossy()),
    ));
    s
}

/// Quote for sh: inside single quotes everything is literal but `'`.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// 32 random bytes from the kernel, hex: the API token.
fn new_token() -> std::io::Result<String> {
    let mut buf = [0u8; 32];
    let mut filled = 0;
    while filled < buf.len() {
        // SAFETY: the pointer and length describe the unfilled tail of
        // `buf`, which lives across the call; getrandom writes at most that.
        let n =
            unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), buf.len() - filled, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        filled += n as usize;
    }
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// Write `data` to a new file readable by its owner only, whatever the
/// umask.
fn write_private(path: &Path, data: &[u8]) -> Result<(), BootError> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io("create", path))?;
    f.set_permissions(fs::Permissions::from_mode(0o600))
        .map_err(io("chmod", path))?;
    f.write_all(data).map_err(io("write", path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn quoting_survives_the_shell() {
        for s in ["plain", "it's", "a b", "$HOME `x` \"y\" \\z", ""] {
            let out = Command::new("sh")
                .arg("-c")
                .arg(format!("printf %s {}", sh_quote(s)))
                .output()
                .unwrap();
            assert_eq!(String::from_utf8_lossy(&out.stdout), s);
        }
    }

    #[test]
    fn shares_are_home_and_cwd_once_and_never_the_root() {
        let d = tempfile::tempdir().unwrap();
        let home = d.path().join("home");
        let inside = home.join("proj");
        let other = d.path().join("other");
        for p in [&inside, &other] {
            fs::create_dir_all(p).unwrap();
        }
        let canon = |p: &Path| fs::canonicalize(p).unwrap();
        assert_eq!(
            host_shares(Some(&home), Some(&other)),
            vec![canon(&home), canon(&other)]
        );
        assert_eq!(host_shares(Some(&home), Some(&inside)), vec![canon(&home)]);
        assert_eq!(host_shares(Some(&inside), Some(&home)), vec![canon(&home)]);
        assert_eq!(
            host_shares(Some(Path::new("/")), Some(&home)),
            vec![canon(&home)]
        );
        assert!(host_shares(Some(Path::new("/proc/self")), None).is_empty());
        assert!(host_shares(Some(&d.path().join("missing")), None).is_empty());
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&home, &link).unwrap();
        assert_eq!(host_shares(Some(&link), None), vec![canon(&home)]);
    }

    #[test]
    fn boot_dir_contents() {
        let d = tempfile::tempdir().unwrap();
        let script = d.path().join("machine-l1-src");
        fs::write(
            &script,
            "#!/bin/bash\necho \"args: $*\"; echo \"log: $MVMD_LOG\"\n",
        )
        .unwrap();
        let job = Job {
            script,
            artifacts: "mvmd 00 1 /opt/it's/mvmd\n".into(),
            env: vec![("MVMD_LOG".into(), "debug, it's".into())],
            shares: vec!["/home/u".into(), "/srv/a b".into()],
        };
        let boot = d.path().join("boot");
        let prev = d.path().join("boot.1");
        let t1 = prepare(&boot, &prev, &job).unwrap();
        assert_eq!(t1.len(), 64);
        let files = BootFiles::new(&boot);
        assert_eq!(fs::read_to_string(files.token()).unwrap(), t1);
        assert_eq!(
            fs::metadata(files.token()).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            fs::metadata(&boot).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let conf = fs::read_to_string(boot.join("testhost.conf")).unwrap();
        assert_eq!(
            conf.lines().next().unwrap(),
            format!("out={}", boot.display())
        );
        assert!(
            conf.contains("\nrw=rw0 /home/u\nrw=rw1 /srv/a b\n"),
            "{conf}"
        );
        assert_eq!(
            fs::read_to_string(boot.join("shares")).unwrap(),
            "/home/u\n/srv/a b\n"
        );
        // The job runs the copied script with the right arguments.
        let out = Command::new("bash")
            .arg(boot.join("job.sh"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(&format!(
                "args: {} {}",
                boot.display(),
                files.token().display()
            )),
            "{text}"
        );
        assert!(text.contains("log: debug, it's"), "{text}");
        assert_eq!(
            fs::read_to_string(files.artifacts()).unwrap(),
            "mvmd 00 1 /opt/it's/mvmd\n"
        );
        // A second boot keeps the first as the previous one, with a new token.
        fs::write(files.mvmd_log(), "first boot").unwrap();
        let t2 = prepare(&boot, &prev, &job).unwrap();
        assert_ne!(t1, t2);
        assert_eq!(
            fs::read_to_string(BootFiles::new(&prev).mvmd_log()).unwrap(),
            "first boot"
        );
        assert_eq!(fs::read_to_string(files.mvmd_log()).unwrap(), "");
    }
}
