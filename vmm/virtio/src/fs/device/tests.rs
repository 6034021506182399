//! The device against a fake vhost-user backend that speaks the wire
//! protocol by hand (headers, bodies, file descriptors), so every message
//! the frontend sends is checked as a backend would receive it.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use virtio_queue::QueueT;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestRegionMmap};

use super::*;
use crate::fs::HIPRIO_QUEUE;
use crate::test_utils::GuestQueue;
use crate::{INTERRUPT_STATUS_USED_RING, VIRTIO_RING_F_EVENT_IDX};

const GET_FEATURES: u32 = 1;
const SET_FEATURES: u32 = 2;
const SET_OWNER: u32 = 3;
const SET_MEM_TABLE: u32 = 5;
const SET_VRING_NUM: u32 = 8;
const SET_VRING_ADDR: u32 = 9;
const SET_VRING_BASE: u32 = 10;
const GET_VRING_BASE: u32 = 11;
const SET_VRING_KICK: u32 = 12;
const SET_VRING_CALL: u32 = 13;
const GET_PROTOCOL_FEATURES: u32 = 15;
const SET_PROTOCOL_FEATURES: u32 = 16;
const SET_VRING_ENABLE: u32 = 18;

const NEED_REPLY: u32 = 0x8;
const REPLY: u32 = 0x4 | 0x1;
const PROTOCOL_FEATURES: u64 = 1 << 30;
const REPLY_ACK: u64 = 1 << 3;
const BACKEND_FEATURES: u64 = (1 << VIRTIO_F_VERSION_1)
    | (1 << VIRTIO_RING_F_EVENT_IDX)
    | (1 << 34) // packed rings: not for this transport
    | 1 // VIRTIO_FS_F_NOTIFICATION: not offered to the guest
    | PROTOCOL_FEATURES;

/// One message as the backend received it.
#[derive(Debug)]
struct Msg {
    code: u32,
    flags: u32,
    body: Vec<u8>,
    fds: Vec<OwnedFd>,
}

impl Msg {
    fn u64_at(&self, off: usize) -> u64 {
        u64::from_le_bytes(self.body[off..off + 8].try_into().unwrap())
    }
    fn u32_at(&self, off: usize) -> u32 {
        u32::from_le_bytes(self.body[off..off + 4].try_into().unwrap())
    }
}

/// What the fake does.
#[derive(Clone, Copy)]
struct Behaviour {
    features: u64,
    /// Stop answering (but keep the socket open) at this request.
    hang_on: Option<u32>,
    /// Close the socket after this many messages.
    close_after: Option<usize>,
}

impl Default for Behaviour {
    fn default() -> Self {
        Self {
            features: BACKEND_FEATURES,
            hang_on: None,
            close_after: None,
        }
    }
}

struct FakeBackend {
    dir: tempfile::TempDir,
    msgs: Arc<Mutex<Vec<Msg>>>,
    thread: Option<JoinHandle<()>>,
}

