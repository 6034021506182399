//! `make demo`: boot a microVM from an ext4 busybox root disk and run a
//! command in it, printing its output. Run through `resources/demo.sh`, which
//! builds everything and picks native KVM or the emulated KVM host.

use mvm_e2e::Vm;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let script = if args.is_empty() {
        "echo \"Hello from a microVM: $(uname -sr), $(nproc) vCPUs, $(grep MemTotal /proc/meminfo)\"".to_string()
    } else {
        args.join(" ")
    };
    let mut vm = Vm::new(&["/bin/sh", "-c", &script]);
    vm.vcpus = 2;
    vm.memory_mib = 256;
    let out = vm.run();
    print!("{}", out.console);
    let status = out.status.as_ref();
    eprintln!(
        "demo: mvm-vmm exited {:?}; guest {}; workload {}; boot to init {} ms; total {:?}",
        out.code(),
        status.map(|s| s.guest.as_str()).unwrap_or("?"),
        status
            .and_then(|s| s.workload.as_ref())
            .map(|w| serde_json::to_string(w).unwrap_or_default())
            .unwrap_or("-".into()),
        status
            .and_then(|s| s.boot_time_us)
            .map(|t| format!("{:.1}", t as f64 / 1000.0))
            .unwrap_or("?".into()),
        out.elapsed,
    );
    std::process::exit(out.code().unwrap_or(1));
}
