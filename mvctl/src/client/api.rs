//! One typed helper per endpoint of `docs/api.md`.

use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::Method;
use mvm_api::auth::{REGISTRY_AUTH_HEADER, REGISTRY_CONFIG_HEADER};
use mvm_api::exec::{ExecCreateRequest, ExecCreateResponse, ExecInfo, Stats, TopResponse};
use mvm_api::images::{
    ImageSummary, LoginRequest, LoginResponse, Progress, TagRequest, TransferRequest,
};
use mvm_api::logs::LogRecord;
use mvm_api::network::{
    NetworkConnectRequest, NetworkCreateRequest, NetworkCreateResponse, NetworkDisconnectRequest,
    NetworkInfo, NetworkPruneResponse,
};
use mvm_api::sandbox::{
    CreateRequest, CreateResponse, PruneResponse, SandboxInfo, SandboxSummary, WaitResponse,
};
use mvm_api::system::{DiskUsage, Info};
use serde_json::Value;

use super::{encode_segment, Body, Client, ClientError, NdjsonStream, Query, Result};

/// `wait?condition=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitCondition {
    /// Returns at once if the sandbox is not running.
    NotRunning,
    /// The next exit after the request.
    NextExit,
    /// Until the sandbox is removed (for `--rm`).
    Removed,
}

impl WaitCondition {
    fn as_str(self) -> &'static str {
        match self {
            WaitCondition::NotRunning => "not-running",
            WaitCondition::NextExit => "next-exit",
            WaitCondition::Removed => "removed",
        }
    }
}

/// Query of `GET /v1/sandboxes/{id}/logs`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogsOptions {
    /// Keep the stream open for new records while the sandbox runs.
    pub follow: bool,
    /// Only the last N records (all when `None`).
    pub tail: Option<u64>,
    /// Only records at or after this RFC 3339 time.
    pub since: Option<String>,
    /// Only records before this RFC 3339 time.
    pub until: Option<String>,
}

/// An answer that is either a progress stream or one JSON document (the
/// contract streams progress for long operations; a daemon may answer a
/// short one directly).
pub enum Answer {
    /// NDJSON progress; the last line is `result` or `error`.
    Progress(NdjsonStream<Progress>),
    /// A JSON document.
    Json(Value),
}

fn sandbox(id: &str) -> String {
    format!("/v1/sandboxes/{}", encode_segment(id))
}

fn network(id: &str) -> String {
    format!("/v1/networks/{}", encode_segment(id))
}

impl Client {
    /// `POST /v1/networks`.
    pub async fn network_create(
        &self,
        req: &NetworkCreateRequest,
    ) -> Result<NetworkCreateResponse> {
        self.json(Method::POST, "/v1/networks", Some(req)).await
    }

    /// `GET /v1/networks`.
    pub async fn networks(&self) -> Result<Vec<NetworkInfo>> {
        self.json::<(), _>(Method::GET, "/v1/networks", None).await
    }

    /// `GET /v1/networks/{id}`.
    pub async fn network_inspect(&self, id: &str) -> Result<NetworkInfo> {
        self.json::<(), _>(Method::GET, &network(id), None).await
    }

    /// `DELETE /v1/networks/{id}`.
    pub async fn network_remove(&self, id: &str) -> Result<()> {
        self.call::<()>(Method::DELETE, &network(id), None).await
    }

    /// `POST /v1/networks/{id}/connect`.
    pub async fn network_connect(&self, id: &str, req: &NetworkConnectRequest) -> Result<()> {
        self.call(Method::POST, &format!("{}/connect", network(id)), Some(req))
            .await
    }

    /// `POST /v1/networks/{id}/disconnect`.
    pub async fn network_disconnect(&self, id: &str, req: &NetworkDisconnectRequest) -> Result<()> {
        self.call(
            Method::POST,
            &format!("{}/disconnect", network(id)),
            Some(req),
        )
        .await
    }

