//! Volumes in mvmd: Docker's `local` driver. The directories are the
//! runtime's ([`mvm_runtime::VolumeDirs`]); which volumes exist, their
//! labels and whether they are anonymous is mvmd's database (schema 3);
//! which sandboxes use one is read from the sandboxes' specs, so it can
//! never disagree with what a start mounts.

use std::collections::BTreeMap;

use mvm_api::volume::{
    parse_volumes_from, Volume, VolumeCreateRequest, VolumeList, VolumePruneResponse, VolumeUsage,
};
use mvm_api::{ApiError, ErrorCode};
use mvm_runtime::{ImportMode, MountSpec, SandboxSpec, Status, VolumeKind};

use crate::db::VolumeRow;
use crate::manager::{now, Manager, Result};

fn err(code: ErrorCode, msg: impl Into<String>) -> ApiError {
    ApiError::new(code, msg)
}

pub(crate) fn vol_err(e: mvm_runtime::VolumeError) -> ApiError {
    let code = if e.is_not_empty() {
        ErrorCode::Conflict
    } else if e.is_invalid() {
        ErrorCode::BadRequest
    } else {
        ErrorCode::Internal
    };
    err(code, e.to_string())
}

/// The volume filters of list and prune (Docker's `--filter`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Filters {
    /// `name=SUBSTRING`.
    pub name: Vec<String>,
    /// `label=KEY` or `label=KEY=VALUE`.
    pub label: Vec<(String, Option<String>)>,
    /// `dangling=true|false`: used by no sandbox.
    pub dangling: Option<bool>,
    /// `driver=local`.
    pub driver: Vec<String>,
}

impl Filters {
    /// Parse `KEY=VALUE` filter strings; an unknown key is refused.
    pub fn parse(values: &[String]) -> std::result::Result<Self, String> {
        let mut f = Self::default();
        for v in values {
            let (k, val) = v.split_once('=').ok_or_else(|| {
                format!("filter {v:?} is not KEY=VALUE (keys: name, label, dangling, driver)")
            })?;
            match k {
                "name" => f.name.push(val.to_string()),
                "label" => f.label.push(match val.split_once('=') {
                    Some((a, b)) => (a.to_string(), Some(b.to_string())),
                    None => (val.to_string(), None),
                }),
                "dangling" => {
                    f.dangling = Some(match val {
                        "true" | "1" => true,
                        "false" | "0" => false,
                        _ => return Err(format!("filter dangling={val:?}: use true or false")),
                    })
                }
                "driver" => f.driver.push(val.to_string()),
                _ => {
                    return Err(format!(
                        "unknown volume filter {k:?}; use name, label, dangling or driver"
                    ))
                }
            }
        }
        Ok(f)
    }

    fn matches(&self, v: &VolumeRow, users: usize) -> bool {
        (self.name.is_empty() || self.name.iter().any(|n| v.name.contains(n.as_str())))
            && self.label.iter().all(|(k, val)| match val {
                Some(val) => v.labels.get(k) == Some(val),
                None => v.labels.contains_key(k),
            })
            && self.dangling.is_none_or(|d| d == (users == 0))
            && (self.driver.is_empty() || self.driver.contains(&v.driver))
    }
}

impl Manager {
    /// Names of the sandboxes (any state) whose mounts use volume `name`.
    pub fn volume_users(&self, name: &str) -> Vec<String> {
        let mut users: Vec<String> = self
            .entries()
            .iter()
            .map(|e| e.snapshot().spec)
            .filter(|s| s.mounts.iter().any(|m| m.volume_name() == Some(name)))
            .map(|s| s.name)
            .collect();
        users.sort();
        users
    }

