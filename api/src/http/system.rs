//! `/v1/version`, `/v1/info`, `/v1/system/prune`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use mvm_api::sandbox::PruneResponse;
use mvm_api::system::{Info, KvmMode, SandboxCounts};
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
