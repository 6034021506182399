//! `containerd-shim-mvm-v1`: containerd's runtime v2 shim (task API v2,
//! containerd 1.6/1.7) running each container as an mvm microVM.
//!
//! Built on the `containerd-shim` crate (0.11, the last to speak task API
//! v2) for the shim protocol: the `start`/`delete` actions, the ttrpc
//! server, event publishing, logging. The container itself goes through
//! mvm-runtime ([`service`]), the library mvmd uses.
//!
//! The tokio runtime is single-threaded on purpose: the VMM is killed by
//! the kernel when the thread that spawned it ends
//! (`PR_SET_PDEATHSIG`), so it must be spawned from a thread that lives
//! as long as the shim.
//!
//! The crate's own reaper is off (`Config::no_reaper`): by default its
//! SIGCHLD handler reaps every child with `waitpid(-1)`, which takes the
//! wait status of the jailer (or VMM) before mvm-runtime reaps it by pid,
//! so a VMM killed by its seccomp filter, or by any signal, ended the
//! task as a VMM that died without a status; it also raced the `mount`
//! and `umount` commands' own waits. Every child of the shim is reaped
//! by whoever started it: mvm-runtime by pid (`Transient::wait`), std's
//! `Command` for the tools.

mod bundle;
mod rootfs;
mod service;
mod stdio;

use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim::asynchronous::util::write_str_to_file;
use containerd_shim::asynchronous::{run, spawn, ExitSignal, Shim};
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{api, Config, Error, Flags, StartOpts};

/// The runtime name containerd knows this shim by.
const RUNTIME_ID: &str = "io.containerd.mvm.v1";

struct MvmShim {
    exit: Arc<ExitSignal>,
    namespace: String,
    bundle: std::path::PathBuf,
}

#[async_trait]
impl Shim for MvmShim {
    type T = service::TaskService;

    async fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        let bundle = if args.bundle.is_empty() {
            std::env::current_dir().unwrap_or_default()
        } else {
            args.bundle.clone().into()
        };
        MvmShim {
            exit: Arc::new(ExitSignal::default()),
            namespace: args.namespace.clone(),
            bundle,
        }
    }

    async fn start_shim(&mut self, opts: StartOpts) -> Result<String, Error> {
        // One shim per container.
        let grouping = opts.id.clone();
        let address = spawn(opts, &grouping, Vec::new()).await?;
        // containerd finds a running shim again after its own restart by
        // the bundle's `address` file (runtime v2's `loadShim`); without
        // it a restarted containerd treats the shim as dead and runs
        // `delete`, which ends the task. The crate's `spawn` leaves
        // writing it to the shim, as runc's shim does.
        write_str_to_file("address", &address).await?;
        Ok(address)
    }

    async fn delete_shim(&mut self) -> Result<api::DeleteResponse, Error> {
        service::delete_leftovers(&self.bundle);
        Ok(api::DeleteResponse {
            // The shim died: its VMM died with it, as if SIGKILLed.
            exit_status: 128 + libc::SIGKILL as u32,
            exited_at: Some(containerd_shim::util::timestamp()?).into(),
            ..Default::default()
        })
    }

    async fn wait(&mut self) {
        self.exit.wait().await;
    }

    async fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        service::TaskService(service::Service::new(
            self.namespace.clone(),
            self.exit.clone(),
            publisher,
        ))
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let config = Config {
        no_reaper: true,
        ..Default::default()
    };
    run::<MvmShim>(RUNTIME_ID, Some(config)).await;
    log::info!("the shim ends");
    // Not a return: dropping the runtime would wait for blocking tasks,
    // such as the open of a stdin FIFO whose writer never came.
    std::process::exit(0);
}
