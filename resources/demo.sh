#!/bin/bash
# make demo: boot a microVM that runs a command from an ext4 root disk.
# Runs natively on hardware KVM, otherwise inside the emulated KVM host.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
export MVM_KERNEL=$(resources/kernel/build.sh --print-path)
export MVM_INIT=$root/target/x86_64-unknown-linux-gnu/release/mvm-init
export MVM_VMM=$root/target/debug/mvm-vmm
cargo build -q -p mvm-e2e --example demo
demo=$root/target/debug/examples/demo
mode=$(resources/testhost/run --check 2>/dev/null || true)
if [ "$mode" = hardware ]; then
  exec "$demo" "$@"
fi
echo "demo: this host's KVM is '$mode', not hardware virtualization; booting the emulated KVM host first (a few seconds)" >&2
exec resources/testhost/run --timeout 600 --env MVM_KERNEL --env MVM_INIT --env MVM_VMM -- "$demo" "$@"
