//! `POST /v1/build`: build an image from a Dockerfile (`mvm-builder`).
//!
//! The body is the build context as a tarball (plain, gzip or zstd),
//! unpacked with the store's hardened unpacker. Query parameters: `t`
//! (repeatable tag), `dockerfile` (path inside the context, default
//! `Dockerfile`), `buildargs` and `labels` (JSON objects of strings),
//! `target`, `nocache`, `network`. The answer is the NDJSON progress stream every
//! long image operation uses: `status` lines in BuildKit's plain format
//! (`#3 [2/4] RUN ...`, `#3 CACHED`, `#3 DONE 1.2s`, RUN output), then
//! `result` (`{"id", "digest", "tags", "steps", "cached"}`) or `error`.
//! RUN steps are transient sandboxes of this mvmd's runtime: the same
//! kernel, init and VMM as `run` (`--kernel/--init/--vmm`, the install
//! prefix), so builds work wherever sandboxes do. Each RUN step gets an
//! endpoint on the build's network for as long as its microVM runs
//! ([`StepNet`]): the default bridge network (outbound NAT, as Docker's
//! RUN steps have) unless `network` names `none` or a user network. A `FROM` of an image the
//! store lacks is pulled with the credentials the client sent
//! (`X-Registry-Config`, as `docker build` sends them). Progress lines are
//! the build's typed events (`build`), then `result` or `error`.

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::TryStreamExt;
use mvm_api::images::Progress;
use mvm_api::ErrorCode;
use mvm_builder::context::Context;
use mvm_builder::progress::Event;
use mvm_builder::vm::{RuntimeExecutor, StepNetwork, BUILD_HOSTNAME};
use mvm_builder::{BaseImages, BuildError, BuildOptions, Builder};
use mvm_images::Store;
use mvm_runtime::BootNet;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::io::{StreamReader, SyncIoBridge};

use super::{ApiResult, Error, Query};
use crate::manager::Manager;
use crate::network::{SandboxNet, Who, DEFAULT_NETWORK, NONE_NETWORK};
use crate::registry::{self, ClientAuth, PullSpec};
use crate::Daemon;

type D = State<Arc<Daemon>>;

/// A JSON object of strings from a query parameter.
fn string_map(q: &Query, key: &str) -> ApiResult<BTreeMap<String, String>> {
    match q.get(key).filter(|v| !v.is_empty()) {
        None => Ok(BTreeMap::new()),
        Some(v) => serde_json::from_str(v).map_err(|e| {
            Error::new(
                ErrorCode::BadRequest,
                format!("query parameter {key} must be a JSON object of strings: {e}"),
            )
        }),
    }
}

fn options(q: &Query) -> ApiResult<BuildOptions> {
    Ok(BuildOptions {
        dockerfile: q
            .get("dockerfile")
            .filter(|v| !v.is_empty())
            .map(str::to_string),
        build_args: string_map(q, "buildargs")?,
        labels: string_map(q, "labels")?,
        target: q
            .get("target")
            .filter(|v| !v.is_empty())
            .map(str::to_string),
        tags: q.all("t"),
        no_cache: q.flag("nocache", false)?,
        ..Default::default()
    })
}

fn code_of(e: &BuildError) -> ErrorCode {
    match e {
        BuildError::Store(s) => super::images::store_code(s),
        BuildError::Io { .. } => ErrorCode::Internal,
        _ => ErrorCode::BadRequest,
    }
}

/// A build's `FROM` of an image the store lacks: pulled with the build
/// client's credentials (`X-Registry-Config`), as `docker build` does, its
/// progress shown in the FROM step.
struct Puller {
    store: Store,
    auth: ClientAuth,
    handle: tokio::runtime::Handle,
}

impl BaseImages for Puller {
    fn fetch(&self, reference: &str, progress: &mut dyn FnMut(&str)) -> Result<(), String> {
        let r = registry::parse_reference(reference).map_err(|e| e.message)?;
        let mut spec = PullSpec::new(r);
        // Docker treats registries on the loopback as insecure (plain
        // HTTP allowed); nothing else may be.
        spec.insecure = mvm_images::registry::host::is_loopback(spec.reference.domain());
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let (store, auth) = (self.store.clone(), self.auth.clone());
        let task = self.handle.spawn(async move {
            let sink = move |p: Progress| {
                let line = match p {
                    Progress::Status { message } => message,
                    Progress::Done { id, message } => format!("{id}: {message}"),
                    _ => return,
                };
                let _ = tx.send(line);
            };
            registry::ensure_image(&store, &spec, &auth, &sink).await
        });
        // The pull runs on the daemon's runtime; this (blocking) thread
        // shows its progress as it comes, until the sender is gone.
        for line in rx {
            progress(&line);
        }
        match self.handle.block_on(task) {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.message),
            Err(e) => Err(format!("the pull failed: {e}")),
        }
    }
}

