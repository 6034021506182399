//! The vhost-user session with a virtio-fs backend, over rust-vmm's
//! `vhost` crate (frontend side).
//!
//! The message sequence follows QEMU's, which every backend is tested
//! against: `GET_FEATURES`, `GET_PROTOCOL_FEATURES` and
//! `SET_PROTOCOL_FEATURES` (only `REPLY_ACK` is asked for: every later
//! message is then acknowledged, so a backend that refuses one is noticed
//! at once), `SET_OWNER`; then on each device start `SET_FEATURES` (what
//! the driver acked), `SET_MEM_TABLE` (each guest RAM region as the memfd
//! behind it, an offset and the VMM's own address of it), and per ready
//! queue `SET_VRING_NUM`, `SET_VRING_ADDR` (VMM addresses: vhost-user
//! backends translate them through the memory table), `SET_VRING_BASE`,
//! `SET_VRING_CALL`, `SET_VRING_KICK`, `SET_VRING_ENABLE`. A device
//! reset stops each started queue (`SET_VRING_ENABLE 0`, `GET_VRING_BASE`).
//!
//! # Why a watchdog
//!
//! The `vhost` crate's socket reads block without a deadline and retry on
//! `EAGAIN`, so a receive timeout on the socket would only make it spin.
//! Each exchange instead runs with a watchdog armed that shuts the socket
//! down after [`super::BACKEND_TIMEOUT`]; the blocked read then sees end
//! of file and the exchange fails.
//!
//! The watchdog is one thread per backend, started with the connection
//! (during the VMM's setup, before any seccomp filter), which runs the
//! caller's [`ThreadHook`] first: the VMM installs there a filter of the
//! thread's own, narrower than any other thread's (no KVM, no disk or
//! socket I/O, no new threads; `shutdown(2)` on its copy of the socket).
//! A thread started per exchange on a vCPU thread would have inherited the
//! vCPU's filter instead. The thread ends when the backend is dropped.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;

