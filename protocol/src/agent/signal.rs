//! Signal names and numbers (Linux x86_64), so hosts can accept what
//! `docker kill --signal` accepts (`TERM`, `SIGTERM`, `15`) and send the
//! number the guest kernel understands.

const NAMES: [(&str, i32); 31] = [
    ("HUP", 1),
    ("INT", 2),
    ("QUIT", 3),
    ("ILL", 4),
    ("TRAP", 5),
    ("ABRT", 6),
    ("BUS", 7),
    ("FPE", 8),
    ("KILL", 9),
    ("USR1", 10),
    ("SEGV", 11),
    ("USR2", 12),
    ("PIPE", 13),
    ("ALRM", 14),
    ("TERM", 15),
    ("STKFLT", 16),
    ("CHLD", 17),
    ("CONT", 18),
    ("STOP", 19),
    ("TSTP", 20),
    ("TTIN", 21),
    ("TTOU", 22),
    ("URG", 23),
    ("XCPU", 24),
    ("XFSZ", 25),
    ("VTALRM", 26),
    ("PROF", 27),
    ("WINCH", 28),
    ("IO", 29),
    ("PWR", 30),
    ("SYS", 31),
];

/// The highest real-time signal number on Linux.
pub const SIGRTMAX: i32 = 64;

/// Parse `TERM`, `SIGTERM`, `sigterm`, `15` or `RTMIN+3` into a number.
pub fn parse(s: &str) -> Option<i32> {
    let s = s.trim();
    if let Ok(n) = s.parse::<i32>() {
        return (1..=SIGRTMAX).contains(&n).then_some(n);
    }
    let upper = s.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    if let Some(rest) = name.strip_prefix("RTMIN") {
        let off: i32 = if rest.is_empty() {
            0
        } else {
            rest.strip_prefix('+')?.parse().ok()?
        };
        let n = 34 + off;
        return (34..=SIGRTMAX).contains(&n).then_some(n);
    }
    if let Some(rest) = name.strip_prefix("RTMAX") {
        let off: i32 = if rest.is_empty() {
            0
        } else {
            rest.strip_prefix('-')?.parse().ok()?
        };
        let n = SIGRTMAX - off;
        return (34..=SIGRTMAX).contains(&n).then_some(n);
    }
    NAMES.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
}

/// `SIGTERM` for 15; `None` for numbers without a classic name.
pub fn name(n: i32) -> Option<&'static str> {
    const FULL: [&str; 31] = [
        "SIGHUP",
        "SIGINT",
        "SIGQUIT",
        "SIGILL",
        "SIGTRAP",
        "SIGABRT",
        "SIGBUS",
        "SIGFPE",
        "SIGKILL",
        "SIGUSR1",
        "SIGSEGV",
        "SIGUSR2",
        "SIGPIPE",
        "SIGALRM",
        "SIGTERM",
        "SIGSTKFLT",
        "SIGCHLD",
        "SIGCONT",
        "SIGSTOP",
        "SIGTSTP",
        "SIGTTIN",
        "SIGTTOU",
        "SIGURG",
        "SIGXCPU",
        "SIGXFSZ",
        "SIGVTALRM",
        "SIGPROF",
        "SIGWINCH",
        "SIGIO",
        "SIGPWR",
        "SIGSYS",
    ];
    usize::try_from(n - 1)
        .ok()
        .and_then(|i| FULL.get(i))
        .copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_docker_spellings() {
        assert_eq!(parse("TERM"), Some(15));
        assert_eq!(parse("SIGKILL"), Some(9));
        assert_eq!(parse("sigint"), Some(2));
        assert_eq!(parse("15"), Some(15));
        assert_eq!(parse("RTMIN"), Some(34));
        assert_eq!(parse("SIGRTMIN+2"), Some(36));
        assert_eq!(parse("RTMAX-1"), Some(63));
        for bad in [
            "",
            "0",
            "65",
            "-9",
            "TERMINATE",
            "RTMIN+40",
            "RTMIN-1",
            "SIG",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
        for n in 1..=31 {
            assert_eq!(parse(name(n).unwrap()), Some(n));
        }
        assert_eq!(name(0), None);
        assert_eq!(name(40), None);
    }
}
