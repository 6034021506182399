//! `mvm-vmm-seccomp-trigger`: mvm-vmm built with the test-only feature
//! `seccomp-test-trigger` (see `seccomp::trigger`), for the e2e test that
//! proves the seccomp filter kills. A binary of its own, so that a build
//! with the feature never replaces the product's `mvm-vmm`, and in the
//! shared target directory, so that it costs one crate's compile and not a
//! second build of the VMM's dependencies (tests/run-e2e.sh).

fn main() {
    let start = std::time::Instant::now();
    let code = mvm_vmm::cli::main_with_args(std::env::args_os(), start);
    std::process::exit(code);
}
