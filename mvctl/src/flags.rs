//! Parsing of flag values, with Docker's syntax and error messages that
//! say what was wrong and what would be right.
//!
//! Everything here is checked before any request is sent, so that a typo
//! fails fast with exit 125 and leaves nothing behind on the daemon.

use std::collections::BTreeMap;

use chrono::{DateTime, Local, NaiveDate, NaiveDateTime, TimeZone, Utc};
use mvm_api::sandbox::RestartPolicy;

/// Smallest guest memory the VMM accepts (its `MIN_MEMORY_MIB`).
pub const MIN_MEMORY_MIB: u64 = 32;
/// Largest guest memory the VMM accepts (16 TiB).
pub const MAX_MEMORY_MIB: u64 = 1 << 24;

const MIB: u128 = 1 << 20;

/// Parse a memory size like Docker's `--memory`: a number (decimals allowed)
/// with an optional unit `b`, `k`, `m`, `g`, `t` (binary multiples, any
/// case, optionally followed by `b` or `ib`); a bare number is bytes. The
/// result is MiB, rounded up, within what a microVM can have.
pub fn parse_memory_mib(s: &str) -> Result<u64, String> {
    let mib = parse_size_mib(s)?;
    if mib < MIN_MEMORY_MIB {
        return Err(format!(
            "memory size {s:?} is too small: a sandbox needs at least {MIN_MEMORY_MIB} MiB (for example --memory 256m)"
        ));
    }
    if mib > MAX_MEMORY_MIB {
        return Err(format!(
            "memory size {s:?} is too large: a microVM can have at most 16 TiB (16t)"
        ));
    }
    Ok(mib)
}

/// A size with units, in MiB rounded up (no range check).
pub fn parse_size_mib(s: &str) -> Result<u64, String> {
    let bad = || {
        format!("invalid memory size {s:?}: expected a number with an optional unit b, k, m, g or t (for example 512m or 2g)")
    };
    let t = s.trim().to_ascii_lowercase();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let shift: u32 = match unit.trim_start() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        "p" | "pb" | "pib" => 50,
        _ => return Err(bad()),
    };
    if num.is_empty() || num == "." || num.matches('.').count() > 1 {
        return Err(bad());
    }
    // Exact arithmetic: units in bytes, fractional digits as a ratio.
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if int.len() + frac.len() > 24 {
        return Err(format!(
            "memory size {s:?} is too large: a microVM can have at most 16 TiB (16t)"
        ));
    }
    let digits: u128 = format!("{int}{frac}").parse().map_err(|_| bad())?;
    let denom = 10u128.pow(frac.len() as u32);
    let bytes_num = digits << shift; // bytes * denom
    let mib = bytes_num.div_ceil(denom * MIB);
    u64::try_from(mib).map_err(|_| {
        format!("memory size {s:?} is too large: a microVM can have at most 16 TiB (16t)")
    })
}

/// `--cpus 1.5`: a CPU quota in CPUs.
pub fn parse_cpus(s: &str) -> Result<f64, String> {
    let v: f64 = s.trim().parse().map_err(|_| {
        format!("invalid --cpus {s:?}: expected a decimal number of CPUs, for example 1.5")
    })?;
    if !v.is_finite() || v < 0.01 {
        return Err(format!(
            "invalid --cpus {s:?}: the range is from 0.01 to the host's CPUs"
        ));
    }
    if v > 1024.0 {
        return Err(format!("invalid --cpus {s:?}: more than 1024 CPUs"));
    }
    Ok(v)
}

/// `--restart` (Docker's syntax).
pub fn parse_restart(s: &str) -> Result<RestartPolicy, String> {
    RestartPolicy::parse(s)
}

/// `--name`: Docker's rule `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
pub fn parse_name(s: &str) -> Result<String, String> {
    let s = s.strip_prefix('/').unwrap_or(s);
    let mut chars = s.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !ok || s.len() > 128 {
        return Err(format!(
            "invalid name {s:?}: use up to 128 characters from [a-zA-Z0-9_.-], starting with a letter or digit"
        ));
    }
    Ok(s.to_string())
}

