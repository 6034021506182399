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
//! Each exchange instead runs with a watchdog thread that shuts the socket
//! down after [`super::BACKEND_TIMEOUT`]; the blocked read then sees end
//! of file and the exchange fails. Exchanges are rare (start-up, device
//! start and stop), so a thread each costs nothing that matters.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

use vhost::vhost_user::message::VhostUserHeaderFlag;
use vhost::vhost_user::{
    Frontend, VhostUserFrontend, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

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
    pub fn connect(path: &Path, queues: usize, timeout: Duration) -> Result<Self, BackendError> {
        let stream = UnixStream::connect(path).map_err(|source| BackendError::Connect {
            path: path.to_owned(),
            source,
        })?;
        let mut backend = Self {
            frontend: Frontend::from_stream(stream, queues as u64),
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
        let fd = self.frontend.as_raw_fd();
        let timeout = self.timeout;
        let fired = AtomicBool::new(false);
        let (done, wait) = mpsc::channel::<()>();
        let frontend = &mut self.frontend;
        std::thread::scope(|s| {
            let fired = &fired;
            std::thread::Builder::new()
                .name("vhost-user-watchdog".into())
                .spawn_scoped(s, move || {
                    if wait.recv_timeout(timeout) == Err(RecvTimeoutError::Timeout) {
                        fired.store(true, Ordering::SeqCst);
                        // SAFETY: `fd` is the frontend's socket, which
                        // outlives this scope (the frontend is borrowed for
                        // it); shutdown(2) only changes the socket's state.
                        unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
                    }
                })
                .map_err(BackendError::Watchdog)?;
            let result = exchange(frontend);
            drop(done);
            result.map_err(|source| {
                if fired.load(Ordering::SeqCst) {
                    BackendError::Timeout {
                        what,
                        secs: timeout.as_secs(),
                    }
                } else {
                    BackendError::Protocol { what, source }
                }
            })
        })
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
