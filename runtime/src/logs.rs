//! Workload logs: Docker's `json-file` format with size-capped rotation,
//! and reading them back with `tail`/`since`/`until`/stream filters.
//!
//! `json.log` is the current file; when a write would push it past
//! `max_size` it becomes `json.log.1` (older files shift up, the oldest
//! beyond `max_files` is deleted). Records never straddle files, so every
//! file is valid NDJSON on its own.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

/// Which stream a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    /// The workload's stdout (and a terminal's only stream).
    Stdout,
    /// The workload's stderr.
    Stderr,
}

/// One record of Docker's `json-file` format, one JSON object per line:
/// `{"log":"text\n","stream":"stdout","time":"RFC3339Nano"}`. A line
/// (with its `\n`) or a partial line of at most [`MAX_RECORD`] bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRecord {
    /// The bytes, as UTF-8 (invalid sequences replaced, as Docker does).
    pub log: String,
    /// Source stream.
    pub stream: Stream,
    /// RFC 3339 time with nanoseconds, UTC, when the host received it.
    pub time: String,
}

/// Docker splits lines longer than this into partial records.
pub const MAX_RECORD: usize = 16 * 1024;

/// Rotation settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLimits {
    /// Size of one file before it rotates.
    pub max_size: u64,
    /// Files kept, the current one included.
    pub max_files: u32,
}

impl Default for LogLimits {
    fn default() -> Self {
        Self {
            max_size: 10 << 20,
            max_files: 3,
        }
    }
}

/// RFC 3339 with nanoseconds, UTC: the `time` of a record.
pub fn now_rfc3339() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Nanos, true)
}

/// RFC 3339 with seconds, UTC: creation and start times.
pub fn to_rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Nanos, true)
}

/// Appends records to a sandbox's log directory, rotating as it goes.
///
/// Output arrives in chunks that need not end at a line end; like Docker's
/// log copier it keeps an unfinished line per stream until its `\n`
/// arrives, it reaches [`MAX_RECORD`], or the run ends ([`flush`]), so
/// one line is one record whatever the chunking (and a UTF-8 character
/// split between chunks stays whole).
///
/// [`flush`]: LogWriter::flush
#[derive(Debug)]
pub struct LogWriter {
    dir: PathBuf,
    limits: LogLimits,
    file: File,
    size: u64,
    /// Unfinished line of stdout and of stderr, with the time its first
    /// byte arrived (the record's time, as Docker stamps it).
    pending: [Pending; 2],
}

#[derive(Debug, Default)]
struct Pending {
    data: Vec<u8>,
    time: String,
}

fn slot(stream: Stream) -> usize {
    match stream {
        Stream::Stdout => 0,
        Stream::Stderr => 1,
    }
}

