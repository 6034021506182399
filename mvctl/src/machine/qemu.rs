//! The QEMU command line of L1 in machine mode, and the L1 boot files.
//!
//! The machine is the emulated KVM host of `resources/testhost/` (QEMU TCG
//! with nested AMD SVM, the host's root over 9p read-only with a tmpfs
//! overlay, the testhost init), booted the way its `run` script boots it,
//! plus what a long-running machine needs:
//! - the persistent disk on virtio-blk (serial `mvm-machine`, discards
//!   passed to the sparse file);
//! - user-mode networking with `hostfwd` from `127.0.0.1:PORT` to mvmd's
//!   port 2375 in L1 (only this host reaches it; mvmd wants a token anyway);
//! - a control port (virtio-serial `mvm.control` on a pair of FIFOs) on
//!   which the host writes `stop`;
//! - the job's stdout and stderr ports written straight to `machine.log`
//!   and `mvmd.log` (files, not FIFOs: nobody has to read them live).
//!
//! Keep the common part in step with `resources/testhost/run`, which has
//! the reasons for each kernel argument and device.

use std::ffi::OsString;
use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::paths::BootFiles;

/// mvmd's TCP port inside L1.
pub const GUEST_API_PORT: u16 = 2375;
/// Serial of the persistent disk, which `machine-l1` looks for.
pub const DISK_SERIAL: &str = "mvm-machine";

/// Errors finding L1's kernel and initramfs.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    /// build-initramfs.sh failed.
    #[error("building the emulated KVM host's initramfs with {script} failed ({status}); see the messages above")]
    Build {
        /// The script.
        script: PathBuf,
        /// Its status.
        status: String,
    },
    /// The cache dir lacks a file.
    #[error("{path}: {source}; rebuild with `{script} --force`")]
    Cache {
        /// The file.
        path: PathBuf,
        /// The build script.
        script: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// No free port.
    #[error("cannot find a free TCP port on 127.0.0.1 for the API forward: {0}")]
    Port(#[source] std::io::Error),
}

/// L1's kernel and initramfs (from the testhost cache).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct L1Boot {
    /// The kernel image (ELF vmlinux, or the bzImage).
    pub kernel: PathBuf,
    /// The initramfs.
    pub initramfs: PathBuf,
}

impl L1Boot {
    /// Run `build-initramfs.sh` (a no-op when its cache is current; it
    /// apt-installs QEMU and the kernel when missing, saying so on stderr)
    /// and read the cache dir it prints.
    pub fn build(testhost: &Path) -> Result<Self, QemuError> {
        let script = testhost.join("build-initramfs.sh");
        let out = Command::new(&script)
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| QemuError::Build {
                script: script.clone(),
                status: e.to_string(),
            })?;
        if !out.status.success() {
            return Err(QemuError::Build {
                script,
                status: out.status.to_string(),
            });
        }
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        let kernel_file = dir.join("kernel");
        let kernel = fs::read_to_string(&kernel_file).map_err(|source| QemuError::Cache {
            path: kernel_file.clone(),
            script: script.clone(),
            source,
        })?;
        let boot = L1Boot {
            kernel: PathBuf::from(kernel.trim()),
            initramfs: dir.join("initramfs.cpio"),
        };
        for p in [&boot.kernel, &boot.initramfs] {
            fs::metadata(p).map_err(|source| QemuError::Cache {
                path: p.clone(),
                script: script.clone(),
                source,
            })?;
        }
        Ok(boot)
    }
}

/// Everything the command line depends on.
#[derive(Debug, Clone)]
pub struct QemuConfig {
    /// Kernel and initramfs.
    pub boot: L1Boot,
    /// vCPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// The boot dir (L1's out dir).
    pub boot_dir: PathBuf,
    /// The disk image.
    pub disk: PathBuf,
    /// Base path of the control FIFOs (`.in`, `.out`).
    pub control: PathBuf,
    /// QEMU's HMP monitor socket (a look at the vCPUs of a stalled L1).
    pub monitor: PathBuf,
    /// Host port forwarded to mvmd.
    pub port: u16,
    /// Host directories shared writable at their paths (9p tags
    /// `rw0`, `rw1`..., as `run --rw`; [`super::boot::host_shares`]).
    pub shares: Vec<PathBuf>,
}

/// QEMU's binary.
pub const QEMU: &str = "qemu-system-x86_64";
/// The process name QEMU gives itself (`-name ...,process=`), shown by ps.
pub const PROCESS_NAME: &str = "mvm-machine";
/// qboot: 4-5 s less than SeaBIOS to L1's kernel under TCG (see `run`).
const QBOOT: &str = "/usr/share/qemu/qboot.rom";

