//! What each command does. Commands validate their input first, then
//! connect (which may start mvmd), then make their requests.

pub mod attach;
pub mod build;
pub mod cp;
pub mod credentials;
pub mod exec;
pub mod images;
pub mod logs;
pub mod network;
mod progress;
mod prompt;
pub mod run;
pub mod sandbox;
pub mod stats;
pub mod stream;
pub mod system;
pub mod terminal;
pub mod volume;

use std::io::IsTerminal;

use tokio::sync::OnceCell;

use crate::cli::{Command, ImageCommand, NetworkCommand, SystemCommand, VolumeCommand};
use crate::client::{Client, ClientError};
use crate::connect::{self, ConnectError, Connection};

/// Errors of commands; all of them exit with [`crate::EXIT_ERROR`].
#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    /// A request failed (the daemon's message, or why it could not be made).
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The daemon could not be found or started.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// Bad input caught before any request.
    #[error("{0}")]
    Invalid(String),
    /// Local I/O (files, stdin, stdout).
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// An archive from a sandbox was refused or could not be written.
    #[error("copying to {}: {source}", dest.display())]
    Unpack {
        /// The local destination (`-`: stdout).
        dest: std::path::PathBuf,
        /// Why.
        #[source]
        source: mvm_unpack::Error,
    },
    /// Some of several objects failed; each failure was printed already.
    #[error("{0}")]
    Partial(String),
}

/// Result of commands: the exit status on success.
pub type CmdResult = Result<i32, CmdError>;

/// Shared state of one invocation: the connection, made on first use so
/// that local errors never start a daemon.
pub struct Ctx {
    opts: connect::Options,
    conn: OnceCell<Connection>,
}

impl Ctx {
    /// A context that connects with `opts` when asked.
    pub fn new(opts: connect::Options) -> Ctx {
        Ctx {
            opts,
            conn: OnceCell::new(),
        }
    }

    /// The connection, made now if not yet.
    pub async fn connection(&self) -> Result<&Connection, CmdError> {
        Ok(self
            .conn
            .get_or_try_init(|| connect::connect(&self.opts))
            .await?)
    }

    /// The client, connecting first if needed.
    pub async fn client(&self) -> Result<&Client, CmdError> {
        Ok(&self.connection().await?.client)
    }

    /// In machine mode, make the host's 127.0.0.1 forward the ports the
    /// machine's sandboxes publish now ([`crate::machine::ports`]); called
    /// after a command that may have published or released one, so the
    /// forward is in place (or gone) when the command returns. Best
    /// effort: what fails is a warning (the watcher tries again).
    pub async fn sync_machine_ports(&self) {
        let Some(conn) = self.conn.get() else { return };
        if !matches!(conn.mode, connect::Mode::Machine { .. }) {
            return;
        }
        let paths = crate::machine::paths::Paths::from_env();
        let p = paths.clone();
        let lock = match tokio::task::spawn_blocking(move || crate::machine::ports::lock(&p)).await
        {
            Ok(Ok(l)) => l,
            Ok(Err(e)) => {
                eprintln!(
                    "mvctl: warning: forwarding the published ports from the host's 127.0.0.1: {e}"
                );
                return;
            }
            Err(e) => {
                eprintln!("mvctl: warning: forwarding the published ports: {e}");
                return;
            }
        };
        let published: Vec<_> = match conn.client.list(false, &[]).await {
            Ok(list) => list.into_iter().flat_map(|s| s.ports).collect(),
            Err(e) => {
                eprintln!("mvctl: warning: cannot list the published ports to forward them from the host: {e}");
                return;
            }
        };
        let r = tokio::task::spawn_blocking(move || {
            let r = crate::machine::ports::sync_locked(&paths, &published);
            drop(lock);
            r
        })
        .await;
        match r {
            Ok(Ok(synced)) => {
                for (f, why) in synced.failed {
                    eprintln!("mvctl: warning: port {} is published in the machine but the host cannot forward {f} to it: {why}", f.port);
                }
            }
            Ok(Err(e)) => eprintln!(
                "mvctl: warning: forwarding the published ports from the host's 127.0.0.1: {e}"
            ),
            Err(e) => eprintln!("mvctl: warning: forwarding the published ports: {e}"),
        }
    }
}

/// Print an error the way every mvctl error is printed.
pub fn report(e: &dyn std::fmt::Display) {
    eprintln!("mvctl: error: {e}");
}

/// Run `f` for each item, reporting failures and going on with the rest,
/// as Docker does for `stop a b c`; fails if any item failed.
async fn for_each<F, Fut>(items: &[String], mut f: F) -> CmdResult
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = Result<(), CmdError>>,
{
    let mut failed = 0;
    for item in items {
        if let Err(e) = f(item.clone()).await {
            report(&e);
            failed += 1;
        }
    }
    if failed > 0 {
        return Err(CmdError::Partial(format!(
            "{failed} of {} failed",
            items.len()
        )));
    }
    Ok(0)
}

/// Ask `question [y/N]` on stderr and read the answer from stdin (no
/// answer, as from a closed stdin, is no).
fn confirm(question: &str) -> bool {
    eprint!("{question} [y/N] ");
    let mut line = String::new();
    if std::io::stdin().read_line(&mut line).is_err() {
        return false;
    }
    matches!(line.trim().to_ascii_lowercase().as_str(), "y" | "yes")
}

