//! Every command and flag, with Docker's names and short forms.

use std::path::PathBuf;

use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};
use clap_complete::Shell;
use mvm_api::images::Platform;

use crate::flags;

/// mvctl: run container images as microVM sandboxes.
#[derive(Debug, Parser)]
#[command(
    name = "mvctl",
    version,
    about = "Run container images as microVM sandboxes (a client of mvmd)",
    long_about = "Run container images as microVM sandboxes.\n\n\
        mvctl talks to mvmd at unix:///run/mvm/mvmd.sock, starting it in the background when \
        nothing answers there (on hosts without hardware KVM, inside the mvm machine). \
        -H/--host or MVM_HOST point elsewhere.\n\n\
        Exit status: the workload's for run and start -a; 125 when mvctl or mvmd fails.",
    max_term_width = 100
)]
pub struct Cli {
    /// Daemon address: unix:///path/to.sock or tcp://host:port [env: MVM_HOST]
    #[arg(short = 'H', long = "host", global = true, value_name = "ADDRESS")]
    pub host: Option<String>,
    /// File holding the bearer token for tcp:// addresses [default: $MVM_TOKEN]
    #[arg(long, global = true, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Use TLS to a tcp:// address (the server's certificate is not checked)
    #[arg(long, global = true)]
    pub tls: bool,
    /// Use TLS and check the server's certificate [env: MVM_TLS_VERIFY]
    #[arg(long, global = true)]
    pub tlsverify: bool,
    /// CA of the server's certificate [default: $MVM_CERT_PATH/ca.pem]
    #[arg(long, global = true, value_name = "FILE")]
    pub tlscacert: Option<PathBuf>,
    /// Client certificate [default: $MVM_CERT_PATH/cert.pem]
    #[arg(long, global = true, value_name = "FILE")]
    pub tlscert: Option<PathBuf>,
    /// Client key [default: $MVM_CERT_PATH/key.pem]
    #[arg(long, global = true, value_name = "FILE")]
    pub tlskey: Option<PathBuf>,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create and start a sandbox; stream its output and exit with its status
    #[command(disable_help_flag = true)]
    Run(RunArgs),
    /// Create a sandbox without starting it; print its id
    #[command(disable_help_flag = true)]
    Create(CreateArgs),
    /// Start sandboxes
    Start(StartArgs),
    /// Stop sandboxes (stop signal, then power-off after the timeout)
    Stop(StopArgs),
    /// Send a signal to sandboxes' workloads (SIGKILL ends the microVM)
    Kill(KillArgs),
    /// Restart sandboxes
    Restart(StopArgs),
    /// Pause sandboxes: freeze their microVMs (memory kept, nothing runs)
    Pause(IdsArgs),
    /// Unpause paused sandboxes
    Unpause(IdsArgs),
    /// Remove sandboxes
    Rm(RmArgs),
    /// List sandboxes
    #[command(alias = "ls")]
    Ps(PsArgs),
    /// Show a sandbox's output
    Logs(LogsArgs),
    /// Wait for sandboxes to stop; print their exit codes
    Wait(IdsArgs),
    /// Show sandboxes (or images) in detail, as JSON
    Inspect(InspectArgs),
    /// System-wide information and clean-up
    System {
        /// The subcommand.
        #[command(subcommand)]
        command: SystemCommand,
    },
    /// Same as `system info`
    Info(InfoArgs),
    /// Client and daemon versions
    Version(VersionArgs),
    /// Download an image from a registry
    Pull(PullArgs),
    /// Upload an image to a registry
    Push(PushArgs),
    /// List images
    Images(ImagesArgs),
    /// Manage images
    Image {
        /// The subcommand.
        #[command(subcommand)]
        command: ImageCommand,
    },
    /// Give an image another name
    Tag(TagArgs),
    /// Remove images
    Rmi(RmiArgs),
    /// Load images from a docker-archive or OCI tarball
    Load(LoadArgs),
    /// Save images to a tarball
    Save(SaveArgs),
    /// Make an image from a root filesystem tarball
    Import(ImportArgs),
    /// Run a command in a running sandbox
    Exec(crate::commands::exec::ExecArgs),
    /// Attach to a running sandbox's main process (output, stdin, terminal)
    Attach(crate::commands::attach::AttachArgs),
    /// List the processes running in a sandbox
    Top(crate::commands::attach::TopArgs),
    /// Live resource usage of sandboxes
    Stats(crate::commands::stats::StatsArgs),
    /// Copy files between a sandbox and the local filesystem
    Cp(crate::commands::cp::CpArgs),
    /// Build an image from a Dockerfile (RUN steps run in microVMs)
    Build(crate::commands::build::BuildArgs),
    /// Store credentials for a registry
    Login(LoginArgs),
    /// Forget the credentials for a registry
    Logout(LogoutArgs),
    /// Manage checkpoints of sandboxes (a running guest saved whole:
    /// memory, CPU, devices and scratch disk)
    Checkpoint {
        /// The subcommand.
        #[command(subcommand)]
        command: CheckpointCommand,
    },
    /// Manage volumes
    Volume {
        /// The subcommand.
        #[command(subcommand)]
        command: VolumeCommand,
    },
    /// Manage networks
    Network {
        /// The subcommand.
        #[command(subcommand)]
        command: NetworkCommand,
    },
    /// List a sandbox's published ports
    Port(PortArgs),
    /// Manage the mvm machine (the emulated KVM host used without hardware KVM)
    Machine {
        /// The subcommand.
        #[command(subcommand)]
        command: MachineCommand,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    Completion {
        /// The shell.
        shell: Shell,
    },
}

/// How a sandbox is made (shared by `run` and `create`).
#[derive(Debug, Clone, Args)]
pub struct CreateArgs {
    /// Print help (`-h` is --hostname, as in Docker)
    #[arg(long, action = ArgAction::Help)]
    pub help: Option<bool>,
    /// Name of the sandbox (unique)
    #[arg(long, value_parser = flags::parse_name)]
    pub name: Option<String>,
    /// Set an environment variable (KEY=VALUE, or KEY to pass the host's value)
    #[arg(short = 'e', long = "env", value_name = "KEY[=VALUE]")]
    pub env: Vec<String>,
    /// Read environment variables from a file (KEY=VALUE lines, # comments)
    #[arg(long = "env-file", value_name = "FILE")]
    pub env_file: Vec<PathBuf>,
    /// Working directory inside the sandbox (absolute)
    #[arg(short = 'w', long = "workdir", value_parser = flags::parse_workdir)]
    pub workdir: Option<String>,
    /// User to run as: name, uid, name:group or uid:gid
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// Replace the image's ENTRYPOINT ("" clears it)
    #[arg(long, allow_hyphen_values = true)]
    pub entrypoint: Option<String>,
    /// CPU quota in CPUs (decimal, e.g. 1.5); vCPUs are the quota rounded up
    #[arg(long, value_parser = flags::parse_cpus)]
    pub cpus: Option<f64>,
    /// Guest memory: a number with a unit b, k, m, g (e.g. 512m, 1g); bytes without one
    #[arg(short = 'm', long, value_parser = flags::parse_memory_mib, value_name = "SIZE")]
    pub memory: Option<u64>,
    /// Guest hostname
    #[arg(short = 'h', long, value_parser = flags::parse_hostname)]
    pub hostname: Option<String>,
    /// Restart policy: no, on-failure[:max-retries], always, unless-stopped
    #[arg(long, value_parser = flags::parse_restart, value_name = "POLICY")]
    pub restart: Option<mvm_api::sandbox::RestartPolicy>,
    /// Set a label (key=value)
    #[arg(short = 'l', long = "label", value_name = "KEY=VALUE")]
    pub label: Vec<String>,
    /// Remove the sandbox (and its anonymous volumes) when it exits
    #[arg(long)]
    pub rm: bool,
    /// Mount a volume or host directory: NAME:/PATH[:ro], /HOST/DIR:/PATH[:ro], /PATH (anonymous)
    #[arg(short = 'v', long = "volume", value_parser = crate::mounts::parse_volume_flag, value_name = "SRC:DST[:OPTS]")]
    pub volume: Vec<mvm_api::volume::MountRequest>,
    /// Mount: type=volume|bind|tmpfs,source=,target=[,readonly][,tmpfs-size=][,tmpfs-mode=]
    #[arg(long = "mount", value_parser = crate::mounts::parse_mount_flag, value_name = "SPEC")]
    pub mount: Vec<mvm_api::volume::MountRequest>,
    /// Mount a tmpfs: /PATH[:size=64m,mode=1777,exec,...] (noexec,nosuid,nodev by default)
    #[arg(long = "tmpfs", value_parser = crate::mounts::parse_tmpfs_flag, value_name = "PATH[:OPTS]")]
    pub tmpfs: Vec<mvm_api::volume::MountRequest>,
    /// Mount every volume and bind mount of a sandbox at the same paths: SANDBOX[:ro|:rw]
    #[arg(long = "volumes-from", value_parser = crate::mounts::parse_volumes_from_flag, value_name = "SANDBOX[:MODE]")]
    pub volumes_from: Vec<String>,
    /// Mount the root filesystem read-only (writes go to volumes and tmpfs only)
    #[arg(long)]
    pub read_only: bool,
    /// Keep stdin open (needs the guest agent)
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Allocate a terminal (needs the guest agent)
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Signal that `stop` sends (default: the image's STOPSIGNAL or SIGTERM)
    #[arg(long, value_parser = flags::parse_signal, value_name = "SIGNAL")]
    pub stop_signal: Option<String>,
    /// Seconds `stop` waits before powering off
    #[arg(long, value_name = "SECONDS")]
    pub stop_timeout: Option<u64>,
    /// Pull the image: missing (when not here), always (first), never
    #[arg(long, value_enum, default_value_t = PullPolicy::Missing)]
    pub pull: PullPolicy,
    /// Platform to pull from a multi-platform image: linux/amd64 or linux/amd64/v1..v4
    #[arg(long, value_parser = parse_platform, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<Platform>,
    /// With a pull: allow plain HTTP (loopback registries only)
    #[arg(long)]
    pub insecure: bool,
    /// Publish a port: [IP:][HOST_PORT:]PORT[/tcp|udp], ranges allowed (HOST_PORT left out: a free one)
    #[arg(short = 'p', long = "publish", value_name = "[IP:][HOST:]PORT[/PROTO]")]
    pub publish: Vec<String>,
    /// Publish every port the image EXPOSEs on a free host port
    #[arg(short = 'P', long = "publish-all")]
    pub publish_all: bool,
    /// Network to join: bridge (default), none (loopback only) or a network made with `network create`
    #[arg(long, value_name = "NETWORK")]
    pub network: Option<String>,
    /// Another name for the sandbox on a user network
    #[arg(long = "network-alias", value_name = "NAME")]
    pub network_alias: Vec<String>,
    /// IPv4 address on a user network
    #[arg(long, value_name = "IP")]
    pub ip: Option<String>,
    /// MAC address of the sandbox's interface
    #[arg(long = "mac-address", value_name = "MAC")]
    pub mac_address: Option<String>,
    /// DNS server for the sandbox (replaces the network's)
    #[arg(long, value_name = "IP")]
    pub dns: Vec<String>,
    /// Add a line to /etc/hosts: NAME:IP
    #[arg(long = "add-host", value_name = "NAME:IP")]
    pub add_host: Vec<String>,
    /// Image to run
    #[arg(value_name = "IMAGE")]
    pub image: String,
    /// Command and arguments (replace the image's CMD)
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "COMMAND"
    )]
    pub command: Vec<String>,
}

