//! `mvctl volume create/ls/inspect/rm/prune/export/import`.

use std::io::IsTerminal;
use std::path::Path;

use mvm_api::volume::{VolumeCreateRequest, VolumeImportResponse};
use serde_json::Value;

use super::images::{copy_body, input_reader, save_to_file};
use super::{confirm, for_each, progress, report, stdout_is_terminal, CmdError, CmdResult, Ctx};
use crate::cli::{
    ListFormat, VolumeCreateArgs, VolumeExportArgs, VolumeImportArgs, VolumeLsArgs,
    VolumePruneArgs, VolumeRmArgs,
};
use crate::client::Body;
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
                .map(|v| {
                    vec![
                        v.driver.clone(),
                        v.name.clone(),
                        v.options.get("size").cloned().unwrap_or_default(),
                    ]
                })
                .collect();
            print!(
                "{}",
                format::table(&["DRIVER", "VOLUME NAME", "SIZE"], &rows)
            );
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

/// `mvctl volume export VOLUME [-o FILE|-]`: the tar stream to a file
/// (written beside it and renamed, so a failed export leaves no truncated
/// file under the name) or to stdout, never to a terminal (as `docker
/// export`). The bar's size is the volume's disk use, an estimate.
pub async fn export(ctx: &Ctx, a: VolumeExportArgs) -> CmdResult {
    let file = a.output.as_deref().filter(|p| *p != Path::new("-"));
    if file.is_none() && stdout_is_terminal() {
        return Err(CmdError::Invalid(
            "refusing to write a tar archive to a terminal: use -o FILE or redirect stdout".into(),
        ));
    }
    let client = ctx.client().await?;
    let host = client.host().to_string();
    // The size only when a bar is drawn: it walks the whole volume.
    let size = if !a.quiet && std::io::stderr().is_terminal() {
        client
            .volume_inspect(&a.name)
            .await
            .ok()
            .and_then(|v| v.pointer("/usage_data/size").and_then(Value::as_u64))
    } else {
        None
    };
    let body = client.volume_export(&a.name).await?;
    let bar = progress::transfer_bar(&a.name, size, a.quiet);
    let r = match file {
        Some(path) => save_to_file(body, path, &host, &bar).await,
        None => copy_body(body, tokio::io::stdout(), "stdout", &host, &bar)
            .await
            .map(|_| 0),
    };
    match &r {
        Ok(_) => {
            bar.set_length(bar.position());
            bar.finish();
        }
        Err(_) => bar.abandon(),
    }
    r
}

/// `mvctl volume import [--force] VOLUME [FILE|-]`: streams the archive
/// (a bar of the bytes sent on a terminal) and prints the volume's name.
pub async fn import(ctx: &Ctx, a: VolumeImportArgs) -> CmdResult {
    let (reader, size) = input_reader(a.file.as_deref(), "volume import").await?;
    let client = ctx.client().await?;
    // A refusal (content and no --force, a running user) is read before
    // any of the archive is sent; mvmd checks again when the body comes.
    client.volume_import_check(&a.name, a.force).await?;
    let bar = progress::transfer_bar(&a.name, size, a.quiet);
    let body = Body::reader(bar.wrap_async_read(reader));
    let answer = client.volume_import(&a.name, a.force, body).await;
    let v = match answer {
        Ok(answer) => progress::show(answer, true).await,
        Err(e) => Err(e.into()),
    };
    let v = match v {
        Ok(v) => {
            bar.finish();
            v
        }
        Err(e) => {
            bar.abandon();
            return Err(e);
        }
    };
    let r: VolumeImportResponse = serde_json::from_value(v.clone()).map_err(|e| {
        CmdError::Invalid(format!(
            "unexpected import result from the daemon ({e}): {v}"
        ))
    })?;
    if r.skipped_devices > 0 {
        eprintln!(
            "WARNING: {} device node(s) in the archive were left out (a volume never holds device nodes)",
            r.skipped_devices
        );
    }
    println!("{}", r.name);
    Ok(0)
}
