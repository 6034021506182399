//! mvmd's networks: the records (networks and the endpoints of running
//! sandboxes, in the database) and the host side that realises them
//! ([`mvm_net::HostNet`], owned here).
//!
//! At start mvmd makes sure the default network (`bridge`) exists and
//! applies the whole state from the database once, before re-attaching
//! to sandboxes, so that a restart or a SIGKILL of mvmd leaves running
//! sandboxes' TAPs, rules and published ports as they were (nothing
//! duplicated, leftovers removed). A sandbox gets its endpoint (address,
//! MAC, TAP, published ports) when it starts and loses it when its VMM
//! ends, so published host ports are free while it is stopped.
//!
//! Every change goes to the host first and to the database after it
//! succeeded; a failed host change leaves both as they were.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};

use ipnet::Ipv4Net;
use mvm_api::network::{
    NetworkCreateRequest, NetworkInfo, NetworkMember, NetworkSettings, PortBinding,
};
use mvm_api::sandbox::CreateRequest;
use mvm_api::{ApiError, ErrorCode};
use mvm_net::publish::Publish;
use mvm_net::{ipam, DesiredState, EndpointSpec, HostNet, NetworkKind, NetworkSpec, PortSpec};
use mvm_protocol::launch::{Dns, HostEntry, Interface, IpCidr, Network, Route};
use mvm_runtime::launch::Nic;
use mvm_runtime::BootNet;
use mvm_vmm_api::{MacAddr, TapConfig};
use serde::{Deserialize, Serialize};

use crate::db::{Db, EndpointRow, NetworkMeta, NetworkRow};

/// The default network's name, as Docker's.
pub const DEFAULT_NETWORK: &str = "bridge";
/// No network: the guest has `lo` only.
pub const NONE_NETWORK: &str = "none";
/// Names a user network may not take (`host` networking does not exist
/// for a microVM).
const RESERVED: [&str; 3] = [DEFAULT_NETWORK, NONE_NETWORK, "host"];

fn err(code: ErrorCode, msg: impl Into<String>) -> ApiError {
    ApiError::new(code, msg)
}

fn bad(msg: impl Into<String>) -> ApiError {
    err(ErrorCode::BadRequest, msg)
}

/// An mvm-net failure as the API reports it.
fn net_err(e: mvm_net::Error) -> ApiError {
    let code = match &e {
        mvm_net::Error::Spec(_) => ErrorCode::BadRequest,
        mvm_net::Error::Port(_) => ErrorCode::Conflict,
        mvm_net::Error::NotFound { .. } => ErrorCode::NotFound,
        _ => ErrorCode::Internal,
    };
    err(code, e.to_string())
}

fn db_err(e: crate::db::DbError) -> ApiError {
    err(ErrorCode::Internal, e.to_string())
}

/// A sandbox's network settings (from its create request), persisted
/// with it, and the address it had last (kept for its next start).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SandboxNet {
    /// `bridge`, `none` or a user network's name.
    pub network: String,
    #[serde(default)]
    pub aliases: Vec<String>,
    /// `--ip`.
    #[serde(default)]
    pub ip: Option<Ipv4Addr>,
    /// `--mac-address`.
    #[serde(default)]
    pub mac: Option<MacAddr>,
    /// `--dns`.
    #[serde(default)]
    pub dns: Vec<IpAddr>,
    /// `--add-host` entries.
    #[serde(default)]
    pub hosts: Vec<(String, IpAddr)>,
    /// `-p` values (checked at create).
    #[serde(default)]
    pub publish: Vec<String>,
    /// The image's EXPOSEd ports when `-P` was given.
    #[serde(default)]
    pub publish_exposed: Vec<String>,
    /// The address of the last start, tried first at the next.
    #[serde(default)]
    pub last_ip: Option<Ipv4Addr>,
    /// Further networks (`network connect`), a NIC each after the first.
    #[serde(default)]
    pub extra: Vec<ExtraNet>,
}

/// A further network of a sandbox (`mvctl network connect`): from its
/// next start an endpoint and a NIC of its own (eth1, eth2, ...) after
/// the first network's. Published ports stay on the first network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtraNet {
    /// The network's name.
    pub network: String,
    /// `--alias`.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// `--ip`.
    #[serde(default)]
    pub ip: Option<Ipv4Addr>,
}

/// One network a start attaches to: the first (with the sandbox's MAC,
/// published ports and last address) or a further one.
struct Conn<'a> {
    network: &'a str,
    aliases: &'a [String],
    ip: Option<Ipv4Addr>,
    last_ip: Option<Ipv4Addr>,
    mac: Option<MacAddr>,
    first: bool,
}

impl Default for SandboxNet {
    fn default() -> Self {
        Self {
            network: DEFAULT_NETWORK.into(),
            aliases: vec![],
            ip: None,
            mac: None,
            dns: vec![],
            hosts: vec![],
            publish: vec![],
            publish_exposed: vec![],
            last_ip: None,
            extra: vec![],
        }
    }
}