/// The `network` parameter: `default` (or `bridge`, or absent) is the
/// default network, `none` is `lo` only, anything else a user network
/// that must exist. `host` networking does not exist for a microVM.
fn build_network(d: &Daemon, q: &Query) -> ApiResult<String> {
    let net = match q.get("network").filter(|v| !v.is_empty()) {
        None | Some("default") | Some(DEFAULT_NETWORK) => DEFAULT_NETWORK,
        Some(NONE_NETWORK) => NONE_NETWORK,
        Some("host") => {
            return Err(Error::new(
                ErrorCode::BadRequest,
                "--network host: a RUN step is a microVM and cannot share the host's network; use default, none or a network's name",
            ))
        }
        Some(other) => other,
    };
    d.manager
        .networks()
        .check_exists(d.manager.db(), net)
        .map_err(|e| Error::new(e.code, format!("--network: {}", e.message)))?;
    Ok(net.to_string())
}

/// A build's RUN steps on mvmd's networks: an endpoint per step (TAP,
/// address, the network's rules; no DNS name), made before the step's
/// microVM boots and removed after it ended. Its records live in the
/// database like a sandbox's, so a step whose mvmd was killed is cleaned
/// up at the next start ([`crate::network::Networks::detach_orphans`]).
struct StepNet {
    manager: Arc<Manager>,
    network: String,
    handle: tokio::runtime::Handle,
}

impl std::fmt::Debug for StepNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepNet")
            .field("network", &self.network)
            .finish()
    }
}

impl StepNetwork for StepNet {
    fn attach(&self, id: &str) -> Result<BootNet, String> {
        let settings = SandboxNet {
            network: self.network.clone(),
            ..Default::default()
        };
        let who = Who {
            id,
            name: &id[..12],
            hostname: BUILD_HOSTNAME,
            resolvable: false,
        };
        let m = &self.manager;
        let a = self
            .handle
            .block_on(m.networks().attach(m.db(), who, &settings))
            .map_err(|e| e.message)?;
        for w in &a.warnings {
            tracing::warn!(step = %id, "RUN step: {w}");
        }
        Ok(a.boot)
    }

    fn detach(&self, id: &str) {
        let m = &self.manager;
        if let Err(e) = self.handle.block_on(m.networks().detach(m.db(), id)) {
            tracing::warn!(step = %id, "releasing a RUN step's network endpoint: {}", e.message);
        }
    }
}

pub async fn build(State(d): D, headers: HeaderMap, q: Query, body: Body) -> ApiResult<Response> {
    let opts = options(&q)?;
    let network = build_network(&d, &q)?;
    let step_net = Arc::new(StepNet {
        manager: d.manager.clone(),
        network,
        handle: tokio::runtime::Handle::current(),
    });
    let auth = ClientAuth::from_headers(&headers)?;
    let handle = tokio::runtime::Handle::current();
    let runtime = d.manager.runtime().clone();
    let store = runtime.store().clone();
    let stream = body.into_data_stream().map_err(io::Error::other);
    let reader = SyncIoBridge::new(StreamReader::new(stream));
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, io::Error>>(64);
    let line = |p: &Progress| {
        let mut v = serde_json::to_vec(p).unwrap_or_default();
        v.push(b'\n');
        Ok(Bytes::from(v))
    };
    tokio::task::spawn_blocking(move || {
        let send = |p: Progress| {
            let _ = tx.blocking_send(line(&p));
        };
        let tmp = store.root().join("tmp");
        let result = (|| -> Result<serde_json::Value, (ErrorCode, String)> {
            let ctx = Context::from_tar(reader, &tmp)
                .map_err(|e| (ErrorCode::BadRequest, e.to_string()))?;
            let exec = RuntimeExecutor::new(runtime).with_network(step_net);
            let puller = Puller {
                store: store.clone(),
                auth,
                handle,
            };
            let progress = |e: &Event| send(Progress::Build { event: e.clone() });
            let builder = Builder::new(store.clone(), Some(&exec), &progress)
                .map_err(|e| (code_of(&e), e.to_string()))?
                .with_base_images(&puller);
            let r = builder
                .build(&ctx, &opts)
                .map_err(|e| (code_of(&e), e.to_string()))?;
            Ok(serde_json::json!({
                "id": r.id.to_string(),
                "digest": r.digest.to_string(),
                "tags": r.tags,
                "steps": r.steps,
                "cached": r.cached,
            }))
        })();
        send(match result {
            Ok(value) => Progress::Result { value },
            Err((code, message)) => Progress::Error { code, message },
        });
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(ReceiverStream::new(rx)),
    )
        .into_response())
}
