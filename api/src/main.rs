//! `mvmd`: see the library docs and docs/api.md.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use mvm_runtime::{ArtifactOverrides, Defaults, Layout, LogLimits};

/// The mvm daemon: runs sandboxes (microVMs) and serves the REST API.
#[derive(Debug, Parser)]
#[command(name = "mvmd", version)]
struct Args {
    /// State root (database, images, disks, logs).
    #[arg(long, env = "MVM_ROOT", default_value = mvm_runtime::paths::DEFAULT_ROOT)]
    root: PathBuf,
    /// Runtime dir (sockets).
    #[arg(long, env = "MVM_RUN_DIR", default_value = mvm_runtime::paths::DEFAULT_RUN_DIR)]
    run_dir: PathBuf,
    /// API Unix socket (default: <run-dir>/mvmd.sock).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Group whose members may use the Unix socket (mode 0660); default:
    /// root's group only.
    #[arg(long, value_name = "GROUP")]
    group: Option<String>,
    /// Also serve the API on TCP at this address; every request then needs
    /// the bearer token.
    #[arg(long, value_name = "ADDR")]
    tcp: Option<SocketAddr>,
    /// Bearer token file for TCP (generated if missing; default <root>/token).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// TCP speaks TLS with this certificate (PEM; with --tlskey).
    #[arg(long, value_name = "FILE", requires = "tlskey")]
    tlscert: Option<PathBuf>,
    /// The private key of --tlscert (PEM).
    #[arg(long, value_name = "FILE", requires = "tlscert")]
    tlskey: Option<PathBuf>,
    /// Only clients with a certificate signed by --tlscacert get through.
    #[arg(long, requires = "tlscacert")]
    tlsverify: bool,
    /// The CA that signs client certificates (with --tlsverify).
    #[arg(long, value_name = "FILE", requires = "tlsverify")]
    tlscacert: Option<PathBuf>,
    /// Guest kernel (default: $PREFIX/lib/mvm/vmlinux, then the kernel cache).
    #[arg(long, env = "MVM_KERNEL")]
    kernel: Option<PathBuf>,
    /// Static guest init (default: $PREFIX/lib/mvm/mvm-init).
    #[arg(long, env = "MVM_INIT")]
    init: Option<PathBuf>,
    /// mvm-vmm binary (default: next to mvmd).
    #[arg(long, env = "MVM_VMM")]
    vmm: Option<PathBuf>,
    /// Default guest memory in MiB.
    #[arg(long, default_value_t = 256)]
    default_memory: u64,
    /// Default vCPUs.
    #[arg(long, default_value_t = 1)]
    default_vcpus: u32,
    /// Scratch disk size in MiB (sparse).
    #[arg(long, default_value_t = 10 * 1024)]
    scratch_size: u64,
    /// Workload log file size before rotation, in bytes.
    #[arg(long, default_value_t = 10 << 20)]
    log_max_size: u64,
    /// Workload log files kept.
    #[arg(long, default_value_t = 3)]
    log_max_files: u32,
    /// Serial console log cap in bytes (rotated live by the VMM; one
    /// previous part is kept).
    #[arg(long, default_value_t = 10 << 20)]
    console_max: u64,
    /// VMM log cap in bytes (rotated likewise).
    #[arg(long, default_value_t = 10 << 20)]
    vmm_log_max: u64,
    /// Log filter (tracing's env-filter syntax), e.g. `info`, `mvmd=debug`.
    #[arg(long, env = "MVMD_LOG", default_value = "info")]
    log: String,
    /// `MVM_LOG` for the VMMs.
    #[arg(long)]
    vmm_log: Option<String>,
    /// Run VMMs unconfined, as root, without mvm-jailer (debugging only:
    /// a VMM bug is then host root). `mvctl system info` shows it.
    #[arg(long)]
    no_jail: bool,
    /// Run VMMs without their seccomp filters (debugging only: a VMM bug
    /// may then make any system call its jail allows). `mvctl system
    /// info` shows it.
    #[arg(long)]
    no_seccomp: bool,
    /// The uids (and gids) jailed VMMs run as, one per sandbox:
    /// START-END or START:COUNT.
    #[arg(long, value_name = "RANGE", default_value = "100000-165535")]
    jail_uid_range: mvm_runtime::UidRange,
    /// mvm-jailer binary (default: next to mvm-vmm).
    #[arg(long, env = "MVM_JAILER")]
    jailer: Option<PathBuf>,
    /// Report "machine" mode (set when running inside the emulated KVM host).
    #[arg(long, hide = true)]
    machine: bool,
    /// Machine mode: a host directory shared writable into the machine at
    /// the same path (repeatable); bind mounts must be inside one.
    #[arg(long, hide = true, value_name = "DIR", requires = "machine")]
    machine_share: Vec<PathBuf>,
    /// No host networking: sandboxes get no network interface but `lo`
    /// (for hosts where mvmd must not make bridges and nftables rules, and
    /// for a second mvmd on a host: the host's networking has one owner).
    #[arg(long, env = "MVM_NO_NETWORK", value_parser = clap::builder::BoolishValueParser::new())]
    no_network: bool,
}

fn main() {
    let a = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&a.log).unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    if a.default_memory < mvm_runtime::spec::MIN_MEMORY_MIB
        || a.default_vcpus == 0
        || a.log_max_files == 0
    {
        eprintln!("mvmd: error: --default-memory must be at least 32, --default-vcpus and --log-max-files at least 1");
        std::process::exit(2);
    }
    if (a.tlscert.is_some() || a.tlsverify) && a.tcp.is_none() {
        eprintln!("mvmd: error: --tlscert, --tlskey and --tlsverify secure the TCP listener: add --tcp ADDR");
        std::process::exit(2);
    }
    if a.tlsverify && a.tlscert.is_none() {
        eprintln!("mvmd: error: --tlsverify needs the server's --tlscert and --tlskey");
        std::process::exit(2);
    }
    let cfg = mvmd::Config {
        layout: Layout::new(a.root, a.run_dir),
        socket: a.socket,
        tcp: a.tcp,
        token_file: a.token_file,
        artifacts: ArtifactOverrides {
            kernel: a.kernel,
            init: a.init,
            vmm: a.vmm,
        },
        defaults: Defaults {
            vcpus: a.default_vcpus,
            memory_mib: a.default_memory,
            scratch_mib: a.scratch_size,
            // The workload's output, stdin and terminal go through the
            // guest agent (stdout and stderr kept apart, attach, -i, -t).
            agent: true,
            ..Defaults::default()
        },
        log_limits: LogLimits {
            max_size: a.log_max_size,
            max_files: a.log_max_files,
        },
        console_max: a.console_max,
        vmm_log_max: a.vmm_log_max,
        vmm_log_filter: a.vmm_log,
        machine: a.machine,
        machine_shares: a.machine_share,
        jail: (!a.no_jail).then_some(mvmd::JailOptions {
            uids: a.jail_uid_range,
            jailer: a.jailer,
        }),
        no_network: a.no_network,
        seccomp: !a.no_seccomp,
        socket_group: a.group,
        tls: match (a.tlscert, a.tlskey) {
            (Some(cert), Some(key)) => Some(mvmd::tls::TlsFiles {
                cert,
                key,
                client_ca: a.tlscacert,
            }),
            _ => None,
        },
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mvmd: error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(mvmd::run(cfg)) {
        eprintln!("mvmd: error: {e:#}");
        std::process::exit(1);
    }
}
