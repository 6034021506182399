//! Files the guest can make the VMM write to (the console, the VMM's own
//! log) without bound, bounded: a [`RotatingFile`] keeps the current file
//! under its cap by renaming it to `NAME.1` (replacing an older one) and
//! starting afresh, so at most twice the cap is ever on disk and a reader
//! always finds the newest output in `NAME`. Rotation happens between
//! writes, never inside one, so a line stays whole when the writer hands
//! over whole lines (the console does).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use std::sync::Mutex;

/// An append-only file that rotates at `max` bytes.
#[derive(Debug)]
pub struct RotatingFile {
    path: PathBuf,
    file: File,
    /// Bytes in the current file.
    size: u64,
    /// The cap; `None`: never rotate.
    max: Option<u64>,
}

pub use mvm_vmm_api::config::previous_part as previous;

impl RotatingFile {
    /// Open `path` for appending, rotating at `max` bytes.
    pub fn open(path: &Path, max: Option<u64>) -> io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        let mut f = Self {
            path: path.to_path_buf(),
            file,
            size,
            max,
        };
        // A file left over a previous run's cap starts this run rotated.
        if f.max.is_some_and(|m| f.size >= m) {
            f.rotate()?;
        }
        Ok(f)
    }

    fn rotate(&mut self) -> io::Result<()> {
        std::fs::rename(&self.path, previous(&self.path))?;
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

impl Write for RotatingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(max) = self.max {
            // Rotate before a write that would cross the cap (unless the
            // file is empty: one write larger than the cap goes alone).
            if self.size > 0 && self.size.saturating_add(buf.len() as u64) > max {
                self.rotate()?;
            }
        }
        let n = self.file.write(buf)?;
        self.size = self.size.saturating_add(n as u64);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Where the VMM's log lines go: stderr until the configuration names a
/// file (errors reading the configuration go to stderr, which the runtime
/// points at the same file), then that file with its cap.
#[derive(Debug, Default)]
pub struct LogSink {
    file: Mutex<Option<RotatingFile>>,
}

impl LogSink {
    /// From now on, write to `file`.
    pub fn set_file(&self, file: RotatingFile) {
        *self.file.lock().unwrap_or_else(|e| e.into_inner()) = Some(file);
    }
}

/// One log line's writer (tracing asks for one per event).
pub struct LogWriter<'a>(&'a LogSink);

impl Write for LogWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut f = self.0.file.lock().unwrap_or_else(|e| e.into_inner());
        match f.as_mut() {
            // A log file that cannot be written must not stop the VMM:
            // the line goes to stderr instead.
            Some(file) => file.write(buf).or_else(|_| io::stderr().write(buf)),
            None => io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The process's log sink (the VMM logs from several threads through one
/// `tracing` subscriber).
pub fn global() -> &'static LogSink {
    static LOG: std::sync::OnceLock<LogSink> = std::sync::OnceLock::new();
    LOG.get_or_init(LogSink::default)
}

/// `tracing`'s handle on [`global`].
#[derive(Debug, Clone, Copy, Default)]
pub struct GlobalLog;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for GlobalLog {
    type Writer = LogWriter<'static>;
    fn make_writer(&'a self) -> Self::Writer {
        LogWriter(global())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_keeps_two_files_under_the_cap() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("console.log");
        let mut f = RotatingFile::open(&p, Some(100)).unwrap();
        for i in 0..1000 {
            f.write_all(format!("line {i:04}\n").as_bytes()).unwrap();
        }
        let cur = std::fs::read_to_string(&p).unwrap();
        let old = std::fs::read_to_string(previous(&p)).unwrap();
        assert!(
            cur.len() <= 100 && old.len() <= 100,
            "{} {}",
            cur.len(),
            old.len()
        );
        assert!(cur.ends_with("line 0999\n"), "{cur}");
        // Whole lines only: every file starts at a line.
        assert!(cur.starts_with("line ") && old.starts_with("line "));
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 2);
    }

    #[test]
    fn a_file_over_the_cap_is_rotated_on_open_and_no_cap_appends() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("vmm.log");
        std::fs::write(&p, vec![b'x'; 500]).unwrap();
        let mut f = RotatingFile::open(&p, Some(100)).unwrap();
        f.write_all(b"new\n").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new\n");
        assert_eq!(std::fs::read(previous(&p)).unwrap().len(), 500);
        let mut f = RotatingFile::open(&p, None).unwrap();
        f.write_all(&[b'y'; 300]).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 304);
    }
}
