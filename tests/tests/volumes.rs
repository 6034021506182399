//! End-to-end tests of volumes, bind mounts, tmpfs and read-only roots:
//! the real `mvctl` against a real `mvmd` booting real microVMs on real
//! KVM, with a real virtiofsd per share.
//!
//! Run with `tests/run-e2e.sh volumes`. Every test is in the `volumes`
//! module so that filter selects exactly these. One daemon serves the
//! suite (state in a temp dir); the suite imports a busybox image.

mod volumes {
    use std::fs;
    use std::io::Read;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::path::Path;
    use std::process::{Command, Stdio};
    use std::sync::OnceLock;
    use std::time::{Duration, Instant};

    use mvm_e2e::daemon::{binary, ping};

    const BUSYBOX: &str = "e2e/busybox:vol";
    const CALL_TIMEOUT: Duration = Duration::from_secs(240);

    #[derive(Debug)]
    struct Out {
        code: i32,
        stdout: String,
        stderr: String,
    }

    impl Out {
        fn ok(self) -> Out {
            assert_eq!(self.code, 0, "mvctl failed: {self:#?}");
            self
        }
        /// mvctl's own failure (125) with an error naming `why`.
        fn refused(self, why: &str) -> Out {
            assert_eq!(self.code, 125, "expected mvctl's error status: {self:#?}");
            assert!(
                self.stderr.contains("mvctl: error: ") && self.stderr.contains(why),
                "the error should say {why:?}: {self:#?}"
            );
            self
        }
    }

    struct Suite {
        dir: tempfile::TempDir,
        host: String,
    }

