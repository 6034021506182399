//! Published ports of the machine's sandboxes on the host's 127.0.0.1.
//!
//! mvmd in L1 publishes a sandbox's `-p` ports on L1's addresses (DNAT and
//! its proxy), which only L1 reaches. QEMU's user-mode network forwards
//! host ports into L1 (`hostfwd`), and its monitor adds and removes such
//! forwards while it runs (HMP `hostfwd_add` / `hostfwd_remove`). So the
//! host side follows what mvmd publishes: [`sync`] compares the ports
//! published on all of L1's addresses (TCP and UDP) with the forwards
//! this machine's QEMU has, and adds or removes forwards from
//! `127.0.0.1:P` on the host to L1's port `P`. Ports mvmd publishes on
//! one address only (`-p 127.0.0.1:8080:80`) are L1's own and are not
//! forwarded: QEMU can forward only to L1's NIC address.
//!
//! Who calls it: mvctl after each command that can publish or release a
//! port in machine mode (`run`, `start`, `restart`, `stop`, `kill`, `rm`,
//! `network connect/disconnect`), so the forward is there when the command
//! returns; and the machine's watcher on every look (a restart policy's
//! start, a sandbox that ended by itself, a restarted machine). The
//! forwards QEMU has are recorded in `forwards.json` in the run dir with
//! the QEMU they belong to: a new QEMU (a machine restarted, by a user or
//! the watcher) starts with none, so every published port is forwarded
//! again. A lock file serialises the callers, each from its reading of
//! mvmd's ports to its last monitor command.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mvm_api::network::PortBinding;
use serde::{Deserialize, Serialize};

use super::paths::Paths;
use super::state::{MachineState, Proc};

/// The netdev of L1's NIC (see [`super::qemu::args`]).
const NETDEV: &str = "net0";
/// How long the monitor may take to answer one command.
const MONITOR_TIMEOUT: Duration = Duration::from_secs(10);
/// QEMU's HMP prompt, which ends every answer.
const PROMPT: &str = "(qemu) ";

/// Errors keeping the forwards in step.
#[derive(Debug, thiserror::Error)]
pub enum PortsError {
    /// The machine does not run.
    #[error("the machine does not run")]
    NotRunning,
    /// The state, record or lock file.
    #[error("{what} {}: {source}", path.display())]
    File {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The machine's state file is unreadable.
    #[error(transparent)]
    State(#[from] super::state::StateError),
    /// QEMU's monitor did not answer as it should.
    #[error("QEMU's monitor {}: {why}", path.display())]
    Monitor {
        /// The socket.
        path: PathBuf,
        /// What went wrong.
        why: String,
    },
}

/// A forwarded port: the protocol and the port, the same on both sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Forward {
    /// `udp` (else TCP).
    pub udp: bool,
    /// The port on the host's 127.0.0.1 and on L1.
    pub port: u16,
}

impl Forward {
    /// `tcp:127.0.0.1:P-:P`: QEMU's rule (the empty guest address is
    /// L1's NIC address).
    fn rule(&self) -> String {
        let p = self.port;
        format!("{}:127.0.0.1:{p}-:{p}", self.proto())
    }

    /// The host side alone, as `hostfwd_remove` takes it.
    fn host_side(&self) -> String {
        format!("{}:127.0.0.1:{}", self.proto(), self.port)
    }

    fn proto(&self) -> &'static str {
        if self.udp {
            "udp"
        } else {
            "tcp"
        }
    }
}

impl std::fmt::Display for Forward {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "127.0.0.1:{}/{}", self.port, self.proto())
    }
}

/// The forwards `published` asks for: ports on all of L1's addresses
/// (no address, `0.0.0.0` or `::`); one per protocol and port.
pub fn wanted(published: &[PortBinding]) -> BTreeSet<Forward> {
    published
        .iter()
        .filter(|b| {
            matches!(
                b.host_ip.as_deref(),
                None | Some("") | Some("0.0.0.0") | Some("::")
            )
        })
        .map(|b| Forward {
            udp: b.protocol.eq_ignore_ascii_case("udp"),
            port: b.host_port,
        })
        .collect()
}

/// `forwards.json`: the forwards a QEMU has (beyond the API's).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    /// The QEMU they were added to.
    qemu: Option<Proc>,
    forwards: BTreeSet<Forward>,
}

fn record_path(paths: &Paths) -> PathBuf {
    paths.run_dir.join("forwards.json")
}

