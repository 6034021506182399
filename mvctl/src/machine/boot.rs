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

    let conf = format!("out={}\nmode=pipe\n", dir.display());
    fs::write(dir.join("testhost.conf"), conf).map_err(io("write", &dir.join("testhost.conf")))?;

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
