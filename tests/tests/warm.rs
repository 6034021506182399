//! Warm starts, step 1 (docs/snapshots.md, "Warm starts"), on real KVM
//! through mvm-runtime: a transient booted with a warm launch spec
//! reports `WarmReady` (the VMM's control socket answers at that event),
//! takes the sandbox's spec from the agent's `launch` (with the host's
//! clock and entropy) and then runs exactly as a cold boot: its disks,
//! hostname and workload, whose output and exit come through the agent.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mvm_e2e::{rootfs, Artifacts};
use mvm_protocol::agent::ErrorCode;
use mvm_runtime::exit::Intent;
use mvm_runtime::spec::{ProcessSpec, Resources};
use mvm_runtime::transient::{Root, TransientSpec};
use mvm_runtime::warm::WarmError;
use mvm_runtime::{BootNet, Layout, Runtime, RuntimeConfig};

/// How long the emulated host may take to boot a guest to `WarmReady`.
const READY: Duration = Duration::from_secs(120);

fn runtime(dir: &std::path::Path) -> Runtime {
    let mut cfg = RuntimeConfig::from_env(Default::default()).unwrap();
    cfg.layout = Layout::new(dir, dir.join("run"));
    Runtime::new(cfg).unwrap()
}

fn spec(script: &str, hostname: &str) -> TransientSpec {
    TransientSpec {
        root: Root::Disk(PathBuf::from(rootfs::busybox())),
        process: ProcessSpec {
            entrypoint: vec!["/bin/sh".into(), "-c".into(), script.into()],
            cmd: Vec::new(),
            env: vec!["PATH=/bin".into()],
            working_dir: "/".into(),
            user: String::new(),
            tty: false,
            open_stdin: false,
        },
        hostname: hostname.into(),
        resources: Resources {
            vcpus: 1,
            cpu_quota: None,
            memory_mib: 256,
            scratch_mib: 256,
            workload_memory_mib: None,
        },
        export_changes: false,
        die_with_parent: false,
        net: BootNet::default(),
        files: Vec::new(),
    }
}

/// Boot warm, wait for `WarmReady`, check that nothing of the sandbox is
/// in the guest yet, hand over the spec, and check what its workload saw:
/// the spec's hostname, the host's date, 16 bytes of /dev/urandom (after
/// the reseed), its scratch disk; then its exit status.
#[test]
fn warm_boot_waits_for_its_spec_then_runs_it() {
    Artifacts::get();
    let dir = tempfile::Builder::new()
        .prefix("mvm-warm-e2e-")
        .tempdir()
        .unwrap();
    let rt = runtime(dir.path());
    let script = "hostname; date -u +%Y; date +%s; head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; \
                  echo on-scratch > /written && cat /written; exit 7";
    let t = rt.start_warm_transient(&spec(script, "warm-one")).unwrap();
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    tokio.block_on(async {
        let t0 = Instant::now();
        if let Err(e) = t.wait_warm_ready(READY).await {
            panic!(
                "no WarmReady: {e}\nconsole:\n{}\nVMM log:\n{}",
                std::fs::read_to_string(&t.paths().console).unwrap_or_default(),
                t.vmm_log_tail(4096)
            );
        }
        eprintln!("warm: WarmReady after {} ms", t0.elapsed().as_millis());
        // Warm, unlaunched: the agent answers, but has no sandbox to act
        // on, and the guest waits (it has not powered off meanwhile).
        let mut c = t.agent(READY).await.unwrap();
        c.ping().await.unwrap();
        let err = c.stats().await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::BadRequest), "{err}");
        assert!(err.to_string().contains("warm"), "{err}");
        drop(c);
        assert!(t.is_running());

        let t1 = Instant::now();
        t.warm_launch(READY).await.unwrap();
        eprintln!(
            "warm: launch accepted after {} ms",
            t1.elapsed().as_millis()
        );
        // Only once.
        assert!(matches!(
            t.warm_launch(READY).await,
            Err(WarmError::NotWarm)
        ));
        let session = t.agent(READY).await.unwrap().attach(false).await.unwrap();
        let (out, err, exit) = session.output.collect().await.unwrap();
        let out = String::from_utf8(out).unwrap();
        eprintln!("warm: workload output:\n{out}");
        assert_eq!(
            exit.exit_code,
            Some(7),
            "{out}\n{}",
            String::from_utf8_lossy(&err)
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 5, "{out}");
        assert_eq!(lines[0], "warm-one");
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let year = std::process::Command::new("date")
            .args(["-u", "+%Y"])
            .output()
            .unwrap()
            .stdout;
        assert_eq!(lines[1], String::from_utf8(year).unwrap().trim(), "{out}");
        let guest_secs: u64 = lines[2].parse().unwrap();
        assert!(
            guest_secs.abs_diff(now) < 120,
            "the guest's clock is {guest_secs}, the host's {now}"
        );
        assert_eq!(lines[3].len(), 32, "{out}");
        assert!(lines[3].bytes().all(|b| b.is_ascii_hexdigit()), "{out}");
        assert_ne!(lines[3], "0".repeat(32), "{out}");
        assert_eq!(lines[4], "on-scratch");
        t.wait().await;
    });
    let info = t.exit_info(Intent::None);
    assert_eq!(info.exit_code, 7, "{info:?}");
}
