//! The state store: SQLite (bundled, so no system library), WAL mode, one
//! transaction per state change, so a crash at any point leaves either the
//! old or the new state of a sandbox, never half of each.
//!
//! Rows hold the runtime's records as JSON ([`SandboxSpec`], [`State`],
//! and mvmd's [`Internal`]), not the REST API's types. The schema has a
//! version (SQLite's `user_version`); [`migrations`] brings an older
//! database up to date when mvmd opens it, after a backup, and a database
//! from a newer mvmd is refused rather than misread.

pub mod migrations;

use std::path::Path;
use std::sync::Mutex;

use mvm_runtime::{Intent, SandboxSpec, State, VmmProcess};
use rusqlite::{params, Connection, ErrorCode as SqlCode, OptionalExtension};
use serde::{Deserialize, Serialize};

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot open the state database {path}: {source}")]
    Open {
        path: String,
        source: rusqlite::Error,
    },
    #[error("the name {0:?} is already in use by another sandbox; choose another name or remove that sandbox")]
    NameTaken(String),
    #[error("state database error: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("state database row {id} is corrupt: {source}")]
    Corrupt {
        id: String,
        source: serde_json::Error,
    },
    #[error(transparent)]
    Migration(#[from] migrations::MigrationError),
}

/// What mvmd keeps about a sandbox beyond the API's view.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Internal {
    /// The running VMM.
    #[serde(default)]
    pub vmm: Option<VmmProcess>,
    /// Stopped or killed by a user: restart policies hold off.
    #[serde(default)]
    pub manual_stop: bool,
    /// What mvmd asked of the running VMM (a stop or a kill, with its
    /// signal).
    #[serde(default)]
    pub intent: Intent,
    /// Current restart back-off, milliseconds.
    #[serde(default)]
    pub backoff_ms: Option<u64>,
    /// Runs that have ended so far (for `wait?condition=next-exit`).
    #[serde(default)]
    pub exits: u64,
    /// The sandbox's network settings (`--network`, `-p`, ...), and the
    /// address it had, kept for its next start.
    #[serde(default)]
    pub network: crate::network::SandboxNet,
}

/// One sandbox row.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Resolved spec (id, name, image, configs).
    pub spec: SandboxSpec,
    /// RFC 3339 creation time.
    pub created: String,
    /// API state.
    pub state: State,
    /// Daemon-internal state.
    pub internal: Internal,
}

/// The database handle (one connection; SQLite serialises writers anyway,
/// and every statement here is short).
pub struct Db {
    conn: Mutex<Connection>,
}

impl Db {
    /// Open (creating) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, DbError> {
        let open_err = |source| DbError::Open {
            path: path.display().to_string(),
            source,
        };
        let mut conn = Connection::open(path).map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open_err)?;
        migrations::migrate(&mut conn, path)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Insert a new sandbox; a taken name is [`DbError::NameTaken`].
    pub fn insert(&self, row: &Row) -> Result<(), DbError> {
        let r = self.conn().execute(
            "INSERT INTO sandboxes (id, name, created, spec, state, internal) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                row.spec.id,
                row.spec.name,
                row.created,
                json(&row.spec),
                json(&row.state),
                json(&row.internal),
            ],
        );
        match r {
            Ok(_) => Ok(()),
            Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == SqlCode::ConstraintViolation => {
                Err(DbError::NameTaken(row.spec.name.clone()))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Replace the state of sandbox `id` (one transaction).
    pub fn update(&self, id: &str, state: &State, internal: &Internal) -> Result<(), DbError> {
        self.conn().execute(
            "UPDATE sandboxes SET state = ?2, internal = ?3 WHERE id = ?1",
            params![id, json(state), json(internal)],
        )?;
        Ok(())
    }

    /// Delete sandbox `id`.
    pub fn delete(&self, id: &str) -> Result<(), DbError> {
        self.conn()
            .execute("DELETE FROM sandboxes WHERE id = ?1", params![id])?;
        Ok(())
    }

    /// Whether a row exists (tests and consistency checks).
    pub fn exists(&self, id: &str) -> Result<bool, DbError> {
        Ok(self
            .conn()
            .query_row("SELECT 1 FROM sandboxes WHERE id = ?1", params![id], |_| {
                Ok(())
            })
            .optional()?
            .is_some())
    }

    /// Every row.
    pub fn load(&self) -> Result<Vec<Row>, DbError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT id, created, spec, state, internal FROM sandboxes")?;
        let raw: Vec<(String, String, String, String, String)> = stmt
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })?
            .collect::<Result<_, _>>()?;
        raw.into_iter()
            .map(|(id, created, spec, state, internal)| {
                let corrupt = |source| DbError::Corrupt {
                    id: id.clone(),
                    source,
                };
                Ok(Row {
                    spec: serde_json::from_str(&spec).map_err(corrupt)?,
                    created,
                    state: serde_json::from_str(&state).map_err(corrupt)?,
                    internal: serde_json::from_str(&internal).map_err(corrupt)?,
                })
            })
            .collect()
    }
}

