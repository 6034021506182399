//! A command run on a pseudo-terminal of the test's own (its stdin,
//! stdout, stderr and controlling terminal), as `mvctl run -it` and
//! `ctr run -t` need one: what it wrote to the terminal and its status.
//!
//! Both ends are close-on-exec from their creation (`posix_openpt` with
//! `O_CLOEXEC`, not `openpty`): tests run on several threads, and a
//! process another thread spawns meanwhile (a daemon) would otherwise keep
//! the terminal open for good, so its master would never reach its end.

use std::ffi::CStr;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A new terminal of `rows` x `cols`: its master and its slave.
fn open(rows: u16, cols: u16) -> std::io::Result<(std::fs::File, std::fs::File)> {
    // SAFETY: posix_openpt opens /dev/ptmx with these flags and returns a
    // new descriptor or -1.
    let fd = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new descriptor, ours alone.
    let master = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let mut name = [0 as libc::c_char; 128];
    // SAFETY: grantpt and unlockpt on our master; ptsname_r writes at most
    // `name.len()` bytes, NUL included, into our buffer.
    unsafe {
        if libc::grantpt(fd) != 0
            || libc::unlockpt(fd) != 0
            || libc::ptsname_r(fd, name.as_mut_ptr(), name.len()) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    // SAFETY: ptsname_r succeeded: a NUL-terminated string in `name`.
    let path = unsafe { CStr::from_ptr(name.as_ptr()) }
        .to_string_lossy()
        .into_owned();
    // std opens with O_CLOEXEC.
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(path)?;
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads the winsize we own.
    if unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSWINSZ, &size) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((master, slave))
}

/// Run `cmd` on a new terminal of `rows` x `cols`, typing `input`; its
/// exit status and everything it wrote to the terminal (carriage returns
/// kept). A command still running after `timeout` is killed: the error
/// says so, with what it wrote until then.
pub fn run(
    mut cmd: Command,
    rows: u16,
    cols: u16,
    input: &[u8],
    timeout: Duration,
) -> Result<(ExitStatus, String), String> {
    let (mut master, slave) = open(rows, cols).map_err(|e| format!("a pty: {e}"))?;
    let stdio = || Stdio::from(slave.try_clone().expect("dup of the pty's slave"));
    cmd.stdin(stdio()).stdout(stdio()).stderr(stdio());
    // SAFETY: runs in the forked child before exec: setsid and an ioctl on
    // its stdin (the slave), both async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let spawned = cmd.spawn();
    // The command keeps the slave's descriptors it was given: only the
    // child may hold the slave now, so that its end is the master's end.
    drop(cmd);
    drop(slave);
    let mut child = spawned.map_err(|e| format!("spawning on a pty: {e}"))?;
    master
        .write_all(input)
        .map_err(|e| format!("typing on the pty: {e}"))?;
    let output = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = output.clone();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        // EIO once every slave descriptor is closed: the end.
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    let text = || String::from_utf8_lossy(&output.lock().unwrap()).into_owned();
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().map_err(|e| e.to_string())? {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "{:?} on a pty did not end within {timeout:?}; it wrote: {:?}",
                child.id(),
                text()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // The terminal's end comes when the child's descendants that share it
    // are gone too: bounded as well.
    while !reader.is_finished() {
        if Instant::now() > deadline {
            return Err(format!(
                "the command ended ({status}) but its terminal stayed open (a descendant holds it) past {timeout:?}; it wrote: {:?}",
                text()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = reader.join();
    Ok((status, text()))
}