use vhost::vhost_user::message::VhostUserHeaderFlag;
use vhost::vhost_user::{
    Frontend, VhostUserFrontend, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

/// Run first by each helper thread this crate starts, before it waits on
/// anything: the VMM installs the thread's seccomp filter there. An error
/// (its message) keeps the thread from running and fails the start of
/// what needed it.
pub type ThreadHook = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

use crate::VIRTIO_F_VERSION_1;

/// Why talking to the backend failed.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The socket could not be connected (no backend listening there).
    #[error("cannot connect to the vhost-user socket {path}: {source}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A message failed or got a wrong or negative answer.
    #[error("{what} failed: {source}")]
    Protocol {
        /// Which exchange.
        what: &'static str,
        /// What the `vhost` crate saw.
        source: vhost::Error,
    },
    /// The backend did not answer within the deadline.
    #[error("the backend did not answer ({what}) within {secs} s; its socket was shut down")]
    Timeout {
        /// Which exchange.
        what: &'static str,
        /// The deadline.
        secs: u64,
    },
    /// The backend cannot drive a virtio 1.x device.
    #[error("the backend does not offer VIRTIO_F_VERSION_1 (it offers {0:#x})")]
    NoVersion1(u64),
    /// The watchdog thread could not be started.
    #[error("cannot start the watchdog thread: {0}")]
    Watchdog(#[source] io::Error),
    /// The watchdog thread's hook failed (its seccomp filter).
    #[error("the watchdog thread could not be confined: {0}")]
    WatchdogHook(String),
    /// A ring the driver configured is not in guest memory (the transport
    /// checks this at `DRIVER_OK`, so only a VMM bug gets here).
    #[error("queue {index}: the {what} at guest address {addr:#x} is not in guest memory")]
    QueueAddress {
        /// Queue index.
        index: usize,
        /// Which ring.
        what: &'static str,
        /// Its guest address.
        addr: u64,
    },
    /// Guest memory that cannot be shared (not file-backed).
    #[error("guest memory cannot be shared with the backend: {0}")]
    Memory(#[source] vhost::Error),
    /// A queue index with no kick EventFd.
    #[error("queue {0} has no kick EventFd")]
    NoKick(usize),
}

/// A connected vhost-user backend.
pub struct Backend {
    frontend: Frontend,
    watchdog: Watchdog,
    timeout: Duration,
    /// Virtio features the backend offers (`GET_FEATURES`).
    features: u64,
    /// Whether `VHOST_USER_F_PROTOCOL_FEATURES` was negotiated: rings then
    /// start disabled and need `SET_VRING_ENABLE`.
    protocol_features: bool,
    /// Queues started since the last stop.
    started: Vec<usize>,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("fd", &self.frontend.as_raw_fd())
            .field("features", &format_args!("{:#x}", self.features))
            .field("protocol_features", &self.protocol_features)
            .field("started", &self.started)
            .finish()
    }
}

impl Backend {
    /// Connects to the backend at `path` and does the handshake, within
    /// `timeout`. `queues` is how many queues the device has.
    /// `hook` runs first on the watchdog thread (see the module doc).
    pub fn connect(
        path: &Path,
        queues: usize,
        timeout: Duration,
        hook: Option<ThreadHook>,
    ) -> Result<Self, BackendError> {
        let stream = UnixStream::connect(path).map_err(|source| BackendError::Connect {
            path: path.to_owned(),
            source,
        })?;
        let socket = OwnedFd::from(stream.try_clone().map_err(BackendError::Watchdog)?);
        let watchdog = Watchdog::start(socket, hook)?;
        let mut backend = Self {
            frontend: Frontend::from_stream(stream, queues as u64),
            watchdog,
            timeout,
            features: 0,
            protocol_features: false,
            started: Vec::new(),
        };
        let (features, protocol_features) = backend.guarded("the handshake", |f| {
            let features = f.get_features()?;
            let protocol = features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0;
            if protocol {
                let offered = f.get_protocol_features()?;
                let wanted = offered & VhostUserProtocolFeatures::REPLY_ACK;
                f.set_protocol_features(wanted)?;
                if wanted.contains(VhostUserProtocolFeatures::REPLY_ACK) {
                    f.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
                }
            }
            f.set_owner()?;
            Ok((features, protocol))
        })?;
        if features & (1 << VIRTIO_F_VERSION_1) == 0 {
            return Err(BackendError::NoVersion1(features));
        }
        backend.features = features;
        backend.protocol_features = protocol_features;
        Ok(backend)
    }

    /// The virtio features the backend offers (vhost-user's own bits
    /// included).
    pub fn features(&self) -> u64 {
        self.features
    }

    /// The socket, for watching it in the event loop (a backend never
    /// writes unasked on it: a hang-up means it is gone).
    pub fn socket_fd(&self) -> RawFd {
        self.frontend.as_raw_fd()
    }

    /// Hands the device to the backend: the driver's `acked` features,
    /// guest memory, and every ready queue with its kick EventFd
    /// (`kicks[i]` for queue `i`) and the shared `call` EventFd.
    pub fn start(
        &mut self,
        acked: u64,
        mem: &GuestMemoryMmap,
        queues: &[Queue],
        kicks: &[EventFd],
        call: &EventFd,
    ) -> Result<(), BackendError> {
        let mut features = acked;
        if self.protocol_features {
            features |= VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        }
        let regions = mem
            .iter()
            .map(VhostUserMemoryRegionInfo::from_guest_region)
            .collect::<Result<Vec<_>, _>>()
            .map_err(BackendError::Memory)?;
        let mut rings = Vec::new();
        for (index, q) in queues.iter().enumerate() {
            if !q.ready() {
                continue;
            }
            let kick = kicks.get(index).ok_or(BackendError::NoKick(index))?;
            rings.push((index, q, ring_config(index, q, mem)?, kick));
        }
        let protocol = self.protocol_features;
        self.guarded("starting the device", |f| {
            f.set_features(features)?;
            f.set_mem_table(&regions)?;
            for (index, q, config, kick) in &rings {
                f.set_vring_num(*index, q.size())?;
                f.set_vring_addr(*index, config)?;
                f.set_vring_base(*index, q.next_avail())?;
                f.set_vring_call(*index, call)?;
                f.set_vring_kick(*index, kick)?;
                if protocol {
                    f.set_vring_enable(*index, true)?;
                }
            }
            Ok(())
        })?;
        self.started = rings.iter().map(|r| r.0).collect();
        Ok(())
    }

    /// Stops every started queue (device reset); the backend keeps its
    /// memory table until the next start replaces it.
    pub fn stop(&mut self) -> Result<(), BackendError> {
        let started = std::mem::take(&mut self.started);
        if started.is_empty() {
            return Ok(());
        }
        let protocol = self.protocol_features;
        self.guarded("stopping the device", |f| {
            for &index in &started {
                if protocol {
                    f.set_vring_enable(index, false)?;
                }
                f.get_vring_base(index)?;
            }
            Ok(())
        })
    }

    /// Runs one exchange with the watchdog armed (see the module doc).
    fn guarded<T>(
        &mut self,
        what: &'static str,
        exchange: impl FnOnce(&mut Frontend) -> vhost::Result<T>,
    ) -> Result<T, BackendError> {
        let timeout = self.timeout;
        self.watchdog.arm(timeout);
        let result = exchange(&mut self.frontend);
        self.watchdog.disarm();
        result.map_err(|source| {
            if self.watchdog.fired() {
                BackendError::Timeout {
                    what,
                    secs: timeout.as_secs(),
                }
            } else {
                BackendError::Protocol { what, source }
            }
        })
    }
}

/// What the watchdog thread is told.
enum Order {
    /// Shut the socket down unless disarmed within this time.
    Arm(Duration),
    /// The exchange ended.
    Disarm,
}

/// The watchdog thread of one backend (see the module doc).
struct Watchdog {
    orders: mpsc::Sender<Order>,
    /// Set once it shut the socket down; never cleared: the socket is
    /// then dead, and every later failure is the timeout's.
    fired: Arc<AtomicBool>,
}

impl Watchdog {
    /// Starts the thread with its own copy of the socket (so it can never
    /// shut down a descriptor number reused for something else); returns
    /// once `hook` ran there, or with its error.
    fn start(socket: OwnedFd, hook: Option<ThreadHook>) -> Result<Watchdog, BackendError> {
        let (orders, rx) = mpsc::channel::<Order>();
        let (ready_tx, ready) = mpsc::channel::<Result<(), String>>();
        let fired = Arc::new(AtomicBool::new(false));
        let flag = fired.clone();
        std::thread::Builder::new()
            .name("vhost-user-watchdog".into())
            .spawn(move || {
                let confined = hook.map_or(Ok(()), |h| h());
                let ok = confined.is_ok();
                let _ = ready_tx.send(confined);
                if ok {
                    watch(&socket, &rx, &flag);
                }
            })
            .map_err(BackendError::Watchdog)?;
        match ready.recv() {
            Ok(Ok(())) => Ok(Watchdog { orders, fired }),
            Ok(Err(msg)) => Err(BackendError::WatchdogHook(msg)),
            Err(_) => Err(BackendError::WatchdogHook(
                "the thread ended before it was ready".into(),
            )),
        }
    }

    fn arm(&self, timeout: Duration) {
        let _ = self.orders.send(Order::Arm(timeout));
    }

    fn disarm(&self) {
        let _ = self.orders.send(Order::Disarm);
    }

    fn fired(&self) -> bool {
        self.fired.load(Ordering::SeqCst)
    }
}

/// The watchdog's loop: until the backend (the sender) is gone, wait to
/// be armed, then for the disarm or the deadline.
fn watch(socket: &OwnedFd, orders: &mpsc::Receiver<Order>, fired: &AtomicBool) {
    loop {
        let timeout = match orders.recv() {
            Ok(Order::Arm(t)) => t,
            // A disarm after a firing, or a stray one: nothing armed.
            Ok(Order::Disarm) => continue,
            Err(_) => return,
        };
        match orders.recv_timeout(timeout) {
            Ok(Order::Disarm) => {}
            // Exchanges do not overlap (`&mut Backend`): not sent.
            Ok(Order::Arm(_)) => {}
            Err(RecvTimeoutError::Timeout) => {
                fired.store(true, Ordering::SeqCst);
                // SAFETY: `socket` is this thread's own descriptor, open
                // for its whole life; shutdown(2) only changes the state
                // of the socket it shares with the frontend.
                unsafe { libc::shutdown(socket.as_raw_fd(), libc::SHUT_RDWR) };
            }
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// The ring addresses of queue `index` as the VMM maps them.
fn ring_config(
    index: usize,
    q: &Queue,
    mem: &GuestMemoryMmap,
) -> Result<VringConfigData, BackendError> {
    let host = |what: &'static str, addr: u64| {
        mem.get_host_address(GuestAddress(addr))
            .map(|p| p as u64)
            .map_err(|_| BackendError::QueueAddress { index, what, addr })
    };
    Ok(VringConfigData {
        queue_max_size: q.max_size(),
        queue_size: q.size(),
        flags: 0,
        desc_table_addr: host("descriptor table", q.desc_table())?,
        used_ring_addr: host("used ring", q.used_ring())?,
        avail_ring_addr: host("available ring", q.avail_ring())?,
        log_addr: None,
    })
}
