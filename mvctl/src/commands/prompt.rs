//! Reading a secret from the terminal without echo (`login`).

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;

/// Ask `question` on the controlling terminal and read a line with echo
/// off. Fails when there is no terminal (use `--password-stdin` then).
pub fn secret(question: &str) -> std::io::Result<String> {
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")?;
    let fd = tty.as_raw_fd();
    // SAFETY: termios is plain data; tcgetattr fills it for a valid fd.
    let mut saved: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is open for the lifetime of `tty`; `saved` is writable.
    if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut quiet = saved;
    quiet.c_lflag &= !libc::ECHO;
    quiet.c_lflag |= libc::ECHONL;
    // SAFETY: as above; `quiet` is a valid termios copied from the terminal.
    if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &quiet) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let result = read_answer(&tty, question);
    // SAFETY: restores the settings read above on the same fd.
    unsafe { libc::tcsetattr(fd, libc::TCSANOW, &saved) };
    result
}

/// Ask `question` on the terminal and read a visible line.
pub fn line(question: &str) -> std::io::Result<String> {
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")?;
    read_answer(&tty, question)
}

fn read_answer(tty: &File, question: &str) -> std::io::Result<String> {
    let mut w = tty;
    w.write_all(question.as_bytes())?;
    w.flush()?;
    let mut s = String::new();
    BufReader::new(tty).read_line(&mut s)?;
    Ok(s.trim_end_matches(['\n', '\r']).to_string())
}
