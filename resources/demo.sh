#!/bin/bash
# make demo: run a real image through mvctl, as a user would:
#   1. build a busybox root filesystem (resources/images/busybox.sh, cached)
#   2. `mvctl import` it as busybox:latest
#   3. `mvctl run --rm busybox echo hello`
# mvctl finds (or starts) mvmd by itself: natively on hardware KVM, else in
# the mvm machine (mvmd inside the emulated KVM host, `mvctl machine`).
# A machine this script had to start is stopped at the end, unless
# --keep is given (then `mvctl machine stop` stops it).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

keep=0
case "${1:-}" in
  --keep) keep=1 ;;
  "") ;;
  *) echo "usage: $0 [--keep]" >&2; exit 2 ;;
esac

t0=$(date +%s.%N)
since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
say() { echo "demo [$(since "$t0") s]: $*" >&2; }

# What mvmd boots: the guest kernel, the static init, the VMM (make build).
export MVM_KERNEL=${MVM_KERNEL:-$(resources/kernel/build.sh --print-path)}
export MVM_INIT=${MVM_INIT:-$root/target/x86_64-unknown-linux-gnu/release/mvm-init}
# MVM_BIN_DIR: where mvctl, mvmd and mvm-vmm are (make build: target/debug).
bin=${MVM_BIN_DIR:-$root/target/debug}
export MVM_VMM=${MVM_VMM:-$bin/mvm-vmm}
mvctl=$bin/mvctl
for f in "$MVM_KERNEL" "$MVM_INIT" "$MVM_VMM" "$mvctl" "$bin/mvmd"; do
  [ -f "$f" ] || { echo "demo: $f is missing; run 'make build kernel' first" >&2; exit 1; }
done

mode=$(resources/testhost/run --check 2>/dev/null || true)
machine_was_running=1
if [ "$mode" = hardware ]; then
  say "hardware KVM here: mvctl talks to (or starts) mvmd natively"
else
  say "this host's KVM is '$mode', not hardware virtualization: mvmd runs in the mvm machine (QEMU TCG with nested KVM)"
  if "$mvctl" machine status 2>/dev/null | head -1 | grep -q running; then
    say "the mvm machine is already running; using it"
  else
    machine_was_running=0
  fi
fi

say "building the busybox root filesystem (cached after the first time)"
tarball=$(resources/images/busybox.sh)
say "importing $tarball as busybox:latest"
"$mvctl" import "$tarball" busybox:latest >/dev/null
say "mvctl images:"
"$mvctl" images >&2

say "mvctl run --rm busybox echo hello"
t_run=$(date +%s.%N)
"$mvctl" run --rm busybox echo hello
say "the run took $(since "$t_run") s"

if [ "$machine_was_running" -eq 0 ]; then
  if [ "$keep" -eq 1 ]; then
    say "the mvm machine keeps running (--keep); 'mvctl machine stop' stops it"
  else
    say "stopping the mvm machine this demo started (--keep keeps it running)"
    "$mvctl" machine stop >&2
  fi
fi
say "done"
