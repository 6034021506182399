//! The `mvm-vmm` command line.

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;

use crate::builder::{self, RunOptions};
use mvm_vmm_api::kvm;

use crate::config::{self, FlagConfig, HostLimits, VmConfig, VmConfigExt};
use crate::outcome::{self, StatusReport, EXIT_VMM_ERROR};

/// Run one microVM. Options override the values of --config FILE.
#[derive(Debug, Parser)]
#[command(name = "mvm-vmm", version, about, long_about = None)]
pub struct Cli {
    /// JSON configuration file (see vmm/README.md).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Guest kernel: an ELF vmlinux with a PVH entry point.
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// initramfs archive; repeat to load several back to back.
    #[arg(long, value_name = "PATH")]
    pub initrd: Vec<PathBuf>,
    /// Extra kernel arguments, appended to the defaults.
    #[arg(long, value_name = "ARGS", allow_hyphen_values = true)]
    pub cmdline: Option<String>,
    /// Number of vCPUs (default 1).
    #[arg(long, value_name = "N")]
    pub cpus: Option<u32>,
    /// Guest memory in MiB (default 128).
    #[arg(long, value_name = "MIB")]
    pub memory: Option<u64>,
    /// A virtio-blk disk: id=ID,path=PATH[,ro]; repeatable.
    #[arg(long = "drive", value_name = "SPEC")]
    pub drives: Vec<String>,
    /// Console output: stdout, off or file:PATH (default stdout).
    #[arg(long, value_name = "WHERE")]
    pub console: Option<String>,
    /// Write the outcome as JSON here when the VM stops.
    #[arg(long, value_name = "PATH")]
    pub status_file: Option<PathBuf>,
    /// No virtio-rng device.
    #[arg(long)]
    pub no_rng: bool,
    /// A virtio-vsock device: cid=CID,path=PATH (host clients connect to
    /// PATH; guest connections to host port P go to PATH_P).
    #[arg(long, value_name = "SPEC")]
    pub vsock: Option<String>,
    /// A virtio-fs share: tag=TAG,socket=PATH[,queue_size=N] (PATH is the
    /// vhost-user socket of a running backend such as virtiofsd); repeatable.
    #[arg(long = "fs", value_name = "SPEC")]
    pub fs: Vec<String>,
    /// A virtio-net device on a host TAP:
    /// id=ID,tap=NAME|fd=N[,mac=XX:XX:XX:XX:XX:XX][,mtu=N]; repeatable
    /// (rate limits: in the configuration file).
    #[arg(long = "net", value_name = "SPEC")]
    pub nets: Vec<String>,
    /// Run without the seccomp filters of the VMM's threads (debugging
    /// only: a VMM bug may then make any system call the jail allows).
    #[arg(long)]
    pub no_seccomp: bool,
    /// Boot even though /dev/kvm is PVM (experiments only).
    #[arg(long)]
    pub force_pvm: bool,
    /// Print this host's KVM mode (hardware, pvm or none) and exit:
    /// 0 if it can boot guests, 1 otherwise.
    #[arg(long)]
    pub check_kvm: bool,
}

impl Cli {
    fn flags(&self) -> Result<FlagConfig, config::ConfigError> {
        Ok(FlagConfig {
            kernel: self.kernel.clone(),
            initrd: self.initrd.clone(),
            cmdline: self.cmdline.clone(),
            vcpus: self.cpus,
            memory_mib: self.memory,
            drives: self
                .drives
                .iter()
                .map(|d| config::parse_drive_flag(d))
                .collect::<Result<_, _>>()?,
            console: self
                .console
                .as_deref()
                .map(config::parse_console_flag)
                .transpose()?,
            status_file: self.status_file.clone(),
            no_rng: self.no_rng,
            vsock: self
                .vsock
                .as_deref()
                .map(config::parse_vsock_flag)
                .transpose()?,
            fs: self
                .fs
                .iter()
                .map(|f| config::parse_fs_flag(f))
                .collect::<Result<_, _>>()?,
            net: self
                .nets
                .iter()
                .map(|n| config::parse_net_flag(n))
                .collect::<Result<_, _>>()?,
            no_seccomp: self.no_seccomp,
        })
    }

