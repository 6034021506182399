//! End-to-end tests of sandbox networking through the product: `mvctl`
//! against a real `mvmd` (run as root, so it owns mvm-net's bridges,
//! TAPs, nftables tables, port proxies and DNS servers) booting real
//! microVMs on real KVM.
//!
//! Run with `tests/run-e2e.sh netwire` (inside the emulated KVM host on
//! machines without hardware KVM). One test drives one daemon through
//! the whole story, because it SIGKILLs and restarts that daemon half-way
//! (the daemon is this test's child, not a shared one); the build test
//! has a daemon of its own. Each daemon owns the host's mvm bridges and
//! nftables tables, so the tests take turns ([`one_daemon_at_a_time`]).
//! Only loopback, the addresses of the networks mvmd makes and of a
//! namespace the test makes ("the outside", behind the default network's
//! NAT) are used; no guest route leads anywhere outside the host.

mod netwire {
    use std::fs;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
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
        let tar = dir.join("rootfs.tar");
        sh(&format!(
            "tar --numeric-owner --owner=0 --group=0 -C '{}' -cf '{}' .",
            tree.display(),
            tar.display()
        ));
        ok(d, &["import", tar.to_str().unwrap(), BUSYBOX]);
    }

    const BUSYBOX: &str = "e2e/busybox:net";
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
            let root = dir.join("root");
            let run = dir.join("run");
            let log = dir.join(format!("mvmd-{n}.log"));
            let mut cmd = Command::new(binary("mvmd"));
            cmd.arg("--root")
                .arg(&root)
                .arg("--run-dir")
                .arg(&run)
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

    fn mvctl(d: &Daemon, args: &[&str]) -> Out {
        let out = Command::new(binary("mvctl"))
            .args(args)
            .env("MVM_HOST", &d.host)
            .stdin(Stdio::null())
            .output()
            .expect("spawn mvctl");
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

    /// `GET /` on 127.0.0.1:`port`: the body, or why not.
    fn http_get(port: u16) -> Result<String, String> {
        let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
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
        let t = Instant::now();
        loop {
            match http_get(port) {
                Ok(body) => return body,
                Err(e) => {
                    assert!(
                        t.elapsed() < Duration::from_secs(120),
                        "http://127.0.0.1:{port}/ did not answer within 120 s: {e}\nmvmd log:\n{}",
                        d.log()
                    );
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
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
        mvm_e2e::require_hardware_kvm();
        let _turn = one_daemon_at_a_time();
        let dir = tempfile::Builder::new()
            .prefix("netwire-e2e-")
            .tempdir()
            .unwrap();
        let mut d = Daemon::start(dir.path(), 1);
        import_busybox(&d, dir.path());

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
        mvm_e2e::require_hardware_kvm();
        let _turn = one_daemon_at_a_time();
        let dir = tempfile::Builder::new()
            .prefix("netwire-build-e2e-")
            .tempdir()
            .unwrap();
        let d = Daemon::start(dir.path(), 1);
        import_busybox(&d, dir.path());
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
        mvm_e2e::require_hardware_kvm();
        let _turn = one_daemon_at_a_time();
        let dir = tempfile::Builder::new()
            .prefix("netwire-connect-e2e-")
            .tempdir()
            .unwrap();
        let d = Daemon::start(dir.path(), 1);
        import_busybox(&d, dir.path());
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