impl CreateArgs {
    /// The image.
    pub fn image(&self) -> &str {
        &self.image
    }

    /// The command.
    pub fn command(&self) -> &[String] {
        &self.command
    }
}

/// `--pull`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PullPolicy {
    /// Pull when the image is not present.
    Missing,
    /// Always pull.
    Always,
    /// Never pull.
    Never,
}

/// `mvctl run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Run in the background and print the sandbox id
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Create options.
    #[command(flatten)]
    pub create: CreateArgs,
}

/// `mvctl start`.
#[derive(Debug, Clone, Args)]
pub struct StartArgs {
    /// Stream the output and exit with the workload's status (one sandbox)
    #[arg(short = 'a', long)]
    pub attach: bool,
    /// Resume the guest from this checkpoint instead of booting it
    #[arg(long, value_name = "NAME")]
    pub checkpoint: Option<String>,
    /// With -a: send stdin to the workload (created with -i)
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Sandboxes (id, id prefix or name)
    #[arg(required = true, value_name = "SANDBOX")]
    pub ids: Vec<String>,
}

/// `mvctl stop` and `mvctl restart`.
#[derive(Debug, Clone, Args)]
pub struct StopArgs {
    /// Seconds to wait before powering off (default: the sandbox's stop timeout)
    #[arg(
        short = 't',
        long = "timeout",
        visible_alias = "time",
        value_name = "SECONDS"
    )]
    pub timeout: Option<u64>,
    /// Sandboxes
    #[arg(required = true, value_name = "SANDBOX")]
    pub ids: Vec<String>,
}

