//! `mvmd`, the mvm daemon: the single owner of sandbox state. It keeps the
//! state in SQLite (`<root>/mvmd.db`), runs sandboxes through the
//! `mvm-runtime` library, and serves the REST API of docs/api.md on a Unix
//! socket and, when asked, on TCP with a bearer token.
//!
//! VMMs run in their own sessions: stopping or killing mvmd leaves them
//! running, and the next mvmd re-attaches to them ([`manager::Manager::recover`]).

pub mod convert;
pub mod db;
pub mod exec;
pub mod http;
pub mod loghub;
pub mod manager;
pub mod network;
pub mod output;
pub mod registry;
pub mod tls;
pub mod volumes;

use std::fs;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use mvm_runtime::{ArtifactOverrides, Defaults, Layout, LogLimits, Runtime, RuntimeConfig};

/// Shared state of the HTTP handlers.
pub struct Daemon {
    /// The sandbox manager.
    pub manager: Arc<manager::Manager>,
    /// Running as the emulated KVM host's daemon ("machine" mode).
    pub machine: bool,
    /// Exec sessions.
    pub execs: exec::Execs,
}

/// How mvmd is configured (flags of `mvmd`).
#[derive(Debug, Clone)]
pub struct Config {
    /// State root and run dir.
    pub layout: Layout,
    /// The Unix socket (default `<run_dir>/mvmd.sock`).
    pub socket: Option<PathBuf>,
    /// Also serve on TCP here, with a bearer token.
    pub tcp: Option<SocketAddr>,
    /// Token file for TCP (generated, mode 0600, if absent); default
    /// `<root>/token`.
    pub token_file: Option<PathBuf>,
    /// Kernel, init and VMM choices.
    pub artifacts: ArtifactOverrides,
    /// Defaults for sandboxes.
    pub defaults: Defaults,
    /// Log rotation.
    pub log_limits: LogLimits,
    /// Serial console cap in bytes.
    pub console_max: u64,
    /// VMM log cap in bytes.
    pub vmm_log_max: u64,
    /// `MVM_LOG` for the VMMs.
    pub vmm_log_filter: Option<String>,
    /// Machine mode (reported by `/v1/info`).
    pub machine: bool,
    /// Machine mode: the host directories shared writable into the
    /// machine at their host paths; bind mounts outside them are refused
    /// (`--machine-share`, repeatable; none: every bind mount is).
    pub machine_shares: Vec<PathBuf>,
    /// How VMMs are jailed; `None`: not at all (`--no-jail`).
    pub jail: Option<JailOptions>,
    /// VMM threads install their seccomp filters (false: `--no-seccomp`).
    pub seccomp: bool,
    /// Group of the Unix socket (mode 0660).
    pub socket_group: Option<String>,
    /// TLS on the TCP listener.
    pub tls: Option<tls::TlsFiles>,
    /// `--no-network`: no host networking (sandboxes get `lo` only).
    pub no_network: bool,
}

/// `--jail-uid-range` and `--jailer`.
#[derive(Debug, Clone)]
pub struct JailOptions {
    /// uids (and gids) of the VMMs.
    pub uids: mvm_runtime::UidRange,
    /// The jailer (default: next to the VMM).
    pub jailer: Option<PathBuf>,
}

impl Config {
    /// The socket path.
    pub fn socket_path(&self) -> PathBuf {
        self.socket.clone().unwrap_or_else(|| self.layout.socket())
    }
}

/// Holds the root's lock for the daemon's lifetime.
pub struct RootLock {
    _file: fs::File,
}

/// Take the exclusive lock of the state root, so two daemons never share
/// a database and a set of VMMs.
pub fn lock_root(layout: &Layout) -> Result<RootLock> {
    fs::create_dir_all(&layout.root)
        .with_context(|| format!("creating {}", layout.root.display()))?;
    let path = layout.lock_file();
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: flock on an fd we own; LOCK_NB makes it fail instead of wait.
    let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r != 0 {
        let holder = fs::read_to_string(&path).unwrap_or_default();
        bail!(
            "another mvmd (pid {}) is running with the state root {}; stop it first or use another --root",
            holder.trim(),
            layout.root.display()
        );
    }
    file.set_len(0).ok();
    fs::write(&path, std::process::id().to_string()).ok();
    Ok(RootLock { _file: file })
}

/// Bind the Unix socket: a stale socket file is replaced only if nothing
/// answers on it. Mode 0660, group `group` when given (as Docker's socket
/// belongs to the `docker` group), else root's.
pub fn bind_unix(path: &Path, group: Option<&str>) -> Result<tokio::net::UnixListener> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if path.exists() {
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => bail!(
                "something already answers on {}: another mvmd is running; stop it or use another --socket",
                path.display()
            ),
            Err(_) => {
                fs::remove_file(path).with_context(|| format!("removing the stale socket {}", path.display()))?;
            }
        }
    }
    let l = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("binding {}", path.display()))?;
    if let Some(g) = group {
        let gid = group_id(g)?;
        std::os::unix::fs::chown(path, None, Some(gid))
            .with_context(|| format!("giving {} to group {g}", path.display()))?;
    }
    fs::set_permissions(path, fs::Permissions::from_mode(0o660))
        .with_context(|| format!("setting the mode of {}", path.display()))?;
    Ok(l)
}

