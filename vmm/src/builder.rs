//! Building and running one microVM from a validated [`VmConfig`].
//!
//! The order follows what KVM and the guest need: VM, memory slots,
//! devices (their irqfds need the irqchip), vCPUs, then guest memory
//! contents (kernel, initrd, boot info, MP table), then per-vCPU state, and
//! only then the vCPU threads and the event loop.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use kvm_ioctls::{Cap, IoEventAddress};
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::KernelLoader;
use mvm_virtio::block::{Block, BlockConfig};
use mvm_virtio::fs::{FailureHook, Fs, FsConfig as FsDeviceConfig};
use mvm_virtio::net::{Net, TapSource};
use mvm_virtio::rate_limiter::{RateLimiterConfig, TokenBucketConfig};
use mvm_virtio::rng::Rng;
use mvm_virtio::vsock::{Vsock, VsockConfig};
use mvm_virtio::{MmioTransport, VirtioDevice, NOTIFY_REG_OFFSET};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use crate::arch::layout::{self, CMDLINE_START, HIMEM_START, PAGE_SIZE, SERIAL_IRQ};
use crate::arch::pvh::{self, InitrdRegion};
use crate::arch::{mptable, regs};
use crate::config::{Console, VmConfig, VmConfigExt};
use crate::devices::bus::{lock, Bus, BusDevice};
use crate::devices::i8042::{I8042, I8042_BASE, I8042_LEN};
use crate::devices::legacy::{Quiet, QUIET_PORTS};
use crate::devices::serial::{ConsoleSink, ConsoleTail, ConsoleWriter, SerialDevice};
use crate::devices::status_port::{self, GuestStatus, StatusPort};
use crate::exit::{ExitSignal, StopReason};
use crate::vstate::memory::{self, Backing, MemoryError};
use crate::vstate::vcpu::{Vcpu, VcpuContext, VcpuError};
use crate::vstate::vm::{Vm, VmError};
use mvm_vmm_api::kvm::{self, KvmError};

/// COM1.
const SERIAL_PORT: u16 = 0x3f8;
const SERIAL_LEN: u16 = 8;

