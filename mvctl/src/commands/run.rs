//! `run`, `create`, and the foreground session shared with `start -a`.
//!
//! A foreground run attaches first (so nothing the workload writes is
//! missed, and `-i` stdin has somewhere to go), then starts the sandbox,
//! then carries the attach stream until the run's `exited` frame, and
//! exits with the workload's status (attach.rs). Without `-t`, Ctrl-C
//! sends SIGINT to the workload; a second Ctrl-C within one second sends
//! SIGKILL, which ends the microVM (for a workload that ignores SIGINT).
//! SIGTERM, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 that mvctl receives are
//! forwarded as they are, as `docker run` does.

use std::io::Write;
use std::time::{Duration, Instant};

use mvm_api::logs::{LogRecord, Stream};
use mvm_api::sandbox::{CreateRequest, CreateResponse, RestartPolicy};
use tokio::signal::unix::{signal, Signal, SignalKind};

use super::attach::{self, Ended, SessionOpts};
use super::{images, CmdError, CmdResult, Ctx};
use crate::cli::{CreateArgs, PullPolicy, RunArgs};
use crate::client::{Client, WaitCondition};
use crate::flags;

/// Window in which a second Ctrl-C escalates to SIGKILL.
const DOUBLE_INTERRUPT: Duration = Duration::from_secs(1);
/// How long, after the run's exit, to wait for what follows it: the
/// removal of a `--rm` sandbox, the error message of a failed launch.
const AFTER_EXIT: Duration = Duration::from_secs(30);