    /// `POST /v1/networks/prune`.
    pub async fn network_prune(&self) -> Result<NetworkPruneResponse> {
        self.json::<(), _>(Method::POST, "/v1/networks/prune", None)
            .await
    }

    /// `GET /_ping`.
    pub async fn ping(&self) -> Result<()> {
        let resp = self
            .send(Method::GET, "/_ping", Body::empty(), None)
            .await?;
        super::read_limited(resp.into_body(), 4096, "GET /_ping", &self.host_str()).await?;
        Ok(())
    }

    /// `GET /v1/version` (shown as it comes).
    pub async fn version(&self) -> Result<Value> {
        self.json::<(), _>(Method::GET, "/v1/version", None).await
    }

    /// `GET /v1/info`.
    pub async fn info(&self) -> Result<Info> {
        self.json::<(), _>(Method::GET, "/v1/info", None).await
    }

    /// `GET /v1/system/df`.
    pub async fn system_df(&self) -> Result<DiskUsage> {
        self.json::<(), _>(Method::GET, "/v1/system/df", None).await
    }

    /// `POST /v1/system/prune`.
    pub async fn system_prune(&self) -> Result<PruneResponse> {
        self.json::<(), _>(Method::POST, "/v1/system/prune", None)
            .await
    }

    /// `POST /v1/sandboxes`.
    pub async fn create(&self, req: &CreateRequest) -> Result<CreateResponse> {
        self.json(Method::POST, "/v1/sandboxes", Some(req)).await
    }

    /// `GET /v1/sandboxes`; `labels` are `key=value` or `key` filters.
    pub async fn list(&self, all: bool, labels: &[String]) -> Result<Vec<SandboxSummary>> {
        let mut q = Query::new("/v1/sandboxes").flag("all", all);
        for l in labels {
            q = q.push("label", l);
        }
        self.json::<(), _>(Method::GET, &q.build(), None).await
    }

    /// `GET /v1/sandboxes/{id}`.
    pub async fn inspect(&self, id: &str) -> Result<SandboxInfo> {
        self.json::<(), _>(Method::GET, &sandbox(id), None).await
    }

    /// `GET /v1/sandboxes/{id}`, as the daemon wrote it (for printing, so
    /// that fields this client does not know yet are shown too).
    pub async fn inspect_raw(&self, id: &str) -> Result<Value> {
        self.json::<(), _>(Method::GET, &sandbox(id), None).await
    }

    /// `POST /v1/sandboxes/{id}/start`.
    pub async fn start(&self, id: &str) -> Result<()> {
        self.call::<()>(Method::POST, &format!("{}/start", sandbox(id)), None)
            .await
    }

    /// `POST /v1/sandboxes/{id}/stop`.
    pub async fn stop(&self, id: &str, timeout: Option<u64>) -> Result<()> {
        let q = Query::new(format!("{}/stop", sandbox(id)))
            .opt("timeout", timeout.map(|t| t.to_string()));
        self.call::<()>(Method::POST, &q.build(), None).await
    }

    /// `POST /v1/sandboxes/{id}/restart`.
    pub async fn restart(&self, id: &str, timeout: Option<u64>) -> Result<()> {
        let q = Query::new(format!("{}/restart", sandbox(id)))
            .opt("timeout", timeout.map(|t| t.to_string()));
        self.call::<()>(Method::POST, &q.build(), None).await
    }

    /// `POST /v1/sandboxes/{id}/kill`.
    pub async fn kill(&self, id: &str, signal: &str) -> Result<()> {
        let q = Query::new(format!("{}/kill", sandbox(id))).push("signal", signal);
        self.call::<()>(Method::POST, &q.build(), None).await
    }

    /// `POST /v1/sandboxes/{id}/start?checkpoint=NAME`.
    pub async fn start_from_checkpoint(&self, id: &str, checkpoint: &str) -> Result<()> {
        let q = Query::new(format!("{}/start", sandbox(id))).push("checkpoint", checkpoint);
        self.call::<()>(Method::POST, &q.build(), None).await
    }