/// The host's TSC rate in kHz, from `/proc/cpuinfo` (`cpu MHz`).
fn host_tsc_khz() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    parse_cpu_mhz(&info)
}

fn parse_cpu_mhz(cpuinfo: &str) -> Option<u64> {
    let line = cpuinfo.lines().find(|l| l.starts_with("cpu MHz"))?;
    let mhz: f64 = line.split(':').nth(1)?.trim().parse().ok()?;
    let khz = (mhz * 1000.0) as u64;
    (khz > 0).then_some(khz)
}

/// L1's kernel command line: the testhost's (see `run` for each part).
pub fn kernel_cmdline() -> String {
    let mut s = String::from(
        "console=ttyS0 rdinit=/init panic=-1 no_timer_check cryptomgr.notests tsc=reliable \
         kvm_amd.npt=0 i8042.noaux i8042.nokbd apparmor=0 audit=0 mitigations=off rodata=off \
         initcall_blacklist=load_system_certificate_list,init_kprobe_trace",
    );
    // As in `run`: L1's PIT calibration of the TSC fails on a loaded host
    // (its clock then runs many times too fast); TCG's TSC runs at the
    // host's rate, so give that.
    if let Some(khz) = host_tsc_khz() {
        s.push_str(&format!(" tsc_early_khz={khz}"));
    }
    if let Ok(extra) = std::env::var("MVM_TESTHOST_APPEND") {
        if !extra.trim().is_empty() {
            s.push(' ');
            s.push_str(extra.trim());
        }
    }
    s
}

/// QEMU option values double their commas.
fn qarg(p: &Path) -> String {
    p.to_string_lossy().replace(',', ",,")
}

/// The arguments after the binary.
pub fn args(c: &QemuConfig) -> Vec<OsString> {
    let files = BootFiles::new(&c.boot_dir);
    let mut a: Vec<String> = vec![
        "-nodefaults".into(),
        "-no-user-config".into(),
        "-no-reboot".into(),
        "-display".into(),
        "none".into(),
        "-name".into(),
        format!("{PROCESS_NAME},process={PROCESS_NAME}"),
        "-M".into(),
        "q35".into(),
        "-accel".into(),
        "tcg,thread=multi".into(),
        "-cpu".into(),
        "EPYC,+svm,+npt".into(),
    ];
    if Path::new(QBOOT).is_file() {
        a.extend(["-bios".into(), QBOOT.into()]);
    }
    a.extend([
        "-m".into(),
        c.memory_mib.to_string(),
        "-smp".into(),
        c.cpus.to_string(),
        "-kernel".into(),
        c.boot.kernel.to_string_lossy().into_owned(),
        "-initrd".into(),
        c.boot.initramfs.to_string_lossy().into_owned(),
        "-append".into(),
        kernel_cmdline(),
        "-chardev".into(),
        format!("file,id=console,path={}", qarg(&files.console_log())),
        "-serial".into(),
        "chardev:console".into(),
        "-virtfs".into(),
        "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap".into(),
        "-virtfs".into(),
        format!(
            "local,path={},mount_tag=out,security_model=none,multidevs=remap",
            qarg(&c.boot_dir)
        ),
    ]);
    // Writable shares, as `run --rw`: cache=mmap in L1 (its init), so
    // what the host changes is seen.
    for (i, p) in c.shares.iter().enumerate() {
        a.push("-virtfs".into());
        a.push(format!(
            "local,path={},mount_tag={},security_model=none,multidevs=remap",
            qarg(p),
            super::boot::share_tag(i)
        ));
    }
    a.extend([
        "-device".into(),
        "virtio-serial-pci".into(),
        "-chardev".into(),
        format!("file,id=stdout,path={}", qarg(&files.machine_log())),
        "-device".into(),
        "virtserialport,chardev=stdout,name=mvm.stdout".into(),
        "-chardev".into(),
        format!("file,id=stderr,path={}", qarg(&files.mvmd_log())),
        "-device".into(),
        "virtserialport,chardev=stderr,name=mvm.stderr".into(),
        "-chardev".into(),
        format!("pipe,id=control,path={}", qarg(&c.control)),
        "-device".into(),
        "virtserialport,chardev=control,name=mvm.control".into(),
        "-monitor".into(),
        format!("unix:{},server=on,wait=off", qarg(&c.monitor)),
        "-drive".into(),
        format!(
            "file={},format=raw,if=none,id=disk,discard=unmap",
            qarg(&c.disk)
        ),
        "-device".into(),
        format!("virtio-blk-pci,drive=disk,serial={DISK_SERIAL}"),
        "-netdev".into(),
        format!(
            "user,id=net0,hostfwd=tcp:127.0.0.1:{}-:{GUEST_API_PORT}",
            c.port
        ),
        // romfile=: no PXE option ROM (qboot would not run it anyway).
        "-device".into(),
        "virtio-net-pci,netdev=net0,romfile=".into(),
    ]);
    a.into_iter().map(OsString::from).collect()
}