    fn volume_view(&self, v: &VolumeRow, size: bool) -> Volume {
        let dirs = self.runtime().volumes();
        let mountpoint = match dirs.kind(&v.name) {
            Some(VolumeKind::Block) => dirs.block_image(&v.name),
            _ => dirs.data(&v.name),
        };
        Volume {
            name: v.name.clone(),
            driver: v.driver.clone(),
            mountpoint: mountpoint.display().to_string(),
            created_at: v.created.clone(),
            labels: v.labels.clone(),
            options: v.options.clone(),
            scope: "local".into(),
            anonymous: v.anonymous,
            usage_data: size.then(|| VolumeUsage {
                size: dirs.size(&v.name),
                ref_count: self.volume_users(&v.name).len() as u64,
                capacity: dirs.block_capacity(&v.name),
            }),
        }
    }

    fn volume_row(&self, name: &str) -> Result<VolumeRow> {
        self.db()
            .volumes()?
            .into_iter()
            .find(|v| v.name == name)
            .ok_or_else(|| {
                err(
                    ErrorCode::NotFound,
                    format!("no such volume: {name} (list volumes with mvctl volume ls)"),
                )
            })
    }

    /// `POST /v1/volumes`: make a volume (an existing one of the same
    /// driver is returned, as Docker does). Drivers: `local` (a
    /// directory, no options) and `block` (an ext4 image, `size=`
    /// required).
    pub async fn volume_create(&self, req: VolumeCreateRequest) -> Result<Volume> {
        let block = match req.driver.as_deref() {
            None | Some("") | Some("local") => false,
            Some("block") => true,
            Some(d) => {
                return Err(err(
                    ErrorCode::BadRequest,
                    format!("unknown volume driver {d:?}; use local (a directory, the default) or block (an ext4 disk: --driver block --opt size=1g)"),
                ))
            }
        };
        let name = req
            .name
            .filter(|n| !n.is_empty())
            .unwrap_or_else(mvm_runtime::names::new_id);
        let driver = if block { "block" } else { "local" };
        if let Ok(row) = self.volume_row(&name) {
            if row.driver != driver {
                return Err(err(
                    ErrorCode::Conflict,
                    format!(
                        "volume {name} exists with driver {}; remove it first (mvctl volume rm {name}) or choose another name",
                        row.driver
                    ),
                ));
            }
        }
        if !block {
            if let Some(k) = req.driver_opts.keys().next() {
                return Err(err(
                    ErrorCode::BadRequest,
                    format!("the local driver takes no options (got {k:?}); drop --opt"),
                ));
            }
            self.ensure_volume(&name, req.labels, false).await?;
            return Ok(self.volume_view(&self.volume_row(&name)?, false));
        }
        if let Some(k) = req.driver_opts.keys().find(|k| *k != "size") {
            return Err(err(
                ErrorCode::BadRequest,
                format!(
                    "the block driver takes the option size only (got {k:?}), e.g. --opt size=1g"
                ),
            ));
        }
        let Some(size) = req.driver_opts.get("size") else {
            return Err(err(
                ErrorCode::BadRequest,
                "the block driver needs a size: --opt size=SIZE (e.g. size=1g, 16m to 16t)",
            ));
        };
        let bytes = mvm_runtime::volume::parse_block_size(size).map_err(vol_err)?;
        mvm_runtime::volume::validate_name(&name).map_err(vol_err)?;
        let dirs = self.runtime().volumes();
        let n = name.clone();
        tokio::task::spawn_blocking(move || dirs.create_block(&n, bytes))
            .await
            .map_err(|e| err(ErrorCode::Internal, e.to_string()))?
            .map_err(vol_err)?;
        self.db().insert_volume(&VolumeRow {
            name: name.clone(),
            created: now(),
            driver: "block".into(),
            labels: req.labels,
            options: [("size".to_string(), size.clone())].into(),
            anonymous: false,
        })?;
        Ok(self.volume_view(&self.volume_row(&name)?, true))
    }