    /// `POST /v1/sandboxes/{id}/checkpoints`.
    pub async fn checkpoint_create(
        &self,
        id: &str,
        req: &mvm_api::checkpoint::CheckpointCreateRequest,
    ) -> Result<mvm_api::checkpoint::Checkpoint> {
        self.json(
            Method::POST,
            &format!("{}/checkpoints", sandbox(id)),
            Some(req),
        )
        .await
    }

    /// `GET /v1/sandboxes/{id}/checkpoints`.
    pub async fn checkpoints(&self, id: &str) -> Result<Vec<mvm_api::checkpoint::Checkpoint>> {
        self.json::<(), _>(Method::GET, &format!("{}/checkpoints", sandbox(id)), None)
            .await
    }

    /// `DELETE /v1/sandboxes/{id}/checkpoints/{name}`.
    pub async fn checkpoint_remove(&self, id: &str, name: &str) -> Result<()> {
        let path = format!("{}/checkpoints/{}", sandbox(id), encode_segment(name));
        self.call::<()>(Method::DELETE, &path, None).await
    }

    /// `POST /v1/sandboxes/{id}/pause` or `.../unpause`.
    pub async fn pause(&self, id: &str, paused: bool) -> Result<()> {
        let verb = if paused { "pause" } else { "unpause" };
        self.call::<()>(Method::POST, &format!("{}/{verb}", sandbox(id)), None)
            .await
    }

    /// `POST /v1/sandboxes/{id}/wait`.
    pub async fn wait(&self, id: &str, condition: WaitCondition) -> Result<WaitResponse> {
        let q = Query::new(format!("{}/wait", sandbox(id))).push("condition", condition.as_str());
        self.json::<(), _>(Method::POST, &q.build(), None).await
    }

    /// `DELETE /v1/sandboxes/{id}`.
    pub async fn remove(&self, id: &str, force: bool, volumes: bool) -> Result<()> {
        let q = Query::new(sandbox(id))
            .flag("force", force)
            .flag("v", volumes);
        self.call::<()>(Method::DELETE, &q.build(), None).await
    }

    /// `GET /v1/sandboxes/{id}/logs`.
    pub async fn logs(&self, id: &str, o: &LogsOptions) -> Result<NdjsonStream<LogRecord>> {
        let q = Query::new(format!("{}/logs", sandbox(id)))
            .flag("follow", o.follow)
            .opt("tail", o.tail.map(|t| t.to_string()))
            .opt("since", o.since.as_deref())
            .opt("until", o.until.as_deref())
            .flag("stdout", true)
            .flag("stderr", true);
        self.ndjson(Method::GET, &q.build(), Body::empty(), None)
            .await
    }

    /// `POST /v1/volumes`.
    pub async fn volume_create(
        &self,
        req: &mvm_api::volume::VolumeCreateRequest,
    ) -> Result<mvm_api::volume::Volume> {
        self.json(Method::POST, "/v1/volumes", Some(req)).await
    }

    /// `GET /v1/volumes?filter=...`.
    pub async fn volumes(&self, filters: &[String]) -> Result<mvm_api::volume::VolumeList> {
        let mut q = Query::new("/v1/volumes");
        for f in filters {
            q = q.push("filter", f);
        }
        self.json::<(), _>(Method::GET, &q.build(), None).await
    }

    /// `GET /v1/volumes/{name}`, as the daemon wrote it.
    pub async fn volume_inspect(&self, name: &str) -> Result<Value> {
        let path = format!("/v1/volumes/{}", encode_segment(name));
        self.json::<(), _>(Method::GET, &path, None).await
    }

    /// `DELETE /v1/volumes/{name}?force=`.
    pub async fn volume_remove(&self, name: &str, force: bool) -> Result<()> {
        let q = Query::new(format!("/v1/volumes/{}", encode_segment(name))).flag("force", force);
        self.call::<()>(Method::DELETE, &q.build(), None).await
    }