/// `-h/--hostname`: an RFC 1123 host name.
pub fn parse_hostname(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if !ok {
        return Err(format!(
            "invalid hostname {s:?}: use letters, digits, '-' and '.', at most 64 characters"
        ));
    }
    Ok(s.to_string())
}

/// `-w/--workdir`: must be absolute, like Docker's.
pub fn parse_workdir(s: &str) -> Result<String, String> {
    if !s.starts_with('/') {
        return Err(format!(
            "invalid working directory {s:?}: it must be an absolute path, for example /app"
        ));
    }
    if s.contains('\0') {
        return Err("invalid working directory: it contains a NUL byte".into());
    }
    Ok(s.to_string())
}

/// A signal name or number (`TERM`, `SIGTERM`, `15`), normalised to what
/// the API takes (`SIGTERM`, or the number for real-time signals).
pub fn parse_signal(s: &str) -> Result<String, String> {
    let n = mvm_protocol::agent::signal::parse(s).ok_or_else(|| {
        format!(
            "invalid signal {s:?}: use a name like SIGTERM, TERM or KILL, or a number from 1 to 64"
        )
    })?;
    Ok(mvm_protocol::agent::signal::name(n).map_or_else(|| n.to_string(), str::to_string))
}

/// One `-e` value: `KEY=VALUE`, or `KEY` alone to pass the host's value
/// (left out when the host has none, as Docker does).
pub fn env_flag(
    s: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<String>, String> {
    let (key, value) = match s.split_once('=') {
        Some((k, v)) => (k, Some(v)),
        None => (s, None),
    };
    check_env_key(key, s)?;
    Ok(match value {
        Some(v) => Some(format!("{key}={v}")),
        None => lookup(key).map(|v| format!("{key}={v}")),
    })
}

fn check_env_key(key: &str, entry: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err(format!(
            "invalid environment variable {entry:?}: the name is empty"
        ));
    }
    if key.chars().any(char::is_whitespace) {
        return Err(format!(
            "invalid environment variable {entry:?}: the name {key:?} contains whitespace"
        ));
    }
    if key.contains('\0') {
        return Err(format!(
            "invalid environment variable {entry:?}: the name contains a NUL byte"
        ));
    }
    Ok(())
}

/// The contents of an `--env-file`, as Docker reads them: one `KEY=VALUE`
/// per line, taken literally (no quotes, no expansion); blank lines and
/// lines starting with `#` skipped; `KEY` alone takes the host's value.
pub fn parse_env_file(
    name: &str,
    contents: &[u8],
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<String>, String> {
    let text = std::str::from_utf8(contents).map_err(|e| {
        format!(
            "env file {name} is not valid UTF-8 (at byte {})",
            e.valid_up_to()
        )
    })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let entry = match line.split_once('=') {
            Some(_) => line.to_string(),
            // A name alone: trailing whitespace is not part of it.
            None => line.trim_end().to_string(),
        };
        match env_flag(&entry, lookup) {
            Ok(Some(e)) => out.push(e),
            Ok(None) => {}
            Err(e) => return Err(format!("{name}, line {}: {e}", i + 1)),
        }
    }
    Ok(out)
}

/// One `-l/--label`: `key=value`, or `key` for an empty value.
pub fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').unwrap_or((s, ""));
    if k.is_empty() || k.chars().any(char::is_whitespace) {
        return Err(format!(
            "invalid label {s:?}: expected key=value with a non-empty key without spaces"
        ));
    }
    Ok((k.to_string(), v.to_string()))
}

/// Labels from `-l` flags, later ones winning.
pub fn labels(flags: &[String]) -> Result<BTreeMap<String, String>, String> {
    flags.iter().map(|l| parse_label(l)).collect()
}

/// `--tail`: the last N records, or all (`None`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tail(pub Option<u64>);