    /// Refuse a create request that mounts one block volume twice: two
    /// disks on one image would be two writers of one ext4 in one guest
    /// (and the second VMM lock on it fails).
    pub fn check_block_mounts(&self, mounts: &[MountSpec]) -> Result<()> {
        let dirs = self.runtime().volumes();
        let mut seen = std::collections::HashSet::new();
        for name in mounts.iter().filter_map(MountSpec::volume_name) {
            if dirs.kind(name) == Some(VolumeKind::Block) && !seen.insert(name) {
                return Err(err(
                    ErrorCode::BadRequest,
                    format!("block volume {name} is mounted twice; a block volume is one disk: mount it once (a directory volume can be mounted at several paths)"),
                ));
            }
        }
        Ok(())
    }

    /// Why sandbox `spec` may not start now: a block volume it mounts is
    /// in use by another running sandbox, and one of the two would write
    /// (a block volume has one writer, or any number of readers). The VMM's
    /// lock on the image refuses it too; this names the other sandbox
    /// before anything boots.
    pub fn block_volume_conflict(&self, spec: &SandboxSpec) -> Option<String> {
        let dirs = self.runtime().volumes();
        for m in &spec.mounts {
            let MountSpec::Volume {
                name, read_only, ..
            } = m
            else {
                continue;
            };
            if dirs.kind(name) != Some(VolumeKind::Block) {
                continue;
            }
            for r in self.entries().iter().map(|e| e.snapshot()) {
                if r.spec.id == spec.id
                    || !matches!(r.state.status, Status::Running | Status::Restarting)
                {
                    continue;
                }
                let other_writes = r.spec.mounts.iter().any(|o| {
                    matches!(o, MountSpec::Volume { name: n, read_only: false, .. } if n == name)
                });
                let other_reads = r.spec.mounts.iter().any(|o| o.volume_name() == Some(name));
                if other_writes || (other_reads && !read_only) {
                    return Some(format!(
                        "block volume {name} is in use by running sandbox {}{}; a block volume has one writer at a time: stop {} first (mvctl stop {}), or use a directory volume (the local driver) to share data between running sandboxes",
                        r.spec.name,
                        if other_writes { "" } else { " (read-only)" },
                        r.spec.name,
                        r.spec.name,
                    ));
                }
            }
        }
        None
    }

    /// Make volume `name` (directory and row) unless it exists.
    async fn ensure_volume(
        &self,
        name: &str,
        labels: BTreeMap<String, String>,
        anonymous: bool,
    ) -> Result<()> {
        let dirs = self.runtime().volumes();
        let n = name.to_string();
        tokio::task::spawn_blocking(move || dirs.create(&n))
            .await
            .map_err(|e| err(ErrorCode::Internal, e.to_string()))?
            .map_err(vol_err)?;
        self.db().insert_volume(&VolumeRow {
            name: name.to_string(),
            created: now(),
            driver: "local".into(),
            labels,
            options: BTreeMap::new(),
            anonymous,
        })?;
        Ok(())
    }

    /// Record the volumes a new sandbox's spec uses (the runtime made
    /// their directories), anonymous ones marked so.
    pub async fn record_volumes(&self, spec: &SandboxSpec) -> Result<()> {
        for m in &spec.mounts {
            if let MountSpec::Volume {
                name, anonymous, ..
            } = m
            {
                self.ensure_volume(name, BTreeMap::new(), *anonymous)
                    .await?;
            }
        }
        Ok(())
    }

    /// `GET /v1/volumes`.
    pub fn volume_list(&self, filters: &Filters, size: bool) -> Result<VolumeList> {
        let volumes = self
            .db()
            .volumes()?
            .into_iter()
            .filter(|v| filters.matches(v, self.volume_users(&v.name).len()))
            .map(|v| self.volume_view(&v, size))
            .collect();
        Ok(VolumeList {
            volumes,
            warnings: vec![],
        })
    }

    /// `GET /v1/volumes/{name}`.
    pub fn volume_inspect(&self, name: &str) -> Result<Volume> {
        Ok(self.volume_view(&self.volume_row(name)?, true))
    }

