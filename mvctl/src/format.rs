//! Human output: Docker's tables, durations and sizes, so that scripts and
//! eyes used to `docker ps` and `docker images` read mvctl's the same way.

use chrono::{DateTime, Utc};
use mvm_api::images::ImageSummary;
use mvm_api::sandbox::SandboxSummary;

/// Docker's `units.HumanDuration`: "Less than a second", "5 seconds",
/// "About a minute", "3 hours", "2 weeks".
pub fn human_duration(d: chrono::Duration) -> String {
    let secs = d.num_seconds();
    let minutes = secs / 60;
    let hours = (d.num_milliseconds() as f64 / 3_600_000.0 + 0.5) as i64;
    if secs < 1 {
        "Less than a second".into()
    } else if secs == 1 {
        "1 second".into()
    } else if secs < 60 {
        format!("{secs} seconds")
    } else if minutes == 1 {
        "About a minute".into()
    } else if minutes < 60 {
        format!("{minutes} minutes")
    } else if hours == 1 {
        "About an hour".into()
    } else if hours < 48 {
        format!("{hours} hours")
    } else if hours < 24 * 7 * 2 {
        format!("{} days", hours / 24)
    } else if hours < 24 * 30 * 2 {
        format!("{} weeks", hours / 24 / 7)
    } else if hours < 24 * 365 * 2 {
        format!("{} months", hours / 24 / 30)
    } else {
        format!("{} years", d.num_hours() / 24 / 365)
    }
}

/// "5 seconds ago" for an RFC 3339 time; the raw text if it does not parse.
pub fn ago(time: &str, now: DateTime<Utc>) -> String {
    match DateTime::parse_from_rfc3339(time) {
        Ok(t) => format!(
            "{} ago",
            human_duration(now.signed_duration_since(t.with_timezone(&Utc)))
        ),
        Err(_) => time.to_string(),
    }
}

/// Docker's `units.HumanSize`: decimal units, three significant digits
/// (`4.26MB`, `512kB`, `1.2GB`).
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1000.0 && i < UNITS.len() - 1 {
        v /= 1000.0;
        i += 1;
    }
    format!("{}{}", significant(v, 3), UNITS[i])
}

/// `%.Ng` without an exponent: `n` significant digits, trailing zeros cut.
fn significant(v: f64, n: i32) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let magnitude = v.abs().log10().floor() as i32;
    let decimals = (n - 1 - magnitude).max(0) as usize;
    let s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// Cut `s` to `max` characters, the last being `…` when cut (Docker's
