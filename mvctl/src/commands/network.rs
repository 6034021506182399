//! `mvctl network ...` and `mvctl port`.

use mvm_api::network::{
    NetworkConnectRequest, NetworkCreateRequest, NetworkDisconnectRequest, NetworkInfo, PortBinding,
};

use super::{confirm, for_each, report, CmdError, CmdResult, Ctx};
use crate::cli::{
    NetworkConnectArgs, NetworkCreateArgs, NetworkDisconnectArgs, NetworkIdsArgs, NetworkLsArgs,
    NetworkPruneArgs, PortArgs,
};
use crate::flags;

/// `mvctl network create`.
pub async fn create(ctx: &Ctx, a: NetworkCreateArgs) -> CmdResult {
    if a.driver != "bridge" {
        return Err(CmdError::Invalid(format!(
            "network driver {:?} is not available: mvm networks are bridges (-d bridge)",
            a.driver
        )));
    }
    let labels = flags::labels(&a.label).map_err(CmdError::Invalid)?;
    let client = ctx.client().await?;
    let r = client
        .network_create(&NetworkCreateRequest {
            name: a.name,
            subnet: a.subnet,
            gateway: a.gateway,
            internal: a.internal,
            labels,
        })
        .await?;
    println!("{}", r.id);
    Ok(0)
}

/// The `network ls` table.
pub fn table(list: &[NetworkInfo]) -> String {
    let mut out = format!(
        "{:<14}{:<20}{:<10}{:<20}{:<10}\n",
        "NETWORK ID", "NAME", "DRIVER", "SUBNET", "INTERNAL"
    );
    for n in list {
        out.push_str(&format!(
            "{:<14}{:<20}{:<10}{:<20}{:<10}\n",
            &n.id[..n.id.len().min(12)],
            n.name,
            n.driver,
            n.subnet,
            if n.internal { "yes" } else { "no" }
        ));
    }
    out
}

/// `mvctl network ls`.
pub async fn ls(ctx: &Ctx, a: NetworkLsArgs) -> CmdResult {
    let client = ctx.client().await?;
    let list = client.networks().await?;
    if a.quiet {
        for n in &list {
            println!("{}", n.name);
        }
    } else {
        print!("{}", table(&list));
    }
    Ok(0)
}

/// `mvctl network inspect`.
pub async fn inspect(ctx: &Ctx, a: NetworkIdsArgs) -> CmdResult {
    let client = ctx.client().await?;
    let mut out = Vec::new();
    let mut failed = 0;
    for id in &a.ids {
        match client.network_inspect(id).await {
            Ok(n) => out.push(n),
            Err(e) => {
                report(&e);
                failed += 1;
            }
        }
    }
    println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    if failed > 0 {
        return Err(CmdError::Partial(format!(
            "{failed} of {} not found",
            a.ids.len()
        )));
    }
    Ok(0)
}

/// `mvctl network rm`.
pub async fn rm(ctx: &Ctx, a: NetworkIdsArgs) -> CmdResult {
    let client = ctx.client().await?;
    for_each(&a.ids, |id| async move {
        client.network_remove(&id).await?;
        println!("{id}");
        Ok(())
    })
    .await
}

/// `mvctl network connect`.
pub async fn connect(ctx: &Ctx, a: NetworkConnectArgs) -> CmdResult {
    let client = ctx.client().await?;
    client
        .network_connect(
            &a.network,
            &NetworkConnectRequest {
                sandbox: a.sandbox,
                aliases: a.aliases,
                ip: a.ip,
            },
        )
        .await?;
    Ok(0)
}

/// `mvctl network disconnect`.
pub async fn disconnect(ctx: &Ctx, a: NetworkDisconnectArgs) -> CmdResult {
    let client = ctx.client().await?;
    client
        .network_disconnect(&a.network, &NetworkDisconnectRequest { sandbox: a.sandbox })
        .await?;
    Ok(0)
}

/// `mvctl network prune`.
pub async fn prune(ctx: &Ctx, a: NetworkPruneArgs) -> CmdResult {
    if !a.force && !confirm("This removes every network no sandbox uses. Continue?") {
        return Ok(0);
    }
    let client = ctx.client().await?;
    let r = client.network_prune().await?;
    if !r.deleted.is_empty() {
        println!("Deleted Networks:");
        for n in r.deleted {
            println!("{n}");
        }
    }
    Ok(0)
}

/// `mvctl port` lines: `80/tcp -> 0.0.0.0:8080`, as Docker prints them.
pub fn port_lines(ports: &[PortBinding], only: Option<&str>) -> Result<Vec<String>, String> {
    let want = match only {
        None => None,
        Some(p) => {
            let (port, proto) = p.split_once('/').unwrap_or((p, "tcp"));
            let port: u16 = port
                .parse()
                .map_err(|_| format!("{p:?} is not a port: give PORT or PORT/tcp|udp"))?;
            Some((port, proto.to_string()))
        }
    };
    Ok(ports
        .iter()
        .filter(|b| {
            want.as_ref()
                .is_none_or(|(port, proto)| b.container_port == *port && &b.protocol == proto)
        })
        .map(|b| {
            let host = match b.host_ip.as_deref() {
                Some(ip) if ip.contains(':') => format!("[{ip}]"),
                Some(ip) => ip.to_string(),
                None => "0.0.0.0".into(),
            };
            if only.is_some() {
                format!("{host}:{}", b.host_port)
            } else {
                format!(
                    "{}/{} -> {host}:{}",
                    b.container_port, b.protocol, b.host_port
                )
            }
        })
        .collect())
}

/// `mvctl port`.
pub async fn port(ctx: &Ctx, a: PortArgs) -> CmdResult {
    let client = ctx.client().await?;
    let info = client.inspect(&a.sandbox).await?;
    let lines =
        port_lines(&info.network_settings.ports, a.port.as_deref()).map_err(CmdError::Invalid)?;
    if let (Some(p), true) = (&a.port, lines.is_empty()) {
        return Err(CmdError::Invalid(format!(
            "no public port {p} published for {}",
            a.sandbox
        )));
    }
    for l in lines {
        println!("{l}");
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_lines_are_dockers() {
        let p = vec![
            PortBinding {
                host_ip: None,
                host_port: 18080,
                container_port: 8080,
                protocol: "tcp".into(),
            },
            PortBinding {
                host_ip: Some("127.0.0.1".into()),
                host_port: 5353,
                container_port: 53,
                protocol: "udp".into(),
            },
        ];
        assert_eq!(
            port_lines(&p, None).unwrap(),
            ["8080/tcp -> 0.0.0.0:18080", "53/udp -> 127.0.0.1:5353"]
        );
        assert_eq!(port_lines(&p, Some("53/udp")).unwrap(), ["127.0.0.1:5353"]);
        assert!(port_lines(&p, Some("53")).unwrap().is_empty());
        assert!(port_lines(&p, Some("x")).is_err());
    }
}