impl FakeBackend {
    fn start(b: Behaviour) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let listener = UnixListener::bind(dir.path().join("fs.sock")).unwrap();
        let msgs = Arc::new(Mutex::new(Vec::new()));
        let seen = msgs.clone();
        let thread = std::thread::spawn(move || {
            let (mut sock, _) = listener.accept().unwrap();
            serve(&mut sock, b, &seen);
        });
        Self {
            dir,
            msgs,
            thread: Some(thread),
        }
    }

    fn socket(&self) -> std::path::PathBuf {
        self.dir.path().join("fs.sock")
    }

    fn codes(&self) -> Vec<u32> {
        self.msgs.lock().unwrap().iter().map(|m| m.code).collect()
    }

    fn wait_for(&self, n: usize) {
        let t0 = Instant::now();
        while self.msgs.lock().unwrap().len() < n {
            assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", self.codes());
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for FakeBackend {
    fn drop(&mut self) {
        // The thread ends when the frontend's socket closes.
        let _ = self.thread.take();
    }
}

fn serve(sock: &mut UnixStream, b: Behaviour, seen: &Mutex<Vec<Msg>>) {
    loop {
        let Some(msg) = recv_msg(sock.as_raw_fd()) else {
            return;
        };
        if b.hang_on == Some(msg.code) {
            seen.lock().unwrap().push(msg);
            // Keep the socket open, answer nothing, until the frontend
            // gives up (its watchdog shuts the socket down).
            while recv_msg(sock.as_raw_fd()).is_some() {}
            return;
        }
        let reply: Option<Vec<u8>> = match msg.code {
            GET_FEATURES => Some(b.features.to_le_bytes().to_vec()),
            GET_PROTOCOL_FEATURES => Some((REPLY_ACK | 1).to_le_bytes().to_vec()),
            GET_VRING_BASE => {
                let mut v = msg.body[..4].to_vec();
                v.extend_from_slice(&0u32.to_le_bytes());
                Some(v)
            }
            _ if msg.flags & NEED_REPLY != 0 => Some(0u64.to_le_bytes().to_vec()),
            _ => None,
        };
        let out = reply.map(|body| {
            let mut out = Vec::new();
            out.extend_from_slice(&msg.code.to_le_bytes());
            out.extend_from_slice(&REPLY.to_le_bytes());
            out.extend_from_slice(&(body.len() as u32).to_le_bytes());
            out.extend_from_slice(&body);
            out
        });
        // Recorded before the reply goes out: the device returns once it
        // has the reply, and the test then reads what was seen.
        let seen_count = {
            let mut all = seen.lock().unwrap();
            all.push(msg);
            all.len()
        };
        if let Some(out) = out {
            use std::io::Write;
            if sock.write_all(&out).is_err() {
                return;
            }
        }
        if b.close_after == Some(seen_count) {
            let _ = sock.shutdown(std::net::Shutdown::Both);
            return;
        }
    }
}

/// Reads one message with its file descriptors; `None` at end of file.
fn recv_msg(fd: RawFd) -> Option<Msg> {
    let mut hdr = [0u8; 12];
    let fds = recv_with_fds(fd, &mut hdr)?;
    let code = u32::from_le_bytes(hdr[0..4].try_into().unwrap());
    let flags = u32::from_le_bytes(hdr[4..8].try_into().unwrap());
    let size = u32::from_le_bytes(hdr[8..12].try_into().unwrap()) as usize;
    let mut body = vec![0u8; size];
    if size > 0 {
        recv_with_fds(fd, &mut body)?;
    }
    Some(Msg {
        code,
        flags,
        body,
        fds,
    })
}

/// `recvmsg` of exactly `buf.len()` bytes (the frontend sends a header and
/// its body in one message, so the first read takes the descriptors).
fn recv_with_fds(fd: RawFd, buf: &mut [u8]) -> Option<Vec<OwnedFd>> {
    let mut fds = Vec::new();
    let mut got = 0;
    while got < buf.len() {
        let mut iov = libc::iovec {
            iov_base: buf[got..].as_mut_ptr().cast(),
            iov_len: buf.len() - got,
        };
        let mut cmsg = [0u64; 16];
        // SAFETY: msghdr is plain data; zeroed is a valid empty header.
        let mut mh: libc::msghdr = unsafe { std::mem::zeroed() };
        mh.msg_iov = &mut iov;
        mh.msg_iovlen = 1;
        mh.msg_control = cmsg.as_mut_ptr().cast();
        mh.msg_controllen = std::mem::size_of_val(&cmsg);
        // SAFETY: every pointer in `mh` is valid for the call.
        let n = unsafe { libc::recvmsg(fd, &mut mh, libc::MSG_CMSG_CLOEXEC) };
        if n <= 0 {
            return None;
        }
        // SAFETY: walking the control messages the kernel wrote into `cmsg`.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&mh);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                    let data = libc::CMSG_DATA(c).cast::<RawFd>();
                    let count = ((*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize)
                        / std::mem::size_of::<RawFd>();
                    for i in 0..count {
                        fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                    }
                }
                c = libc::CMSG_NXTHDR(&mh, c);
            }
        }
        got += n as usize;
    }
    Some(fds)
}

/// File-backed guest memory (vhost-user shares it by descriptor).
fn shared_mem() -> GuestMemoryMmap {
    let file = tempfile::tempfile().unwrap();
    file.set_len(0x10_0000).unwrap();
    let region =
        GuestRegionMmap::from_range(GuestAddress(0), 0x10_0000, Some(FileOffset::new(file, 0)))
            .unwrap();
    GuestMemoryMmap::from_regions(vec![region]).unwrap()
}