/// Errors building or running the VM (all are VMM errors: exit status 1).
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Kvm(#[from] KvmError),
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error("creating an EventFd failed: {0}")]
    EventFd(std::io::Error),
    #[error("registering the irqfd for IRQ {irq} failed: {source}")]
    Irqfd { irq: u32, source: kvm_ioctls::Error },
    #[error("registering the ioeventfd at {addr:#x} failed: {source}")]
    Ioeventfd {
        addr: u64,
        source: kvm_ioctls::Error,
    },
    #[error("opening console file {path}: {source}")]
    ConsoleFile {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("device bus: {0}")]
    Bus(#[from] crate::devices::bus::BusError),
    #[error("drive {id:?}: {source}")]
    Block {
        id: String,
        source: mvm_virtio::block::BlockError,
    },
    #[error("virtio-rng: {0}")]
    Rng(mvm_virtio::rng::RngError),
    #[error(transparent)]
    Vsock(mvm_virtio::vsock::VsockError),
    #[error(transparent)]
    Fs(mvm_virtio::fs::FsError),
    #[error(transparent)]
    Net(mvm_virtio::net::NetError),
    #[error("opening kernel {path}: {source}")]
    KernelOpen {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("loading kernel {path}: {source}")]
    KernelLoad {
        path: std::path::PathBuf,
        source: linux_loader::loader::Error,
    },
    #[error("kernel {0} has no PVH entry point; build it with resources/kernel/build.sh")]
    NoPvh(std::path::PathBuf),
    #[error("reading initrd {path}: {source}")]
    InitrdRead {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the initrd ({size} bytes) does not fit between the end of the kernel ({kernel_end:#x}) \
         and the end of low memory ({low_end:#x}); raise memory_mib"
    )]
    InitrdTooBig {
        size: u64,
        kernel_end: u64,
        low_end: u64,
    },
    #[error("writing {what} to guest memory: {source}")]
    GuestWrite {
        what: &'static str,
        source: vm_memory::GuestMemoryError,
    },
    #[error(transparent)]
    Cmdline(#[from] crate::cmdline::CmdlineError),
    #[error(transparent)]
    Pvh(#[from] pvh::PvhError),
    #[error(transparent)]
    Mptable(#[from] mptable::MptableError),
    #[error(transparent)]
    Regs(#[from] regs::RegsError),
    #[error("KVM_GET_SUPPORTED_CPUID failed: {0}")]
    Cpuid(kvm_ioctls::Error),
    #[error("setting up signal handling failed: {0}")]
    Signals(std::io::Error),
    #[error("the event loop failed: {0}")]
    EventLoop(String),
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::SeccompError),
    #[error(transparent)]
    Snapshot(#[from] crate::snapshot::SnapshotError),
    #[error("restoring the snapshot: {0}")]
    Restore(String),
    #[error(transparent)]
    Control(#[from] crate::control::ControlError),
}

/// Options that are not part of the VM's configuration.
#[derive(Debug, Clone, Copy)]
pub struct RunOptions {
    /// Boot even on a PVM host (for experiments).
    pub force_pvm: bool,
    /// When the VMM process started (the boot timer's zero).
    pub start: Instant,
}

/// How a VM run ended.
#[derive(Debug)]
pub struct RunResult {
    pub reason: StopReason,
    pub guest: GuestStatus,
    /// The last console lines (for crash messages).
    pub console_tail: Vec<String>,
}

/// A virtio device as the builder wires it.
struct VirtioSlot {
    device: Arc<Mutex<dyn VirtioDevice>>,
    subscriber: Arc<Mutex<dyn MutEventSubscriber + Send>>,
}

/// Lets the MMIO bus reach a virtio transport.
impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        MmioTransport::read(self, offset, data);
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        MmioTransport::write(self, offset, data);
    }
}

/// Build the VM described by `cfg`, run it until it stops, and report.
/// `entry` is the PVH entry point found by validation (cross-checked with
/// the loader's).
pub fn run(cfg: &VmConfig, entry: u64, opts: RunOptions) -> Result<RunResult, BuildError> {
    // Signals first: the mask is inherited by every thread created later,
    // so SIGTERM/SIGINT are only ever delivered through the signalfd.
    let signals =
        SignalFd::new(&[libc::SIGTERM, libc::SIGINT, libc::SIGHUP]).map_err(BuildError::Signals)?;

    // Info, not debug: a handful of lines per start in vmm.log, and the
    // split between the VMM's setup and the guest's boot that the
    // confinement benchmark reads (tests/benches/run.rs).
    let phase = |what: &str| {
        tracing::info!(
            "{what}: {} ms after VMM start",
            opts.start.elapsed().as_millis()
        );
    };
    if opts.force_pvm {
        tracing::warn!("--force-pvm: booting even if /dev/kvm is PVM; a stock kernel will be very slow there or fail");
    }
    let kvm = kvm::open(opts.force_pvm)?;
    let mem_size = cfg.memory_bytes();
    // A snapshot to restore is read and checked before anything is built.
    let restore = match &cfg.restore {
        Some(r) => Some((crate::snapshot::read(&r.state)?, r)),
        None => None,
    };
    let ram = match &restore {
        Some((_, r)) => memory::restore(mem_size, &r.memory)?,
        None => memory::create(mem_size, Backing::for_config(cfg))?,
    };
    tracing::debug!(
        "guest memory: {} MiB of {}, huge pages {}",
        mem_size >> 20,
        ram.backing.name(),
        if ram.huge_pages_advised {
            "advised"
        } else {
            "unavailable"
        }
    );
    let mem = ram.mem;
    let vm = Vm::new(&kvm)?;
    vm.register_memory(&mem)?;
    phase("VM and memory ready");
    let exit = Arc::new(ExitSignal::new().map_err(BuildError::EventFd)?);

    // Legacy devices on the port I/O bus.
    let mut io_bus = Bus::new();
    let serial_evt = EventFd::new(libc::EFD_NONBLOCK).map_err(BuildError::EventFd)?;
    vm.fd()
        .register_irqfd(&serial_evt, SERIAL_IRQ)
        .map_err(|source| BuildError::Irqfd {
            irq: SERIAL_IRQ,
            source,
        })?;
    let writer = ConsoleWriter::new(console_sink(&cfg.console, cfg.console_max_bytes)?);
    let tail: Arc<Mutex<ConsoleTail>> = writer.tail();
    let serial = match &restore {
        Some((s, _)) => SerialDevice::from_snapshot(serial_evt, writer, &s.devices.serial)
            .map_err(BuildError::Restore)?,
        None => SerialDevice::new(serial_evt, writer),
    };
    let serial = Arc::new(Mutex::new(serial));
    io_bus.insert(serial.clone(), SERIAL_PORT.into(), SERIAL_LEN.into())?;
    let i8042 = Arc::new(Mutex::new(I8042::new(exit.clone())));
    if let Some((s, _)) = &restore {
        lock(&i8042).restore(&s.devices.i8042);
    }
    io_bus.insert(i8042.clone(), I8042_BASE.into(), I8042_LEN.into())?;
    let mut status_port = StatusPort::new(opts.start, exit.clone(), cfg.seccomp)?;
    let guest_status = status_port.status();
    let warm_ready = Arc::new(EventFd::new(libc::EFD_NONBLOCK).map_err(BuildError::EventFd)?);
    status_port.notify_warm_ready(warm_ready.clone());
    io_bus.insert(
        Arc::new(Mutex::new(status_port)),
        status_port::PORT.into(),
        status_port::LEN.into(),
    )?;
    for &(base, len, value) in QUIET_PORTS {
        io_bus.insert(
            Arc::new(Mutex::new(Quiet::new(value))),
            base.into(),
            len.into(),
        )?;
    }

    // virtio devices on the MMIO bus, in slot order: drives, rng, vsock,
    // net, then the virtio-fs shares (the newer kinds last, so that
    // adding one moves none of the older devices).
    let mut mmio_bus = Bus::new();
    let mut slots = Vec::new();
    for d in &cfg.drives {
        let block = Block::new(BlockConfig {
            id: d.id.clone(),
            path: d.path.clone(),
            read_only: d.read_only,
        })
        .map_err(|source| BuildError::Block {
            id: d.id.clone(),
            source,
        })?;
        let block = Arc::new(Mutex::new(block));
        slots.push(VirtioSlot {
            device: block.clone(),
            subscriber: block,
        });
    }
    if cfg.rng {
        let rng = Arc::new(Mutex::new(Rng::new().map_err(BuildError::Rng)?));
        slots.push(VirtioSlot {
            device: rng.clone(),
            subscriber: rng,
        });
    }
    if let Some(v) = &cfg.vsock {
        let vsock = Vsock::new(VsockConfig {
            guest_cid: v.guest_cid,
            uds_path: v.uds_path.clone(),
        })
        .map_err(BuildError::Vsock)?;
        let vsock = Arc::new(Mutex::new(vsock));
        slots.push(VirtioSlot {
            device: vsock.clone(),
            subscriber: vsock,
        });
    }
    let mut nets = Vec::new();
    for n in &cfg.net {
        let net = Arc::new(Mutex::new(
            Net::new(net_config(n)).map_err(BuildError::Net)?,
        ));
        tracing::debug!("net {}: TAP {}", n.id, lock(&net).tap_name());
        nets.push(net.clone());
        slots.push(VirtioSlot {
            device: net.clone(),
            subscriber: net,
        });
    }
    for f in &cfg.fs {
        // The guest cannot use its mounts without the backend: a backend
        // that fails ends the VM (a VMM error naming the share).
        let stop = exit.clone();
        let on_failure: FailureHook = Arc::new(move |msg| stop.request(StopReason::VmmError(msg)));
        let fs = Fs::new(
            FsDeviceConfig {
                tag: f.tag.clone(),
                socket: f.socket.clone(),
                queue_size: f.queue_size(),
            },
            on_failure,
            // The watchdog thread's own filter (it starts now, before any).
            cfg.seccomp.then(crate::seccomp::helper_hook),
        )
        .map_err(BuildError::Fs)?;
        let fs = Arc::new(Mutex::new(fs));
        slots.push(VirtioSlot {
            device: fs.clone(),
            subscriber: fs,
        });
    }
    let mut transports = Vec::new();
    for (i, slot) in slots.iter().enumerate() {
        let (base, irq) = layout::virtio_slot(i);
        let dev = lock(&slot.device);
        for (q, evt) in dev.queue_events().iter().enumerate() {
            let addr = base + NOTIFY_REG_OFFSET;
            vm.fd()
                .register_ioevent(evt, &IoEventAddress::Mmio(addr), q as u32)
                .map_err(|source| BuildError::Ioeventfd { addr, source })?;
        }
        vm.fd()
            .register_irqfd(dev.interrupt_evt(), irq)
            .map_err(|source| BuildError::Irqfd { irq, source })?;
        drop(dev);
        let transport = Arc::new(Mutex::new(MmioTransport::new(
            mem.clone(),
            slot.device.clone(),
        )));
        transports.push(transport.clone());
        mmio_bus.insert(transport, base, layout::VIRTIO_MMIO_SIZE)?;
    }

    phase("devices ready");
    let count = cfg.vcpus as u8;
    let vcpus = (0..count)
        .map(|i| Vcpu::new(&vm, i))
        .collect::<Result<Vec<_>, _>>()?;

    match &restore {
        Some((state, _)) => restore_state(state, cfg, &vm, &vcpus, &transports)?,
        None => boot_setup(&kvm, &mem, cfg, entry, mem_size, &vcpus)?,
    }
    if let Some((state, _)) = &restore {
        if state.devices.boot_complete {
            lock(&guest_status).boot_time = Some(opts.start.elapsed());
        }
        phase("snapshot restored");
    }
    // The MSRs a snapshot saves: a system ioctl, so read now, before any
    // filter.
    let msrs = if cfg.control_socket.is_some() {
        crate::vstate::vcpu_state::msrs_to_save(&kvm)
            .map_err(|e| BuildError::Restore(e.to_string()))?
    } else {
        Vec::new()
    };
    let control = match &cfg.control_socket {
        Some(p) => Some(crate::control::bind(p)?),
        None => None,
    };

    // The event loop: exit latch and signals, then the devices.
    let mut em: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
        EventManager::new().map_err(|e| BuildError::EventLoop(format!("{e:?}")))?;
    em.add_subscriber(Arc::new(Mutex::new(ExitWatcher {
        exit: exit.clone(),
        signals,
    })));
    for slot in &slots {
        em.add_subscriber(slot.subscriber.clone());
    }

    let ctx = VcpuContext {
        io_bus: Arc::new(io_bus),
        mmio_bus: Arc::new(mmio_bus),
        exit: exit.clone(),
        seccomp: cfg.seccomp,
    };
    phase(&format!("starting {count} vCPU(s)"));
    crate::vstate::vcpu::install_kick_handler()?;
    let handles = crate::vstate::vcpu::start_all(vcpus, &ctx, Arc::new(msrs))?;
    // The VM fd stays open for the VM's life: with the control server, or
    // here until the end.
    let mut _vm_kept = None;
    match control {
        Some(listener) => {
            let parts = crate::control::VmParts {
                vm,
                mem: mem.clone(),
                vcpus: handles,
                serial: serial.clone(),
                i8042,
                guest_status: guest_status.clone(),
                warm_ready,
                transports,
                artifacts: cfg.artifacts.clone(),
                memory_bytes: mem_size,
            };
            em.add_subscriber(Arc::new(Mutex::new(crate::control::ControlServer::new(
                listener,
                parts,
                exit.clone(),
            ))));
        }
        None => _vm_kept = Some((vm, handles)),
    }
    // From here the main thread only runs the event loop and the
    // teardown; its filter goes on after the vCPU threads exist, since a
    // thread inherits its creator's filter and theirs is another. No
    // guest request reaches this thread before the event loop runs.
    if cfg.seccomp {
        crate::seccomp::apply(crate::seccomp::Role::Main)?;
        crate::seccomp::test_trigger();
        phase("seccomp filters installed");
    } else {
        tracing::warn!(
            "--no-seccomp: the VMM runs without its system call filters (debugging only)"
        );
    }

    while !exit.is_requested() {
        if let Err(e) = em.run() {
            exit.request(StopReason::VmmError(format!(
                "the event loop failed: {e:?}"
            )));
        }
    }

    lock(&serial).flush_output();
    for net in &nets {
        let net = lock(net);
        let m = net.metrics();
        if m.dropped() > 0 {
            tracing::info!("net {}: {m}", net.id());
        } else {
            tracing::debug!("net {}: {m}", net.id());
        }
    }
    let console_tail = lock(&tail).lines();
    let guest = lock(&guest_status).clone();
    let reason = exit
        .reason()
        .unwrap_or(StopReason::VmmError("stopped for no reason".into()));
    Ok(RunResult {
        reason,
        guest,
        console_tail,
    })
}

/// A new VM's memory and vCPUs set up for the PVH boot of `cfg`'s kernel.
fn boot_setup(
    kvm: &kvm_ioctls::Kvm,
    mem: &GuestMemoryMmap,
    cfg: &VmConfig,
    entry: u64,
    mem_size: u64,
    vcpus: &[Vcpu],
) -> Result<(), BuildError> {
    let count = cfg.vcpus as u8;
    let loaded_entry = load_kernel(mem, cfg)?;
    if loaded_entry != entry {
        tracing::debug!("PVH entry {loaded_entry:#x} from the loader, {entry:#x} from validation");
    }
    let kernel_end = kernel_end(cfg)?;
    let initrd = load_initrd(mem, cfg, kernel_end)?;
    let cmdline = cfg.kernel_cmdline()?;
    tracing::debug!("kernel command line: {cmdline}");
    let mut bytes = cmdline.into_bytes();
    bytes.push(0);
    mem.write_slice(&bytes, GuestAddress(CMDLINE_START))
        .map_err(|source| BuildError::GuestWrite {
            what: "the command line",
            source,
        })?;
    pvh::write_boot_info(mem, mem_size, CMDLINE_START, initrd)?;
    mptable::setup(mem, cfg.vcpus)?;
    regs::write_gdt_idt(mem)?;

    let cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(BuildError::Cpuid)?;
    let tsc_deadline = kvm.check_extension(Cap::TscDeadlineTimer);
    for v in vcpus {
        v.configure(&cpuid, count, tsc_deadline, loaded_entry)?;
    }
    Ok(())
}

/// A new VM put in a snapshot's state: the VM-wide state, then each
/// vCPU's, then the devices' (which activates those the driver had, with
/// their queues where they stood), once the snapshot is known to fit.
fn restore_state(
    state: &crate::snapshot::MicrovmState,
    cfg: &VmConfig,
    vm: &Vm,
    vcpus: &[Vcpu],
    transports: &[Arc<Mutex<MmioTransport>>],
) -> Result<(), BuildError> {
    let types: Vec<u32> = transports
        .iter()
        .map(|t| {
            let t = lock(t);
            let d = lock(t.device().as_ref());
            d.device_type()
        })
        .collect();
    state.check_fits(cfg, &types)?;
    vm.restore_state(&state.vm)?;
    for (v, s) in vcpus.iter().zip(&state.vcpus) {
        v.restore(s)?;
    }
    for (i, (t, s)) in transports.iter().zip(&state.devices.virtio).enumerate() {
        let mut t = lock(t);
        t.restore(s)
            .map_err(|e| BuildError::Restore(format!("virtio device {i}: {e}")))?;
        // A pending interrupt is raised again (the guest finds the reason
        // in the interrupt status register); one that was delivered and
        // not yet handled is in the restored interrupt controllers.
        if s.interrupt_status != 0 {
            let d = lock(t.device().as_ref());
            if let Err(e) = d.interrupt_evt().write(1) {
                tracing::warn!("virtio device {i}: raising its interrupt after restore: {e}");
            }
        }
    }
    // Requests the guest made available before the snapshot and the old
    // VMM had not handled yet are handled now.
    crate::control::kick_queues(transports);
    Ok(())
}

/// The device's view of a validated net configuration.
fn net_config(n: &mvm_vmm_api::NetConfig) -> mvm_virtio::net::NetConfig {
    let bucket = |b: mvm_vmm_api::TokenBucket| TokenBucketConfig {
        size: b.size,
        one_time_burst: b.one_time_burst,
        refill_time_ms: b.refill_time_ms,
    };
    let limiter = |l: &Option<mvm_vmm_api::RateLimit>| {
        l.map(|l| RateLimiterConfig {
            bandwidth: l.bandwidth.map(bucket),
            ops: l.ops.map(bucket),
        })
    };
    mvm_virtio::net::NetConfig {
        id: n.id.clone(),
        tap: match &n.tap {
            mvm_vmm_api::TapConfig::Name(name) => TapSource::Name(name.clone()),
            mvm_vmm_api::TapConfig::Fd(fd) => TapSource::Fd(*fd),
        },
        mac: n.mac.map(|m| m.0),
        mtu: n.mtu,
        rx_rate_limiter: limiter(&n.rx_rate_limit),
        tx_rate_limiter: limiter(&n.tx_rate_limit),
    }
}

fn console_sink(c: &Console, max: Option<u64>) -> Result<ConsoleSink, BuildError> {
    Ok(match c {
        Console::Stdout => ConsoleSink::Stdout,
        Console::Off => ConsoleSink::Off,
        Console::File(path) => ConsoleSink::File(
            crate::logfile::RotatingFile::open(path, max).map_err(|source| {
                BuildError::ConsoleFile {
                    path: path.clone(),
                    source,
                }
            })?,
        ),
    })
}

/// Load the ELF kernel at its physical addresses; returns the PVH entry.
fn load_kernel(mem: &GuestMemoryMmap, cfg: &VmConfig) -> Result<u64, BuildError> {
    let mut f = File::open(&cfg.kernel).map_err(|source| BuildError::KernelOpen {
        path: cfg.kernel.clone(),
        source,
    })?;
    let res = Elf::load(mem, None, &mut f, Some(GuestAddress(HIMEM_START))).map_err(|source| {
        BuildError::KernelLoad {
            path: cfg.kernel.clone(),
            source,
        }
    })?;
    match res.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(addr) => Ok(addr.0),
        _ => Err(BuildError::NoPvh(cfg.kernel.clone())),
    }
}

/// The end of the kernel image in guest memory (see [`pvh::load_end`]).
fn kernel_end(cfg: &VmConfig) -> Result<u64, BuildError> {
    let mut f = File::open(&cfg.kernel).map_err(|source| BuildError::KernelOpen {
        path: cfg.kernel.clone(),
        source,
    })?;
    pvh::load_end(&mut f).map_err(|e| BuildError::KernelOpen {
        path: cfg.kernel.clone(),
        source: std::io::Error::other(e.to_string()),
    })
}

/// Concatenate the initrd archives (each padded to 4 bytes, which the
/// kernel's unpacker skips) at the highest page-aligned address that fits
/// below the end of low RAM.
fn load_initrd(
    mem: &GuestMemoryMmap,
    cfg: &VmConfig,
    kernel_end: u64,
) -> Result<Option<InitrdRegion>, BuildError> {
    if cfg.initrd.is_empty() {
        return Ok(None);
    }
    let mut data = Vec::new();
    for path in &cfg.initrd {
        let mut f = File::open(path).map_err(|source| BuildError::InitrdRead {
            path: path.clone(),
            source,
        })?;
        f.read_to_end(&mut data)
            .map_err(|source| BuildError::InitrdRead {
                path: path.clone(),
                source,
            })?;
        data.resize(data.len().next_multiple_of(4), 0);
    }
    let size = data.len() as u64;
    let low_end = layout::low_ram_end(cfg.memory_bytes());
    let too_big = BuildError::InitrdTooBig {
        size,
        kernel_end,
        low_end,
    };
    let addr = low_end.checked_sub(size).ok_or(too_big)? & !(PAGE_SIZE - 1);
    if addr < kernel_end.next_multiple_of(PAGE_SIZE) {
        return Err(BuildError::InitrdTooBig {
            size,
            kernel_end,
            low_end,
        });
    }
    mem.write_slice(&data, GuestAddress(addr))
        .map_err(|source| BuildError::GuestWrite {
            what: "the initrd",
            source,
        })?;
    Ok(Some(InitrdRegion { addr, size }))
}

/// Watches the exit latch and the signalfd.
struct ExitWatcher {
    exit: Arc<ExitSignal>,
    signals: SignalFd,
}

impl MutEventSubscriber for ExitWatcher {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.fd() == self.exit.evt().as_raw_fd() {
            let _ = self.exit.evt().read();
        } else if events.fd() == self.signals.fd.as_raw_fd() {
            if let Some(signo) = self.signals.read() {
                self.exit.request(StopReason::Signal(signo));
            }
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        for fd in [self.exit.evt().as_raw_fd(), self.signals.fd.as_raw_fd()] {
            if let Err(e) = ops.add(Events::new_raw(fd, EventSet::IN)) {
                self.exit.request(StopReason::VmmError(format!(
                    "cannot watch fd {fd} in the event loop: {e:?}"
                )));
            }
        }
    }
}

/// A signalfd for `signals`, which are blocked for this thread (and every
/// thread it creates later) so they arrive only here.
struct SignalFd {
    fd: OwnedFd,
}

impl SignalFd {
    fn new(signals: &[i32]) -> std::io::Result<Self> {
        // SAFETY: sigset_t is plain data; sigemptyset initialises it.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a valid sigset_t for these libc calls.
        unsafe {
            libc::sigemptyset(&mut set);
            for &s in signals {
                libc::sigaddset(&mut set, s);
            }
        }
        // SAFETY: `set` is initialised; a null old-set pointer is allowed.
        let ret = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
        if ret != 0 {
            return Err(std::io::Error::from_raw_os_error(ret));
        }
        // SAFETY: -1 asks for a new signalfd; `set` is initialised.
        let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { fd })
    }

    /// The number of the next pending signal, if any.
    fn read(&self) -> Option<i32> {
        // SAFETY: signalfd_siginfo is plain data.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: reading at most `size` bytes into `info`, which is that large.
        let n = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                (&mut info as *mut libc::signalfd_siginfo).cast(),
                size,
            )
        };
        (n == size as isize).then_some(info.ssi_signo as i32)
    }
}