/// A TCP port on 127.0.0.1 that is free now. QEMU binds it a moment later;
/// the caller retries with another port if QEMU says it is taken.
pub fn free_port() -> Result<u16, QemuError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(QemuError::Port)?;
    Ok(l.local_addr().map_err(QemuError::Port)?.port())
}

/// Whether QEMU's log says the forward could not bind its port (another
/// process took it between [`free_port`] and QEMU's start).
pub fn port_taken(qemu_log: &str) -> bool {
    qemu_log.contains("Could not set up host forwarding rule")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tsc_rate_from_cpuinfo() {
        let info = "processor\t: 0\nmodel name\t: AMD EPYC\ncpu MHz\t\t: 2445.404\n";
        assert_eq!(parse_cpu_mhz(info), Some(2_445_404));
        assert_eq!(parse_cpu_mhz("cpu MHz\t: junk\n"), None);
        assert_eq!(parse_cpu_mhz("no such line\n"), None);
    }

    fn config() -> QemuConfig {
        QemuConfig {
            boot: L1Boot {
                kernel: "/c/vmlinux".into(),
                initramfs: "/c/initramfs.cpio".into(),
            },
            cpus: 2,
            memory_mib: 4096,
            boot_dir: "/var/lib/m,x/boot".into(),
            disk: "/var/lib/m,x/disk.img".into(),
            control: "/run/mvm/machine-control".into(),
            monitor: "/run/mvm/machine-monitor.sock".into(),
            port: 41234,
            shares: vec!["/home/u".into(), "/work/a,b".into()],
        }
    }

    fn value_after(args: &[OsString], flag: &str, prefix: &str) -> String {
        args.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].to_string_lossy().into_owned())
            .find(|v| v.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {flag} {prefix}... in {args:?}"))
    }

    #[test]
    fn command_line() {
        let a = args(&config());
        assert_eq!(
            value_after(&a, "-netdev", "user"),
            "user,id=net0,hostfwd=tcp:127.0.0.1:41234-:2375"
        );
        // Commas in paths are doubled, so they cannot add options.
        assert_eq!(
            value_after(&a, "-drive", "file="),
            "file=/var/lib/m,,x/disk.img,format=raw,if=none,id=disk,discard=unmap"
        );
        assert_eq!(
            value_after(&a, "-device", "virtio-blk"),
            "virtio-blk-pci,drive=disk,serial=mvm-machine"
        );
        assert!(value_after(&a, "-virtfs", "local,path=/var")
            .contains("path=/var/lib/m,,x/boot,mount_tag=out"));
        assert_eq!(
            value_after(&a, "-virtfs", "local,path=/home"),
            "local,path=/home/u,mount_tag=rw0,security_model=none,multidevs=remap"
        );
        assert!(value_after(&a, "-virtfs", "local,path=/work")
            .starts_with("local,path=/work/a,,b,mount_tag=rw1,"));
        assert!(
            value_after(&a, "-virtfs", "local,path=/,").contains("readonly=on"),
            "the host root stays read-only"
        );
        assert_eq!(
            value_after(&a, "-chardev", "pipe"),
            "pipe,id=control,path=/run/mvm/machine-control"
        );
        assert_eq!(
            value_after(&a, "-monitor", "unix:"),
            "unix:/run/mvm/machine-monitor.sock,server=on,wait=off"
        );
        assert_eq!(value_after(&a, "-m", ""), "4096");
        assert_eq!(value_after(&a, "-smp", ""), "2");
        for port in ["mvm.stdout", "mvm.stderr", "mvm.control"] {
            value_after(
                &a,
                "-device",
                &format!("virtserialport,chardev={}", &port[4..]),
            );
        }
        assert!(value_after(&a, "-append", "console=ttyS0").contains("rdinit=/init panic=-1"));
    }

    #[test]
    fn ports() {
        let p = free_port().unwrap();
        assert!(p > 0);
        // The port is really free: binding it works.
        TcpListener::bind(("127.0.0.1", p)).unwrap();
        assert!(port_taken(
            "qemu-system-x86_64: -netdev user,...: Could not set up host forwarding rule 'tcp:...'"
        ));
        assert!(!port_taken(
            "qemu-system-x86_64: warning: TCG doesn't support requested feature"
        ));
    }
}
