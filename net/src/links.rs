//! Links: mvm's bridges and bridge ports (TAPs), through rtnetlink.
//!
//! Bridges are created, addressed, brought up and deleted over netlink
//! (`rtnetlink`). TAPs cannot be made over netlink, so [`create_tap`] uses
//! the tun driver's ioctls: it makes a persistent TAP with exactly the
//! flags the VMM's virtio-net backend opens it with
//! (`IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, `vmm/virtio/src/net/tap.rs`), so
//! the VMM's `TUNSETIFF` attaches to it instead of failing on a flag
//! mismatch. The TAP has no owner set: only a process with
//! `CAP_NET_ADMIN` (the VMM as mvmd starts it) can attach to it.
//!
//! Everything here acts in the network namespace of the calling thread
//! (netlink sockets and `/dev/net/tun` take it at open), which is how the
//! tests run the whole library in a fresh namespace.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use mvm_vmm_api::MacAddr;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkInfo as NlInfo};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute};
use rtnetlink::{Handle, LinkBridge, LinkBridgePort, LinkUnspec, RouteMessageBuilder};

use crate::ipam::Taken;
use crate::names;

/// Why a link operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("cannot open a netlink socket: {0}; mvmd needs CAP_NET_ADMIN to manage networks")]
    Connect(#[source] std::io::Error),
    #[error("netlink {op} on {link:?} failed: {source}; mvmd needs CAP_NET_ADMIN, and the bridge and veth/tun kernel support (modules bridge, tun)")]
    Netlink {
        op: &'static str,
        link: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("cannot create TAP {name:?} ({step}): {source}; mvmd needs CAP_NET_ADMIN and /dev/net/tun (module tun)")]
    Tap {
        name: String,
        step: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("interface {name:?} appeared in a listing without an index; the kernel answered oddly, retry")]
    Vanished { name: String },
}

/// What mvm knows about one link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// `bridge`, `tun`, `veth`...; `None` for a plain device.
    pub kind: Option<String>,
    /// The bridge it is a port of.
    pub master: Option<u32>,
    pub mtu: u32,
    pub up: bool,
    pub mac: Option<MacAddr>,
}

/// A netlink connection (its task runs on the caller's tokio runtime).
#[derive(Clone)]
pub struct Links {
    handle: Handle,
}

impl std::fmt::Debug for Links {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Links").finish_non_exhaustive()
    }
}

fn nl(op: &'static str, link: &str) -> impl FnOnce(rtnetlink::Error) -> LinkError {
    let link = link.to_owned();
    move |source| LinkError::Netlink { op, link, source }
}