type Failures = Arc<Mutex<Vec<String>>>;

fn device(backend: &FakeBackend, timeout: Duration) -> (Fs, Failures) {
    let failures: Failures = Arc::default();
    let f = failures.clone();
    let fs = Fs::with_timeout(
        FsConfig {
            tag: "shared".into(),
            socket: backend.socket(),
            queue_size: 64,
        },
        Arc::new(move |m| f.lock().unwrap().push(m)),
        timeout,
        None,
    )
    .unwrap();
    (fs, failures)
}

fn queues(mem: &GuestMemoryMmap) -> (Vec<Queue>, Vec<(u64, u64, u64)>) {
    let mut qs = Vec::new();
    let mut addrs = Vec::new();
    for i in 0..NUM_QUEUES as u64 {
        let gq = GuestQueue::new(mem, GuestAddress(0x1000 + i * 0x2000), 64);
        qs.push(gq.queue());
        addrs.push((gq.desc_addr().0, gq.avail_addr().0, gq.used_addr().0));
    }
    (qs, addrs)
}

#[test]
fn handshake_passes_only_supported_features_and_fills_the_config_space() {
    let backend = FakeBackend::start(Behaviour::default());
    let (fs, _) = device(&backend, BACKEND_TIMEOUT);
    assert_eq!(
        backend.codes(),
        [
            GET_FEATURES,
            GET_PROTOCOL_FEATURES,
            SET_PROTOCOL_FEATURES,
            SET_OWNER
        ]
    );
    let msgs = backend.msgs.lock().unwrap();
    assert_eq!(msgs[2].u64_at(0), REPLY_ACK, "only REPLY_ACK is asked for");
    assert_eq!(msgs[3].flags & NEED_REPLY, NEED_REPLY, "acks from then on");
    drop(msgs);
    assert_eq!(
        fs.avail_features(),
        (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_RING_F_EVENT_IDX)
    );
    assert_eq!(fs.device_type(), crate::TYPE_FS);
    assert_eq!(fs.queue_max_sizes(), &[64, 64]);
    let mut tag = [0xffu8; 36];
    fs.read_config(0, &mut tag);
    assert_eq!(&tag[..6], b"shared");
    assert!(tag[6..].iter().all(|&b| b == 0), "NUL-padded");
    let mut n = [0u8; 4];
    fs.read_config(36, &mut n);
    assert_eq!(u32::from_le_bytes(n), 1, "one request queue");
}