/// `--tail`: `all` (or a negative number, as Docker accepts) or a count.
pub fn parse_tail(s: &str) -> Result<Tail, String> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("all") || t.starts_with('-') && t[1..].parse::<u64>().is_ok() {
        return Ok(Tail(None));
    }
    t.parse::<u64>()
        .map(|n| Tail(Some(n)))
        .map_err(|_| format!("invalid --tail {s:?}: expected a number of lines or \"all\""))
}

/// `--since`/`--until`: an RFC 3339 time (`2024-05-01T10:00:00Z`, with or
/// without fractions or zone; no zone means local time), a date
/// (`2024-05-01`, local midnight), a Unix timestamp (`1714557600[.5]`),
/// or a duration before `now` (`10m`, `1h30m`, `90s`, `2d`).
pub fn parse_time(s: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    let t = s.trim();
    let bad = || {
        format!(
            "invalid time {s:?}: use an RFC 3339 time (2024-05-01T10:00:00Z), a Unix timestamp, or a duration ago (10m, 1h30m, 2d)"
        )
    };
    if t.is_empty() {
        return Err(bad());
    }
    if let Ok(d) = DateTime::parse_from_rfc3339(t) {
        return Ok(d.with_timezone(&Utc));
    }
    for fmt in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M:%S%.f",
    ] {
        if let Ok(n) = NaiveDateTime::parse_from_str(t, fmt) {
            return local(n).ok_or_else(bad);
        }
    }
    if let Ok(d) = NaiveDate::parse_from_str(t, "%Y-%m-%d") {
        return local(d.and_hms_opt(0, 0, 0).ok_or_else(bad)?).ok_or_else(bad);
    }
    if t.chars().all(|c| c.is_ascii_digit() || c == '.') {
        let (secs, frac) = t.split_once('.').unwrap_or((t, ""));
        let secs: i64 = secs.parse().map_err(|_| bad())?;
        let nanos: u32 = if frac.is_empty() {
            0
        } else {
            let f = format!("{frac:0<9}");
            f.get(..9).ok_or_else(bad)?.parse().map_err(|_| bad())?
        };
        return Utc.timestamp_opt(secs, nanos).single().ok_or_else(bad);
    }
    let ago = parse_duration(t).ok_or_else(bad)?;
    now.checked_sub_signed(ago).ok_or_else(bad)
}

fn local(n: NaiveDateTime) -> Option<DateTime<Utc>> {
    Local
        .from_local_datetime(&n)
        .earliest()
        .map(|d| d.with_timezone(&Utc))
}

/// Go-style durations (`1h30m`, `1.5h`, `300ms`, `10s`) plus `d` for days.
pub fn parse_duration(s: &str) -> Option<chrono::Duration> {
    let mut rest = s;
    let mut total_ns: f64 = 0.0;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let n = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        if n == 0 {
            return None;
        }
        let value: f64 = rest[..n].parse().ok()?;
        rest = &rest[n..];
        let u = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit_ns = match &rest[..u] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            "d" => 86400e9,
            _ => return None,
        };
        rest = &rest[u..];
        total_ns += value * unit_ns;
    }
    if !total_ns.is_finite() || total_ns > 1e18 {
        return None;
    }
    Some(chrono::Duration::nanoseconds(total_ns as i64))
}

