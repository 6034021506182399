//! The containerd shim end to end: a real containerd (Debian's 1.6, its
//! own root, state, socket and config; never the system one) finds the
//! installed `containerd-shim-mvm-v1` on its PATH (`make install` into
//! target/e2e-install, run by tests/run-e2e.sh; no `MVM_*` artifact
//! variables), and `ctr` and a CRI client run containers as microVMs on
//! real KVM (`mvm_e2e::containerd`).
//!
//! The image is a docker-archive of a busybox tree (`ctr images import`),
//! unpacked with the `native` snapshotter (overlay-on-overlay fails in
//! some VMs; the shim shares the snapshot directory as the guest's root).

use std::time::Duration;

use mvm_e2e::containerd::{text, Containerd, IMAGE, RUNTIME};
use mvm_e2e::wait_until;

// Every test's name starts with `shim_`: `tests/run-e2e.sh shim` runs
// exactly these.

/// A shell script for a terminal: says whether its stdin and stdout are
/// terminals, waits (boundedly) for the terminal's size that `ctr` sends
/// after the start (`ResizePty`, as it does for runc), prints it, and
/// exits with `code`.
fn tty_script(rows: u16, cols: u16, code: i32) -> String {
    format!(
        "test -t 0 && test -t 1 && echo is-a-tty; \
         for i in $(seq 300); do s=$(stty size); [ \"$s\" = '{rows} {cols}' ] && break; sleep 0.1; done; \
         echo size=$s; exit {code}"
    )
}

/// The PID column of `ctr task ls` for task `id`: the VMM's host pid.
fn task_pid(c: &Containerd, id: &str) -> i32 {
    let ls = c.ok(&["task", "ls"]);
    ls.lines()
        .find(|l| l.split_whitespace().next() == Some(id))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid for task {id} in:\n{ls}"))
}

/// Kill, delete and remove task `id`, then check that nothing of any
/// microVM is left.
fn remove_and_check_nothing_left(c: &Containerd, ids: &[&str]) {
    for id in ids {
        let _ = c.ctr(&["task", "kill", "-s", "SIGKILL", id]);
        let _ = c.ctr(&["task", "delete", "-f", id]);
        c.ok(&["containers", "rm", id]);
    }
    wait_until(
        "the microVMs' processes to end",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || c.vm_processes().is_empty(),
    );
    assert!(
        c.leftover_sandboxes().is_empty(),
        "{:?}",
        c.leftover_sandboxes()
    );
}

#[test]
fn shim_terminal_run_and_exec_through_a_pty() {
    let c = Containerd::start();
    let script = tty_script(33, 111, 3);
    let (status, out) = c.ctr_tty(
        &[
            "run",
            "-t",
            "--rm",
            "--runtime",
            RUNTIME,
            "--snapshotter",
            "native",
            IMAGE,
            "tty1",
            "sh",
            "-c",
            &script,
        ],
        33,
        111,
    );
    assert_eq!(status.code(), Some(3), "{out}\n{}", c.log_tail());
    assert!(out.contains("is-a-tty\n"), "{out}");
    assert!(out.contains("size=33 111\n"), "{out}");

    // `ctr task exec -t` into a detached task.
    let out = c.run(&["-d"], "tbg", &["sleep", "1000"]);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stderr),
        c.log_tail()
    );
    let script = tty_script(20, 70, 4);
    let (status, out) = c.ctr_tty(
        &[
            "task",
            "exec",
            "-t",
            "--exec-id",
            "t1",
            "tbg",
            "sh",
            "-c",
            &script,
        ],
        20,
        70,
    );
    assert_eq!(status.code(), Some(4), "{out}\n{}", c.log_tail());
    assert!(out.contains("is-a-tty\n"), "{out}");
    assert!(out.contains("size=20 70\n"), "{out}");
    remove_and_check_nothing_left(&c, &["tbg"]);
}

