//! `mvm-vmm`: see the library crate (`mvm_vmm`) and vmm/README.md.

fn main() {
    let start = std::time::Instant::now();
    let code = mvm_vmm::cli::main_with_args(std::env::args_os(), start);
    std::process::exit(code);
}