/// The id of group `name` (a number is taken as it is).
fn group_id(name: &str) -> Result<u32> {
    if let Ok(n) = name.parse() {
        return Ok(n);
    }
    let c = std::ffi::CString::new(name).context("a group name with a NUL byte")?;
    // SAFETY: getgrnam reads the NUL-terminated name and returns a pointer
    // to static storage or null; we read one field before any other call.
    let gr = unsafe { libc::getgrnam(c.as_ptr()) };
    if gr.is_null() {
        bail!(
            "no group {name:?} on this host: create it (groupadd {name}) or pass another --group"
        );
    }
    // SAFETY: `gr` is non-null and points to a valid `group` record.
    Ok(unsafe { (*gr).gr_gid })
}

/// Everything mvmd and its VMMs create is the owner's alone unless given
/// wider access explicitly (the socket): launch specs hold environments,
/// logs hold output, the database holds both.
pub fn private_umask() {
    // SAFETY: umask only changes this process's file mode creation mask.
    unsafe {
        libc::umask(0o077);
    }
}

/// Read the TCP token, generating it (0600) if the file does not exist.
pub fn load_token(path: &Path) -> Result<String> {
    match fs::read_to_string(path) {
        Ok(t) => {
            let t = t.trim().to_string();
            if t.len() < 16 {
                bail!("the token in {} is shorter than 16 characters; write a longer one or delete the file to have one generated", path.display());
            }
            Ok(t)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let mut b = [0u8; 32];
            mvm_runtime::names::fill_random(&mut b);
            let t = hex::encode(b);
            if let Some(dir) = path.parent() {
                fs::create_dir_all(dir)?;
            }
            let mut f = fs::OpenOptions::new()
                .create_new(true)
                .write(true)
                .mode(0o600)
                .open(path)
                .with_context(|| format!("creating {}", path.display()))?;
            io::Write::write_all(&mut f, t.as_bytes())?;
            tracing::info!(path = %path.display(), "generated a TCP bearer token");
            Ok(t)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Run the daemon until SIGTERM or SIGINT.
pub async fn run(cfg: Config) -> Result<()> {
    private_umask();
    let _lock = lock_root(&cfg.layout)?;
    let artifacts = mvm_runtime::Artifacts::locate(&cfg.artifacts)?;
    let jail = match &cfg.jail {
        Some(j) => Some(mvm_runtime::JailConfig::locate(
            &artifacts.vmm,
            j.jailer.clone(),
            j.uids,
        )?),
        None => {
            tracing::warn!(
                "--no-jail: VMMs run unconfined, as root; a VMM bug is host root (debugging only)"
            );
            None
        }
    };
    if !cfg.seccomp {
        tracing::warn!(
            "--no-seccomp: VMMs run without their system call filters; a VMM bug may make any system call its jail allows (debugging only)"
        );
    }
    let rt = Runtime::new(RuntimeConfig {
        jail,
        seccomp: cfg.seccomp,
        layout: cfg.layout.clone(),
        artifacts,
        defaults: cfg.defaults.clone(),
        log_limits: cfg.log_limits,
        console_max: cfg.console_max,
        vmm_log_max: cfg.vmm_log_max,
        vmm_log_filter: cfg.vmm_log_filter.clone(),
    })?;
    let db = db::Db::open(&cfg.layout.db())?;
    let socket = cfg.socket_path();
    let unix = bind_unix(&socket, cfg.socket_group.as_deref())?;
    let net = network::Networks::start(&db, cfg.no_network)
        .await
        .context("starting host networking")?;
    let manager = manager::Manager::new(rt, db, net);
    if cfg.machine {
        manager.set_machine_shares(cfg.machine_shares.clone());
    }
    manager.recover().await.context("recovering the state")?;
    let daemon = Arc::new(Daemon {
        manager,
        machine: cfg.machine,
        execs: exec::Execs::default(),
    });
    let router = http::router(daemon.clone());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut servers = tokio::task::JoinSet::new();
    {
        let router = router.clone();
        let mut stop = stop_rx.clone();
        servers.spawn(async move {
            axum::serve(unix, router)
                .with_graceful_shutdown(async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await
                .context("serving the Unix socket")
        });
    }
    if let Some(addr) = cfg.tcp {
        let token_file = cfg
            .token_file
            .clone()
            .unwrap_or_else(|| cfg.layout.root.join("token"));
        let token = load_token(&token_file)?;
        let tls = cfg.tls.as_ref().map(tls::server_config).transpose()?;
        let tcp = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding TCP {addr}"))?;
        tracing::info!(
            addr = %tcp.local_addr()?,
            token_file = %token_file.display(),
            tls = tls.is_some(),
            client_certificates = cfg.tls.as_ref().is_some_and(|t| t.client_ca.is_some()),
            "serving TCP (bearer token required)"
        );
        let router = http::with_token(router, token);
        let mut stop = stop_rx.clone();
        let shutdown = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        match tls {
            Some(tls) => {
                let listener = tls::TlsListener::new(tcp, tls)?;
                servers.spawn(async move {
                    axum::serve(listener, router)
                        .with_graceful_shutdown(shutdown)
                        .await
                        .context("serving TCP with TLS")
                });
            }
            None => {
                servers.spawn(async move {
                    axum::serve(tcp, router)
                        .with_graceful_shutdown(shutdown)
                        .await
                        .context("serving TCP")
                });
            }
        }
    }
    tracing::info!(socket = %socket.display(), root = %cfg.layout.root.display(), "mvmd ready");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down (sandboxes keep running)"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down (sandboxes keep running)"),
        r = servers.join_next() => {
            if let Some(Ok(Err(e))) = r {
                return Err(e);
            }
        }
    }
    let _ = stop_tx.send(true);
    // Streams (logs -f, wait) may hold connections open: do not wait long.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
        while servers.join_next().await.is_some() {}
    })
    .await;
    let _ = fs::remove_file(&socket);
    Ok(())
}