impl LogWriter {
    /// Open (creating) `dir/json.log` for appending.
    pub fn open(dir: &Path, limits: LogLimits) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let path = dir.join("json.log");
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let size = file.metadata()?.len();
        Ok(Self {
            dir: dir.to_path_buf(),
            limits,
            file,
            size,
            pending: Default::default(),
        })
    }

    /// Append `data` from `stream`, which arrived at `time`: each finished
    /// line (keeping its `\n`) becomes a record, a line longer than
    /// [`MAX_RECORD`] becomes records of that size, and an unfinished
    /// line waits for the rest. Returns the records written.
    pub fn write(&mut self, stream: Stream, data: &[u8], time: &str) -> io::Result<Vec<LogRecord>> {
        let mut out = Vec::new();
        let mut rest = data;
        while !rest.is_empty() {
            let p = &mut self.pending[slot(stream)];
            if p.data.is_empty() {
                p.time = time.to_string();
            }
            let room = MAX_RECORD - p.data.len();
            let (take, line_done) = match rest[..rest.len().min(room)]
                .iter()
                .position(|b| *b == b'\n')
            {
                Some(i) => (i + 1, true),
                None if rest.len() >= room => (room, true),
                None => (rest.len(), false),
            };
            p.data.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if line_done {
                out.push(self.emit(stream)?);
            }
        }
        Ok(out)
    }

    /// Write the unfinished lines as partial records: the run's output is
    /// complete. Returns the records written.
    pub fn flush(&mut self) -> io::Result<Vec<LogRecord>> {
        let mut out = Vec::new();
        for stream in [Stream::Stdout, Stream::Stderr] {
            if !self.pending[slot(stream)].data.is_empty() {
                out.push(self.emit(stream)?);
            }
        }
        Ok(out)
    }

    /// Write the pending bytes of `stream` as one record.
    fn emit(&mut self, stream: Stream) -> io::Result<LogRecord> {
        let p = std::mem::take(&mut self.pending[slot(stream)]);
        let rec = LogRecord {
            log: String::from_utf8_lossy(&p.data).into_owned(),
            stream,
            time: p.time,
        };
        self.append(&rec)?;
        Ok(rec)
    }

    /// Append one record.
    pub fn append(&mut self, rec: &LogRecord) -> io::Result<()> {
        let mut line = serde_json::to_vec(rec).map_err(io::Error::other)?;
        line.push(b'\n');
        if self.size > 0 && self.size + line.len() as u64 > self.limits.max_size {
            self.rotate()?;
        }
        self.file.write_all(&line)?;
        self.size += line.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        let keep = self.limits.max_files.max(1);
        let name = |i: u32| {
            if i == 0 {
                self.dir.join("json.log")
            } else {
                self.dir.join(format!("json.log.{i}"))
            }
        };
        if keep == 1 {
            self.file.set_len(0)?;
            self.size = 0;
            return Ok(());
        }
        let _ = fs::remove_file(name(keep - 1));
        for i in (0..keep - 1).rev() {
            let from = name(i);
            if from.exists() {
                fs::rename(&from, name(i + 1))?;
            }
        }
        self.file = OpenOptions::new().create(true).append(true).open(name(0))?;
        self.size = 0;
        Ok(())
    }
}

/// Which records to return.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogFilter {
    /// Only the last N records.
    pub tail: Option<usize>,
    /// Only records at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only records before this time.
    pub until: Option<DateTime<Utc>>,
    /// Include stdout.
    pub stdout: bool,
    /// Include stderr.
    pub stderr: bool,
}

impl LogFilter {
    /// Everything.
    pub fn all() -> Self {
        Self {
            stdout: true,
            stderr: true,
            ..Self::default()
        }
    }

    /// Whether `rec` passes the stream and time filters (not `tail`).
    pub fn accepts(&self, rec: &LogRecord) -> bool {
        let stream_ok = match rec.stream {
            Stream::Stdout => self.stdout,
            Stream::Stderr => self.stderr,
        };
        if !stream_ok {
            return false;
        }
        if self.since.is_none() && self.until.is_none() {
            return true;
        }
        let Ok(t) = DateTime::parse_from_rfc3339(&rec.time) else {
            return true;
        };
        let t = t.with_timezone(&Utc);
        self.since.is_none_or(|s| t >= s) && self.until.is_none_or(|u| t < u)
    }
}

/// Read the stored records of log directory `dir`, oldest first.
/// Unparseable lines (a torn last line after a crash) are skipped. Memory
/// is bounded by what is kept on disk (`LogLimits`), and with `tail` by the
/// `tail` records kept while reading (a ring, not the whole log).
pub fn read(dir: &Path, filter: &LogFilter) -> io::Result<Vec<LogRecord>> {
    let mut files: Vec<(u32, PathBuf)> = Vec::new();
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name == "json.log" {
            files.push((0, e.path()));
        } else if let Some(n) = name.strip_prefix("json.log.").and_then(|n| n.parse().ok()) {
            files.push((n, e.path()));
        }
    }
    files.sort_by_key(|b| std::cmp::Reverse(b.0));
    let mut out = std::collections::VecDeque::new();
    for (_, p) in files {
        let f = match File::open(&p) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for line in BufReader::new(f).split(b'\n') {
            let line = line?;
            if let Ok(rec) = serde_json::from_slice::<LogRecord>(&line) {
                if filter.accepts(&rec) {
                    if filter.tail == Some(0) {
                        continue;
                    }
                    if filter.tail.is_some_and(|n| out.len() == n) {
                        out.pop_front();
                    }
                    out.push_back(rec);
                }
            }
        }
    }
    Ok(out.into())
}

