//! Lifecycle and listing commands: start, stop, kill, restart, rm, ps,
//! wait, inspect.

use mvm_api::sandbox::{SandboxSummary, Status};
use serde_json::Value;

use super::{for_each, report, run, CmdError, CmdResult, Ctx};
use crate::cli::{
    IdsArgs, InspectArgs, InspectType, KillArgs, ListFormat, PsArgs, RmArgs, StartArgs, StopArgs,
};
use crate::client::WaitCondition;
use crate::format;

/// `mvctl start [-a]`.
pub async fn start(ctx: &Ctx, a: StartArgs) -> CmdResult {
    if let Some(name) = &a.checkpoint {
        if a.attach || a.ids.len() != 1 {
            return Err(CmdError::Invalid(
                "start --checkpoint takes exactly one sandbox, without -a (attach with mvctl logs -f)"
                    .into(),
            ));
        }
        let client = ctx.client().await?;
        client.start_from_checkpoint(&a.ids[0], name).await?;
        println!("{}", a.ids[0]);
        return Ok(0);
    }
    if a.attach {
        if a.ids.len() != 1 {
            return Err(CmdError::Invalid(
                "start -a takes exactly one sandbox".into(),
            ));
        }
        let client = ctx.client().await?;
        let info = client.inspect(&a.ids[0]).await?;
        let o = super::attach::SessionOpts {
            // Docker: stdin only with -i, and only into a sandbox created
            // with it open.
            stdin: a.interactive && info.config.open_stdin,
            tty: info.config.tty,
        };
        super::attach::check_tty(o)?;
        return run::foreground(ctx, &info.id, info.host_config.auto_remove, o).await;
    }
    let client = ctx.client().await?;
    for_each(&a.ids, |id| async move {
        client.start(&id).await?;
        println!("{id}");
        Ok(())
    })
    .await
}

/// `mvctl checkpoint create|ls|rm`.
pub async fn checkpoint(ctx: &Ctx, cmd: crate::cli::CheckpointCommand) -> CmdResult {
    use crate::cli::CheckpointCommand as C;
    let client = ctx.client().await?;
    match cmd {
        C::Create {
            leave_running,
            sandbox,
            name,
        } => {
            let req = mvm_api::checkpoint::CheckpointCreateRequest {
                name,
                leave_running,
            };
            let c = client.checkpoint_create(&sandbox, &req).await?;
            println!("{}", c.name);
        }
        C::Ls { sandbox } => {
            let rows: Vec<Vec<String>> = client
                .checkpoints(&sandbox)
                .await?
                .into_iter()
                .map(|c| vec![c.name, c.created])
                .collect();
            print!(
                "{}",
                crate::format::table(&["CHECKPOINT NAME", "CREATED"], &rows)
            );
        }
        C::Rm { sandbox, name } => client.checkpoint_remove(&sandbox, &name).await?,
    }
    Ok(0)
}

/// `mvctl stop [-t]`.
pub async fn stop(ctx: &Ctx, a: StopArgs) -> CmdResult {
    let client = ctx.client().await?;
    for_each(&a.ids, |id| async move {
        client.stop(&id, a.timeout).await?;
        println!("{id}");
        Ok(())
    })
    .await
}

/// `mvctl restart [-t]`.
pub async fn restart(ctx: &Ctx, a: StopArgs) -> CmdResult {
    let client = ctx.client().await?;
    for_each(&a.ids, |id| async move {
        client.restart(&id, a.timeout).await?;
        println!("{id}");
        Ok(())
    })
    .await
}

/// `mvctl kill [-s]`.
pub async fn kill(ctx: &Ctx, a: KillArgs) -> CmdResult {
    let client = ctx.client().await?;
    let signal = a.signal.as_str();
    for_each(&a.ids, |id| async move {
        client.kill(&id, signal).await?;
        println!("{id}");
        Ok(())
    })
    .await
}

/// `mvctl pause` / `mvctl unpause`.
pub async fn pause(ctx: &Ctx, a: IdsArgs, paused: bool) -> CmdResult {
    let client = ctx.client().await?;
    for_each(&a.ids, |id| async move {
        client.pause(&id, paused).await?;
        println!("{id}");
        Ok(())
    })
    .await
}

/// `mvctl rm [-f]`.
pub async fn rm(ctx: &Ctx, a: RmArgs) -> CmdResult {
    let client = ctx.client().await?;
    for_each(&a.ids, |id| async move {
        client.remove(&id, a.force, a.volumes).await?;
        println!("{id}");
        Ok(())
    })
    .await
}

/// `mvctl wait`: one exit code per line.
pub async fn wait(ctx: &Ctx, a: IdsArgs) -> CmdResult {
    let client = ctx.client().await?;
    for_each(&a.ids, |id| async move {
        let w = client.wait(&id, WaitCondition::NotRunning).await?;
        println!("{}", w.exit_code);
        Ok(())
    })
    .await
}

/// A `ps --filter` term.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Filter {
    /// `label=k` or `label=k=v` (the daemon filters).
    Label(String),
    /// `status=running|exited|created|restarting|removing`.
    Status(Status),
    /// `name=part`: names containing `part`.
    Name(String),
    /// `id=prefix`.
    Id(String),
}

