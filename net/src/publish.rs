//! `-p` as Docker spells it, turned into concrete [`PortSpec`]s.
//!
//! `[HOST_IP:][HOST_PORT[-END]:]GUEST_PORT[-END][/tcp|/udp]`; an IPv6
//! host address in brackets (`[::1]:8080:80`). A range maps port by port
//! and both sides must be as long (a host range with one guest port is
//! Docker's "any free port of the range", not supported here: the error
//! says so). No host port, or 0, is an ephemeral port, bound at once by
//! [`HostNet::publish`](crate::HostNet::publish) and reported back.

use std::net::IpAddr;

use crate::spec::{PortSpec, Protocol};

/// One parsed `-p`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub host_ip: Option<IpAddr>,
    /// First and last host port; `(0, 0)` for ephemeral ports.
    pub host_ports: (u16, u16),
    pub guest_ports: (u16, u16),
    pub protocol: Protocol,
}

/// Why a `-p` is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    #[error("invalid port publication {spec:?}: {why}; the form is [HOST_IP:][HOST_PORT[-END]:]GUEST_PORT[-END][/tcp|/udp], e.g. 8080:80 or 127.0.0.1:8000-8010:80-90/udp")]
    Syntax { spec: String, why: String },
}

fn range(s: &str, spec: &str, allow_zero: bool) -> Result<(u16, u16), PublishError> {
    let bad = |why: String| PublishError::Syntax {
        spec: spec.to_owned(),
        why,
    };
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let p = |x: &str| {
        x.parse::<u16>()
            .map_err(|_| bad(format!("{x:?} is not a port (1 to 65535)")))
    };
    let (a, b) = (p(a)?, p(b)?);
    if (a == 0 || b == 0) && !(allow_zero && a == 0 && b == 0) {
        return Err(bad("port 0 is not a port".into()));
    }
    if b < a {
        return Err(bad(format!("range {a}-{b} ends before it starts")));
    }
    Ok((a, b))
}

impl Publish {
    /// Parses one `-p` value.
    pub fn parse(spec: &str) -> Result<Self, PublishError> {
        let bad = |why: &str| PublishError::Syntax {
            spec: spec.to_owned(),
            why: why.to_owned(),
        };
        let (rest, protocol) = match spec.rsplit_once('/') {
            Some((r, "tcp")) => (r, Protocol::Tcp),
            Some((r, "udp")) => (r, Protocol::Udp),
            Some(_) => return Err(bad("the protocol must be tcp or udp")),
            None => (spec, Protocol::Tcp),
        };
        // An IPv6 host address is bracketed.
        let (host_ip, rest) = if let Some(r) = rest.strip_prefix('[') {
            let (ip, r) = r
                .split_once("]:")
                .ok_or_else(|| bad("unclosed [ of an IPv6 address"))?;
            let ip: std::net::Ipv6Addr = ip.parse().map_err(|_| bad("bad IPv6 address"))?;
            (Some(IpAddr::V6(ip)), r)
        } else {
            let parts: Vec<&str> = rest.split(':').collect();
            match parts.len() {
                1 | 2 => (None, rest),
                3 => {
                    let ip: IpAddr = parts[0].parse().map_err(|_| bad("bad host address"))?;
                    (Some(ip), &rest[parts[0].len() + 1..])
                }
                _ => return Err(bad("too many ':'; bracket an IPv6 address")),
            }
        };
        let (host, guest) = match rest.split_once(':') {
            Some(("", g)) => ("0", g),
            Some((h, g)) => (h, g),
            None => ("0", rest),
        };
        let guest_ports = range(guest, spec, false)?;
        let host_ports = range(host, spec, true)?;
        if host_ports != (0, 0) && host_ports.1 - host_ports.0 != guest_ports.1 - guest_ports.0 {
            return Err(bad("the host and guest ranges must be equally long"));
        }
        Ok(Self {
            host_ip,
            host_ports,
            guest_ports,
            protocol,
        })
    }

    /// The publications, one per port, for `endpoint`; host port 0 where
    /// an ephemeral one is to be picked.
    pub fn expand(&self, endpoint: &str) -> Vec<PortSpec> {
        (self.guest_ports.0..=self.guest_ports.1)
            .enumerate()
            .map(|(i, guest_port)| PortSpec {
                endpoint: endpoint.to_owned(),
                protocol: self.protocol,
                host_ip: self.host_ip,
                host_port: if self.host_ports.0 == 0 {
                    0
                } else {
                    self.host_ports.0 + i as u16
                },
                guest_port,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_forms_parse() {
        let p = Publish::parse("8080:80").unwrap();
        assert_eq!(
            (p.host_ports, p.guest_ports, p.protocol),
            ((8080, 8080), (80, 80), Protocol::Tcp)
        );
        let p = Publish::parse("127.0.0.1:8000-8002:80-82/udp").unwrap();
        assert_eq!(p.host_ip, Some("127.0.0.1".parse().unwrap()));
        let v = p.expand("e1");
        assert_eq!(v.len(), 3);
        assert_eq!(
            (v[2].host_port, v[2].guest_port, v[2].protocol),
            (8002, 82, Protocol::Udp)
        );
        let p = Publish::parse("80").unwrap();
        assert_eq!(p.host_ports, (0, 0));
        assert_eq!(p.expand("e")[0].host_port, 0);
        let p = Publish::parse("[::1]:9000:90").unwrap();
        assert_eq!(p.host_ip, Some("::1".parse().unwrap()));
        assert_eq!(
            Publish::parse("0.0.0.0::53/udp").unwrap().host_ports,
            (0, 0)
        );
        for (bad, why) in [
            ("8080:80/sctp", "tcp or udp"),
            ("8080:0", "port 0"),
            ("70000:80", "not a port"),
            ("8000-8010:80", "equally long"),
            ("90-80", "ends before"),
            ("x:1:2", "host address"),
            ("1:2:3:4", "too many"),
            ("[::1:80", "unclosed"),
        ] {
            let e = Publish::parse(bad).unwrap_err().to_string();
            assert!(e.contains(why) && e.contains(bad), "{bad}: {e}");
        }
    }
}
