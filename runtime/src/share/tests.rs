use std::os::unix::net::UnixStream;

use super::*;

/// A stand-in for virtiofsd: records its arguments, serves one connection
/// on fd 3 until the client closes, then exits (as virtiofsd does).
const FAKE: &str = r#"#!/usr/bin/env python3
import os, socket, sys
with open(os.path.join(os.path.dirname(sys.argv[0]), "args-%d" % os.getpid()), "w") as f:
    f.write("\n".join(sys.argv[1:]))
s = socket.socket(fileno=3)
c, _ = s.accept()
while c.recv(4096):
    pass
"#;

struct Fixture {
    dir: tempfile::TempDir,
    paths: SandboxPaths,
    bin: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let layout = crate::paths::Layout::new(dir.path().join("root"), dir.path().join("run"));
        let paths = layout.sandbox("sb1");
        fs::create_dir_all(&paths.dir).unwrap();
        let bin = dir.path().join("bin/virtiofsd");
        fs::create_dir_all(bin.parent().unwrap()).unwrap();
        fs::write(&bin, FAKE).unwrap();
        fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        Self { dir, paths, bin }
    }

    fn share(&self, tag: &str, read_only: bool) -> HostShare {
        let source = self.dir.path().join(format!("src-{tag}"));
        fs::create_dir_all(&source).unwrap();
        HostShare {
            tag: tag.into(),
            source,
            target: format!("/mnt/{tag}"),
            read_only,
        }
    }

    /// Start, retrying while a parallel test's fork holds our fresh script
    /// open for writing (exec then fails with ETXTBSY for a moment).
    fn start(&self, shares: &[HostShare]) -> Result<(Backends, Vec<Share>), ShareError> {
        let mut tries = 0;
        loop {
            match Backends::start(&self.bin, &self.paths, shares) {
                Err(ShareError::Spawn { source, .. })
                    if source.raw_os_error() == Some(libc::ETXTBSY) && tries < 100 =>
                {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(10));
                }
                r => return r,
            }
        }
    }

    fn args_of(&self, p: &VmmProcess) -> String {
        let f = self.bin.with_file_name(format!("args-{}", p.pid));
        let t0 = Instant::now();
        loop {
            if let Ok(a) = fs::read_to_string(&f) {
                if !a.is_empty() {
                    return a;
                }
            }
            assert!(t0.elapsed() < Duration::from_secs(10), "no args file");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn wait_dead(p: &VmmProcess) {
    let t0 = Instant::now();
    while p.is_alive() {
        crate::process::reap(p.pid);
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{} still runs",
            p.pid
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn each_share_gets_a_sandboxed_backend_listening_before_it_runs() {
    let fx = Fixture::new();
    let shares = [fx.share("src", false), fx.share("conf", true)];
    let (backends, boot) = fx.start(&shares).unwrap();
    assert_eq!(boot.len(), 2);
    assert_eq!(boot[0].socket, socket_path(&fx.paths, 0));
    assert_eq!(boot[1].tag, "conf");
    assert!(boot[1].read_only);
    assert_eq!(boot[1].target, "/mnt/conf");
    // The sockets sit next to the vsock socket, short.
    assert_eq!(boot[0].socket.parent(), fx.paths.vsock.parent());
    assert!(boot[0].socket.as_os_str().len() < 108);
    // Connectable at once: the runtime bound them.
    for b in &boot {
        UnixStream::connect(&b.socket).unwrap();
    }
    let recs = backends.records().to_vec();
    assert_eq!(recs.len(), 2);
    for r in &recs {
        assert!(r.process.is_alive());
        // Its own session, like the VMM.
        // SAFETY: getsid on a pid.
        assert_eq!(unsafe { libc::getsid(r.process.pid) }, r.process.pid);
    }
    let rw = fx.args_of(&recs[0].process);
    for want in [
        "--fd=3",
        "--sandbox=namespace",
        "--seccomp=kill",
        "--modcaps=-mknod:-setfcap",
        "--inode-file-handles=never",
        "--cache=auto",
    ] {
        assert!(rw.lines().any(|l| l == want), "{want} missing: {rw}");
    }
    assert!(rw.contains(&format!("--shared-dir={}", shares[0].source.display())));
    assert!(!rw.contains("--readonly"), "{rw}");
    let ro = fx.args_of(&recs[1].process);
    assert!(ro.contains("--readonly"));
    assert!(
        ro.lines()
            .any(|l| l == "--modcaps=-chown:-fowner:-fsetid:-setgid:-setuid:-mknod:-setfcap"),
        "{ro}"
    );

    drop(backends);
    for r in &recs {
        wait_dead(&r.process);
        assert!(!r.socket.exists(), "socket left behind");
    }
}

#[test]
fn a_backend_ends_when_its_vmm_disconnects() {
    let fx = Fixture::new();
    let (backends, boot) = fx.start(&[fx.share("a", false)]).unwrap();
    let p = backends.records()[0].process;
    let vmm = UnixStream::connect(&boot[0].socket).unwrap();
    fx.args_of(&p);
    drop(vmm);
    wait_dead(&p);
}

#[test]
fn recorded_backends_are_stopped_by_a_later_process() {
    let fx = Fixture::new();
    let (backends, _) = fx.start(&[fx.share("a", false)]).unwrap();
    let rec = backends.records()[0].clone();
    backends.record(&fx.paths).unwrap();
    backends.detach();
    assert!(rec.process.is_alive(), "detached backends keep running");
    assert!(fx.paths.dir.join(RECORD_FILE).exists());
    stop_recorded(&fx.paths);
    wait_dead(&rec.process);
    assert!(!rec.socket.exists());
    assert!(!fx.paths.dir.join(RECORD_FILE).exists());
    stop_recorded(&fx.paths); // nothing recorded: nothing happens
}

#[test]
fn bad_shares_are_refused_before_anything_starts() {
    let fx = Fixture::new();
    let ok = fx.share("a", false);
    let cases = [
        (
            vec![HostShare {
                tag: "a b".into(),
                ..ok.clone()
            }],
            "invalid",
        ),
        (vec![ok.clone(), ok.clone()], "twice"),
        (
            vec![HostShare {
                source: "relative".into(),
                ..ok.clone()
            }],
            "absolute",
        ),
        (
            vec![HostShare {
                source: fx.dir.path().join("missing"),
                ..ok.clone()
            }],
            "directory",
        ),
    ];
    for (shares, want) in cases {
        let e = fx.start(&shares).unwrap_err().to_string();
        assert!(e.contains(want), "{want}: {e}");
    }
    assert!(
        !socket_path(&fx.paths, 0).exists(),
        "no socket of a refused start"
    );
    let e = Backends::start(&fx.dir.path().join("nope"), &fx.paths, &[ok])
        .unwrap_err()
        .to_string();
    assert!(e.contains("nope"), "{e}");
    assert!(!socket_path(&fx.paths, 0).exists());
    let e = locate_virtiofsd(Some(&fx.dir.path().join("gone")))
        .unwrap_err()
        .to_string();
    assert!(e.contains("gone") && e.contains(VIRTIOFSD_ENV), "{e}");
}

/// The real virtiofsd, when this machine has it (`make deps` installs it):
/// sandboxed in namespaces it still serves the socket and ends when its
/// client does.
#[test]
fn the_real_virtiofsd_starts_sandboxed_and_ends_with_its_client() {
    let Ok(bin) = locate_virtiofsd(None) else {
        eprintln!("virtiofsd not installed (resources/virtiofsd/build.sh); skipping");
        return;
    };
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("not root: virtiofsd's namespace sandbox needs root here; skipping");
        return;
    }
    let fx = Fixture::new();
    let share = fx.share("real", true);
    let (backends, boot) = Backends::start(&bin, &fx.paths, &[share]).unwrap();
    let p = backends.records()[0].process;
    let client = UnixStream::connect(&boot[0].socket).unwrap();
    let log = log_path(&fx.paths, 0);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        p.is_alive(),
        "{}",
        fs::read_to_string(&log).unwrap_or_default()
    );
    drop(client);
    wait_dead(&p);
    backends.detach();
}

/// `CapEff` of the process serving `backend` (the namespace sandbox's
/// child, which serves the share), once it has dropped its capabilities
/// (it does before it accepts its connection, which `client` made).
fn served_caps(backend: &VmmProcess) -> u64 {
    let t0 = Instant::now();
    loop {
        if let Some(child) = children_of(backend.pid).first() {
            let status =
                fs::read_to_string(format!("/proc/{}/status", child.pid)).unwrap_or_default();
            let caps = status
                .lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok());
            // Full until the drop (the child starts as root); virtiofsd's
            // default set has 8.
            if let Some(c) = caps.filter(|&c| c.count_ones() <= 8) {
                return c;
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "no sandboxed child with dropped caps"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The real virtiofsd keeps only the capabilities its share needs:
/// `dac_override` for a read-only share, the default set less `mknod`
/// and `setfcap` for a writable one, and never `dac_read_search`
/// (measured in `/proc/PID/status`).
#[test]
fn the_real_virtiofsd_keeps_only_the_capabilities_its_share_needs() {
    let Ok(bin) = locate_virtiofsd(None) else {
        eprintln!("virtiofsd not installed (resources/virtiofsd/build.sh); skipping");
        return;
    };
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("not root: virtiofsd's namespace sandbox needs root here; skipping");
        return;
    }
    // <linux/capability.h>.
    const CHOWN: u32 = 0;
    const DAC_OVERRIDE: u32 = 1;
    const FOWNER: u32 = 3;
    const FSETID: u32 = 4;
    const SETGID: u32 = 6;
    const SETUID: u32 = 7;
    let bit = |c: u32| 1u64 << c;
    let ro_want = bit(DAC_OVERRIDE);
    let rw_want = [CHOWN, DAC_OVERRIDE, FOWNER, FSETID, SETGID, SETUID]
        .into_iter()
        .fold(0, |m, c| m | bit(c));
    let fx = Fixture::new();
    let shares = [fx.share("ro", true), fx.share("rw", false)];
    let (backends, boot) = Backends::start(&bin, &fx.paths, &shares).unwrap();
    let clients: Vec<_> = boot
        .iter()
        .map(|b| UnixStream::connect(&b.socket).unwrap())
        .collect();
    let recs = backends.records().to_vec();
    let (ro, rw) = (served_caps(&recs[0].process), served_caps(&recs[1].process));
    assert_eq!(ro, ro_want, "read-only share: CapEff {ro:#x}");
    assert_eq!(rw, rw_want, "writable share: CapEff {rw:#x}");
    eprintln!("virtiofsd CapEff: read-only {ro:#018x}, writable {rw:#018x}");
    drop(clients);
    for r in &recs {
        wait_dead(&r.process);
    }
    backends.detach();
}
