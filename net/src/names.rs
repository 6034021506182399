//! Names of the kernel objects mvm owns on the host.
//!
//! Everything mvm creates is recognisable by its name alone, so that a
//! reconcile after a crash finds its leftovers without any record of them:
//! interfaces whose names start with [`BRIDGE_PREFIX`] or [`PORT_PREFIX`]
//! (and [`DEFAULT_BRIDGE`]), and the nftables tables named [`TABLE`] in the
//! `inet` and `bridge` families. Nothing else on the host is ever touched.
//!
//! Interface names must fit `IFNAMSIZ` (15 bytes), so they carry a short
//! prefix of the object's id: [`SHORT_ID_LEN`] characters, as Docker shows
//! 12 of its 64 (two ids sharing a prefix are refused by the desired
//! state's validation, never silently merged).

/// The default network's bridge (Docker's `docker0`).
pub const DEFAULT_BRIDGE: &str = "mvm0";
/// Prefix of a user network's bridge: `mvmb-<short id>`.
pub const BRIDGE_PREFIX: &str = "mvmb-";
/// Prefix of an endpoint's bridge port (the TAP a VMM opens): `mvmt-<short id>`.
pub const PORT_PREFIX: &str = "mvmt-";
/// The nftables table mvm owns, in both the `inet` and `bridge` families.
pub const TABLE: &str = "mvm";
/// How many characters of an id go into an interface name.
pub const SHORT_ID_LEN: usize = 10;
/// Longest interface name (`IFNAMSIZ` less the NUL).
pub const MAX_IFNAME_LEN: usize = 15;

/// The short form of `id` used in interface names.
pub fn short_id(id: &str) -> &str {
    let end = id
        .char_indices()
        .nth(SHORT_ID_LEN)
        .map_or(id.len(), |(i, _)| i);
    &id[..end]
}

/// A user network's bridge name.
pub fn bridge_name(network_id: &str) -> String {
    format!("{BRIDGE_PREFIX}{}", short_id(network_id))
}

/// An endpoint's port name: the TAP the sandbox's VMM attaches to.
pub fn port_name(endpoint_id: &str) -> String {
    format!("{PORT_PREFIX}{}", short_id(endpoint_id))
}

/// Whether an interface of this name is mvm's to create and delete.
pub fn is_owned(ifname: &str) -> bool {
    ifname == DEFAULT_BRIDGE || is_owned_bridge(ifname) || is_owned_port(ifname)
}

/// Whether the name is one of mvm's bridges.
pub fn is_owned_bridge(ifname: &str) -> bool {
    ifname == DEFAULT_BRIDGE || ifname.starts_with(BRIDGE_PREFIX)
}

/// Whether the name is one of mvm's bridge ports.
pub fn is_owned_port(ifname: &str) -> bool {
    ifname.starts_with(PORT_PREFIX)
}

/// Whether `id` can name a network or an endpoint: 1 to 64 bytes of lower
/// case letters and digits (mvmd's ids are hex), so that the interface
/// names derived from it are valid and unambiguous.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_ifnamsiz_and_are_recognised() {
        let id = "0123456789abcdef0123456789abcdef";
        let b = bridge_name(id);
        let p = port_name(id);
        assert_eq!(b, "mvmb-0123456789");
        assert_eq!(p, "mvmt-0123456789");
        assert!(b.len() <= MAX_IFNAME_LEN && p.len() <= MAX_IFNAME_LEN);
        assert!(is_owned(&b) && is_owned(&p) && is_owned(DEFAULT_BRIDGE));
        assert!(is_owned_bridge(&b) && !is_owned_bridge(&p));
        assert!(is_owned_port(&p) && !is_owned_port(&b));
        for other in ["eth0", "mvmtap0", "mvmveth0", "docker0", "mvm1", "mvm"] {
            assert!(!is_owned(other), "{other}");
        }
        assert_eq!(port_name("ab"), "mvmt-ab");
    }

    #[test]
    fn ids_are_checked() {
        assert!(valid_id("abc123"));
        assert!(valid_id(&"f".repeat(64)));
        for bad in ["", "ABC", "a-b", "a b", "a/b", "é", &"f".repeat(65)] {
            assert!(!valid_id(bad), "{bad:?}");
        }
    }
}
