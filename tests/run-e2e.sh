#!/bin/bash
# Build the end-to-end test binaries on this host and run them on real KVM:
# directly when the host has hardware virtualization, otherwise inside the
# emulated KVM host (one boot of it for the whole suite).
#
# Usage: tests/run-e2e.sh [TEST-FILTER]
# Needs: the guest kernel (resources/kernel/build.sh), the static init and
# mvm-vmm built (make build). Environment passed to the tests:
#   MVM_KERNEL, MVM_INIT, MVM_VMM
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

filter=${1:-}
profile_dir=${MVM_PROFILE_DIR:-debug}

export MVM_KERNEL=${MVM_KERNEL:-$(resources/kernel/build.sh --print-path)}
export MVM_INIT=${MVM_INIT:-$root/target/x86_64-unknown-linux-gnu/release/mvm-init}
export MVM_VMM=${MVM_VMM:-$root/target/$profile_dir/mvm-vmm}
for f in "$MVM_KERNEL" "$MVM_INIT" "$MVM_VMM"; do
  [ -f "$f" ] || { echo "e2e: $f is missing; run 'make build kernel' first" >&2; exit 1; }
done

# test_binaries CARGO-ARGS...: build test binaries and print their paths.
test_binaries() {
  cargo test "$@" --no-run --message-format=json 2>/dev/null |
    python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["executable"])
'
}

echo "e2e: building test binaries" >&2
# Build with diagnostics shown and a failure fatal: test_binaries only lists
# what was built, so a test file that fails to compile would otherwise
# silently drop out of the suite.
cargo test -p mvm-e2e --no-run >&2 || { echo "e2e: the test binaries did not build" >&2; exit 1; }
cargo test -p mvm-vmm --test boot --no-run >&2 || { echo "e2e: mvm-vmm's boot tests did not build" >&2; exit 1; }
mapfile -t all_bins < <(test_binaries -p mvm-e2e)
# tests/machine.rs boots the emulated KVM host itself (`mvctl machine`):
# it runs on this host, after the suite, never inside the emulated host.
bins=()
machine_bins=()
for b in "${all_bins[@]}"; do
  case "$(basename "$b")" in
    machine-*) machine_bins+=("$b") ;;
    *) bins+=("$b") ;;
  esac
done
# The VMM's own boot tests (busybox initramfs, no init) are #[ignore]d in
# plain `cargo test` because they need KVM; here they run.
mapfile -t vmm_bins < <(test_binaries -p mvm-vmm --test boot)
[ ${#bins[@]} -gt 0 ] || { echo "e2e: no test binaries were built" >&2; exit 1; }

# The job file must be visible inside the emulated host, whose /tmp is its
# own tmpfs: keep it under the target directory.
mkdir -p "$root/target"
job=$(mktemp "$root/target/mvm-e2e-job.XXXXXX")
trap 'rm -f "$job"' EXIT
{
  echo '#!/bin/sh'
  echo 'status=0'
  for b in "${bins[@]}"; do
    printf 'echo "=== %s" >&2\n' "$(basename "$b")"
    # Two test threads: the emulated host has two vCPUs.
    printf '"%s" --test-threads=2 %s || status=1\n' "$b" "$filter"
  done
  for b in "${vmm_bins[@]}"; do
    printf 'echo "=== %s (vmm)" >&2\n' "$(basename "$b")"
    printf '"%s" --include-ignored --test-threads=2 %s || status=1\n' "$b" "$filter"
  done
  echo 'exit $status'
} > "$job"
chmod +x "$job"

mode=$(resources/testhost/run --check 2>/dev/null || true)
status=0
if [ "$mode" = hardware ]; then
  echo "e2e: hardware KVM here; running natively" >&2
  "$job" || status=$?
else
  echo "e2e: no hardware KVM here ($mode); running inside the emulated KVM host" >&2
  resources/testhost/run --timeout "${MVM_E2E_TIMEOUT:-2400}" \
    --env MVM_KERNEL --env MVM_INIT --env MVM_VMM --env RUST_BACKTRACE -- "$job" || status=$?
fi

if [ ${#machine_bins[@]} -gt 0 ]; then
  # The machine test drives the real mvctl, which starts the real mvmd.
  release=()
  [ "$profile_dir" = release ] && release=(--release)
  cargo build "${release[@]}" -p mvctl -p mvmd >&2 || exit 1
  for b in "${machine_bins[@]}"; do
    echo "=== $(basename "$b") (on this host: it boots the emulated KVM host itself)" >&2
    "$b" --test-threads=1 ${filter:+"$filter"} || status=1
  done
fi
exit "$status"