/// containerd stopped (SIGTERM: its own shutdown) and crashed (SIGKILL)
/// while a task runs, and started again with the same root, state and
/// socket: it finds the same shim, the task still runs and answers, and
/// kill and delete work as before.
#[test]
fn shim_tasks_survive_containerd_restarts() {
    let mut c = Containerd::start();
    let out = c.run(&["-d"], "survivor", &["sleep", "1000"]);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stderr),
        c.log_tail()
    );
    let shim = c.shim_pid("survivor").expect("the task's shim");
    let vmm = task_pid(&c, "survivor");
    for (n, signal) in [libc::SIGTERM, libc::SIGKILL].into_iter().enumerate() {
        c.restart(signal);
        let ls = c.ok(&["task", "ls"]);
        assert!(
            ls.lines()
                .any(|l| l.starts_with("survivor") && l.contains("RUNNING")),
            "after signal {signal}: {ls}\n{}",
            c.log_tail()
        );
        assert_eq!(task_pid(&c, "survivor"), vmm);
        assert_eq!(c.shim_pid("survivor"), Some(shim), "another shim");
        let exec_id = format!("after-restart-{n}");
        let out = c.ok(&[
            "task",
            "exec",
            "--exec-id",
            &exec_id,
            "survivor",
            "echo",
            "alive",
        ]);
        assert_eq!(out, "alive\n");
    }
    c.ok(&["task", "kill", "-s", "SIGTERM", "survivor"]);
    c.wait_stopped("survivor");
    c.ok(&["task", "delete", "survivor"]);
    wait_until(
        "the shim to end after the task's deletion",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || mvm_e2e::containerd::is_zombie(shim),
    );
    remove_and_check_nothing_left(&c, &[]);
    c.ok(&["containers", "rm", "survivor"]);
}

/// A workload over its `--memory-limit`: the OOM killer of its cgroup in
/// the guest (memory.max = the limit; the guest has headroom) ends it,
/// `ctr run` exits 137 and containerd gets the task's OOM event
/// (`/tasks/oom`, what the CRI plugin turns into the container's
/// `OOMKilled` reason) before its exit.
#[test]
fn shim_an_oom_kill_in_the_guest_reaches_containerd() {
    let c = Containerd::start();
    let events = c.events();
    // `tail` of an endless line keeps all of it: memory that is all
    // touched (read into), grown in small steps, so the OOM killer of the
    // cgroup ends it, not a failed allocation. A small limit: each new
    // page of a nested guest costs milliseconds in the emulated host (an
    // awk filling 64 MiB had reached 20000 entries, about 6 MiB, after
    // 180 s there).
    let out = c.run(
        &["--rm", "--memory-limit", "16777216"],
        "hog",
        &["tail", "/dev/zero"],
    );
    assert_eq!(
        out.status.code(),
        Some(137),
        "{}\n{}",
        text(&out.stderr),
        c.log_tail()
    );
    let oom = events.wait_for("the task's OOM event", |l| {
        l.contains("/tasks/oom") && l.contains("\"hog\"")
    });
    let exit = events.wait_for("the task's exit event", |l| {
        l.contains("/tasks/exit") && l.contains("\"hog\"")
    });
    assert!(exit.contains("\"exit_status\":137"), "{exit}");
    let lines = events.lines();
    let at = |needle: &str| lines.iter().position(|l| l == needle).unwrap();
    assert!(at(&oom) < at(&exit), "the OOM event came after the exit");
    remove_and_check_nothing_left(&c, &[]);
}