/// `Ellipsis`).
pub fn ellipsis(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// The 12-character short form of a sandbox or image id.
pub fn short_id(id: &str) -> &str {
    let hex = id.strip_prefix("sha256:").unwrap_or(id);
    hex.get(..12).unwrap_or(hex)
}

/// Columns separated by at least three spaces, as Go's tabwriter does for
/// the docker CLI; the last column is not padded.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let cols = header.len();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate().take(cols) {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut l = String::new();
        for (i, c) in cells.enumerate().take(cols) {
            l.push_str(c);
            if i + 1 < cols {
                let pad = widths[i] - c.chars().count() + 3;
                l.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for r in rows {
        line(&mut r.iter().map(String::as_str));
    }
    out
}

/// `mvctl ps`: SANDBOX ID, IMAGE, COMMAND, CREATED, STATUS, PORTS, NAMES.
pub fn ps_table(list: &[SandboxSummary], now: DateTime<Utc>, no_trunc: bool) -> String {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|s| {
            let command = if no_trunc {
                s.command.clone()
            } else {
                ellipsis(&s.command, 20)
            };
            vec![
                if no_trunc {
                    s.id.clone()
                } else {
                    short_id(&s.id).to_string()
                },
                s.image.clone(),
                format!("\"{command}\""),
                ago(&s.created, now),
                s.status_text.clone(),
                s.ports
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
                s.name.clone(),
            ]
        })
        .collect();
    table(
        &[
            "SANDBOX ID",
            "IMAGE",
            "COMMAND",
            "CREATED",
            "STATUS",
            "PORTS",
            "NAMES",
        ],
        &rows,
    )
}

/// Split a normalised reference into Docker's REPOSITORY and TAG columns,
/// dropping the implied `docker.io/library/` and `docker.io/` prefixes.
pub fn repo_and_tag(reference: &str) -> (String, String) {
    let (name, tag) = match reference.rsplit_once(':') {
        Some((n, t)) if !t.contains('/') => (n, t),
        _ => (reference, "<none>"),
    };
    let short = name
        .strip_prefix("docker.io/library/")
        .or_else(|| name.strip_prefix("docker.io/"))
        .unwrap_or(name);
    (short.to_string(), tag.to_string())
}

/// `mvctl images`: REPOSITORY, TAG, IMAGE ID, CREATED, SIZE, one row per
/// tag (`<none>` for untagged images), newest first as Docker lists them.
pub fn images_table(list: &[ImageSummary], now: DateTime<Utc>) -> String {
    let mut rows = Vec::new();
    for img in list {
        let created = img
            .created
            .as_deref()
            .map_or_else(|| "N/A".to_string(), |c| ago(c, now));
        let mut push = |repo: String, tag: String| {
            rows.push(vec![
                repo,
                tag,
                short_id(&img.id).to_string(),
                created.clone(),
                human_size(img.size),
            ]);
        };
        if img.repo_tags.is_empty() {
            push("<none>".into(), "<none>".into());
        }
        for t in &img.repo_tags {
            let (repo, tag) = repo_and_tag(t);
            push(repo, tag);
        }
    }
    table(&["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"], &rows)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use mvm_api::sandbox::Status;

    fn secs(s: i64) -> chrono::Duration {
        chrono::Duration::seconds(s)
    }

    #[test]
    fn durations_like_docker() {
        assert_eq!(
            human_duration(chrono::Duration::milliseconds(400)),
            "Less than a second"
        );
        assert_eq!(human_duration(secs(1)), "1 second");
        assert_eq!(human_duration(secs(5)), "5 seconds");
        assert_eq!(human_duration(secs(59)), "59 seconds");
        assert_eq!(human_duration(secs(60)), "About a minute");
        assert_eq!(human_duration(secs(119)), "About a minute");
        assert_eq!(human_duration(secs(120)), "2 minutes");
        assert_eq!(human_duration(secs(3599)), "59 minutes");
        assert_eq!(human_duration(secs(3600)), "About an hour");
        assert_eq!(human_duration(secs(3 * 3600)), "3 hours");
        assert_eq!(human_duration(secs(47 * 3600)), "47 hours");
        assert_eq!(human_duration(secs(3 * 86400)), "3 days");
        assert_eq!(human_duration(secs(20 * 86400)), "2 weeks");
        assert_eq!(human_duration(secs(90 * 86400)), "3 months");
        assert_eq!(human_duration(secs(800 * 86400)), "2 years");
        // Clock skew between daemon and client: never negative text.
        assert_eq!(human_duration(secs(-3)), "Less than a second");
    }

    #[test]
    fn sizes_like_docker() {
        assert_eq!(human_size(0), "0B");
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(1000), "1kB");
        assert_eq!(human_size(4_260_000), "4.26MB");
        assert_eq!(human_size(42_600_000), "42.6MB");
        assert_eq!(human_size(1_500_000_000), "1.5GB");
        assert_eq!(human_size(123_456), "123kB");
    }

    #[test]
    fn ellipsis_and_ids() {
        assert_eq!(
            ellipsis("sh -c 'echo hello; sleep 5'", 20),
            "sh -c 'echo hello; …"
        );
        assert_eq!(ellipsis("short", 20), "short");
        assert_eq!(ellipsis("ééééé", 3), "éé…");
        assert_eq!(short_id("sha256:0123456789abcdef"), "0123456789ab");
        assert_eq!(short_id("abc"), "abc");
    }

    #[test]
    fn ps_table_layout() {
        let now = DateTime::parse_from_rfc3339("2024-05-01T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let row = |id: &str, name: &str, cmd: &str, status_text: &str| SandboxSummary {
            id: id.repeat(64 / id.len()),
            name: name.into(),
            image: "busybox".into(),
            command: cmd.into(),
            created: "2024-05-01T11:59:55Z".into(),
            status: Status::Running,
            status_text: status_text.into(),
            exit_code: None,
            labels: BTreeMap::new(),
            ports: if name == "web" {
                vec![mvm_api::network::PortBinding {
                    host_ip: None,
                    host_port: 8080,
                    container_port: 80,
                    protocol: "tcp".into(),
                }]
            } else {
                vec![]
            },
        };
        let t = ps_table(
            &[
                row("a1", "web", "sleep 100", "Up 3 seconds"),
                row(
                    "b2",
                    "job",
                    "sh -c 'echo hello; sleep 5'",
                    "Exited (0) 2 minutes ago",
                ),
            ],
            now,
            false,
        );
        let expected = "\
SANDBOX ID     IMAGE     COMMAND                  CREATED         STATUS                     PORTS                  NAMES
a1a1a1a1a1a1   busybox   \"sleep 100\"              5 seconds ago   Up 3 seconds               0.0.0.0:8080->80/tcp   web
b2b2b2b2b2b2   busybox   \"sh -c 'echo hello; …\"   5 seconds ago   Exited (0) 2 minutes ago                          job
";
        assert_eq!(t, expected);
        let header_only = ps_table(&[], now, false);
        assert_eq!(
            header_only,
            "SANDBOX ID   IMAGE   COMMAND   CREATED   STATUS   PORTS   NAMES\n"
        );
    }

    #[test]
    fn images_table_layout() {
        let now = DateTime::parse_from_rfc3339("2024-05-01T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let img = ImageSummary {
            repo_tags: vec![
                "docker.io/library/busybox:latest".into(),
                "localhost:5000/app:1".into(),
            ],
            repo_digests: vec![],
            id: format!("sha256:{}", "ab".repeat(32)),
            digest: String::new(),
            created: Some("2024-04-01T12:00:00Z".into()),
            size: 4_260_000,
        };
        let untagged = ImageSummary {
            repo_tags: vec![],
            created: None,
            ..img.clone()
        };
        let t = images_table(&[img, untagged], now);
        let expected = "\
REPOSITORY           TAG      IMAGE ID       CREATED       SIZE
busybox              latest   abababababab   4 weeks ago   4.26MB
localhost:5000/app   1        abababababab   4 weeks ago   4.26MB
<none>               <none>   abababababab   N/A           4.26MB
";
        assert_eq!(t, expected);
        assert_eq!(
            repo_and_tag("localhost:5000/app"),
            ("localhost:5000/app".into(), "<none>".into())
        );
        assert_eq!(
            repo_and_tag("docker.io/me/app:v2"),
            ("me/app".into(), "v2".into())
        );
    }
}