    /// `DELETE /v1/volumes/{name}`: refused while a sandbox uses it;
    /// `force` only makes a missing volume no error (as Docker's).
    pub async fn volume_remove(&self, name: &str, force: bool) -> Result<()> {
        match self.volume_row(name) {
            Ok(_) => {}
            Err(e) if force && e.code == ErrorCode::NotFound => return Ok(()),
            Err(e) => return Err(e),
        }
        let users = self.volume_users(name);
        if !users.is_empty() {
            return Err(err(
                ErrorCode::Conflict,
                format!(
                    "volume {name} is in use by sandbox {}; remove {} first (mvctl rm)",
                    users.join(", "),
                    if users.len() == 1 { "it" } else { "them" }
                ),
            ));
        }
        self.delete_volume(name).await
    }

    async fn delete_volume(&self, name: &str) -> Result<()> {
        let dirs = self.runtime().volumes();
        let n = name.to_string();
        tokio::task::spawn_blocking(move || dirs.remove(&n))
            .await
            .map_err(|e| err(ErrorCode::Internal, e.to_string()))?
            .map_err(vol_err)?;
        self.db().delete_volume(name)?;
        tracing::info!(volume = name, "volume removed");
        Ok(())
    }

    /// Before `GET /v1/volumes/{name}/export` streams: the volume exists
    /// (a clean 404 rather than a cut stream). A volume in use is exported
    /// as it is at that moment, file by file, without a snapshot
    /// (`mvm_runtime::volume`, Backup and restore).
    pub fn volume_export_check(&self, name: &str) -> Result<()> {
        self.volume_row(name)?;
        self.runtime().volumes().check_export(name).map_err(vol_err)
    }

    /// Before `POST /v1/volumes/{name}/import` reads its body: the name
    /// is valid; an existing volume is used by no running sandbox (its
    /// virtio-fs backend holds the directory the import would swap out)
    /// and is empty unless `force` (then its content is replaced whole).
    pub fn volume_import_check(&self, name: &str, force: bool) -> Result<ImportMode> {
        mvm_runtime::volume::validate_name(name).map_err(vol_err)?;
        let mode = if force {
            ImportMode::Replace
        } else {
            ImportMode::New
        };
        let running: Vec<String> = self
            .entries()
            .iter()
            .map(|e| e.snapshot())
            .filter(|r| matches!(r.state.status, Status::Running | Status::Restarting))
            .filter(|r| r.spec.mounts.iter().any(|m| m.volume_name() == Some(name)))
            .map(|r| r.spec.name)
            .collect();
        if !running.is_empty() {
            return Err(err(
                ErrorCode::Conflict,
                format!(
                    "volume {name} is in use by running sandbox {}; stop it first (mvctl stop), since a running sandbox keeps the old content open",
                    running.join(", ")
                ),
            ));
        }
        self.runtime()
            .volumes()
            .check_import(name, mode)
            .map_err(vol_err)?;
        Ok(mode)
    }

    /// After a successful import: the volume is recorded (a new one with
    /// no labels; an existing one keeps its row).
    pub async fn volume_import_done(&self, name: &str) -> Result<Volume> {
        self.ensure_volume(name, BTreeMap::new(), false).await?;
        Ok(self.volume_view(&self.volume_row(name)?, true))
    }

