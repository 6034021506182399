//! End-to-end tests of sandbox networking through the product: `mvctl`
//! against a real `mvmd` (run as root, so it owns mvm-net's bridges,
//! TAPs, nftables tables, port proxies and DNS servers) booting real
//! microVMs on real KVM.
//!
//! Run with `tests/run-e2e.sh netwire` (inside the emulated KVM host on
//! machines without hardware KVM). One test drives one daemon through
//! the whole story, because it SIGKILLs and restarts that daemon half-way
//! (the daemon is this test's child, not a shared one); the build, the
//! connect, the published-ports and the isolation tests have daemons of
//! their own. Each daemon owns the host's mvm bridges and
//! nftables tables, so the tests take turns ([`one_daemon_at_a_time`]).
//! Only loopback, the addresses of the networks mvmd makes and of a
//! namespace the test makes ("the outside", behind the default network's
//! NAT) are used; no guest route leads anywhere outside the host.

mod netwire {
    use std::fs;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream, UdpSocket};
    use std::os::unix::process::CommandExt;
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::sync::{Mutex, MutexGuard};
    use std::time::{Duration, Instant};

    use mvm_e2e::daemon::{binary, ping};
    use mvm_e2e::netns::{ip, Netns};

    /// Two mvmds would fight over the default network's bridge and mvm's
    /// nftables tables: one test's daemon at a time.
    fn one_daemon_at_a_time() -> MutexGuard<'static, ()> {
        static LOCK: Mutex<()> = Mutex::new(());
        LOCK.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Import a busybox image with a page for httpd (`/www/index.html`)
    /// as [`BUSYBOX`].
    fn import_busybox(d: &Daemon, dir: &Path) {
        let tree = dir.join("tree");
        mvm_e2e::rootfs::busybox_tree(&tree).expect("busybox tree");
        fs::create_dir_all(tree.join("www")).unwrap();
        fs::write(tree.join("www/index.html"), "hello from netwire\n").unwrap();
        fs::copy(udp_echo_tool(), tree.join("bin/mvm-udp-echo")).unwrap();
        let tar = dir.join("rootfs.tar");
        sh(&format!(
            "tar --numeric-owner --owner=0 --group=0 -C '{}' -cf '{}' .",
            tree.display(),
            tar.display()
        ));
        ok(d, &["import", tar.to_str().unwrap(), BUSYBOX]);
    }

    /// The guest tools' UDP echo server (busybox has no UDP server):
    /// `MVM_GUEST_TOOLS` (a directory), else next to the static init that
    /// `make init` built.
    fn udp_echo_tool() -> PathBuf {
        let dir = std::env::var_os("MVM_GUEST_TOOLS")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                mvm_e2e::Artifacts::get()
                    .init
                    .parent()
                    .unwrap()
                    .to_path_buf()
            });
        let p = dir.join("mvm-udp-echo");
        assert!(
            p.exists(),
            "{} is missing: `make init` builds it (crate mvm-guest-tools)",
            p.display()
        );
        p
    }

    const BUSYBOX: &str = "e2e/busybox:net";
    /// The image's page served on port 8080.
    const HTTPD: [&str; 6] = ["httpd", "-f", "-p", "8080", "-h", "/www"];

    /// The start of each test here: its turn, a directory of its own, a
    /// daemon there (with `extra` arguments) and the busybox image. The
    /// daemon goes first when the three are dropped in reverse order.
    fn setup(prefix: &str, extra: &[&str]) -> (MutexGuard<'static, ()>, tempfile::TempDir, Daemon) {
        mvm_e2e::require_hardware_kvm();
        let turn = one_daemon_at_a_time();
        let dir = tempfile::Builder::new().prefix(prefix).tempdir().unwrap();
        let d = Daemon::start_with(dir.path(), 1, extra);
        import_busybox(&d, dir.path());
        (turn, dir, d)
    }

    /// The host's address on network `name` (its gateway).
    fn gateway(d: &Daemon, name: &str) -> String {
        let v: serde_json::Value =
            serde_json::from_str(&ok(d, &["network", "inspect", name])).unwrap();
        v[0]["gateway"].as_str().unwrap().to_string()
    }
    /// The published host port of the web sandbox.
    const WEB_PORT: u16 = 18080;

    struct Daemon {
        child: Child,
        root: PathBuf,
        run: PathBuf,
        log: PathBuf,
        host: String,
    }

    impl Daemon {
        fn start(dir: &Path, n: u32) -> Daemon {
            Self::start_with(dir, n, &[])
        }

        /// [`Daemon::start`] with more arguments for mvmd.
        fn start_with(dir: &Path, n: u32, extra: &[&str]) -> Daemon {
            let root = dir.join("root");
            let run = dir.join("run");
            let log = dir.join(format!("mvmd-{n}.log"));
            let mut cmd = Command::new(binary("mvmd"));
            cmd.arg("--root")
                .arg(&root)
                .arg("--run-dir")
                .arg(&run)
                .args(extra)
                .stdin(Stdio::null())
                .stdout(fs::File::create(&log).unwrap())
                .stderr(fs::File::create(&log).unwrap());
            // SAFETY: prctl in the child before exec; async-signal-safe.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
            let child = cmd.spawn().expect("spawn mvmd");
            let socket = run.join("mvmd.sock");
            let t = Instant::now();
            while !ping(&socket) {
                assert!(
                    t.elapsed() < Duration::from_secs(60),
                    "mvmd did not answer within 60 s; its log:\n{}",
                    fs::read_to_string(&log).unwrap_or_default()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
            Daemon {
                child,
                host: format!("unix://{}", socket.display()),
                root,
                run,
                log,
            }
        }

        fn sigkill(&mut self) {
            self.child.kill().unwrap();
            self.child.wait().unwrap();
        }

        fn log(&self) -> String {
            fs::read_to_string(&self.log).unwrap_or_default()
        }
    }

    impl Drop for Daemon {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    #[derive(Debug)]
    struct Out {
        code: i32,
        stdout: String,
        stderr: String,
    }

    /// Longest any single mvctl call may take: a hang (a guest script
    /// that never ends, say) fails its test with the daemon's log, so
    /// the suite goes on and the test can be retried alone, instead of
    /// the whole binary running out of time.
    const CALL_TIMEOUT: Duration = Duration::from_secs(300);

    fn mvctl(d: &Daemon, args: &[&str]) -> Out {
        let mut cmd = Command::new(binary("mvctl"));
        cmd.args(args).env("MVM_HOST", &d.host);
        let out = mvm_e2e::output_within(cmd, None, CALL_TIMEOUT).unwrap_or_else(|o| {
            panic!(
                "mvctl {args:?} did not finish within {CALL_TIMEOUT:?}; it wrote: {}{}\nmvmd log:\n{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr),
                d.log()
            )
        });
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    fn ok(d: &Daemon, args: &[&str]) -> String {
        let o = mvctl(d, args);
        assert_eq!(
            o.code,
            0,
            "mvctl {args:?} failed: {o:#?}\nmvmd log:\n{}",
            d.log()
        );
        o.stdout
    }

    fn sh(cmd: &str) -> String {
        let out = Command::new("sh").arg("-c").arg(cmd).output().expect("sh");
        assert!(
            out.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `GET /` on `addr`: the answer, or why not.
    fn http_get(addr: &str) -> Result<String, String> {
        let mut s = TcpStream::connect(addr).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        s.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .map_err(|e| e.to_string())?;
        let mut buf = String::new();
        s.read_to_string(&mut buf).map_err(|e| e.to_string())?;
        if buf.starts_with("HTTP/1.") {
            Ok(buf)
        } else {
            Err(format!("not an HTTP answer: {buf:?}"))
        }
    }

    /// Wait for the guest's server to answer through the published port
    /// (the guest boots and starts httpd meanwhile).
    fn wait_http(d: &Daemon, port: u16) -> String {
        wait_http_at(d, &format!("127.0.0.1:{port}"))
    }

    /// [`wait_http`] on another address than 127.0.0.1.
    fn wait_http_at(d: &Daemon, addr: &str) -> String {
        let t = Instant::now();
        loop {
            match http_get(addr) {
                Ok(body) => return body,
                Err(e) => {
                    assert!(
                        t.elapsed() < Duration::from_secs(120),
                        "http://{addr}/ did not answer within 120 s: {e}\nmvmd log:\n{}",
                        d.log()
                    );
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    }

    /// One datagram to `addr` and the answer from there (10 s), or why
    /// not.
    fn udp_ask(addr: &str, msg: &str) -> Result<String, String> {
        let s = UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
        s.connect(addr).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        s.send(msg.as_bytes()).map_err(|e| e.to_string())?;
        let mut buf = [0u8; 2048];
        let n = s.recv(&mut buf).map_err(|e| e.to_string())?;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    /// `mvctl port NAME` as container port (`8080/tcp`) to host port.
    fn published(d: &Daemon, name: &str) -> std::collections::BTreeMap<String, u16> {
        ok(d, &["port", name])
            .lines()
            .map(|l| {
                let (guest, host) = l
                    .split_once(" -> 0.0.0.0:")
                    .unwrap_or_else(|| panic!("a line of mvctl port: {l:?}"));
                (guest.to_string(), host.parse().unwrap())
            })
            .collect()
    }

    /// The lines a guest script printed, once it has succeeded.
    fn script_lines(d: &Daemon, o: &Out) -> Vec<String> {
        assert_eq!(o.code, 0, "{o:#?}\nmvmd log:\n{}", d.log());
        o.stdout.lines().map(String::from).collect()
    }

    /// A field of `mvctl inspect NAME` (`/network_settings/ipv4_address`).
    fn inspect_field(d: &Daemon, name: &str, pointer: &str) -> serde_json::Value {
        let v: serde_json::Value = serde_json::from_str(&ok(d, &["inspect", name])).unwrap();
        v[0].pointer(pointer).cloned().unwrap_or_default()
    }

    /// What mvm owns on the host: its nftables objects (rules, chains,
    /// sets, maps of its tables) and its links.
    fn host_objects() -> (usize, Vec<String>) {
        let rules: serde_json::Value =
            serde_json::from_str(&sh("nft -j list ruleset")).expect("nft -j");
        let mvm_items = rules["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|item| {
                item.as_object()
                    .and_then(|o| o.values().next())
                    .and_then(|v| v.get("table").or_else(|| v.get("name")))
                    .and_then(|t| t.as_str())
                    == Some("mvm")
            })
            .count();
        let mut links: Vec<String> = sh("ip -o link show")
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap().to_string())
            .filter(|n| n.starts_with("mvm"))
            .collect();
        links.sort();
        (mvm_items, links)
    }

    #[test]
    fn sandboxes_on_networks() {
        let (_turn, dir, mut d) = setup("netwire-e2e-", &[]);

        let info = ok(&d, &["info"]);
        assert!(info.contains(" Networking: ok"), "{info}");
        let nets = ok(&d, &["network", "ls"]);
        assert!(
            nets.contains("bridge"),
            "the default network exists: {nets}"
        );

        // -p: the host port reaches the guest's server.
        let port_arg = format!("{WEB_PORT}:8080");
        ok(
            &d,
            &[
                "run", "-d", "--name", "web", "-p", &port_arg, BUSYBOX, "httpd", "-f", "-p",
                "8080", "-h", "/www",
            ],
        );
        let body = wait_http(&d, WEB_PORT);
        assert!(body.contains("hello from netwire"), "{body}");
        // On the bridge's address too (the host's own traffic to a
        // non-loopback address of its own: output DNAT, not the proxy).
        let gateway = gateway(&d, "bridge");
        let body = http_get(&format!("{gateway}:{WEB_PORT}")).unwrap();
        assert!(body.contains("hello from netwire"), "{body}");
        let ports = ok(&d, &["port", "web"]);
        assert_eq!(ports.trim(), format!("8080/tcp -> 0.0.0.0:{WEB_PORT}"));
        let ps = ok(&d, &["ps"]);
        assert!(
            ps.contains("PORTS") && ps.contains(&format!("0.0.0.0:{WEB_PORT}->8080/tcp")),
            "{ps}"
        );
        let inspect: serde_json::Value =
            serde_json::from_str(&ok(&d, &["inspect", "web"])).unwrap();
        let ns = &inspect[0]["network_settings"];
        assert_eq!(ns["network"], "bridge", "{inspect}");
        assert!(
            ns["ipv4_address"].as_str().is_some_and(|a| a.contains('/')),
            "{inspect}"
        );

        // mvmd SIGKILLed and started again: the published port still
        // works (the guest never stopped), nothing on the host doubled.
        let before = host_objects();
        assert!(before.0 > 0 && !before.1.is_empty(), "{before:?}");
        d.sigkill();
        let d2 = Daemon::start(dir.path(), 2);
        assert_eq!((&d2.root, &d2.run), (&d.root, &d.run));
        drop(d);
        let d = d2;
        let body = wait_http(&d, WEB_PORT);
        assert!(body.contains("hello from netwire"), "after restart: {body}");
        assert_eq!(host_objects(), before, "mvm's host objects after a restart");

        // Stopped: its port is free for anyone.
        ok(&d, &["stop", "-t", "1", "web"]);
        TcpListener::bind(("0.0.0.0", WEB_PORT))
            .unwrap_or_else(|e| panic!("port {WEB_PORT} still taken after stop: {e}"));
        assert_eq!(ok(&d, &["port", "web"]).trim(), "");
        // Started again: published again, at the same address.
        let ip_before = ns["ipv4_address"].clone();
        ok(&d, &["start", "web"]);
        let body = wait_http(&d, WEB_PORT);
        assert!(body.contains("hello from netwire"), "after start: {body}");
        let inspect: serde_json::Value =
            serde_json::from_str(&ok(&d, &["inspect", "web"])).unwrap();
        assert_eq!(inspect[0]["network_settings"]["ipv4_address"], ip_before);
        ok(&d, &["rm", "-f", "web"]);

        // A user network: sandboxes reach each other by name and alias.
        let id = ok(
            &d,
            &["network", "create", "--subnet", "10.99.7.0/24", "appnet"],
        );
        assert_eq!(id.trim().len(), 64, "{id}");
        ok(
            &d,
            &[
                "run",
                "-d",
                "--name",
                "db",
                "--network",
                "appnet",
                "--network-alias",
                "database",
                BUSYBOX,
                "httpd",
                "-f",
                "-p",
                "8080",
                "-h",
                "/www",
            ],
        );
        let o = mvctl(
            &d,
            &[
                "run", "--rm", "--network", "appnet", BUSYBOX, "sh", "-c",
                // Busybox's static wget crashes in the guest (glibc's NSS
                // lookups of a static binary without NSS libraries); ping
                // and nc do not: the alias is resolved with ping and the
                // page fetched with nc.
                "ip=$(ping -c1 -W5 database | sed -n 's/^PING [^ ]* (\\([0-9.]*\\)).*/\\1/p'); echo \"database is $ip\"; for i in $(seq 1 40); do printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 $ip 8080 | grep hello && break; sleep 0.3; done; ping -c1 -W5 db",
            ],
        );
        assert!(
            o.code == 0 && o.stdout.contains("hello from netwire"),
            "{o:#?}\nmvmd log:\n{}",
            d.log()
        );
        assert!(o.stdout.contains("database is 10.99.7."), "{o:#?}");
        assert!(o.stdout.contains("1 packets received"), "{o:#?}");
        let net: serde_json::Value =
            serde_json::from_str(&ok(&d, &["network", "inspect", "appnet"])).unwrap();
        assert_eq!(net[0]["subnet"], "10.99.7.0/24");
        assert_eq!(net[0]["sandboxes"][0]["name"], "db", "{net}");
        let busy = mvctl(&d, &["network", "rm", "appnet"]);
        assert_ne!(busy.code, 0, "a network in use is not removed: {busy:?}");
        assert!(busy.stderr.contains("db"), "{busy:?}");
        ok(&d, &["rm", "-f", "db"]);
        ok(&d, &["network", "rm", "appnet"]);

        // --network none: loopback only.
        let links = ok(
            &d,
            &[
                "run",
                "--rm",
                "--network",
                "none",
                BUSYBOX,
                "ls",
                "/sys/class/net",
            ],
        );
        assert_eq!(links.split_whitespace().collect::<Vec<_>>(), ["lo"]);

        // Bad input is refused with a message naming it.
        let bad = mvctl(&d, &["create", "-p", "99999:80", BUSYBOX]);
        assert_ne!(bad.code, 0);
        assert!(bad.stderr.contains("99999"), "{bad:?}");
        let bad = mvctl(&d, &["create", "--network", "nosuchnet", BUSYBOX]);
        assert!(bad.stderr.contains("no such network: nosuchnet"), "{bad:?}");
    }

    /// Published ports beyond one TCP port: `-p H:C/udp` answers on
    /// 127.0.0.1 (the proxy) and on the bridge's address (DNAT); `-P`
    /// publishes the image's EXPOSEd ports (TCP and UDP) on free host
    /// ports that `mvctl port` and `ps` show; a host port already in use
    /// fails the start, naming the port, with nothing left behind;
    /// overlapping subnets are refused at `network create`. One sandbox
    /// boots.
    #[test]
    fn published_udp_and_exposed_ports_and_what_is_refused() {
        let (_turn, dir, d) = setup("netwire-ports-e2e-", &[]);
        let bridge: serde_json::Value =
            serde_json::from_str(&ok(&d, &["network", "inspect", "bridge"])).unwrap();
        let gateway = bridge[0]["gateway"].as_str().unwrap().to_string();
        let default_subnet = bridge[0]["subnet"].as_str().unwrap().to_string();

        // Overlapping subnets: refused, naming what they overlap.
        ok(
            &d,
            &["network", "create", "--subnet", "10.99.20.0/24", "ovl1"],
        );
        for (subnet, what) in [
            ("10.99.20.128/25", "network \"ovl1\" (10.99.20.0/24)"),
            ("10.99.0.0/16", "network \"ovl1\" (10.99.20.0/24)"),
            (
                default_subnet.as_str(),
                &*format!("network \"bridge\" ({default_subnet})"),
            ),
        ] {
            let o = mvctl(&d, &["network", "create", "--subnet", subnet, "ovl2"]);
            assert!(
                o.code != 0
                    && o.stderr
                        .contains(&format!("subnet {subnet} overlaps {what}")),
                "{subnet}: {o:#?}"
            );
        }
        let nets = ok(&d, &["network", "ls"]);
        assert!(!nets.contains("ovl2"), "{nets}");
        ok(&d, &["network", "rm", "ovl1"]);

        // An image that EXPOSEs a TCP and a UDP port (a build of
        // metadata only: no step boots).
        let ctx = dir.path().join("ctx");
        fs::create_dir_all(&ctx).unwrap();
        fs::write(
            ctx.join("Dockerfile"),
            format!("FROM {BUSYBOX}\nEXPOSE 8080 7070/udp\n"),
        )
        .unwrap();
        ok(
            &d,
            &["build", "-q", "-t", "e2e/exposed", ctx.to_str().unwrap()],
        );

        // A host port in use: the start fails naming it, and nothing of
        // the sandbox is left on the host or running.
        let objects_before = host_objects();
        let held = TcpListener::bind("127.0.0.1:18383").unwrap();
        for (name, rm) in [("clash", false), ("clash2", true)] {
            let mut args = vec!["run", "-d", "--name", name, "-p", "18383:8080"];
            if rm {
                args.push("--rm");
            }
            args.push("e2e/exposed");
            args.extend(HTTPD);
            let o = mvctl(&d, &args);
            assert!(
                o.code != 0 && o.stderr.contains("18383/tcp is already in use"),
                "{o:#?}\nmvmd log:\n{}",
                d.log()
            );
            assert_eq!(
                host_objects(),
                objects_before,
                "mvm's host objects after the refused start of {name}"
            );
            let running = ok(&d, &["ps", "-q"]);
            assert_eq!(running.trim(), "", "nothing runs: {running}");
        }
        // Without --rm the sandbox stays for inspection (as in Docker),
        // not running and with no ports; with --rm it is gone.
        assert_ne!(inspect_field(&d, "clash", "/state/status"), "running");
        assert_eq!(ok(&d, &["port", "clash"]).trim(), "");
        let gone = mvctl(&d, &["inspect", "clash2"]);
        assert_ne!(gone.code, 0, "{gone:?}");
        drop(held);
        ok(&d, &["rm", "-f", "clash"]);

        // -p H:C/udp and -P: the UDP echo server answers on two ports,
        // httpd on the EXPOSEd TCP one (started once both UDP ports are
        // bound, so an HTTP answer means UDP is being served).
        ok(
            &d,
            &[
                "run", "-d", "--name", "udp", "-P", "-p", "18181:5353/udp", "e2e/exposed",
                "sh", "-c",
                "mvm-udp-echo 5353 7070 > /tmp/udp & until grep -q 'udp-listening 7070' /tmp/udp 2>/dev/null; do sleep 0.1; done; exec httpd -f -p 8080 -h /www",
            ],
        );
        let ports = published(&d, "udp");
        assert_eq!(
            ports.keys().collect::<Vec<_>>(),
            ["5353/udp", "7070/udp", "8080/tcp"],
            "{ports:?}"
        );
        assert_eq!(ports["5353/udp"], 18181);
        let (tcp, udp) = (ports["8080/tcp"], ports["7070/udp"]);
        assert!(
            tcp != 0 && udp != 0 && tcp != 18181 && udp != 18181,
            "{ports:?}"
        );
        let ps = ok(&d, &["ps"]);
        for p in [
            "0.0.0.0:18181->5353/udp".to_string(),
            format!("0.0.0.0:{tcp}->8080/tcp"),
            format!("0.0.0.0:{udp}->7070/udp"),
        ] {
            assert!(ps.contains(&p), "{p} in {ps}");
        }
        assert_eq!(
            ok(&d, &["port", "udp", "7070/udp"]).trim(),
            format!("0.0.0.0:{udp}")
        );
        let body = wait_http(&d, tcp);
        assert!(body.contains("hello from netwire"), "{body}");
        let body = http_get(&format!("{gateway}:{tcp}")).unwrap();
        assert!(body.contains("hello from netwire"), "{body}");
        // Each answer names the source the guest saw (the host's address
        // on the bridge, by proxy and by DNAT) and the port that answered.
        for (addr, port) in [
            (format!("127.0.0.1:{}", 18181), 5353),
            (format!("{gateway}:18181"), 5353),
            (format!("127.0.0.1:{udp}"), 7070),
            (format!("{gateway}:{udp}"), 7070),
        ] {
            let answer = udp_ask(&addr, "over udp")
                .unwrap_or_else(|e| panic!("udp {addr}: {e}\nmvmd log:\n{}", d.log()));
            assert_eq!(answer, format!("{gateway} {port} over udp"), "{addr}");
        }

        // Stopped: the UDP ports are free again.
        ok(&d, &["stop", "-t", "1", "udp"]);
        for p in [18181, udp] {
            UdpSocket::bind(("0.0.0.0", p))
                .unwrap_or_else(|e| panic!("udp port {p} still taken after stop: {e}"));
        }
        ok(&d, &["rm", "-f", "udp"]);
        assert_eq!(
            host_objects(),
            objects_before,
            "mvm's host objects at the end"
        );
    }

    /// Isolation through the product: members of an `--internal`
    /// network reach each other but nothing outside, even with a route
    /// they add themselves; sandboxes on different networks cannot reach
    /// each other by address; a guest reaches neither mvmd's TCP API
    /// nor an unpublished host service on its gateway (or the host's
    /// other address), while a guest of a normal network does reach the
    /// outside (so the refusals are the rules', not a broken path), and
    /// no longer does once it sends with another address or MAC than its
    /// own (anti-spoofing), until it has its own back. Three sandboxes
    /// boot.
    #[test]
    fn networks_are_isolated_from_each_other_the_host_and_the_outside() {
        const API: u16 = 23750;
        let api = format!("0.0.0.0:{API}");
        let (_turn, _dir, d) = setup("netwire-isolation-e2e-", &["--tcp", &api]);
        let _outside = Outside::start("payload from the outside\n");
        // The outside's veth is a host route: a subnet on it is refused.
        let o = mvctl(
            &d,
            &["network", "create", "--subnet", "198.18.7.0/24", "onroute"],
        );
        assert!(
            o.code != 0
                && o.stderr
                    .contains(&format!("the host route via {OUTSIDE_VETH}")),
            "{o:#?}"
        );
        ok(
            &d,
            &[
                "network",
                "create",
                "--internal",
                "--subnet",
                "10.99.21.0/24",
                "innet",
            ],
        );
        ok(
            &d,
            &["network", "create", "--subnet", "10.99.22.0/24", "usernet"],
        );
        // Unpublished host services: one on usernet's gateway address,
        // one on every address; the host itself reaches them and mvmd's
        // TCP API on the gateways and its other address.
        for addr in ["10.99.22.1:7778", "0.0.0.0:7777"] {
            let service = TcpListener::bind(addr).unwrap();
            std::thread::spawn(move || {
                for c in service.incoming() {
                    let Ok(mut c) = c else { return };
                    // The request first: closing with it unread would
                    // reset the connection before the client reads.
                    let _ = c.set_read_timeout(Some(Duration::from_secs(10)));
                    let _ = c.read(&mut [0u8; 4096]);
                    let _ = c.write_all(b"HTTP/1.0 200 OK\r\n\r\nhost service\n");
                }
            });
        }
        let default_gateway = gateway(&d, "bridge");
        for to in ["10.99.22.1:7778", "10.99.22.1:7777", "10.99.21.1:7777"] {
            assert!(http_get(to).unwrap().contains("host service"), "{to}");
        }
        for host in [
            "10.99.21.1",
            "10.99.22.1",
            "198.18.7.1",
            default_gateway.as_str(),
        ] {
            let answer = http_get(&format!("{host}:{API}"));
            assert!(answer.is_ok(), "mvmd's API on {host}: {answer:?}");
        }

        for (name, net) in [("in1", "innet"), ("user1", "usernet")] {
            let mut args = vec!["run", "-d", "--name", name, "--network", net, BUSYBOX];
            args.extend(HTTPD);
            ok(&d, &args);
        }
        let ip = |name| {
            let a = inspect_field(&d, name, "/network_settings/ipv4_address");
            a.as_str().unwrap().split('/').next().unwrap().to_string()
        };
        let (in1, user1) = (ip("in1"), ip("user1"));
        assert!(in1.starts_with("10.99.21.") && user1.starts_with("10.99.22."));

        // `try HOST PORT`: an HTTP GET, its answer on stdout (nothing if
        // it got nowhere within 5 s); `has TEXT`: 1 if stdin has it, else
        // 0. `probe NAME HOST PORT TEXT`: "NAME: $(try HOST PORT | has
        // TEXT)" in the background; `probes` waits for every probe since
        // the last and prints their lines in the order they were started.
        // A refused path costs its whole 5 s, so the independent ones run
        // together.
        let helpers = "try() { printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 $1 $2 2>/dev/null; }
has() { grep -q \"$1\" && echo 1 || echo 0; }
n=0
probe() { n=$((n+1)); (echo \"$1: $(try $2 $3 | has \"$4\")\" > /tmp/probe.$n) & }
probes() { wait; i=1; while [ $i -le $n ]; do cat /tmp/probe.$i; i=$((i+1)); done; rm -f /tmp/probe.*; n=0; }";
        // A second member of the internal network.
        let script = format!(
            "{helpers}
for i in $(seq 1 40); do try in1 8080 | grep -q hello && break; sleep 0.3; done
echo \"member: $(try in1 8080 | has hello)\"
echo \"default-route: $(ip route | has default)\"
echo \"outside: $(try {OUTSIDE} {OUTSIDE_PORT} | has payload)\"
ip route add default via 10.99.21.1 && echo route-added
probe outside-routed {OUTSIDE} {OUTSIDE_PORT} payload
probe other-net {user1} 8080 hello
probe gateway-service 10.99.21.1 7777 'host service'
probe api 10.99.21.1 {API} HTTP
probes"
        );
        let o = mvctl(
            &d,
            &[
                "run",
                "--rm",
                "--network",
                "innet",
                BUSYBOX,
                "sh",
                "-c",
                &script,
            ],
        );
        assert_eq!(
            script_lines(&d, &o),
            [
                "member: 1",
                "default-route: 0",
                "outside: 0",
                "route-added",
                "outside-routed: 0",
                "other-net: 0",
                "gateway-service: 0",
                "api: 0"
            ],
            "{o:#?}"
        );

        // The normal network's guest: the outside yes (NAT), its own
        // server and its network's DNS on the gateway yes; the other
        // network, the host's services and mvmd's API on any host
        // address no.
        let script = format!(
            "{helpers}
echo \"outside: $(try {OUTSIDE} {OUTSIDE_PORT} | has payload)\"
echo \"self: $(try {user1} 8080 | has hello)\"
echo \"resolver: $(nslookup user1 | has 'Address:.*{user1}$')\"
probe other-net {in1} 8080 hello
probe gateway-service 10.99.22.1 7778 'host service'
probe any-address-service 10.99.22.1 7777 'host service'
probe other-gateway-service 10.99.21.1 7777 'host service'
probe api-gateway 10.99.22.1 {API} HTTP
probe api-host 198.18.7.1 {API} HTTP
probe api-default-gateway {default_gateway} {API} HTTP
probes
mac=$(cat /sys/class/net/eth0/address)
again() {{ ip addr flush dev eth0 && ip addr add $1/24 dev eth0 && ip route add default via 10.99.22.1 && ip neigh flush dev eth0 >/dev/null; }}
again 10.99.22.200
echo \"forged-ip: $(try {OUTSIDE} {OUTSIDE_PORT} | has payload)\"
again {user1}
ip link set eth0 address 02:42:0a:63:16:c8 && ip neigh flush dev eth0 >/dev/null
echo \"forged-mac: $(try {OUTSIDE} {OUTSIDE_PORT} | has payload)\"
ip link set eth0 address $mac && ip neigh flush dev eth0 >/dev/null
echo \"own-again: $(try {OUTSIDE} {OUTSIDE_PORT} | has payload)\""
        );
        let o = mvctl(&d, &["exec", "user1", "sh", "-c", &script]);
        assert_eq!(
            script_lines(&d, &o),
            [
                "outside: 1",
                "self: 1",
                "resolver: 1",
                "other-net: 0",
                "gateway-service: 0",
                "any-address-service: 0",
                "other-gateway-service: 0",
                "api-gateway: 0",
                "api-host: 0",
                "api-default-gateway: 0",
                "forged-ip: 0",
                "forged-mac: 0",
                "own-again: 1"
            ],
            "{o:#?}"
        );
        ok(&d, &["rm", "-f", "in1", "user1"]);
        ok(&d, &["network", "rm", "innet", "usernet"]);
    }

    /// "The outside": a namespace behind a veth pair from the host
    /// (198.18.7.1 on the host's end, 198.18.7.2 on its own, a benchmark
    /// range nothing else uses), with an HTTP server on 198.18.7.2:8000
    /// that answers every request with `payload` and records each
    /// client's address. It has no route to any mvm network, so a guest
    /// reaches it only through the default network's NAT.
    struct Outside {
        _ns: Netns,
        clients: std::sync::Arc<Mutex<Vec<std::net::SocketAddr>>>,
    }

    const OUTSIDE: &str = "198.18.7.2";
    const OUTSIDE_PORT: u16 = 8000;
    /// The host's end of the veth pair (not `mvm...`: not mvm's link).
    const OUTSIDE_VETH: &str = "nwoutside0";

    impl Outside {
        fn start(payload: &'static str) -> Outside {
            let ns = Netns::new("outside").unwrap();
            let _ = ip(&["link", "del", OUTSIDE_VETH]);
            ip(&[
                "link",
                "add",
                OUTSIDE_VETH,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                ns.name(),
            ])
            .unwrap();
            ip(&["addr", "add", "198.18.7.1/30", "dev", OUTSIDE_VETH]).unwrap();
            ip(&["link", "set", OUTSIDE_VETH, "up"]).unwrap();
            ns.ip(&["addr", "add", &format!("{OUTSIDE}/30"), "dev", "eth0"])
                .unwrap();
            ns.ip(&["link", "set", "eth0", "up"]).unwrap();
            // The socket belongs to the namespace it was made in; it is
            // served from this process's threads.
            let listener = ns
                .run(|| TcpListener::bind((OUTSIDE, OUTSIDE_PORT)))
                .unwrap()
                .unwrap();
            let clients = std::sync::Arc::new(Mutex::new(Vec::new()));
            let seen = clients.clone();
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    let Ok(mut c) = conn else { return };
                    if let Ok(peer) = c.peer_addr() {
                        seen.lock().unwrap().push(peer);
                    }
                    let _ = c.set_read_timeout(Some(Duration::from_secs(10)));
                    let mut buf = [0u8; 4096];
                    let _ = c.read(&mut buf);
                    let _ = write!(
                        c,
                        "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{payload}",
                        payload.len()
                    );
                }
            });
            Outside { _ns: ns, clients }
        }
    }

    impl Drop for Outside {
        fn drop(&mut self) {
            // Then the namespace (a field) goes, with the other end.
            let _ = ip(&["link", "del", OUTSIDE_VETH]);
        }
    }

    /// Builds: RUN steps are on the default network (outbound NAT), as
    /// Docker's are; `--network none` leaves them `lo` only, and the same
    /// step then fails saying why.
    #[test]
    fn build_steps_reach_the_outside_through_nat() {
        let (_turn, dir, d) = setup("netwire-build-e2e-", &[]);
        let outside = Outside::start("payload from the outside\n");
        let links_before = host_objects().1;

        let ctx = dir.path().join("ctx");
        fs::create_dir_all(&ctx).unwrap();
        // nc, not wget: busybox's static wget crashes in the guest (see
        // the story test).
        fs::write(
            ctx.join("Dockerfile"),
            format!(
                "FROM {BUSYBOX}\nRUN printf 'GET /file HTTP/1.0\\r\\n\\r\\n' | nc -w 10 {OUTSIDE} {OUTSIDE_PORT} > /fetched && cat /fetched && grep -q 'payload from the outside' /fetched\n"
            ),
        )
        .unwrap();
        let ctx = ctx.to_str().unwrap();
        let o = mvctl(
            &d,
            &["build", "--progress", "plain", "-t", "e2e/fetched", ctx],
        );
        assert_eq!(o.code, 0, "{o:#?}\nmvmd log:\n{}", d.log());
        let got = ok(&d, &["run", "--rm", "e2e/fetched", "cat", "/fetched"]);
        assert!(got.contains("payload from the outside"), "{got}");
        // The server saw the host's end of the veth (the NAT), not a
        // guest's address it has no route to.
        let clients = outside.clients.lock().unwrap().clone();
        assert!(
            !clients.is_empty() && clients.iter().all(|c| c.ip().to_string() == "198.18.7.1"),
            "{clients:?}"
        );
        // The step's endpoint went with its microVM.
        assert_eq!(host_objects().1, links_before, "links after the build");
        let bridge: serde_json::Value =
            serde_json::from_str(&ok(&d, &["network", "inspect", "bridge"])).unwrap();
        assert_eq!(bridge[0]["sandboxes"], serde_json::json!([]), "{bridge}");

        // --network none: the same step (not from the cache) has no route.
        let served = clients.len();
        let o = mvctl(
            &d,
            &[
                "build",
                "--progress",
                "plain",
                "--no-cache",
                "--network",
                "none",
                "-t",
                "e2e/fetched2",
                ctx,
            ],
        );
        assert_ne!(o.code, 0, "{o:#?}");
        let all = format!("{}{}", o.stdout, o.stderr);
        assert!(
            all.contains("Network is unreachable") && all.contains("RUN"),
            "{o:#?}"
        );
        assert_eq!(outside.clients.lock().unwrap().len(), served);

        // What cannot be a build's network is refused before anything runs.
        let o = mvctl(&d, &["build", "--network", "host", ctx]);
        assert!(o.code != 0 && o.stderr.contains("--network host"), "{o:#?}");
        let o = mvctl(&d, &["build", "--network", "nosuchnet", ctx]);
        assert!(
            o.code != 0 && o.stderr.contains("no such network: nosuchnet"),
            "{o:#?}"
        );
        assert_eq!(host_objects().1, links_before, "links after the builds");
    }

    /// `network connect`/`disconnect`: a stopped sandbox gets a second
    /// NIC on another network from its next start (reached there by its
    /// alias), a running one is refused with the reason, and a disconnect
    /// takes the NIC away again at the next start.
    #[test]
    fn connect_and_disconnect_a_stopped_sandbox() {
        let (_turn, _dir, d) = setup("netwire-connect-e2e-", &[]);
        ok(
            &d,
            &["network", "create", "--subnet", "10.99.8.0/24", "frontnet"],
        );
        ok(
            &d,
            &[
                "create", "--name", "multi", BUSYBOX, "httpd", "-f", "-p", "8080", "-h", "/www",
            ],
        );
        ok(
            &d,
            &["network", "connect", "--alias", "web2", "frontnet", "multi"],
        );
        let again = mvctl(&d, &["network", "connect", "frontnet", "multi"]);
        assert!(
            again.code != 0 && again.stderr.contains("already on network frontnet"),
            "{again:?}"
        );
        let inspect: serde_json::Value =
            serde_json::from_str(&ok(&d, &["inspect", "multi"])).unwrap();
        let ns = &inspect[0]["network_settings"];
        assert_eq!(ns["network"], "bridge", "{inspect}");
        assert_eq!(ns["extra_networks"], serde_json::json!(["frontnet"]));
        let busy = mvctl(&d, &["network", "rm", "frontnet"]);
        assert!(busy.code != 0 && busy.stderr.contains("multi"), "{busy:?}");

        ok(&d, &["start", "multi"]);
        let links = ok(&d, &["exec", "multi", "ls", "/sys/class/net"]);
        assert_eq!(
            links.split_whitespace().collect::<Vec<_>>(),
            ["eth0", "eth1", "lo"]
        );
        // Running: refused, saying why and what to do.
        let o = mvctl(&d, &["network", "disconnect", "frontnet", "multi"]);
        assert!(
            o.code != 0 && o.stderr.contains("no hotplug") && o.stderr.contains("stop it first"),
            "{o:?}"
        );
        // Another sandbox on frontnet reaches it by its alias there.
        let o = mvctl(
            &d,
            &[
                "run", "--rm", "--network", "frontnet", BUSYBOX, "sh", "-c",
                "ip=$(ping -c1 -W5 web2 | sed -n 's/^PING [^ ]* (\\([0-9.]*\\)).*/\\1/p'); echo \"web2 is $ip\"; for i in $(seq 1 40); do printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 $ip 8080 | grep hello && break; sleep 0.3; done",
            ],
        );
        assert!(
            o.code == 0 && o.stdout.contains("hello from netwire"),
            "{o:#?}\nmvmd log:\n{}",
            d.log()
        );
        assert!(o.stdout.contains("web2 is 10.99.8."), "{o:#?}");
        let net: serde_json::Value =
            serde_json::from_str(&ok(&d, &["network", "inspect", "frontnet"])).unwrap();
        assert_eq!(net[0]["sandboxes"][0]["name"], "multi", "{net}");

        // Stopped: disconnected, and the next start has one NIC.
        ok(&d, &["stop", "-t", "1", "multi"]);
        ok(&d, &["network", "disconnect", "frontnet", "multi"]);
        let o = mvctl(&d, &["network", "disconnect", "frontnet", "multi"]);
        assert!(
            o.code != 0 && o.stderr.contains("not on network frontnet"),
            "{o:?}"
        );
        ok(&d, &["start", "multi"]);
        let links = ok(&d, &["exec", "multi", "ls", "/sys/class/net"]);
        assert_eq!(links.split_whitespace().collect::<Vec<_>>(), ["eth0", "lo"]);
        let net: serde_json::Value =
            serde_json::from_str(&ok(&d, &["network", "inspect", "frontnet"])).unwrap();
        assert_eq!(net[0]["sandboxes"], serde_json::json!([]), "{net}");
        ok(&d, &["rm", "-f", "multi"]);
        ok(&d, &["network", "rm", "frontnet"]);
    }
}