/// RFC 3339 with nanoseconds in UTC, as the API's times are written.
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_units() {
        assert_eq!(parse_memory_mib("512m").unwrap(), 512);
        assert_eq!(parse_memory_mib("512M").unwrap(), 512);
        assert_eq!(parse_memory_mib("512mb").unwrap(), 512);
        assert_eq!(parse_memory_mib("512MiB").unwrap(), 512);
        assert_eq!(parse_memory_mib("1g").unwrap(), 1024);
        assert_eq!(parse_memory_mib("1.5g").unwrap(), 1536);
        assert_eq!(parse_memory_mib("0.5G").unwrap(), 512);
        assert_eq!(parse_memory_mib("65536k").unwrap(), 64);
        assert_eq!(parse_memory_mib("268435456").unwrap(), 256);
        assert_eq!(parse_memory_mib("268435456b").unwrap(), 256);
        // Bytes round up to whole MiB.
        assert_eq!(parse_memory_mib("33554433").unwrap(), 33);
        assert_eq!(parse_memory_mib("16t").unwrap(), MAX_MEMORY_MIB);
        assert_eq!(parse_size_mib("100t").unwrap(), 100 << 20);
    }

    #[test]
    fn memory_errors_say_what_to_do() {
        let e = parse_memory_mib("0").unwrap_err();
        assert!(e.contains("too small") && e.contains("32 MiB"), "{e}");
        let e = parse_memory_mib("31m").unwrap_err();
        assert!(e.contains("too small"), "{e}");
        let e = parse_memory_mib("100t").unwrap_err();
        assert!(e.contains("too large") && e.contains("16 TiB"), "{e}");
        let e = parse_memory_mib("99999999999999999999999999999p").unwrap_err();
        assert!(e.contains("too large"), "{e}");
        for bad in ["", "m", "abc", "12x", "1.2.3g", "-5m", "1 g g", ".", "1e9"] {
            let e = parse_memory_mib(bad).unwrap_err();
            assert!(e.contains("invalid memory size"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn cpus() {
        assert_eq!(parse_cpus("1.5").unwrap(), 1.5);
        assert_eq!(parse_cpus("2").unwrap(), 2.0);
        for bad in ["0", "0.001", "-1", "NaN", "inf", "x", "5000"] {
            assert!(parse_cpus(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn restart_policies() {
        assert_eq!(
            parse_restart("on-failure:5").unwrap(),
            RestartPolicy::OnFailure {
                maximum_retry_count: 5
            }
        );
        assert_eq!(
            parse_restart("unless-stopped").unwrap(),
            RestartPolicy::UnlessStopped
        );
        let e = parse_restart("sometimes").unwrap_err();
        assert!(e.contains("on-failure"), "{e}");
    }

    #[test]
    fn names_and_hostnames() {
        assert_eq!(parse_name("web-1.a_b").unwrap(), "web-1.a_b");
        assert_eq!(parse_name("/web").unwrap(), "web");
        for bad in ["", "-x", ".x", "a b", "a/b", "é"] {
            assert!(parse_name(bad).is_err(), "{bad}");
        }
        assert!(parse_name(&"a".repeat(129)).is_err());
        assert_eq!(parse_hostname("box-1.local").unwrap(), "box-1.local");
        for bad in ["", "-a", "a-", "a..b", "a_b", &"a".repeat(65)] {
            assert!(parse_hostname(bad).is_err(), "{bad}");
        }
        assert!(parse_workdir("/app").is_ok());
        assert!(parse_workdir("app").unwrap_err().contains("absolute"));
    }

    #[test]
    fn signals() {
        assert_eq!(parse_signal("TERM").unwrap(), "SIGTERM");
        assert_eq!(parse_signal("sigint").unwrap(), "SIGINT");
        assert_eq!(parse_signal("9").unwrap(), "SIGKILL");
        assert_eq!(parse_signal("RTMIN+1").unwrap(), "35");
        assert!(parse_signal("NOPE").unwrap_err().contains("invalid signal"));
        assert!(parse_signal("65").is_err());
    }

    fn host(k: &str) -> Option<String> {
        match k {
            "HOME_DIR" => Some("/home/me".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn env_flags() {
        assert_eq!(env_flag("A=1", &host).unwrap().unwrap(), "A=1");
        assert_eq!(env_flag("A==x=", &host).unwrap().unwrap(), "A==x=");
        assert_eq!(env_flag("A=", &host).unwrap().unwrap(), "A=");
        assert_eq!(
            env_flag("HOME_DIR", &host).unwrap().unwrap(),
            "HOME_DIR=/home/me"
        );
        assert_eq!(env_flag("EMPTY", &host).unwrap().unwrap(), "EMPTY=");
        assert_eq!(env_flag("UNSET_VAR", &host).unwrap(), None);
        assert!(env_flag("=x", &host).unwrap_err().contains("name is empty"));
        assert!(env_flag("A B=1", &host).unwrap_err().contains("whitespace"));
    }

    #[test]
    fn env_files() {
        let file = "\u{feff}# comment\n\n  A=1\nB=  spaced \nC=\"quoted\"\nHOME_DIR\nUNSET_VAR  \r\n  # indented comment\nD=x#not-a-comment\n";
        let got = parse_env_file("app.env", file.as_bytes(), &host).unwrap();
        assert_eq!(
            got,
            [
                "A=1",
                "B=  spaced ",
                "C=\"quoted\"",
                "HOME_DIR=/home/me",
                "D=x#not-a-comment"
            ]
        );
        let e = parse_env_file("bad.env", b"A=1\nBAD KEY\n", &host).unwrap_err();
        assert!(
            e.contains("bad.env, line 2") && e.contains("whitespace"),
            "{e}"
        );
        // As in Docker, spaces around the name are an error, not trimmed.
        let e = parse_env_file("sp.env", b"B = x\n", &host).unwrap_err();
        assert!(e.contains("sp.env, line 1") && e.contains("\"B \""), "{e}");
        let e = parse_env_file("bin.env", b"A=\xff\n", &host).unwrap_err();
        assert!(e.contains("not valid UTF-8"), "{e}");
    }

    #[test]
    fn label_flags() {
        let l = labels(&["a=1".into(), "b".into(), "a=2".into(), "c=x=y".into()]).unwrap();
        assert_eq!(l.get("a").unwrap(), "2");
        assert_eq!(l.get("b").unwrap(), "");
        assert_eq!(l.get("c").unwrap(), "x=y");
        assert!(parse_label("=v").is_err());
    }

    #[test]
    fn tails() {
        assert_eq!(parse_tail("all").unwrap(), Tail(None));
        assert_eq!(parse_tail("-1").unwrap(), Tail(None));
        assert_eq!(parse_tail("10").unwrap(), Tail(Some(10)));
        assert_eq!(parse_tail("0").unwrap(), Tail(Some(0)));
        assert!(parse_tail("ten").unwrap_err().contains("--tail"));
    }

    #[test]
    fn times() {
        let now = DateTime::parse_from_rfc3339("2024-05-01T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let at = |s: &str| rfc3339(parse_time(s, now).unwrap());
        assert_eq!(at("10m"), "2024-05-01T11:50:00.000000000Z");
        assert_eq!(at("1h30m"), "2024-05-01T10:30:00.000000000Z");
        assert_eq!(at("1.5h"), "2024-05-01T10:30:00.000000000Z");
        assert_eq!(at("2d"), "2024-04-29T12:00:00.000000000Z");
        assert_eq!(at("500ms"), "2024-05-01T11:59:59.500000000Z");
        assert_eq!(at("2024-05-01T10:00:00Z"), "2024-05-01T10:00:00.000000000Z");
        assert_eq!(
            at("2024-05-01T10:00:00.25+02:00"),
            "2024-05-01T08:00:00.250000000Z"
        );
        assert_eq!(at("1714557600"), "2024-05-01T10:00:00.000000000Z");
        assert_eq!(at("1714557600.5"), "2024-05-01T10:00:00.500000000Z");
        // Local time without a zone: compare with chrono's own conversion.
        let local = Local
            .with_ymd_and_hms(2024, 5, 1, 10, 0, 0)
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(parse_time("2024-05-01T10:00:00", now).unwrap(), local);
        for bad in ["", "yesterday", "10x", "m", "1h-5m", "2024-13-01"] {
            let e = parse_time(bad, now).unwrap_err();
            assert!(e.contains("invalid time"), "{bad}: {e}");
        }
    }
}
