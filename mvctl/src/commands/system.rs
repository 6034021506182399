//! `system info`, `system prune`, `version`.

use mvm_api::system::{Info, KvmMode};
use serde_json::{json, Value};

use super::{confirm, CmdResult, Ctx};
use crate::cli::{InfoArgs, ListFormat, PruneArgs, VersionArgs};
use crate::connect::Mode;
use crate::format;

/// The client's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

fn mode_text(mode: &Mode, info: Option<&Info>) -> String {
    let hw = info.is_some_and(|i| i.kvm_mode == KvmMode::Hardware);
    match mode {
        Mode::Machine { url } => {
            format!("machine (mvmd in the emulated KVM host, forwarded to {url})")
        }
        _ if info.is_some_and(|i| i.kvm_mode == KvmMode::Machine) => {
            "machine (mvmd in the emulated KVM host)".to_string()
        }
        Mode::Explicit => format!(
            "remote daemon{}",
            if hw { " with hardware KVM" } else { "" }
        ),
        Mode::Native | Mode::Started { .. } => {
            format!("native{}", if hw { " (hardware KVM)" } else { "" })
        }
    }
}

fn kvm_text(k: KvmMode) -> &'static str {
    match k {
        KvmMode::Hardware => "hardware",
        KvmMode::Machine => "machine",
        KvmMode::Unavailable => "unavailable",
    }
}

/// The `system info` text.
pub fn info_text(endpoint: &str, mode: &Mode, i: &Info) -> String {
    let rows = [
        ("Client", String::new()),
        (" Version", VERSION.to_string()),
        (" Endpoint", endpoint.to_string()),
        (" Mode", mode_text(mode, Some(i))),
        ("Server", String::new()),
        (" Version", i.version.clone()),
        (" API version", i.api_version.clone()),
        (
            " KVM",
            if i.kvm_detail.is_empty() {
                kvm_text(i.kvm_mode).to_string()
            } else {
                format!("{} ({})", kvm_text(i.kvm_mode), i.kvm_detail)
            },
        ),
        (" Kernel", i.kernel.clone()),
        (" Init", i.init.clone()),
        (" VMM", i.vmm.clone()),
        (
            " Jail",
            if i.jail {
                format!("on (uids {})", i.jail_uids)
            } else {
                "off (mvmd --no-jail: VMMs run as root, unconfined)".into()
            },
        ),
        (
            " Seccomp",
            if i.seccomp {
                "on (per-thread allowlists; any other system call kills the VMM)".into()
            } else {
                "off (mvmd --no-seccomp: VMMs make any system call their jail allows)".into()
            },
        ),
        (" Root dir", i.root.clone()),
        (" Run dir", i.run_dir.clone()),
        (
            " Sandboxes",
            format!(
                "{} (running {}, stopped {})",
                i.sandboxes.total, i.sandboxes.running, i.sandboxes.stopped
            ),
        ),
        (" Images", i.images.to_string()),
        (" CPUs", i.host_cpus.to_string()),
        (" Memory", format!("{} MiB", i.host_memory_mib)),
        (" Networking", i.networking.clone()),
    ];
    let mut out = String::new();
    for (k, v) in rows {
        if v.is_empty() {
            out.push_str(&format!("{k}:\n"));
        } else {
            out.push_str(&format!("{k}: {v}\n"));
        }
    }
    out
}

/// `mvctl system info`.
pub async fn info(ctx: &Ctx, a: InfoArgs) -> CmdResult {
    let conn = ctx.connection().await?;
    let info = conn.client.info().await?;
    let endpoint = conn.client.host().to_string();
    match a.format {
        ListFormat::Json => {
            let v = json!({
                "client": {"version": VERSION, "endpoint": endpoint, "mode": mode_text(&conn.mode, Some(&info))},
                "server": info,
            });
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        }
        ListFormat::Table => print!("{}", info_text(&endpoint, &conn.mode, &info)),
    }
    Ok(0)
}

