//! Schema versions of the state database, and the steps between them.
//!
//! The version is SQLite's `user_version` (0 in a database that never set
//! it). Each step runs in one transaction together with the version bump,
//! so a crash mid-way leaves the database at the step before. Before the
//! first step on a database that has rows, a copy is written next to it
//! (`mvmd.db.v<N>.bak`, with `VACUUM INTO`): a migration must never lose
//! what is stored, and a user who goes back to an older mvmd has the file
//! it understands.
//!
//! | version | what |
//! | --- | --- |
//! | 0 | empty, or the first layout without a version |
//! | 1 | table `sandboxes (id, name, created, spec, state, internal)`; spec and state in the REST API's shapes, the intent a string (`stop`, `kill:N`) |
//! | 2 | the same table holding the runtime's records: spec with `process`, `hostname`, `labels`, `resources`, `lifecycle`; state without `running`; intents with their signal |
//! | 3 | table `volumes (name, created, driver, labels, options, anonymous)`; specs may hold `mounts` and `read_only_root` (absent in older rows: none) |
//! | 4 | tables `networks (id, name, spec)` and `endpoints (id, sandbox, network, spec, ports)`: mvm-net's `NetworkSpec`, `EndpointSpec` and `PortSpec`s as JSON; sandboxes' network settings in `internal.network` (absent: the default network) |

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, Transaction};
use serde_json::{json, Map, Value};

/// The version this mvmd writes.
pub const LATEST: u32 = 4;

/// Why a database could not be brought up to date.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    /// Written by a newer mvmd.
    #[error("the state database {path} has schema version {found}, newer than this mvmd understands ({LATEST}); run the newer mvmd, or move the file away to start empty (its sandboxes are then forgotten)")]
    TooNew {
        /// The database.
        path: PathBuf,
        /// Its version.
        found: u32,
    },
    /// SQLite failed.
    #[error("migrating the state database {path} to version {to}: {source}")]
    Sql {
        /// The database.
        path: PathBuf,
        /// The version being made.
        to: u32,
        /// Why.
        source: rusqlite::Error,
    },
    /// A row could not be converted.
    #[error("migrating the state database {path} to version {to}: row {id}: {message}; the database stays at version {} (a copy from before any step is at {path}.v{found}.bak)", to - 1)]
    Row {
        /// The database.
        path: PathBuf,
        /// The version it had when mvmd opened it.
        found: u32,
        /// The version being made.
        to: u32,
        /// The row.
        id: String,
        /// What was wrong.
        message: String,
    },
}

/// The schema version of `conn`.
pub fn version(conn: &Connection) -> rusqlite::Result<u32> {
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
}

/// Bring the database at `path` (open as `conn`) to [`LATEST`].
pub fn migrate(conn: &mut Connection, path: &Path) -> Result<(), MigrationError> {
    let sql = |to| {
        let path = path.to_path_buf();
        move |source| MigrationError::Sql { path, to, source }
    };
    let found = version(conn).map_err(sql(LATEST))?;
    if found > LATEST {
        return Err(MigrationError::TooNew {
            path: path.into(),
            found,
        });
    }
    if found < LATEST && has_rows(conn).map_err(sql(found + 1))? {
        let bak = format!("{}.v{found}.bak", path.display());
        let _ = std::fs::remove_file(&bak);
        conn.execute("VACUUM INTO ?1", params![bak])
            .map_err(sql(found + 1))?;
        tracing::info!(
            "backed up the state database (schema {found}) to {bak} before migrating it to {LATEST}"
        );
    }
    for to in found + 1..=LATEST {
        let tx = conn.transaction().map_err(sql(to))?;
        match to {
            1 => to_v1(&tx).map_err(sql(to))?,
            2 => to_v2(&tx, path, found)?,
            3 => to_v3(&tx).map_err(sql(to))?,
            4 => to_v4(&tx).map_err(sql(to))?,
            _ => unreachable!("a step for every version up to LATEST"),
        }
        tx.pragma_update(None, "user_version", to)
            .map_err(sql(to))?;
        tx.commit().map_err(sql(to))?;
        if found > 0 || to > 1 {
            tracing::info!("state database migrated to schema version {to}");
        }
    }
    Ok(())
}

fn has_rows(conn: &Connection) -> rusqlite::Result<bool> {
    let table: bool = conn.query_row(
        "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'sandboxes'",
        [],
        |r| r.get(0),
    )?;
    if !table {
        return Ok(false);
    }
    conn.query_row("SELECT count(*) > 0 FROM sandboxes", [], |r| r.get(0))
}