/// Parse a `since`/`until` value: RFC 3339, or Unix seconds with an
/// optional fraction (Docker's API form).
pub fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: i64 = secs.parse().ok()?;
    let nanos: u32 = if frac.is_empty() {
        0
    } else {
        let f = &frac[..frac.len().min(9)];
        f.parse::<u32>().ok()? * 10u32.pow(9 - f.len() as u32)
    };
    DateTime::from_timestamp(secs, nanos)
}

/// Turns raw serial console bytes into workload log lines: drops the
/// terminal's `\r` before `\n` and keeps a partial last line until its
/// end arrives.
#[derive(Debug, Default)]
pub struct ConsoleLines {
    pending: Vec<u8>,
}

impl ConsoleLines {
    /// Feed bytes; returns the complete lines (with `\n`).
    pub fn feed(&mut self, data: &[u8]) -> Vec<u8> {
        self.pending.extend_from_slice(data);
        let Some(last_nl) = self.pending.iter().rposition(|b| *b == b'\n') else {
            if self.pending.len() >= MAX_RECORD {
                return self.flush();
            }
            return Vec::new();
        };
        let rest = self.pending.split_off(last_nl + 1);
        let done = std::mem::replace(&mut self.pending, rest);
        drop_kernel_lines(strip_cr(&done))
    }

    /// Whatever partial line is left (at the end of a run).
    pub fn flush(&mut self) -> Vec<u8> {
        let done = std::mem::take(&mut self.pending);
        strip_cr(&done)
    }
}

/// The kernel's own last words (printed even with `quiet`): not the
/// workload's output.
const KERNEL_LINES: [&[u8]; 2] = [b"reboot: Restarting system\n", b"reboot: Power down\n"];

fn drop_kernel_lines(data: Vec<u8>) -> Vec<u8> {
    if !KERNEL_LINES
        .iter()
        .any(|l| data.windows(l.len()).any(|w| w == *l))
    {
        return data;
    }
    data.split_inclusive(|b| *b == b'\n')
        .filter(|l| !KERNEL_LINES.contains(l))
        .flatten()
        .copied()
        .collect()
}

