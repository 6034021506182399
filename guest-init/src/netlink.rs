//! A small synchronous rtnetlink client: list links, set a link's name,
//! MTU and up state, add addresses and routes.
//!
//! Hand-written rather than `netlink-packet-route` + `netlink-sys`: with
//! them init grew from 1.96 MB to 2.82 MB (stripped, static), since
//! decoding any reply links the decoders of every rtnetlink attribute
//! (tc, link kinds, stats...), and init is copied into every boot's
//! initramfs. Init needs five requests with a handful of attributes; they
//! are built here with `libc`'s constants, and replies are decoded only
//! as far as needed (header, error code, a link's index, name, MAC, MTU
//! and flags), with every length checked against the datagram. Not the
//! `rtnetlink` crate either: it is async and would link tokio.
//!
//! Each request asks for an acknowledgement and waits for it, so a
//! refused operation comes back as the kernel's errno at the step that
//! caused it.

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::sys::cvt;

/// Largest reply datagram read at once.
const RECV_BUF: usize = 64 * 1024;

const NLMSG_HDRLEN: usize = 16;
const IFINFOMSG_LEN: usize = 16;
const IFADDRMSG_LEN: usize = 8;
const RTMSG_LEN: usize = 12;

// Attribute types (linux/if_link.h, if_addr.h, rtnetlink.h).
const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_FLAGS: u16 = 8;
const IFA_F_NODAD: u32 = 0x02;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_BOOT: u8 = 3;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RT_SCOPE_LINK: u8 = 253;
const RTN_UNICAST: u8 = 1;

/// A network device as the kernel lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// `None` for devices without a 6-byte hardware address.
    pub mac: Option<[u8; 6]>,
    pub mtu: Option<u32>,
    pub up: bool,
}

/// An rtnetlink socket of the calling thread's network namespace.
pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

/// A request under construction: header, fixed part, attributes.
struct Msg(Vec<u8>);

impl Msg {
    fn new(kind: u16, flags: u16, fixed: &[u8]) -> Self {
        let mut b = vec![0u8; NLMSG_HDRLEN];
        b[4..6].copy_from_slice(&kind.to_ne_bytes());
        let flags = flags | libc::NLM_F_REQUEST as u16 | libc::NLM_F_ACK as u16;
        b[6..8].copy_from_slice(&flags.to_ne_bytes());
        b.extend_from_slice(fixed);
        Self(b)
    }

    fn attr(&mut self, kind: u16, data: &[u8]) -> &mut Self {
        let len = (4 + data.len()) as u16;
        self.0.extend_from_slice(&len.to_ne_bytes());
        self.0.extend_from_slice(&kind.to_ne_bytes());
        self.0.extend_from_slice(data);
        while !self.0.len().is_multiple_of(4) {
            self.0.push(0);
        }
        self
    }

    fn finish(mut self, seq: u32) -> Vec<u8> {
        let len = self.0.len() as u32;
        self.0[0..4].copy_from_slice(&len.to_ne_bytes());
        self.0[8..12].copy_from_slice(&seq.to_ne_bytes());
        self.0
    }
}

fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn family(ip: IpAddr) -> u8 {
    if ip.is_ipv4() {
        libc::AF_INET as u8
    } else {
        libc::AF_INET6 as u8
    }
}