impl SandboxNet {
    /// The settings of a create request; `exposed` are the image's
    /// EXPOSEd ports (`80/tcp`). Every value is checked here, so a bad
    /// one fails the create with a message naming it.
    pub fn from_request(req: &CreateRequest, exposed: &[String]) -> Result<Self, ApiError> {
        let network = req
            .network
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| DEFAULT_NETWORK.into());
        let none = network == NONE_NETWORK;
        let ip = req
            .ip
            .as_deref()
            .map(|s| {
                s.parse::<Ipv4Addr>()
                    .map_err(|_| bad(format!("--ip {s:?} is not an IPv4 address")))
            })
            .transpose()?;
        let mac = req
            .mac_address
            .as_deref()
            .map(|s| {
                let m: MacAddr = s.to_ascii_lowercase().parse().map_err(|_| {
                    bad(format!(
                        "--mac-address {s:?} is not a MAC address (six hex pairs, like 02:42:ac:11:00:02)"
                    ))
                })?;
                if m.is_multicast() {
                    return Err(bad(format!(
                        "--mac-address {s} is a multicast address; the first byte must be even"
                    )));
                }
                Ok(m)
            })
            .transpose()?;
        let dns = req
            .dns
            .iter()
            .map(|s| {
                s.parse::<IpAddr>()
                    .map_err(|_| bad(format!("--dns {s:?} is not an IP address")))
            })
            .collect::<Result<_, _>>()?;
        let hosts =
            req.add_host
                .iter()
                .map(|s| {
                    let (name, ip) = s.split_once(':').ok_or_else(|| {
                        bad(format!(
                            "--add-host {s:?} must be NAME:IP (like db:10.0.0.5)"
                        ))
                    })?;
                    let ip: IpAddr = ip.trim_matches(['[', ']']).parse().map_err(|_| {
                        bad(format!("--add-host {s:?}: {ip:?} is not an IP address"))
                    })?;
                    if name.is_empty()
                        || name.len() > 253
                        || !name.bytes().all(|b| {
                            b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_'
                        })
                    {
                        return Err(bad(format!(
                            "--add-host {s:?}: {name:?} is not a host name"
                        )));
                    }
                    Ok((name.to_string(), ip))
                })
                .collect::<Result<_, _>>()?;
        for p in &req.publish {
            Publish::parse(p).map_err(|e| bad(format!("-p {p:?}: {e}")))?;
        }
        for a in &req.network_aliases {
            mvm_runtime::names::validate_name(a)
                .map_err(|e| bad(format!("--network-alias {a:?}: {e}")))?;
        }
        let publish_exposed: Vec<String> = if req.publish_all {
            exposed
                .iter()
                .filter(|p| Publish::parse(p).is_ok())
                .cloned()
                .collect()
        } else {
            vec![]
        };
        if none
            && (ip.is_some()
                || mac.is_some()
                || !req.publish.is_empty()
                || !publish_exposed.is_empty()
                || !req.network_aliases.is_empty())
        {
            return Err(bad(
                "--network none gives the sandbox no interface but lo: leave out -p, -P, --ip, --mac-address and --network-alias",
            ));
        }
        if network == DEFAULT_NETWORK && (ip.is_some() || !req.network_aliases.is_empty()) {
            return Err(bad(
                "--ip and --network-alias need a user network (mvctl network create NAME, then --network NAME), as in Docker",
            ));
        }
        Ok(Self {
            network,
            aliases: req.network_aliases.clone(),
            ip,
            mac,
            dns,
            hosts,
            publish: req.publish.clone(),
            publish_exposed,
            last_ip: None,
            extra: vec![],
        })
    }

    /// The networks a start attaches to, in NIC order (none for `none`
    /// with nothing connected).
    fn connections(&self) -> Vec<Conn<'_>> {
        let mut out = Vec::new();
        if self.network != NONE_NETWORK {
            out.push(Conn {
                network: &self.network,
                aliases: &self.aliases,
                ip: self.ip,
                last_ip: self.last_ip,
                mac: self.mac,
                first: true,
            });
        }
        out.extend(self.extra.iter().map(|x| Conn {
            network: &x.network,
            aliases: &x.aliases,
            ip: x.ip,
            last_ip: None,
            mac: None,
            first: false,
        }));
        out
    }

    /// The `-p` values plus `-P`'s, parsed.
    fn publications(&self) -> Result<Vec<Publish>, ApiError> {
        self.publish
            .iter()
            .chain(&self.publish_exposed)
            .map(|p| Publish::parse(p).map_err(|e| bad(format!("-p {p:?}: {e}"))))
            .collect()
    }
}

/// Who a sandbox is, for its endpoint's names and its hosts file.
#[derive(Debug, Clone, Copy)]
pub struct Who<'a> {
    pub id: &'a str,
    pub name: &'a str,
    pub hostname: &'a str,
    /// Its names are answered by the network's DNS (false for a build's
    /// RUN step, which nobody looks up).
    pub resolvable: bool,
}

/// A started sandbox's attachment: what its boot needs, and the address
/// to remember.
#[derive(Debug, Clone, Default)]
pub struct Attached {
    pub boot: BootNet,
    pub ip: Option<Ipv4Addr>,
    pub warnings: Vec<String>,
}

/// Names of the sandboxes whose settings name a network (they keep it
/// from being removed).
pub type Users<'a> = dyn Fn(&NetworkSpec) -> Vec<String> + Send + Sync + 'a;

/// The host side and its records.
pub struct Networks {
    host: Result<HostNet, String>,
    /// Serialises allocations (address choice and endpoint records).
    lock: tokio::sync::Mutex<()>,
}

