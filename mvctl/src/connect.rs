//! Which mvmd to talk to, and starting one when none answers.
//!
//! Order (issue #4, part 5):
//! 1. `-H/--host` or `MVM_HOST`: that daemon, nothing started.
//! 2. The default socket (`/run/mvm/mvmd.sock`, or in `$MVM_RUN_DIR` as
//!    for mvmd), when something answers there.
//! 3. A running machine (hosts without hardware KVM): its forwarded port.
//! 4. Hardware KVM here: start `mvmd` in the background and wait for its
//!    socket, saying so on stderr.
//! 5. No hardware KVM: start the machine and use its endpoint.
//!
//! Starting is serialised with a lock file next to the socket so that two
//! mvctl processes started at once do not race two daemons onto one socket.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::client::{Client, ClientError, Host};
use crate::machine;

/// Environment variable with the seconds to wait for a started mvmd.
pub const START_TIMEOUT_ENV: &str = "MVM_START_TIMEOUT";
/// Default of [`START_TIMEOUT_ENV`]: the daemon starts in well under a
/// second natively; slow disks and emulated hosts get a generous margin.
const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(60);
/// Where a started mvmd logs, when writable.
pub const DAEMON_LOG: &str = "/var/log/mvm/mvmd.log";
/// mvmd's runtime directory override, which moves its default socket.
pub const RUN_DIR_ENV: &str = "MVM_RUN_DIR";
/// mvmd's state root override; a started mvmd then logs there too.
pub const ROOT_ENV: &str = "MVM_ROOT";

fn env_nonempty(k: &str) -> Option<String> {
    std::env::var(k).ok().filter(|v| !v.trim().is_empty())
}

/// The default socket: `$MVM_RUN_DIR/mvmd.sock` when mvmd's runtime
/// directory is overridden (mvmd reads the same variable), else
/// `/run/mvm/mvmd.sock`.
pub fn default_socket() -> PathBuf {
    match env_nonempty(RUN_DIR_ENV) {
        Some(d) => PathBuf::from(d).join("mvmd.sock"),
        None => PathBuf::from(mvm_api::DEFAULT_SOCKET),
    }
}

/// Errors while finding or starting the daemon.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// `-H`/`MVM_HOST` is malformed.
    #[error(transparent)]
    BadHost(ClientError),
    /// The TLS flags or files are not usable.
    #[error("{0}")]
    Tls(String),
    /// The token file cannot be read.
    #[error("cannot read the token file {path}: {source}")]
    TokenFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The default socket exists but refuses us.
    #[error("cannot connect to mvmd at {host}: {source} (run mvctl as root or as a member of the socket's group)")]
    Denied {
        /// The socket.
        host: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Something answers at the socket, but not like mvmd.
    #[error("something answers at {host}, but not like mvmd: {source}")]
    NotMvmd {
        /// The socket.
        host: String,
        /// What went wrong.
        #[source]
        source: ClientError,
    },
    /// No mvmd binary to start.
    #[error(
        "nothing answers at {host} and no mvmd binary was found next to mvctl or on PATH: \
         install mvm (make install) or start mvmd yourself"
    )]
    NoBinary {
        /// The socket.
        host: String,
    },
    /// Spawning mvmd failed.
    #[error("cannot start {binary}: {source}")]
    Spawn {
        /// The binary.
        binary: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// mvmd ended while starting.
    #[error("mvmd (pid {pid}) exited while starting ({status}); its log {log} ends with:\n{tail}")]
    Exited {
        /// Its pid.
        pid: u32,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// The log file.
        log: String,
        /// The last lines of the log.
        tail: String,
    },
    /// mvmd did not answer in time.
    #[error(
        "mvmd (pid {pid}) did not answer at {host} within {secs} s; see its log {log} \
         (set {START_TIMEOUT_ENV} to wait longer)"
    )]
    Timeout {
        /// Its pid.
        pid: u32,
        /// The socket.
        host: String,
        /// Seconds waited.
        secs: u64,
        /// The log file.
        log: String,
    },
    /// The machine could not be started or reached.
    #[error("{0}")]
    Machine(String),
    /// I/O on the lock file or log.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// How the daemon was reached (shown by `system info`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// `-H`/`MVM_HOST`.
    Explicit,
    /// The default socket answered.
    Native,
    /// This invocation started mvmd.
    Started {
        /// Its pid.
        pid: u32,
        /// Its log file.
        log: String,
    },
    /// mvmd runs in the machine (emulated KVM host).
    Machine {
        /// The forwarded endpoint.
        url: String,
    },
}