    fn vm_config(&self) -> Result<VmConfig, config::ConfigError> {
        let file = self.config.as_deref().map(config::load).transpose()?;
        config::merge(file, self.flags()?)
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MVM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(crate::logfile::GlobalLog)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .without_time()
        .compact()
        .try_init();
}

/// Run the VMM with `args`; returns the process exit status.
pub fn main_with_args<I, T>(args: I, start: Instant) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            // --help and --version are not errors; usage errors exit 1
            // (2 means "the guest crashed" for this program).
            let _ = e.print();
            return if e.use_stderr() { EXIT_VMM_ERROR } else { 0 };
        }
    };
    init_logging();

    if cli.check_kvm {
        let mode = kvm::detect();
        println!("{}", mode.short());
        eprintln!("{mode}");
        return i32::from(!matches!(mode, kvm::KvmMode::Hardware { .. }));
    }

    let cfg = match cli.vm_config() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("{e}");
            return EXIT_VMM_ERROR;
        }
    };
    if let Some(path) = &cfg.log_file {
        match crate::logfile::RotatingFile::open(path, cfg.log_max_bytes) {
            Ok(f) => crate::logfile::global().set_file(f),
            Err(e) => tracing::warn!(
                "cannot open the log file {}: {e}; logging to stderr",
                path.display()
            ),
        }
    }
    let entry = match cfg.validate(&HostLimits::probe()) {
        Ok(entry) => entry,
        Err(e) => {
            tracing::error!("{e}");
            write_status(&cfg, &StatusReport::error(e.to_string()));
            return EXIT_VMM_ERROR;
        }
    };

    let opts = RunOptions {
        force_pvm: cli.force_pvm,
        start,
    };
    let out = match builder::run(&cfg, entry, opts) {
        Ok(result) => outcome::decide(&result),
        Err(e) => {
            tracing::error!("{e}");
            write_status(&cfg, &StatusReport::error(e.to_string()));
            return EXIT_VMM_ERROR;
        }
    };
    let r = &out.report;
    match out.exit_code {
        0 => tracing::info!("{}", r.message),
        _ => tracing::error!("{}", r.message),
    }
    write_status(&cfg, r);
    out.exit_code
}

/// Write the status file if one is configured; failing to is only logged
/// (the exit status still tells the outcome).
fn write_status(cfg: &VmConfig, report: &StatusReport) {
    if let Some(path) = &cfg.status_file {
        if let Err(e) = report.write(path) {
            tracing::error!("cannot write the status file {}: {e}", path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("mvm-vmm").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn flags_map_to_the_config() {
        let c = parse(&[
            "--kernel",
            "/k",
            "--initrd",
            "/a",
            "--initrd",
            "/b",
            "--cmdline",
            "-x y",
            "--cpus",
            "2",
            "--memory",
            "256",
            "--drive",
            "id=rootfs,path=/r,ro",
            "--console",
            "file:/c",
            "--no-rng",
            "--status-file",
            "/s",
            "--vsock",
            "cid=5,path=/v.sock",
            "--fs",
            "tag=a,socket=/a.sock",
            "--fs",
            "tag=b,socket=/b.sock,queue_size=64",
            "--net",
            "id=eth0,tap=tap0,mac=02:00:00:00:00:02",
            "--net",
            "id=eth1,fd=4,mtu=1400",
        ]);
        let v = c.vm_config().unwrap();
        assert_eq!(v.kernel, PathBuf::from("/k"));
        assert_eq!(v.initrd, vec![PathBuf::from("/a"), PathBuf::from("/b")]);
        assert_eq!((v.vcpus, v.memory_mib, v.rng), (2, 256, false));
        assert_eq!(v.cmdline, "-x y");
        assert!(v.drives[0].read_only);
        assert_eq!(v.console, config::Console::File("/c".into()));
        assert_eq!(v.status_file, Some(PathBuf::from("/s")));
        assert_eq!(v.net.len(), 2);
        assert_eq!(v.net[0].tap, config::TapConfig::Name("tap0".into()));
        assert_eq!(v.net[1].mtu, 1400);
        let vs = v.vsock.unwrap();
        assert_eq!((vs.guest_cid, vs.uds_path), (5, PathBuf::from("/v.sock")));
        assert_eq!(v.fs.len(), 2);
        assert_eq!(v.fs[1].tag, "b");
        assert_eq!(v.fs[1].queue_size, Some(64));
    }

    #[test]
    fn validation_errors_are_written_to_the_status_file() {
        let dir = tempfile::tempdir().unwrap();
        let status = dir.path().join("status.json");
        let code = main_with_args(
            [
                "mvm-vmm",
                "--kernel",
                "/no/such/vmlinux",
                "--status-file",
                status.to_str().unwrap(),
            ],
            Instant::now(),
        );
        assert_eq!(code, 1);
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&status).unwrap()).unwrap();
        assert_eq!(v["guest"], "error");
        assert!(v["message"].as_str().unwrap().contains("/no/such/vmlinux"));
    }

    #[test]
    fn usage_errors_exit_one_and_help_zero() {
        let start = Instant::now();
        assert_eq!(main_with_args(["mvm-vmm", "--cpus", "banana"], start), 1);
        assert_eq!(main_with_args(["mvm-vmm", "--bogus"], start), 1);
        assert_eq!(main_with_args(["mvm-vmm", "--help"], start), 0);
        assert_eq!(
            main_with_args(["mvm-vmm", "--drive", "nonsense", "--kernel", "/k"], start),
            1
        );
        assert_eq!(main_with_args(["mvm-vmm"], start), 1, "no kernel");
        assert_eq!(
            main_with_args(["mvm-vmm", "--config", "/no/such.json"], start),
            1
        );
    }
}
