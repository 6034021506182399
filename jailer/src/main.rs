//! `mvm-jailer`: see the library crate (`mvm_jailer`). Prints the jailed
//! VMM's pid on stdout; on failure the reason, on stdout (for the runtime)
//! and stderr (the VMM's log), and exits 1.

use clap::Parser;

fn main() {
    let spec = mvm_jailer::JailSpec::parse();
    match mvm_jailer::launch(&spec) {
        Ok(pid) => {
            println!("{pid}");
            if spec.die_with_parent {
                use std::io::Write;
                let _ = std::io::stdout().flush();
                mvm_jailer::end_like(mvm_jailer::stay_with(pid));
            }
        }
        Err(e) => {
            println!("{e}");
            eprintln!("mvm-jailer: {e}");
            #[allow(clippy::exit)]
            std::process::exit(1);
        }
    }
}
