//! `mvm build` end to end: Dockerfiles whose RUN steps boot real microVMs
//! (transient sandboxes of mvm-runtime: mvm-vmm, the guest kernel,
//! mvm-init) on a busybox base image imported into a temp state root. One
//! runtime for the whole file so later tests reuse root disks and cache
//! entries; few VM boots (each costs seconds under the emulated KVM host).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use mvm_builder::context::Context;
use mvm_builder::progress::Event;
use mvm_builder::vm::{Executor, RunRequest, RuntimeExecutor};
use mvm_builder::{BuildError, BuildOptions, BuildResult, Builder};
use mvm_e2e::{rootfs, Artifacts};
use mvm_images::{ImportOptions, Reference, RootDiskOptions, Store};
use mvm_runtime::{Layout, Runtime, RuntimeConfig};

struct World {
    _dir: tempfile::TempDir,
    store: Store,
    exec: RuntimeExecutor,
    root: PathBuf,
}

/// The shared store with `busybox-base:1` and the executor.
fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        Artifacts::get(); // checks KVM and the artifact variables
        let dir = tempfile::Builder::new()
            .prefix("mvm-build-e2e-")
            .tempdir()
            .unwrap();
        // The runtime finds kernel, init and VMM as mvmd does (here from
        // the variables `make e2e` sets); its state root is private.
        let mut cfg = RuntimeConfig::from_env(Default::default()).unwrap();
        cfg.layout = Layout::new(dir.path(), dir.path().join("run"));
        let runtime = Runtime::new(cfg).unwrap();
        let store = runtime.store().clone();
        let tree = dir.path().join("busybox");
        rootfs::busybox_tree(&tree).unwrap();
        let tarball = dir.path().join("busybox.tar");
        let st = Command::new("tar")
            .args(["--numeric-owner", "--owner=0", "--group=0", "-C"])
            .arg(&tree)
            .arg("-cf")
            .arg(&tarball)
            .arg(".")
            .status()
            .unwrap();
        assert!(st.success(), "tar of the busybox tree failed");
        store
            .import(
                fs::File::open(&tarball).unwrap(),
                Some(&Reference::parse("busybox-base:1").unwrap()),
                &ImportOptions::default(),
            )
            .unwrap();
        let exec = RuntimeExecutor::new(runtime);
        World {
            root: dir.path().to_path_buf(),
            _dir: dir,
            store,
            exec,
        }
    })
}

fn context(name: &str, files: &[(&str, &str)]) -> PathBuf {
    let d = world().root.join("ctx").join(name);
    for (rel, content) in files {
        let p = d.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, content).unwrap();
    }
    d
}

fn build(ctx: &Path, tag: &str) -> (Result<BuildResult, BuildError>, Vec<Event>) {
    let w = world();
    let events = Mutex::new(Vec::new());
    let sink = |e: &Event| {
        eprint!("{}", e.plain());
        events.lock().unwrap().push(e.clone());
    };
    let b = Builder::new(w.store.clone(), Some(&w.exec), &sink).unwrap();
    let c = Context::from_dir(ctx).unwrap();
    let r = b.build(
        &c,
        &BuildOptions {
            tags: vec![tag.to_string()],
            ..Default::default()
        },
    );
    (r, events.into_inner().unwrap())
}

/// Boots the built image like `mvctl run` would (its ENTRYPOINT/CMD, env,
/// user and workdir, or `argv` instead) and returns (exit code, output).
fn run_image(tag: &str, argv: Option<Vec<String>>) -> (i32, String) {
    let w = world();
    let rec = w.store.resolve(tag).unwrap();
    let cfg = rec.image_config();
    let disk = w
        .store
        .root_disk(&rec, &RootDiskOptions::default())
        .unwrap();
    let dir = tempfile::tempdir_in(&w.root).unwrap();
    let req = RunRequest {
        root_disk: disk.path,
        argv: argv.unwrap_or_else(|| cfg.default_argv()),
        env: cfg.env.clone(),
        user: cfg.user.clone(),
        cwd: if cfg.working_dir.is_empty() {
            "/".into()
        } else {
            cfg.working_dir.clone()
        },
        dir: dir.path().to_path_buf(),
    };
    let mut out = String::new();
    let o = w
        .exec
        .run(&req, &mut |l| {
            out.push_str(l);
            out.push('\n')
        })
        .unwrap();
    (o.exit.code(), out)
}

