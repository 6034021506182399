//! End-to-end tests of the `mvctl` command line: the real binary against a
//! real `mvmd` that boots real microVMs on real KVM.
//!
//! Run with `tests/run-e2e.sh cli` (inside the emulated KVM host on
//! machines without hardware KVM). Every test is in the `cli` module so
//! that filter selects exactly these.
//!
//! One daemon serves the whole suite (state in a temp dir, socket passed
//! with `-H`), except the auto-start test, which needs none to run. The
//! suite imports a busybox image (`mvctl import`) and loads a second one
//! with image defaults (ENV, WORKDIR, CMD, labels) from a docker-archive
//! it writes itself (`mvctl load`).

mod cli {
    use std::fs;
    use std::io::{BufRead, BufReader};
    use std::path::Path;
    use std::process::{Child, Command, Stdio};
    use std::sync::OnceLock;
    use std::time::{Duration, Instant};

    use mvm_e2e::daemon::{binary, start_daemon};
    use serde_json::Value;

    /// The busybox image made by `mvctl import`.
    const BUSYBOX: &str = "e2e/busybox:1";
    /// The image with defaults made by `mvctl load`.
    const DEFAULTS: &str = "e2e/defaults:1";
    /// Longest any single mvctl call may take (boots under nested
    /// emulation are slow; a hang must still fail the test).
    const CALL_TIMEOUT: Duration = Duration::from_secs(180);

    /// A finished mvctl call.
    #[derive(Debug)]
    struct Out {
        /// The exit status; -1 when a signal ended mvctl.
        code: i32,
        /// The signal that ended mvctl, if one did.
        signal: Option<i32>,
        stdout: String,
        stderr: String,
    }

    impl Out {
        fn ok(self) -> Out {
            let how = match self.signal {
                Some(sig) => format!(" (ended by signal {sig})"),
                None => String::new(),
            };
            assert_eq!(self.code, 0, "mvctl failed{how}: {self:#?}");
            self
        }
        fn failed(self) -> Out {
            assert_eq!(
                self.code, 125,
                "expected mvctl's error status 125: {self:#?}"
            );
            assert!(
                self.stderr.contains("mvctl: error: "),
                "no error message: {self:#?}"
            );
            self
        }
    }

    /// The shared daemon and the images.
    struct Suite {
        dir: tempfile::TempDir,
        host: String,
        busybox_id: String,
    }

