//! Builds a Dockerfile straight into mvm's state, without mvmd:
//! `mvm-build [--root DIR] [-f FILE] [-t NAME]... [--build-arg K=V]...
//! [--target STAGE] [--no-cache] CONTEXT-DIR`. `--root` is the state root
//! (`MVM_ROOT`, default /var/lib/mvm; its `images/` is the store). RUN
//! steps boot transient sandboxes through mvm-runtime, which finds the
//! kernel, init and VMM as mvmd does (`MVM_KERNEL`, `MVM_INIT`, `MVM_VMM`,
//! then the install prefix and the build tree). Prints timings at the end
//! (used for the benchmark figures in the crate README).

use std::path::PathBuf;

use mvm_builder::context::Context;
use mvm_builder::progress::Plain;
use mvm_builder::vm::RuntimeExecutor;
use mvm_builder::{BuildOptions, Builder};
use mvm_runtime::{Layout, Runtime, RuntimeConfig};

fn main() {
    if let Err(e) = run() {
        eprintln!("mvm-build: error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut root = None;
    let mut opts = BuildOptions::default();
    let mut context = None;
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--root" => root = Some(PathBuf::from(val()?)),
            "-f" => opts.dockerfile = Some(val()?),
            "-t" => opts.tags.push(val()?),
            "--target" => opts.target = Some(val()?),
            "--no-cache" => opts.no_cache = true,
            "--build-arg" | "--label" => {
                let v = val()?;
                let (k, v) = v.split_once('=').ok_or("use KEY=VALUE")?;
                let m = if a == "--label" {
                    &mut opts.labels
                } else {
                    &mut opts.build_args
                };
                m.insert(k.into(), v.into());
            }
            _ if context.is_none() && !a.starts_with('-') => context = Some(PathBuf::from(a)),
            _ => return Err(format!("unexpected argument {a}").into()),
        }
    }
    let context = context.ok_or("usage: mvm-build [options] CONTEXT-DIR")?;
    let mut cfg = RuntimeConfig::from_env(Default::default())?;
    if let Some(r) = root {
        cfg.layout = Layout::new(r, cfg.layout.run_dir.clone());
    }
    let runtime = Runtime::new(cfg)?;
    let store = runtime.store().clone();
    let exec = RuntimeExecutor::new(runtime);
    let out = Plain::new(std::io::stderr());
    let builder = Builder::new(store, Some(&exec), &out)?;
    let ctx = Context::from_dir(&context)?;
    let r = builder.build(&ctx, &opts)?;
    println!("{}", r.id);
    eprintln!(
        "build: {:.3}s, {} steps, {} cached, {} RUN VMs: boot {:.1}s, command {:.1}s, layer {:.1}s",
        r.elapsed.as_secs_f64(),
        r.steps,
        r.cached,
        r.runs,
        r.vm_boot.as_secs_f64(),
        r.vm_run.as_secs_f64(),
        r.vm_commit.as_secs_f64()
    );
    Ok(())
}