impl Links {
    /// Opens a netlink socket in the calling thread's network namespace.
    /// Must be called inside a tokio runtime.
    pub fn new() -> Result<Self, LinkError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(LinkError::Connect)?;
        tokio::spawn(conn);
        Ok(Self { handle })
    }

    /// Every link, by name.
    pub async fn all(&self) -> Result<HashMap<String, Link>, LinkError> {
        let mut out = HashMap::new();
        let mut s = self.handle.link().get().execute();
        while let Some(m) = s.try_next().await.map_err(nl("dump links", "*"))? {
            let mut l = Link {
                index: m.header.index,
                name: String::new(),
                kind: None,
                master: None,
                mtu: 0,
                up: m.header.flags.contains(LinkFlags::Up),
                mac: None,
            };
            for a in &m.attributes {
                match a {
                    LinkAttribute::IfName(n) => l.name = n.clone(),
                    LinkAttribute::Mtu(v) => l.mtu = *v,
                    LinkAttribute::Controller(c) => l.master = Some(*c),
                    LinkAttribute::Address(b) if b.len() == 6 => {
                        let mut mac = [0u8; 6];
                        mac.copy_from_slice(b);
                        l.mac = Some(MacAddr(mac));
                    }
                    LinkAttribute::LinkInfo(infos) => {
                        for i in infos {
                            if let NlInfo::Kind(k) = i {
                                l.kind = Some(k.to_string());
                            }
                        }
                    }
                    _ => {}
                }
            }
            if l.index == 0 {
                return Err(LinkError::Vanished { name: l.name });
            }
            out.insert(l.name.clone(), l);
        }
        Ok(out)
    }

    /// The links mvm owns ([`names::is_owned`]), sorted by name.
    pub async fn owned(&self) -> Result<Vec<Link>, LinkError> {
        let mut v: Vec<Link> = self
            .all()
            .await?
            .into_values()
            .filter(|l| names::is_owned(&l.name))
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(v)
    }

    /// Makes bridge `name` exist, up, with this MTU and MAC and exactly
    /// one IPv4 address, `gateway`. Returns its index.
    pub async fn ensure_bridge(
        &self,
        existing: Option<&Link>,
        name: &str,
        mtu: u16,
        mac: MacAddr,
        gateway: Ipv4Net,
    ) -> Result<u32, LinkError> {
        let index = match existing {
            Some(l) => {
                if l.mtu != u32::from(mtu) || !l.up || l.mac != Some(mac) {
                    self.handle
                        .link()
                        .set(
                            LinkUnspec::new_with_index(l.index)
                                .mtu(mtu.into())
                                .address(mac.0.to_vec())
                                .up()
                                .build(),
                        )
                        .execute()
                        .await
                        .map_err(nl("set", name))?;
                }
                l.index
            }
            None => {
                self.handle
                    .link()
                    .add(
                        LinkBridge::new(name)
                            .mtu(mtu.into())
                            .address(mac.0.to_vec())
                            .build(),
                    )
                    .execute()
                    .await
                    .map_err(nl("create bridge", name))?;
                self.index_of(name).await?
            }
        };
        self.ensure_only_address(index, name, gateway).await?;
        Ok(index)
    }

    async fn index_of(&self, name: &str) -> Result<u32, LinkError> {
        self.all()
            .await?
            .get(name)
            .map(|l| l.index)
            .ok_or_else(|| LinkError::Vanished { name: name.into() })
    }

    /// Leaves `want` as the link's only IPv4 address.
    async fn ensure_only_address(
        &self,
        index: u32,
        name: &str,
        want: Ipv4Net,
    ) -> Result<(), LinkError> {
        let mut have = false;
        let mut s = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        let mut stale = Vec::new();
        while let Some(m) = s.try_next().await.map_err(nl("list addresses", name))? {
            if m.header.index != index {
                continue;
            }
            let ip = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(IpAddr::V4(ip)) => Some(*ip),
                _ => None,
            });
            match ip {
                Some(ip) if ip == want.addr() && m.header.prefix_len == want.prefix_len() => {
                    have = true
                }
                Some(_) => stale.push(m),
                None => {}
            }
        }
        for m in stale {
            self.handle
                .address()
                .del(m)
                .execute()
                .await
                .map_err(nl("remove stale address", name))?;
        }
        if !have {
            self.handle
                .address()
                .add(index, IpAddr::V4(want.addr()), want.prefix_len())
                .execute()
                .await
                .map_err(nl("add address", name))?;
        }
        Ok(())
    }

    /// Makes port `name` exist (a new persistent TAP if missing; an
    /// existing link of that name is kept whatever its kind, so a VMM's
    /// open TAP is never recreated under it), a port of `bridge`, up,
    /// with this MTU.
    pub async fn ensure_port(
        &self,
        existing: Option<&Link>,
        name: &str,
        bridge: u32,
        mtu: u16,
    ) -> Result<u32, LinkError> {
        let index = match existing {
            Some(l) => {
                if l.master == Some(bridge) && l.mtu == u32::from(mtu) && l.up {
                    return Ok(l.index);
                }
                l.index
            }
            None => {
                create_tap(name)?;
                self.index_of(name).await?
            }
        };
        self.handle
            .link()
            .set(
                LinkUnspec::new_with_index(index)
                    .mtu(mtu.into())
                    .controller(bridge)
                    .up()
                    .build(),
            )
            .execute()
            .await
            .map_err(nl("attach to bridge", name))?;
        // Hairpin: a guest reaching its own published port through the
        // host's address gets its DNATed traffic back out of the port it
        // came in by (Docker does the same). Guard: a guest's spanning
        // tree frames are ignored, so no guest can reshape the bridge.
        self.handle
            .link()
            .set_port(LinkBridgePort::new(index).hairpin(true).guard(true).build())
            .execute()
            .await
            .map_err(nl("set bridge port options", name))?;
        Ok(index)
    }

    /// Deletes a link (a TAP a VMM still holds open disappears from the
    /// bridge at once; the VMM's reads then fail).
    pub async fn delete(&self, link: &Link) -> Result<(), LinkError> {
        match self.handle.link().del(link.index).execute().await {
            Ok(()) => Ok(()),
            // Gone already (a VMM's non-persistent link, a race): fine.
            Err(rtnetlink::Error::NetlinkError(e))
                if e.raw_code() == -libc::ENODEV || e.raw_code() == -libc::ENOENT =>
            {
                Ok(())
            }
            Err(e) => Err(nl("delete", &link.name)(e)),
        }
    }

    /// The host's IPv4 routes (main table, default routes excluded) that
    /// are not on mvm's own bridges: what a new network's subnet must not
    /// overlap ([`crate::ipam::choose_subnet`]).
    pub async fn host_routes(&self) -> Result<Vec<Taken>, LinkError> {
        let links = self.all().await?;
        let by_index: HashMap<u32, &str> =
            links.values().map(|l| (l.index, l.name.as_str())).collect();
        let mut out = Vec::new();
        let mut s = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute();
        while let Some(m) = s.try_next().await.map_err(nl("dump routes", "*"))? {
            let len = m.header.destination_prefix_length;
            if len == 0 || m.header.table != 254 {
                continue;
            }
            let mut dst = None;
            let mut dev = None;
            for a in &m.attributes {
                match a {
                    RouteAttribute::Destination(RouteAddress::Inet(ip)) => dst = Some(*ip),
                    RouteAttribute::Oif(i) => dev = by_index.get(i).copied(),
                    _ => {}
                }
            }
            let Some(net) = dst.and_then(|d| Ipv4Net::new(d, len).ok()) else {
                continue;
            };
            if dev.is_some_and(names::is_owned) {
                continue;
            }
            out.push(Taken {
                net: net.trunc(),
                what: format!("the host route via {}", dev.unwrap_or("?")),
            });
        }
        Ok(out)
    }
}

/// Creates a persistent TAP `name` with the VMM's flags, in the calling
/// thread's network namespace.
pub fn create_tap(name: &str) -> Result<(), LinkError> {
    let err = |step| {
        let name = name.to_owned();
        move |source| LinkError::Tap { name, step, source }
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(err("open /dev/net/tun"))?;
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags =
        (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes one `struct ifreq`, which `req`
    // is, alive for the call; the name is NUL-terminated (names are at
    // most 15 bytes, checked by the desired state's validation).
    if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) } < 0 {
        return Err(err("TUNSETIFF")(std::io::Error::last_os_error()));
    }
    // SAFETY: TUNSETPERSIST takes an int by value.
    if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETPERSIST, 1 as libc::c_ulong) } < 0 {
        return Err(err("TUNSETPERSIST")(std::io::Error::last_os_error()));
    }
    Ok(())
}