#[test]
fn activation_hands_memory_and_rings_over_and_calls_reach_the_guest() {
    let backend = FakeBackend::start(Behaviour::default());
    let (mut fs, failures) = device(&backend, BACKEND_TIMEOUT);
    let mem = shared_mem();
    let (qs, addrs) = queues(&mem);
    fs.set_acked_features(fs.avail_features());
    fs.activate(mem.clone(), qs).unwrap();
    assert!(fs.is_activated());

    let msgs = backend.msgs.lock().unwrap();
    let start: Vec<&Msg> = msgs.iter().skip(4).collect();
    let codes: Vec<u32> = start.iter().map(|m| m.code).collect();
    let per_queue = [
        SET_VRING_NUM,
        SET_VRING_ADDR,
        SET_VRING_BASE,
        SET_VRING_CALL,
        SET_VRING_KICK,
        SET_VRING_ENABLE,
    ];
    let mut expected = vec![SET_FEATURES, SET_MEM_TABLE];
    expected.extend(per_queue);
    expected.extend(per_queue);
    assert_eq!(codes, expected);
    assert_eq!(
        start[0].u64_at(0),
        fs.avail_features() | PROTOCOL_FEATURES,
        "the driver's features plus vhost-user's protocol bit"
    );
    // The memory table: one region, its memfd, the VMM's address of it.
    let table = start[1];
    assert_eq!(table.u32_at(0), 1, "one region");
    assert_eq!(table.fds.len(), 1, "passed as a descriptor");
    let region = mem.iter().next().unwrap();
    assert_eq!(table.u64_at(8), 0, "guest address");
    assert_eq!(table.u64_at(16), 0x10_0000, "size");
    assert_eq!(table.u64_at(24), region.as_ptr() as u64);
    // Ring addresses are the VMM's, translated from guest addresses.
    let host = |gpa: u64| mem.get_host_address(GuestAddress(gpa)).unwrap() as u64;
    for (q, msg) in [(0usize, start[3]), (1, start[9])] {
        assert_eq!(msg.u32_at(0), q as u32);
        let (desc, avail, used) = addrs[q];
        assert_eq!(msg.u64_at(8), host(desc), "descriptor table");
        assert_eq!(msg.u64_at(16), host(used), "used ring");
        assert_eq!(msg.u64_at(24), host(avail), "available ring");
    }
    assert_eq!(start[2].u32_at(4), 64, "queue size");
    assert_eq!(start[5].fds.len(), 1, "call fd");
    assert_eq!(start[6].fds.len(), 1, "kick fd");
    assert_eq!(start[7].u32_at(4), 1, "enabled");

    // The kick descriptor is the queue EventFd KVM signals.
    fs.queue_events()[HIPRIO_QUEUE].write(1).unwrap();
    let mut v = [0u8; 8];
    // SAFETY: reading 8 bytes from an eventfd into a local buffer.
    let n = unsafe { libc::read(start[6].fds[0].as_raw_fd(), v.as_mut_ptr().cast(), 8) };
    assert_eq!(n, 8, "the backend sees the guest's kick");

    // The backend signals its call descriptor: the event loop sets the
    // used-ring bit and raises the interrupt.
    let call_fd = start[5].fds[0].as_raw_fd();
    let one = 1u64.to_le_bytes();
    // SAFETY: writing 8 bytes to an eventfd.
    assert_eq!(unsafe { libc::write(call_fd, one.as_ptr().cast(), 8) }, 8);
    drop(msgs);
    let status = fs.interrupt_status();
    let irq = fs.interrupt_evt().try_clone().unwrap();
    let fs = Arc::new(Mutex::new(fs));
    let mut em = EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new().unwrap();
    em.add_subscriber(fs.clone());
    let t0 = Instant::now();
    while status.load(Ordering::SeqCst) & INTERRUPT_STATUS_USED_RING == 0 {
        assert!(t0.elapsed() < Duration::from_secs(5));
        em.run_with_timeout(50).unwrap();
    }
    assert_eq!(irq.read().unwrap(), 1, "irqfd raised");
    assert!(failures.lock().unwrap().is_empty());
}

#[test]
fn reset_stops_the_started_queues_and_a_new_activation_starts_them_again() {
    let backend = FakeBackend::start(Behaviour::default());
    let (mut fs, failures) = device(&backend, BACKEND_TIMEOUT);
    let mem = shared_mem();
    let (mut qs, _) = queues(&mem);
    qs[HIPRIO_QUEUE].set_ready(false);
    fs.activate(mem.clone(), qs).unwrap();
    let before = backend.codes().len();
    assert_eq!(before, 4 + 2 + 6, "only the ready queue is started");
    fs.reset();
    assert!(!fs.is_activated());
    let codes = backend.codes();
    assert_eq!(&codes[before..], [SET_VRING_ENABLE, GET_VRING_BASE]);
    assert_eq!(backend.msgs.lock().unwrap()[before + 1].u32_at(0), 1);
    fs.reset();
    assert_eq!(backend.codes().len(), before + 2, "nothing to stop twice");
    let (qs, _) = queues(&mem);
    fs.activate(mem, qs).unwrap();
    assert_eq!(backend.codes().len(), before + 2 + 2 + 12);
    assert!(failures.lock().unwrap().is_empty());
}

#[test]
fn a_backend_that_goes_away_ends_the_vm_through_the_hook() {
    let backend = FakeBackend::start(Behaviour {
        close_after: Some(4),
        ..Behaviour::default()
    });
    let (fs, failures) = device(&backend, BACKEND_TIMEOUT);
    backend.wait_for(4);
    let fs = Arc::new(Mutex::new(fs));
    let mut em = EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new().unwrap();
    em.add_subscriber(fs.clone());
    let t0 = Instant::now();
    while failures.lock().unwrap().is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(5), "no failure reported");
        em.run_with_timeout(50).unwrap();
    }
    // The socket is no longer watched: more turns report nothing new.
    for _ in 0..3 {
        em.run_with_timeout(10).unwrap();
    }
    let f = failures.lock().unwrap();
    assert_eq!(f.len(), 1, "{f:?}");
    assert!(
        f[0].contains("\"shared\"") && f[0].contains("closed"),
        "{f:?}"
    );
    drop(f);
    // The guest's attempt to start the device now fails cleanly.
    let mem = shared_mem();
    let (qs, _) = queues(&mem);
    let e = fs.lock().unwrap().activate(mem, qs).unwrap_err();
    assert!(matches!(e, ActivateError::Backend(_)), "{e}");
}