/// Version 1: the table (an existing unversioned database already has it).
fn to_v1(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS sandboxes (
            id TEXT PRIMARY KEY NOT NULL,
            name TEXT NOT NULL UNIQUE,
            created TEXT NOT NULL,
            spec TEXT NOT NULL,
            state TEXT NOT NULL,
            internal TEXT NOT NULL
        );",
    )
}

/// Version 3: volumes. Sandbox rows need no change: a spec without
/// `mounts` has none.
fn to_v3(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS volumes (
            name TEXT PRIMARY KEY NOT NULL,
            created TEXT NOT NULL,
            driver TEXT NOT NULL,
            labels TEXT NOT NULL,
            options TEXT NOT NULL,
            anonymous INTEGER NOT NULL
        );",
    )
}

/// Version 2: rows in the runtime's vocabulary.
fn to_v2(tx: &Transaction<'_>, path: &Path, found: u32) -> Result<(), MigrationError> {
    let sql = |source| MigrationError::Sql {
        path: path.into(),
        to: 2,
        source,
    };
    let rows: Vec<(String, String, String, String)> = {
        let mut stmt = tx
            .prepare("SELECT id, spec, state, internal FROM sandboxes")
            .map_err(sql)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .map_err(sql)?
            .collect::<Result<_, _>>()
            .map_err(sql)?;
        rows
    };
    for (id, spec, state, internal) in rows {
        let row_err = |message: String| MigrationError::Row {
            path: path.into(),
            found,
            to: 2,
            id: id.clone(),
            message,
        };
        let (spec, state, internal) = row_v1_to_v2(&spec, &state, &internal).map_err(row_err)?;
        tx.execute(
            "UPDATE sandboxes SET spec = ?2, state = ?3, internal = ?4 WHERE id = ?1",
            params![id, spec, state, internal],
        )
        .map_err(sql)?;
    }
    Ok(())
}

/// Version 4: networks and endpoints (mvm-net's records). Existing
/// sandboxes have no `internal.network` and so join the default network,
/// which mvmd creates at start.
fn to_v4(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS networks (
            id TEXT PRIMARY KEY NOT NULL,
            name TEXT NOT NULL UNIQUE,
            spec TEXT NOT NULL
        );
        CREATE TABLE IF NOT EXISTS endpoints (
            id TEXT PRIMARY KEY NOT NULL,
            sandbox TEXT NOT NULL,
            network TEXT NOT NULL,
            spec TEXT NOT NULL,
            ports TEXT NOT NULL
        );",
    )
}

fn parse(what: &str, s: &str) -> Result<Map<String, Value>, String> {
    match serde_json::from_str(s) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(format!("its {what} is not a JSON object")),
        Err(e) => Err(format!("its {what} is not JSON: {e}")),
    }
}

fn take(m: &mut Map<String, Value>, what: &str, key: &str) -> Result<Value, String> {
    m.remove(key)
        .ok_or_else(|| format!("its {what} has no field {key:?}"))
}