    /// `GET /v1/volumes/{name}/export`: the tar stream as a body.
    pub async fn volume_export(&self, name: &str) -> Result<Incoming> {
        let path = format!("/v1/volumes/{}/export", encode_segment(name));
        Ok(self
            .send(Method::GET, &path, Body::empty(), None)
            .await?
            .into_body())
    }

    /// `POST /v1/volumes/{name}/import?check=true&force=`: whether mvmd
    /// would accept the import, asked before the body is sent (a refusal
    /// that arrives while a large body is still being written can be lost
    /// to a broken pipe).
    pub async fn volume_import_check(&self, name: &str, force: bool) -> Result<()> {
        let q = Query::new(format!("/v1/volumes/{}/import", encode_segment(name)))
            .flag("check", true)
            .flag("force", force);
        self.send(Method::POST, &q.build(), Body::empty(), None)
            .await
            .map(|_| ())
    }

    /// `POST /v1/volumes/{name}/import?force=` with a tar body.
    pub async fn volume_import(&self, name: &str, force: bool, tarball: Body) -> Result<Answer> {
        let q =
            Query::new(format!("/v1/volumes/{}/import", encode_segment(name))).flag("force", force);
        let resp = self
            .send(Method::POST, &q.build(), tarball, Some("application/x-tar"))
            .await?;
        self.answer(resp, "POST /v1/volumes/{name}/import").await
    }

    /// `POST /v1/volumes/prune?all=&filter=`.
    pub async fn volume_prune(
        &self,
        all: bool,
        filters: &[String],
    ) -> Result<mvm_api::volume::VolumePruneResponse> {
        let mut q = Query::new("/v1/volumes/prune").flag("all", all);
        for f in filters {
            q = q.push("filter", f);
        }
        self.json::<(), _>(Method::POST, &q.build(), None).await
    }

    /// `GET /v1/images`.
    pub async fn images(&self) -> Result<Vec<ImageSummary>> {
        self.json::<(), _>(Method::GET, "/v1/images", None).await
    }

    /// `GET /v1/images/inspect?ref=`.
    pub async fn image_inspect(&self, reference: &str) -> Result<Value> {
        let q = Query::new("/v1/images/inspect").push("ref", reference);
        self.json::<(), _>(Method::GET, &q.build(), None).await
    }

    /// `POST /v1/images/pull`, with the registry's credentials (an
    /// encoded `X-Registry-Auth` value) if any.
    pub async fn pull(&self, req: &TransferRequest, auth: Option<&str>) -> Result<Answer> {
        self.transfer("/v1/images/pull", req, auth).await
    }

    /// `POST /v1/images/push`, credentials as for [`Client::pull`].
    pub async fn push(&self, req: &TransferRequest, auth: Option<&str>) -> Result<Answer> {
        self.transfer("/v1/images/push", req, auth).await
    }

    async fn transfer(
        &self,
        path: &str,
        req: &TransferRequest,
        auth: Option<&str>,
    ) -> Result<Answer> {
        let what = format!("POST {path}");
        let body = serde_json::to_vec(req).map_err(|e| ClientError::Decode {
            what: format!("{what} (request)"),
            why: e.to_string(),
        })?;
        let mut extra = Vec::new();
        if let Some(a) = auth {
            let v = HeaderValue::from_str(a).map_err(|_| ClientError::Decode {
                what: format!("{what} (request)"),
                why: "the registry credentials are not a valid header value".into(),
            })?;
            extra.push((REGISTRY_AUTH_HEADER, v));
        }
        let resp = self
            .send_with(
                Method::POST,
                path,
                Body::full(body),
                Some("application/json"),
                &extra,
            )
            .await?;
        self.answer(resp, &what).await
    }

    /// `POST /v1/images/tag`.
    pub async fn tag(&self, req: &TagRequest) -> Result<()> {
        self.call(Method::POST, "/v1/images/tag", Some(req)).await
    }

    /// `DELETE /v1/images?ref=&force=`.
    pub async fn image_remove(&self, reference: &str, force: bool) -> Result<Value> {
        let q = Query::new("/v1/images")
            .push("ref", reference)
            .flag("force", force);
        self.json_or_null(Method::DELETE, &q.build()).await
    }

