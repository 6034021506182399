//! The `mvctl` binary: parse, dispatch, and turn every failure into
//! `mvctl: error: <message>` with exit status 125.

use clap::error::ErrorKind;
use clap::{CommandFactory, Parser};
use mvctl::cli::{Cli, Command};
use mvctl::commands::{self, CmdError, Ctx};
use mvctl::{connect, machine, EXIT_ERROR};

fn main() {
    // Die quietly on a closed pipe (`mvctl ps | head`), like other Unix
    // tools, instead of panicking in println!.
    // SAFETY: restores the default disposition of SIGPIPE before any thread
    // exists; no handler function is involved.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    std::process::exit(real_main());
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
            clap_complete::generate(shell, &mut Cli::command(), "mvctl", &mut std::io::stdout());
            return 0;
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
