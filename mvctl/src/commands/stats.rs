//! `mvctl stats`: resource usage read in the guest by its agent
//! (`GET /v1/sandboxes/{id}/stats?stream=false`). CPU % needs two samples
//! (Docker's formula: workload CPU time over guest CPU time, times the
//! vCPUs), so each refresh compares with the previous one.

use std::collections::HashMap;
use std::time::Duration;

use clap::Args;
use mvm_api::exec::Stats;

use super::{CmdError, CmdResult, Ctx};
use crate::format::{human_size, table};

/// Time between two samples.
const INTERVAL: Duration = Duration::from_secs(1);

/// `mvctl stats`.
#[derive(Debug, Clone, Args)]
pub struct StatsArgs {
    /// Print one table and exit (after two samples, for CPU %)
    #[arg(long)]
    pub no_stream: bool,
    /// Sandboxes (all running ones when none are given)
    pub sandboxes: Vec<String>,
}

/// CPU % between two samples (Docker's formula); 0 without a change.
pub fn cpu_percent(prev: &Stats, now: &Stats) -> f64 {
    let (Some(a), Some(b)) = (prev.cpu_usage_usec, now.cpu_usage_usec) else {
        return 0.0;
    };
    let cpu = b.saturating_sub(a) as f64;
    let sys = now.system_cpu_usec.saturating_sub(prev.system_cpu_usec) as f64;
    if cpu <= 0.0 || sys <= 0.0 {
        return 0.0;
    }
    cpu / sys * f64::from(now.online_cpus.max(1)) * 100.0
}

/// One row of the table.
pub fn row(name: &str, prev: Option<&Stats>, now: &Stats) -> Vec<String> {
    let opt = |v: Option<u64>| v.map(human_size).unwrap_or_else(|| "--".into());
    let mem_pct = match (now.memory_usage_bytes, now.memory_limit_bytes) {
        (Some(u), Some(l)) if l > 0 => format!("{:.2}%", u as f64 / l as f64 * 100.0),
        _ => "--".into(),
    };
    vec![
        name.to_string(),
        format!("{:.2}%", prev.map(|p| cpu_percent(p, now)).unwrap_or(0.0)),
        format!(
            "{} / {}",
            opt(now.memory_usage_bytes),
            opt(now.memory_limit_bytes)
        ),
        mem_pct,
        format!(
            "{} / {}",
            human_size(now.net_rx_bytes),
            human_size(now.net_tx_bytes)
        ),
        format!(
            "{} / {}",
            human_size(now.block_read_bytes),
            human_size(now.block_write_bytes)
        ),
        now.pids
            .map(|p| p.to_string())
            .unwrap_or_else(|| "--".into()),
    ]
}

/// The table header.
pub const HEADER: [&str; 7] = [
    "NAME",
    "CPU %",
    "MEM USAGE / LIMIT",
    "MEM %",
    "NET I/O",
    "BLOCK I/O",
    "PIDS",
];

/// `mvctl stats`.
pub async fn stats(ctx: &Ctx, a: StatsArgs) -> CmdResult {
    let client = ctx.client().await?;
    let names = if a.sandboxes.is_empty() {
        client
            .list(false, &[])
            .await?
            .into_iter()
            .map(|s| s.name)
            .collect()
    } else {
        a.sandboxes.clone()
    };
    let mut prev: HashMap<String, Stats> = HashMap::new();
    let mut first = true;
    loop {
        let mut rows = Vec::new();
        let mut failed = 0;
        for n in &names {
            match client.stats(n).await {
                Ok(s) => {
                    if !first {
                        rows.push(row(n, prev.get(n), &s));
                    }
                    prev.insert(n.clone(), s);
                }
                Err(e) => {
                    failed += 1;
                    if !first || a.no_stream {
                        super::report(&format!("{n}: {e}"));
                    }
                }
            }
        }
        if first && failed == names.len() && !names.is_empty() && a.no_stream {
            return Err(CmdError::Partial(format!(
                "no stats for {} sandbox(es)",
                names.len()
            )));
        }
        if !first {
            if !a.no_stream {
                // Clear the screen and go home, as docker stats does.
                print!("\x1b[2J\x1b[H");
            }
            print!("{}", table(&HEADER, &rows));
            if a.no_stream {
                return Ok(if failed > 0 { crate::EXIT_ERROR } else { 0 });
            }
        }
        first = false;
        tokio::time::sleep(INTERVAL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(cpu: u64, sys: u64) -> Stats {
        Stats {
            cpu_usage_usec: Some(cpu),
            system_cpu_usec: sys,
            online_cpus: 2,
            memory_usage_bytes: Some(50 << 20),
            memory_limit_bytes: Some(200 << 20),
            pids: Some(3),
            net_rx_bytes: 1000,
            net_tx_bytes: 2000,
            ..Default::default()
        }
    }

    #[test]
    fn cpu_percent_is_dockers_formula() {
        // 0.5 s of workload CPU over 2 s of guest CPU on 2 vCPUs: 50 %.
        let p = cpu_percent(
            &sample(1_000_000, 10_000_000),
            &sample(1_500_000, 12_000_000),
        );
        assert!((p - 50.0).abs() < 1e-9, "{p}");
        assert_eq!(cpu_percent(&sample(5, 5), &sample(5, 5)), 0.0);
    }

    #[test]
    fn a_row_has_every_column() {
        let r = row("web", Some(&sample(0, 0)), &sample(0, 0));
        assert_eq!(r.len(), HEADER.len());
        assert_eq!(r[0], "web");
        assert_eq!(r[3], "25.00%");
        assert_eq!(r[6], "3");
        assert!(r[2].contains(" / "), "{r:?}");
        let t = table(&HEADER, &[r]);
        assert!(t.starts_with("NAME"), "{t}");
        assert!(t.contains("MEM USAGE / LIMIT"), "{t}");
    }
}