    fn suite() -> &'static Suite {
        static S: OnceLock<Suite> = OnceLock::new();
        S.get_or_init(|| {
            mvm_e2e::require_hardware_kvm();
            let dir = tempfile::Builder::new()
                .prefix("mvm-vol-e2e-")
                .tempdir()
                .unwrap();
            let run = dir.path().join("run");
            let socket = run.join("mvmd.sock");
            let log = dir.path().join("mvmd.log");
            // No host networking: nothing here publishes or connects,
            // and without it the suite runs beside netwire's daemons,
            // which own the host's mvm bridges (tests/run-e2e.sh).
            mvm_e2e::daemon::start_daemon_with(
                &dir.path().join("root"),
                &run,
                &log,
                &["--no-network"],
            );
            mvm_e2e::daemon::wait_answering(&socket, &log);
            let s = Suite {
                host: format!("unix://{}", socket.display()),
                dir,
            };
            let tree = s.dir.path().join("tree");
            mvm_e2e::rootfs::busybox_tree(&tree).expect("busybox tree");
            // Content for copy-up checks and a directory the tests mount on.
            fs::create_dir_all(tree.join("srv/seed")).unwrap();
            fs::write(tree.join("srv/seed/from-image"), "image").unwrap();
            let rootfs = s.dir.path().join("rootfs.tar");
            sh(&format!(
                "tar --numeric-owner --owner=0 --group=0 -C '{}' -cf '{}' .",
                tree.display(),
                rootfs.display()
            ));
            mvctl_on(&s.host, &["import", rootfs.to_str().unwrap(), BUSYBOX]).ok();
            s
        })
    }

    fn mvctl_on(host: &str, args: &[&str]) -> Out {
        let mut cmd = Command::new(binary("mvctl"));
        cmd.args(args)
            .env("MVM_HOST", host)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn mvctl");
        let mut so = child.stdout.take().unwrap();
        let mut se = child.stderr.take().unwrap();
        let t_out = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = so.read_to_string(&mut s);
            s
        });
        let t_err = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = se.read_to_string(&mut s);
            s
        });
        let t = Instant::now();
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            if t.elapsed() > CALL_TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                panic!("mvctl {args:?} did not finish within {CALL_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Out {
            code: status.code().unwrap_or(-1),
            stdout: t_out.join().unwrap(),
            stderr: t_err.join().unwrap(),
        }
    }

    fn mvctl(args: &[&str]) -> Out {
        mvctl_on(&suite().host, args)
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

    fn unique(prefix: &str) -> String {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        format!(
            "{prefix}{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        )
    }

    /// `mvctl run --rm [ARGS] busybox sh -c SCRIPT`.
    fn run_sh(args: &[&str], script: &str) -> Out {
        let mut all = vec!["run", "--rm"];
        all.extend_from_slice(args);
        all.extend_from_slice(&[BUSYBOX, "sh", "-c", script]);
        mvctl(&all)
    }

    fn volume_names() -> Vec<String> {
        mvctl(&["volume", "ls", "-q"])
            .ok()
            .stdout
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// The anonymous volumes (random 64-hex names; the tests run in
    /// parallel, and only this suite's anonymous test makes them).
    fn anonymous_volumes() -> Vec<String> {
        volume_names()
            .into_iter()
            .filter(|n| n.len() == 64 && n.bytes().all(|b| b.is_ascii_hexdigit()))
            .collect()
    }

    #[test]
    fn a_named_volume_outlives_its_sandboxes_and_is_refused_removal_while_used() {
        let vol = unique("data");
        let spec = format!("{vol}:/var/lib/app");
        let out = run_sh(
            &["-v", &spec],
            "echo kept > /var/lib/app/f && stat -c '%u %a' /var/lib/app",
        )
        .ok();
        assert_eq!(out.stdout.trim(), "0 755", "{out:?}");
        assert!(volume_names().contains(&vol), "created on first use");
        let out = run_sh(&["-v", &spec], "cat /var/lib/app/f").ok();
        assert_eq!(out.stdout.trim(), "kept");

        // In use by a sandbox (even one not running): refused, naming it.
        let name = unique("user");
        mvctl(&["create", "--name", &name, "-v", &spec, BUSYBOX, "true"]).ok();
        mvctl(&["volume", "rm", &vol]).refused(&name);
        let info = mvctl(&["inspect", &name]).ok().stdout;
        let v: serde_json::Value = serde_json::from_str(&info).unwrap();
        let m = &v[0]["mounts"][0];
        assert_eq!(m["type"], "volume");
        assert_eq!(m["name"], vol.as_str());
        assert_eq!(m["destination"], "/var/lib/app");
        assert_eq!(
            (m["driver"].as_str(), m["rw"].as_bool()),
            (Some("local"), Some(true))
        );
        mvctl(&["rm", &name]).ok();

        let insp = mvctl(&["volume", "inspect", &vol]).ok().stdout;
        let insp: serde_json::Value = serde_json::from_str(&insp).unwrap();
        assert_eq!(insp[0]["driver"], "local");
        assert_eq!(insp[0]["usage_data"]["ref_count"], 0);
        let data = Path::new(insp[0]["mountpoint"].as_str().unwrap());
        assert_eq!(fs::read_to_string(data.join("f")).unwrap().trim(), "kept");
        mvctl(&["volume", "rm", &vol]).ok();
        assert!(!data.exists());
        mvctl(&["volume", "rm", &vol]).refused("no such volume");
        mvctl(&["volume", "rm", "-f", &vol]).ok();

        // Copy-up: a new volume on a path the image has gets its content
        // (copied by init in the guest, through the share), once.
        let seeded = unique("seed");
        let spec = format!("{seeded}:/srv/seed");
        let out = run_sh(
            &["-v", &spec],
            "cat /srv/seed/from-image; rm /srv/seed/from-image; echo mine > /srv/seed/own",
        )
        .ok();
        assert_eq!(out.stdout, "image", "{out:?}");
        let out = run_sh(&["-v", &spec], "ls /srv/seed").ok();
        assert_eq!(
            out.stdout, "own\n",
            "not copied again into a volume with content: {out:?}"
        );
        let ro = unique("seedro");
        mvctl(&["volume", "create", &ro]).ok();
        let out = run_sh(
            &["-v", &format!("{ro}:/srv/seed:ro")],
            "ls -A /srv/seed | wc -l",
        )
        .ok();
        assert_eq!(
            out.stdout.trim(),
            "0",
            "a read-only mount is never written: {out:?}"
        );
        mvctl(&["volume", "rm", &seeded, &ro]).ok();
    }

    #[test]
    fn a_block_volume_keeps_data_has_one_writer_and_mounts_read_only() {
        let vol = unique("blk");
        // Bad requests first: no size, a bad size, an unknown option.
        mvctl(&["volume", "create", "--driver", "block", &vol]).refused("needs a size");
        mvctl(&[
            "volume", "create", "--driver", "block", "-o", "size=1x", &vol,
        ])
        .refused("invalid block volume size");
        mvctl(&[
            "volume", "create", "--driver", "block", "-o", "size=64m", "-o", "fs=xfs", &vol,
        ])
        .refused("size only");
        mvctl(&[
            "volume", "create", "--driver", "block", "-o", "size=64m", &vol,
        ])
        .ok();
        let ls = mvctl(&["volume", "ls"]).ok().stdout;
        assert!(
            ls.lines()
                .any(|l| l.starts_with("block") && l.contains(&vol) && l.ends_with("64m")),
            "{ls}"
        );
        let insp = mvctl(&["volume", "inspect", &vol]).ok().stdout;
        let insp: serde_json::Value = serde_json::from_str(&insp).unwrap();
        assert_eq!(insp[0]["driver"], "block", "{insp}");
        assert_eq!(insp[0]["options"]["size"], "64m");
        assert_eq!(insp[0]["usage_data"]["capacity"], 64u64 << 20);
        // The same name as a directory volume is another volume.
        mvctl(&["volume", "create", &vol]).refused("exists with driver block");

        // Written by one sandbox (copy-up of the image's /srv/seed into the
        // empty disk first), read by the next; an ext4 filesystem of the
        // volume's size, mounted at the target.
        let spec = format!("{vol}:/srv/seed");
        let out = run_sh(
            &["-v", &spec],
            "cat /srv/seed/from-image && echo && echo kept > /srv/seed/f && grep ' /srv/seed ' /proc/mounts",
        )
        .ok();
        assert!(out.stdout.starts_with("image\n"), "copy-up: {out:?}");
        assert!(out.stdout.contains(" ext4 rw"), "{out:?}");
        let out = run_sh(
            &["--mount", &format!("type=volume,source={vol},target=/d")],
            "cat /d/f; df -k /d | tail -1",
        )
        .ok();
        assert!(out.stdout.starts_with("kept\n"), "{out:?}");

        // One writer: a second sandbox that would write (or read while one
        // writes) is refused before it boots, naming the one using it.
        let a = unique("blkuser");
        mvctl(&[
            "run",
            "-d",
            "--name",
            &a,
            "-v",
            &format!("{vol}:/d"),
            BUSYBOX,
            "sleep",
            "600",
        ])
        .ok();
        run_sh(&["-v", &format!("{vol}:/d")], "true")
            .refused(&format!("in use by running sandbox {a}"));
        run_sh(&["-v", &format!("{vol}:/d:ro")], "true").refused(&a);
        mvctl(&["volume", "rm", &vol]).refused(&a);
        mvctl(&["rm", "-f", &a]).ok();

        // Read-only: mounted ro (EROFS on writes), two readers at once.
        let r = unique("blkro");
        mvctl(&[
            "run",
            "-d",
            "--name",
            &r,
            "-v",
            &format!("{vol}:/d:ro"),
            BUSYBOX,
            "sleep",
            "600",
        ])
        .ok();
        let out = run_sh(
            &["-v", &format!("{vol}:/d:ro")],
            "cat /d/f; echo x > /d/g 2>/dev/null && echo wrote || echo refused",
        )
        .ok();
        assert_eq!(out.stdout, "kept\nrefused\n", "{out:?}");
        run_sh(&["-v", &format!("{vol}:/d")], "true").refused(&r);
        mvctl(&["rm", "-f", &r]).ok();

        // Export and import by the host are refused with what to do instead.
        let tar = suite().dir.path().join(unique("blk.tar"));
        mvctl(&["volume", "export", &vol, "-o", tar.to_str().unwrap()]).refused("from a sandbox");
        fs::write(&tar, [0u8; 1024]).unwrap();
        mvctl(&["volume", "import", &vol, tar.to_str().unwrap()]).refused("tar -x");

        let image = insp[0]["mountpoint"].as_str().unwrap().to_string();
        assert!(Path::new(&image).is_file());
        mvctl(&["volume", "rm", &vol]).ok();
        assert!(!Path::new(&image).exists());
        // Prune removes an unused block volume too.
        let p = unique("blkp");
        mvctl(&[
            "volume",
            "create",
            "-d",
            "block",
            "-o",
            "size=16m",
            "--label",
            &format!("p={p}"),
            &p,
        ])
        .ok();
        let out = mvctl(&[
            "volume",
            "prune",
            "-f",
            "-a",
            "--filter",
            &format!("label=p={p}"),
        ])
        .ok();
        assert!(out.stdout.contains(&p), "{out:?}");
        assert!(!volume_names().contains(&p));
    }

    #[test]
    fn volume_create_ls_filters_and_prune() {
        let a = unique("lab");
        mvctl(&["volume", "create", "--label", "team=db", &a]).ok();
        let ls = mvctl(&["volume", "ls", "-q", "--filter", "label=team=db"])
            .ok()
            .stdout;
        assert!(ls.lines().any(|l| l == a), "{ls}");
        let ls = mvctl(&["volume", "ls", "-q", "--filter", "label=team=web"])
            .ok()
            .stdout;
        assert!(!ls.lines().any(|l| l == a), "{ls}");
        mvctl(&["volume", "ls", "--filter", "bogus=1"]).refused("unknown volume filter");
        mvctl(&["volume", "create", "--driver", "nfs", "x1"]).refused("unknown volume driver");
        mvctl(&["volume", "create", "../etc"]).refused("invalid volume name");
        // Named volumes survive a plain prune, not an --all one.
        mvctl(&["volume", "prune", "-f"]).ok();
        assert!(volume_names().contains(&a));
        let out = mvctl(&["volume", "prune", "-f", "-a", "--filter", "label=team=db"]).ok();
        assert!(out.stdout.contains(&a), "{out:?}");
        assert!(!volume_names().contains(&a));
    }

    #[test]
    fn anonymous_volumes_go_with_rm_v_and_with_rm() {
        let before = anonymous_volumes();
        run_sh(&["-v", "/scratch"], "echo x > /scratch/f").ok();
        assert_eq!(
            anonymous_volumes(),
            before,
            "--rm removed the anonymous volume"
        );

        let name = unique("anon");
        mvctl(&[
            "create",
            "--name",
            &name,
            "--mount",
            "type=volume,target=/a",
            BUSYBOX,
            "true",
        ])
        .ok();
        let during = anonymous_volumes();
        assert_eq!(during.len(), before.len() + 1, "{during:?}");
        mvctl(&["rm", "-v", &name]).ok();
        assert_eq!(anonymous_volumes(), before);

        // An image's VOLUME entry: an anonymous volume per sandbox,
        // filled from the image's content there (copy-up), gone with --rm
        // and with rm -v; a mount of the request on the path replaces it.
        let ctx = suite().dir.path().join(unique("volctx"));
        fs::create_dir_all(&ctx).unwrap();
        fs::write(
            ctx.join("Dockerfile"),
            format!("FROM {BUSYBOX}\nVOLUME /srv/seed\n"),
        )
        .unwrap();
        let image = "e2e/busybox:with-volume";
        mvctl(&["build", "-q", "-t", image, ctx.to_str().unwrap()]).ok();
        let out = mvctl(&[
            "run",
            "--rm",
            image,
            "sh",
            "-c",
            "cat /srv/seed/from-image; grep -c ' /srv/seed ' /proc/mounts",
        ])
        .ok();
        assert_eq!(out.stdout, "image1\n", "{out:?}");
        assert_eq!(anonymous_volumes(), before, "--rm removed it");
        let name = unique("imgvol");
        mvctl(&["create", "--name", &name, image, "true"]).ok();
        let during = anonymous_volumes();
        assert_eq!(during.len(), before.len() + 1, "{during:?}");
        let v: serde_json::Value =
            serde_json::from_str(&mvctl(&["inspect", &name]).ok().stdout).unwrap();
        let m = &v[0]["mounts"][0];
        assert_eq!(
            (m["type"].as_str(), m["destination"].as_str()),
            (Some("volume"), Some("/srv/seed")),
            "{v}"
        );
        assert!(during.iter().any(|d| m["name"] == d.as_str()), "{v}");
        mvctl(&["rm", "-v", &name]).ok();
        assert_eq!(anonymous_volumes(), before);
        let named = unique("covers");
        let out = run_sh_image(
            image,
            &["-v", &format!("{named}:/srv/seed")],
            "echo mine > /srv/seed/own; ls /srv/seed",
        )
        .ok();
        assert_eq!(out.stdout, "from-image\nown\n", "{out:?}");
        assert_eq!(anonymous_volumes(), before, "the named volume covers it");
        mvctl(&["volume", "rm", &named]).ok();
        mvctl(&["rmi", image]).ok();
    }

    /// `mvctl run --rm [ARGS] IMAGE sh -c SCRIPT`.
    fn run_sh_image(image: &str, args: &[&str], script: &str) -> Out {
        let mut all = vec!["run", "--rm"];
        all.extend_from_slice(args);
        all.extend_from_slice(&[image, "sh", "-c", script]);
        mvctl(&all)
    }

    #[test]
    fn two_running_sandboxes_see_each_others_writes() {
        let vol = unique("shared");
        let spec = format!("{vol}:/s");
        let a = unique("writer");
        mvctl(&[
            "run", "-d", "--name", &a, "-v", &spec, BUSYBOX, "sh", "-c",
            "i=0; while [ ! -f /s/b ] && [ $i -lt 1200 ]; do sleep 0.1; i=$((i+1)); done; echo from-a > /s/.a && mv /s/.a /s/a; sleep 600",
        ])
        .ok();
        let out = run_sh(
            &["-v", &spec],
            // Each side publishes its file whole (write, then rename): the
            // other waits for the name, and must not read a file that
            // exists but is still empty.
            "echo from-b > /s/.b && mv /s/.b /s/b; i=0; while [ ! -f /s/a ] && [ $i -lt 1200 ]; do sleep 0.1; i=$((i+1)); done; cat /s/a",
        )
        .ok();
        assert_eq!(out.stdout.trim(), "from-a", "{out:?}");
        mvctl(&["volume", "rm", &vol]).refused(&a);
        mvctl(&["rm", "-f", &a]).ok();
        mvctl(&["volume", "rm", &vol]).ok();
    }

    #[test]
    fn bind_mounts_share_host_directories_read_write_and_read_only() {
        let dir = suite().dir.path().join(unique("bind"));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("hello"), "from-host").unwrap();
        // A symlink inside the share pointing at a host directory outside
        // it: the guest resolves it in its own root, never the host's.
        let secret = suite().dir.path().join(unique("secret"));
        fs::create_dir_all(&secret).unwrap();
        fs::write(secret.join("key"), "host-secret").unwrap();
        std::os::unix::fs::symlink(&secret, dir.join("escape")).unwrap();
        let spec = format!("{}:/src", dir.display());
        let out = run_sh(
            &["-v", &spec],
            "cat /src/hello; echo; echo guest > /src/new; chown 1234:4321 /src/new; chmod 640 /src/new; cat /src/escape/key 2>&1 || true",
        )
        .ok();
        assert!(out.stdout.starts_with("from-host"), "{out:?}");
        assert!(
            !out.stdout.contains("host-secret"),
            "the symlink reached the host: {out:?}"
        );
        let m = fs::metadata(dir.join("new")).unwrap();
        assert_eq!(fs::read_to_string(dir.join("new")).unwrap(), "guest\n");
        assert_eq!(
            (m.uid(), m.gid(), m.permissions().mode() & 0o7777),
            (1234, 4321, 0o640)
        );

        let ro = format!("{}:/src:ro", dir.display());
        let out = run_sh(
            &["-v", &ro],
            "cat /src/hello; echo; touch /src/nope 2>&1; echo rc=$?",
        )
        .ok();
        assert!(out.stdout.contains("from-host"), "{out:?}");
        assert!(out.stdout.contains("Read-only file system"), "{out:?}");
        assert!(!out.stdout.contains("rc=0"), "{out:?}");
        assert!(
            !dir.join("nope").exists(),
            "a read-only share wrote to the host"
        );

        // --mount's spelling of the same.
        let m = format!("type=bind,source={},target=/m,readonly", dir.display());
        let out = run_sh(&["--mount", &m], "cat /m/hello; touch /m/x 2>&1; true").ok();
        assert!(
            out.stdout.contains("from-host") && out.stdout.contains("Read-only"),
            "{out:?}"
        );

        // mvmd is the child subreaper of its jailed VMMs, so the
        // backends' sandboxed children become its children when their
        // parent ends first: it must reap them too. Other tests' sandboxes
        // end meanwhile, so a zombie may show for a moment; a leaked one
        // stays.
        let t0 = Instant::now();
        loop {
            let z = mvmd_zombies();
            if z.is_empty() {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "mvmd leaves zombies: {z:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Zombie children of this suite's mvmd, as "pid (comm)".
    fn mvmd_zombies() -> Vec<String> {
        zombies_of_mvmd(&suite().dir.path().join("root"))
    }

    /// Zombie children of the mvmd whose command line names `root`.
    fn zombies_of_mvmd(root: &Path) -> Vec<String> {
        let needle = root.to_string_lossy().into_owned();
        let stat = |pid: &str| -> Option<(String, String, i32)> {
            let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let (head, rest) = s.rsplit_once(')')?;
            let comm = head.split_once('(')?.1.to_string();
            let mut f = rest.split_whitespace();
            let state = f.next()?.to_string();
            let ppid = f.next()?.parse().ok()?;
            Some((comm, state, ppid))
        };
        let pids: Vec<String> = fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|p| p.parse::<i32>().is_ok())
            .collect();
        let mvmd: Vec<i32> = pids
            .iter()
            .filter(|p| stat(p).is_some_and(|(comm, _, _)| comm == "mvmd"))
            .filter(|p| {
                fs::read(format!("/proc/{p}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&needle))
            })
            .filter_map(|p| p.parse().ok())
            .collect();
        assert_eq!(mvmd.len(), 1, "this suite's mvmd: {mvmd:?}");
        pids.iter()
            .filter_map(|p| {
                let (comm, state, ppid) = stat(p)?;
                (state == "Z" && ppid == mvmd[0]).then(|| format!("{p} ({comm})"))
            })
            .collect()
    }

    #[test]
    fn tmpfs_and_read_only_root() {
        let out = run_sh(
            &[
                "--tmpfs",
                "/run:size=8m,mode=1770",
                "--mount",
                "type=tmpfs,destination=/t,tmpfs-size=1m",
            ],
            "grep -E ' /(run|t) ' /proc/mounts; stat -c '%a' /run; echo x > /run/f && cat /run/f",
        )
        .ok();
        assert!(
            out.stdout
                .contains("tmpfs /run tmpfs rw,nosuid,nodev,noexec"),
            "{out:?}"
        );
        assert!(out.stdout.contains("size=8192k"), "{out:?}");
        assert!(
            out.stdout.contains("tmpfs /t tmpfs") && out.stdout.contains("size=1024k"),
            "{out:?}"
        );
        assert!(out.stdout.contains("1770\nx"), "{out:?}");

        let vol = unique("rw");
        let spec = format!("{vol}:/data");
        let out = run_sh(
            &["--read-only", "-v", &spec, "--tmpfs", "/run"],
            "touch /root-write 2>&1; echo ok > /data/f && cat /data/f; echo ok > /run/f && cat /run/f",
        )
        .ok();
        assert!(out.stdout.contains("Read-only file system"), "{out:?}");
        assert_eq!(out.stdout.matches("ok").count(), 2, "{out:?}");
        let info = mvctl(&["volume", "rm", &vol]);
        info.ok();
    }

    #[test]
    fn bad_mount_input_gets_clear_errors() {
        let missing = suite().dir.path().join("no-such-dir");
        for (args, why) in [
            (vec!["-v", "./src:/src"], "relative"),
            (vec!["-v", "data:relative"], "absolute"),
            (vec!["-v", "data:/x:rshared"], "unknown option"),
            (vec!["--mount", "type=bind,target=/x"], "needs source"),
            (
                vec!["--mount", "type=volume,source=v1,target=/x,foo=bar"],
                "unknown field",
            ),
            (vec!["--tmpfs", "/run:uid=0"], "unknown option"),
        ] {
            let mut all = vec!["run", "--rm"];
            all.extend_from_slice(&args);
            all.extend_from_slice(&[BUSYBOX, "true"]);
            // Refused by mvctl's flag parsing, before any request.
            mvctl(&all).refused(why);
        }
        // Refused by mvmd (the daemon checks what a client may not have).
        let m = format!("type=bind,source={},target=/x", missing.display());
        run_sh(&["--mount", &m], "true").refused("does not exist");
        run_sh(&["-v", "data2:/a/../etc"], "true").refused("'..'");
        run_sh(&["-v", "data3:/"], "true").refused("root directory");
        let file = suite().dir.path().join(unique("file"));
        fs::write(&file, "").unwrap();
        run_sh(&["-v", &format!("{}:/f", file.display())], "true").refused("not a directory");
        run_sh(&["-v", "d4:/x", "-v", "d5:/x/"], "true").refused("two mounts");
        assert!(!volume_names()
            .iter()
            .any(|v| v == "d4" || v == "d5" || v == "data2"));
    }

    /// `tar -tv` of an archive: what a user would check a backup with.
    fn tar_listing(path: &Path) -> String {
        sh(&format!("tar --numeric-owner -tvf '{}'", path.display()))
    }

    #[test]
    fn export_then_import_round_trips_byte_identical() {
        let a = unique("exp");
        let b = unique("imp");
        // A guest writes the content: odd modes, owners, a symlink out of
        // the volume, a relative one, a hard link, an old mtime.
        let script = "set -e; cd /d; mkdir -p sub/deep; echo hello > sub/f; \
            head -c 200000 /dev/urandom > sub/bin; chmod 640 sub/f; chmod 1777 sub; \
            chmod 700 sub/deep; chown 1234:4321 sub/f; ln -s sub/f link; \
            ln -s /etc/passwd abs; ln sub/bin hard; touch -d '2020-01-02 03:04:05' sub/f; \
            chmod 2750 sub/deep";
        run_sh(&["-v", &format!("{a}:/d")], script).ok();
        let dir = suite().dir.path().join(unique("backup"));
        fs::create_dir_all(&dir).unwrap();
        let first = dir.join("a.tar");
        mvctl(&["volume", "export", &a, "-o", first.to_str().unwrap()]).ok();
        let list = tar_listing(&first);
        assert!(list.contains("link -> sub/f"), "{list}");
        assert!(
            list.contains("abs -> /etc/passwd"),
            "stored, not followed: {list}"
        );
        // Names are archived sorted: `hard` comes first, `sub/bin` links it.
        assert!(list.contains("sub/bin link to hard"), "{list}");
        assert!(list.contains("-rw-r----- 1234/4321"), "{list}");

        let out = mvctl(&["volume", "import", &b, first.to_str().unwrap()]).ok();
        assert_eq!(out.stdout.trim(), b);
        // A second sandbox sees the same content through the new volume as
        // through the first (both mounted, one boot).
        let look = "cat sub/f; readlink link; readlink abs; stat -c '%n %a %u:%g %Y %h' sub sub/f sub/deep hard; md5sum sub/bin hard";
        let both = run_sh(
            &["-v", &format!("{a}:/d"), "-v", &format!("{b}:/e")],
            &format!("set -e; cd /d; {look}; echo ===; cd /e; {look}"),
        )
        .ok()
        .stdout;
        let (want, got) = both.split_once("===\n").expect("both listings");
        assert_eq!(got, want);
        assert!(got.starts_with("hello\nsub/f\n/etc/passwd\n"), "{got}");
        let second = dir.join("b.tar");
        mvctl(&["volume", "export", &b, "-o", second.to_str().unwrap()]).ok();
        assert!(
            fs::read(&first).unwrap() == fs::read(&second).unwrap(),
            "the two exports differ:\n{list}\n---\n{}",
            tar_listing(&second)
        );

        // An import never overwrites by accident; --force replaces whole:
        // after a one-file archive, the volume holds that file alone.
        mvctl(&["volume", "import", &a, second.to_str().unwrap()]).refused("not empty");
        let single = dir.join("single.tar");
        sh(&format!(
            "cd '{}' && mkdir -p one && echo only > one/only && tar -C one -cf '{}' only",
            dir.display(),
            single.display()
        ));
        mvctl(&["volume", "import", "--force", &a, single.to_str().unwrap()]).ok();
        let replaced = dir.join("replaced.tar");
        mvctl(&["volume", "export", &a, "-o", replaced.to_str().unwrap()]).ok();
        let list = tar_listing(&replaced);
        assert!(list.lines().any(|l| l.ends_with("only")), "{list}");
        assert!(!list.contains("sub/"), "replaced, not merged: {list}");
        mvctl(&["volume", "import", "--force", &a, second.to_str().unwrap()]).ok();

        // A hostile archive is refused, naming the entry; no volume is left.
        let evil = dir.join("evil.tar");
        let mut t = Vec::new();
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..9].copy_from_slice(b"../escape");
        h.set_size(1);
        h.set_mode(0o644);
        h.set_cksum();
        t.extend_from_slice(h.as_bytes());
        t.extend_from_slice(&[b'x'; 512]);
        t.extend_from_slice(&[0u8; 1024]);
        fs::write(&evil, t).unwrap();
        let c = unique("evil");
        mvctl(&["volume", "import", &c, evil.to_str().unwrap()]).refused("../escape");
        assert!(!volume_names().contains(&c));

        // A volume in use may be exported (no snapshot, as documented).
        let user = unique("busy");
        mvctl(&[
            "run",
            "-d",
            "--name",
            &user,
            "-v",
            &format!("{a}:/d"),
            BUSYBOX,
            "sleep",
            "600",
        ])
        .ok();
        let third = dir.join("c.tar");
        mvctl(&["volume", "export", &a, "-o", third.to_str().unwrap()]).ok();
        assert!(fs::read(&third).unwrap() == fs::read(&second).unwrap());
        mvctl(&["volume", "import", "--force", &a, third.to_str().unwrap()]).refused(&user);
        mvctl(&["rm", "-f", &user]).ok();
        for v in [&a, &b] {
            mvctl(&["volume", "rm", v]).ok();
        }
    }

    #[test]
    fn volumes_from_mounts_the_same_volumes_and_binds() {
        let vol = unique("from");
        let host = suite().dir.path().join(unique("fromhost"));
        fs::create_dir_all(&host).unwrap();
        fs::write(host.join("hello"), "from-host").unwrap();
        let src = unique("src");
        mvctl(&[
            "create",
            "--name",
            &src,
            "-v",
            &format!("{vol}:/data"),
            "-v",
            &format!("{}:/src:ro", host.display()),
            "--tmpfs",
            "/scratch",
            BUSYBOX,
            "true",
        ])
        .ok();
        let out = run_sh(
            &["--volumes-from", &src],
            "cat /src/hello; echo; echo w > /data/x; touch /src/nope 2>/dev/null || echo src-ro; \
             grep -c ' /scratch ' /proc/mounts || true",
        )
        .ok();
        assert_eq!(out.stdout, "from-host\nsrc-ro\n0\n", "{out:?}");

        // :ro makes every mount read-only; :rw only changes what it can.
        let ro = format!("{src}:ro");
        let out = run_sh(
            &["--volumes-from", &ro],
            "cat /data/x; touch /data/y 2>/dev/null || echo data-ro",
        )
        .ok();
        assert_eq!(out.stdout, "w\ndata-ro\n", "{out:?}");

        // A mount of the request wins on the same path.
        let other = unique("other");
        let out = run_sh(
            &["--volumes-from", &src, "-v", &format!("{other}:/data")],
            "ls /data | wc -l",
        )
        .ok();
        assert_eq!(out.stdout.trim(), "0", "{out:?}");

        // Inspect shows the inherited mounts as the sandbox's own.
        let user = unique("inherits");
        mvctl(&[
            "create",
            "--name",
            &user,
            "--volumes-from",
            &ro,
            BUSYBOX,
            "true",
        ])
        .ok();
        let v: serde_json::Value =
            serde_json::from_str(&mvctl(&["inspect", &user]).ok().stdout).unwrap();
        let mut dests: Vec<(String, bool)> = v[0]["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["destination"].as_str().unwrap().to_string(),
                    m["rw"].as_bool().unwrap(),
                )
            })
            .collect();
        dests.sort();
        assert_eq!(
            dests,
            [("/data".to_string(), false), ("/src".to_string(), false)]
        );
        mvctl(&["volume", "rm", &vol]).refused(&user);

        // Errors: an unknown sandbox; two sources on one path.
        run_sh(&["--volumes-from", "no-such-sandbox-x"], "true").refused("no such sandbox");
        let src2 = unique("src2");
        mvctl(&[
            "create",
            "--name",
            &src2,
            "-v",
            &format!("{other}:/data"),
            BUSYBOX,
            "true",
        ])
        .ok();
        run_sh(&["--volumes-from", &src, "--volumes-from", &src2], "true")
            .refused("both mount /data");
        for s in [&src, &src2, &user] {
            mvctl(&["rm", s]).ok();
        }
        for v in [&vol, &other] {
            mvctl(&["volume", "rm", v]).ok();
        }
    }

    /// A daemon of a test's own (its own root, no networking: the
    /// suite's daemon owns the host's), which the test may SIGKILL and
    /// start again on the same state. Dropping it kills every process
    /// whose command line names its directory (the daemon, VMMs,
    /// backends), so a failed test leaves nothing running.
    struct OwnDaemon {
        dir: tempfile::TempDir,
        child: Option<std::process::Child>,
        host: String,
        /// The jailer it runs VMMs through (`MVM_JAILER`), if not the
        /// suite's.
        jailer: Option<std::path::PathBuf>,
    }

    impl OwnDaemon {
        /// Its directory, not started yet ([`Self::spawn`]).
        fn new(prefix: &str) -> OwnDaemon {
            let dir = tempfile::Builder::new().prefix(prefix).tempdir().unwrap();
            let host = format!("unix://{}", dir.path().join("run/mvmd.sock").display());
            OwnDaemon {
                dir,
                child: None,
                host,
                jailer: None,
            }
        }

        fn root(&self) -> std::path::PathBuf {
            self.dir.path().join("root")
        }

        fn spawn(&mut self) {
            use std::os::unix::process::CommandExt;
            let log = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.path().join("mvmd.log"))
                .unwrap();
            let mut cmd = Command::new(binary("mvmd"));
            if let Some(j) = &self.jailer {
                cmd.env("MVM_JAILER", j);
            }
            cmd.arg("--root")
                .arg(self.root())
                .arg("--run-dir")
                .arg(self.dir.path().join("run"))
                .arg("--no-network")
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log);
            // SAFETY: prctl in the child before exec; async-signal-safe.
            // SIGKILL: a daemon outliving this test's thread does nothing
            // more (its sandboxes are killed by `Drop`).
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
            self.child = Some(cmd.spawn().expect("spawn mvmd"));
            let socket = self.dir.path().join("run/mvmd.sock");
            let t = Instant::now();
            while !ping(&socket) {
                if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                    panic!("mvmd exited ({st}) during start:\n{}", self.log());
                }
                assert!(
                    t.elapsed() < Duration::from_secs(60),
                    "mvmd did not answer:\n{}",
                    self.log()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }

        /// SIGKILL the daemon (its sandboxes keep running).
        fn kill9(&mut self) {
            if let Some(mut c) = self.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }

        fn log(&self) -> String {
            fs::read_to_string(self.dir.path().join("mvmd.log")).unwrap_or_default()
        }

        fn mvctl(&self, args: &[&str]) -> Out {
            mvctl_on(&self.host, args)
        }

        /// `inspect NAME`'s state.
        fn state(&self, name: &str) -> serde_json::Value {
            let v: serde_json::Value =
                serde_json::from_str(&self.mvctl(&["inspect", name]).ok().stdout).unwrap();
            v[0]["state"].clone()
        }

        fn volume_mountpoint(&self, name: &str) -> std::path::PathBuf {
            let v: serde_json::Value =
                serde_json::from_str(&self.mvctl(&["volume", "inspect", name]).ok().stdout)
                    .unwrap();
            v[0]["mountpoint"].as_str().unwrap().into()
        }
    }

    impl Drop for OwnDaemon {
        fn drop(&mut self) {
            let needle = self.dir.path().to_string_lossy().into_owned();
            // SAFETY: getpid cannot fail.
            let me = unsafe { libc::getpid() };
            for pid in pids_whose_cmdline(|args| args.iter().any(|a| a.contains(&needle))) {
                if pid != me {
                    // SAFETY: kill(2) on a process found naming this
                    // test's directory.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
            self.kill9();
            if std::thread::panicking() {
                eprintln!(
                    "--- mvmd log ({}):\n{}",
                    self.dir.path().display(),
                    self.log()
                );
            }
        }
    }

    /// Pids of the live (not zombie) processes whose arguments satisfy `f`.
    fn pids_whose_cmdline(f: impl Fn(&[String]) -> bool) -> Vec<i32> {
        fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
            .filter(|pid| alive(*pid))
            .filter(|pid| {
                let Ok(c) = fs::read(format!("/proc/{pid}/cmdline")) else {
                    return false;
                };
                let args: Vec<String> = c
                    .split(|b| *b == 0)
                    .filter(|a| !a.is_empty())
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect();
                f(&args)
            })
            .collect()
    }

    /// Whether `pid` runs (exists and is not a zombie).
    fn alive(pid: i32) -> bool {
        fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .and_then(|(_, r)| r.split_whitespace().next().map(|st| st != "Z"))
            })
            .unwrap_or(false)
    }

    /// The virtiofsd processes serving `dir` (the backend and its
    /// namespace sandbox's child, both with the same arguments).
    fn backends_of(dir: &Path) -> Vec<i32> {
        let want = format!("--shared-dir={}", dir.display());
        pids_whose_cmdline(|args| {
            args.first().is_some_and(|a| a.contains("virtiofsd")) && args.contains(&want)
        })
    }

    fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
        let t = Instant::now();
        while !f() {
            assert!(t.elapsed() < timeout, "{what}: not within {timeout:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// mvmd SIGKILLed while sandboxes with volumes run, then started
    /// again on the same state: the data is intact, the running
    /// sandbox's volumes are still in use (removal refused, its block
    /// volume still exclusive) and still served, the sandboxes that ended
    /// while no mvmd ran have no backend left, and once the running one
    /// is removed its volumes can be removed.
    #[test]
    fn mvmd_sigkilled_keeps_volumes_and_leaves_no_backends_of_ended_sandboxes() {
        let rootfs = suite().dir.path().join("rootfs.tar");
        let mut d = OwnDaemon::new("mvm-vol-kill-");
        d.spawn();
        d.mvctl(&["import", rootfs.to_str().unwrap(), BUSYBOX]).ok();
        let host = |n: &str| {
            let p = d.dir.path().join(n);
            fs::create_dir_all(&p).unwrap();
            p
        };
        let (h_keep, h_ends, h_auto) = (host("h-keep"), host("h-ends"), host("h-auto"));
        let bind = |p: &Path, t: &str| format!("{}:{t}", p.display());
        d.mvctl(&[
            "volume", "create", "--driver", "block", "-o", "size=16m", "blk",
        ])
        .ok();
        // keep: runs through the daemon's death, with a directory
        // volume, a block volume and a bind mount.
        d.mvctl(&[
            "run",
            "-d",
            "--name",
            "keep",
            "-v",
            "data:/d",
            "-v",
            "blk:/blk",
            "-v",
            &bind(&h_keep, "/h"),
            BUSYBOX,
            "sh",
            "-c",
            "echo before > /d/f && echo block > /blk/f && sync && echo up > /h/ready; sleep 600",
        ])
        .ok();
        // ends and auto (--rm, an anonymous volume) end on their own
        // while no mvmd runs: when the test creates `go` in their binds.
        let wait_go = "while [ ! -e /h/go ]; do sleep 0.1; done;";
        d.mvctl(&[
            "run",
            "-d",
            "--name",
            "ends",
            "-v",
            "later:/d",
            "-v",
            &bind(&h_ends, "/h"),
            BUSYBOX,
            "sh",
            "-c",
            &format!("{wait_go} echo after > /d/f; exit 3"),
        ])
        .ok();
        d.mvctl(&[
            "run",
            "-d",
            "--rm",
            "--name",
            "auto",
            "-v",
            "/anon",
            "-v",
            &bind(&h_auto, "/h"),
            BUSYBOX,
            "sh",
            "-c",
            &format!("{wait_go} echo x > /anon/f"),
        ])
        .ok();
        let anon = {
            let v: serde_json::Value =
                serde_json::from_str(&d.mvctl(&["inspect", "auto"]).ok().stdout).unwrap();
            let m = v[0]["mounts"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["destination"] == "/anon")
                .cloned()
                .unwrap();
            m["name"].as_str().unwrap().to_string()
        };
        wait_for("keep's writes", Duration::from_secs(120), || {
            h_keep.join("ready").exists()
        });
        let (data, later, anon_dir) = (
            d.volume_mountpoint("data"),
            d.volume_mountpoint("later"),
            d.volume_mountpoint(&anon),
        );
        let keep_dirs = [data.clone(), h_keep.clone()];
        let ended_dirs = [
            later.clone(),
            anon_dir.clone(),
            h_ends.clone(),
            h_auto.clone(),
        ];
        for dir in keep_dirs.iter().chain(&ended_dirs) {
            assert!(!backends_of(dir).is_empty(), "no backend serves {dir:?}");
        }
        let keep_backends: Vec<Vec<i32>> = keep_dirs.iter().map(|p| backends_of(p)).collect();
        let pid = |n: &str| d.state(n)["pid"].as_i64().unwrap() as i32;
        let (keep_vmm, ends_vmm, auto_vmm) = (pid("keep"), pid("ends"), pid("auto"));

        d.kill9();
        assert!(alive(keep_vmm) && alive(ends_vmm) && alive(auto_vmm));
        fs::write(h_ends.join("go"), "").unwrap();
        fs::write(h_auto.join("go"), "").unwrap();
        wait_for("ends and auto to end", Duration::from_secs(120), || {
            !alive(ends_vmm) && !alive(auto_vmm)
        });
        assert!(alive(keep_vmm), "keep's VMM ended");

        d.spawn();
        assert_eq!(d.state("keep")["status"], "running");
        assert_eq!(d.state("keep")["pid"].as_i64(), Some(keep_vmm as i64));
        assert_eq!(d.mvctl(&["wait", "ends"]).ok().stdout.trim(), "3");
        wait_for("auto to be removed (--rm)", Duration::from_secs(60), || {
            d.mvctl(&["inspect", "auto"]).code != 0
        });
        let vols = d.mvctl(&["volume", "ls", "-q"]).ok().stdout;
        assert!(
            !vols.lines().any(|l| l == anon),
            "auto's anonymous volume stayed: {vols}"
        );
        // What the guests wrote is there.
        assert_eq!(fs::read_to_string(data.join("f")).unwrap(), "before\n");
        assert_eq!(fs::read_to_string(later.join("f")).unwrap(), "after\n");
        // keep's shares are still served (the same backends).
        let out = d.mvctl(&["exec", "keep", "cat", "/d/f", "/blk/f"]).ok();
        assert_eq!(out.stdout, "before\nblock\n", "{out:?}");
        for (dir, before) in keep_dirs.iter().zip(&keep_backends) {
            assert_eq!(&backends_of(dir), before, "the backends of {dir:?}");
        }
        // No backend is left for the sandboxes that ended.
        wait_for(
            "the backends of the ended sandboxes to go",
            Duration::from_secs(30),
            || ended_dirs.iter().all(|p| backends_of(p).is_empty()),
        );
        wait_for("no zombie of mvmd", Duration::from_secs(20), || {
            zombies_of_mvmd(&d.root()).is_empty()
        });
        // Still in use: removal refused; the block volume still has its
        // one running user.
        d.mvctl(&["volume", "rm", "data"]).refused("keep");
        d.mvctl(&["volume", "rm", "blk"]).refused("keep");
        d.mvctl(&["volume", "rm", "later"]).refused("ends");
        d.mvctl(&["run", "--rm", "-v", "blk:/x", BUSYBOX, "true"])
            .refused("in use by running sandbox keep");

        // keep removed: its backends go, its volumes can be removed.
        d.mvctl(&["rm", "-f", "keep"]).ok();
        wait_for("keep's backends to go", Duration::from_secs(30), || {
            keep_dirs.iter().all(|p| backends_of(p).is_empty())
        });
        let out = d
            .mvctl(&["run", "--rm", "-v", "blk:/x", BUSYBOX, "cat", "/x/f"])
            .ok();
        assert_eq!(out.stdout, "block\n", "{out:?}");
        d.mvctl(&["rm", "ends"]).ok();
        d.mvctl(&["volume", "rm", "data", "blk", "later"]).ok();
        assert!(!data.exists() && !later.exists());
    }

    /// mvmd SIGKILLed in the middle of a start, after the sandbox's
    /// virtio-fs backends were started and before its VMM ran (held
    /// there by a jailer that waits): started again, mvmd stops those
    /// backends (no VMM will ever connect to them), and the sandbox
    /// starts normally.
    #[test]
    fn mvmd_sigkilled_mid_start_leaves_no_backend_waiting() {
        let rootfs = suite().dir.path().join("rootfs.tar");
        let mut d = OwnDaemon::new("mvm-vol-stall-");
        let real = std::env::var_os("MVM_JAILER")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| binary("mvm-jailer"));
        // The jailer, unless `hold` exists: then it says so and waits
        // (a loop of the shell itself, so killing it ends the wait).
        let (hold, held) = (d.dir.path().join("hold"), d.dir.path().join("held"));
        let wrapper = d.dir.path().join("jailer-wrapper");
        fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\nif [ -e '{}' ]; then touch '{}'; while :; do sleep 1; done; fi\nexec '{}' \"$@\"\n",
                hold.display(),
                held.display(),
                real.display()
            ),
        )
        .unwrap();
        fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).unwrap();
        d.jailer = Some(wrapper.clone());
        d.spawn();
        d.mvctl(&["import", rootfs.to_str().unwrap(), BUSYBOX]).ok();
        let host = d.dir.path().join("h");
        fs::create_dir_all(&host).unwrap();
        d.mvctl(&[
            "create",
            "--name",
            "stall",
            "-v",
            "sv:/d",
            "-v",
            &format!("{}:/h", host.display()),
            BUSYBOX,
            "sh",
            "-c",
            "cat /d/f /h/f",
        ])
        .ok();
        let vol = d.volume_mountpoint("sv");
        fs::write(vol.join("f"), "vol\n").unwrap();
        fs::write(host.join("f"), "host\n").unwrap();

        fs::write(&hold, "").unwrap();
        let mut start = Command::new(binary("mvctl"))
            .args(["start", "stall"])
            .env("MVM_HOST", &d.host)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for(
            "the start to reach the jailer",
            Duration::from_secs(120),
            || held.exists(),
        );
        for dir in [&vol, &host] {
            assert!(!backends_of(dir).is_empty(), "no backend serves {dir:?}");
        }
        d.kill9();
        let _ = start.wait();
        let w = wrapper.to_string_lossy().into_owned();
        for pid in pids_whose_cmdline(|args| args.contains(&w)) {
            // SAFETY: kill(2) on the held jailer wrapper found above.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        fs::remove_file(&hold).unwrap();

        d.spawn();
        wait_for(
            "the backends of the unrecorded start to go",
            Duration::from_secs(30),
            || backends_of(&vol).is_empty() && backends_of(&host).is_empty(),
        );
        assert_eq!(d.state("stall")["status"], "created");
        d.mvctl(&["start", "stall"]).ok();
        assert_eq!(d.mvctl(&["wait", "stall"]).ok().stdout.trim(), "0");
        let out = d.mvctl(&["logs", "stall"]).ok();
        assert_eq!(out.stdout, "vol\nhost\n", "{out:?}");
        d.mvctl(&["rm", "stall"]).ok();
        d.mvctl(&["volume", "rm", "sv"]).ok();
    }
}