/// A VMM killed from outside (its host pid is the task's) ends the task
/// with the signal's status, as runc's task would: SIGKILL is 137. The
/// shim learns the signal by reaping the VMM's jailer (which ends as its
/// VMM did), so nothing else in the shim may reap it first (the
/// containerd-shim crate's reaper). Only SIGKILL: the jailed VMM is PID 1
/// of its own PID namespace, so the kernel drops any other signal it has
/// no handler for, even from the host (a SIGSYS sent by kill(2) left it
/// running, seen 2026-12-07); a real seccomp kill is not a signal but an
/// exit, and the api suite proves it with the trigger-built VMM.
#[test]
fn shim_a_vmm_killed_from_outside_ends_its_task_with_the_signal() {
    let c = Containerd::start();
    let events = c.events();
    let out = c.run(&["-d"], "vmm-kill", &["sleep", "1000"]);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stderr),
        c.log_tail()
    );
    let vmm = task_pid(&c, "vmm-kill");
    // SAFETY: kill on the pid containerd reports for the task.
    assert_eq!(unsafe { libc::kill(vmm, libc::SIGKILL) }, 0);
    let exit = events.wait_for("vmm-kill's exit event", |l| {
        l.contains("/tasks/exit") && l.contains("\"container_id\":\"vmm-kill\"")
    });
    assert!(
        exit.contains("\"exit_status\":137"),
        "{exit}\n{}",
        c.log_tail()
    );
    remove_and_check_nothing_left(&c, &["vmm-kill"]);
}

/// Kubernetes, step 2 (docs/kubernetes.md): a pod's sandbox (the CRI
/// plugin's annotations, given here with `ctr run --annotation`) boots
/// the pod's microVM with the sandbox's process as its workload (a
/// stand-in for `pause`); a container of the pod is refused with a clear
/// error, before anything boots, until it can start inside that microVM.
#[test]
fn shim_pod_sandbox_boots_and_pod_containers_are_refused() {
    let c = Containerd::start();
    let out = c.run(
        &[
            "-d",
            "--annotation",
            "io.kubernetes.cri.container-type=sandbox",
            "--annotation",
            "io.kubernetes.cri.sandbox-id=pod1",
        ],
        "pod1",
        &["sleep", "1000"],
    );
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stderr),
        c.log_tail()
    );
    let vms = c.vm_processes();
    assert!(!vms.is_empty(), "no microVM for the pod");
    let out = c.ok(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        "pod1",
        "echo",
        "in-the-pod",
    ]);
    assert_eq!(out, "in-the-pod\n");

    let out = c.run(
        &[
            "--rm",
            "--annotation",
            "io.kubernetes.cri.container-type=container",
            "--annotation",
            "io.kubernetes.cri.sandbox-id=pod1",
        ],
        "app",
        &["true"],
    );
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("pod sandbox \"pod1\"") && err.contains("step 3"),
        "{err}"
    );
    let out = c.run(
        &[
            "--rm",
            "--annotation",
            "io.kubernetes.cri.container-type=podling",
        ],
        "odd",
        &["true"],
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("podling"),
        "{}",
        text(&out.stderr)
    );
    // Nothing booted for them: the pod's microVM is the only one.
    assert_eq!(c.vm_processes(), vms);
    let _ = c.ctr(&["containers", "rm", "app", "odd"]);

    // The pod ends as a pause container does: a SIGTERM to its task.
    c.ok(&["task", "kill", "-s", "SIGTERM", "pod1"]);
    c.wait_stopped("pod1");
    c.ok(&["task", "delete", "pod1"]);
    remove_and_check_nothing_left(&c, &[]);
    c.ok(&["containers", "rm", "pod1"]);
}