fn layer_names(store: &Store, digest: &mvm_images::Digest) -> Vec<String> {
    let out = Command::new("tar")
        .arg("-tf")
        .arg(store.blob_path(digest))
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn build_run_steps_cache_and_whiteouts() {
    let ctx = context(
        "main",
        &[
            ("a.txt", "file a\n"),
            ("b.txt", "file b\n"),
            (
                "Dockerfile",
                "FROM busybox-base:1\n\
                 ENV GREETING=hello\n\
                 ARG WHO=builder\n\
                 WORKDIR /app\n\
                 COPY a.txt b.txt ./\n\
                 RUN echo \"$GREETING from $WHO: $(cat b.txt)\" > run.txt && rm /etc/image-marker && echo step-output-line\n\
                 CMD [\"cat\", \"/app/run.txt\"]\n",
            ),
        ],
    );
    let (r, events) = build(&ctx, "built:1");
    let r = r.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((r.runs, r.cached), (1, 0));
    // RUN output was streamed as progress lines of its step.
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Output { line, .. } if line == "step-output-line")),
        "{events:?}"
    );
    assert!(events.iter().any(|e| matches!(e, Event::RunTiming { .. })));
    // The RUN layer holds the new file and a whiteout for the deleted one;
    // the VM's own mount points and /etc/hosts edits are not in it.
    let rec = w_store().resolve("built:1").unwrap();
    let run_layer = rec.manifest.layers.last().unwrap();
    let names = layer_names(w_store(), &run_layer.digest);
    assert!(names.contains(&"app/run.txt".to_string()), "{names:?}");
    assert!(
        names.contains(&"etc/.wh.image-marker".to_string()),
        "{names:?}"
    );
    assert!(
        !names
            .iter()
            .any(|n| n == "etc/hosts" || n.starts_with("proc")),
        "{names:?}"
    );
    assert_eq!(rec.image_config().working_dir, "/app");

    // Runnable: the CMD prints what RUN wrote; the deleted file is gone.
    let (code, out) = run_image("built:1", None);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("hello from builder: file b"), "{out}");
    let (code, out) = run_image(
        "built:1",
        Some(vec![
            "sh".into(),
            "-c".into(),
            "test ! -e /etc/image-marker && echo gone".into(),
        ]),
    );
    assert_eq!((code, out.trim()), (0, "gone"));

    // Nothing changed: fully cached (both layer steps; metadata steps
    // have no layer to cache), same image, no VM.
    let t = std::time::Instant::now();
    let (again, events) = build(&ctx, "built:1");
    let again = again.unwrap();
    eprintln!("fully cached rebuild: {:?}", t.elapsed());
    assert_eq!((again.runs, again.cached), (0, 2));
    assert_eq!(again.digest, r.digest);
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, Event::Cached { .. }))
            .count(),
        2
    );

    // One copied file changes: that step and the RUN after it rebuild.
    fs::write(ctx.join("b.txt"), "file b, edited\n").unwrap();
    let (changed, _) = build(&ctx, "built:1");
    let changed = changed.unwrap();
    assert_eq!(
        (changed.runs, changed.cached),
        (1, 0),
        "the changed COPY and the RUN after it rebuild"
    );
    let (_, out) = run_image("built:1", None);
    assert!(out.contains("file b, edited"), "{out}");
}

fn w_store() -> &'static Store {
    &world().store
}

#[test]
fn multi_stage_copies_a_binary_from_a_builder_stage() {
    let ctx = context(
        "multi",
        &[(
            "Dockerfile",
            "FROM busybox-base:1 AS builder\n\
             RUN mkdir -p /out && printf '#!/bin/sh\\necho built-binary \"$@\"\\n' > /out/app && chmod 755 /out/app\n\
             FROM busybox-base:1\n\
             COPY --from=builder /out/app /usr/bin/app\n\
             RUN app from-final-stage > /result.txt\n",
        )],
    );
    let (r, _) = build(&ctx, "multi:1");
    let r = r.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.runs, 2);
    let rec = w_store().image_at(&r.digest).unwrap();
    let result = mvm_builder::tarlayer::read_file_in_layers(
        w_store(),
        &rec.manifest.layers,
        "result.txt",
        1 << 20,
    )
    .unwrap();
    assert_eq!(
        result.as_deref(),
        Some(&b"built-binary from-final-stage\n"[..]),
        "the copied binary ran in the final stage's build VM"
    );
    assert!(
        mvm_builder::tarlayer::read_file_in_layers(
            w_store(),
            &rec.manifest.layers,
            "out/app",
            1 << 20
        )
        .unwrap()
        .is_none(),
        "the builder stage's filesystem is not in the final image"
    );
}

#[test]
fn a_failing_run_reports_step_status_and_output() {
    let ctx = context(
        "fail",
        &[(
            "Dockerfile",
            "FROM busybox-base:1\nENV A=1\nRUN echo before-the-failure; echo to-stderr >&2; exit 3\nRUN echo never\n",
        )],
    );
    let (r, events) = build(&ctx, "fail:1");
    let err = r.unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(
            err,
            BuildError::RunFailed {
                code: 3,
                line: 3,
                index: 3,
                total: 4,
                ..
            }
        ),
        "{msg}"
    );
    assert!(
        msg.starts_with("Dockerfile:3: step 3/4 `RUN echo before-the-failure"),
        "{msg}"
    );
    assert!(msg.contains("exited with status 3"), "{msg}");
    assert!(
        msg.contains("before-the-failure") && msg.contains("to-stderr"),
        "{msg}"
    );
    assert!(events.iter().any(|e| matches!(e, Event::Error { .. })));
    assert!(
        w_store().resolve("fail:1").is_err(),
        "a failed build tags nothing"
    );
}