    /// `POST /v1/images/prune?all=`.
    pub async fn image_prune(&self, all: bool) -> Result<Value> {
        let q = Query::new("/v1/images/prune").flag("all", all);
        self.json_or_null(Method::POST, &q.build()).await
    }

    /// `POST /v1/images/load` with a docker-archive or OCI tarball.
    pub async fn load(&self, tarball: Body) -> Result<Answer> {
        let resp = self
            .send(
                Method::POST,
                "/v1/images/load",
                tarball,
                Some("application/x-tar"),
            )
            .await?;
        self.answer(resp, "POST /v1/images/load").await
    }

    /// `GET /v1/images/save?ref=..&format=`: the tarball as a body stream.
    pub async fn save(&self, references: &[String], format: &str) -> Result<Incoming> {
        let mut q = Query::new("/v1/images/save");
        for r in references {
            q = q.push("ref", r);
        }
        let q = q.push("format", format);
        Ok(self
            .send(Method::GET, &q.build(), Body::empty(), None)
            .await?
            .into_body())
    }

    /// `POST /v1/images/import?ref=` with a root filesystem tarball.
    pub async fn import(&self, reference: Option<&str>, tarball: Body) -> Result<Answer> {
        let q = Query::new("/v1/images/import").opt("ref", reference);
        let resp = self
            .send(Method::POST, &q.build(), tarball, Some("application/x-tar"))
            .await?;
        self.answer(resp, "POST /v1/images/import").await
    }

    /// `POST /v1/build?...` with the build context tarball; `path` is
    /// the path with its query.
    /// `POST /v1/build`, with the credentials for the base images'
    /// registries (`X-Registry-Config`).
    pub async fn build_image(
        &self,
        path: &str,
        context: Body,
        registry_config: Option<&str>,
    ) -> Result<Answer> {
        let mut extra = Vec::new();
        if let Some(c) = registry_config {
            let v = HeaderValue::from_str(c).map_err(|_| ClientError::Decode {
                what: "POST /v1/build (request)".into(),
                why: "the registry credentials are not a valid header value".into(),
            })?;
            extra.push((REGISTRY_CONFIG_HEADER, v));
        }
        let resp = self
            .send_with(
                Method::POST,
                path,
                context,
                Some("application/x-tar"),
                &extra,
            )
            .await?;
        self.answer(resp, "POST /v1/build").await
    }

    /// `POST /v1/sandboxes/{id}/exec`: the new exec session's id.
    pub async fn exec_create(&self, id: &str, req: &ExecCreateRequest) -> Result<String> {
        let r: ExecCreateResponse = self
            .json(Method::POST, &format!("{}/exec", sandbox(id)), Some(req))
            .await?;
        Ok(r.id)
    }

    /// `POST /v1/exec/{exec_id}/start`: the upgraded frame stream.
    pub async fn exec_start(&self, exec_id: &str) -> Result<super::Upgraded> {
        self.upgrade(
            Method::POST,
            &format!("/v1/exec/{}/start", encode_segment(exec_id)),
        )
        .await
    }

    /// `POST /v1/exec/{exec_id}/resize?h=&w=`.
    pub async fn exec_resize(&self, exec_id: &str, rows: u16, cols: u16) -> Result<()> {
        let q = Query::new(format!("/v1/exec/{}/resize", encode_segment(exec_id)))
            .push("h", rows.to_string())
            .push("w", cols.to_string());
        self.call::<()>(Method::POST, &q.build(), None).await
    }

    /// `GET /v1/exec/{exec_id}`.
    pub async fn exec_inspect(&self, exec_id: &str) -> Result<ExecInfo> {
        self.json::<(), _>(
            Method::GET,
            &format!("/v1/exec/{}", encode_segment(exec_id)),
            None,
        )
        .await
    }