/// Whether stdout is a terminal (some outputs refuse to go there).
fn stdout_is_terminal() -> bool {
    std::io::stdout().is_terminal()
}

/// Dispatch a parsed command line (except `machine` and `completion`,
/// which need no daemon and run before any runtime exists).
pub async fn dispatch(ctx: &Ctx, cmd: Command) -> CmdResult {
    // Commands after which a sandbox may publish or release host ports
    // (a foreground run or `start -a` also syncs once started).
    let ports_change = matches!(
        cmd,
        Command::Run(_)
            | Command::Start(_)
            | Command::Stop(_)
            | Command::Kill(_)
            | Command::Restart(_)
            | Command::Rm(_)
            | Command::Checkpoint { .. }
    );
    let r = dispatch_command(ctx, cmd).await;
    if ports_change {
        ctx.sync_machine_ports().await;
    }
    r
}

async fn dispatch_command(ctx: &Ctx, cmd: Command) -> CmdResult {
    match cmd {
        Command::Run(a) => run::run(ctx, a).await,
        Command::Create(a) => run::create(ctx, a).await,
        Command::Start(a) => sandbox::start(ctx, a).await,
        Command::Stop(a) => sandbox::stop(ctx, a).await,
        Command::Kill(a) => sandbox::kill(ctx, a).await,
        Command::Pause(a) => sandbox::pause(ctx, a, true).await,
        Command::Checkpoint { command } => sandbox::checkpoint(ctx, command).await,
        Command::Unpause(a) => sandbox::pause(ctx, a, false).await,
        Command::Restart(a) => sandbox::restart(ctx, a).await,
        Command::Rm(a) => sandbox::rm(ctx, a).await,
        Command::Ps(a) => sandbox::ps(ctx, a).await,
        Command::Logs(a) => logs::logs(ctx, a).await,
        Command::Wait(a) => sandbox::wait(ctx, a).await,
        Command::Inspect(a) => sandbox::inspect(ctx, a).await,
        Command::System {
            command: SystemCommand::Info(a),
        }
        | Command::Info(a) => system::info(ctx, a).await,
        Command::System {
            command: SystemCommand::Prune(a),
        } => system::prune(ctx, a).await,
        Command::System {
            command: SystemCommand::Df(a),
        } => system::df(ctx, a).await,
        Command::Version(a) => system::version(ctx, a).await,
        Command::Pull(a)
        | Command::Image {
            command: ImageCommand::Pull(a),
        } => images::pull(ctx, a).await,
        Command::Push(a)
        | Command::Image {
            command: ImageCommand::Push(a),
        } => images::push(ctx, a).await,
        Command::Images(a)
        | Command::Image {
            command: ImageCommand::Ls(a),
        } => images::list(ctx, a).await,
        Command::Image {
            command: ImageCommand::Inspect { references },
        } => images::inspect(ctx, &references).await,
        Command::Tag(a)
        | Command::Image {
            command: ImageCommand::Tag(a),
        } => images::tag(ctx, a).await,
        Command::Rmi(a)
        | Command::Image {
            command: ImageCommand::Rm(a),
        } => images::rm(ctx, a).await,
        Command::Image {
            command: ImageCommand::Prune(a),
        } => images::prune(ctx, a).await,
        Command::Load(a)
        | Command::Image {
            command: ImageCommand::Load(a),
        } => images::load(ctx, a).await,
        Command::Save(a)
        | Command::Image {
            command: ImageCommand::Save(a),
        } => images::save(ctx, a).await,
        Command::Import(a)
        | Command::Image {
            command: ImageCommand::Import(a),
        } => images::import(ctx, a).await,
        Command::Volume { command } => match command {
            VolumeCommand::Create(a) => volume::create(ctx, a).await,
            VolumeCommand::Ls(a) => volume::ls(ctx, a).await,
            VolumeCommand::Inspect { names } => volume::inspect(ctx, names).await,
            VolumeCommand::Rm(a) => volume::rm(ctx, a).await,
            VolumeCommand::Prune(a) => volume::prune(ctx, a).await,
            VolumeCommand::Export(a) => volume::export(ctx, a).await,
            VolumeCommand::Import(a) => volume::import(ctx, a).await,
        },
        Command::Exec(a) => exec::exec(ctx, a).await,
        Command::Attach(a) => attach::attach(ctx, a).await,
        Command::Top(a) => attach::top(ctx, a).await,
        Command::Stats(a) => stats::stats(ctx, a).await,
        Command::Cp(a) => cp::cp(ctx, a).await,
        Command::Build(a) => build::build(ctx, a).await,
        Command::Login(a) => images::login(ctx, a).await,
        Command::Logout(a) => images::logout(ctx, a).await,
        Command::Network { command } => match command {
            NetworkCommand::Create(a) => network::create(ctx, a).await,
            NetworkCommand::Ls(a) => network::ls(ctx, a).await,
            NetworkCommand::Inspect(a) => network::inspect(ctx, a).await,
            NetworkCommand::Rm(a) => network::rm(ctx, a).await,
            NetworkCommand::Prune(a) => network::prune(ctx, a).await,
            NetworkCommand::Connect(a) => network::connect(ctx, a).await,
            NetworkCommand::Disconnect(a) => network::disconnect(ctx, a).await,
        },
        Command::Port(a) => network::port(ctx, a).await,
        Command::Machine { .. } | Command::Completion { .. } => Err(CmdError::Invalid(
            "internal: this command runs without a daemon".into(),
        )),
    }
}