/// `mvctl system prune`.
pub async fn prune(ctx: &Ctx, a: PruneArgs) -> CmdResult {
    if !a.force
        && !confirm(
            "WARNING! This will remove:\n  - all stopped sandboxes\n  - all unused images and root disks\n\
             Are you sure you want to continue?",
        )
    {
        return Ok(0);
    }
    let client = ctx.client().await?;
    let r = client.system_prune().await?;
    if !r.deleted.is_empty() {
        println!("Deleted:");
        for d in &r.deleted {
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

/// The summary table of `system df` (Docker's columns; reclaimable with
/// its share of the size).
pub fn df_text(u: &mvm_api::system::DiskUsage) -> String {
    let row = |kind: &str, s: &mvm_api::system::UsageSummary| {
        let pct = (s.reclaimable * 100).checked_div(s.size).unwrap_or(0);
        vec![
            kind.to_string(),
            s.total.to_string(),
            s.active.to_string(),
            format::human_size(s.size),
            format!("{} ({pct}%)", format::human_size(s.reclaimable)),
        ]
    };
    format::table(
        &["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"],
        &[
            row("Images", &u.images),
            row("Sandboxes", &u.sandboxes),
            row("Volumes", &u.volumes),
        ],
    )
}

/// `mvctl system df`.
pub async fn df(ctx: &Ctx, a: crate::cli::DfArgs) -> CmdResult {
    let client = ctx.client().await?;
    let u = client.system_df().await?;
    if a.format == ListFormat::Json {
        println!("{}", serde_json::to_string_pretty(&u).unwrap_or_default());
        return Ok(0);
    }
    print!("{}", df_text(&u));
    if a.verbose {
        let short = |id: &str| {
            id.trim_start_matches("sha256:")
                .chars()
                .take(12)
                .collect::<String>()
        };
        println!("\nImages space usage:\n");
        let rows: Vec<Vec<String>> = u
            .image_list
            .iter()
            .map(|i| {
                vec![
                    i.repo_tags
                        .first()
                        .cloned()
                        .unwrap_or_else(|| "<none>".into()),
                    short(&i.id),
                    format::human_size(i.size),
                    i.sandboxes.to_string(),
                ]
            })
            .collect();
        print!(
            "{}",
            format::table(&["REPOSITORY:TAG", "IMAGE ID", "SIZE", "SANDBOXES"], &rows)
        );
        println!("\nSandboxes space usage:\n");
        let rows: Vec<Vec<String>> = u
            .sandbox_list
            .iter()
            .map(|s| {
                vec![
                    short(&s.id),
                    s.image.clone(),
                    s.status.clone(),
                    format::human_size(s.size),
                    s.name.clone(),
                ]
            })
            .collect();
        print!(
            "{}",
            format::table(&["SANDBOX ID", "IMAGE", "STATUS", "SIZE", "NAMES"], &rows)
        );
        println!("\nLocal Volumes space usage:\n");
        let rows: Vec<Vec<String>> = u
            .volume_list
            .iter()
            .map(|v| {
                vec![
                    v.name.clone(),
                    v.driver.clone(),
                    v.sandboxes.to_string(),
                    format::human_size(v.size),
                ]
            })
            .collect();
        print!(
            "{}",
            format::table(&["VOLUME NAME", "DRIVER", "LINKS", "SIZE"], &rows)
        );
    }
    Ok(0)
}

/// `mvctl version`: the client's version, and the daemon's when it answers.
pub async fn version(ctx: &Ctx, a: VersionArgs) -> CmdResult {
    let server = match ctx.client().await {
        Ok(c) => c.version().await,
        Err(e) => Err(crate::client::ClientError::Decode {
            what: "connect".into(),
            why: e.to_string(),
        }),
    };
    match a.format {
        ListFormat::Json => {
            let v = json!({
                "client": {"version": VERSION},
                "server": server.as_ref().ok().cloned().unwrap_or(Value::Null),
            });
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        }
        ListFormat::Table => {
            println!("Client:\n Version: {VERSION}");
            if let Ok(v) = &server {
                println!("Server:");
                if let Some(o) = v.as_object() {
                    for (k, val) in o {
                        let text = val.as_str().map_or_else(|| val.to_string(), str::to_string);
                        println!(" {k}: {text}");
                    }
                } else {
                    println!(" {v}");
                }
            }
        }
    }
    match server {
        Ok(_) => Ok(0),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mvm_api::system::SandboxCounts;

    #[test]
    fn info_says_the_mode() {
        let i = Info {
            version: "0.1.0".into(),
            api_version: "1".into(),
            kvm_mode: KvmMode::Hardware,
            kvm_detail: "AMD-V".into(),
            kernel: "/k".into(),
            init: "/i".into(),
            vmm: "/v".into(),
            jail: true,
            jail_uids: "100000-165535".into(),
            seccomp: true,
            root: "/var/lib/mvm".into(),
            run_dir: "/run/mvm".into(),
            sandboxes: SandboxCounts {
                total: 3,
                running: 1,
                stopped: 2,
            },
            images: 2,
            host_cpus: 2,
            host_memory_mib: 4096,
            networking: "ok".into(),
        };
        let t = info_text("unix:///run/mvm/mvmd.sock", &Mode::Native, &i);
        assert!(t.contains(" Mode: native (hardware KVM)\n"), "{t}");
        assert!(t.contains(" Jail: on (uids 100000-165535)\n"), "{t}");
        assert!(t.contains("\n Seccomp: on (per-thread allowlists"), "{t}");
        assert!(t.contains(" KVM: hardware (AMD-V)\n"), "{t}");
        assert!(t.contains(" Sandboxes: 3 (running 1, stopped 2)\n"), "{t}");
        let t = info_text(
            "tcp://127.0.0.1:7000",
            &Mode::Machine {
                url: "tcp://127.0.0.1:7000".into(),
            },
            &i,
        );
        assert!(
            t.contains(
                " Mode: machine (mvmd in the emulated KVM host, forwarded to tcp://127.0.0.1:7000)"
            ),
            "{t}"
        );
        // mvmd --no-jail / --no-seccomp say so.
        let off = Info {
            jail: false,
            jail_uids: String::new(),
            seccomp: false,
            ..i
        };
        let t = info_text("unix:///run/mvm/mvmd.sock", &Mode::Native, &off);
        assert!(
            t.contains(" Jail: off (mvmd --no-jail: VMMs run as root, unconfined)\n"),
            "{t}"
        );
        assert!(t.contains(" Seccomp: off (mvmd --no-seccomp"), "{t}");
    }
}