    /// `POST /v1/sandboxes/{id}/attach`: the workload's output (and stdin
    /// if `stdin`) over an upgraded `mvm-stream` connection, until the
    /// run ends with an `exited` frame. Made before a start, it carries
    /// that start's run from its first byte.
    pub async fn attach(&self, id: &str, stdin: bool) -> Result<super::Upgraded> {
        let q = Query::new(format!("{}/attach", sandbox(id)))
            .flag("stdin", stdin)
            .flag("stdout", true)
            .flag("stderr", true)
            .flag("stream", true);
        self.upgrade(Method::POST, &q.build()).await
    }

    /// `POST /v1/sandboxes/{id}/resize?h=&w=`.
    pub async fn resize(&self, id: &str, rows: u16, cols: u16) -> Result<()> {
        let q = Query::new(format!("{}/resize", sandbox(id)))
            .push("h", rows.to_string())
            .push("w", cols.to_string());
        self.call::<()>(Method::POST, &q.build(), None).await
    }

    /// `GET /v1/sandboxes/{id}/top`.
    pub async fn top(&self, id: &str) -> Result<TopResponse> {
        self.json::<(), _>(Method::GET, &format!("{}/top", sandbox(id)), None)
            .await
    }

    /// `GET /v1/sandboxes/{id}/stats?stream=false`.
    pub async fn stats(&self, id: &str) -> Result<Stats> {
        let q = Query::new(format!("{}/stats", sandbox(id))).flag("stream", false);
        self.json::<(), _>(Method::GET, &q.build(), None).await
    }

    /// `GET /v1/sandboxes/{id}/archive?path=`: a tar stream of `path`.
    pub async fn archive_get(&self, id: &str, path: &str) -> Result<Incoming> {
        let q = Query::new(format!("{}/archive", sandbox(id))).push("path", path);
        Ok(self
            .send(Method::GET, &q.build(), Body::empty(), None)
            .await?
            .into_body())
    }

    /// `PUT /v1/sandboxes/{id}/archive?path=`: extract a tar into the
    /// existing directory `path`.
    pub async fn archive_put(&self, id: &str, path: &str, tar: Body) -> Result<()> {
        let q = Query::new(format!("{}/archive", sandbox(id))).push("path", path);
        let resp = self
            .send(Method::PUT, &q.build(), tar, Some("application/x-tar"))
            .await?;
        super::read_limited(
            resp.into_body(),
            super::MAX_JSON_BODY,
            "PUT archive",
            &self.host_str(),
        )
        .await?;
        Ok(())
    }

    /// `POST /v1/auth/login`: mvmd checks the credentials against the
    /// registry (and keeps nothing).
    pub async fn login(&self, req: &LoginRequest) -> Result<LoginResponse> {
        self.json(Method::POST, "/v1/auth/login", Some(req)).await
    }

    async fn json_or_null(&self, method: Method, path: &str) -> Result<Value> {
        let what = format!("{method} {}", path.split('?').next().unwrap_or(path));
        let resp = self.send(method, path, Body::empty(), None).await?;
        self.value_of(resp, &what).await
    }

    /// A JSON body, or `null` for an empty one (`204`).
    async fn value_of(&self, resp: hyper::Response<Incoming>, what: &str) -> Result<Value> {
        let bytes = super::read_limited(
            resp.into_body(),
            super::MAX_JSON_BODY,
            what,
            &self.host_str(),
        )
        .await?;
        if bytes.iter().all(|b| b.is_ascii_whitespace()) {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode {
            what: what.to_string(),
            why: e.to_string(),
        })
    }

    async fn answer(&self, resp: hyper::Response<Incoming>, what: &str) -> Result<Answer> {
        let ndjson = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| {
                ct.contains("ndjson") || ct.contains("json-seq") || ct.contains("stream")
            });
        if ndjson {
            return Ok(Answer::Progress(NdjsonStream::new(
                resp.into_body(),
                what.to_string(),
                self.host_str(),
            )));
        }
        Ok(Answer::Json(self.value_of(resp, what).await?))
    }
}
