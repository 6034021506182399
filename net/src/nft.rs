//! mvm's nftables ruleset, generated whole from the desired state and
//! applied atomically.
//!
//! mvm owns two tables, `inet mvm` and `bridge mvm` ([`names::TABLE`]),
//! and touches nothing else on the host. Every apply sends one `nft -j`
//! transaction: `add table` (so the delete cannot fail on a missing
//! table), `delete table`, then the whole new table. The kernel commits
//! the batch as one, so no packet ever sees a half-built ruleset, a
//! repeated apply never duplicates a rule, and an apply after a crash
//! replaces whatever the dead process left. An empty state leaves only the
//! add+delete: both tables are gone.
//!
//! The rules, and why each exists (the architecture doc has the same list):
//!
//! `inet mvm`:
//! - `prerouting` (nat, dstnat): traffic to a local address jumps to
//!   `ports`, so published ports work from outside and from other
//!   networks' guests (Docker semantics).
//! - `output` (nat, dstnat): the same for what the host itself sends to a
//!   non-loopback local address; loopback (127.0.0.1) is the userspace
//!   proxy's job, as DNAT cannot reach it.
//! - `ports`: one `dnat` per published IPv4 port (IPv6 publications are
//!   served by the proxy only: guests are IPv4-only).
//! - `postrouting` (nat, srcnat): masquerade what a non-internal network
//!   sends out of any interface but its own bridge; masquerade DNATed
//!   traffic of a network back into its own bridge (hairpin: a guest
//!   reaching its own published port through the host's address).
//! - `forward` (filter): replies pass; DNATed connections (published
//!   ports) pass; traffic within one bridge passes (seen only with
//!   `br_netfilter`); anything else between two mvm bridges is dropped
//!   (isolation); an internal network's bridge forwards nothing
//!   elsewhere; nothing new enters a bridge from outside.
//! - `input` (filter): from an mvm bridge the host accepts replies to its
//!   own connections and DNS to that network's gateway, nothing else (so
//!   a guest cannot reach mvmd's API or any other host service, on the
//!   gateway or on any other host address).
//!
//! `bridge mvm`:
//! - `ports` (filter, prerouting): a frame from an endpoint's port must
//!   carry the endpoint's MAC and, for IPv4 and ARP, its address (ARP
//!   sender included); everything else from that port is dropped
//!   (anti-spoofing; IPv6 included, guests are IPv4-only).
//!
//! The chains use policy accept and match only mvm's interfaces, so
//! traffic that is not mvm's is never changed. Another table's drop (a
//! firewall's, Docker's `FORWARD DROP`) still drops mvm's traffic: nftables
//! verdicts of other tables are not overridden by an accept here.

use std::borrow::Cow;
use std::collections::HashSet;
use std::net::IpAddr;

use ipnet::Ipv4Net;
use nftables::batch::Batch;
use nftables::expr::{
    Expression, Fib, FibFlag, FibResult, Meta, MetaKey, NamedExpression, Payload, PayloadField,
    Prefix, SetItem, CT,
};
use nftables::schema::{Chain, NfListObject, Nftables, Rule, Table};
use nftables::stmt::{Match, NATFamily, Operator, Statement, NAT};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

use crate::names::TABLE;
use crate::spec::{DesiredState, Protocol};

/// Why the ruleset could not be applied or read.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("cannot run nft: {0}; install the nftables package (nft 1.0 or later)")]
    Exec(String),
    #[error("nft refused mvm's ruleset: {stderr}; the kernel needs nf_tables, nft_nat, nft_masq, nft_fib, nft_ct and the bridge family (modules nf_tables, nft_chain_nat, nf_conntrack, nft_fib_inet, nf_tables_bridge)")]
    Refused { stderr: String },
    #[error("nft printed something that is not its JSON: {0}")]
    Output(String),
}

fn s(v: impl Into<String>) -> Expression<'static> {
    Expression::String(Cow::Owned(v.into()))
}

fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

fn payload(protocol: &'static str, field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: protocol.into(),
            field: field.into(),
        },
    )))
}

fn ct(key: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::CT(CT {
        key: key.into(),
        family: None,
        dir: None,
    }))
}

fn prefix(net: Ipv4Net) -> Expression<'static> {
    Expression::Named(NamedExpression::Prefix(Prefix {
        addr: Box::new(s(net.network().to_string())),
        len: net.prefix_len().into(),
    }))
}

