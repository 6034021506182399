#!/bin/bash
# Build the end-to-end test binaries on this host and run them on real KVM:
# directly when the host has hardware virtualization, otherwise inside the
# emulated KVM host (one boot of it for the whole suite).
#
# Usage: tests/run-e2e.sh [TEST-FILTER]
# Needs: the guest kernel (resources/kernel/build.sh), the static init and
# mvm-vmm built (make build). Environment passed to the tests:
#   MVM_KERNEL, MVM_INIT, MVM_VMM, MVM_JAILER, MVM_VIRTIOFSD (the virtio-fs backend,
#   resources/virtiofsd/build.sh), MVM_VMM_SECCOMP_TRIGGER (built here: see
#   below)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

filter=${1:-}
profile_dir=${MVM_PROFILE_DIR:-debug}

export MVM_KERNEL=${MVM_KERNEL:-$(resources/kernel/build.sh --print-path)}
export MVM_INIT=${MVM_INIT:-$root/target/x86_64-unknown-linux-gnu/release/mvm-init}
export MVM_VMM=${MVM_VMM:-$root/target/$profile_dir/mvm-vmm}
export MVM_JAILER=${MVM_JAILER:-$root/target/$profile_dir/mvm-jailer}
export MVM_VIRTIOFSD=${MVM_VIRTIOFSD:-$(resources/virtiofsd/build.sh --print-path)}
for f in "$MVM_KERNEL" "$MVM_INIT" "$MVM_VMM" "$MVM_JAILER" "$MVM_VIRTIOFSD"; do
  [ -f "$f" ] || { echo "e2e: $f is missing; run 'make build kernel' first" >&2; exit 1; }
done

# test_binaries PACKAGE [TARGET]: the test executables of PACKAGE (only
# its test target TARGET, if given), from the build below. Every cargo
# command here selects the same packages as `make unit` plus mvm-e2e:
# cargo unifies dependency features over the selected packages, so a
# different selection (`-p mvm-e2e`) rebuilt about 90 crates.
test_binaries() {
  cargo test --workspace --no-run --message-format=json 2>/dev/null |
    python3 -c '
import json, sys
pkg, target = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else None)
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") != "compiler-artifact" or not m.get("executable") or not m["profile"]["test"]:
        continue
    pid = m.get("package_id", "")
    # "path+file:///.../tests#mvm-e2e@0.1.0", or ".../NAME#0.1.0" when
    # the folder is named as the package
    frag = pid.split("#")[-1]
    name = frag.split("@")[0] if "@" in frag else pid.split("#")[0].rstrip("/").split("/")[-1]
    if name == pkg and (target is None or m["target"]["name"] == target):
        print(m["executable"])
' "$@"
}

echo "e2e: building test binaries" >&2
# Build with diagnostics shown and a failure fatal: test_binaries only lists
# what was built, so a test file that fails to compile would otherwise
# silently drop out of the suite.
cargo test --workspace --no-run >&2 || { echo "e2e: the test binaries did not build" >&2; exit 1; }
# The seccomp kill test's VMM (tests/api.rs): mvm-vmm-seccomp-trigger, the
# VMM with the test-only feature `seccomp-test-trigger`, which makes a
# forbidden system call once its filter is on. A binary of its own (the
# product's mvm-vmm never carries the trigger), built with `make build`'s
# selection so that only the VMM crate itself compiles again.
trigger_release=()
[ "$profile_dir" = release ] && trigger_release=(--release)
cargo build "${trigger_release[@]}" --workspace --exclude mvm-init --exclude mvm-e2e \
  --features mvm-vmm/seccomp-test-trigger --bin mvm-vmm-seccomp-trigger >&2 ||
  { echo "e2e: the seccomp-trigger VMM did not build" >&2; exit 1; }
