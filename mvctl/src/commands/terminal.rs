//! The local terminal: size and raw mode (termios through libc), shared by
//! `exec -t`, `run -t`, `start -a` and `attach`.

use std::io;

/// Rows and columns of the terminal on stdout (or stdin).
pub fn size() -> Option<(u16, u16)> {
    for fd in [libc::STDOUT_FILENO, libc::STDIN_FILENO] {
        // SAFETY: an all-zero winsize is valid.
        let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
        // SAFETY: TIOCGWINSZ writes a winsize to the pointer we own.
        let r = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) };
        if r == 0 && ws.ws_row > 0 && ws.ws_col > 0 {
            return Some((ws.ws_row, ws.ws_col));
        }
    }
    None
}

/// Stdin in raw mode until dropped.
pub struct RawMode {
    saved: libc::termios,
}

impl RawMode {
    /// Raw mode when `wanted` (a terminal session fed from our terminal),
    /// as the error callers report; `None` otherwise. Restored when the
    /// guard drops, on every way out of the caller.
    pub fn enter_if(wanted: bool) -> Result<Option<RawMode>, super::CmdError> {
        if !wanted {
            return Ok(None);
        }
        RawMode::enter()
            .map(Some)
            .map_err(|source| super::CmdError::Io {
                what: "cannot put the terminal in raw mode".into(),
                source,
            })
    }

    /// Put stdin in raw mode, keeping the old settings.
    pub fn enter() -> io::Result<RawMode> {
        // SAFETY: an all-zero termios is valid storage for tcgetattr.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: tcgetattr writes to the termios we own.
        if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut t) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let saved = t;
        // SAFETY: cfmakeraw changes the termios we own.
        unsafe { libc::cfmakeraw(&mut t) };
        // SAFETY: tcsetattr reads the termios we own.
        if unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &t) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: restores the settings read in `enter`.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &self.saved) };
    }
}
