//! PID 1 inside every mvm guest; see the `mvm_init` library and README.md.

fn main() {
    mvm_init::init::main()
}