    fn suite() -> &'static Suite {
        static S: OnceLock<Suite> = OnceLock::new();
        S.get_or_init(|| {
            mvm_e2e::require_hardware_kvm();
            for v in ["MVM_KERNEL", "MVM_INIT", "MVM_VMM"] {
                assert!(
                    std::env::var_os(v).is_some(),
                    "{v} is not set: run tests/run-e2e.sh"
                );
            }
            let dir = tempfile::Builder::new()
                .prefix("mvctl-e2e-")
                .tempdir()
                .unwrap();
            let run = dir.path().join("run");
            let root = dir.path().join("root");
            let socket = run.join("mvmd.sock");
            start_daemon(&root, &run, &dir.path().join("mvmd.log"));
            mvm_e2e::daemon::wait_answering(&socket, &dir.path().join("mvmd.log"));
            let host = format!("unix://{}", socket.display());
            let mut s = Suite {
                dir,
                host,
                busybox_id: String::new(),
            };
            s.busybox_id = make_images(&s);
            s
        })
    }

    /// Run a command with a deadline ([`CALL_TIMEOUT`]), collecting its
    /// output.
    fn run_cmd(cmd: Command, input: Option<&[u8]>) -> Out {
        let what = format!("{cmd:?}");
        let out = mvm_e2e::output_within(cmd, input, CALL_TIMEOUT).unwrap_or_else(|o| {
            panic!(
                "{what} did not finish within {CALL_TIMEOUT:?}; it wrote: {}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            )
        });
        Out {
            code: out.status.code().unwrap_or(-1),
            signal: std::os::unix::process::ExitStatusExt::signal(&out.status),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// The command `mvctl ARGS` against the daemon at `host`.
    fn mvctl_command(host: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(binary("mvctl"));
        cmd.args(args).env("MVM_HOST", host);
        cmd
    }

    /// `mvctl ARGS` against the suite's daemon.
    fn mvctl(args: &[&str]) -> Out {
        run_cmd(mvctl_command(&suite().host, args), None)
    }

    /// `mvctl ARGS` with `input` on stdin.
    fn mvctl_stdin(args: &[&str], input: &[u8]) -> Out {
        run_cmd(mvctl_command(&suite().host, args), Some(input))
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

    /// Import the busybox tree and load the image with defaults; returns
    /// the busybox image id.
    fn make_images(s: &Suite) -> String {
        let d = s.dir.path();
        let tree = d.join("tree");
        mvm_e2e::rootfs::busybox_tree(&tree).expect("busybox tree");
        let rootfs = d.join("rootfs.tar");
        sh(&format!(
            "tar --numeric-owner --owner=0 --group=0 -C '{}' -cf '{}' .",
            tree.display(),
            rootfs.display()
        ));
        let cmd = mvctl_command(&s.host, &["import", rootfs.to_str().unwrap(), BUSYBOX]);
        let out = run_cmd(cmd, None).ok();
        let id = out.stdout.trim().to_string();
        assert!(
            id.starts_with("sha256:") && id.len() == 71,
            "import prints the image id: {out:?}"
        );

        // A docker-archive with image defaults, as `docker save` writes it.
        let arch = d.join("archive");
        fs::create_dir_all(&arch).unwrap();
        fs::copy(&rootfs, arch.join("layer.tar")).unwrap();
        let diff_id = sh(&format!("sha256sum '{}'", arch.join("layer.tar").display()));
        let diff_id = diff_id.split_whitespace().next().unwrap();
        let config = serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "created": "2024-01-01T00:00:00Z",
            "config": {
                "Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin", "IMG_VAR=from-image"],
                "Cmd": ["echo", "default-cmd"],
                "WorkingDir": "/etc",
                "Labels": {"origin": "image"}
            },
            "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{diff_id}")]}
        });
        let config = serde_json::to_vec(&config).unwrap();
        fs::write(arch.join("config.json"), &config).unwrap();
        let manifest = serde_json::json!([{
            "Config": "config.json",
            "RepoTags": [DEFAULTS],
            "Layers": ["layer.tar"]
        }]);
        fs::write(
            arch.join("manifest.json"),
            serde_json::to_vec(&manifest).unwrap(),
        )
        .unwrap();
        let tarball = d.join("defaults.tar");
        sh(&format!(
            "tar -C '{}' -cf '{}' manifest.json config.json layer.tar",
            arch.display(),
            tarball.display()
        ));
        let cmd = mvctl_command(&s.host, &["load", "-i", tarball.to_str().unwrap()]);
        let out = run_cmd(cmd, None).ok();
        assert!(
            out.stdout.contains("Loaded image: ") && out.stdout.contains("e2e/defaults:1"),
            "{out:?}"
        );
        id
    }

    /// A name unique to this test run.
    fn unique(prefix: &str) -> String {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("{prefix}-{}-{n}", std::process::id())
    }

    /// `ps -a --format json` rows.
    fn ps_all() -> Vec<Value> {
        let out = mvctl(&["ps", "-a", "--format", "json"]).ok();
        out.stdout
            .lines()
            .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
            .collect()
    }

    fn inspect(id: &str) -> Value {
        let out = mvctl(&["inspect", "--type", "sandbox", id]).ok();
        let v: Value = serde_json::from_str(&out.stdout).expect("inspect prints JSON");
        v[0].clone()
    }

    fn status_of(id: &str) -> String {
        inspect(id)["state"]["status"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// `mvm_e2e::wait_until`, looking again every 200 ms.
    fn wait_until(what: &str, timeout: Duration, f: impl FnMut() -> bool) {
        mvm_e2e::wait_until(what, timeout, Duration::from_millis(200), f);
    }

    #[test]
    fn run_foreground_streams_output_and_exit_codes() {
        let out = mvctl(&[
            "run",
            "--rm",
            BUSYBOX,
            "sh",
            "-c",
            "echo to-stdout; echo to-stderr >&2; exit 3",
        ]);
        assert_eq!(out.code, 3, "{out:?}");
        // The guest agent carries stdout and stderr apart.
        assert_eq!(out.stdout, "to-stdout\n", "{out:?}");
        assert_eq!(out.stderr, "to-stderr\n", "{out:?}");

        let out = mvctl(&["run", "--rm", BUSYBOX, "true"]);
        assert_eq!(out.code, 0, "{out:?}");
        // A workload killed by a signal exits 128+N, as in Docker.
        let out = mvctl(&["run", "--rm", BUSYBOX, "sh", "-c", "kill -9 $$"]);
        assert_eq!(out.code, 137, "{out:?}");
        let out = mvctl(&["run", "--rm", BUSYBOX, "sh", "-c", "kill -TERM $$"]);
        assert_eq!(out.code, 143, "{out:?}");
        // A command that does not exist: Docker's 127, with a message.
        let out = mvctl(&["run", "--rm", BUSYBOX, "/no/such/binary"]);
        assert_eq!(out.code, 127, "{out:?}");
    }

    #[test]
    fn run_detached_and_the_lifecycle_commands() {
        let name = unique("life");
        let out = mvctl(&[
            "run",
            "-d",
            "--name",
            &name,
            "-l",
            "suite=life",
            BUSYBOX,
            "sleep",
            "600",
        ])
        .ok();
        let id = out.stdout.trim().to_string();
        assert!(
            id.len() == 64 && id.chars().all(|c| c.is_ascii_hexdigit()),
            "run -d prints the id: {out:?}"
        );
        assert_eq!(status_of(&name), "running");

        // ps: table, -q, json, filters.
        let table = mvctl(&["ps"]).ok().stdout;
        let header = table.lines().next().unwrap();
        for col in [
            "SANDBOX ID",
            "IMAGE",
            "COMMAND",
            "CREATED",
            "STATUS",
            "NAMES",
        ] {
            assert!(header.contains(col), "{table}");
        }
        let row = table
            .lines()
            .find(|l| l.ends_with(&name))
            .unwrap_or_else(|| panic!("{name} in\n{table}"));
        assert!(row.starts_with(&id[..12]), "{row}");
        assert!(
            row.contains("\"sleep 600\"") && row.contains("Up "),
            "{row}"
        );
        let q = mvctl(&["ps", "-q", "--filter", "label=suite=life"])
            .ok()
            .stdout;
        assert!(q.lines().any(|l| l == &id[..12]), "{q}");
        let rows = ps_all();
        let me = rows
            .iter()
            .find(|r| r["name"] == name.as_str())
            .expect("in ps --format json");
        assert_eq!(me["id"], id.as_str());
        assert_eq!(me["status"], "running");

        // inspect by name, id and prefix agree.
        let by_name = inspect(&name);
        assert_eq!(by_name["id"], id.as_str());
        assert_eq!(inspect(&id[..10])["name"], name.as_str());
        assert_eq!(by_name["config"]["labels"]["suite"], "life");

        // stop: the stop signal ends sleep (143), or the timeout kills.
        mvctl(&["stop", "-t", "2", &name]).ok();
        assert_eq!(status_of(&name), "exited");
        let code = mvctl(&["wait", &name]).ok().stdout;
        assert!(code.trim() == "143" || code.trim() == "137", "{code}");
        let row = mvctl(&["ps", "-a"]).ok().stdout;
        let row = row
            .lines()
            .find(|l| l.ends_with(&name))
            .unwrap()
            .to_string();
        assert!(row.contains("Exited ("), "{row}");
        assert!(
            !mvctl(&["ps"]).ok().stdout.contains(&name),
            "ps without -a shows running ones only"
        );

        // start again, restart, kill.
        assert_eq!(mvctl(&["start", &name]).ok().stdout.trim(), name);
        assert_eq!(status_of(&name), "running");
        mvctl(&["restart", "-t", "1", &name]).ok();
        assert_eq!(status_of(&name), "running");
        mvctl(&["kill", "-s", "KILL", &name]).ok();
        assert_eq!(mvctl(&["wait", &name]).ok().stdout.trim(), "137");

        // rm refuses a running sandbox without -f.
        mvctl(&["start", &name]).ok();
        let out = mvctl(&["rm", &name]).failed();
        assert!(out.stderr.to_lowercase().contains("running"), "{out:?}");
        mvctl(&["rm", "-f", &name]).ok();
        assert!(!ps_all().iter().any(|r| r["name"] == name.as_str()));
        let out = mvctl(&["inspect", &name]).failed();
        assert!(
            out.stderr.contains(&name),
            "says what was not found: {out:?}"
        );
    }

    #[test]
    fn overrides_and_image_defaults() {
        // The image's CMD, ENV and WORKDIR apply by default.
        let out = mvctl(&["run", "--rm", DEFAULTS]).ok();
        assert_eq!(out.stdout, "default-cmd\n");
        let probe = "echo $IMG_VAR; pwd; id -u; hostname; echo ${FROM_HOST:-unset}; echo ${FILE_VAR:-unset}";
        let out = mvctl(&["run", "--rm", DEFAULTS, "sh", "-c", probe]).ok();
        let lines: Vec<&str> = out.stdout.lines().collect();
        assert_eq!(lines[..3], ["from-image", "/etc", "0"], "{out:?}");
        assert_eq!(lines[4..], ["unset", "unset"], "{out:?}");

        // Every override.
        let envf = suite().dir.path().join(format!("{}.env", unique("env")));
        fs::write(
            &envf,
            "# an env file\nFILE_VAR=from-file\n\nIMG_VAR=from-file-too\n",
        )
        .unwrap();
        let mut cmd = Command::new(binary("mvctl"));
        cmd.env("MVM_HOST", &suite().host)
            .env("FROM_HOST", "host-value")
            .args([
                "run",
                "--rm",
                "--env-file",
                envf.to_str().unwrap(),
                "-e",
                "IMG_VAR=overridden",
                "-e",
                "FROM_HOST",
                "-w",
                "/tmp",
                "-u",
                "1000",
                "--hostname",
                "box-1",
                DEFAULTS,
                "sh",
                "-c",
                probe,
            ]);
        let out = run_cmd(cmd, None).ok();
        let lines: Vec<&str> = out.stdout.lines().collect();
        assert_eq!(
            lines,
            [
                "overridden",
                "/tmp",
                "1000",
                "box-1",
                "host-value",
                "from-file"
            ],
            "{out:?}"
        );

        // --entrypoint replaces the image's, CMD args follow it; -u by name,
        // from the image's /etc/passwd.
        let out = mvctl(&[
            "run",
            "--rm",
            "-u",
            "user",
            "--entrypoint",
            "/bin/sh",
            DEFAULTS,
            "-c",
            "id -un; echo from entrypoint",
        ])
        .ok();
        assert_eq!(out.stdout, "user\nfrom entrypoint\n");
        let out = mvctl(&[
            "run",
            "--rm",
            "--entrypoint",
            "",
            DEFAULTS,
            "echo",
            "no-entrypoint",
        ])
        .ok();
        assert_eq!(out.stdout, "no-entrypoint\n");

        // Resources land in the host config.
        let name = unique("res");
        mvctl(&[
            "create",
            "--name",
            &name,
            "--cpus",
            "1.5",
            "-m",
            "96m",
            "--restart",
            "on-failure:2",
            BUSYBOX,
            "true",
        ])
        .ok();
        let v = inspect(&name);
        assert_eq!(v["host_config"]["memory_mib"], 96);
        assert_eq!(v["host_config"]["cpus"], 1.5);
        assert_eq!(v["host_config"]["restart_policy"]["name"], "on-failure");
        assert_eq!(v["state"]["status"], "created");
        mvctl(&["rm", &name]).ok();
    }

    #[test]
    fn names_are_unique() {
        let name = unique("dup");
        let out = mvctl(&["create", "--name", &name, BUSYBOX, "true"]).ok();
        let first = out.stdout.trim().to_string();
        let out = mvctl(&["create", "--name", &name, BUSYBOX, "true"]).failed();
        assert!(out.stderr.contains(&name), "names the conflict: {out:?}");
        let same: Vec<_> = ps_all()
            .into_iter()
            .filter(|r| r["name"] == name.as_str())
            .collect();
        assert_eq!(same.len(), 1);
        assert_eq!(same[0]["id"], first.as_str());
        mvctl(&["rm", &name]).ok();
    }

    #[test]
    fn bad_input_fails_clearly_and_leaves_nothing() {
        // Every `run` case carries the label `suite=bad`, so that what it
        // might leave behind is found even while other tests run.
        let cases: &[(&[&str], &str)] = &[
            (
                &[
                    "run",
                    "--pull",
                    "never",
                    "--label",
                    "suite=bad",
                    "e2e/no-such-image:1",
                    "true",
                ],
                "no-such-image",
            ),
            (
                &["run", "--label", "suite=bad", "e2e/no-such-image:1", "true"],
                "no-such-image",
            ),
            (
                &["run", "-l", "suite=bad", "--memory", "0", BUSYBOX, "true"],
                "too small",
            ),
            (
                &[
                    "run",
                    "-l",
                    "suite=bad",
                    "--memory",
                    "100t",
                    BUSYBOX,
                    "true",
                ],
                "too large",
            ),
            (
                &[
                    "run",
                    "-l",
                    "suite=bad",
                    "--memory",
                    "lots",
                    BUSYBOX,
                    "true",
                ],
                "invalid memory size",
            ),
            (
                &["run", "-l", "suite=bad", "--cpus", "0", BUSYBOX, "true"],
                "--cpus",
            ),
            (
                &["run", "-l", "suite=bad", "--bogus-flag", BUSYBOX, "true"],
                "--bogus-flag",
            ),
            (
                &[
                    "run",
                    "-l",
                    "suite=bad",
                    "--restart",
                    "sometimes",
                    BUSYBOX,
                    "true",
                ],
                "restart policy",
            ),
            (
                &[
                    "run",
                    "-l",
                    "suite=bad",
                    "--rm",
                    "--restart",
                    "always",
                    BUSYBOX,
                    "true",
                ],
                "--restart and --rm",
            ),
            (
                &["run", "-l", "suite=bad", "-w", "relative", BUSYBOX, "true"],
                "absolute",
            ),
            (
                &[
                    "run",
                    "-l",
                    "suite=bad",
                    "--env-file",
                    "/no/such/file.env",
                    BUSYBOX,
                    "true",
                ],
                "/no/such/file.env",
            ),
            (&["kill", "-s", "NOSIG", "x"], "invalid signal"),
            (&["logs", "--since", "whenever", "x"], "invalid time"),
            (&["stop", "no-such-sandbox-xyz"], "no-such-sandbox-xyz"),
        ];
        for (args, needle) in cases {
            let out = mvctl(args).failed();
            assert!(
                out.stderr.contains(needle),
                "{args:?}: expected {needle:?} in {out:?}"
            );
        }
        assert!(mvctl(&["ps", "-a", "-q", "--filter", "label=suite=bad"])
            .ok()
            .stdout
            .is_empty());
    }

    /// `mvctl build`: FROM the imported busybox, a RUN step in a microVM,
    /// COPY from the context (minus what `.dockerignore` excludes) and CMD;
    /// the built image then runs.
    #[test]
    fn build_from_a_dockerfile_and_run_the_image() {
        let s = suite();
        let ctx = s.dir.path().join(unique("build-ctx"));
        fs::create_dir_all(&ctx).unwrap();
        fs::write(ctx.join("hello.txt"), "hello-from-context\n").unwrap();
        fs::write(ctx.join("secret.txt"), "must-not-be-sent\n").unwrap();
        fs::write(ctx.join(".dockerignore"), "secret.txt\n").unwrap();
        fs::write(
            ctx.join("Dockerfile"),
            format!(
                "FROM {BUSYBOX}\n\
                 RUN echo built-by-run > /built.txt && echo run-step-said-this\n\
                 COPY hello.txt /hello.txt\n\
                 COPY . /ctx/\n\
                 CMD [\"sh\", \"-c\", \"cat /built.txt /hello.txt; ls -a /ctx\"]\n"
            ),
        )
        .unwrap();
        let tag = format!("e2e/built:{}", std::process::id());
        let out = mvctl(&[
            "build",
            "--progress",
            "plain",
            "-t",
            &tag,
            ctx.to_str().unwrap(),
        ])
        .ok();
        assert!(out.stderr.contains("Successfully tagged"), "{out:?}");
        // A RUN step's output reaches the client as it comes (mvmd once
        // panicked relaying it from the step's async runtime).
        assert!(out.stderr.contains("run-step-said-this"), "{out:?}");
        let out = mvctl(&["run", "--rm", &tag]);
        assert_eq!(out.code, 0, "{out:?}");
        assert!(
            out.stdout.contains("built-by-run\nhello-from-context\n"),
            "{out:?}"
        );
        assert!(out.stdout.contains("hello.txt"), "{out:?}");
        assert!(!out.stdout.contains("secret.txt"), ".dockerignore: {out:?}");
        mvctl(&["rmi", &tag]).ok();
    }

    /// `mvctl exec`, `cp` and `stats` in one running sandbox (each boot
    /// costs 10-20 s under nested emulation).
    #[test]
    fn exec_in_a_running_sandbox() {
        let name = unique("exec");
        mvctl(&["run", "-d", "--name", &name, BUSYBOX, "sleep", "600"]).ok();
        // The guest agent answers once the guest has booted.
        let t = Instant::now();
        loop {
            let out = mvctl(&["exec", &name, "true"]);
            if out.code == 0 {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(120),
                "the guest agent never answered: {out:?}"
            );
            std::thread::sleep(Duration::from_secs(1));
        }
        let out = mvctl(&["exec", &name, "sh", "-c", "echo hi; echo err >&2; exit 3"]);
        assert_eq!(out.code, 3, "{out:?}");
        assert_eq!(out.stdout, "hi\n", "{out:?}");
        assert!(out.stderr.contains("err\n"), "{out:?}");
        let out = mvctl_stdin(&["exec", "-i", &name, "cat"], b"piped-in\n");
        assert_eq!(out.code, 0, "{out:?}");
        assert_eq!(out.stdout, "piped-in\n", "{out:?}");
        let out = mvctl(&[
            "exec",
            "-w",
            "/etc",
            "-e",
            "X=y",
            &name,
            "sh",
            "-c",
            "echo $PWD $X",
        ]);
        assert_eq!(out.stdout, "/etc y\n", "{out:?}");

        // cp round trip: a file in, back out, same content and mode.
        let s = suite();
        let local = s.dir.path().join(unique("cp"));
        fs::create_dir_all(&local).unwrap();
        let f = local.join("tool.sh");
        fs::write(&f, "#!/bin/sh\necho copied\n").unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&f, fs::Permissions::from_mode(0o751)).unwrap();
        }
        mvctl(&["cp", f.to_str().unwrap(), &format!("{name}:/tmp/")]).ok();
        let out = mvctl(&["exec", &name, "/tmp/tool.sh"]);
        assert_eq!(out.stdout, "copied\n", "{out:?}");
        let back = local.join("back.sh");
        mvctl(&[
            "cp",
            &format!("{name}:/tmp/tool.sh"),
            back.to_str().unwrap(),
        ])
        .ok();
        assert_eq!(fs::read(&back).unwrap(), fs::read(&f).unwrap());
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&back).unwrap().permissions().mode() & 0o7777;
            assert_eq!(mode, 0o751);
        }

        // stats --no-stream: the sandbox with a nonzero memory usage.
        let out = mvctl(&["stats", "--no-stream", &name]).ok();
        let row = out
            .stdout
            .lines()
            .find(|l| l.starts_with(name.as_str()))
            .unwrap_or_else(|| panic!("no row for {name}: {out:?}"));
        let cols: Vec<&str> = row.split("  ").filter(|c| !c.trim().is_empty()).collect();
        let usage = cols
            .iter()
            .find(|c| c.contains(" / "))
            .unwrap_or_else(|| panic!("no MEM USAGE / LIMIT in {row:?}"));
        assert!(
            !usage.trim().starts_with("0B") && !usage.trim().starts_with("--"),
            "memory usage must be nonzero: {row:?}"
        );
        mvctl(&["rm", "-f", &name]).ok();
    }

    /// `mvctl cp` out of a compromised guest: its PID 1 is
    /// `mvm-hostile-agent` (crate `mvm-guest-tools`), booted by an mvmd of
    /// this test's own started with `--init` naming it, which answers
    /// `copy_out` over the real agent protocol with archives holding a
    /// symlink then a file beneath it, `..`, absolute names and hard links
    /// leaving the destination (the cases are in its module doc). Each
    /// copy goes to a fresh `dest/` beside an `outside/` holding `keep`:
    /// nothing may change outside `dest/`, and mvctl must fail naming the
    /// entry. The clean `ok` archive from the same guest is copied, so
    /// the refusals are the archives' and not a broken pipeline's.
    #[test]
    fn cp_out_of_a_hostile_guest_writes_nothing_outside_the_destination() {
        use std::os::unix::fs::MetadataExt;

        let s = suite();
        let dir = tempfile::Builder::new()
            .prefix("mvctl-hostile-")
            .tempdir()
            .unwrap();
        let (run, root, log) = (
            dir.path().join("run"),
            dir.path().join("root"),
            dir.path().join("mvmd.log"),
        );
        let agent = mvm_e2e::guest_tool("mvm-hostile-agent");
        // No network: the suite's own mvmd has the default bridge and its
        // DNS on the gateway; a second one would find that address taken.
        mvm_e2e::daemon::start_daemon_with(
            &root,
            &run,
            &log,
            &["--no-network", "--init", agent.to_str().unwrap()],
        );
        mvm_e2e::daemon::wait_answering(&run.join("mvmd.sock"), &log);
        let host = format!("unix://{}", run.join("mvmd.sock").display());
        let hostile = |args: &[&str]| run_cmd(mvctl_command(&host, args), None);
        hostile(&[
            "import",
            s.dir.path().join("rootfs.tar").to_str().unwrap(),
            BUSYBOX,
        ])
        .ok();
        // The workload is never run: the guest's init is the attacker's.
        hostile(&["run", "-d", "--name", "evil", BUSYBOX, "sleep", "600"]).ok();

        let names = |d: &Path| {
            let mut v: Vec<String> = fs::read_dir(d)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        let cases = [
            ("symlink-abs", "link/pwned"),
            ("symlink-rel", "up/outside/keep"),
            ("symlink-nested", "d/up/outside/keep"),
            ("dotdot", "../outside/keep"),
            ("dotdot-inner", "outside/pwned"),
            ("absolute", "/outside/pwned"),
            ("hardlink-abs", "\"h\""),
            ("hardlink-rel", "\"h\""),
        ];
        // The clean archive first: it also waits (in mvmd, on the agent
        // connection) for the guest to boot.
        for (case, entry) in [("ok", "")].into_iter().chain(cases) {
            let work = dir.path().join(format!("work-{case}"));
            let (dest, outside) = (work.join("dest"), work.join("outside"));
            fs::create_dir_all(&dest).unwrap();
            fs::create_dir_all(&outside).unwrap();
            fs::write(outside.join("keep"), "original").unwrap();
            let src = format!("evil:/{case}{}", outside.display());
            let out = hostile(&["cp", &src, dest.to_str().unwrap()]);
            if case == "ok" {
                let out = out.ok();
                assert_eq!(
                    fs::read_to_string(dest.join("d/f")).unwrap(),
                    "fine\n",
                    "{out:?}"
                );
            } else {
                let out = out.failed();
                assert!(
                    out.stderr.contains(entry),
                    "{case}: the error does not name {entry}: {out:?}"
                );
            }
            assert_eq!(names(&outside), ["keep"], "{case}");
            assert_eq!(
                fs::read_to_string(outside.join("keep")).unwrap(),
                "original",
                "{case}"
            );
            assert_eq!(
                fs::metadata(outside.join("keep")).unwrap().nlink(),
                1,
                "{case}: a hard link to keep was made"
            );
            assert_eq!(names(&work), ["dest", "outside"], "{case}");
        }
        hostile(&["rm", "-f", "evil"]).ok();
    }

    /// Run `mvctl ARGS` on a new pseudo-terminal of `rows` x `cols` (its
    /// controlling terminal: stdin, stdout and stderr), typing `input`;
    /// returns the exit status and everything written to the terminal.
    fn mvctl_pty(args: &[&str], rows: u16, cols: u16, input: &[u8]) -> (i32, String) {
        let cmd = mvctl_command(&suite().host, args);
        let (status, out) = mvm_e2e::pty::run(cmd, rows, cols, input, CALL_TIMEOUT)
            .unwrap_or_else(|e| panic!("mvctl {args:?} on a pty: {e}"));
        (status.code().unwrap_or(-1), out)
    }

    /// `run -i` feeds stdin, `run -it` gets a raw terminal of our size,
    /// `attach` sees a detached sandbox's live output and exits with its
    /// status, `top` lists the workload.
    #[test]
    fn interactive_run_attach_and_top() {
        let out = mvctl_stdin(&["run", "-i", "--rm", BUSYBOX, "cat"], b"hi\n");
        assert_eq!((out.code, out.stdout.as_str()), (0, "hi\n"), "{out:?}");

        let (code, text) = mvctl_pty(
            &["run", "-it", "--rm", BUSYBOX, "sh"],
            33,
            101,
            b"stty size; echo typed-$((1+2)); exit 5\r",
        );
        assert_eq!(code, 5, "{text:?}");
        assert!(
            text.contains("33 101"),
            "stty size in the sandbox: {text:?}"
        );
        assert!(text.contains("typed-3"), "{text:?}");

        let name = unique("attach");
        mvctl(&[
            "run",
            "-d",
            "--name",
            &name,
            BUSYBOX,
            "sh",
            "-c",
            "while [ ! -e /tmp/go ]; do sleep 0.2; done; echo live-1; echo live-err >&2; sleep 1; echo live-2; exit 6",
        ])
        .ok();
        let t = Instant::now();
        while mvctl(&["exec", &name, "true"]).code != 0 {
            assert!(
                t.elapsed() < Duration::from_secs(120),
                "the guest agent never answered"
            );
            std::thread::sleep(Duration::from_secs(1));
        }
        let out = mvctl(&["top", &name]).ok();
        let header = out.stdout.lines().next().unwrap_or_default();
        assert!(
            header.starts_with("PID") && header.contains("COMMAND"),
            "{out:?}"
        );
        assert!(
            out.stdout.contains("/tmp/go"),
            "the workload's command line: {out:?}"
        );
        let attached = {
            let name = name.clone();
            std::thread::spawn(move || mvctl(&["attach", &name]))
        };
        // Let the attach reach the daemon, then let the workload talk.
        std::thread::sleep(Duration::from_secs(5));
        mvctl(&["exec", &name, "touch", "/tmp/go"]).ok();
        let out = attached.join().unwrap();
        assert_eq!(out.code, 6, "{out:?}");
        assert!(out.stdout.ends_with("live-2\n"), "{out:?}");
        assert!(!out.stdout.contains("live-err"), "{out:?}");
        mvctl(&["rm", &name]).ok();
        let out = mvctl(&["attach", &name]);
        assert_eq!(out.code, 125, "{out:?}");
    }

    /// `pause` freezes the whole microVM: a counting workload stops, exec
    /// is refused with what to do, ps and inspect say so; `unpause` lets
    /// it go on from where it was; stop and rm -f work on a paused one.
    #[test]
    fn pause_freezes_the_microvm_and_unpause_resumes_it() {
        let name = unique("pause");
        mvctl(&[
            "run",
            "-d",
            "--name",
            &name,
            BUSYBOX,
            "sh",
            "-c",
            "i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.2; done",
        ])
        .ok();
        let last_tick = || -> u64 {
            let out = mvctl(&["logs", "--tail", "1", &name]).ok();
            out.stdout
                .trim()
                .strip_prefix("tick ")
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        wait_until("the workload to count", Duration::from_secs(120), || {
            last_tick() >= 2
        });

        mvctl(&["pause", &name]).ok();
        let info = inspect(&name);
        let state = &info["state"];
        assert_eq!(state["paused"], true, "{info}");
        assert_eq!(state["status"], "running", "{info}");
        let row = ps_all()
            .into_iter()
            .find(|r| r["name"] == name.as_str())
            .unwrap();
        assert!(
            row.to_string().contains("(Paused)"),
            "ps shows the pause: {row}"
        );
        let frozen_at = last_tick();
        // Nothing runs while paused: no tick over many counting periods
        // (an absence can only be watched for a while).
        std::thread::sleep(Duration::from_secs(3));
        assert_eq!(last_tick(), frozen_at, "the workload ran while paused");
        let out = mvctl(&["exec", &name, "true"]).failed();
        assert!(
            out.stderr.contains("paused") && out.stderr.contains("unpause"),
            "{out:?}"
        );
        let out = mvctl(&["pause", &name]).failed();
        assert!(out.stderr.contains("already paused"), "{out:?}");

        mvctl(&["unpause", &name]).ok();
        wait_until("the workload to count on", Duration::from_secs(60), || {
            last_tick() > frozen_at
        });
        // It went on from where it was: the count did not restart.
        let out = mvctl(&["logs", &name]).ok();
        assert!(
            out.stdout.contains(&format!("tick {}", frozen_at + 1)),
            "{out:?}"
        );
        let out = mvctl(&["unpause", &name]).failed();
        assert!(out.stderr.contains("not paused"), "{out:?}");
        mvctl(&["exec", &name, "true"]).ok();

        // stop thaws a paused sandbox and stops it as usual.
        mvctl(&["pause", &name]).ok();
        mvctl(&["stop", "-t", "2", &name]).ok();
        let info = inspect(&name);
        let state = &info["state"];
        assert_eq!(state["status"], "exited", "{info}");
        assert_eq!(state["paused"], false, "{info}");
        let out = mvctl(&["pause", &name]).failed();
        assert!(out.stderr.contains("not running"), "{out:?}");

        // rm -f of a paused one.
        mvctl(&["start", &name]).ok();
        mvctl(&["pause", &name]).ok();
        mvctl(&["rm", "-f", &name]).ok();
        mvctl(&["inspect", &name]).failed();
    }

    /// `checkpoint create` saves a running guest whole and stops it; `start
    /// --checkpoint` resumes it where it was: a counter kept in a tmpfs
    /// goes on from its value (it does not start again at 1), a file on
    /// the scratch disk is there, exec works (the agent is reached again
    /// after the vsock reset). `--leave-running` keeps the guest going. A
    /// corrupted checkpoint, one made by another kernel and one whose
    /// memory file is truncated are refused with a clear error, before any
    /// VMM starts.
    #[test]
    fn checkpoint_restore_continues_the_guest() {
        let name = unique("ckpt");
        mvctl(&[
            "run",
            "-d",
            "--name",
            &name,
            BUSYBOX,
            "sh",
            "-c",
            "echo kept-on-scratch > /kept.txt; i=0; while true; do i=$((i+1)); \
             echo $i > /tmp/count.new; mv /tmp/count.new /tmp/count; echo tick $i; sleep 0.2; done",
        ])
        .ok();
        let last_tick = || -> u64 {
            let out = mvctl(&["logs", "--tail", "1", &name]).ok();
            out.stdout
                .trim()
                .strip_prefix("tick ")
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        wait_until("the workload to count", Duration::from_secs(120), || {
            last_tick() >= 3
        });

        mvctl(&["checkpoint", "create", &name, "c1"]).ok();
        let info = inspect(&name);
        let state = &info["state"];
        assert_eq!(state["status"], "exited", "{info}");
        assert_eq!(state["exit_code"], 0, "{info}");
        assert_eq!(state["reason"], "checkpointed", "{info}");
        let at_checkpoint = last_tick();
        assert!(at_checkpoint >= 3, "{at_checkpoint}");
        let out = mvctl(&["checkpoint", "ls", &name]).ok();
        assert!(out.stdout.contains("c1"), "{out:?}");
        let out = mvctl(&["checkpoint", "create", &name, "c1"]).failed();
        assert!(out.stderr.contains("not running"), "{out:?}");

        mvctl(&["start", "--checkpoint", "c1", &name]).ok();
        wait_until(
            "the restored workload to count",
            Duration::from_secs(120),
            || last_tick() > at_checkpoint,
        );
        let count: u64 = mvctl(&["exec", &name, "cat", "/tmp/count"])
            .ok()
            .stdout
            .trim()
            .parse()
            .unwrap();
        assert!(
            count > at_checkpoint,
            "the tmpfs counter is {count}, it was {at_checkpoint}"
        );
        let logs = mvctl(&["logs", &name]).ok().stdout;
        assert_eq!(
            logs.lines().filter(|l| *l == "tick 1").count(),
            1,
            "the count started again after the restore: {logs}"
        );
        // The next tick logged is the next count (one written while the
        // guest was being paused may be lost with its vsock connection).
        let lines: Vec<&str> = logs.lines().collect();
        let at = lines
            .iter()
            .position(|l| *l == format!("tick {at_checkpoint}"))
            .unwrap();
        let next: u64 = lines[at + 1]
            .strip_prefix("tick ")
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            next > at_checkpoint && next <= at_checkpoint + 2,
            "the count did not go on from {at_checkpoint}: {logs}"
        );
        let out = mvctl(&["exec", &name, "cat", "/kept.txt"]).ok();
        assert_eq!(out.stdout, "kept-on-scratch\n", "{out:?}");

        // --leave-running: the guest runs on after the checkpoint.
        let before = last_tick();
        mvctl(&["checkpoint", "create", "--leave-running", &name, "c2"]).ok();
        assert_eq!(inspect(&name)["state"]["status"], "running");
        wait_until("the workload to count on", Duration::from_secs(60), || {
            last_tick() > before + 2
        });
        mvctl(&["exec", &name, "true"]).ok();
        let out = mvctl(&["checkpoint", "create", &name, "c2"]).failed();
        assert!(out.stderr.contains("already has a checkpoint"), "{out:?}");
        let out = mvctl(&["checkpoint", "ls", &name]).ok();
        assert!(
            out.stdout.contains("c1") && out.stdout.contains("c2"),
            "{out:?}"
        );

        // A restored guest stops as a booted one does: the workload gets
        // SIGTERM and init reports its end. (Under QEMU's TCG a restored
        // TR marked busy made init's status-port write fault, and the
        // stop ended as a guest crash; vcpu_state::sregs_for_restore.)
        mvctl(&["stop", "-t", "1", &name]).ok();
        let state = inspect(&name)["state"].clone();
        assert_eq!(
            (&state["exit_code"], &state["reason"]),
            (&serde_json::json!(143), &serde_json::json!("stopped")),
            "{state}"
        );

        // A corrupted state file is refused, naming what is wrong.
        let dir = inspect(&name)["paths"]["dir"].as_str().unwrap().to_string();
        let state_file = format!("{dir}/checkpoints/c2/state");
        let mut bytes = std::fs::read(&state_file).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        std::fs::write(&state_file, &bytes).unwrap();
        let out = mvctl(&["start", "--checkpoint", "c2", &name]).failed();
        assert!(
            out.stderr.contains("checkpoint c2 is unusable") && out.stderr.contains("corrupt"),
            "{out:?}"
        );
        assert_eq!(inspect(&name)["state"]["status"], "exited");
        let out = mvctl(&["start", "--checkpoint", "nope", &name]).failed();
        assert!(out.stderr.contains("no such checkpoint"), "{out:?}");

        // A checkpoint made by another kernel (as after an upgrade of the
        // guest kernel) is refused naming both, before any VMM starts.
        let meta = format!("{dir}/checkpoints/c1/checkpoint.json");
        let original = std::fs::read(&meta).unwrap();
        let mut v: serde_json::Value = serde_json::from_slice(&original).unwrap();
        let ours = v["artifacts"]["kernel"].as_str().unwrap().to_string();
        v["artifacts"]["kernel"] = "0".repeat(64).into();
        std::fs::write(&meta, serde_json::to_vec(&v).unwrap()).unwrap();
        let out = mvctl(&["start", "--checkpoint", "c1", &name]).failed();
        assert!(
            out.stderr
                .contains("checkpoint c1 was made with another guest kernel (sha256:000000000000)")
                && out
                    .stderr
                    .contains(&format!("this mvm runs sha256:{}", &ours[..12])),
            "{out:?}"
        );
        assert_eq!(inspect(&name)["state"]["status"], "exited");
        // Put back, it would restore again; a truncated memory file is
        // refused instead.
        std::fs::write(&meta, &original).unwrap();
        let memory = format!("{dir}/checkpoints/c1/memory");
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&memory)
            .unwrap();
        let len = f.metadata().unwrap().len();
        f.set_len(len / 2).unwrap();
        let out = mvctl(&["start", "--checkpoint", "c1", &name]).failed();
        assert!(
            out.stderr.contains("checkpoint c1 is unusable")
                && out
                    .stderr
                    .contains(&format!("its memory file is {} bytes", len / 2)),
            "{out:?}"
        );
        assert_eq!(inspect(&name)["state"]["status"], "exited");
        mvctl(&["checkpoint", "rm", &name, "c2"]).ok();
        let out = mvctl(&["checkpoint", "ls", &name]).ok();
        assert!(
            !out.stdout.contains("c2") && out.stdout.contains("c1"),
            "{out:?}"
        );
        mvctl(&["rm", "-f", &name]).ok();
    }

    #[test]
    fn rm_flag_removes_on_exit() {
        let name = unique("rm");
        let out = mvctl(&[
            "run", "--rm", "--name", &name, BUSYBOX, "sh", "-c", "exit 4",
        ]);
        assert_eq!(out.code, 4, "{out:?}");
        mvctl(&["inspect", &name]).failed();

        let name = unique("rmd");
        mvctl(&[
            "run", "-d", "--rm", "--name", &name, BUSYBOX, "sh", "-c", "sleep 1",
        ])
        .ok();
        wait_until(
            "the --rm sandbox to go away",
            Duration::from_secs(120),
            || !ps_all().iter().any(|r| r["name"] == name.as_str()),
        );
    }

    #[test]
    fn logs_options_and_follow() {
        let name = unique("logs");
        mvctl(&[
            "run",
            "-d",
            "--name",
            &name,
            BUSYBOX,
            "sh",
            "-c",
            "echo line1; echo err1 >&2; sleep 2; echo line2; sleep 1; echo line3",
        ])
        .ok();
        // -f ends when the sandbox stops, with everything in order; the
        // guest agent keeps stdout and stderr apart.
        let all = |out: &Out| {
            assert_eq!(out.stderr, "err1\n", "{out:?}");
            assert_eq!(out.stdout, "line1\nline2\nline3\n", "{out:?}");
            "line1\nline2\nline3\n"
        };
        let out = mvctl(&["logs", "-f", &name]).ok();
        let expected = all(&out);
        assert_eq!(status_of(&name), "exited");

        let out = mvctl(&["logs", "--tail", "1", &name]).ok();
        assert_eq!(out.stdout, "line3\n", "{out:?}");
        let out = mvctl(&["logs", "-n", "all", &name]).ok();
        assert_eq!(out.stdout, expected);
        let out = mvctl(&["logs", "--since", "1h", &name]).ok();
        assert_eq!(out.stdout, expected);
        let future = (chrono_like_now() + 3600).to_string();
        let out = mvctl(&["logs", "--since", &future, &name]).ok();
        assert_eq!(out.stdout, "", "nothing after a future --since");
        let out = mvctl(&["logs", "--until", "1h", &name]).ok();
        assert_eq!(out.stdout, "", "nothing before an hour ago");
        let out = mvctl(&["logs", "-t", &name]).ok();
        for l in out.stdout.lines() {
            let (ts, text) = l.split_once(' ').unwrap();
            assert!(
                ts.len() >= 20 && ts.ends_with('Z') && ts.contains('T'),
                "RFC 3339 prefix: {l}"
            );
            assert!(text.starts_with("line") || text == "err1", "{l}");
        }
        mvctl(&["rm", &name]).ok();
    }

    fn chrono_like_now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[test]
    fn ctrl_c_is_forwarded_as_sigint() {
        let s = suite();
        let spawn = |script: &str| {
            let mut cmd = Command::new(binary("mvctl"));
            cmd.env("MVM_HOST", &s.host)
                .args(["run", "--rm", BUSYBOX, "sh", "-c", script])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            let mut child = cmd.spawn().unwrap();
            let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
            let first = lines.next().expect("output").unwrap();
            assert_eq!(first, "ready");
            (child, lines)
        };
        let finish = |mut child: Child| {
            let t = Instant::now();
            loop {
                if let Some(st) = child.try_wait().unwrap() {
                    return st.code().unwrap_or(-1);
                }
                assert!(
                    t.elapsed() < CALL_TIMEOUT,
                    "mvctl did not end after the interrupt"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        };
        // One Ctrl-C: the workload's trap runs.
        let (child, mut lines) =
            spawn("trap 'echo got-int; exit 7' INT; echo ready; while :; do sleep 0.2; done");
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let code = finish(child);
        assert_eq!(lines.next().map(Result::unwrap).as_deref(), Some("got-int"));
        assert_eq!(code, 7);
        // A workload that ignores SIGINT: the second Ctrl-C within a second kills it.
        let (child, _lines) = spawn("trap '' INT; echo ready; sleep 600");
        // SAFETY: as above.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        std::thread::sleep(Duration::from_millis(300));
        // SAFETY: as above.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        assert_eq!(finish(child), 137);
    }

    #[test]
    fn system_info_and_version() {
        let out = mvctl(&["system", "info"]).ok();
        // Hardware KVM, or nested KVM inside the emulated KVM host (which
        // mvmd reports as machine mode).
        assert!(
            out.stdout.contains(" KVM: hardware") || out.stdout.contains(" KVM: machine"),
            "{out:?}"
        );
        assert!(out.stdout.contains(" Mode: "), "{out:?}");
        assert!(
            out.stdout.contains(&suite().host),
            "shows the endpoint: {out:?}"
        );
        let v: Value =
            serde_json::from_str(&mvctl(&["info", "--format", "json"]).ok().stdout).unwrap();
        assert!(
            v["server"]["kvm_mode"] == "hardware" || v["server"]["kvm_mode"] == "machine",
            "{v}"
        );
        assert!(v["server"]["images"].as_u64().unwrap() >= 2);
        let out = mvctl(&["version"]).ok();
        assert!(
            out.stdout.contains("Client:") && out.stdout.contains("Server:"),
            "{out:?}"
        );
    }

    #[test]
    fn image_commands() {
        let s = suite();
        // images: table and json.
        let table = mvctl(&["images"]).ok().stdout;
        let row = table
            .lines()
            .find(|l| l.starts_with("e2e/busybox "))
            .unwrap_or_else(|| panic!("{table}"));
        assert!(row.contains("   1   "), "tag column: {row}");
        assert!(row.contains(&s.busybox_id[7..19]), "short id in {row}");
        let json: Vec<Value> = mvctl(&["images", "--format", "json"])
            .ok()
            .stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert!(json.iter().any(|i| i["id"] == s.busybox_id.as_str()));

        // tag, inspect, save, rmi, load round trip.
        let copy = format!("e2e/{}:2", unique("copy"));
        mvctl(&["tag", BUSYBOX, &copy]).ok();
        let v: Value =
            serde_json::from_str(&mvctl(&["image", "inspect", &copy]).ok().stdout).unwrap();
        assert_eq!(v[0]["id"], s.busybox_id.as_str());
        let saved = s.dir.path().join(format!("{}.tar", unique("saved")));
        mvctl(&["save", "-o", saved.to_str().unwrap(), &copy]).ok();
        let listing = sh(&format!("tar -tf '{}'", saved.display()));
        assert!(
            listing.lines().any(|l| l == "manifest.json"),
            "docker-archive: {listing}"
        );
        mvctl(&["rmi", &copy]).ok();
        mvctl(&["image", "inspect", &copy]).failed();
        let out = mvctl(&["load", "-i", saved.to_str().unwrap()]).ok();
        assert!(
            out.stdout.contains(copy.split(':').next().unwrap()),
            "{out:?}"
        );
        let v: Value =
            serde_json::from_str(&mvctl(&["image", "inspect", &copy]).ok().stdout).unwrap();
        assert_eq!(
            v[0]["id"],
            s.busybox_id.as_str(),
            "the round trip keeps the image id"
        );

        // OCI format, loaded from stdin.
        let oci = s.dir.path().join(format!("{}.tar", unique("oci")));
        mvctl(&[
            "save",
            "--format",
            "oci",
            "-o",
            oci.to_str().unwrap(),
            &copy,
        ])
        .ok();
        let listing = sh(&format!("tar -tf '{}'", oci.display()));
        assert!(
            listing
                .lines()
                .any(|l| l == "oci-layout" || l == "index.json"),
            "OCI layout: {listing}"
        );
        mvctl(&["rmi", &copy]).ok();
        let out = mvctl_stdin(&["load"], &fs::read(&oci).unwrap()).ok();
        assert!(out.stdout.contains("Loaded image"), "{out:?}");
        mvctl(&["rmi", &copy]).ok();

        // rmi refuses an image a sandbox uses, unless forced.
        let tiny = s.dir.path().join(unique("tiny"));
        fs::create_dir_all(tiny.join("etc")).unwrap();
        fs::write(tiny.join("etc/marker"), unique("content")).unwrap();
        let tiny_tar = tiny.with_extension("tar");
        sh(&format!(
            "tar -C '{}' -cf '{}' .",
            tiny.display(),
            tiny_tar.display()
        ));
        let used = format!("e2e/{}:1", unique("used"));
        mvctl(&["import", tiny_tar.to_str().unwrap(), &used]).ok();
        let name = unique("user");
        mvctl(&["create", "--pull", "never", "--name", &name, &used, "true"]).ok();
        let out = mvctl(&["rmi", &used]).failed();
        assert!(
            out.stderr.contains("use"),
            "says the image is in use: {out:?}"
        );
        mvctl(&["image", "inspect", &used]).ok();
        mvctl(&["rmi", "-f", &used]).ok();
        mvctl(&["image", "inspect", &used]).failed();
        mvctl(&["rm", &name]).ok();

        // A broken tarball is refused with a clear message.
        let junk = s.dir.path().join("junk.tar");
        fs::write(&junk, b"this is not a tarball").unwrap();
        let out = mvctl(&["load", "-i", junk.to_str().unwrap()]).failed();
        assert!(out.stderr.len() > "mvctl: error: ".len() + 10, "{out:?}");
        mvctl(&["load", "-i", "/no/such.tar"]).failed();

        // prune answers and leaves used images alone.
        let out = mvctl(&["image", "prune", "-f"]).ok();
        assert!(out.stdout.contains("Total reclaimed space"), "{out:?}");
        mvctl(&["image", "inspect", BUSYBOX]).ok();
        mvctl(&["image", "inspect", DEFAULTS]).ok();
    }

    #[test]
    fn auto_start_when_no_daemon_runs() {
        suite(); // the artifacts and KVM are checked there
        let dir = tempfile::Builder::new()
            .prefix("mvctl-autostart-")
            .tempdir()
            .unwrap();
        let run = dir.path().join("run");
        let root = dir.path().join("root");
        let call = || {
            let mut cmd = Command::new(binary("mvctl"));
            cmd.args(["ps", "-a"])
                .env_remove("MVM_HOST")
                .env("MVM_RUN_DIR", &run)
                .env("MVM_ROOT", &root)
                // The suite's daemon owns the host's networking; a second
                // one reconciling it would take the first one's away.
                .env("MVM_NO_NETWORK", "1");
            run_cmd(cmd, None).ok()
        };
        let out = call();
        let line = out
            .stderr
            .lines()
            .find(|l| l.starts_with("mvctl: started mvmd (pid "))
            .unwrap_or_else(|| panic!("says it started mvmd: {out:?}"));
        let pid: i32 = line["mvctl: started mvmd (pid ".len()..]
            .split(',')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            line.contains(&root.join("mvmd.log").display().to_string()),
            "names the log: {line}"
        );
        assert!(out.stdout.starts_with("SANDBOX ID"), "{out:?}");
        assert!(run.join("mvmd.sock").exists());
        // Running now: the next call says nothing about starting.
        let out = call();
        assert!(!out.stderr.contains("started mvmd"), "{out:?}");
        // SAFETY: kill(2) on the daemon this test started.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        wait_until(
            "the auto-started mvmd to stop",
            Duration::from_secs(60),
            || {
                fs::read_to_string(format!("/proc/{pid}/stat"))
                    .map(|s| s.split(") ").nth(1).is_some_and(|r| r.starts_with('Z')))
                    .unwrap_or(true)
            },
        );
    }
}