/// `mvctl kill`.
#[derive(Debug, Clone, Args)]
pub struct KillArgs {
    /// Signal to send
    #[arg(short = 's', long, default_value = "KILL", value_parser = flags::parse_signal)]
    pub signal: String,
    /// Sandboxes
    #[arg(required = true, value_name = "SANDBOX")]
    pub ids: Vec<String>,
}

/// `mvctl rm`.
#[derive(Debug, Clone, Args)]
pub struct RmArgs {
    /// Remove running sandboxes too (they are killed)
    #[arg(short = 'f', long)]
    pub force: bool,
    /// Remove the sandboxes' anonymous volumes too
    #[arg(short = 'v', long)]
    pub volumes: bool,
    /// Sandboxes
    #[arg(required = true, value_name = "SANDBOX")]
    pub ids: Vec<String>,
}

/// Output formats of listings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ListFormat {
    /// Aligned columns.
    Table,
    /// One JSON object per line.
    Json,
}

/// `mvctl ps`.
#[derive(Debug, Clone, Args)]
pub struct PsArgs {
    /// Show all sandboxes (default: running ones)
    #[arg(short = 'a', long)]
    pub all: bool,
    /// Only ids
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Output format
    #[arg(long, value_enum, default_value_t = ListFormat::Table)]
    pub format: ListFormat,
    /// Do not truncate ids and commands
    #[arg(long)]
    pub no_trunc: bool,
    /// Filter: label=KEY or label=KEY=VALUE
    #[arg(short = 'f', long = "filter", value_name = "FILTER")]
    pub filter: Vec<String>,
}

