//! `mvctl logs`.

use super::{run::write_record, CmdError, CmdResult, Ctx};
use crate::cli::LogsArgs;
use crate::client::LogsOptions;
use crate::flags;

/// The query for `logs` flags, times resolved against `now`.
pub fn options(a: &LogsArgs, now: chrono::DateTime<chrono::Utc>) -> Result<LogsOptions, CmdError> {
    let time = |s: &Option<String>, flag: &str| -> Result<Option<String>, CmdError> {
        s.as_deref()
            .map(|t| flags::parse_time(t, now).map(flags::rfc3339))
            .transpose()
            .map_err(|e| CmdError::Invalid(format!("{flag}: {e}")))
    };
    Ok(LogsOptions {
        follow: a.follow,
        tail: a.tail.and_then(|t| t.0),
        since: time(&a.since, "--since")?,
        until: time(&a.until, "--until")?,
    })
}

/// `mvctl logs`: records to stdout or stderr as they were written.
pub async fn logs(ctx: &Ctx, a: LogsArgs) -> CmdResult {
    let opts = options(&a, chrono::Utc::now())?;
    let client = ctx.client().await?;
    let mut stream = client.logs(&a.id, &opts).await?;
    while let Some(r) = stream.next().await? {
        write_record(&r, a.timestamps)?;
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn parse(a: &[&str]) -> LogsArgs {
        let cli = Cli::try_parse_from(["mvctl", "logs"].iter().chain(a.iter())).unwrap();
        let Command::Logs(l) = cli.command else {
            panic!()
        };
        l
    }

    #[test]
    fn since_tail_until() {
        let now = chrono::DateTime::parse_from_rfc3339("2024-05-01T12:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let o = options(
            &parse(&[
                "-f",
                "--tail",
                "5",
                "--since",
                "10m",
                "--until",
                "1714564800",
                "x",
            ]),
            now,
        )
        .unwrap();
        assert_eq!(
            o,
            LogsOptions {
                follow: true,
                tail: Some(5),
                since: Some("2024-05-01T11:50:00.000000000Z".into()),
                until: Some("2024-05-01T12:00:00.000000000Z".into()),
            }
        );
        assert_eq!(
            options(&parse(&["-n", "all", "x"]), now).unwrap().tail,
            None
        );
        let e = options(&parse(&["--since", "soon", "x"]), now)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("--since: invalid time"), "{e}");
    }
}
