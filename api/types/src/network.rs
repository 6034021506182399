//! Networks (`/v1/networks`) and a sandbox's view of its network.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `POST /v1/networks`: create a user network (Docker's bridge driver).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkCreateRequest {
    /// Unique name. `[a-zA-Z0-9][a-zA-Z0-9_.-]*`; `bridge`, `none` and
    /// `host` are reserved.
    pub name: String,
    /// IPv4 subnet (`10.5.0.0/24`); chosen from the default pools when
    /// absent.
    #[serde(default)]
    pub subnet: Option<String>,
    /// The gateway (the host's address on the network); the subnet's
    /// first address when absent.
    #[serde(default)]
    pub gateway: Option<String>,
    /// No route out, no NAT, no published ports (`--internal`).
    #[serde(default)]
    pub internal: bool,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// `POST /v1/networks/{id}/connect`: put a sandbox on one more network
/// (a NIC and an endpoint of its own from its next start). Only for a
/// sandbox that is not running: a microVM's NICs are fixed at boot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConnectRequest {
    /// The sandbox (id, unique id prefix or name).
    pub sandbox: String,
    /// Names it has on that network besides its own (`--alias`).
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Its IPv4 address on that network (`--ip`), a user network's only.
    #[serde(default)]
    pub ip: Option<String>,
}

/// `POST /v1/networks/{id}/disconnect`: take a sandbox that is not
/// running off a network.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkDisconnectRequest {
    /// The sandbox (id, unique id prefix or name).
    pub sandbox: String,
}

/// Answer to a network create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkCreateResponse {
    /// The new network's id (64 hex characters).
    pub id: String,
}

/// A sandbox on a network, as `GET /v1/networks/{id}` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkMember {
    /// Sandbox id.
    pub id: String,
    /// Sandbox name.
    pub name: String,
    /// Its address with the prefix length (`172.30.0.2/16`).
    pub ipv4_address: String,
    /// Its MAC.
    pub mac_address: String,
}

/// `GET /v1/networks/{id}` and a row of `GET /v1/networks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkInfo {
    /// 64 hex characters.
    pub id: String,
    /// Unique name.
    pub name: String,
    /// Always `bridge` (the only driver).
    pub driver: String,
    /// The default network (`bridge`) or a user network.
    pub default: bool,
    /// IPv4 subnet.
    pub subnet: String,
    /// The host's address on it.
    pub gateway: String,
    /// No route out.
    pub internal: bool,
    /// MTU.
    pub mtu: u16,
    /// The host bridge.
    pub bridge: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// RFC 3339 creation time.
    pub created: String,
    /// Running sandboxes attached to it.
    pub sandboxes: Vec<NetworkMember>,
}

/// `POST /v1/networks/prune` answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkPruneResponse {
    /// Names of the networks removed.
    pub deleted: Vec<String>,
}

/// One published port: `host_ip:host_port -> container_port/protocol`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortBinding {
    /// The host address; absent for all of them.
    #[serde(default)]
    pub host_ip: Option<String>,
    /// The host port.
    pub host_port: u16,
    /// The port in the guest.
    pub container_port: u16,
    /// `tcp` or `udp`.
    pub protocol: String,
}

impl std::fmt::Display for PortBinding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.host_ip.as_deref() {
            Some(ip) if ip.contains(':') => write!(f, "[{ip}]:")?,
            Some(ip) => write!(f, "{ip}:")?,
            None => f.write_str("0.0.0.0:")?,
        }
        write!(
            f,
            "{}->{}/{}",
            self.host_port, self.container_port, self.protocol
        )
    }
}

/// A sandbox's network in `GET /v1/sandboxes/{id}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSettings {
    /// The network it joins (`bridge`, `none`, a user network's name).
    pub network: String,
    /// Its address with the prefix length while it runs.
    #[serde(default)]
    pub ipv4_address: Option<String>,
    /// The gateway while it runs.
    #[serde(default)]
    pub gateway: Option<String>,
    /// Its MAC while it runs.
    #[serde(default)]
    pub mac_address: Option<String>,
    /// Its aliases (`--network-alias`).
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Published ports while it runs.
    #[serde(default)]
    pub ports: Vec<PortBinding>,
    /// The further networks it is on (`network connect`), by name; each
    /// is a NIC of its own after the first (eth1, eth2, ...).
    #[serde(default)]
    pub extra_networks: Vec<String>,
}