fn strip_cr(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut i = 0;
    while i < data.len() {
        if data[i] == b'\r' && data.get(i + 1) == Some(&b'\n') {
            i += 1;
            continue;
        }
        out.push(data[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_reboot_line_is_not_workload_output() {
        let mut c = ConsoleLines::default();
        assert_eq!(
            c.feed(b"a\r\nreboot: Restarting system\r\nb\n"),
            b"a\nb\n".to_vec()
        );
        assert_eq!(
            c.feed(b"reboot: Restarting systemd\n"),
            b"reboot: Restarting systemd\n".to_vec()
        );
    }

    #[test]
    fn lines_are_split_and_read_back() {
        let d = tempfile::tempdir().unwrap();
        let mut w = LogWriter::open(d.path(), LogLimits::default()).unwrap();
        let t = now_rfc3339();
        let recs = w.write(Stream::Stdout, b"one\ntwo\npartial", &t).unwrap();
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0].log, "one\n");
        assert_eq!(recs[1].log, "two\n");
        w.write(Stream::Stderr, b"err\n", &t).unwrap();
        let recs = w.flush().unwrap();
        assert_eq!(recs.len(), 1);
        assert_eq!(recs[0].log, "partial");
        assert!(w.flush().unwrap().is_empty());
        let all = read(d.path(), &LogFilter::all()).unwrap();
        assert_eq!(all.len(), 4);
        let only_err = read(
            d.path(),
            &LogFilter {
                stderr: true,
                ..LogFilter::default()
            },
        )
        .unwrap();
        assert_eq!(only_err.len(), 1);
        assert_eq!(only_err[0].stream, Stream::Stderr);
        let tail = read(
            d.path(),
            &LogFilter {
                tail: Some(2),
                ..LogFilter::all()
            },
        )
        .unwrap();
        assert_eq!(tail[0].log, "err\n");
        assert_eq!(tail[1].log, "partial");
        // Long lines become 16 KiB records; the rest waits for its end.
        let long = vec![b'x'; MAX_RECORD * 2 + 5];
        assert_eq!(w.write(Stream::Stdout, &long, &t).unwrap().len(), 2);
        let recs = w.write(Stream::Stdout, b"\n", &t).unwrap();
        assert_eq!(recs[0].log, "xxxxx\n");
    }

    #[test]
    fn a_line_in_pieces_is_one_record_and_streams_do_not_mix() {
        let d = tempfile::tempdir().unwrap();
        let mut w = LogWriter::open(d.path(), LogLimits::default()).unwrap();
        let (t1, t2) = ("2026-01-01T00:00:01Z", "2026-01-01T00:00:02Z");
        // "é" split between two chunks, stderr in between.
        assert!(w.write(Stream::Stdout, b"caf\xc3", t1).unwrap().is_empty());
        let e = w.write(Stream::Stderr, b"warn\n", t2).unwrap();
        assert_eq!(e[0].log, "warn\n");
        let o = w.write(Stream::Stdout, b"\xa9!\nnext", t2).unwrap();
        assert_eq!(o.len(), 1);
        assert_eq!(o[0].log, "café!\n");
        assert_eq!(o[0].time, t1, "stamped when the line began");
        let o = w.write(Stream::Stdout, b" line\n", t2).unwrap();
        assert_eq!(o[0].log, "next line\n");
        let all = read(d.path(), &LogFilter::all()).unwrap();
        let logs: Vec<&str> = all.iter().map(|r| r.log.as_str()).collect();
        assert_eq!(logs, ["warn\n", "café!\n", "next line\n"]);
    }

    #[test]
    fn rotation_caps_the_size() {
        let d = tempfile::tempdir().unwrap();
        let limits = LogLimits {
            max_size: 1000,
            max_files: 3,
        };
        let mut w = LogWriter::open(d.path(), limits).unwrap();
        let t = now_rfc3339();
        for i in 0..200 {
            w.write(Stream::Stdout, format!("line {i}\n").as_bytes(), &t)
                .unwrap();
        }
        let mut names: Vec<String> = fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["json.log", "json.log.1", "json.log.2"]);
        let total: u64 = names
            .iter()
            .map(|n| fs::metadata(d.path().join(n)).unwrap().len())
            .sum();
        assert!(total <= 3000, "{total}");
        // The newest lines survive, in order.
        let all = read(d.path(), &LogFilter::all()).unwrap();
        assert_eq!(all.last().unwrap().log, "line 199\n");
        let nums: Vec<u32> = all
            .iter()
            .map(|r| r.log.trim().trim_start_matches("line ").parse().unwrap())
            .collect();
        assert!(nums.windows(2).all(|w| w[1] == w[0] + 1));
        // Reopening continues the current file's size accounting.
        drop(w);
        let w = LogWriter::open(d.path(), limits).unwrap();
        assert!(w.size > 0 && w.size <= 1000);
    }

    #[test]
    fn time_filters() {
        let d = tempfile::tempdir().unwrap();
        let mut w = LogWriter::open(d.path(), LogLimits::default()).unwrap();
        w.write(Stream::Stdout, b"old\n", "2020-01-01T00:00:00.000000000Z")
            .unwrap();
        w.write(Stream::Stdout, b"new\n", "2030-01-01T00:00:00.000000000Z")
            .unwrap();
        let f = LogFilter {
            since: parse_time("2025-01-01T00:00:00Z"),
            ..LogFilter::all()
        };
        assert_eq!(read(d.path(), &f).unwrap()[0].log, "new\n");
        let f = LogFilter {
            until: parse_time("1735689600"),
            ..LogFilter::all()
        };
        let r = read(d.path(), &f).unwrap();
        assert_eq!((r.len(), r[0].log.as_str()), (1, "old\n"));
        assert_eq!(parse_time("1.5").unwrap().timestamp_subsec_millis(), 500);
        assert!(parse_time("yesterday").is_none());
    }

    #[test]
    fn console_lines_strip_cr_and_wait_for_line_ends() {
        let mut c = ConsoleLines::default();
        assert_eq!(c.feed(b"hel"), b"");
        assert_eq!(c.feed(b"lo\r\nwor"), b"hello\n");
        assert_eq!(c.feed(b"ld\r\n"), b"world\n");
        assert_eq!(c.feed(b"tail"), b"");
        assert_eq!(c.flush(), b"tail");
    }
}