fn set(items: &[String]) -> Expression<'static> {
    Expression::Named(NamedExpression::Set(
        items
            .iter()
            .map(|i| SetItem::Element(s(i.clone())))
            .collect(),
    ))
}

fn m(left: Expression<'static>, op: Operator, right: Expression<'static>) -> Statement<'static> {
    Statement::Match(Match { left, right, op })
}

fn eq(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    m(left, Operator::EQ, right)
}

fn iif(name: &str) -> Statement<'static> {
    eq(meta(MetaKey::Iifname), s(name))
}

fn oif(name: &str) -> Statement<'static> {
    eq(meta(MetaKey::Oifname), s(name))
}

fn iif_in(names: &[String]) -> Statement<'static> {
    m(meta(MetaKey::Iifname), Operator::IN, set(names))
}

fn oif_in(names: &[String]) -> Statement<'static> {
    m(meta(MetaKey::Oifname), Operator::IN, set(names))
}

fn ct_reply() -> Statement<'static> {
    m(
        ct("state"),
        Operator::IN,
        Expression::List(vec![s("established"), s("related")]),
    )
}

fn ct_dnat() -> Statement<'static> {
    m(ct("status"), Operator::IN, s("dnat"))
}

fn local_daddr() -> Statement<'static> {
    eq(
        Expression::Named(NamedExpression::Fib(Fib {
            result: FibResult::Type,
            flags: HashSet::from([FibFlag::Daddr]),
        })),
        s("local"),
    )
}

fn accept() -> Statement<'static> {
    Statement::Accept(None)
}

fn drop() -> Statement<'static> {
    Statement::Drop(None)
}

/// Builds a batch for one family's table.
struct TableBuilder {
    family: NfFamily,
    objs: Vec<NfListObject<'static>>,
}

impl TableBuilder {
    fn new(family: NfFamily) -> Self {
        Self {
            family,
            objs: Vec::new(),
        }
    }

    fn base(&mut self, name: &'static str, ty: NfChainType, hook: NfHook, prio: i32) {
        self.objs.push(NfListObject::Chain(Chain {
            family: self.family,
            table: TABLE.into(),
            name: name.into(),
            _type: Some(ty),
            hook: Some(hook),
            prio: Some(prio),
            policy: Some(NfChainPolicy::Accept),
            ..Default::default()
        }));
    }

    fn chain(&mut self, name: &'static str) {
        self.objs.push(NfListObject::Chain(Chain {
            family: self.family,
            table: TABLE.into(),
            name: name.into(),
            ..Default::default()
        }));
    }

    fn rule(&mut self, chain: &'static str, expr: Vec<Statement<'static>>) {
        self.objs.push(NfListObject::Rule(Rule {
            family: self.family,
            table: TABLE.into(),
            chain: chain.into(),
            expr: expr.into(),
            ..Default::default()
        }));
    }
}

fn table(family: NfFamily) -> NfListObject<'static> {
    NfListObject::Table(Table {
        family,
        name: TABLE.into(),
        handle: None,
    })
}