/// One volume (schema 3): what mvmd knows of it beyond its directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeRow {
    /// Name.
    pub name: String,
    /// RFC 3339 creation time.
    pub created: String,
    /// `local`.
    pub driver: String,
    /// User labels.
    pub labels: std::collections::BTreeMap<String, String>,
    /// Driver options.
    pub options: std::collections::BTreeMap<String, String>,
    /// Made for one sandbox.
    pub anonymous: bool,
}

impl Db {
    /// Record a volume; false (and nothing changed) when the name exists.
    pub fn insert_volume(&self, v: &VolumeRow) -> Result<bool, DbError> {
        let n = self.conn().execute(
            "INSERT OR IGNORE INTO volumes (name, created, driver, labels, options, anonymous) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![v.name, v.created, v.driver, json(&v.labels), json(&v.options), v.anonymous],
        )?;
        Ok(n == 1)
    }

    /// Forget a volume.
    pub fn delete_volume(&self, name: &str) -> Result<(), DbError> {
        self.conn()
            .execute("DELETE FROM volumes WHERE name = ?1", params![name])?;
        Ok(())
    }

    /// Every volume, by name.
    pub fn volumes(&self) -> Result<Vec<VolumeRow>, DbError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT name, created, driver, labels, options, anonymous FROM volumes ORDER BY name",
        )?;
        let raw: Vec<(String, String, String, String, String, bool)> = stmt
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            })?
            .collect::<Result<_, _>>()?;
        raw.into_iter()
            .map(|(name, created, driver, labels, options, anonymous)| {
                let corrupt = |source| DbError::Corrupt {
                    id: format!("volume {name}"),
                    source,
                };
                Ok(VolumeRow {
                    labels: serde_json::from_str(&labels).map_err(corrupt)?,
                    options: serde_json::from_str(&options).map_err(corrupt)?,
                    name,
                    created,
                    driver,
                    anonymous,
                })
            })
            .collect()
    }
}

/// A network's row.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkRow {
    /// The network as mvm-net applies it.
    pub spec: mvm_net::NetworkSpec,
    /// Labels and creation time (mvmd's, not mvm-net's).
    pub meta: NetworkMeta,
}

/// What mvmd keeps about a network beyond mvm-net's record.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NetworkMeta {
    /// RFC 3339 creation time.
    #[serde(default)]
    pub created: String,
    /// `-l k=v` labels.
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize)]
struct NetworkJson {
    spec: mvm_net::NetworkSpec,
    #[serde(default)]
    meta: NetworkMeta,
}

/// An endpoint's row: a running sandbox's attachment and its published
/// ports.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointRow {
    /// The endpoint.
    pub spec: mvm_net::EndpointSpec,
    /// Its published ports (host ports resolved).
    pub ports: Vec<mvm_net::PortSpec>,
}

impl Db {
    /// Insert network `n` or update the one with its id; a name another
    /// network has is [`DbError::NameTaken`] (never a replacement of that
    /// network, as `INSERT OR REPLACE` would do).
    pub fn put_network(&self, n: &NetworkRow) -> Result<(), DbError> {
        let body = json(&NetworkJson {
            spec: n.spec.clone(),
            meta: n.meta.clone(),
        });
        let r = self.conn().execute(
            "INSERT INTO networks (id, name, spec) VALUES (?1, ?2, ?3) ON CONFLICT(id) DO UPDATE SET name = excluded.name, spec = excluded.spec",
            params![n.spec.id, n.spec.name, body],
        );
        match r {
            Ok(_) => Ok(()),
            Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == SqlCode::ConstraintViolation => {
                Err(DbError::NameTaken(n.spec.name.clone()))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Delete network `id` and its endpoints.
    pub fn delete_network(&self, id: &str) -> Result<(), DbError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute("DELETE FROM endpoints WHERE network = ?1", params![id])?;
        tx.execute("DELETE FROM networks WHERE id = ?1", params![id])?;
        tx.commit()?;
        Ok(())
    }

    /// Every network.
    pub fn networks(&self) -> Result<Vec<NetworkRow>, DbError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT id, spec FROM networks ORDER BY name")?;
        let raw: Vec<(String, String)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        raw.into_iter()
            .map(|(id, body)| {
                let j: NetworkJson = serde_json::from_str(&body)
                    .map_err(|source| DbError::Corrupt { id, source })?;
                Ok(NetworkRow {
                    spec: j.spec,
                    meta: j.meta,
                })
            })
            .collect()
    }

    /// Insert or replace an endpoint.
    pub fn put_endpoint(&self, e: &EndpointRow) -> Result<(), DbError> {
        self.conn().execute(
            "INSERT OR REPLACE INTO endpoints (id, sandbox, network, spec, ports) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![e.spec.id, e.spec.sandbox, e.spec.network, json(&e.spec), json(&e.ports)],
        )?;
        Ok(())
    }

    /// Delete endpoint `id` (absent: nothing).
    pub fn delete_endpoint(&self, id: &str) -> Result<(), DbError> {
        self.conn()
            .execute("DELETE FROM endpoints WHERE id = ?1", params![id])?;
        Ok(())
    }

    /// Every endpoint.
    pub fn endpoints(&self) -> Result<Vec<EndpointRow>, DbError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT id, spec, ports FROM endpoints ORDER BY id")?;
        let raw: Vec<(String, String, String)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<Result<_, _>>()?;
        raw.into_iter()
            .map(|(id, spec, ports)| {
                let corrupt = |source| DbError::Corrupt {
                    id: id.clone(),
                    source,
                };
                Ok(EndpointRow {
                    spec: serde_json::from_str(&spec).map_err(corrupt)?,
                    ports: serde_json::from_str(&ports).map_err(corrupt)?,
                })
            })
            .collect()
    }
}