/// `mvctl logs`.
#[derive(Debug, Clone, Args)]
pub struct LogsArgs {
    /// Follow new output until the sandbox stops
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Only the last N lines, or "all"
    #[arg(short = 'n', long, value_parser = flags::parse_tail, value_name = "N")]
    pub tail: Option<flags::Tail>,
    /// Only output since a time (RFC 3339, Unix timestamp) or a duration ago (10m, 1h)
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Only output before a time or a duration ago
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// Prefix each line with its RFC 3339 time
    #[arg(short = 't', long)]
    pub timestamps: bool,
    /// Sandbox
    #[arg(value_name = "SANDBOX")]
    pub id: String,
}

/// Commands that take a list of sandboxes.
#[derive(Debug, Clone, Args)]
pub struct IdsArgs {
    /// Sandboxes
    #[arg(required = true, value_name = "SANDBOX")]
    pub ids: Vec<String>,
}

/// What `inspect` looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InspectType {
    /// Sandboxes.
    Sandbox,
    /// Images.
    Image,
}

/// `mvctl inspect`.
#[derive(Debug, Clone, Args)]
pub struct InspectArgs {
    /// Only this kind of object (default: sandboxes, then images)
    #[arg(long = "type", value_enum)]
    pub kind: Option<InspectType>,
    /// Sandboxes or images
    #[arg(required = true, value_name = "NAME|ID")]
    pub ids: Vec<String>,
}

/// `mvctl system ...`.
#[derive(Debug, Subcommand)]
pub enum SystemCommand {
    /// KVM mode, kernel, versions, paths
    Info(InfoArgs),
    /// Remove stopped sandboxes, unused images and disks
    Prune(PruneArgs),
    /// Disk use of images, sandboxes and volumes
    Df(DfArgs),
}

/// `mvctl system df`.
#[derive(Debug, Clone, Args)]
pub struct DfArgs {
    /// Each image, sandbox and volume too
    #[arg(short = 'v', long)]
    pub verbose: bool,
    /// Output format
    #[arg(long, value_enum, default_value_t = ListFormat::Table)]
    pub format: ListFormat,
}

/// `mvctl system info`.
#[derive(Debug, Clone, Args)]
pub struct InfoArgs {
    /// Output format
    #[arg(long, value_enum, default_value_t = ListFormat::Table)]
    pub format: ListFormat,
}

/// `mvctl version`.
#[derive(Debug, Clone, Args)]
pub struct VersionArgs {
    /// Output format
    #[arg(long, value_enum, default_value_t = ListFormat::Table)]
    pub format: ListFormat,
}

/// `mvctl system prune` and `mvctl image prune`.
#[derive(Debug, Clone, Args)]
pub struct PruneArgs {
    /// Do not ask for confirmation
    #[arg(short = 'f', long)]
    pub force: bool,
    /// Also remove tagged images that no sandbox uses (image prune)
    #[arg(short = 'a', long)]
    pub all: bool,
}

/// `--platform`: checked before any request.
fn parse_platform(s: &str) -> Result<Platform, String> {
    s.parse()
}