export MVM_VMM_SECCOMP_TRIGGER=$root/target/$profile_dir/mvm-vmm-seccomp-trigger
# The containerd shim suite runs the shim as installed: `make install`
# into a prefix under the target directory (the emulated host sees it),
# and containerd gets that prefix's bin on its PATH and none of the MVM_*
# artifact variables, so the shim finds its kernel, init, VMM, jailer and
# virtiofsd as an installed one does (tests/src/containerd.rs).
e2e_prefix=$root/target/e2e-install
rm -rf "$e2e_prefix"
make --no-print-directory -C "$root" install PREFIX="$e2e_prefix" PROFILE="$profile_dir" >/dev/null ||
  { echo "e2e: make install PREFIX=$e2e_prefix failed" >&2; exit 1; }
mapfile -t all_bins < <(test_binaries mvm-e2e)
# tests/machine.rs boots the emulated KVM host itself (`mvctl machine`),
# and tests/installed.rs uses the installed product as a user would (the
# machine where there is no hardware KVM): both run on this host, after
# the suite, never inside the emulated host.
#
# MVM_E2E_BINS="api netwire ...": only the test binaries of those names
# (a developer's subset; the filter argument selects tests inside them).
#
# Two lanes in the emulated host. netwire's tests take turns (each of its
# daemons owns the host's mvm bridges and nftables tables) and example is
# one test, so either alone leaves a vCPU idle. They and cli (whose
# daemon has the default bridge too) run one after the other, one test at
# a time, beside the binaries whose daemons have no host networking
# (`--no-network`: api, volumes) or that have no daemon at all and give
# their sandboxes no network ($network_free); the rest (shim's mvmd, net's
# own TAPs and bridges) start only when both lanes are done. The lanes
# are about as long as each other (measured: docs/architecture.md).
network_free=" agent api boot boot-vmm build fs mvm_e2e volumes vsock warm "
side_lane=" netwire example cli "
wanted=${MVM_E2E_BINS:+ $MVM_E2E_BINS }
selected() { [ -z "$wanted" ] || [[ "$wanted" == *" $1 "* ]]; }
first_bins=()
side_bins=()
later_bins=()
machine_bins=()
for b in "${all_bins[@]}"; do
  name=$(basename "$b")
  name=${name%-*}
  selected "$name" || continue
  if [[ "$name" == machine || "$name" == installed ]]; then
    machine_bins+=("$b")
  elif [[ "$side_lane" == *" $name "* ]]; then
    side_bins+=("$b")
  elif [[ "$network_free" == *" $name "* ]]; then
    first_bins+=("$b")
  else
    later_bins+=("$b")
  fi
