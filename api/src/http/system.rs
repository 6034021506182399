//! `/v1/version`, `/v1/info`, `/v1/system/prune`, `/v1/system/df`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use mvm_api::sandbox::PruneResponse;
use mvm_api::system::{
    DiskUsage, ImageUsage, Info, KvmMode, SandboxCounts, SandboxUsage, VolumeUsageRow,
};
use mvm_runtime::{HostResources, Status};
use mvm_vmm_api::kvm;

use super::{json_response, ApiResult};
use crate::Daemon;

type D = State<Arc<Daemon>>;

pub async fn version() -> Response {
    json_response(
        StatusCode::OK,
        &serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "api_version": "1",
            "os": "linux",
            "arch": std::env::consts::ARCH,
        }),
    )
}

pub async fn info(State(d): D) -> ApiResult<Response> {
    let kvm = kvm::detect();
    let host = HostResources::probe();
    let (total, running) = d.manager.counts();
    let store = d.manager.runtime().store().clone();
    let images =
        tokio::task::spawn_blocking(move || store.list().map(|l| l.len() as u64).unwrap_or(0))
            .await
            .unwrap_or(0);
    let cfg = d.manager.runtime().config();
    let (mode, detail) = match kvm {
        kvm::KvmMode::Hardware { .. }
            if std::env::var_os("MVM_TESTHOST").is_some() || d.machine =>
        {
            (
                KvmMode::Machine,
                format!("{kvm} (inside the emulated KVM host)"),
            )
        }
        kvm::KvmMode::Hardware { .. } => (KvmMode::Hardware, kvm.to_string()),
        _ => (KvmMode::Unavailable, kvm.to_string()),
    };
    let info = Info {
        version: env!("CARGO_PKG_VERSION").into(),
        api_version: "1".into(),
        kvm_mode: mode,
        kvm_detail: detail,
        kernel: cfg.artifacts.kernel.display().to_string(),
        init: cfg.artifacts.init.display().to_string(),
        vmm: cfg.artifacts.vmm.display().to_string(),
        jail: cfg.jail.is_some(),
        jail_uids: cfg
            .jail
            .as_ref()
            .map(|j| j.uids.to_string())
            .unwrap_or_default(),
        seccomp: cfg.seccomp,
        root: cfg.layout.root.display().to_string(),
        run_dir: cfg.layout.run_dir.display().to_string(),
        sandboxes: SandboxCounts {
            total,
            running,
            stopped: total - running,
        },
        images,
        host_cpus: host.cpus,
        host_memory_mib: host.mem_total_mib,
        networking: d
            .manager
            .networks()
            .unavailable()
            .map_or_else(|| "ok".to_string(), |why| format!("unavailable: {why}")),
    };
    Ok(json_response(StatusCode::OK, &info))
}

/// Remove exited (and never started) sandboxes, then unused image data.
pub async fn prune(State(d): D) -> ApiResult<Response> {
    let mut resp = PruneResponse::default();
    for e in d.manager.entries() {
        let row = e.snapshot();
        if matches!(row.state.status, Status::Exited | Status::Created) {
            let size = dir_size(&d.manager.runtime().paths(&e.id).dir);
            if d.manager.remove(&e.id, false, false).await.is_ok() {
                resp.deleted.push(e.id.clone());
                resp.space_reclaimed += size;
            }
        }
    }
    let store = d.manager.runtime().store().clone();
    let used = d.manager.images_in_use();
    let report = tokio::task::spawn_blocking(move || {
        store.prune(false, &|id: &mvm_images::ImageId| {
            used.iter().any(|u| *u == id.to_string())
        })
    })
    .await;
    if let Ok(Ok(r)) = report {
        resp.space_reclaimed += r.bytes_freed;
        resp.deleted
            .extend(r.images_removed.iter().map(|d| d.to_string()));
    }
    Ok(json_response(StatusCode::OK, &resp))
}

/// `GET /v1/system/df`: what images, sandboxes and volumes take on the
/// host, what is in use and what removing the rest would free (Docker's
/// `system df`). Sizes are allocated bytes (sparse disks count what they
/// use); the walk runs off the async threads.
pub async fn df(State(d): D) -> ApiResult<Response> {
    let m = d.manager.clone();
    let usage = tokio::task::spawn_blocking(move || disk_usage(&m))
        .await
        .map_err(|e| mvm_api::ApiError::new(mvm_api::ErrorCode::Internal, e.to_string()))??;
    Ok(json_response(StatusCode::OK, &usage))
}

fn disk_usage(m: &crate::manager::Manager) -> Result<DiskUsage, mvm_api::ApiError> {
    let mut u = DiskUsage::default();
    let rows: Vec<_> = m.entries().iter().map(|e| e.snapshot()).collect();
    for r in &rows {
        let size = dir_size(&m.runtime().paths(&r.spec.id).dir);
        let running = matches!(r.state.status, Status::Running | Status::Restarting);
        u.sandboxes.total += 1;
        u.sandboxes.size += size;
        if running {
            u.sandboxes.active += 1;
        } else {
            u.sandboxes.reclaimable += size;
        }
        u.sandbox_list.push(SandboxUsage {
            id: r.spec.id.clone(),
            name: r.spec.name.clone(),
            image: r.spec.image.clone(),
            status: serde_json::to_value(r.state.status)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            size,
        });
    }
    let images = m
        .runtime()
        .store()
        .list()
        .map_err(|e| mvm_api::ApiError::new(mvm_api::ErrorCode::Internal, e.to_string()))?;
    for i in images {
        let id = i.id.to_string();
        let users = rows.iter().filter(|r| r.spec.image_id == id).count() as u64;
        u.images.total += 1;
        u.images.size += i.size;
        if users > 0 {
            u.images.active += 1;
        } else {
            u.images.reclaimable += i.size;
        }
        u.image_list.push(ImageUsage {
            id,
            repo_tags: i.repo_tags,
            size: i.size,
            sandboxes: users,
        });
    }
    let dirs = m.runtime().volumes();
    for v in m.db().volumes()? {
        let users = m.volume_users(&v.name).len() as u64;
        let size = dirs.size(&v.name);
        u.volumes.total += 1;
        u.volumes.size += size;
        if users > 0 {
            u.volumes.active += 1;
        } else {
            u.volumes.reclaimable += size;
        }
        u.volume_list.push(VolumeUsageRow {
            name: v.name,
            driver: v.driver,
            sandboxes: users,
            size,
        });
    }
    Ok(u)
}

/// Allocated bytes under `dir` (sparse files count what they use).
fn dir_size(dir: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if let Ok(md) = e.metadata() {
                total += if md.is_dir() {
                    dir_size(&e.path())
                } else {
                    md.blocks() * 512
                };
            }
        }
    }
    total
}