fn bad_reply(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("malformed netlink reply: {what}"),
    )
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl Netlink {
    pub fn open() -> io::Result<Self> {
        // SAFETY: socket(2) with constant arguments.
        let fd = cvt(unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        })?;
        // SAFETY: socket just returned this descriptor; we own it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_nl is plain data; all-zero is valid.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: bind with a valid sockaddr_nl and its size; port 0 lets
        // the kernel choose ours.
        cvt(unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        })?;
        Ok(Self { fd, seq: 0 })
    }

    /// Every network device.
    pub fn links(&mut self) -> io::Result<Vec<Link>> {
        let msg = Msg::new(
            libc::RTM_GETLINK,
            libc::NLM_F_DUMP as u16,
            &[0u8; IFINFOMSG_LEN],
        );
        let mut links = Vec::new();
        self.request(msg, |kind, body| {
            if kind == libc::RTM_NEWLINK {
                links.push(parse_link(body)?);
            }
            Ok(())
        })?;
        Ok(links)
    }

    /// Change what is given of device `index`: its name, MTU, up state.
    pub fn set_link(
        &mut self,
        index: u32,
        name: Option<&str>,
        mtu: Option<u32>,
        up: Option<bool>,
    ) -> io::Result<()> {
        let mut info = [0u8; IFINFOMSG_LEN];
        info[4..8].copy_from_slice(&index.to_ne_bytes());
        if let Some(up) = up {
            let flag = libc::IFF_UP as u32;
            info[8..12].copy_from_slice(&(if up { flag } else { 0 }).to_ne_bytes());
            info[12..16].copy_from_slice(&flag.to_ne_bytes());
        }
        let mut msg = Msg::new(libc::RTM_SETLINK, 0, &info);
        if let Some(name) = name {
            let mut z = name.as_bytes().to_vec();
            z.push(0);
            msg.attr(IFLA_IFNAME, &z);
        }
        if let Some(mtu) = mtu {
            msg.attr(IFLA_MTU, &mtu.to_ne_bytes());
        }
        self.request(msg, |_, _| Ok(()))
    }

    /// Add `address/prefix_len` to device `index`; an IPv6 address skips
    /// duplicate address detection (`IFA_F_NODAD`) so it is usable at once.
    /// Fails with `EEXIST` if the device has it already.
    pub fn add_address(&mut self, index: u32, address: IpAddr, prefix_len: u8) -> io::Result<()> {
        let mut fixed = [0u8; IFADDRMSG_LEN];
        fixed[0] = family(address);
        fixed[1] = prefix_len;
        fixed[4..8].copy_from_slice(&index.to_ne_bytes());
        let flags = (libc::NLM_F_CREATE | libc::NLM_F_EXCL) as u16;
        let mut msg = Msg::new(libc::RTM_NEWADDR, flags, &fixed);
        let ip = ip_bytes(address);
        msg.attr(IFA_LOCAL, &ip).attr(IFA_ADDRESS, &ip);
        if address.is_ipv6() {
            msg.attr(IFA_FLAGS, &IFA_F_NODAD.to_ne_bytes());
        }
        self.request(msg, |_, _| Ok(()))
    }

    /// Add a route in the main table to `destination/prefix_len` through
    /// device `index`, via `gateway` or on-link. Fails with `EEXIST` if
    /// the same route exists.
    pub fn add_route(
        &mut self,
        index: u32,
        destination: IpAddr,
        prefix_len: u8,
        gateway: Option<IpAddr>,
    ) -> io::Result<()> {
        let mut fixed = [0u8; RTMSG_LEN];
        fixed[0] = family(destination);
        fixed[1] = prefix_len;
        fixed[4] = RT_TABLE_MAIN;
        fixed[5] = RTPROT_BOOT;
        fixed[6] = if gateway.is_some() {
            RT_SCOPE_UNIVERSE
        } else {
            RT_SCOPE_LINK
        };
        fixed[7] = RTN_UNICAST;
        let flags = (libc::NLM_F_CREATE | libc::NLM_F_EXCL) as u16;
        let mut msg = Msg::new(libc::RTM_NEWROUTE, flags, &fixed);
        if prefix_len > 0 {
            msg.attr(RTA_DST, &ip_bytes(destination));
        }
        if let Some(gw) = gateway {
            msg.attr(RTA_GATEWAY, &ip_bytes(gw));
        }
        msg.attr(RTA_OIF, &index.to_ne_bytes());
        self.request(msg, |_, _| Ok(()))
    }

    /// Send `msg` and hand each reply of ours (type, body after the
    /// netlink header) to `each` until the acknowledgement or the end of
    /// a dump; a kernel error becomes its errno.
    fn request(
        &mut self,
        msg: Msg,
        mut each: impl FnMut(u16, &[u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let packet = msg.finish(seq);
        // SAFETY: sockaddr_nl is plain data; all-zero (port 0) is the kernel.
        let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: sendto with our buffer and a valid address of its size.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                packet.as_ptr().cast(),
                packet.len(),
                0,
                (&kernel as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = vec![0u8; RECV_BUF];
        loop {
            // SAFETY: recv into our buffer of its length.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_TRUNC,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let n = n as usize;
            if n > buf.len() {
                return Err(bad_reply("a datagram larger than 64 KiB"));
            }
            let mut rest = &buf[..n];
            while rest.len() >= NLMSG_HDRLEN {
                let len = u32_at(rest, 0) as usize;
                if len < NLMSG_HDRLEN || len > rest.len() {
                    return Err(bad_reply("a message length beyond the datagram"));
                }
                let kind = u16_at(rest, 4);
                let reply_seq = u32_at(rest, 8);
                let body = &rest[NLMSG_HDRLEN..len];
                rest = rest.get(len.next_multiple_of(4)..).unwrap_or_default();
                if reply_seq != seq {
                    continue;
                }
                match i32::from(kind) {
                    libc::NLMSG_ERROR => {
                        if body.len() < 4 {
                            return Err(bad_reply("a short error message"));
                        }
                        let code = i32::from_ne_bytes([body[0], body[1], body[2], body[3]]);
                        return match code {
                            0 => Ok(()),
                            c => Err(io::Error::from_raw_os_error(c.saturating_neg())),
                        };
                    }
                    libc::NLMSG_DONE => return Ok(()),
                    libc::NLMSG_NOOP => {}
                    _ => each(kind, body)?,
                }
            }
        }
    }
}

/// A link from an `RTM_NEWLINK` body (ifinfomsg, then attributes).
fn parse_link(body: &[u8]) -> io::Result<Link> {
    if body.len() < IFINFOMSG_LEN {
        return Err(bad_reply("a short link message"));
    }
    let mut link = Link {
        index: u32_at(body, 4),
        name: String::new(),
        mac: None,
        mtu: None,
        up: u32_at(body, 8) & libc::IFF_UP as u32 != 0,
    };
    let mut rest = &body[IFINFOMSG_LEN..];
    while rest.len() >= 4 {
        let len = usize::from(u16_at(rest, 0));
        if len < 4 || len > rest.len() {
            return Err(bad_reply("an attribute length beyond its message"));
        }
        let data = &rest[4..len];
        // The top bits are flags (NLA_F_NESTED, NLA_F_NET_BYTEORDER).
        match u16_at(rest, 2) & 0x3fff {
            IFLA_IFNAME => {
                let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
                link.name = String::from_utf8_lossy(&data[..end]).into_owned();
            }
            IFLA_ADDRESS => link.mac = <[u8; 6]>::try_from(data).ok(),
            IFLA_MTU if data.len() == 4 => link.mtu = Some(u32_at(data, 0)),
            _ => {}
        }
        rest = rest.get(len.next_multiple_of(4)..).unwrap_or_default();
    }
    Ok(link)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_laid_out_as_the_kernel_reads_them() {
        let mut m = Msg::new(libc::RTM_SETLINK, 0, &[0u8; IFINFOMSG_LEN]);
        m.attr(IFLA_IFNAME, b"eth0\0")
            .attr(IFLA_MTU, &1400u32.to_ne_bytes());
        let b = m.finish(7);
        // Header 16 + ifinfomsg 16 + name (4+5, padded to 12) + mtu 8.
        assert_eq!(b.len(), 52);
        assert_eq!(u32_at(&b, 0), 52);
        assert_eq!(u16_at(&b, 4), libc::RTM_SETLINK);
        assert_eq!(
            u16_at(&b, 6),
            (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16
        );
        assert_eq!(u32_at(&b, 8), 7);
        assert_eq!(u16_at(&b, 32), 9);
        assert_eq!(&b[36..41], b"eth0\0");
        assert_eq!(u16_at(&b, 44), 8);
        assert_eq!(u32_at(&b, 48), 1400);
    }

    #[test]
    fn hostile_link_replies_are_errors_not_panics() {
        assert!(parse_link(&[0u8; 8]).is_err());
        let mut body = vec![0u8; IFINFOMSG_LEN];
        body.extend_from_slice(&[200, 0, 3, 0, b'x']);
        assert!(parse_link(&body).is_err());
        let mut body = vec![0u8; IFINFOMSG_LEN];
        body.extend_from_slice(&[2, 0, 3, 0]);
        assert!(parse_link(&body).is_err(), "length below the header");
        let mut body = vec![0u8; IFINFOMSG_LEN];
        body[4] = 2;
        body.extend_from_slice(&[8, 0, 3, 0, b'e', b't', b'h', 0]);
        body.extend_from_slice(&[7, 0, 4, 0, 1, 2, 3, 0]);
        let l = parse_link(&body).unwrap();
        assert_eq!((l.index, l.name.as_str(), l.mtu), (2, "eth", None));
    }
}