#[test]
fn a_backend_that_stops_answering_fails_activation_instead_of_hanging() {
    let backend = FakeBackend::start(Behaviour {
        hang_on: Some(SET_FEATURES),
        ..Behaviour::default()
    });
    let (mut fs, failures) = device(&backend, Duration::from_millis(300));
    let mem = shared_mem();
    let (qs, _) = queues(&mem);
    let t0 = Instant::now();
    let e = fs.activate(mem, qs).unwrap_err();
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    assert!(e.to_string().contains("did not answer"), "{e}");
    assert!(!fs.is_activated());
    let f = failures.lock().unwrap();
    assert_eq!(f.len(), 1);
    assert!(f[0].contains("\"shared\""), "{f:?}");
}

#[test]
fn a_missing_or_unfit_backend_is_an_error_at_creation() {
    let dir = tempfile::tempdir().unwrap();
    let hook: FailureHook = Arc::new(|_| {});
    let e = Fs::new(
        FsConfig {
            tag: "t".into(),
            socket: dir.path().join("nobody.sock"),
            queue_size: 64,
        },
        hook.clone(),
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("nobody.sock") && e.contains("\"t\""), "{e}");

    let backend = FakeBackend::start(Behaviour {
        features: PROTOCOL_FEATURES | (1 << VIRTIO_RING_F_EVENT_IDX),
        ..Behaviour::default()
    });
    let e = Fs::new(
        FsConfig {
            tag: "t".into(),
            socket: backend.socket(),
            queue_size: 64,
        },
        hook.clone(),
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("VIRTIO_F_VERSION_1"), "{e}");

    for (tag, size) in [("", 64), (&*"x".repeat(37), 64), ("t", 0), ("t", 48)] {
        let e = Fs::new(
            FsConfig {
                tag: tag.into(),
                socket: dir.path().join("x"),
                queue_size: size,
            },
            hook.clone(),
            None,
        );
        assert!(e.is_err(), "{tag:?} {size}");
    }
}

#[test]
fn a_backend_that_hangs_in_the_handshake_is_an_error_not_a_hang() {
    let backend = FakeBackend::start(Behaviour {
        hang_on: Some(GET_FEATURES),
        ..Behaviour::default()
    });
    let t0 = Instant::now();
    let e = Fs::with_timeout(
        FsConfig {
            tag: "t".into(),
            socket: backend.socket(),
            queue_size: 64,
        },
        Arc::new(|_| {}),
        Duration::from_millis(300),
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert!(
        e.contains("handshake") && e.contains("did not answer"),
        "{e}"
    );
}

/// The watchdog is a thread of its own, started with the connection, and
/// runs the caller's hook (the VMM's seccomp filter) before anything else;
/// a hook that fails fails the device's creation, naming why.
#[test]
fn the_watchdog_thread_runs_the_hook_first_and_its_failure_is_an_error() {
    let backend = FakeBackend::start(Behaviour::default());
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let s = seen.clone();
    let hook: crate::fs::ThreadHook = Arc::new(move || {
        s.lock()
            .unwrap()
            .push(std::thread::current().name().unwrap_or("").to_string());
        Ok(())
    });
    let cfg = |socket| FsConfig {
        tag: "t".into(),
        socket,
        queue_size: 64,
    };
    Fs::new(cfg(backend.socket()), Arc::new(|_| {}), Some(hook)).unwrap();
    assert_eq!(*seen.lock().unwrap(), ["vhost-user-watchdog"]);

    let backend = FakeBackend::start(Behaviour::default());
    let failing: crate::fs::ThreadHook = Arc::new(|| Err("no filter for you".into()));
    let e = Fs::new(cfg(backend.socket()), Arc::new(|_| {}), Some(failing))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("watchdog thread could not be confined") && e.contains("no filter for you"),
        "{e}"
    );
}