/// The same pod through containerd's CRI plugin, driven as the kubelet
/// drives it (a CRI client on containerd's socket; docs/kubernetes.md,
/// step 2): `RunPodSandbox` with the runtime handler `mvm` (what a
/// RuntimeClass names) boots the pod's microVM with the sandbox image's
/// process and the pod is READY; a container of the pod is created but
/// refused at its start with the error naming the pod; `StopPodSandbox`
/// ends the microVM and `RemovePodSandbox` leaves nothing behind.
#[test]
fn shim_cri_runs_a_pod_sandbox_with_the_mvm_runtime_handler() {
    use k8s_cri::v1::PodSandboxState;
    use mvm_e2e::containerd::PAUSE_IMAGE;
    use mvm_e2e::cri;

    let c = Containerd::start_cri();
    let mut api = c.cri();
    let version = api.version().expect("CRI Version");
    assert_eq!(version.runtime_name, "containerd", "{version:?}");
    let config = cri::pod_config("web");
    let pod = api
        .run_pod(&config, "mvm")
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", c.log_tail()));
    assert_eq!(
        api.pod_state(&pod).unwrap(),
        PodSandboxState::SandboxReady as i32
    );
    let vms = c.vm_processes();
    assert!(!vms.is_empty(), "no microVM for the pod");
    let task = c.ok(&["--namespace", "k8s.io", "task", "ls"]);
    assert!(
        task.lines()
            .any(|l| l.starts_with(&pod) && l.contains("RUNNING")),
        "the pod's sandbox task ({PAUSE_IMAGE}): {task}"
    );

    // The CRI plugin binds the pod's own resolv.conf and hostname files
    // into it: single files, copied into the guest and bound over their
    // targets there.
    let files = c
        .dir
        .path()
        .join("root/io.containerd.grpc.v1.cri/sandboxes")
        .join(&pod);
    for (n, name) in ["resolv.conf", "hostname"].into_iter().enumerate() {
        let host = std::fs::read_to_string(files.join(name)).unwrap();
        let exec_id = format!("cat-{n}");
        let guest = c.ok(&[
            "--namespace",
            "k8s.io",
            "task",
            "exec",
            "--exec-id",
            &exec_id,
            &pod,
            "cat",
            &format!("/etc/{name}"),
        ]);
        assert_eq!(guest, host, "/etc/{name} in the pod");
    }

    let app = api
        .create_container(&pod, &config, "app", IMAGE, &["true"])
        .unwrap_or_else(|e| panic!("CreateContainer: {e}\n{}", c.log_tail()));
    let err = api
        .start_container(&app)
        .expect_err("a pod's container starts only inside the pod's microVM (step 3)");
    assert!(
        err.message().contains(&format!("pod sandbox \"{pod}\""))
            && err.message().contains("step 3"),
        "{err}"
    );
    assert_eq!(
        c.vm_processes(),
        vms,
        "something booted for the refused container"
    );
    api.remove_container(&app).expect("RemoveContainer");

    api.stop_pod(&pod)
        .unwrap_or_else(|e| panic!("StopPodSandbox: {e}\n{}", c.log_tail()));
    assert_eq!(
        api.pod_state(&pod).unwrap(),
        PodSandboxState::SandboxNotready as i32
    );
    api.remove_pod(&pod).expect("RemovePodSandbox");
    remove_and_check_nothing_left(&c, &[]);
}

/// An image made with mvm is a containerd image: `mvctl save` of an image
/// in mvmd's store, `ctr images import` of the archive, and `ctr run`
/// with the mvm runtime runs it.
#[test]
fn shim_runs_an_image_saved_by_mvctl() {
    use mvm_e2e::daemon::{binary, start_answering};

    let c = Containerd::start();
    let d = c.dir.path().join("mvmd");
    let (root, run) = (d.join("root"), d.join("run"));
    std::fs::create_dir_all(&run).unwrap();
    let socket = start_answering(&root, &run, &d.join("mvmd.log"));
    let mvctl = |args: &[&str]| {
        let out = std::process::Command::new(binary("mvctl"))
            .args(args)
            .env("MVM_HOST", format!("unix://{}", socket.display()))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mvctl {args:?}: {}",
            text(&out.stderr)
        );
        text(&out.stdout)
    };
    let tree = d.join("tree");
    mvm_e2e::rootfs::busybox_tree(&tree).unwrap();
    let rootfs = d.join("rootfs.tar");
    let tar = std::process::Command::new("tar")
        .args(["--numeric-owner", "--owner=0", "--group=0", "-C"])
        .arg(&tree)
        .arg("-cf")
        .arg(&rootfs)
        .arg(".")
        .status()
        .unwrap();
    assert!(tar.success());
    mvctl(&["import", rootfs.to_str().unwrap(), "saved/busybox:1"]);
    let archive = d.join("saved.tar");
    mvctl(&["save", "-o", archive.to_str().unwrap(), "saved/busybox:1"]);

    c.ok(&[
        "images",
        "import",
        "--snapshotter",
        "native",
        archive.to_str().unwrap(),
    ]);
    let image = "docker.io/saved/busybox:1";
    assert!(c.ok(&["images", "ls", "-q"]).contains(image));
    let out = c.run_image(&["--rm"], image, "saved", &["echo", "hi"]);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stderr),
        c.log_tail()
    );
    assert_eq!(text(&out.stdout), "hi\n");
    remove_and_check_nothing_left(&c, &[]);
}