impl Networks {
    /// Host networking for mvmd: as root, a [`HostNet`] with the default
    /// network made if missing and the database's whole state applied
    /// (an error when the host cannot do it: netlink or nftables
    /// unusable). Not root, or `disabled` (`--no-network`): none, and
    /// sandboxes start without a NIC (a warning says so; `system info`
    /// says why).
    pub async fn start(db: &Db, disabled: bool) -> anyhow::Result<Self> {
        if disabled {
            return Ok(Self {
                host: Err("mvmd runs with --no-network".into()),
                lock: Default::default(),
            });
        }
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            let why = "mvmd is not running as root, so it cannot make bridges, TAPs and nftables rules; sandboxes get no network (run mvmd as root)".to_string();
            tracing::warn!("{why}");
            return Ok(Self {
                host: Err(why),
                lock: Default::default(),
            });
        }
        use anyhow::Context;
        let host = HostNet::new(mvm_net::Config::default())
            .context("host networking (netlink) is unusable; mvmd needs CAP_NET_ADMIN and a kernel with bridge, tun and nf_tables")?;
        let me = Self {
            host: Ok(host),
            lock: Default::default(),
        };
        me.ensure_default(db).await?;
        let state = me.desired(db)?;
        me.host()
            .map_err(|e| anyhow::anyhow!(e.message))?
            .apply(&state)
            .await
            .context("restoring the networks, endpoints and published ports from the database (is nft installed? mvm needs nftables 1.0 or later)")?;
        tracing::info!(
            networks = state.networks.len(),
            endpoints = state.endpoints.len(),
            ports = state.ports.len(),
            "host networking restored"
        );
        Ok(me)
    }

    /// Why there is no host networking, if there is none.
    pub fn unavailable(&self) -> Option<&str> {
        self.host.as_ref().err().map(String::as_str)
    }

    fn host(&self) -> Result<&HostNet, ApiError> {
        self.host
            .as_ref()
            .map_err(|why| err(ErrorCode::ResourceUnavailable, why.clone()))
    }

    /// Everything in the database, as mvm-net applies it.
    fn desired(&self, db: &Db) -> anyhow::Result<DesiredState> {
        let networks: Vec<NetworkSpec> = db.networks()?.into_iter().map(|n| n.spec).collect();
        let mut endpoints = Vec::new();
        let mut ports = Vec::new();
        for e in db.endpoints()? {
            if networks.iter().any(|n| n.id == e.spec.network) {
                endpoints.push(e.spec);
                ports.extend(e.ports);
            } else {
                db.delete_endpoint(&e.spec.id)?;
            }
        }
        Ok(DesiredState {
            networks,
            endpoints,
            ports,
        })
    }

    async fn ensure_default(&self, db: &Db) -> anyhow::Result<()> {
        let rows = db.networks()?;
        if rows.iter().any(|n| n.spec.kind == NetworkKind::Default) {
            return Ok(());
        }
        let host = self.host().map_err(|e| anyhow::anyhow!(e.message))?;
        let state = DesiredState {
            networks: rows.iter().map(|n| n.spec.clone()).collect(),
            ..Default::default()
        };
        let taken = host.taken_subnets(&state).await?;
        let subnet = ipam::choose_subnet(&ipam::default_pools(), &taken)?;
        let spec = NetworkSpec {
            id: mvm_runtime::names::new_id(),
            name: DEFAULT_NETWORK.into(),
            kind: NetworkKind::Default,
            subnet,
            gateway: ipam::gateway_of(subnet),
            internal: false,
            mtu: mvm_net::spec::DEFAULT_MTU,
        };
        tracing::info!(subnet = %subnet, "made the default network {DEFAULT_NETWORK}");
        db.put_network(&NetworkRow {
            spec,
            meta: NetworkMeta {
                created: crate::manager::now(),
                labels: BTreeMap::new(),
            },
        })?;
        Ok(())
    }

    /// The network named (or with the id or unique id prefix) `key`.
    fn find(db: &Db, key: &str) -> Result<NetworkRow, ApiError> {
        let rows = db.networks().map_err(db_err)?;
        if let Some(n) = rows.iter().find(|n| n.spec.name == key || n.spec.id == key) {
            return Ok(n.clone());
        }
        let by_prefix: Vec<_> = rows
            .iter()
            .filter(|n| key.len() >= 4 && n.spec.id.starts_with(key))
            .collect();
        match by_prefix.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(err(
                ErrorCode::NotFound,
                format!("no such network: {key} (list them with mvctl network ls; create one with mvctl network create {key})"),
            )),
            _ => Err(bad(format!(
                "the id prefix {key:?} matches several networks; give more characters"
            ))),
        }
    }

    /// Check that the network a create names exists (`none` and
    /// `bridge` always do).
    pub fn check_exists(&self, db: &Db, network: &str) -> Result<(), ApiError> {
        if network == NONE_NETWORK || network == DEFAULT_NETWORK {
            return Ok(());
        }
        // Not `not_found`: clients read that answer to a create as "no
        // such image" (and pull).
        Self::find(db, network)
            .map(|_| ())
            .map_err(|e| bad(e.message))
    }

    /// Give a starting sandbox its endpoint: an address (its last one if
    /// still free), a MAC, the TAP and its published ports on the host,
    /// recorded in the database; and the boot's NIC and guest network.
    pub async fn attach(
        &self,
        db: &Db,
        who: Who<'_>,
        settings: &SandboxNet,
    ) -> Result<Attached, ApiError> {
        let conns = settings.connections();
        if conns.is_empty() {
            return Ok(Attached::default());
        }
        let host = match (&self.host, conns.as_slice()) {
            (Err(why), [only]) if only.network == DEFAULT_NETWORK => {
                return Ok(Attached {
                    warnings: vec![format!("no network: {why}")],
                    ..Default::default()
                })
            }
            _ => self.host()?,
        };
        let _g = self.lock.lock().await;
        // A leftover of this sandbox (an exit mvmd did not see) goes first.
        self.detach_locked(db, who.id).await?;
        let mut made = Vec::with_capacity(conns.len());
        for c in &conns {
            match self.attach_one(db, host, who, settings, c).await {
                Ok(m) => made.push(m),
                Err(e) => {
                    // The endpoints made so far go too: all or nothing.
                    if let Err(d) = self.detach_locked(db, who.id).await {
                        tracing::warn!(sandbox = %who.id, "undoing a failed attach: {}", d.message);
                    }
                    return Err(e);
                }
            }
        }
        let nics = made
            .iter()
            .enumerate()
            .map(|(i, (net, ep))| {
                let mut nic = Nic::new(iface(i), TapConfig::Name(ep.port()), ep.mac);
                nic.mtu = net.mtu;
                nic
            })
            .collect();
        Ok(Attached {
            boot: BootNet {
                nics,
                network: Some(guest_network(&made, who, settings)),
            },
            ip: conns[0].first.then_some(made[0].1.ip),
            warnings: vec![],
        })
    }

    /// One endpoint of a starting sandbox: an address on `c`'s network
    /// (its last one if still free), a MAC, the TAP and (for the first
    /// network) the published ports, on the host and in the database.
    async fn attach_one(
        &self,
        db: &Db,
        host: &HostNet,
        who: Who<'_>,
        settings: &SandboxNet,
        c: &Conn<'_>,
    ) -> Result<(NetworkSpec, EndpointSpec), ApiError> {
        let net = Self::find(db, c.network)?.spec;
        let used: Vec<Ipv4Addr> = db
            .endpoints()
            .map_err(db_err)?
            .into_iter()
            .filter(|e| e.spec.network == net.id)
            .map(|e| e.spec.ip)
            .collect();
        let ip = match c.ip {
            Some(ip) => ipam::allocate(net.subnet, net.gateway, &used, Some(ip))
                .map_err(|e| bad(format!("--ip on network {}: {e}", net.name)))?,
            None => c
                .last_ip
                .and_then(|last| ipam::allocate(net.subnet, net.gateway, &used, Some(last)).ok())
                .map_or_else(|| ipam::allocate(net.subnet, net.gateway, &used, None), Ok)
                .map_err(|e| {
                    err(
                        ErrorCode::ResourceUnavailable,
                        format!("network {}: {e}", net.name),
                    )
                })?,
        };
        let mac = c.mac.unwrap_or_else(|| ipam::mac_for(ip));
        let mut dns_names = vec![];
        if who.resolvable {
            dns_names = vec![who.name.to_string(), who.id[..12].to_string()];
            dns_names.extend(c.aliases.iter().cloned());
            dns_names.push(who.hostname.to_string());
        }
        // Names DNS cannot carry (`a..b`, a label over 63 bytes) just do
        // not resolve; the sandbox still starts.
        let mut seen = HashSet::new();
        dns_names
            .retain(|n| mvm_net::spec::valid_dns_name(n) && seen.insert(n.to_ascii_lowercase()));
        let spec = EndpointSpec {
            // The first network's endpoint has the sandbox's id (its TAP's
            // name comes from it); further ones ids of their own.
            id: if c.first {
                who.id.to_string()
            } else {
                mvm_runtime::names::new_id()
            },
            network: net.id.clone(),
            sandbox: who.id.to_string(),
            ip,
            mac,
            dns_names,
        };
        let publications = if c.first {
            settings.publications()?
        } else {
            vec![]
        };
        let ports = host
            .publish(&spec.id, &publications)
            .await
            .map_err(net_err)?;
        host.add_endpoint(spec.clone(), ports.clone())
            .await
            .map_err(net_err)?;
        let row = EndpointRow {
            spec: spec.clone(),
            ports,
        };
        if let Err(e) = db.put_endpoint(&row) {
            let _ = host.remove_endpoint(&spec.id).await;
            return Err(db_err(e));
        }
        Ok((net, spec))
    }

    /// Take a sandbox's endpoint away (its TAP, rules and published
    /// ports); nothing when it has none.
    pub async fn detach(&self, db: &Db, sandbox: &str) -> Result<(), ApiError> {
        let _g = self.lock.lock().await;
        self.detach_locked(db, sandbox).await
    }

    async fn detach_locked(&self, db: &Db, sandbox: &str) -> Result<(), ApiError> {
        let rows = db.endpoints().map_err(db_err)?;
        for e in rows.into_iter().filter(|e| e.spec.sandbox == sandbox) {
            if let Ok(host) = &self.host {
                match host.remove_endpoint(&e.spec.id).await {
                    Ok(()) | Err(mvm_net::Error::NotFound { .. }) => {}
                    Err(er) => return Err(net_err(er)),
                }
            }
            db.delete_endpoint(&e.spec.id).map_err(db_err)?;
        }
        Ok(())
    }

    /// Remove the endpoints of sandboxes that are not among `known`: a
    /// build's RUN step whose mvmd was killed mid-step (its microVM is
    /// gone with the transient's directory) leaves one behind.
    pub async fn detach_orphans(&self, db: &Db, known: &HashSet<String>) -> Result<(), ApiError> {
        let _g = self.lock.lock().await;
        let orphans: HashSet<String> = db
            .endpoints()
            .map_err(db_err)?
            .into_iter()
            .map(|e| e.spec.sandbox)
            .filter(|s| !known.contains(s))
            .collect();
        for s in orphans {
            tracing::info!(endpoint = %s, "removing the network endpoint of a sandbox that no longer exists (a build step's)");
            self.detach_locked(db, &s).await?;
        }
        Ok(())
    }

    /// The published ports of each running sandbox, by sandbox id.
    pub fn ports(&self, db: &Db) -> HashMap<String, Vec<PortBinding>> {
        let mut out: HashMap<String, Vec<PortBinding>> = HashMap::new();
        for e in db.endpoints().unwrap_or_default() {
            out.entry(e.spec.sandbox.clone())
                .or_default()
                .extend(e.ports.iter().map(binding));
        }
        out
    }

    /// A sandbox's network as `inspect` shows it.
    pub fn settings(&self, db: &Db, sandbox: &str, s: &SandboxNet) -> NetworkSettings {
        let mut out = NetworkSettings {
            network: s.network.clone(),
            aliases: s.aliases.clone(),
            extra_networks: s.extra.iter().map(|x| x.network.clone()).collect(),
            ..Default::default()
        };
        let nets = db.networks().unwrap_or_default();
        // The first network's endpoint has the sandbox's own id.
        if let Some(e) = db
            .endpoints()
            .unwrap_or_default()
            .into_iter()
            .find(|e| e.spec.sandbox == sandbox && e.spec.id == sandbox)
        {
            if let Some(n) = nets.iter().find(|n| n.spec.id == e.spec.network) {
                out.ipv4_address = Some(format!("{}/{}", e.spec.ip, n.spec.subnet.prefix_len()));
                out.gateway = Some(n.spec.gateway.to_string());
            }
            out.mac_address = Some(e.spec.mac.to_string());
            out.ports = e.ports.iter().map(binding).collect();
        }
        out
    }

    // ----- /v1/networks -----

    /// Create a user network.
    pub async fn create(&self, db: &Db, req: &NetworkCreateRequest) -> Result<String, ApiError> {
        mvm_runtime::names::validate_name(&req.name)
            .map_err(|e| bad(format!("network name {:?}: {e}", req.name)))?;
        if RESERVED.contains(&req.name.as_str()) {
            return Err(err(
                ErrorCode::Conflict,
                format!(
                    "the network name {:?} is reserved; choose another",
                    req.name
                ),
            ));
        }
        let host = self.host()?;
        let _g = self.lock.lock().await;
        let rows = db.networks().map_err(db_err)?;
        if rows.iter().any(|n| n.spec.name == req.name) {
            return Err(err(
                ErrorCode::Conflict,
                format!("a network named {:?} exists already; choose another name or remove it (mvctl network rm {})", req.name, req.name),
            ));
        }
        let state = DesiredState {
            networks: rows.iter().map(|n| n.spec.clone()).collect(),
            ..Default::default()
        };
        let taken = host.taken_subnets(&state).await.map_err(net_err)?;
        let subnet = match &req.subnet {
            Some(s) => {
                let s: Ipv4Net = s.parse().map_err(|_| {
                    bad(format!(
                        "--subnet {s:?} is not an IPv4 subnet (like 10.5.0.0/24)"
                    ))
                })?;
                ipam::check_subnet(s, &taken).map_err(|e| bad(e.to_string()))?;
                s
            }
            None => ipam::choose_subnet(&ipam::default_pools(), &taken)
                .map_err(|e| err(ErrorCode::ResourceUnavailable, e.to_string()))?,
        };
        let gateway = match &req.gateway {
            Some(g) => {
                let g: Ipv4Addr = g
                    .parse()
                    .map_err(|_| bad(format!("--gateway {g:?} is not an IPv4 address")))?;
                ipam::check_gateway(subnet, g).map_err(|e| bad(e.to_string()))?;
                g
            }
            None => ipam::gateway_of(subnet),
        };
        let spec = NetworkSpec {
            id: mvm_runtime::names::new_id(),
            name: req.name.clone(),
            kind: NetworkKind::User,
            subnet,
            gateway,
            internal: req.internal,
            mtu: mvm_net::spec::DEFAULT_MTU,
        };
        host.add_network(spec.clone()).await.map_err(net_err)?;
        let row = NetworkRow {
            spec: spec.clone(),
            meta: NetworkMeta {
                created: crate::manager::now(),
                labels: req.labels.clone(),
            },
        };
        if let Err(e) = db.put_network(&row) {
            let _ = host.remove_network(&spec.id).await;
            return Err(db_err(e));
        }
        tracing::info!(network = %spec.name, subnet = %subnet, "network created");
        Ok(spec.id)
    }

    /// Every network, with its running sandboxes (`names`: sandbox id to
    /// name).
    pub fn list(
        &self,
        db: &Db,
        names: &HashMap<String, String>,
    ) -> Result<Vec<NetworkInfo>, ApiError> {
        let eps = db.endpoints().map_err(db_err)?;
        Ok(db
            .networks()
            .map_err(db_err)?
            .into_iter()
            .map(|n| info(&n, &eps, names))
            .collect())
    }

    /// One network.
    pub fn inspect(
        &self,
        db: &Db,
        key: &str,
        names: &HashMap<String, String>,
    ) -> Result<NetworkInfo, ApiError> {
        let n = Self::find(db, key)?;
        let eps = db.endpoints().map_err(db_err)?;
        Ok(info(&n, &eps, names))
    }

    /// Remove a user network that no sandbox uses (`users`: names of the
    /// sandboxes whose settings name it, running or not).
    pub async fn remove(&self, db: &Db, key: &str, users: &Users<'_>) -> Result<String, ApiError> {
        let _g = self.lock.lock().await;
        let n = Self::find(db, key)?.spec;
        if n.kind == NetworkKind::Default {
            return Err(err(
                ErrorCode::Forbidden,
                "the default network bridge cannot be removed",
            ));
        }
        let using = users(&n);
        if !using.is_empty() {
            return Err(err(
                ErrorCode::Conflict,
                format!(
                    "network {} is used by sandbox(es) {}; remove them first (mvctl rm -f ...)",
                    n.name,
                    using.join(", ")
                ),
            ));
        }
        match self.host()?.remove_network(&n.id).await {
            Ok(()) | Err(mvm_net::Error::NotFound { .. }) => {}
            Err(e) => return Err(net_err(e)),
        }
        db.delete_network(&n.id).map_err(db_err)?;
        tracing::info!(network = %n.name, "network removed");
        Ok(n.name)
    }

    /// Remove every user network no sandbox uses.
    pub async fn prune(&self, db: &Db, users: &Users<'_>) -> Result<Vec<String>, ApiError> {
        let mut deleted = Vec::new();
        for n in db.networks().map_err(db_err)? {
            if n.spec.kind == NetworkKind::User && users(&n.spec).is_empty() {
                deleted.push(self.remove(db, &n.spec.id, users).await?);
            }
        }
        Ok(deleted)
    }

    /// Whether `settings` names network `n` (first or connected).
    pub fn names(n: &NetworkSpec, settings: &SandboxNet) -> bool {
        let is = |name: &str| name == n.name || name == n.id;
        is(&settings.network) || settings.extra.iter().any(|x| is(&x.network))
    }

    /// `settings` with network `key` connected (`network connect`): the
    /// first network of a sandbox on `none`, a further one otherwise.
    /// The caller makes sure the sandbox is not running.
    pub fn connect(
        db: &Db,
        key: &str,
        settings: &SandboxNet,
        sandbox: &str,
        aliases: &[String],
        ip: Option<&str>,
    ) -> Result<SandboxNet, ApiError> {
        if key == NONE_NETWORK || key == "host" {
            return Err(bad(format!(
                "a sandbox cannot be connected to {key}; to leave it with lo only, disconnect it from its networks"
            )));
        }
        let n = Self::find(db, key)?.spec;
        if Self::names(&n, settings) {
            return Err(err(
                ErrorCode::Conflict,
                format!("sandbox {sandbox} is already on network {}", n.name),
            ));
        }
        let ip = ip
            .map(|s| {
                s.parse::<Ipv4Addr>()
                    .map_err(|_| bad(format!("--ip {s:?} is not an IPv4 address")))
            })
            .transpose()?;
        for a in aliases {
            mvm_runtime::names::validate_name(a).map_err(|e| bad(format!("--alias {a:?}: {e}")))?;
        }
        if n.kind == NetworkKind::Default && (ip.is_some() || !aliases.is_empty()) {
            return Err(bad(
                "--ip and --alias need a user network, as in Docker (the default network has no names)",
            ));
        }
        if let Some(ip) = ip {
            if !n.subnet.contains(&ip) || ip == n.gateway {
                return Err(bad(format!(
                    "--ip {ip} is not a free address of network {} ({}, gateway {})",
                    n.name, n.subnet, n.gateway
                )));
            }
        }
        let mut out = settings.clone();
        if out.network == NONE_NETWORK {
            out.network = n.name;
            out.aliases = aliases.to_vec();
            out.ip = ip;
            out.last_ip = None;
        } else {
            out.extra.push(ExtraNet {
                network: n.name,
                aliases: aliases.to_vec(),
                ip,
            });
        }
        Ok(out)
    }

    /// `settings` without network `key` (`network disconnect`): a
    /// further network is dropped; the first is replaced by the next one,
    /// or by `none` when it was the only one (its `-p` values are kept
    /// for a later connect, as Docker keeps a container's port
    /// configuration). The caller makes sure the sandbox is not running.
    pub fn disconnect(
        db: &Db,
        key: &str,
        settings: &SandboxNet,
        sandbox: &str,
    ) -> Result<SandboxNet, ApiError> {
        let n = Self::find(db, key)?.spec;
        let is = |name: &str| name == n.name || name == n.id;
        let mut out = settings.clone();
        if is(&out.network) {
            if out.extra.is_empty() {
                out.network = NONE_NETWORK.into();
                out.aliases.clear();
                out.ip = None;
            } else {
                let next = out.extra.remove(0);
                out.network = next.network;
                out.aliases = next.aliases;
                out.ip = next.ip;
            }
            out.last_ip = None;
        } else if let Some(i) = out.extra.iter().position(|x| is(&x.network)) {
            out.extra.remove(i);
        } else {
            return Err(err(
                ErrorCode::NotFound,
                format!("sandbox {sandbox} is not on network {}", n.name),
            ));
        }
        Ok(out)
    }
}

