//! `mvctl volume create/ls/inspect/rm/prune`.

use mvm_api::volume::VolumeCreateRequest;
use serde_json::Value;

use super::{confirm, for_each, report, CmdError, CmdResult, Ctx};
use crate::cli::{ListFormat, VolumeCreateArgs, VolumeLsArgs, VolumePruneArgs, VolumeRmArgs};
use crate::format;

/// `mvctl volume create`: prints the name.
pub async fn create(ctx: &Ctx, a: VolumeCreateArgs) -> CmdResult {
    let labels = crate::flags::labels(&a.label).map_err(CmdError::Invalid)?;
    let driver_opts = crate::flags::labels(&a.opt).map_err(CmdError::Invalid)?;
    let client = ctx.client().await?;
    let v = client
        .volume_create(&VolumeCreateRequest {
            name: a.name,
            driver: Some(a.driver),
            driver_opts,
            labels,
        })
        .await?;
    println!("{}", v.name);
    Ok(0)
}

/// `mvctl volume ls`.
pub async fn ls(ctx: &Ctx, a: VolumeLsArgs) -> CmdResult {
    let client = ctx.client().await?;
    let list = client.volumes(&a.filter).await?;
    for w in &list.warnings {
        eprintln!("WARNING: {w}");
    }
    if a.quiet {
        for v in &list.volumes {
            println!("{}", v.name);
        }
        return Ok(0);
    }
    match a.format {
        ListFormat::Json => {
            for v in &list.volumes {
                println!("{}", serde_json::to_string(v).unwrap_or_default());
            }
        }
        ListFormat::Table => {
            let rows: Vec<Vec<String>> = list
                .volumes
                .iter()
                .map(|v| vec![v.driver.clone(), v.name.clone()])
                .collect();
            print!("{}", format::table(&["DRIVER", "VOLUME NAME"], &rows));
        }
    }
    Ok(0)
}

/// `mvctl volume inspect`: a JSON array.
pub async fn inspect(ctx: &Ctx, names: Vec<String>) -> CmdResult {
    let client = ctx.client().await?;
    let mut out = Vec::new();
    let mut failed = 0;
    for n in &names {
        match client.volume_inspect(n).await {
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
    Ok(if failed > 0 { 1 } else { 0 })
}

/// `mvctl volume rm`.
pub async fn rm(ctx: &Ctx, a: VolumeRmArgs) -> CmdResult {
    let client = ctx.client().await?;
    for_each(&a.names, |n| async move {
        client.volume_remove(&n, a.force).await?;
        println!("{n}");
        Ok(())
    })
    .await
}

/// `mvctl volume prune`.
pub async fn prune(ctx: &Ctx, a: VolumePruneArgs) -> CmdResult {
    let what = if a.all {
        "all volumes not used by at least one sandbox"
    } else {
        "all anonymous volumes not used by at least one sandbox"
    };
    if !a.force
        && !confirm(&format!(
            "WARNING! This will remove {what}.\nAre you sure you want to continue?"
        ))
    {
        return Ok(0);
    }
    let client = ctx.client().await?;
    let r = client.volume_prune(a.all, &a.filter).await?;
    if !r.volumes_deleted.is_empty() {
        println!("Deleted Volumes:");
        for d in &r.volumes_deleted {
            println!("{d}");
        }
        println!();
    }
    println!(
        "Total reclaimed space: {}",
        format::human_size(r.space_reclaimed)
    );
    Ok(0)
}
