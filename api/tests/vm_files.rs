//! mvmd's console endpoint against a compromised VMM's output directory:
//! the sandbox's `vm/` belongs to the VMM's uid, so it may hold a link to
//! a host secret where the console should be. The endpoint refuses it with
//! a clear error and never serves the secret. No microVM boots: the
//! sandbox is created, never started, and the link is planted as such a
//! VMM would plant it.

mod common;

use std::fs;
use std::os::unix::fs::symlink;
use std::process::Command;

use common::{api, Mvmd};

#[test]
fn a_symlinked_console_is_refused_not_served() {
    let d = Mvmd::start();
    let tree = d.dir.path().join("tree");
    fs::create_dir_all(tree.join("etc")).unwrap();
    fs::write(tree.join("etc/hostname"), "x\n").unwrap();
    let tar = d.dir.path().join("rootfs.tar");
    let st = Command::new("tar")
        .args(["--numeric-owner", "--owner=0", "--group=0", "-C"])
        .arg(&tree)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    d.mvctl(&["import", tar.to_str().unwrap(), "tiny:1"]).ok();
    let id = d.mvctl(&["create", "tiny:1", "true"]).ok().stdout;
    let id = id.trim();
    let vm = d.root().join("sandboxes").join(id).join("vm");
    fs::create_dir_all(&vm).unwrap();

    // An honest console is served.
    fs::write(vm.join("console.log"), "booted\n").unwrap();
    let (status, body) = api(
        &d.sock,
        "GET",
        &format!("/v1/sandboxes/{id}/console"),
        &[],
        "",
    );
    assert_eq!((status, body.as_str()), (200, "booted\n"));

    // A link to a secret, as the current part or the rotated one.
    let secret = d.dir.path().join("shadow");
    fs::write(&secret, "root:SECRET-HASH\n").unwrap();
    for name in ["console.log", "console.log.1"] {
        let _ = fs::remove_file(vm.join("console.log"));
        let _ = fs::remove_file(vm.join("console.log.1"));
        symlink(&secret, vm.join(name)).unwrap();
        let (status, body) = api(
            &d.sock,
            "GET",
            &format!("/v1/sandboxes/{id}/console"),
            &[],
            "",
        );
        assert_eq!(status, 500, "{name}: {body}");
        assert!(!body.contains("SECRET"), "{name}: {body}");
        assert!(
            body.contains(name) && body.contains("symbolic link"),
            "{name}: {body}"
        );
    }
}