done
# in_order "NAMES" BIN...: the BINs in the order of NAMES (then the rest).
in_order() {
  local names=$1 n b n2; shift
  for n in $names; do
    for b in "$@"; do n2=$(basename "$b") && [ "${n2%-*}" = "$n" ] && echo "$b"; done
  done
  for b in "$@"; do n2=$(basename "$b") && [[ " $names " != *" ${n2%-*} "* ]] && echo "$b"; done
  return 0
}
# Both lanes in a fixed order: cargo lists the binaries in the order they
# finished compiling, and the order decides which tests overlap. On 8 Dec
# 2026 the first lane in this order (the fresh clone's) took the L1 suites
# 1060 s; starting with boot, warm, agent and volumes, api overlapped with
# cli and the side lane stretched to 1148 s (L1 1350 s).
first_lane=" build vsock fs api warm agent mvm_e2e boot volumes "
mapfile -t first_bins < <(in_order "$first_lane" ${first_bins[@]+"${first_bins[@]}"})
mapfile -t side_bins < <(in_order "$side_lane" ${side_bins[@]+"${side_bins[@]}"})
bins=(${first_bins[@]+"${first_bins[@]}"} ${side_bins[@]+"${side_bins[@]}"} ${later_bins[@]+"${later_bins[@]}"})
# The VMM's own boot tests (busybox initramfs, no init) are #[ignore]d in
# plain `cargo test` because they need KVM; here they run.
vmm_bins=()
selected boot-vmm && mapfile -t vmm_bins < <(test_binaries mvm-vmm boot)
[ ${#bins[@]} -gt 0 ] || [ ${#vmm_bins[@]} -gt 0 ] || [ ${#machine_bins[@]} -gt 0 ] ||
  { echo "e2e: no test binaries were built${wanted:+ or selected (MVM_E2E_BINS=$MVM_E2E_BINS)}" >&2; exit 1; }

# failed_tests FILE: the names libtest lists under its last "failures:".
failed_tests() {
  awk '/^failures:$/ { n = 0; delete names; inlist = 1; next }
       inlist && /^    [^ ]+$/ { names[n++] = $1; next }
       inlist && /^test result:/ { inlist = 0 }
       END { for (i = 0; i < n; i++) print names[i] }' "$1"
}
# The job file must be visible inside the emulated host, whose /tmp is its
# own tmpfs: keep it under the target directory.
mkdir -p "$root/target"
job=$(mktemp "$root/target/mvm-e2e-job.XXXXXX")
trap 'rm -f "$job"' EXIT
# Each test binary gets its own deadline: a hang then names its binary,
# leaves a process tree and the daemons' logs behind, and the suites after
# it still run. Each binary's exit status is recorded in $state (shared
# writable with the emulated host), so that when the emulated host itself
# hangs (resources/testhost/run exits 123: a rare hang of the emulation,
# see resources/testhost/README.md) another boot runs only the binaries
# that had not finished.
# save_findings STATUS: copy this run's logs to
# ${MVM_CACHE:-/var/cache/mvm}/e2e-findings/<time>-<commit>/ when anything
# was retried, L1 was woken or booted again, or the run failed; keep the
# newest 10 such runs.
save_findings() {
  local kept
  kept=$({ grep -ho "testhost: logs kept in [^ ]*" "$state/testhost.log" 2>/dev/null || true; } | awk '{print $NF}' | sort -u)
  [ "$1" != 0 ] || [ -s "$state/retried-tests" ] || [ -e "$state/l1-failed" ] || [ -n "$kept" ] || return 0
  local base=${MVM_CACHE:-/var/cache/mvm}/e2e-findings
  local dir
  dir=$base/$(date -u +%Y%m%dT%H%M%S)-$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
  mkdir -p "$dir" || return 0
  # Best effort, file by file: this run's status is already decided.
  local f k
  for f in "$state"/*.out "$state"/*.rc "$state"/*.log "$state/retried-tests"; do
    [ ! -f "$f" ] || cp "$f" "$dir/" || true
  done
  for k in $kept; do
    [ -d "$k" ] || continue
    mkdir -p "$dir/$(basename "$k")" || continue
    for f in "$k"/console.log "$k"/l1-state*.txt "$k"/wakeups "$k"/timings; do
      [ ! -f "$f" ] || cp "$f" "$dir/$(basename "$k")/" || true
    done
  done
  { ls -1d "$base"/*/ 2>/dev/null || true; } | head -n -10 | xargs -r rm -rf
  echo "e2e: this run's logs are saved in $dir" >&2
}
bin_timeout=${MVM_E2E_BIN_TIMEOUT:-900}
state=$root/target/e2e-state
rm -rf "$state" && mkdir -p "$state"
keys=()
{
  echo '#!/bin/bash'
  echo 'set -o pipefail'
  printf 'STATE=%q\n' "$state"
  printf 'BIN_TIMEOUT=%q\n' "$bin_timeout"
  # The same definition in the job as on this host.
  declare -f failed_tests
  cat <<'EOS'
# In the emulated host, output goes to a file in the shared state dir, which
# this script follows on the host: the virtio-serial path of the job's
# stdout/stderr has been seen to stall for good after a burst of output (a
# failing test's backtraces and logs), which then blocked every test.
if [ -n "${MVM_TESTHOST:-}" ]; then
  exec >>"$STATE/output.log" 2>&1
fi
status=0
( while sleep 120; do echo "e2e: up $(cut -d" " -f1 /proc/uptime) s, load $(cut -d" " -f1-3 /proc/loadavg)" >&2; done ) &
heartbeat=$!
# retry_failed_tests KEY BIN ARGS...: run each failed test of KEY's last
# run once more, alone; succeed iff every one passes.
retry_failed_tests() {
  local key=$1 bin=$2; shift 2
  local extra=() a t names
  for a in "$@"; do [ "$a" = --include-ignored ] && extra+=(--include-ignored); done
  mapfile -t names < <(failed_tests "$STATE/$key.out")
  [ ${#names[@]} -gt 0 ] && [ ${#names[@]} -le 3 ] || return 1
  for t in "${names[@]}"; do
    echo "=== $key: $t failed; running it once more on its own" >&2
    timeout -k 10 "$BIN_TIMEOUT" "$bin" "${extra[@]}" --exact "$t" --test-threads=1 || return 1
    echo "$key: $t" >>"$STATE/retried-tests"
  done
}
# kill_orphans: SIGKILL every mvm-vmm and mvmd whose parent is 1, or whose
# parent is such an mvmd, looking for 10 s (an mvmd may take that long to
# end on its SIGTERM, and its VMMs become orphans only then).
kill_orphans() {
  local i p pp
  for i in $(seq 10); do
    for p in $(pgrep -x mvmd; pgrep -x mvm-vmm); do
      # Not a zombie already killed (its parent reaps it in its time).
      case "$(ps -o stat= -p "$p" 2>/dev/null)" in Z*|'') continue ;; esac
      pp=$(ps -o ppid= -p "$p" 2>/dev/null | tr -d ' ')
      if [ "$pp" = 1 ] || { [ -n "$pp" ] && [ "$(ps -o comm= -p "$pp" 2>/dev/null)" = mvmd ] &&
        [ "$(ps -o ppid= -p "$pp" 2>/dev/null | tr -d ' ')" = 1 ]; }; then
        echo "e2e: killing left-over $(ps -o comm= -p "$p" 2>/dev/null) $p" >&2
        kill -KILL "$p" 2>/dev/null || true
      fi
    done
    sleep 1
  done
}
# run_bin KEY ARGS...: run one test binary under its deadline, once.
run_bin() {
  local key=$1; shift
  if [ -e "$STATE/$key.rc" ]; then
    local prev
    prev=$(cat "$STATE/$key.rc")
    # A binary that ran out of time in the first boot (or was cut short
    # when L1 itself failed) gets one more run: the emulated host's faults
    # also reach the nested microVMs (seen: a guest that stops making
    # progress). Test failures were retried test by test already, unless
    # that boot's L1 failed: then they may have come from its crawl too.
    if [ "$prev" != 0 ] && { [ "$prev" != 101 ] || [ -e "$STATE/l1-failed" ]; } &&
      [ ! -e "$STATE/$key.retried" ]; then
      touch "$STATE/$key.retried"
      echo "=== $key: failed in an earlier boot (exit $prev); running it again" >&2
    else
      echo "=== $key: done in an earlier boot (exit $prev)" >&2
      return
    fi
  fi
  echo "=== $key" >&2
  local rc=0
  # Each test's duration in the log ("test x ... ok <12.345s>"): libtest's
  # --report-time, unstable, allowed on a stable toolchain's test binary by
  # RUSTC_BOOTSTRAP; it says where the suite's time goes.
  RUSTC_BOOTSTRAP=1 timeout -k 10 "$BIN_TIMEOUT" "$@" -Zunstable-options --report-time 2>&1 | tee "$STATE/$key.out" || rc=$?
  # In the emulated host, each test that failed runs once more on its
  # own: its faults (guests whose vCPU triple-faults during boot under
  # TCG's nested SVM) are rare and random, a real bug fails twice. Both
  # runs' output stays in the log, and the retried tests are named at
  # the end. On hardware KVM nothing is retried.
  if [ "$rc" = 101 ] && [ -n "${MVM_TESTHOST:-}" ]; then
    retry_failed_tests "$key" "$@" && rc=0
  fi
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    echo "e2e: $key did not finish within $BIN_TIMEOUT s; processes:" >&2
    ps -eo pid,ppid,etimes,stat,wchan:24,args --forest | grep -v ' \[' | cut -c1-240 >&2
    for f in /tmp/*-e2e-*/mvmd.log; do
      [ -f "$f" ] && { echo "--- tail of $f" >&2; tail -n 40 "$f" >&2; }
    done
    # The guests still running: where each one is (kernel and init lines).
    for p in $(pgrep -x mvm-vmm); do
      local dir
      # Its sandbox dir holds its --config file.
      dir=$(tr '\0' '\n' <"/proc/$p/cmdline" 2>/dev/null | sed -n '/^--config$/{n;p;q}')
      [ -n "$dir" ] || continue
      dir=$(dirname "$dir")
      for f in "$dir/console.log" "$dir/vmm.log"; do
        [ -f "$f" ] && { echo "--- VMM $p: tail of $f" >&2; tail -n 15 "$f" >&2; }
      done
    done
    # VMMs outlive their mvmd by design; the next binary starts clean.
    # Only this binary's: its mvmds got SIGTERM when it died (their
    # PDEATHSIG) and the rest of its tree went with it, so its VMMs and
    # any mvmd still ending are orphans (parent 1). The other lane's
    # VMMs still have their mvmd or their test process as parent (both
    # are child subreapers), and its tests go on.
    kill_orphans
  fi
  echo "$rc" >"$STATE/$key.rc"
  [ "$rc" = 0 ] || status=1
}
EOS
  # The side lane (see above): in the background from the start, its
  # output in its own log, shown when it is joined. One test thread:
  # netwire's tests run one at a time either way, and with the other
  # lane's two that is one test more than L1 has vCPUs, not two.
  side_keys=()
  if [ ${#side_bins[@]} -gt 0 ]; then
    echo '{'
    for b in "${side_bins[@]}"; do
      printf '  run_bin %q %q --test-threads=1 %s\n' "$(basename "$b")" "$b" "$filter"
      keys+=("$(basename "$b")") && side_keys+=("$(basename "$b")")
    done
    echo '} >"$STATE/side-lane.log" 2>&1 &'
    echo 'side_lane=$!'
    printf 'echo "e2e: %s run beside the binaries without host networking; their output follows when they end" >&2\n' "${side_keys[*]}"
  fi
  for b in ${first_bins[@]+"${first_bins[@]}"}; do
    # Two test threads: the emulated host has two vCPUs.
    printf 'run_bin %q %q --test-threads=2 %s\n' "$(basename "$b")" "$b" "$filter"
    keys+=("$(basename "$b")")
  done
  # libtest refuses a flag given twice ("Option 'include-ignored' given
  # more than once", exit 101): a filter that has it already (to run
  # ignored tests of the other binaries) must not get it again here.
  vmm_ignored=--include-ignored
  case " $filter " in *" --include-ignored "*) vmm_ignored= ;; esac
  for b in ${vmm_bins[@]+"${vmm_bins[@]}"}; do
    printf 'run_bin %q %q %s --test-threads=2 %s\n' "$(basename "$b")-vmm" "$b" "$vmm_ignored" "$filter"
    keys+=("$(basename "$b")-vmm")
  done
  if [ ${#side_keys[@]} -gt 0 ]; then
    # The join: the side lane's status is in its binaries' rc files.
    echo 'wait "$side_lane"'
    echo 'cat "$STATE/side-lane.log"'
    for k in "${side_keys[@]}"; do
      printf '[ "$(cat "$STATE/%s.rc" 2>/dev/null)" = 0 ] || status=1\n' "$k"
    done
  fi
  for b in ${later_bins[@]+"${later_bins[@]}"}; do
    printf 'run_bin %q %q --test-threads=2 %s\n' "$(basename "$b")" "$b" "$filter"
    keys+=("$(basename "$b")")
  done
  echo 'kill "$heartbeat" 2>/dev/null'
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
  : >"$state/output.log"
  tail -n +1 -F "$state/output.log" 2>/dev/null &
  follower=$!
  budget=${MVM_E2E_TIMEOUT:-3000}
  deadline=$((SECONDS + budget))
  for boot in 1 2 3; do
    rc=0
    resources/testhost/run --timeout $((deadline - SECONDS)) --rw "$state" \
      --env MVM_KERNEL --env MVM_INIT --env MVM_VMM --env MVM_JAILER --env MVM_VIRTIOFSD --env MVM_VMM_SECCOMP_TRIGGER --env RUST_BACKTRACE -- "$job" \
      2> >(tee -a "$state/testhost.log" >&2) || rc=$?
    # Another boot: after a fault of the emulated host itself (123; a
    # third boot only for that), or when a binary ran out of time in the
    # first (see run_bin).
    retry=0
    [ "$rc" = 123 ] && retry=1 && touch "$state/l1-failed"
    [ "$boot" = 1 ] && grep -qx -e 124 -e 137 "$state"/*.rc 2>/dev/null && retry=1
    if [ "$retry" = 1 ] && [ "$boot" -lt 3 ] && [ $((deadline - SECONDS)) -gt 600 ]; then
      echo "e2e: booting the emulated host again for the test binaries that did not finish (see above)" >&2
      continue
    fi
    status=$rc
    break
  done
  sleep 1
  kill "$follower" 2>/dev/null
fi
if [ -s "$state/retried-tests" ]; then
  echo "e2e: these tests failed once in the emulated host and passed when run again (see their first output above):" >&2
  sed 's/^/  /' "$state/retried-tests" >&2
fi
if grep -q "heartbeat is back" "$state/testhost.log" 2>/dev/null; then
  echo "e2e: the emulated host lost a wake-up and was woken (an emulation fault, resources/testhost/README.md):" >&2
  grep "heartbeat is back" "$state/testhost.log" | sed 's/^/  /' >&2
fi
# Every binary must have run and passed, whatever the boots said.
for k in "${keys[@]}"; do
  rc=$(cat "$state/$k.rc" 2>/dev/null || echo missing)
  case "$rc" in
  0) ;;
  missing) echo "e2e: $k did not run to the end" >&2 && status=1 ;;
  *) echo "e2e: $k failed (exit $rc)" >&2 && status=1 ;;
  esac
done

if [ ${#machine_bins[@]} -gt 0 ]; then
  # The machine test drives the real mvctl, which starts the real mvmd.
  release=()
  [ "$profile_dir" = release ] && release=(--release)
  # The same selection as `make build`: nothing is rebuilt.
  cargo build "${release[@]}" --workspace --exclude mvm-init --exclude mvm-e2e >&2 || exit 1
  for b in "${machine_bins[@]}"; do
    key=$(basename "$b")
    echo "=== $key (on this host: it boots the emulated KVM host itself)" >&2
    rc=0
    # --nocapture: each mvctl command's transcript and duration stays in
    # the log, passed or not (these tests are few and long; the log says
    # where their minutes go).
    # The filter word-split, as the job in the emulated host gives it to
    # the other binaries ("cli api --include-ignored" is three arguments).
    # shellcheck disable=SC2086
    "$b" --test-threads=1 --nocapture $filter 2>&1 | tee "$state/$key.out" || rc=$?
    # The machine's watcher reports an L1 that stopped answering (the
    # emulation's own fault, resources/testhost/README.md): a test that
    # failed while that happened runs once more, alone, and is named at
    # the end. Any other failure stands.
    if [ "$rc" != 0 ] && grep -q "L1 stalled: no heartbeat" "$state/$key.out"; then
      mapfile -t names < <(failed_tests "$state/$key.out")
      if [ ${#names[@]} -gt 0 ] && [ ${#names[@]} -le 2 ]; then
        rc=0
        for t in "${names[@]}"; do
          echo "=== $key: $t failed while the machine's L1 stalled; running it once more on its own" >&2
          "$b" --exact "$t" --test-threads=1 || rc=1
          echo "$key: $t (L1 stalled)" >>"$state/retried-tests"
        done
      fi
    fi
    [ "$rc" = 0 ] || status=1
  done
  if [ -s "$state/retried-tests" ]; then
    echo "e2e: tests retried after an emulation fault (see their first output above):" >&2
    sed 's/^/  /' "$state/retried-tests" >&2
  fi
fi
# Findings outlive the clone: a run that retried a test, woke or rebooted
# L1, or failed leaves its logs under the cache (CI's clone is deleted,
# and a retried test passes, so nothing else keeps them).
save_findings "$status"
exit "$status"