fn json<T: Serialize>(v: &T) -> String {
    // The types here serialise infallibly (no maps with non-string keys).
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use mvm_runtime::{Lifecycle, ProcessSpec, Resources, RestartPolicy};

    pub(crate) fn row(id: &str, name: &str) -> Row {
        Row {
            spec: SandboxSpec {
                id: id.into(),
                name: name.into(),
                image: "busybox".into(),
                image_id: "sha256:x".into(),
                image_digest: "sha256:y".into(),
                root_disk: "/d".into(),
                process: ProcessSpec {
                    entrypoint: vec![],
                    cmd: vec!["true".into()],
                    env: vec![],
                    working_dir: "/".into(),
                    user: String::new(),
                    tty: false,
                    open_stdin: false,
                },
                hostname: "h".into(),
                labels: Default::default(),
                resources: Resources {
                    vcpus: 1,
                    cpu_quota: None,
                    memory_mib: 128,
                    scratch_mib: 64,
                    workload_memory_mib: None,
                },
                lifecycle: Lifecycle {
                    restart_policy: RestartPolicy::No,
                    auto_remove: false,
                    stop_signal: "SIGTERM".into(),
                    stop_timeout: 10,
                },
                mounts: vec![],
                read_only_root: false,
            },
            created: "now".into(),
            state: mvm_runtime::state::created(),
            internal: Internal::default(),
        }
    }

    #[test]
    fn rows_round_trip_and_names_are_unique() {
        let d = tempfile::tempdir().unwrap();
        let db = Db::open(&d.path().join("t.db")).unwrap();
        db.insert(&row("a", "web")).unwrap();
        assert!(matches!(
            db.insert(&row("b", "web")),
            Err(DbError::NameTaken(_))
        ));
        let mut r = row("a", "web");
        r.internal.manual_stop = true;
        r.internal.intent = Intent::Kill { signal: 2 };
        db.update("a", &r.state, &r.internal).unwrap();
        drop(db);
        let db = Db::open(&d.path().join("t.db")).unwrap();
        let rows = db.load().unwrap();
        assert_eq!(rows, vec![r]);
        db.delete("a").unwrap();
        assert!(!db.exists("a").unwrap());
        db.insert(&row("b", "web")).unwrap();
    }

    #[test]
    fn networks_and_endpoints_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let db = Db::open(&d.path().join("t.db")).unwrap();
        let net = |id: &str, name: &str, subnet: &str| NetworkRow {
            spec: mvm_net::NetworkSpec {
                id: id.into(),
                name: name.into(),
                kind: mvm_net::NetworkKind::User,
                subnet: subnet.parse().unwrap(),
                gateway: subnet
                    .parse::<ipnet::Ipv4Net>()
                    .unwrap()
                    .hosts()
                    .next()
                    .unwrap(),
                internal: false,
                mtu: 1500,
            },
            meta: NetworkMeta {
                created: "now".into(),
                labels: [("k".to_string(), "v".to_string())].into(),
            },
        };
        db.put_network(&net("aa", "app", "10.1.0.0/24")).unwrap();
        assert!(matches!(
            db.put_network(&net("bb", "app", "10.2.0.0/24")),
            Err(DbError::NameTaken(_))
        ));
        let ep = EndpointRow {
            spec: mvm_net::EndpointSpec {
                id: "cc".into(),
                network: "aa".into(),
                sandbox: "cc".into(),
                ip: "10.1.0.2".parse().unwrap(),
                mac: mvm_net::ipam::mac_for("10.1.0.2".parse().unwrap()),
                dns_names: vec!["web".into()],
            },
            ports: vec![mvm_net::PortSpec {
                endpoint: "cc".into(),
                protocol: mvm_net::Protocol::Tcp,
                host_ip: None,
                host_port: 8080,
                guest_port: 80,
            }],
        };
        db.put_endpoint(&ep).unwrap();
        drop(db);
        let db = Db::open(&d.path().join("t.db")).unwrap();
        assert_eq!(
            db.networks().unwrap(),
            vec![net("aa", "app", "10.1.0.0/24")]
        );
        assert_eq!(db.endpoints().unwrap(), vec![ep]);
        db.delete_network("aa").unwrap();
        assert!(db.networks().unwrap().is_empty());
        assert!(
            db.endpoints().unwrap().is_empty(),
            "endpoints go with their network"
        );
    }
}