#[test]
fn shim_ctr_run_prints_output_and_propagates_exit_codes() {
    let c = Containerd::start();
    let out = c.run(&["--rm"], "echo", &["echo", "hi"]);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stderr),
        c.log_tail()
    );
    assert_eq!(text(&out.stdout), "hi\n");

    // stderr, the environment, the working directory, exit codes.
    let out = c.run(
        &["--rm", "--env", "GREETING=hello", "--cwd", "/tmp"],
        "code",
        &["sh", "-c", "echo $GREETING $(pwd); echo oops >&2; exit 3"],
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hello /tmp\n");
    assert!(text(&out.stderr).contains("oops"), "{}", text(&out.stderr));

    // The guest writes to the snapshot as runc's containers do: a second
    // container from the same image starts clean (its own snapshot).
    let out = c.run(
        &["--rm"],
        "w1",
        &["sh", "-c", "echo x > /etc/written && cat /etc/written"],
    );
    assert_eq!(text(&out.stdout), "x\n", "{}", text(&out.stderr));
    let out = c.run(
        &["--rm"],
        "w2",
        &[
            "sh",
            "-c",
            "test ! -e /etc/written && cat /etc/image-marker",
        ],
    );
    assert_eq!(
        text(&out.stdout),
        "from the image\n",
        "{}",
        text(&out.stderr)
    );

    assert!(
        c.vm_processes().is_empty(),
        "VMMs left: {:?}",
        c.vm_processes()
    );
    assert!(
        c.leftover_sandboxes().is_empty(),
        "{:?}",
        c.leftover_sandboxes()
    );
}

#[test]
fn shim_detached_task_exec_ps_kill_and_delete() {
    let c = Containerd::start();
    let out = c.run(&["-d"], "bg", &["sleep", "1000"]);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stderr),
        c.log_tail()
    );

    let out = c.ok(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        "bg",
        "sh",
        "-c",
        "echo from-exec",
    ]);
    assert_eq!(out, "from-exec\n");
    let out = c.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e2",
        "bg",
        "sh",
        "-c",
        "exit 4",
    ]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));

    // The workload's processes (as `top`, the agent lists the workload's
    // tree, not init): `sleep`, with a pid.
    let ps = c.ok(&["task", "ps", "bg"]);
    let pids: Vec<&str> = ps
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(
        !pids.is_empty() && pids.iter().all(|p| p.parse::<u32>().is_ok()),
        "{ps}"
    );

    c.ok(&["task", "kill", "-s", "SIGTERM", "bg"]);
    c.wait_stopped("bg");
    let out = c.ok(&["task", "delete", "bg"]);
    // SIGTERM ended `sleep`: 128 + 15.
    assert!(out.contains("143") || out.is_empty(), "{out}");
    c.ok(&["containers", "rm", "bg"]);
    wait_until(
        "the microVM's processes to end",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || c.vm_processes().is_empty(),
    );
    assert!(
        c.leftover_sandboxes().is_empty(),
        "{:?}",
        c.leftover_sandboxes()
    );
}

