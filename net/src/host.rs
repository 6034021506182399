//! [`HostNet`]: the one entry point mvmd calls.
//!
//! `apply(state)` reconciles: it brings the host's links, addresses,
//! nftables tables and port proxies to exactly `state`, creating what is
//! missing and removing whatever mvm owns (by name: [`crate::names`]) that
//! `state` does not want, including what a crashed earlier mvmd left.
//! Applying the same state twice changes nothing. The per-object calls
//! (`add_endpoint`, `remove_endpoint`, ...) are the same reconcile over
//! the state last applied with one record changed.
//!
//! Order within an apply, so that a failure leaves nothing half-made for
//! the caller's request: validate; bind the new publications' sockets
//! (the port-in-use check; on failure nothing has changed); links; the
//! nftables transaction; then the proxies are swapped. Links and rules of
//! a failed apply are repaired by the next one.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddrV4;

use tokio::sync::Mutex;

use crate::dns::{DnsError, DnsServer, Zone};
use crate::links::{LinkError, Links};
use crate::nft::NftError;
use crate::proxy::{self, Bound, Proxy, ProxyError};
use crate::spec::{DesiredState, EndpointSpec, NetworkSpec, PortSpec, Protocol, SpecError};
use crate::{ipam, names};

/// Why an apply failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid network state: {0}")]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error(transparent)]
    Nft(#[from] NftError),
    #[error(transparent)]
    Port(#[from] ProxyError),
    #[error(transparent)]
    Dns(#[from] DnsError),
    #[error("cannot enable IPv4 forwarding (/proc/sys/net/ipv4/ip_forward): {0}; mvmd needs root to route sandboxes' traffic")]
    Forwarding(#[source] std::io::Error),
    #[error("no {what} {id:?} in the applied state")]
    NotFound { what: &'static str, id: String },
}

/// Knobs of the host side.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the embedded DNS servers forward what is not a sandbox name;
    /// `None`: the `nameserver`s of [`Config::resolv_conf`].
    pub dns_upstreams: Option<Vec<std::net::SocketAddr>>,
    /// The host's resolver configuration.
    pub resolv_conf: String,
    /// Write 1 to `/proc/sys/net/ipv4/ip_forward` when a non-internal
    /// network exists (NAT needs it). On by default.
    pub enable_forwarding: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            dns_upstreams: None,
            resolv_conf: "/etc/resolv.conf".into(),
            enable_forwarding: true,
        }
    }
}

/// What mvm has made, as last applied.
#[derive(Debug, Default)]
struct Applied {
    state: DesiredState,
    proxies: HashMap<PortSpec, Proxy>,
    /// Ports bound by [`HostNet::reserve_port`], waiting for an apply.
    reserved: HashMap<(Protocol, Option<std::net::IpAddr>, u16), Bound>,
    /// The DNS server of each network, by network id.
    dns: HashMap<String, DnsServer>,
}

/// mvm's host networking: owns the kernel objects and servers.
#[derive(Debug)]
pub struct HostNet {
    links: Links,
    config: Config,
    applied: Mutex<Applied>,
}

impl HostNet {
    /// Connects to netlink in the calling thread's network namespace.
    /// Changes nothing on the host until the first [`apply`](Self::apply)
    /// (mvmd's first call after a start is an apply of its whole state).
    pub fn new(config: Config) -> Result<Self, Error> {
        Ok(Self {
            links: Links::new()?,
            config,
            applied: Mutex::default(),
        })
    }

    /// The netlink side, for listing what mvm owns.
    pub fn links(&self) -> &Links {
        &self.links
    }

    /// The state last applied successfully.
    pub async fn state(&self) -> DesiredState {
        self.applied.lock().await.state.clone()
    }

    /// What a new network's subnet must not overlap: the host's routes
    /// and `state`'s networks. Feed it to [`ipam::choose_subnet`] or
    /// [`ipam::check_subnet`].
    pub async fn taken_subnets(&self, state: &DesiredState) -> Result<Vec<ipam::Taken>, Error> {
        let mut t = self.links.host_routes().await?;
        t.extend(state.networks.iter().map(|n| ipam::Taken {
            net: n.subnet,
            what: format!("network {:?}", n.name),
        }));
        Ok(t)
    }

    /// Binds a host port now, before the publication is in the state: 0
    /// picks a free one (`-P`, `-p 80`). Returns the port to put in the
    /// [`PortSpec`]; the next apply that publishes it uses these sockets.
    /// A reservation no apply uses is released by the next apply.
    pub async fn reserve_port(
        &self,
        protocol: Protocol,
        host_ip: Option<std::net::IpAddr>,
        port: u16,
    ) -> Result<u16, Error> {
        let mut a = self.applied.lock().await;
        let bound = proxy::bind(protocol, host_ip, port)?;
        let port = bound.port();
        a.reserved.insert((protocol, host_ip, port), bound);
        Ok(port)
    }

    /// Turns `-p` values into the [`PortSpec`]s of `endpoint`, binding an
    /// ephemeral host port now for each that names none (reported in the
    /// result, for `mvctl port` and `-P`). Put them in the state and apply.
    pub async fn publish(
        &self,
        endpoint: &str,
        requests: &[crate::publish::Publish],
    ) -> Result<Vec<PortSpec>, Error> {
        let mut a = self.applied.lock().await;
        let mut out = Vec::new();
        let mut taken = Vec::new();
        for r in requests {
            for mut p in r.expand(endpoint) {
                if p.host_port == 0 {
                    match proxy::bind(p.protocol, p.host_ip, 0) {
                        Ok(bound) => {
                            p.host_port = bound.port();
                            let key = (p.protocol, p.host_ip, p.host_port);
                            a.reserved.insert(key, bound);
                            taken.push(key);
                        }
                        Err(e) => {
                            for k in taken {
                                a.reserved.remove(&k);
                            }
                            return Err(e.into());
                        }
                    }
                }
                out.push(p);
            }
        }
        Ok(out)
    }

    /// Brings the host to exactly `state`. Idempotent.
    pub async fn apply(&self, state: &DesiredState) -> Result<(), Error> {
        let mut a = self.applied.lock().await;
        self.apply_locked(&mut a, state).await
    }

    /// Applies `f` of the state last applied, under one lock, so that
    /// concurrent per-object calls never lose each other's changes.
    async fn update(
        &self,
        f: impl FnOnce(&mut DesiredState) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let mut a = self.applied.lock().await;
        let mut s = a.state.clone();
        f(&mut s)?;
        self.apply_locked(&mut a, &s).await
    }

    async fn apply_locked(&self, a: &mut Applied, state: &DesiredState) -> Result<(), Error> {
        state.validate()?;

        // 1. Sockets of new publications: fails before anything changes.
        let mut fresh: Vec<(PortSpec, Bound)> = Vec::new();
        for p in &state.ports {
            if a.proxies.contains_key(p) {
                continue;
            }
            let bound = match a.reserved.remove(&(p.protocol, p.host_ip, p.host_port)) {
                Some(b) => b,
                None => {
                    // A publication being replaced (same host port, new
                    // target) still holds the port: let it go first.
                    let old: Vec<PortSpec> = a
                        .proxies
                        .keys()
                        .filter(|q| {
                            q.protocol == p.protocol
                                && q.host_port == p.host_port
                                && crate::spec::host_ips_overlap(q.host_ip, p.host_ip)
                        })
                        .cloned()
                        .collect();
                    for q in old {
                        if let Some(px) = a.proxies.remove(&q) {
                            px.stop().await;
                        }
                    }
                    proxy::bind_spec(p)?
                }
            };
            fresh.push((p.clone(), bound));
        }

        // 2. Links.
        self.apply_links(state).await?;
        if self.config.enable_forwarding && state.networks.iter().any(|n| !n.internal) {
            std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").map_err(Error::Forwarding)?;
        }

        // 3. The ruleset, in one transaction.
        crate::nft::apply(state)?;

        // 4. Proxies.
        // Unpublished ports are free when this returns (a stopped
        // sandbox's port can be taken at once, by anyone).
        let wanted: HashSet<&PortSpec> = state.ports.iter().collect();
        let gone: Vec<PortSpec> = a
            .proxies
            .keys()
            .filter(|p| !wanted.contains(p))
            .cloned()
            .collect();
        for p in gone {
            if let Some(px) = a.proxies.remove(&p) {
                px.stop().await;
            }
        }
        for (p, bound) in fresh {
            let Some(e) = state.endpoint(&p.endpoint) else {
                continue;
            };
            let target = SocketAddrV4::new(e.ip, p.guest_port);
            let proxy = Proxy::start(bound, target).map_err(|source| ProxyError::Bind {
                addr: std::net::SocketAddr::new(
                    p.host_ip.unwrap_or([0, 0, 0, 0].into()),
                    p.host_port,
                ),
                protocol: p.protocol,
                source,
            })?;
            a.proxies.insert(p, proxy);
        }
        a.reserved.clear();

        // 5. DNS servers: one per network on its gateway, names live.
        a.dns
            .retain(|id, srv| state.network(id).is_some_and(|n| n.gateway == srv.addr()));
        for n in &state.networks {
            let zone = Zone::of(state, n);
            match a.dns.get(&n.id) {
                Some(srv) => srv.set_zone(zone),
                None => {
                    let up =
                        self.config.dns_upstreams.clone().unwrap_or_else(|| {
                            crate::dns::host_resolvers(&self.config.resolv_conf)
                        });
                    let srv = DnsServer::start(n.gateway, zone, up).await?;
                    a.dns.insert(n.id.clone(), srv);
                }
            }
        }
        a.state = state.clone();
        Ok(())
    }

    async fn apply_links(&self, state: &DesiredState) -> Result<(), Error> {
        let all = self.links.all().await?;
        let want_bridges: HashSet<String> = state.networks.iter().map(|n| n.bridge()).collect();
        let want_ports: HashSet<String> = state.endpoints.iter().map(|e| e.port()).collect();
        // Unwanted ports first, then unwanted bridges.
        let mut stale: Vec<_> = all
            .values()
            .filter(|l| {
                (names::is_owned_port(&l.name) && !want_ports.contains(&l.name))
                    || (names::is_owned_bridge(&l.name) && !want_bridges.contains(&l.name))
            })
            .collect();
        stale.sort_by_key(|l| !names::is_owned_port(&l.name));
        for l in stale {
            self.links.delete(l).await?;
        }
        let mut bridge_index = HashMap::new();
        for n in &state.networks {
            let name = n.bridge();
            let i = self
                .links
                .ensure_bridge(
                    all.get(&name),
                    &name,
                    n.mtu,
                    ipam::bridge_mac(n.gateway),
                    n.gateway_cidr(),
                )
                .await?;
            bridge_index.insert(n.id.as_str(), i);
        }
        for e in &state.endpoints {
            let (Some(n), Some(&b)) = (
                state.network(&e.network),
                bridge_index.get(e.network.as_str()),
            ) else {
                continue;
            };
            let name = e.port();
            self.links
                .ensure_port(all.get(&name), &name, b, n.mtu)
                .await?;
        }
        Ok(())
    }

    /// Removes everything mvm owns: `apply` of the empty state.
    pub async fn teardown(&self) -> Result<(), Error> {
        self.apply(&DesiredState::default()).await
    }

    /// Adds (or replaces) a network and applies.
    pub async fn add_network(&self, n: NetworkSpec) -> Result<(), Error> {
        self.update(|s| {
            s.networks.retain(|m| m.id != n.id);
            s.networks.push(n);
            Ok(())
        })
        .await
    }

    /// Removes a network, with its endpoints and their ports, and applies.
    pub async fn remove_network(&self, id: &str) -> Result<(), Error> {
        self.update(|s| {
            if s.network(id).is_none() {
                return Err(Error::NotFound {
                    what: "network",
                    id: id.into(),
                });
            }
            s.networks.retain(|n| n.id != id);
            let gone: HashSet<String> = s
                .endpoints
                .iter()
                .filter(|e| e.network == id)
                .map(|e| e.id.clone())
                .collect();
            s.endpoints.retain(|e| !gone.contains(&e.id));
            s.ports.retain(|p| !gone.contains(&p.endpoint));
            Ok(())
        })
        .await
    }

    /// Adds (or replaces) an endpoint with its published ports, and
    /// applies: its TAP exists when this returns, ready for the VMM.
    pub async fn add_endpoint(&self, e: EndpointSpec, ports: Vec<PortSpec>) -> Result<(), Error> {
        self.update(|s| {
            s.endpoints.retain(|x| x.id != e.id);
            s.ports.retain(|p| p.endpoint != e.id);
            s.endpoints.push(e);
            s.ports.extend(ports);
            Ok(())
        })
        .await
    }

    /// Removes an endpoint and its published ports, and applies.
    pub async fn remove_endpoint(&self, id: &str) -> Result<(), Error> {
        self.update(|s| {
            if s.endpoint(id).is_none() {
                return Err(Error::NotFound {
                    what: "endpoint",
                    id: id.into(),
                });
            }
            s.endpoints.retain(|e| e.id != id);
            s.ports.retain(|p| p.endpoint != id);
            Ok(())
        })
        .await
    }
}