fn file_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> PortsError {
    let path = path.to_path_buf();
    move |source| PortsError::File { what, path, source }
}

/// Hold `forwards.lock` until the file is dropped. Taken before the
/// published ports are read and held until [`sync_locked`] is done:
/// otherwise a caller with an older list could undo a newer caller's
/// forward.
pub fn lock(paths: &Paths) -> Result<File, PortsError> {
    let p = paths.run_dir.join("forwards.lock");
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&p)
        .map_err(file_err("opening", &p))?;
    loop {
        // SAFETY: flock on a descriptor owned by `f`; no memory is passed.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } == 0 {
            return Ok(f);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != ErrorKind::Interrupted {
            return Err(file_err("locking", &p)(e));
        }
    }
}

/// What changed, for the caller to tell.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Synced {
    /// Forwards added.
    pub added: Vec<Forward>,
    /// Forwards removed.
    pub removed: Vec<Forward>,
    /// Ports that could not be forwarded, with QEMU's reason (a host
    /// port taken by another program).
    pub failed: Vec<(Forward, String)>,
}

/// Make the running machine's forwards those `published` asks for
/// ([`wanted`]), with [`lock`] held since `published` was read.
pub fn sync_locked(paths: &Paths, published: &[PortBinding]) -> Result<Synced, PortsError> {
    let state = MachineState::load(&paths.state())?.ok_or(PortsError::NotRunning)?;
    if !state.is_alive() {
        return Err(PortsError::NotRunning);
    }
    let qemu = state.qemu();
    let path = record_path(paths);
    let mut record: Record = fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    if record.qemu != Some(qemu) {
        // Another QEMU (the machine restarted): it has no forward yet.
        record = Record {
            qemu: Some(qemu),
            forwards: BTreeSet::new(),
        };
    }
    let want = wanted(published);
    let mut out = Synced::default();
    let stale: Vec<Forward> = record.forwards.difference(&want).copied().collect();
    let new: Vec<Forward> = want.difference(&record.forwards).copied().collect();
    if stale.is_empty() && new.is_empty() {
        return Ok(out);
    }
    let mut mon = Monitor::connect(&paths.monitor())?;
    let r = (|| {
        for f in stale {
            let answer = mon.command(&format!("hostfwd_remove {NETDEV} {}", f.host_side()))?;
            // "not found": gone already, which is what was wanted.
            if !answer.contains("removed") && !answer.contains("not found") {
                return Err(mon.error(format!("hostfwd_remove {f}: {answer}")));
            }
            record.forwards.remove(&f);
            out.removed.push(f);
        }
        for f in new {
            let answer = mon.command(&format!("hostfwd_add {NETDEV} {}", f.rule()))?;
            if answer.trim().is_empty() {
                record.forwards.insert(f);
                out.added.push(f);
            } else {
                out.failed.push((f, answer.trim().to_string()));
            }
        }
        Ok(())
    })();
    // What was done is recorded even when a later command failed.
    save(&path, &record)?;
    r.map(|()| out)
}

fn save(path: &Path, record: &Record) -> Result<(), PortsError> {
    let tmp = path.with_extension(format!("json.tmp.{}", std::process::id()));
    let data = serde_json::to_vec_pretty(record).unwrap_or_default();
    let r = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(&data))
        .and_then(|()| fs::rename(&tmp, path));
    if r.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    r.map_err(file_err("writing", path))
}

/// A session on QEMU's HMP monitor: one command at a time, each answer
/// read up to the next prompt.
struct Monitor {
    path: PathBuf,
    stream: UnixStream,
}

impl Monitor {
    fn connect(path: &Path) -> Result<Self, PortsError> {
        let stream = UnixStream::connect(path).map_err(|e| PortsError::Monitor {
            path: path.to_path_buf(),
            why: format!("cannot connect: {e}"),
        })?;
        let mut m = Monitor {
            path: path.to_path_buf(),
            stream,
        };
        // The banner, up to the first prompt.
        m.read_answer()?;
        Ok(m)
    }

    fn error(&self, why: String) -> PortsError {
        PortsError::Monitor {
            path: self.path.clone(),
            why,
        }
    }