/// `ctr task delete -f` of a running task (what a test's cleanup does):
/// the task is SIGKILLed, deleted, and its shim ends. This path once hung
/// after an exec (the shim did not end), so an exec comes first.
#[test]
fn shim_a_forced_delete_of_a_running_task_ends_its_shim() {
    let c = Containerd::start();
    let out = c.run(&["-d"], "forced", &["sleep", "1000"]);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stderr),
        c.log_tail()
    );
    let out = c.ok(&["task", "exec", "--exec-id", "e1", "forced", "echo", "x"]);
    assert_eq!(out, "x\n");
    let shim = c.shim_pid("forced").expect("the task's shim");
    c.ok(&["task", "delete", "-f", "forced"]);
    wait_until(
        "the shim to end after the task's deletion",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || mvm_e2e::containerd::is_zombie(shim),
    );
    assert!(
        c.vm_processes().is_empty(),
        "VMMs left: {:?}",
        c.vm_processes()
    );
    c.ok(&["containers", "rm", "forced"]);
    assert!(
        c.leftover_sandboxes().is_empty(),
        "{:?}",
        c.leftover_sandboxes()
    );
}

#[test]
fn shim_a_sigkilled_shim_leaves_no_vmm_behind() {
    let c = Containerd::start();
    let out = c.run(&["-d"], "victim", &["sleep", "1000"]);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stderr),
        c.log_tail()
    );
    // Running means the microVM exists.
    assert!(!c.vm_processes().is_empty(), "no VMM for a running task");
    let shim = c.shim_pid("victim").expect("the task's shim");
    // SAFETY: kill on a pid we just found.
    assert_eq!(unsafe { libc::kill(shim, libc::SIGKILL) }, 0);
    wait_until(
        "the VMM and its backends to die with the shim",
        Duration::from_secs(30),
        Duration::from_millis(50),
        || c.vm_processes().is_empty(),
    );
    // containerd notices and reports the task dead; delete cleans up.
    wait_until(
        "containerd to see the task end",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || {
            let ls = c.ok_quiet(&["task", "ls"]);
            !ls.lines()
                .any(|l| l.starts_with("victim") && l.contains("RUNNING"))
        },
    );
    let _ = c.ctr(&["task", "delete", "victim"]);
    c.ok(&["containers", "rm", "victim"]);
    assert!(
        c.leftover_sandboxes().is_empty(),
        "{:?}",
        c.leftover_sandboxes()
    );
}

#[test]
fn shim_bad_bundles_are_clear_errors_and_leak_nothing() {
    let c = Containerd::start();
    // Memory below the smallest workload limit (6 MiB).
    let out = c.run(&["--rm", "--memory-limit", "1048576"], "small", &["true"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("below the smallest limit"),
        "{}",
        text(&out.stderr)
    );
    // A mount type the runtime cannot give.
    let out = c.run(
        &["--rm", "--mount", "type=nfs,src=srv:/x,dst=/x,options=ro"],
        "nfs",
        &["true"],
    );
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("nfs"), "{}", text(&out.stderr));
    assert!(c.vm_processes().is_empty());
    assert!(
        c.leftover_sandboxes().is_empty(),
        "{:?}",
        c.leftover_sandboxes()
    );
    let _ = c.ctr(&["containers", "rm", "small", "nfs"]);
}

#[test]
fn shim_bind_mounts_and_memory_limits_reach_the_guest() {
    let c = Containerd::start();
    let data = c.dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("in"), "from the host\n").unwrap();
    let mount = format!(
        "type=bind,src={},dst=/data,options=rbind:rw",
        data.display()
    );
    let out = c.run(
        &["--rm", "--mount", &mount, "--memory-limit", "268435456"],
        "bind",
        &[
            "sh",
            "-c",
            "cat /data/in; echo back > /data/out; grep MemTotal /proc/meminfo; \
             cat /sys/fs/cgroup$(cut -d: -f3 /proc/self/cgroup)/memory.max",
        ],
    );
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stderr),
        c.log_tail()
    );
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with("from the host\n"), "{stdout}");
    assert_eq!(std::fs::read_to_string(data.join("out")).unwrap(), "back\n");
    // The limit is the workload cgroup's memory.max; the guest has
    // headroom above it (256 + 64 MiB, less what the kernel keeps).
    let kib: u64 = stdout
        .lines()
        .find(|l| l.starts_with("MemTotal"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .expect("MemTotal");
    assert!((262_144..=327_680).contains(&kib), "MemTotal {kib} kB");
    assert_eq!(stdout.lines().last(), Some("268435456"), "{stdout}");
}