/// One row, version 1 to version 2: `(spec, state, internal)` as JSON.
pub fn row_v1_to_v2(
    spec: &str,
    state: &str,
    internal: &str,
) -> Result<(String, String, String), String> {
    let mut spec = parse("spec", spec)?;
    let mut process = match take(&mut spec, "spec", "process")? {
        Value::Object(m) => m,
        _ => return Err("its spec.process is not an object".into()),
    };
    let mut host = match take(&mut spec, "spec", "host")? {
        Value::Object(m) => m,
        _ => return Err("its spec.host is not an object".into()),
    };
    let scratch_mib = take(&mut spec, "spec", "scratch_mib")?;
    let stop_signal = take(&mut process, "spec.process", "stop_signal")?;
    let stop_timeout = take(&mut process, "spec.process", "stop_timeout")?;
    spec.insert(
        "hostname".into(),
        take(&mut process, "spec.process", "hostname")?,
    );
    spec.insert(
        "labels".into(),
        take(&mut process, "spec.process", "labels")?,
    );
    spec.insert(
        "resources".into(),
        json!({
            "vcpus": take(&mut host, "spec.host", "vcpus")?,
            "cpu_quota": host.remove("cpus").unwrap_or(Value::Null),
            "memory_mib": take(&mut host, "spec.host", "memory_mib")?,
            "scratch_mib": scratch_mib,
        }),
    );
    let signal_name = stop_signal.as_str().unwrap_or("SIGTERM").to_string();
    let timeout_secs = stop_timeout.as_u64().unwrap_or(10);
    spec.insert(
        "lifecycle".into(),
        json!({
            "restart_policy": take(&mut host, "spec.host", "restart_policy")?,
            "auto_remove": take(&mut host, "spec.host", "auto_remove")?,
            "stop_signal": stop_signal,
            "stop_timeout": stop_timeout,
        }),
    );
    spec.insert("process".into(), Value::Object(process));

    let mut state = parse("state", state)?;
    state.remove("running");

    let mut internal = parse("internal", internal)?;
    let intent = match internal.remove("intent") {
        None | Some(Value::Null) => json!({"intent": "none"}),
        Some(Value::String(s)) if s == "stop" => json!({
            "intent": "stop",
            "signal": mvm_protocol::agent::signal::parse(&signal_name).unwrap_or(libc::SIGTERM),
            "timeout_secs": timeout_secs,
        }),
        Some(Value::String(s)) if s.starts_with("kill:") => json!({
            "intent": "kill",
            "signal": s[5..].parse::<i32>().unwrap_or(libc::SIGKILL),
        }),
        Some(other) => return Err(format!("its intent {other} is not one mvmd wrote")),
    };
    internal.insert("intent".into(), intent);

    let s = |m: Map<String, Value>| Value::Object(m).to_string();
    Ok((s(spec), s(state), s(internal)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::{Db, DbError};
    use mvm_runtime::{ExitReason, Intent, RestartPolicy, Status};

    /// A database as mvmd wrote it before schema versions (version 0 on
    /// disk, the version 1 layout).
    fn v1_database(path: &Path) {
        let conn = Connection::open(path).unwrap();
        let tx = conn.unchecked_transaction().unwrap();
        to_v1(&tx).unwrap();
        tx.commit().unwrap();
        let spec = json!({
            "id": "a", "name": "web", "image": "busybox", "image_id": "sha256:x",
            "image_digest": "sha256:y", "root_disk": "/d/root.ext4",
            "process": {"entrypoint": [], "cmd": ["httpd", "-f"], "env": ["PATH=/bin"],
                "working_dir": "/", "user": "", "hostname": "a1b2", "labels": {"k": "v"},
                "tty": false, "open_stdin": true, "stop_signal": "SIGINT", "stop_timeout": 3},
            "host": {"vcpus": 2, "cpus": 1.5, "memory_mib": 256,
                "restart_policy": {"name": "on-failure", "maximum_retry_count": 4},
                "auto_remove": false},
            "scratch_mib": 10240
        });
        let state = json!({"status": "exited", "running": false, "pid": null, "exit_code": 130,
            "reason": "stopped", "error": null, "started_at": "t1", "finished_at": "t2",
            "oom_killed": false, "restart_count": 1});
        let internal = json!({"vmm": null, "manual_stop": true, "intent": "stop",
            "backoff_ms": 200, "exits": 3});
        conn.execute(
            "INSERT INTO sandboxes VALUES ('a', 'web', 'now', ?1, ?2, ?3)",
            params![spec.to_string(), state.to_string(), internal.to_string()],
        )
        .unwrap();
        let mut kill = spec.clone();
        kill["id"] = json!("b");
        kill["name"] = json!("killed");
        let internal = json!({"vmm": null, "manual_stop": true, "intent": "kill:2", "exits": 1});
        conn.execute(
            "INSERT INTO sandboxes VALUES ('b', 'killed', 'now', ?1, ?2, ?3)",
            params![kill.to_string(), state.to_string(), internal.to_string()],
        )
        .unwrap();
    }

    #[test]
    fn a_database_without_a_version_is_migrated_with_nothing_lost() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("mvmd.db");
        v1_database(&p);
        let db = Db::open(&p).unwrap();
        let mut rows = db.load().unwrap();
        rows.sort_by(|a, b| a.spec.id.cmp(&b.spec.id));
        let r = &rows[0];
        assert_eq!(r.spec.process.cmd, ["httpd", "-f"]);
        assert!(r.spec.process.open_stdin);
        assert_eq!(r.spec.hostname, "a1b2");
        assert_eq!(r.spec.labels["k"], "v");
        assert_eq!(
            (
                r.spec.resources.vcpus,
                r.spec.resources.cpu_quota,
                r.spec.resources.memory_mib
            ),
            (2, Some(1.5), 256)
        );
        assert_eq!(r.spec.resources.scratch_mib, 10240);
        assert_eq!(
            r.spec.lifecycle.restart_policy,
            RestartPolicy::OnFailure {
                maximum_retry_count: 4
            }
        );
        assert_eq!(
            (
                r.spec.lifecycle.stop_signal.as_str(),
                r.spec.lifecycle.stop_timeout
            ),
            ("SIGINT", 3)
        );
        assert_eq!(
            (r.state.status, r.state.exit_code, r.state.reason),
            (Status::Exited, Some(130), Some(ExitReason::Stopped))
        );
        assert_eq!(r.state.restart_count, 1);
        assert_eq!(
            r.internal.intent,
            Intent::Stop {
                signal: libc::SIGINT,
                timeout_secs: 3
            }
        );
        assert_eq!((r.internal.backoff_ms, r.internal.exits), (Some(200), 3));
        assert_eq!(rows[1].internal.intent, Intent::Kill { signal: 2 });
        // The old file is kept next to it, still at the old version.
        let bak = Connection::open(d.path().join("mvmd.db.v0.bak")).unwrap();
        assert_eq!(version(&bak).unwrap(), 0);
        let n: i64 = bak
            .query_row("SELECT count(*) FROM sandboxes", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 2);
        drop(db);
        // Opening again is a no-op.
        let db = Db::open(&p).unwrap();
        assert_eq!(db.load().unwrap().len(), 2);
        assert_eq!(version(&Connection::open(&p).unwrap()).unwrap(), LATEST);
    }

    #[test]
    fn a_version_2_database_gains_volumes_and_networks_and_keeps_its_sandboxes() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("mvmd.db");
        {
            let mut c = Connection::open(&p).unwrap();
            let tx = c.transaction().unwrap();
            to_v1(&tx).unwrap();
            tx.pragma_update(None, "user_version", 2).unwrap();
            tx.commit().unwrap();
            // A row as mvmd 2 wrote it: no mounts in its spec.
            let row = crate::db::tests::row("a", "old");
            let mut spec = serde_json::to_value(&row.spec).unwrap();
            spec.as_object_mut().unwrap().remove("mounts");
            c.execute(
                "INSERT INTO sandboxes (id, name, created, spec, state, internal) VALUES ('a', 'old', 'now', ?1, ?2, '{}')",
                params![spec.to_string(), serde_json::to_string(&row.state).unwrap()],
            )
            .unwrap();
        }
        let db = Db::open(&p).unwrap();
        let rows = db.load().unwrap();
        assert_eq!(rows.len(), 1);
        assert!(rows[0].spec.mounts.is_empty() && !rows[0].spec.read_only_root);
        assert!(db.volumes().unwrap().is_empty());
        let v = crate::db::VolumeRow {
            name: "data".into(),
            created: "now".into(),
            driver: "local".into(),
            labels: [("k".to_string(), "v".to_string())].into(),
            options: Default::default(),
            anonymous: false,
        };
        assert!(db.insert_volume(&v).unwrap());
        assert!(
            !db.insert_volume(&v).unwrap(),
            "a second insert keeps the first"
        );
        assert_eq!(db.volumes().unwrap(), vec![v]);
        db.delete_volume("data").unwrap();
        assert!(db.volumes().unwrap().is_empty());
        assert!(db.networks().unwrap().is_empty() && db.endpoints().unwrap().is_empty());
        drop(db);
        assert_eq!(version(&Connection::open(&p).unwrap()).unwrap(), LATEST);
        assert!(d.path().join("mvmd.db.v2.bak").exists());
    }

    #[test]
    fn a_new_database_starts_at_the_latest_version_without_a_backup() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("mvmd.db");
        let db = Db::open(&p).unwrap();
        db.insert(&crate::db::tests::row("x", "n")).unwrap();
        drop(db);
        assert_eq!(version(&Connection::open(&p).unwrap()).unwrap(), LATEST);
        assert_eq!(
            std::fs::read_dir(d.path())
                .unwrap()
                .filter(|e| e
                    .as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .contains(".bak"))
                .count(),
            0
        );
    }

    #[test]
    fn newer_and_broken_databases_are_refused_untouched() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("mvmd.db");
        let c = Connection::open(&p).unwrap();
        c.pragma_update(None, "user_version", LATEST + 1).unwrap();
        drop(c);
        let e = Db::open(&p).err().unwrap();
        assert!(
            matches!(e, DbError::Migration(MigrationError::TooNew { found, .. }) if found == LATEST + 1),
            "{e}"
        );
        assert!(e.to_string().contains("newer mvmd"), "{e}");

        let p = d.path().join("broken.db");
        v1_database(&p);
        let c = Connection::open(&p).unwrap();
        c.execute(
            "UPDATE sandboxes SET spec = '{\"id\": \"a\"}' WHERE id = 'a'",
            [],
        )
        .unwrap();
        drop(c);
        let e = Db::open(&p).err().unwrap().to_string();
        assert!(e.contains("row a") && e.contains("process"), "{e}");
        assert!(
            e.contains("mvmd.db.v0.bak") || e.contains("broken.db.v0.bak"),
            "{e}"
        );
        // The failed step rolled back: version 1 (the layout the rows were
        // written in), rows as they were.
        let c = Connection::open(&p).unwrap();
        assert_eq!(version(&c).unwrap(), 1);
        let spec: String = c
            .query_row("SELECT spec FROM sandboxes WHERE id = 'b'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert!(spec.contains("\"host\""), "row b untouched: {spec}");
    }
}