/// Build the create request from the flags, reading env files. Everything
/// that can be wrong locally is caught here, before any request.
pub fn create_request(
    a: &CreateArgs,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<CreateRequest, CmdError> {
    let mut env = Vec::new();
    for path in &a.env_file {
        let bytes = std::fs::read(path).map_err(|source| CmdError::Io {
            what: format!("cannot read env file {}", path.display()),
            source,
        })?;
        env.extend(
            flags::parse_env_file(&path.display().to_string(), &bytes, lookup)
                .map_err(CmdError::Invalid)?,
        );
    }
    for e in &a.env {
        if let Some(entry) = flags::env_flag(e, lookup).map_err(CmdError::Invalid)? {
            env.push(entry);
        }
    }
    let labels = flags::labels(&a.label).map_err(CmdError::Invalid)?;
    let restart_policy = a.restart.clone().unwrap_or_default();
    if a.rm && restart_policy != RestartPolicy::No {
        return Err(CmdError::Invalid(
            "conflicting options: --restart and --rm (a sandbox removed on exit cannot be restarted)".into(),
        ));
    }
    let image = a.image().trim();
    if image.is_empty() {
        return Err(CmdError::Invalid("the image name is empty".into()));
    }
    Ok(CreateRequest {
        image: image.to_string(),
        name: a.name.clone(),
        cmd: (!a.command().is_empty()).then(|| a.command().to_vec()),
        entrypoint: a.entrypoint.as_ref().map(|e| {
            if e.is_empty() {
                vec![]
            } else {
                vec![e.clone()]
            }
        }),
        env,
        working_dir: a.workdir.clone(),
        user: a.user.clone().filter(|u| !u.is_empty()),
        hostname: a.hostname.clone(),
        labels,
        tty: a.tty,
        open_stdin: a.interactive,
        vcpus: None,
        cpus: a.cpus,
        memory_mib: a.memory,
        restart_policy,
        auto_remove: a.rm,
        stop_signal: a.stop_signal.clone(),
        stop_timeout: a.stop_timeout,
        mounts: a
            .volume
            .iter()
            .chain(&a.mount)
            .chain(&a.tmpfs)
            .cloned()
            .collect(),
        volumes_from: a.volumes_from.clone(),
        read_only_rootfs: a.read_only,
        network: a.network.clone(),
        network_aliases: a.network_alias.clone(),
        ip: a.ip.clone(),
        mac_address: a.mac_address.clone(),
        dns: a.dns.clone(),
        add_host: a.add_host.clone(),
        publish: a.publish.clone(),
        publish_all: a.publish_all,
    })
}

fn host_env(k: &str) -> Option<String> {
    std::env::var(k).ok()
}

/// Creates the sandbox, pulling its image as `--pull` says (Docker's
/// semantics): `missing` pulls when create answers that there is no such
/// image, then creates again; `always` pulls first; `never` leaves the
/// not-found error as it is. A `--platform` mvm cannot run always goes to
/// the registry, whose answer names what the image offers. Pull progress
/// and Docker's `Digest:`/`Status:` lines go to stderr.
async fn create_pulling(
    client: &Client,
    req: &CreateRequest,
    a: &CreateArgs,
) -> Result<CreateResponse, CmdError> {
    let pull = || async {
        let r =
            images::pull_image(client, &req.image, a.insecure, a.platform.clone(), false).await?;
        eprintln!("Digest: {}", r.digest);
        eprintln!("Status: {}", r.status);
        Ok::<_, CmdError>(())
    };
    let foreign = a.platform.as_ref().is_some_and(|p| !p.is_runnable());
    match a.pull {
        PullPolicy::Always => pull().await?,
        PullPolicy::Missing if foreign => pull().await?,
        PullPolicy::Never | PullPolicy::Missing => {}
    }
    match client.create(req).await {
        Err(e) if e.is_not_found() && a.pull == PullPolicy::Missing && !foreign => {
            eprintln!("Unable to find image '{}' locally", req.image);
            pull().await?;
            Ok(client.create(req).await?)
        }
        r => Ok(r?),
    }
}

/// `mvctl create`.
pub async fn create(ctx: &Ctx, a: CreateArgs) -> CmdResult {
    let req = create_request(&a, &host_env)?;
    let client = ctx.client().await?;
    let created = create_pulling(client, &req, &a).await?;
    for w in &created.warnings {
        eprintln!("mvctl: warning: {w}");
    }
    println!("{}", created.id);
    Ok(0)
}

/// `mvctl run`.
pub async fn run(ctx: &Ctx, a: RunArgs) -> CmdResult {
    let req = create_request(&a.create, &host_env)?;
    let session = SessionOpts {
        stdin: a.create.interactive,
        tty: a.create.tty,
    };
    if !a.detach {
        attach::check_tty(session)?;
    }
    let client = ctx.client().await?;
    let created = create_pulling(client, &req, &a.create).await?;
    for w in &created.warnings {
        eprintln!("mvctl: warning: {w}");
    }
    let id = created.id;
    if a.detach {
        if let Err(e) = client.start(&id).await {
            discard_failed(client, &id, req.auto_remove).await;
            return Err(e.into());
        }
        println!("{id}");
        return Ok(0);
    }
    foreground(ctx, &id, req.auto_remove, session).await
}

/// After a failed start, a `--rm` sandbox goes away as it would have on
/// exit; others stay for inspection, as in Docker.
async fn discard_failed(client: &Client, id: &str, auto_remove: bool) {
    if auto_remove {
        let _ = client.remove(id, true, true).await;
    }
}

/// Attach to `id`, start it, carry its streams until it stops, and
/// return its exit status (`start -a` and foreground `run`).
pub async fn foreground(ctx: &Ctx, id: &str, auto_remove: bool, o: SessionOpts) -> CmdResult {
    let client = ctx.client().await?;
    // Attached before the start: the stream carries the run from its
    // first byte, and its end is the run's exit (no separate wait).
    let io = match client.attach(id, o.stdin).await {
        Ok(io) => io,
        Err(e) => {
            discard_failed(client, id, auto_remove).await;
            return Err(e.into());
        }
    };
    if o.tty {
        attach::send_size(client, id).await;
    }
    if let Err(e) = client.start(id).await {
        drop(io);
        discard_failed(client, id, auto_remove).await;
        return Err(e.into());
    }
    ctx.sync_machine_ports().await;
    match attach::session(client, id, io, o).await {
        Ok(Ended::Exited(exit)) => Ok(after_exit(client, id, auto_remove, exit.shell_code()).await),
        Ok(Ended::Detached) => Ok(0),
        Err(e) => {
            // The stream broke (mvmd restarted?): the sandbox's state
            // still tells how the run ends.
            eprintln!("mvctl: warning: {e}; waiting for the sandbox to stop");
            let cond = if auto_remove {
                WaitCondition::Removed
            } else {
                WaitCondition::NotRunning
            };
            let w = client.wait(id, cond).await?;
            if let Some(err) = w.error.as_deref().filter(|e| !e.is_empty()) {
                eprintln!("mvctl: error: {err}");
            }
            Ok(w.exit_code)
        }
    }
}

/// After the run's exit: let a `--rm` sandbox's removal finish (as
/// `docker run --rm` does) and show why a run ended abnormally (125-127:
/// the workload never ran; 255: the microVM ended without a status).
/// Bounded: the status is known already.
async fn after_exit(client: &Client, id: &str, auto_remove: bool, code: i32) -> i32 {
    let launch_failed = (125..=127).contains(&code) || code == 255;
    if !auto_remove && !launch_failed {
        return code;
    }
    let cond = if auto_remove {
        WaitCondition::Removed
    } else {
        WaitCondition::NotRunning
    };
    if let Ok(Ok(w)) = tokio::time::timeout(AFTER_EXIT, client.wait(id, cond)).await {
        if let Some(err) = w
            .error
            .as_deref()
            .filter(|e| !e.is_empty() && launch_failed)
        {
            eprintln!("mvctl: error: {err}");
        }
    }
    code
}

/// Write one log record to stdout or stderr as it came.
pub fn write_record(r: &LogRecord, timestamps: bool) -> Result<(), CmdError> {
    let io_err = |source| CmdError::Io {
        what: "write the output".into(),
        source,
    };
    let mut buf = Vec::with_capacity(r.log.len() + 40);
    if timestamps {
        buf.extend_from_slice(r.time.as_bytes());
        buf.push(b' ');
    }
    buf.extend_from_slice(r.log.as_bytes());
    match r.stream {
        Stream::Stdout => {
            let mut out = std::io::stdout().lock();
            out.write_all(&buf)
                .and_then(|()| out.flush())
                .map_err(io_err)
        }
        Stream::Stderr => {
            let mut err = std::io::stderr().lock();
            err.write_all(&buf)
                .and_then(|()| err.flush())
                .map_err(io_err)
        }
    }
}

/// Forwards the signals mvctl gets to the sandbox's workload.
pub struct Forwarder {
    client: Client,
    id: String,
    int: Signal,
    term: Signal,
    hup: Signal,
    quit: Signal,
    usr1: Signal,
    usr2: Signal,
    last_interrupt: Option<Instant>,
}

impl Forwarder {
    /// Install the handlers.
    pub fn new(client: Client, id: String) -> Result<Forwarder, CmdError> {
        let install = |kind: SignalKind, name: &str| {
            signal(kind).map_err(|source| CmdError::Io {
                what: format!("install a {name} handler"),
                source,
            })
        };
        Ok(Forwarder {
            client,
            id,
            int: install(SignalKind::interrupt(), "SIGINT")?,
            term: install(SignalKind::terminate(), "SIGTERM")?,
            hup: install(SignalKind::hangup(), "SIGHUP")?,
            quit: install(SignalKind::quit(), "SIGQUIT")?,
            usr1: install(SignalKind::user_defined1(), "SIGUSR1")?,
            usr2: install(SignalKind::user_defined2(), "SIGUSR2")?,
            last_interrupt: None,
        })
    }

    /// The name of the next signal received.
    pub async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "SIGINT",
            _ = self.term.recv() => "SIGTERM",
            _ = self.hup.recv() => "SIGHUP",
            _ = self.quit.recv() => "SIGQUIT",
            _ = self.usr1.recv() => "SIGUSR1",
            _ = self.usr2.recv() => "SIGUSR2",
        }
    }

    /// Send the signal `name` (a second SIGINT soon after: SIGKILL).
    pub async fn forward(&mut self, name: &'static str) {
        let mut send = name;
        if name == "SIGINT" {
            let now = Instant::now();
            if self
                .last_interrupt
                .is_some_and(|t| now.duration_since(t) < DOUBLE_INTERRUPT)
            {
                send = "SIGKILL";
                eprintln!(
                    "mvctl: second interrupt: killing sandbox {}",
                    crate::format::short_id(&self.id)
                );
            }
            self.last_interrupt = Some(now);
        }
        // A sandbox that already stopped answers invalid_state: nothing to do.
        if let Err(e) = self.client.kill(&self.id, send).await {
            if e.code() != Some(mvm_api::ErrorCode::InvalidState) && !e.is_not_found() {
                eprintln!("mvctl: warning: could not forward {send}: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn args(a: &[&str]) -> CreateArgs {
        let cli = Cli::try_parse_from(["mvctl", "create"].iter().chain(a.iter())).unwrap();
        let Command::Create(c) = cli.command else {
            panic!()
        };
        c
    }

    fn lookup(k: &str) -> Option<String> {
        (k == "FROM_HOST").then(|| "host value".into())
    }

    #[test]
    fn request_from_flags() {
        let dir = tempfile::tempdir().unwrap();
        let envf = dir.path().join("app.env");
        std::fs::write(&envf, "# settings\nA=from-file\nFROM_HOST\nNOT_SET\n").unwrap();
        let a = args(&[
            "--name",
            "web",
            "--env-file",
            envf.to_str().unwrap(),
            "-e",
            "A=override",
            "-e",
            "FROM_HOST",
            "-e",
            "NOT_SET",
            "-w",
            "/srv",
            "-u",
            "1000",
            "--entrypoint",
            "/bin/sh",
            "--cpus",
            "1.5",
            "-m",
            "512m",
            "-h",
            "box",
            "--restart",
            "on-failure:2",
            "-l",
            "tier=web",
            "--stop-signal",
            "INT",
            "--stop-timeout",
            "3",
            "busybox",
            "-c",
            "echo hi",
        ]);
        let r = create_request(&a, &lookup).unwrap();
        assert_eq!(r.image, "busybox");
        assert_eq!(r.name.as_deref(), Some("web"));
        assert_eq!(
            r.env,
            [
                "A=from-file",
                "FROM_HOST=host value",
                "A=override",
                "FROM_HOST=host value"
            ]
        );
        assert_eq!(r.working_dir.as_deref(), Some("/srv"));
        assert_eq!(r.user.as_deref(), Some("1000"));
        assert_eq!(r.entrypoint, Some(vec!["/bin/sh".to_string()]));
        assert_eq!(r.cmd, Some(vec!["-c".to_string(), "echo hi".to_string()]));
        assert_eq!(r.cpus, Some(1.5));
        assert_eq!(r.memory_mib, Some(512));
        assert_eq!(r.hostname.as_deref(), Some("box"));
        assert_eq!(
            r.restart_policy,
            RestartPolicy::OnFailure {
                maximum_retry_count: 2
            }
        );
        assert_eq!(r.labels.get("tier").map(String::as_str), Some("web"));
        assert_eq!(r.stop_signal.as_deref(), Some("SIGINT"));
        assert_eq!(r.stop_timeout, Some(3));
        assert!(!r.auto_remove);
        // Defaults stay unset, so the image's apply.
        let r = create_request(&args(&["busybox"]), &lookup).unwrap();
        assert_eq!(
            (r.cmd, r.entrypoint, r.working_dir, r.user),
            (None, None, None, None)
        );
        let r = create_request(&args(&["--entrypoint", "", "busybox"]), &lookup).unwrap();
        assert_eq!(r.entrypoint, Some(vec![]));
    }

    #[test]
    fn request_errors() {
        let e = create_request(&args(&["--rm", "--restart", "always", "busybox"]), &lookup)
            .unwrap_err();
        assert!(e.to_string().contains("--restart and --rm"), "{e}");
        let e = create_request(
            &args(&["--env-file", "/nonexistent/x.env", "busybox"]),
            &lookup,
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("cannot read env file /nonexistent/x.env"),
            "{e}"
        );
        let e = create_request(&args(&["-e", "BAD KEY=1", "busybox"]), &lookup).unwrap_err();
        assert!(e.to_string().contains("whitespace"), "{e}");
        let e = create_request(&args(&["-l", "=x", "busybox"]), &lookup).unwrap_err();
        assert!(e.to_string().contains("invalid label"), "{e}");
    }
}