fn parse_filter(s: &str) -> Result<Filter, CmdError> {
    let (k, v) = s.split_once('=').ok_or_else(|| {
        CmdError::Invalid(format!(
            "invalid filter {s:?}: expected KEY=VALUE (label=, status=, name=, id=)"
        ))
    })?;
    Ok(match k {
        "label" => Filter::Label(v.to_string()),
        "name" => Filter::Name(v.to_string()),
        "id" => Filter::Id(v.to_string()),
        "status" => Filter::Status(
            serde_json::from_value(Value::String(v.to_string())).map_err(|_| {
                CmdError::Invalid(format!(
                    "invalid status filter {v:?}: use created, running, restarting, exited or removing"
                ))
            })?,
        ),
        _ => {
            return Err(CmdError::Invalid(format!(
                "invalid filter {k:?}: the filters are label, status, name and id"
            )))
        }
    })
}

fn keep(s: &SandboxSummary, filters: &[Filter]) -> bool {
    filters.iter().all(|f| match f {
        Filter::Label(_) => true,
        Filter::Status(st) => s.status == *st,
        Filter::Name(n) => s.name.contains(n.as_str()),
        Filter::Id(p) => s.id.starts_with(p.as_str()),
    })
}

/// `mvctl ps`.
pub async fn ps(ctx: &Ctx, a: PsArgs) -> CmdResult {
    let filters = a
        .filter
        .iter()
        .map(|f| parse_filter(f))
        .collect::<Result<Vec<_>, _>>()?;
    let labels: Vec<String> = filters
        .iter()
        .filter_map(|f| match f {
            Filter::Label(l) => Some(l.clone()),
            _ => None,
        })
        .collect();
    // A status filter other than running implies all, as in Docker.
    let all = a.all
        || filters
            .iter()
            .any(|f| matches!(f, Filter::Status(s) if *s != Status::Running));
    let client = ctx.client().await?;
    let list: Vec<SandboxSummary> = client
        .list(all, &labels)
        .await?
        .into_iter()
        .filter(|s| keep(s, &filters))
        .collect();
    if a.quiet {
        for s in &list {
            println!(
                "{}",
                if a.no_trunc {
                    s.id.as_str()
                } else {
                    format::short_id(&s.id)
                }
            );
        }
        return Ok(0);
    }
    match a.format {
        ListFormat::Json => {
            for s in &list {
                println!("{}", serde_json::to_string(s).unwrap_or_default());
            }
        }
        ListFormat::Table => print!(
            "{}",
            format::ps_table(&list, chrono::Utc::now(), a.no_trunc)
        ),
    }
    Ok(0)
}

/// `mvctl inspect`: a JSON array, sandboxes first, then images.
pub async fn inspect(ctx: &Ctx, a: InspectArgs) -> CmdResult {
    let client = ctx.client().await?;
    let mut out = Vec::new();
    let mut failed = 0;
    for id in &a.ids {
        let found =
            match a.kind {
                Some(InspectType::Sandbox) => client.inspect_raw(id).await,
                Some(InspectType::Image) => client.image_inspect(id).await,
                None => match client.inspect_raw(id).await {
                    Err(e) if e.is_not_found() => client.image_inspect(id).await.map_err(|ie| {
                        if ie.is_not_found() {
                            e
                        } else {
                            ie
                        }
                    }),
                    other => other,
                },
            };
        match found {
            Ok(v) => out.push(v),
            Err(e) => {
                report(&e);
                failed += 1;
            }
        }
    }
    println!(
        "{}",
        serde_json::to_string_pretty(&Value::Array(out)).unwrap_or_default()
    );
    if failed > 0 {
        return Err(CmdError::Partial(format!(
            "{failed} of {} not found",
            a.ids.len()
        )));
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters() {
        assert_eq!(
            parse_filter("label=a=b").unwrap(),
            Filter::Label("a=b".into())
        );
        assert_eq!(
            parse_filter("status=exited").unwrap(),
            Filter::Status(Status::Exited)
        );
        assert!(parse_filter("status=sleepy")
            .unwrap_err()
            .to_string()
            .contains("invalid status"));
        assert!(parse_filter("color=red")
            .unwrap_err()
            .to_string()
            .contains("label, status"));
        assert!(parse_filter("label").is_err());
        let s = SandboxSummary {
            id: "abcdef".into(),
            name: "web-1".into(),
            image: "busybox".into(),
            command: String::new(),
            created: String::new(),
            status: Status::Exited,
            status_text: String::new(),
            exit_code: Some(0),
            labels: Default::default(),
            ports: vec![],
        };
        assert!(keep(
            &s,
            &[
                Filter::Name("web".into()),
                Filter::Id("abc".into()),
                Filter::Status(Status::Exited)
            ]
        ));
        assert!(!keep(&s, &[Filter::Status(Status::Running)]));
        assert!(!keep(&s, &[Filter::Id("b".into())]));
    }
}