    /// Send `cmd`; its answer without the echo and the prompt.
    fn command(&mut self, cmd: &str) -> Result<String, PortsError> {
        self.stream
            .write_all(format!("{cmd}\n").as_bytes())
            .map_err(|e| self.error(format!("sending {cmd:?}: {e}")))?;
        let text = self.read_answer()?;
        // The monitor echoes the command line (with terminal escapes,
        // removed by `read_answer`) before answering it.
        let answer = match text.find(cmd) {
            Some(i) => &text[i + cmd.len()..],
            None => &text[..],
        };
        Ok(answer.trim().to_string())
    }

    /// Read up to the prompt (bounded in time and size).
    fn read_answer(&mut self) -> Result<String, PortsError> {
        let deadline = Instant::now() + MONITOR_TIMEOUT;
        let mut raw = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let text = super::health::strip_escapes(&String::from_utf8_lossy(&raw));
            if let Some(body) = text.strip_suffix(PROMPT) {
                return Ok(body.to_string());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || raw.len() > 1 << 20 {
                return Err(self.error(format!("no prompt within {MONITOR_TIMEOUT:?}")));
            }
            self.stream
                .set_read_timeout(Some(left))
                .map_err(|e| self.error(e.to_string()))?;
            match self.stream.read(&mut buf) {
                Ok(0) => return Err(self.error("closed the connection".into())),
                Ok(n) => raw.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(self.error(format!("reading: {e}"))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(ip: Option<&str>, port: u16, proto: &str) -> PortBinding {
        PortBinding {
            host_ip: ip.map(String::from),
            host_port: port,
            container_port: 80,
            protocol: proto.into(),
        }
    }

    #[test]
    fn only_ports_on_all_addresses_are_forwarded() {
        let w = wanted(&[
            binding(None, 8080, "tcp"),
            binding(Some("0.0.0.0"), 8080, "tcp"),
            binding(Some("::"), 5353, "udp"),
            binding(Some("127.0.0.1"), 9000, "tcp"),
            binding(Some("10.0.2.15"), 9001, "tcp"),
        ]);
        let v: Vec<String> = w.iter().map(|f| f.rule()).collect();
        assert_eq!(v, ["tcp:127.0.0.1:8080-:8080", "udp:127.0.0.1:5353-:5353"]);
        let f = w.iter().next().unwrap();
        assert_eq!(f.host_side(), "tcp:127.0.0.1:8080");
        assert_eq!(f.to_string(), "127.0.0.1:8080/tcp");
    }

    /// A fake HMP monitor: echoes each command with the escapes QEMU's
    /// readline sends and answers from `answers`.
    fn fake_monitor(
        dir: &Path,
        answers: Vec<&'static str>,
    ) -> std::thread::JoinHandle<Vec<String>> {
        let l = std::os::unix::net::UnixListener::bind(dir.join("mon.sock")).unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            s.write_all(b"QEMU 7.2.0 monitor - type 'help' for more information\r\n(qemu) ")
                .unwrap();
            let mut got = Vec::new();
            let mut r = std::io::BufReader::new(s.try_clone().unwrap());
            for a in answers {
                let mut line = String::new();
                std::io::BufRead::read_line(&mut r, &mut line).unwrap();
                let cmd = line.trim_end().to_string();
                s.write_all(format!("{cmd}\r\n\x1b[K{a}(qemu) ").as_bytes())
                    .unwrap();
                got.push(cmd);
            }
            got
        })
    }

    #[test]
    fn monitor_answers_are_read_to_the_prompt() {
        let dir = tempfile::tempdir().unwrap();
        let t = fake_monitor(
            dir.path(),
            vec![
                "",
                "Could not set up host forwarding rule 'tcp:127.0.0.1:22-:22'\r\n",
            ],
        );
        let mut m = Monitor::connect(&dir.path().join("mon.sock")).unwrap();
        assert_eq!(
            m.command("hostfwd_add net0 tcp:127.0.0.1:8080-:8080")
                .unwrap(),
            ""
        );
        let a = m.command("hostfwd_add net0 tcp:127.0.0.1:22-:22").unwrap();
        assert!(
            a.starts_with("Could not set up host forwarding rule"),
            "{a:?}"
        );
        drop(m);
        assert_eq!(t.join().unwrap().len(), 2);
    }

    #[test]
    fn a_monitor_that_hangs_up_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("mon.sock");
        let l = std::os::unix::net::UnixListener::bind(&p).unwrap();
        let t = std::thread::spawn(move || drop(l.accept().unwrap()));
        let e = Monitor::connect(&p).err().expect("no banner, no monitor");
        assert!(e.to_string().contains("closed the connection"), "{e}");
        t.join().unwrap();
    }
}