/// The `inet mvm` table's chains and rules for `state` (empty if it has
/// no network).
fn inet_rules(state: &DesiredState) -> Vec<NfListObject<'static>> {
    let mut t = TableBuilder::new(NfFamily::INet);
    if state.networks.is_empty() {
        return t.objs;
    }
    let bridges: Vec<String> = state.networks.iter().map(|n| n.bridge()).collect();

    // Published ports.
    t.base("prerouting", NfChainType::NAT, NfHook::Prerouting, -100);
    t.rule("prerouting", vec![local_daddr(), jump("ports")]);
    t.base("output", NfChainType::NAT, NfHook::Output, -100);
    t.rule(
        "output",
        vec![
            m(
                payload("ip", "daddr"),
                Operator::NEQ,
                prefix(Ipv4Net::new_assert([127, 0, 0, 0].into(), 8)),
            ),
            local_daddr(),
            jump("ports"),
        ],
    );
    t.chain("ports");
    for p in &state.ports {
        let Some(e) = state.endpoint(&p.endpoint) else {
            continue;
        };
        let mut r = Vec::new();
        match p.host_ip {
            Some(IpAddr::V6(_)) => continue,
            Some(IpAddr::V4(ip)) if !ip.is_unspecified() => {
                r.push(eq(payload("ip", "daddr"), s(ip.to_string())))
            }
            _ => r.push(eq(meta(MetaKey::Nfproto), s("ipv4"))),
        }
        let l4 = match p.protocol {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        };
        r.push(eq(
            payload(l4, "dport"),
            Expression::Number(p.host_port.into()),
        ));
        r.push(Statement::DNAT(Some(NAT {
            addr: Some(s(e.ip.to_string())),
            family: Some(NATFamily::IP),
            port: Some(Expression::Number(p.guest_port.into())),
            flags: None,
        })));
        t.rule("ports", r);
    }

    // NAT out, and hairpin.
    t.base("postrouting", NfChainType::NAT, NfHook::Postrouting, 100);
    for n in &state.networks {
        if !n.internal {
            t.rule(
                "postrouting",
                vec![
                    eq(payload("ip", "saddr"), prefix(n.subnet)),
                    m(meta(MetaKey::Oifname), Operator::NEQ, s(n.bridge())),
                    Statement::Masquerade(None),
                ],
            );
            t.rule(
                "postrouting",
                vec![
                    eq(payload("ip", "saddr"), prefix(n.subnet)),
                    oif(&n.bridge()),
                    ct_dnat(),
                    Statement::Masquerade(None),
                ],
            );
        }
    }

    // Forwarding: isolation.
    t.base("forward", NfChainType::Filter, NfHook::Forward, 0);
    t.rule("forward", vec![iif_in(&bridges), ct_reply(), accept()]);
    t.rule("forward", vec![oif_in(&bridges), ct_reply(), accept()]);
    t.rule("forward", vec![oif_in(&bridges), ct_dnat(), accept()]);
    for b in &bridges {
        t.rule("forward", vec![iif(b), oif(b), accept()]);
    }
    t.rule("forward", vec![iif_in(&bridges), oif_in(&bridges), drop()]);
    for n in state.networks.iter().filter(|n| n.internal) {
        t.rule("forward", vec![iif(&n.bridge()), drop()]);
    }
    t.rule("forward", vec![oif_in(&bridges), drop()]);

    // Host protection.
    t.base("input", NfChainType::Filter, NfHook::Input, 0);
    t.rule("input", vec![iif_in(&bridges), ct_reply(), accept()]);
    for n in &state.networks {
        for l4 in ["udp", "tcp"] {
            t.rule(
                "input",
                vec![
                    iif(&n.bridge()),
                    eq(payload("ip", "daddr"), s(n.gateway.to_string())),
                    eq(payload(l4, "dport"), Expression::Number(53)),
                    accept(),
                ],
            );
        }
    }
    t.rule("input", vec![iif_in(&bridges), drop()]);
    t.objs
}

fn jump(chain: &'static str) -> Statement<'static> {
    Statement::Jump(nftables::stmt::JumpTarget {
        target: chain.into(),
    })
}

/// The `bridge mvm` table: anti-spoofing on every endpoint's port.
fn bridge_rules(state: &DesiredState) -> Vec<NfListObject<'static>> {
    let mut t = TableBuilder::new(NfFamily::Bridge);
    if state.endpoints.is_empty() {
        return t.objs;
    }
    t.base("ports", NfChainType::Filter, NfHook::Prerouting, -200);
    for e in &state.endpoints {
        let port = e.port();
        let mac = e.mac.to_string();
        let ip = e.ip.to_string();
        t.rule(
            "ports",
            vec![
                iif(&port),
                eq(payload("ether", "saddr"), s(mac.clone())),
                eq(payload("ip", "saddr"), s(ip.clone())),
                accept(),
            ],
        );
        t.rule(
            "ports",
            vec![
                iif(&port),
                eq(payload("ether", "saddr"), s(mac.clone())),
                eq(payload("arp", "saddr ether"), s(mac)),
                eq(payload("arp", "saddr ip"), s(ip)),
                accept(),
            ],
        );
        t.rule("ports", vec![iif(&port), drop()]);
    }
    t.objs
}

/// The whole transaction that makes mvm's tables exactly what `state`
/// wants.
pub fn transaction(state: &DesiredState) -> Nftables<'static> {
    let mut b = Batch::new();
    for (family, objs) in [
        (NfFamily::INet, inet_rules(state)),
        (NfFamily::Bridge, bridge_rules(state)),
    ] {
        b.add(table(family));
        b.delete(table(family));
        if !objs.is_empty() {
            b.add(table(family));
            // Chains before rules: a jump's target must exist when the
            // rule is added, even within one transaction.
            let (chains, rules): (Vec<_>, Vec<_>) = objs
                .into_iter()
                .partition(|o| matches!(o, NfListObject::Chain(_)));
            for o in chains.into_iter().chain(rules) {
                b.add(o);
            }
        }
    }
    b.to_nftables()
}

