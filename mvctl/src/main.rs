//! The `mvctl` binary: parse, dispatch, and turn every failure into
//! `mvctl: error: <message>` with exit status 125.

use clap::error::ErrorKind;
use clap::{CommandFactory, Parser};
use mvctl::cli::{Cli, Command};
use mvctl::commands::{self, CmdError, Ctx};
use mvctl::{connect, machine, EXIT_ERROR};

fn main() {
    die_quietly_on_closed_stdout();
    std::process::exit(real_main());
}

/// Die by SIGPIPE, as other Unix tools do, when stdout is a closed pipe
/// (`mvctl ps | head`), instead of panicking in `println!`.
///
/// SIGPIPE itself stays ignored (Rust's default): a write to mvmd's Unix
/// socket after mvmd closed it (an upload it refused early) must fail
/// with EPIPE and let mvctl read mvmd's answer, not kill mvctl. So only
/// the panic that `print!` raises on a broken stdout is turned back into
/// the signal's death.
fn die_quietly_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.starts_with("failed printing to stdout") && msg.contains("Broken pipe") {
            die_by_sigpipe();
        }
        default(info);
    }));
}

/// End the process by SIGPIPE, as `yes | head` ends.
fn die_by_sigpipe() -> i32 {
    // SAFETY: restores SIGPIPE's default action and raises it in this
    // thread; no handler function is involved.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        libc::raise(libc::SIGPIPE);
    }
    // Not reached: the default action of SIGPIPE ends the process.
    141
}

fn real_main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            return match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
                    let _ = e.print();
                    0
                }
                ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                    let _ = e.print();
                    EXIT_ERROR
                }
                _ => {
                    // clap's text starts with "error: "; keep one prefix.
                    let text = e.render().to_string();
                    let text = text.strip_prefix("error: ").unwrap_or(&text);
                    eprint!("mvctl: error: {text}");
                    EXIT_ERROR
                }
            };
        }
    };
    match cli.command {
        Command::Completion { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "mvctl", &mut script);
            return match std::io::Write::write_all(&mut std::io::stdout(), &script) {
                Ok(()) => 0,
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => die_by_sigpipe(),
                Err(e) => {
                    commands::report(&format!("writing the completion script: {e}"));
                    EXIT_ERROR
                }
            };
        }
        Command::Machine { command } => {
            return match machine::cli(command) {
                Ok(code) => code,
                Err(e) => {
                    commands::report(&e);
                    EXIT_ERROR
                }
            };
        }
        _ => {}
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            commands::report(&format!("cannot start the async runtime: {e}"));
            return EXIT_ERROR;
        }
    };
    let tls = mvctl::client::tls::TlsOptions {
        tls: cli.tls,
        verify: cli.tlsverify,
        ca: cli.tlscacert,
        cert: cli.tlscert,
        key: cli.tlskey,
    };
    let ctx = Ctx::new(connect::Options::from_flags(cli.host, cli.token_file).with_tls(tls));
    let r = rt.block_on(commands::dispatch(&ctx, cli.command));
    // A read of the terminal may still block a runtime thread (stdin of
    // an attach or exec that has ended): do not wait for it.
    rt.shutdown_timeout(std::time::Duration::from_millis(100));
    match r {
        Ok(code) => code,
        // Each failure of a multi-object command was printed already.
        Err(CmdError::Partial(_)) => EXIT_ERROR,
        Err(e) => {
            commands::report(&e);
            EXIT_ERROR
        }
    }
}
