//! The containerd shim end to end: a real containerd (Debian's 1.6, its
//! own root, state, socket and config; never the system one) finds
//! `containerd-shim-mvm-v1` on its PATH, as an installed one is found,
//! and `ctr` runs containers as microVMs on real KVM
//! (`mvm_e2e::containerd`).
//!
//! The image is a docker-archive of a busybox tree (`ctr images import`),
//! unpacked with the `native` snapshotter (overlay-on-overlay fails in
//! some VMs; the shim shares the snapshot directory as the guest's root).

use std::time::Duration;

use mvm_e2e::containerd::{text, Containerd};
use mvm_e2e::wait_until;

#[test]
fn ctr_run_prints_output_and_propagates_exit_codes() {
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
fn detached_task_exec_ps_kill_and_delete() {
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
fn a_forced_delete_of_a_running_task_ends_its_shim() {
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
fn a_sigkilled_shim_leaves_no_vmm_behind() {
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
fn bad_bundles_are_clear_errors_and_leak_nothing() {
    let c = Containerd::start();
    // Memory below the runtime's minimum.
    let out = c.run(&["--rm", "--memory-limit", "1048576"], "small", &["true"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("too small"),
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
fn bind_mounts_and_memory_limits_reach_the_guest() {
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
            "cat /data/in; echo back > /data/out; grep MemTotal /proc/meminfo",
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
    // 256 MiB of guest memory, less what the kernel keeps.
    let kib: u64 = stdout
        .lines()
        .find(|l| l.starts_with("MemTotal"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .expect("MemTotal");
    assert!((150_000..=262_144).contains(&kib), "MemTotal {kib} kB");
}