fn binding(p: &PortSpec) -> PortBinding {
    PortBinding {
        host_ip: p.host_ip.map(|ip| ip.to_string()),
        host_port: p.host_port,
        container_port: p.guest_port,
        protocol: p.protocol.to_string(),
    }
}

fn info(n: &NetworkRow, eps: &[EndpointRow], names: &HashMap<String, String>) -> NetworkInfo {
    let s = &n.spec;
    NetworkInfo {
        id: s.id.clone(),
        name: s.name.clone(),
        driver: "bridge".into(),
        default: s.kind == NetworkKind::Default,
        subnet: s.subnet.to_string(),
        gateway: s.gateway.to_string(),
        internal: s.internal,
        mtu: s.mtu,
        bridge: s.bridge(),
        labels: n.meta.labels.clone(),
        created: n.meta.created.clone(),
        sandboxes: eps
            .iter()
            .filter(|e| e.spec.network == s.id)
            .map(|e| NetworkMember {
                id: e.spec.sandbox.clone(),
                name: names.get(&e.spec.sandbox).cloned().unwrap_or_default(),
                ipv4_address: format!("{}/{}", e.spec.ip, s.subnet.prefix_len()),
                mac_address: e.spec.mac.to_string(),
            })
            .collect(),
    }
}

/// The host's resolvers the guests of the default network can reach: the
/// `nameserver`s of `/etc/resolv.conf` that are not loopback addresses
/// (a guest's loopback is its own).
fn host_resolvers() -> Vec<IpAddr> {
    std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse::<IpAddr>().ok())
        .filter(|a| a.is_ipv4() && !a.is_loopback())
        .take(3)
        .collect()
}