    /// `mounts` (a create request's) with the volumes and bind mounts of
    /// the `--volumes-from` sandboxes added, Docker's way: same targets,
    /// the mode forced by `:ro`/`:rw` or kept; a target `mounts` already
    /// has is left to it; tmpfs mounts are not shared (they are the
    /// source guest's memory). An unknown sandbox, or two sources that
    /// mount different things on one target, is a bad request naming them
    /// (not a 404, which `mvctl run` would read as a missing image).
    pub fn add_volumes_from(
        &self,
        from: &[String],
        mut mounts: Vec<MountSpec>,
    ) -> Result<Vec<MountSpec>> {
        use mvm_protocol::launch::normalize_target;
        let taken: std::collections::HashSet<String> = mounts
            .iter()
            .map(|m| normalize_target(m.target()))
            .collect();
        // (mount, normalised target, the --volumes-from value it came from)
        let mut added: Vec<(MountSpec, String, &str)> = Vec::new();
        for v in from {
            let (key, mode) = parse_volumes_from(v).map_err(|m| err(ErrorCode::BadRequest, m))?;
            let source = self.get(key).map_err(|e| {
                err(
                    ErrorCode::BadRequest,
                    format!(
                        "--volumes-from {v}: {} (list sandboxes with mvctl ps -a)",
                        e.message
                    ),
                )
            })?;
            for mut m in source.snapshot().spec.mounts {
                match &mut m {
                    MountSpec::Bind { read_only, .. } | MountSpec::Volume { read_only, .. } => {
                        if let Some(ro) = mode {
                            *read_only = ro;
                        }
                    }
                    MountSpec::Tmpfs(_) => continue,
                }
                let target = normalize_target(m.target());
                if taken.contains(&target) {
                    continue;
                }
                match added.iter().find(|(_, t, _)| *t == target) {
                    Some((same, _, _)) if *same == m => {}
                    Some((_, _, other)) => {
                        return Err(err(
                            ErrorCode::BadRequest,
                            format!(
                                "--volumes-from {other} and --volumes-from {v} both mount {target}, differently; mount one of them there yourself (-v) or drop one --volumes-from"
                            ),
                        ))
                    }
                    None => added.push((m, target, v)),
                }
            }
        }
        mounts.extend(added.into_iter().map(|(m, _, _)| m));
        Ok(mounts)
    }

    /// `POST /v1/volumes/prune`: remove unused volumes matching
    /// `filters`; anonymous ones only unless `all` (Docker's default).
    pub async fn volume_prune(&self, filters: &Filters, all: bool) -> Result<VolumePruneResponse> {
        let mut out = VolumePruneResponse::default();
        for v in self.db().volumes()? {
            if (!all && !v.anonymous) || !filters.matches(&v, self.volume_users(&v.name).len()) {
                continue;
            }
            if !self.volume_users(&v.name).is_empty() {
                continue;
            }
            let size = self.runtime().volumes().size(&v.name);
            self.delete_volume(&v.name).await?;
            out.space_reclaimed += size;
            out.volumes_deleted.push(v.name);
        }
        Ok(out)
    }

    /// After sandbox `spec` is gone: remove its anonymous volumes no other
    /// sandbox uses (`rm -v`, `--rm`).
    pub async fn remove_anonymous_volumes(&self, spec: &SandboxSpec) {
        for m in &spec.mounts {
            if let MountSpec::Volume {
                name,
                anonymous: true,
                ..
            } = m
            {
                if self.volume_users(name).is_empty() {
                    if let Err(e) = self.delete_volume(name).await {
                        tracing::warn!(volume = %name, "removing an anonymous volume: {}", e.message);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_and_match_like_dockers() {
        let f = Filters::parse(&[
            "name=da".into(),
            "label=env=prod".into(),
            "label=team".into(),
            "dangling=true".into(),
        ])
        .unwrap();
        let v = VolumeRow {
            name: "data".into(),
            created: "now".into(),
            driver: "local".into(),
            labels: [
                ("env".to_string(), "prod".to_string()),
                ("team".into(), "".into()),
            ]
            .into(),
            options: BTreeMap::new(),
            anonymous: false,
        };
        assert!(f.matches(&v, 0));
        assert!(!f.matches(&v, 1), "in use: not dangling");
        let mut other = v.clone();
        other.labels.insert("env".into(), "dev".into());
        assert!(!f.matches(&other, 0));
        for bad in ["name", "dangling=maybe", "until=1h"] {
            assert!(Filters::parse(&[bad.to_string()]).is_err(), "{bad}");
        }
    }
}