/// Applies `state`'s ruleset in one transaction: `nft -j -f FILE`, in
/// the calling thread's network namespace.
///
/// Not `nftables::helper::apply_ruleset`: it pipes the JSON to `nft -f -`,
/// which opens `/dev/stdin`, absent in minimal environments (the emulated
/// test host had none), and lets nft's messages go to our stderr instead
/// of the error. A private temporary file has neither problem, and no
/// argument-length limit either.
pub fn apply(state: &DesiredState) -> Result<(), NftError> {
    use std::io::Write;
    let json = serde_json::to_vec(&transaction(state))
        .map_err(|e| NftError::Output(format!("cannot serialise the ruleset: {e}")))?;
    let mut f = tempfile::Builder::new()
        .prefix("mvm-nft-")
        .suffix(".json")
        .tempfile()
        .map_err(|e| {
            NftError::Exec(format!("cannot write the ruleset to a temporary file: {e}"))
        })?;
    f.write_all(&json).and_then(|()| f.flush()).map_err(|e| {
        NftError::Exec(format!("cannot write the ruleset to a temporary file: {e}"))
    })?;
    let out = std::process::Command::new("nft")
        .arg("-j")
        .arg("-f")
        .arg(f.path())
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| NftError::Exec(e.to_string()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NftError::Refused {
            stderr: format!(
                "{} {}",
                String::from_utf8_lossy(&out.stderr).trim(),
                String::from_utf8_lossy(&out.stdout).trim()
            )
            .trim()
            .to_owned(),
        })
    }
}

/// `nft -j list table FAMILY mvm` as JSON text, or `None` if the table
/// does not exist: what the idempotence checks compare.
pub fn list_table(family: &str) -> Result<Option<String>, NftError> {
    let out = std::process::Command::new("nft")
        .args(["-j", "list", "table", family, TABLE])
        .output()
        .map_err(|e| NftError::Exec(e.to_string()))?;
    if out.status.success() {
        Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned()))
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("No such file or directory") {
            Ok(None)
        } else {
            Err(NftError::Refused {
                stderr: err.trim().to_owned(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::tests::{ep, net};
    use crate::spec::PortSpec;

    #[test]
    fn an_empty_state_only_deletes() {
        let j = serde_json::to_value(transaction(&DesiredState::default())).unwrap();
        let cmds = j["nftables"].as_array().unwrap();
        assert_eq!(cmds.len(), 4, "{j}");
        assert!(
            cmds[0]["add"]["table"]["name"] == "mvm"
                && cmds[1]["delete"]["table"]["family"] == "inet"
        );
        assert!(cmds[3]["delete"]["table"]["family"] == "bridge");
    }

    #[test]
    fn the_ruleset_names_every_object() {
        let mut internal = net("bb", "10.1.0.0/24");
        internal.internal = true;
        let state = DesiredState {
            networks: vec![net("aa", "172.30.0.0/16"), internal],
            endpoints: vec![ep("e1", "aa", "172.30.0.2"), ep("e2", "bb", "10.1.0.2")],
            ports: vec![PortSpec {
                endpoint: "e1".into(),
                protocol: Protocol::Udp,
                host_ip: None,
                host_port: 5353,
                guest_port: 53,
            }],
        };
        state.validate().unwrap();
        let j = serde_json::to_string(&transaction(&state)).unwrap();
        for want in [
            r#""dnat":{"addr":"172.30.0.2","family":"ip","port":53}"#,
            r#""masquerade":null"#,
            r#""right":"02:42:ac:1e:00:02""#,
            r#""mvmb-aa""#,
            r#""mvmt-e2""#,
            r#""prefix":{"addr":"172.30.0.0","len":16}"#,
        ] {
            assert!(j.contains(want), "{want} missing from {j}");
        }
        // No masquerade for the internal network's subnet.
        assert!(!j.contains(r#""prefix":{"addr":"10.1.0.0","len":24}},"op":"=="},{"match":{"left":{"meta":{"key":"oifname"}},"op":"!=""#));
    }
}