/// The guest's interface on its `i`th network.
fn iface(i: usize) -> String {
    format!("eth{i}")
}

/// The guest's side of its endpoints (in NIC order): `eth0`, `eth1`, ...
/// with their addresses; a default route via the gateway of the first
/// network that is not internal; the resolver (`--dns`, else the embedded
/// server of the first user network, else on the default network the
/// host's resolvers, that network's gateway when the host has only
/// loopback ones); and `/etc/hosts` entries: its own names (on its first
/// address) and `--add-host`'s.
fn guest_network(eps: &[(NetworkSpec, EndpointSpec)], who: Who<'_>, s: &SandboxNet) -> Network {
    let mut routes = Vec::new();
    if let Some((i, (net, _))) = eps.iter().enumerate().find(|(_, (n, _))| !n.internal) {
        routes.push(Route {
            destination: IpCidr {
                address: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                prefix_len: 0,
            },
            gateway: Some(IpAddr::V4(net.gateway)),
            interface: iface(i),
        });
    }
    let nameservers = if !s.dns.is_empty() {
        s.dns.clone()
    } else if let Some((net, _)) = eps.iter().find(|(n, _)| n.kind == NetworkKind::User) {
        vec![IpAddr::V4(net.gateway)]
    } else {
        let host = host_resolvers();
        match (host.is_empty(), eps.first()) {
            (false, _) | (true, None) => host,
            (true, Some((net, _))) => vec![IpAddr::V4(net.gateway)],
        }
    };
    let mut own: Vec<String> = vec![who.hostname.to_string()];
    if who.name != who.hostname {
        own.push(who.name.to_string());
    }
    let mut hosts = Vec::new();
    if let Some((_, ep)) = eps.first() {
        hosts.push(HostEntry {
            address: IpAddr::V4(ep.ip),
            names: own,
        });
    }
    let mut seen = HashSet::new();
    for (name, ip) in &s.hosts {
        if seen.insert((name.clone(), *ip)) {
            hosts.push(HostEntry {
                address: *ip,
                names: vec![name.clone()],
            });
        }
    }
    Network {
        interfaces: eps
            .iter()
            .enumerate()
            .map(|(i, (net, ep))| Interface {
                mac: ep.mac.to_string(),
                name: iface(i),
                addresses: vec![IpCidr {
                    address: IpAddr::V4(ep.ip),
                    prefix_len: net.subnet.prefix_len(),
                }],
                mtu: Some(u32::from(net.mtu)),
            })
            .collect(),
        routes,
        dns: Dns {
            nameservers,
            ..Default::default()
        },
        hosts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> CreateRequest {
        CreateRequest {
            image: "busybox".into(),
            ..Default::default()
        }
    }

    #[test]
    fn settings_default_to_the_bridge_and_check_every_value() {
        let s = SandboxNet::from_request(&req(), &[]).unwrap();
        assert_eq!(s, SandboxNet::default());
        assert_eq!(s.network, DEFAULT_NETWORK);

        let mut r = req();
        r.network = Some("app".into());
        r.ip = Some("10.0.0.9".into());
        r.mac_address = Some("02:42:AA:bb:cc:dd".into());
        r.dns = vec!["1.1.1.1".into()];
        r.add_host = vec!["db:10.0.0.5".into(), "v6:[::1]".into()];
        r.publish = vec!["8080:80".into(), "127.0.0.1::53/udp".into()];
        r.publish_all = true;
        r.network_aliases = vec!["web".into()];
        let s = SandboxNet::from_request(&r, &["80/tcp".into(), "nonsense/x".into()]).unwrap();
        assert_eq!(s.ip, Some(Ipv4Addr::new(10, 0, 0, 9)));
        assert_eq!(s.mac.unwrap().to_string(), "02:42:aa:bb:cc:dd");
        assert_eq!(s.hosts[1].1, "::1".parse::<IpAddr>().unwrap());
        assert_eq!(s.publish_exposed, ["80/tcp"]);
        assert_eq!(s.publications().unwrap().len(), 3);

        let refused = |f: &dyn Fn(&mut CreateRequest), what: &str| {
            let mut r = req();
            f(&mut r);
            let e = SandboxNet::from_request(&r, &[]).unwrap_err();
            assert_eq!(e.code, ErrorCode::BadRequest);
            assert!(e.message.contains(what), "{} lacks {what}", e.message);
        };
        refused(&|r| r.ip = Some("10.0.0".into()), "--ip \"10.0.0\"");
        refused(
            &|r| r.mac_address = Some("01:00:00:00:00:01".into()),
            "multicast",
        );
        refused(&|r| r.mac_address = Some("zz".into()), "not a MAC");
        refused(&|r| r.dns = vec!["x".into()], "--dns \"x\"");
        refused(&|r| r.add_host = vec!["nohost".into()], "NAME:IP");
        refused(
            &|r| r.add_host = vec!["a b:1.2.3.4".into()],
            "not a host name",
        );
        refused(&|r| r.publish = vec!["70000:80".into()], "-p \"70000:80\"");
        refused(
            &|r| {
                r.network = Some("none".into());
                r.publish = vec!["80".into()];
            },
            "--network none",
        );
        refused(&|r| r.ip = Some("172.30.0.9".into()), "user network");
    }

    #[test]
    fn the_guest_network_routes_via_the_gateway_unless_internal() {
        let mut net = NetworkSpec {
            id: "ab".repeat(32),
            name: "app".into(),
            kind: NetworkKind::User,
            subnet: "10.5.0.0/24".parse().unwrap(),
            gateway: Ipv4Addr::new(10, 5, 0, 1),
            internal: false,
            mtu: 1500,
        };
        let ep = EndpointSpec {
            id: "cd".repeat(32),
            network: net.id.clone(),
            sandbox: "cd".repeat(32),
            ip: Ipv4Addr::new(10, 5, 0, 2),
            mac: ipam::mac_for(Ipv4Addr::new(10, 5, 0, 2)),
            dns_names: vec![],
        };
        let who = Who {
            id: &ep.sandbox,
            name: "web",
            hostname: "cdcdcdcdcdcd",
            resolvable: true,
        };
        let mut s = SandboxNet {
            hosts: vec![("db".into(), "10.9.9.9".parse().unwrap())],
            ..Default::default()
        };
        let g = guest_network(&[(net.clone(), ep.clone())], who, &s);
        g.validate().unwrap();
        assert_eq!(g.interfaces[0].mac, "02:42:0a:05:00:02");
        assert_eq!(g.interfaces[0].addresses[0].to_string(), "10.5.0.2/24");
        assert_eq!(g.routes[0].gateway, Some(IpAddr::V4(net.gateway)));
        assert_eq!(g.dns.nameservers, [IpAddr::V4(net.gateway)]);
        assert_eq!(g.hosts[0].names, ["cdcdcdcdcdcd", "web"]);
        assert_eq!(g.hosts[1].names, ["db"]);

        net.internal = true;
        s.dns = vec!["9.9.9.9".parse().unwrap()];
        let g = guest_network(&[(net.clone(), ep.clone())], who, &s);
        assert!(g.routes.is_empty());
        assert_eq!(g.dns.nameservers, ["9.9.9.9".parse::<IpAddr>().unwrap()]);
    }

    fn user_net(name: &str, subnet: &str, internal: bool) -> NetworkRow {
        let subnet: Ipv4Net = subnet.parse().unwrap();
        NetworkRow {
            spec: NetworkSpec {
                id: mvm_runtime::names::new_id(),
                name: name.into(),
                kind: NetworkKind::User,
                subnet,
                gateway: ipam::gateway_of(subnet),
                internal,
                mtu: 1500,
            },
            meta: NetworkMeta {
                created: String::new(),
                labels: BTreeMap::new(),
            },
        }
    }

    #[test]
    fn connect_and_disconnect_change_the_settings_of_the_next_start() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("db")).unwrap();
        let app = user_net("app", "10.5.0.0/24", false);
        db.put_network(&app).unwrap();
        db.put_network(&user_net("back", "10.6.0.0/24", true))
            .unwrap();
        let s = SandboxNet {
            publish: vec!["8080:80".into()],
            ..Default::default()
        };

        let c =
            Networks::connect(&db, "app", &s, "web", &["api".into()], Some("10.5.0.7")).unwrap();
        assert_eq!(c.network, DEFAULT_NETWORK);
        assert_eq!(
            c.extra,
            [ExtraNet {
                network: "app".into(),
                aliases: vec!["api".into()],
                ip: Some(Ipv4Addr::new(10, 5, 0, 7)),
            }]
        );
        assert!(Networks::names(&app.spec, &c), "connected: in use");
        // By id too; twice is refused.
        let e = Networks::connect(&db, &app.spec.id, &c, "web", &[], None).unwrap_err();
        assert_eq!(e.code, ErrorCode::Conflict, "{}", e.message);
        let refused = |key: &str, aliases: &[String], ip: Option<&str>, what: &str| {
            let e = Networks::connect(&db, key, &s, "web", aliases, ip).unwrap_err();
            assert!(e.message.contains(what), "{} lacks {what}", e.message);
        };
        refused("none", &[], None, "cannot be connected to none");
        refused("nosuch", &[], None, "no such network: nosuch");
        refused(
            "back",
            &[],
            Some("10.5.0.7"),
            "not a free address of network back",
        );
        refused("back", &[], Some("10.6.0.1"), "not a free address");
        refused("back", &["bad name".into()], None, "--alias");

        // Disconnecting the first network makes the next one first.
        let d = Networks::disconnect(&db, DEFAULT_NETWORK, &c, "web");
        assert!(d.is_err(), "bridge is not a database row here");
        let two = Networks::connect(&db, "back", &c, "web", &[], None).unwrap();
        let d = Networks::disconnect(&db, "app", &two, "web").unwrap();
        assert_eq!(d.extra.len(), 1);
        assert_eq!(d.extra[0].network, "back");
        let e = Networks::disconnect(&db, "app", &d, "web").unwrap_err();
        assert_eq!(e.code, ErrorCode::NotFound);
        assert!(e.message.contains("not on network app"), "{}", e.message);
        let only_app = SandboxNet {
            network: "app".into(),
            aliases: vec!["x".into()],
            last_ip: Some(Ipv4Addr::new(10, 5, 0, 3)),
            extra: vec![ExtraNet {
                network: "back".into(),
                aliases: vec!["y".into()],
                ip: None,
            }],
            ..Default::default()
        };
        let d = Networks::disconnect(&db, "app", &only_app, "web").unwrap();
        assert_eq!(
            (d.network.as_str(), d.aliases.as_slice()),
            ("back", &["y".to_string()][..])
        );
        assert!(d.extra.is_empty() && d.last_ip.is_none());
        let d = Networks::disconnect(&db, "back", &d, "web").unwrap();
        assert_eq!(d.network, NONE_NETWORK);
        assert!(d.connections().is_empty(), "lo only");
        // A sandbox on none gets its first network back by a connect.
        let c = Networks::connect(&db, "app", &d, "web", &[], None).unwrap();
        assert_eq!((c.network.as_str(), c.extra.len()), ("app", 0));
    }

    #[test]
    fn a_second_network_is_eth1_and_the_route_and_resolver_follow_the_rules() {
        let back = user_net("back", "10.6.0.0/24", true).spec;
        let app = user_net("app", "10.5.0.0/24", false).spec;
        let ep = |net: &NetworkSpec, ip: Ipv4Addr| EndpointSpec {
            id: mvm_runtime::names::new_id(),
            network: net.id.clone(),
            sandbox: "cd".repeat(32),
            ip,
            mac: ipam::mac_for(ip),
            dns_names: vec![],
        };
        let eps = [
            (back.clone(), ep(&back, Ipv4Addr::new(10, 6, 0, 2))),
            (app.clone(), ep(&app, Ipv4Addr::new(10, 5, 0, 2))),
        ];
        let who = Who {
            id: &eps[0].1.sandbox,
            name: "web",
            hostname: "web",
            resolvable: true,
        };
        let g = guest_network(&eps, who, &SandboxNet::default());
        g.validate().unwrap();
        let names: Vec<_> = g.interfaces.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["eth0", "eth1"]);
        // The first network is internal: the way out is the second's.
        assert_eq!(g.routes.len(), 1);
        assert_eq!(g.routes[0].interface, "eth1");
        assert_eq!(g.routes[0].gateway, Some(IpAddr::V4(app.gateway)));
        // The first user network's embedded DNS answers.
        assert_eq!(g.dns.nameservers, [IpAddr::V4(back.gateway)]);
        assert_eq!(g.hosts[0].address, IpAddr::V4(Ipv4Addr::new(10, 6, 0, 2)));
    }
}