/// `mvctl pull`.
#[derive(Debug, Clone, Args)]
pub struct PullArgs {
    /// Allow plain HTTP (loopback registries only)
    #[arg(long)]
    pub insecure: bool,
    /// Platform to pull from a multi-platform image: linux/amd64 or linux/amd64/v1..v4
    #[arg(long, value_parser = parse_platform, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<Platform>,
    /// No progress output
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Image reference
    #[arg(value_name = "NAME[:TAG|@DIGEST]")]
    pub reference: String,
}

/// `mvctl push`.
#[derive(Debug, Clone, Args)]
pub struct PushArgs {
    /// Allow plain HTTP (loopback registries only)
    #[arg(long)]
    pub insecure: bool,
    /// No progress output
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Image reference
    #[arg(value_name = "NAME[:TAG]")]
    pub reference: String,
}

/// `mvctl images` and `mvctl image ls`.
#[derive(Debug, Clone, Args)]
pub struct ImagesArgs {
    /// Only image ids
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Output format
    #[arg(long, value_enum, default_value_t = ListFormat::Table)]
    pub format: ListFormat,
    /// Only images of this repository (e.g. busybox)
    #[arg(value_name = "REPOSITORY")]
    pub repository: Option<String>,
}

/// `mvctl tag`.
#[derive(Debug, Clone, Args)]
pub struct TagArgs {
    /// Existing image
    #[arg(value_name = "SOURCE")]
    pub source: String,
    /// New name
    #[arg(value_name = "TARGET")]
    pub target: String,
}

/// `mvctl rmi` and `mvctl image rm`.
#[derive(Debug, Clone, Args)]
pub struct RmiArgs {
    /// Remove even when sandboxes use the image
    #[arg(short = 'f', long)]
    pub force: bool,
    /// Images
    #[arg(required = true, value_name = "IMAGE")]
    pub references: Vec<String>,
}

/// `mvctl load`.
#[derive(Debug, Clone, Args)]
pub struct LoadArgs {
    /// Read from this tarball instead of stdin
    #[arg(short = 'i', long = "input", value_name = "FILE")]
    pub input: Option<PathBuf>,
    /// No progress output
    #[arg(short = 'q', long)]
    pub quiet: bool,
}

/// `--format` of `save`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ArchiveFormat {
    /// docker-archive (`docker save`), loadable by `docker load`.
    Docker,
    /// OCI image layout.
    Oci,
}

/// `mvctl save`.
#[derive(Debug, Clone, Args)]
pub struct SaveArgs {
    /// Write to this file instead of stdout
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Archive format
    #[arg(long, value_enum, default_value_t = ArchiveFormat::Docker)]
    pub format: ArchiveFormat,
    /// Images
    #[arg(required = true, value_name = "IMAGE")]
    pub references: Vec<String>,
}

/// `mvctl import`.
#[derive(Debug, Clone, Args)]
pub struct ImportArgs {
    /// Root filesystem tarball ("-" for stdin)
    #[arg(value_name = "FILE|-")]
    pub file: String,
    /// Name for the image
    #[arg(value_name = "NAME[:TAG]")]
    pub reference: Option<String>,
}

/// `mvctl login`.
#[derive(Debug, Clone, Args)]
pub struct LoginArgs {
    /// User name (asked when absent)
    #[arg(short = 'u', long)]
    pub username: Option<String>,
    /// Password (insecure: visible in the process list; prefer --password-stdin)
    #[arg(short = 'p', long)]
    pub password: Option<String>,
    /// Read the password from stdin
    #[arg(long)]
    pub password_stdin: bool,
    /// Plain HTTP (loopback registries only)
    #[arg(long)]
    pub insecure: bool,
    /// Registry (default: Docker Hub)
    #[arg(value_name = "SERVER")]
    pub server: Option<String>,
}

/// `mvctl logout`.
#[derive(Debug, Clone, Args)]
pub struct LogoutArgs {
    /// Registry (default: Docker Hub)
    #[arg(value_name = "SERVER")]
    pub server: Option<String>,
}

/// `mvctl image ...`.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// List images
    #[command(alias = "list")]
    Ls(ImagesArgs),
    /// Show images in detail, as JSON
    Inspect {
        /// Images
        #[arg(required = true, value_name = "IMAGE")]
        references: Vec<String>,
    },
    /// Remove images
    #[command(alias = "remove")]
    Rm(RmiArgs),
    /// Give an image another name
    Tag(TagArgs),
    /// Remove unused images
    Prune(PruneArgs),
    /// Download an image
    Pull(PullArgs),
    /// Upload an image
    Push(PushArgs),
    /// Load images from a tarball
    Load(LoadArgs),
    /// Save images to a tarball
    Save(SaveArgs),
    /// Make an image from a root filesystem tarball
    Import(ImportArgs),
}