/// A client and how it was found.
#[derive(Debug, Clone)]
pub struct Connection {
    /// The client.
    pub client: Client,
    /// How the daemon was reached.
    pub mode: Mode,
}

/// Inputs of [`connect`]: the global flags and the environment.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `-H/--host`, else `MVM_HOST`.
    pub host: Option<String>,
    /// `--token-file`.
    pub token_file: Option<PathBuf>,
    /// `MVM_TOKEN`.
    pub token_env: Option<String>,
    /// TLS for tcp:// addresses.
    pub tls: crate::client::tls::TlsOptions,
}

impl Options {
    /// From the global flags, with the environment filling the gaps
    /// (empty variables count as unset).
    pub fn from_flags(host: Option<String>, token_file: Option<PathBuf>) -> Options {
        Options {
            host: host.or_else(|| env_nonempty(mvm_api::HOST_ENV)),
            token_file,
            token_env: env_nonempty(mvm_api::TOKEN_ENV),
            tls: Default::default(),
        }
    }

    /// With the TLS flags (the environment fills the gaps).
    pub fn with_tls(mut self, tls: crate::client::tls::TlsOptions) -> Options {
        self.tls = tls.with_env();
        self
    }

    fn token(&self) -> Result<Option<String>, ConnectError> {
        if let Some(p) = &self.token_file {
            let t = fs::read_to_string(p).map_err(|source| ConnectError::TokenFile {
                path: p.clone(),
                source,
            })?;
            return Ok(Some(t.trim().to_string()));
        }
        Ok(self.token_env.clone())
    }
}

/// Find the daemon, starting it when needed (see the module docs).
pub async fn connect(opts: &Options) -> Result<Connection, ConnectError> {
    if let Some(h) = &opts.host {
        let host = Host::parse(h).map_err(ConnectError::BadHost)?;
        let client = match (&host, opts.tls.enabled()) {
            (Host::Tcp(_), true) => {
                let cfg = opts
                    .tls
                    .client_config()
                    .map_err(|e| ConnectError::Tls(e.to_string()))?;
                Client::with_tls(host, opts.token()?, cfg)
            }
            (Host::Unix(_), true) => return Err(ConnectError::Tls(
                "TLS applies to tcp:// addresses; a Unix socket is protected by its permissions"
                    .into(),
            )),
            (_, false) => Client::new(host, opts.token()?),
        };
        return Ok(Connection {
            client,
            mode: Mode::Explicit,
        });
    }
    let socket = default_socket();
    let client = Client::new(Host::Unix(socket.clone()), None);
    if answers(&client).await? {
        return Ok(Connection {
            client,
            mode: Mode::Native,
        });
    }
    if let Some(ep) = machine::endpoint() {
        return machine_connection(ep);
    }
    if !hardware_kvm() {
        // The machine module says what it starts; this says what it means.
        let ep = machine::ensure_running(&machine::StartOptions::default())
            .map_err(|e| ConnectError::Machine(e.to_string()))?;
        eprintln!(
            "mvctl: no hardware KVM here: using mvmd in the mvm machine at {}",
            ep.url
        );
        return machine_connection(ep);
    }
    let (pid, log) = start_daemon(&socket, &client).await?;
    let mode = match (pid, log) {
        (Some(pid), Some(log)) => {
            eprintln!("mvctl: started mvmd (pid {pid}, log {log})");
            Mode::Started { pid, log }
        }
        // Another mvctl started it while this one waited for the lock.
        _ => Mode::Native,
    };
    Ok(Connection { client, mode })
}

fn machine_connection(ep: machine::Endpoint) -> Result<Connection, ConnectError> {
    let host = Host::parse(&ep.url)
        .map_err(|e| ConnectError::Machine(format!("the machine's endpoint: {e}")))?;
    Ok(Connection {
        client: Client::new(host, Some(ep.token)),
        mode: Mode::Machine { url: ep.url },
    })
}

/// Does mvmd answer? `false` when nothing listens; an error when something
/// is there but unusable.
async fn answers(client: &Client) -> Result<bool, ConnectError> {
    match client.ping().await {
        Ok(()) => Ok(true),
        Err(ClientError::Connect { host, source }) => match source.kind() {
            ErrorKind::NotFound | ErrorKind::ConnectionRefused => Ok(false),
            ErrorKind::PermissionDenied => Err(ConnectError::Denied { host, source }),
            _ => Err(ConnectError::Denied { host, source }),
        },
        Err(e) => Err(ConnectError::NotMvmd {
            host: client.host().to_string(),
            source: e,
        }),
    }
}