/// `mvctl machine ...` (handled by the machine module).
#[derive(Debug, Clone, Subcommand)]
pub enum MachineCommand {
    /// Start the machine (and mvmd inside it) unless it runs
    Start {
        /// vCPUs of the machine
        #[arg(long)]
        cpus: Option<u32>,
        /// Memory of the machine (e.g. 4g)
        #[arg(long, value_parser = flags::parse_size_mib, value_name = "SIZE")]
        memory: Option<u64>,
    },
    /// Stop the machine and every sandbox in it
    Stop,
    /// Whether the machine runs, and its endpoint
    Status,
    /// Watch the machine and restart it when L1 stalls (started by
    /// `machine start`; not for direct use)
    #[command(hide = true)]
    Watch,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("mvctl").chain(args.iter().copied()))
    }

    #[test]
    fn definitions_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_stops_flag_parsing_at_the_image() {
        let cli = parse(&[
            "run", "--rm", "-e", "A=1", "busybox", "sh", "-c", "exit 3", "-e", "--rm",
        ])
        .unwrap();
        let Command::Run(r) = cli.command else {
            panic!()
        };
        assert_eq!(r.create.command(), ["sh", "-c", "exit 3", "-e", "--rm"]);
        // A flag right after the image belongs to the command too.
        let cli = parse(&[
            "run", "--rm", "-e", "A=1", "busybox", "-c", "exit 3", "-e", "--rm",
        ])
        .unwrap();
        let Command::Run(r) = cli.command else {
            panic!()
        };
        assert!(r.create.rm);
        assert_eq!(r.create.env, ["A=1"]);
        assert_eq!(r.create.image(), "busybox");
        assert_eq!(r.create.command(), ["-c", "exit 3", "-e", "--rm"]);
    }

    #[test]
    fn run_short_flags_like_docker() {
        let cli = parse(&[
            "run",
            "-d",
            "-h",
            "box",
            "-m",
            "1g",
            "-w",
            "/tmp",
            "-u",
            "1000:1000",
            "busybox",
        ])
        .unwrap();
        let Command::Run(r) = cli.command else {
            panic!()
        };
        assert!(r.detach);
        assert_eq!(r.create.hostname.as_deref(), Some("box"));
        assert_eq!(r.create.memory, Some(1024));
        assert_eq!(r.create.workdir.as_deref(), Some("/tmp"));
        assert!(r.create.command().is_empty());
    }

    #[test]
    fn bad_flags_are_errors() {
        for args in [
            &["run", "--bogus", "busybox"][..],
            &["run", "--memory", "0", "busybox"],
            &["run", "--memory", "100t", "busybox"],
            &["run", "--cpus", "x", "busybox"],
            &["run", "--restart", "sometimes", "busybox"],
            &["run", "--name", "bad name", "busybox"],
            &["run"],
            &["kill", "-s", "NOPE", "x"],
            &["logs", "--tail", "x", "x"],
        ] {
            let e = parse(args).unwrap_err();
            assert_ne!(e.kind(), clap::error::ErrorKind::DisplayHelp, "{args:?}");
        }
        let e = parse(&["run", "--memory", "0", "busybox"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("too small"), "{e}");
    }

    #[test]
    fn entrypoint_may_be_empty_or_dashed() {
        let cli = parse(&["create", "--entrypoint", "", "busybox"]).unwrap();
        let Command::Create(c) = cli.command else {
            panic!()
        };
        assert_eq!(c.entrypoint.as_deref(), Some(""));
    }

    #[test]
    fn pull_policy_platform_and_insecure() {
        let cli = parse(&[
            "run",
            "--pull",
            "always",
            "--platform",
            "linux/x86_64",
            "--insecure",
            "127.0.0.1:5000/app",
        ])
        .unwrap();
        let Command::Run(r) = cli.command else {
            panic!()
        };
        assert_eq!(r.create.pull, PullPolicy::Always);
        assert_eq!(r.create.platform, Some(Platform::linux_amd64()));
        assert!(r.create.insecure);
        let cli = parse(&["create", "busybox"]).unwrap();
        let Command::Create(c) = cli.command else {
            panic!()
        };
        assert_eq!(c.pull, PullPolicy::Missing);
        let cli = parse(&["pull", "--platform", "linux/amd64/v3", "busybox"]).unwrap();
        let Command::Pull(p) = cli.command else {
            panic!()
        };
        assert_eq!(p.platform.unwrap().to_string(), "linux/amd64/v3");
        for bad in [
            &["pull", "--platform", "linux//amd64", "x"][..],
            &["run", "--pull", "sometimes", "x"],
            &["create", "--platform", "", "x"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn global_host_anywhere() {
        let cli = parse(&["ps", "-H", "tcp://127.0.0.1:1234", "-a"]).unwrap();
        assert_eq!(cli.host.as_deref(), Some("tcp://127.0.0.1:1234"));
        let cli = parse(&["logs", "--tail", "all", "x"]).unwrap();
        let Command::Logs(l) = cli.command else {
            panic!()
        };
        assert_eq!(l.tail, Some(flags::Tail(None)));
    }
}

/// `mvctl volume ...`.
#[derive(Debug, Subcommand)]
pub enum VolumeCommand {
    /// Create a volume; print its name
    Create(VolumeCreateArgs),
    /// List volumes
    #[command(alias = "list")]
    Ls(VolumeLsArgs),
    /// Show volumes in detail, as JSON
    Inspect {
        /// Volumes.
        #[arg(required = true, value_name = "VOLUME")]
        names: Vec<String>,
    },
    /// Remove volumes (refused while a sandbox uses one)
    #[command(alias = "remove")]
    Rm(VolumeRmArgs),
    /// Remove unused anonymous volumes (all unused ones with -a)
    Prune(VolumePruneArgs),
    /// Write a volume's content as a tar archive (a backup; the volume may be in use)
    Export(VolumeExportArgs),
    /// Restore a tar archive into a new or empty volume (--force: replace a volume's content)
    Import(VolumeImportArgs),
}

/// `mvctl checkpoint ...` (Docker's verbs).
#[derive(Debug, Clone, Subcommand)]
pub enum CheckpointCommand {
    /// Checkpoint a running sandbox; it stops once the checkpoint is made
    /// unless --leave-running
    Create {
        /// Keep the sandbox running after the checkpoint
        #[arg(long)]
        leave_running: bool,
        /// The sandbox (id, id prefix or name)
        #[arg(value_name = "SANDBOX")]
        sandbox: String,
        /// The checkpoint's name
        #[arg(value_name = "CHECKPOINT")]
        name: String,
    },
    /// List a sandbox's checkpoints
    #[command(alias = "list")]
    Ls {
        /// The sandbox
        #[arg(value_name = "SANDBOX")]
        sandbox: String,
    },
    /// Remove a checkpoint
    #[command(alias = "remove")]
    Rm {
        /// The sandbox
        #[arg(value_name = "SANDBOX")]
        sandbox: String,
        /// The checkpoint's name
        #[arg(value_name = "CHECKPOINT")]
        name: String,
    },
}

/// `mvctl volume export`.
#[derive(Debug, Clone, Args)]
pub struct VolumeExportArgs {
    /// Write to this file ("-": stdout) instead of stdout
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// No progress bar
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Volume
    #[arg(value_name = "VOLUME")]
    pub name: String,
}

/// `mvctl volume import`.
#[derive(Debug, Clone, Args)]
pub struct VolumeImportArgs {
    /// Replace the whole content of an existing, non-empty volume (never a merge)
    #[arg(short = 'f', long)]
    pub force: bool,
    /// No progress bar
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Volume (made if it does not exist)
    #[arg(value_name = "VOLUME")]
    pub name: String,
    /// Tar archive ("-" or absent: stdin)
    #[arg(value_name = "FILE|-")]
    pub file: Option<PathBuf>,
}

/// `mvctl volume create`.
#[derive(Debug, Clone, Args)]
pub struct VolumeCreateArgs {
    /// Driver: local (a directory under mvmd's state root, shared over
    /// virtio-fs) or block (an ext4 disk image: one writer at a time)
    #[arg(short = 'd', long, default_value = "local")]
    pub driver: String,
    /// Driver option KEY=VALUE (local takes none; block needs size=SIZE,
    /// e.g. size=1g)
    #[arg(short = 'o', long = "opt", value_name = "KEY=VALUE")]
    pub opt: Vec<String>,
    /// Set a label (key=value)
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub label: Vec<String>,
    /// Name (random when absent)
    #[arg(value_name = "VOLUME")]
    pub name: Option<String>,
}

/// `mvctl volume ls`.
#[derive(Debug, Clone, Args)]
pub struct VolumeLsArgs {
    /// Only names
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Filter: name=, label=KEY[=VALUE], dangling=true|false, driver=
    #[arg(short = 'f', long = "filter", value_name = "FILTER")]
    pub filter: Vec<String>,
    /// Output format
    #[arg(long, value_enum, default_value_t = ListFormat::Table)]
    pub format: ListFormat,
}

/// `mvctl volume rm`.
#[derive(Debug, Clone, Args)]
pub struct VolumeRmArgs {
    /// No error for volumes that do not exist
    #[arg(short = 'f', long)]
    pub force: bool,
    /// Volumes
    #[arg(required = true, value_name = "VOLUME")]
    pub names: Vec<String>,
}

/// `mvctl volume prune`.
#[derive(Debug, Clone, Args)]
pub struct VolumePruneArgs {
    /// Named volumes too, not only anonymous ones
    #[arg(short = 'a', long)]
    pub all: bool,
    /// Do not ask for confirmation
    #[arg(short = 'f', long)]
    pub force: bool,
    /// Filter: label=KEY[=VALUE], name=
    #[arg(long = "filter", value_name = "FILTER")]
    pub filter: Vec<String>,
}

/// `mvctl network ...`.
#[derive(Debug, Clone, Subcommand)]
pub enum NetworkCommand {
    /// Create a network; print its id
    Create(NetworkCreateArgs),
    /// List networks
    #[command(alias = "list")]
    Ls(NetworkLsArgs),
    /// Show networks in detail, as JSON
    Inspect(NetworkIdsArgs),
    /// Remove networks
    #[command(alias = "remove")]
    Rm(NetworkIdsArgs),
    /// Remove every network no sandbox uses
    Prune(NetworkPruneArgs),
    /// Put a stopped sandbox on one more network (from its next start)
    Connect(NetworkConnectArgs),
    /// Take a stopped sandbox off a network (from its next start)
    Disconnect(NetworkDisconnectArgs),
}

/// `mvctl network connect`.
#[derive(Debug, Clone, Args)]
pub struct NetworkConnectArgs {
    /// A name the sandbox also has on that network; repeatable
    #[arg(long = "alias", value_name = "NAME")]
    pub aliases: Vec<String>,
    /// Its IPv4 address on that network
    #[arg(long, value_name = "IP")]
    pub ip: Option<String>,
    /// The network (name, id or id prefix)
    #[arg(value_name = "NETWORK")]
    pub network: String,
    /// The sandbox (name, id or id prefix)
    #[arg(value_name = "SANDBOX")]
    pub sandbox: String,
}

/// `mvctl network disconnect`.
#[derive(Debug, Clone, Args)]
pub struct NetworkDisconnectArgs {
    /// The network (name, id or id prefix)
    #[arg(value_name = "NETWORK")]
    pub network: String,
    /// The sandbox (name, id or id prefix)
    #[arg(value_name = "SANDBOX")]
    pub sandbox: String,
}

/// `mvctl network create`.
#[derive(Debug, Clone, Args)]
pub struct NetworkCreateArgs {
    /// IPv4 subnet in CIDR form (default: a free one from 172.30.0.0/16, 172.16.0.0/12, 192.168.0.0/16)
    #[arg(long, value_name = "CIDR")]
    pub subnet: Option<String>,
    /// The host's address on the network (default: the subnet's first)
    #[arg(long, value_name = "IP")]
    pub gateway: Option<String>,
    /// No route out of the network
    #[arg(long)]
    pub internal: bool,
    /// Driver: only bridge
    #[arg(short = 'd', long, default_value = "bridge")]
    pub driver: String,
    /// Set a label (key=value)
    #[arg(short = 'l', long = "label", value_name = "KEY=VALUE")]
    pub label: Vec<String>,
    /// Name of the network
    #[arg(value_name = "NAME")]
    pub name: String,
}

/// `mvctl network ls`.
#[derive(Debug, Clone, Args)]
pub struct NetworkLsArgs {
    /// Print names only
    #[arg(short = 'q', long)]
    pub quiet: bool,
}

/// `mvctl network inspect` and `rm`.
#[derive(Debug, Clone, Args)]
pub struct NetworkIdsArgs {
    /// Networks (name, id or id prefix)
    #[arg(required = true, value_name = "NETWORK")]
    pub ids: Vec<String>,
}

/// `mvctl network prune`.
#[derive(Debug, Clone, Args)]
pub struct NetworkPruneArgs {
    /// Do not ask for confirmation
    #[arg(short = 'f', long)]
    pub force: bool,
}

/// `mvctl port`.
#[derive(Debug, Clone, Args)]
pub struct PortArgs {
    /// The sandbox
    #[arg(value_name = "SANDBOX")]
    pub sandbox: String,
    /// Only this port of the sandbox (PORT[/PROTO])
    #[arg(value_name = "PORT")]
    pub port: Option<String>,
}