/// Whether this host can run microVMs natively.
pub fn hardware_kvm() -> bool {
    matches!(
        mvm_vmm_api::kvm::detect(),
        mvm_vmm_api::kvm::KvmMode::Hardware { .. }
    )
}

/// The mvmd binary: next to mvctl (an install or a cargo target dir),
/// else on PATH.
pub fn daemon_binary() -> Option<PathBuf> {
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
    {
        let p = dir.join("mvmd");
        if p.is_file() {
            return Some(p);
        }
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("mvmd"))
        .find(|p| p.is_file())
}

/// Start mvmd under the start lock. Returns its pid and log, or `None`s
/// when another process started it meanwhile.
async fn start_daemon(
    socket: &Path,
    client: &Client,
) -> Result<(Option<u32>, Option<String>), ConnectError> {
    let dir = socket.parent().unwrap_or(Path::new("/"));
    fs::create_dir_all(dir).map_err(|source| ConnectError::Io {
        what: format!("create {}", dir.display()),
        source,
    })?;
    let lock_path = dir.join("mvctl-start.lock");
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|source| ConnectError::Io {
            what: format!("open {}", lock_path.display()),
            source,
        })?;
    let lock = tokio::task::spawn_blocking(move || {
        // SAFETY: flock on a descriptor this closure owns; no memory is
        // passed. The lock is released when `lock` is dropped.
        let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(lock)
    })
    .await
    .map_err(|e| ConnectError::Io {
        what: "wait for the start lock".into(),
        source: std::io::Error::other(e),
    })?
    .map_err(|source| ConnectError::Io {
        what: format!("lock {}", lock_path.display()),
        source,
    })?;

    if answers(client).await? {
        return Ok((None, None));
    }
    let binary = daemon_binary().ok_or_else(|| ConnectError::NoBinary {
        host: client.host().to_string(),
    })?;
    let (log_file, log_path) = open_log()?;
    let err_file = log_file.try_clone().map_err(|source| ConnectError::Io {
        what: format!("open {log_path}"),
        source,
    })?;
    let mut cmd = Command::new(&binary);
    cmd.stdin(Stdio::null()).stdout(log_file).stderr(err_file);
    // SAFETY: the closure runs in the child between fork and exec and only
    // calls setsid(2), which is async-signal-safe. A new session keeps the
    // daemon out of the terminal's process group, so a Ctrl-C meant for
    // mvctl (or the shell's hangup) does not reach it.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|source| ConnectError::Spawn {
        binary: binary.clone(),
        source,
    })?;
    let pid = child.id();
    let timeout = std::env::var(START_TIMEOUT_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_START_TIMEOUT);
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().map_err(|source| ConnectError::Io {
            what: format!("wait for mvmd (pid {pid})"),
            source,
        })? {
            return Err(ConnectError::Exited {
                pid,
                status,
                log: log_path.clone(),
                tail: log_tail(&log_path),
            });
        }
        if answers(client).await.unwrap_or(false) {
            drop(lock);
            return Ok((Some(pid), Some(log_path)));
        }
        if started.elapsed() > timeout {
            return Err(ConnectError::Timeout {
                pid,
                host: client.host().to_string(),
                secs: timeout.as_secs(),
                log: log_path,
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The daemon's log: in `$MVM_ROOT` when the state root is overridden,
/// else [`DAEMON_LOG`], else the user's state directory.
fn open_log() -> Result<(File, String), ConnectError> {
    let mut candidates = match env_nonempty(ROOT_ENV) {
        Some(root) => vec![PathBuf::from(root).join("mvmd.log")],
        None => vec![PathBuf::from(DAEMON_LOG)],
    };
    if let Some(state) = std::env::var_os("XDG_STATE_HOME") {
        candidates.push(PathBuf::from(state).join("mvm/mvmd.log"));
    } else if let Some(home) = std::env::var_os("HOME") {
        candidates.push(PathBuf::from(home).join(".local/state/mvm/mvmd.log"));
    }
    let mut last = None;
    for p in candidates {
        if let Some(d) = p.parent() {
            let _ = fs::create_dir_all(d);
        }
        match OpenOptions::new().create(true).append(true).open(&p) {
            Ok(f) => return Ok((f, p.display().to_string())),
            Err(e) => last = Some((p, e)),
        }
    }
    let (p, source) =
        last.unwrap_or_else(|| (PathBuf::from(DAEMON_LOG), ErrorKind::NotFound.into()));
    Err(ConnectError::Io {
        what: format!("open the daemon log {}", p.display()),
        source,
    })
}

/// The last lines of a log, for error messages.
fn log_tail(path: &str) -> String {
    let Ok(mut f) = File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(4096)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(10)..].join("\n")
}
