#!/bin/bash
# A fixed storm for the emulated KVM host ("L1", resources/testhost/):
# ten microVMs booted at once through mvctl and mvmd, repeated, to measure
# how often L1 itself (or a nested guest) fails under a given QEMU/kernel
# setup. The numbers in resources/testhost/README.md ("Reliability") come
# from this script.
#
# Usage:
#   tests/storm.sh [--rounds N] [--sessions S] [--first K] [--out DIR] SETUP...
#     Runs S sessions of each SETUP, interleaved (A B C A B C ...: the host
#     is shared and its load drifts, so no setup gets all the quiet hours),
#     each session one L1 boot running N rounds, then prints a table.
#     --first K numbers the sessions from K, to add to an earlier --out.
#   tests/storm.sh --summary DIR      the table of an earlier run
#   tests/storm.sh --in-l1 N          the job inside L1 (run by the above)
#
# Setups (a name, or NAME=VAR=VALUE,VAR=VALUE[,--cpus=N] for another):
#   mt2    QEMU 7.2, multi-threaded TCG, 2 vCPUs (the setup before this
#          measurement)
#   st2    single-threaded TCG (-accel tcg,thread=single), 2 vCPUs
#   mt1    multi-threaded TCG, 1 vCPU
#   q10    QEMU 10 from bookworm-backports, unpacked in $MVM_QEMU10
#          (default /opt/mvm-l1/qemu10 by resources/testhost/backports.sh),
#          L1's KVM on nested paging (kvm_amd.npt=1), otherwise as mt2
#   q10s   QEMU 10 with shadow paging (kvm_amd.npt=0), as mt2: every nested
#          guest triple-faults in its decompressor, because QEMU 10's TCG
#          checks every MOV from CRn against the CR0-read intercept, so a
#          CR3 read that L1's KVM intercepts returns the shadow CR3
#          (resources/testhost/README.md, "Reliability")
#   k612   L1 on Debian's 6.12 kernel from bookworm-backports, unpacked in
#          $MVM_L1_KERNEL_ROOT (default /opt/mvm-l1/linux-6.12 by
#          backports.sh), as mt2
#
# What counts, per session:
#   guest  a `mvctl run` that failed or printed the wrong thing (a nested
#          guest's triple fault, a hang past $RUN_TIMEOUT s (default 200;
#          a round takes 50-100 s), ...); the storm goes on
#   frozen / stuck / died   L1 itself failed (resources/testhost/run exit
#          123: no heartbeat, a soft-locked vCPU, L1's kernel died); the
#          session ends there
#   boot   L1 did not start the job (exit 125)
# Needs: make build, the guest kernel, resources/images/busybox.sh; for q10,
# q10s and k612, resources/testhost/backports.sh first.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD

# --- inside L1 -----------------------------------------------------------------
in_l1() {
    local rounds=$1 out=$MVM_TESTHOST_OUT
    local work=/tmp/storm bin=$STORM_BIN
    mkdir -p "$work"
    "$bin/mvmd" --root "$work/root" --run-dir "$work/run" --kernel "$MVM_KERNEL" --init "$MVM_INIT" \
        --vmm "$bin/mvm-vmm" >"$out/mvmd.log" 2>&1 &
    local mvmd_pid=$!
    # -H: an mvctl that finds nothing there must not start a daemon itself.
    local mvctl=("$bin/mvctl" -H "unix://$work/run/mvmd.sock")
    # Poll until mvmd answers (bounded; it has no readiness signal to wait on).
    local i
    for i in $(seq 600); do
        "${mvctl[@]}" version >/dev/null 2>&1 && break
        sleep 0.1
    done
    "${mvctl[@]}" import "$BUSYBOX_TAR" busybox >/dev/null || { echo "storm: import failed" >&2; return 1; }
    local r t0 t1 ok fail rc text
    for r in $(seq "$rounds"); do
        t0=$(date +%s.%N)
        local pids=()
        for i in $(seq 0 9); do
            (
                timeout -k 10 "$RUN_TIMEOUT" "${mvctl[@]}" run --rm busybox sh -c "echo from-$i" >"$work/out.$i" 2>"$work/err.$i"
                echo $? >"$work/rc.$i"
            ) &
            pids+=($!)
        done
        # These ten only: a bare `wait` would also wait for mvmd.
        wait "${pids[@]}"
        t1=$(date +%s.%N)
        ok=0
        fail=0
        for i in $(seq 0 9); do
            rc=$(cat "$work/rc.$i")
            text=$(cat "$work/out.$i")
            if [ "$rc" = 0 ] && [ "$text" = "from-$i" ]; then
                ok=$((ok + 1))
            else
                fail=$((fail + 1))
                echo "round=$r vm=$i rc=$rc out=$(head -c 200 "$work/out.$i" | tr '\n' ' ') err=$(tail -n 3 "$work/err.$i" | tr '\n' ' ')" >>"$out/failures"
            fi
        done
        if [ "$fail" -ne 0 ]; then
            # Leftovers of a hung run (timeout killed mvctl, not the
            # sandbox): keep their consoles and VMM logs, then remove them.
            for d in "$work"/root/sandboxes/*/; do
                [ -d "$d" ] || continue
                cp "$d/console.log" "$out/round$r-$(basename "$d" | cut -c1-12).console.log" 2>/dev/null
                cp "$d/vmm.log" "$out/round$r-$(basename "$d" | cut -c1-12).vmm.log" 2>/dev/null
            done
            "${mvctl[@]}" ps -aq | xargs -r "${mvctl[@]}" rm -f >/dev/null 2>&1
        fi
        echo "round=$r ok=$ok fail=$fail secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }') l1load=$(cut -d' ' -f1 /proc/loadavg)" >>"$out/rounds"
        sync
    done
    kill "$mvmd_pid" 2>/dev/null
    wait "$mvmd_pid"
    return 0
}

if [ "${1:-}" = --in-l1 ]; then
    in_l1 "$2"
    exit $?
fi

# --- host side -------------------------------------------------------------------
rounds=5
sessions=3
first=1
outdir=
summary_only=
setups=()
while [ $# -gt 0 ]; do
    case "$1" in
    --rounds) rounds=$2 && shift 2 ;;
    --sessions) sessions=$2 && shift 2 ;;
    --first) first=$2 && shift 2 ;;
    --out) outdir=$2 && shift 2 ;;
    --summary) summary_only=$2 && shift 2 ;;
    -h | --help) sed -n '2,/^set -uo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//' && exit 0 ;;
    -*) echo "storm: unknown option $1" >&2 && exit 2 ;;
    *) setups+=("$1") && shift ;;
    esac
done

# summary DIR: one line per setup from the sessions' result files.
summary() {
    printf '%-6s %8s %6s %6s %6s %6s %5s %5s %11s %9s\n' setup sessions rounds guest frozen stuck died boot "s/round" "host load"
    local s
    for s in $(cat "$1"/*/setup 2>/dev/null | sort -u); do
        awk -v setup="$s" '
            FNR == 1 { file++ }
            { for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] } }
            v["setup"] == setup {
                n++; rounds += v["rounds"]; guest += v["guest"]; boot += (v["fault"] == "boot")
                frozen += (v["fault"] == "frozen"); stuck += (v["fault"] == "stuck"); died += (v["fault"] == "died")
                secs += v["secs"]; load += v["load"]
            }
            END {
                printf "%-6s %8d %6d %6d %6d %6d %5d %5d %11s %9.1f\n", setup, n, rounds, guest, frozen, stuck, died, boot,
                    (rounds ? sprintf("%.1f", secs / rounds) : "-"), (n ? load / n : 0)
            }' "$1"/*/result
    done
}

if [ -n "$summary_only" ]; then
    summary "$summary_only"
    exit 0
fi
[ ${#setups[@]} -gt 0 ] || { echo "storm: name at least one setup (see --help)" >&2 && exit 2; }

MVM_KERNEL=${MVM_KERNEL:-$(resources/kernel/build.sh --print-path)}
MVM_INIT=${MVM_INIT:-$root/target/x86_64-unknown-linux-gnu/release/mvm-init}
BUSYBOX_TAR=$(resources/images/busybox.sh) || { echo "storm: resources/images/busybox.sh failed" >&2 && exit 1; }
RUN_TIMEOUT=${RUN_TIMEOUT:-200}
export MVM_KERNEL MVM_INIT BUSYBOX_TAR RUN_TIMEOUT
for f in "$MVM_KERNEL" "$MVM_INIT" "$root/target/debug/mvmd" "$root/target/debug/mvctl" "$root/target/debug/mvm-vmm" "$root/target/debug/mvm-jailer"; do
    [ -f "$f" ] || { echo "storm: $f is missing; run 'make build kernel' first" >&2 && exit 1; }
done
outdir=${outdir:-$root/target/storm/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$outdir/bin" || exit 1
# Absolute: the binaries' paths reach mvmd, whose jail refuses a relative
# VMM path (a relative --out failed every run of a session).
outdir=$(cd "$outdir" && pwd -P) || exit 1
# The storm runs copies: a rebuild during the hours it takes must not
# change (or half-write) the binaries under test; a run that adds to an
# earlier --out keeps that one's.
if [ ! -f "$outdir/bin/vmlinux" ]; then
    # mvmd finds mvm-jailer next to itself (every VMM runs jailed).
    for b in mvmd mvctl mvm-vmm mvm-jailer; do
        cp "$root/target/debug/$b" "$outdir/bin/$b" || exit 1
    done
    cp "$MVM_INIT" "$outdir/bin/mvm-init" && cp "$MVM_KERNEL" "$outdir/bin/vmlinux.tmp" &&
        mv "$outdir/bin/vmlinux.tmp" "$outdir/bin/vmlinux" || exit 1
fi
MVM_INIT=$outdir/bin/mvm-init
MVM_KERNEL=$outdir/bin/vmlinux
export STORM_BIN=$outdir/bin

# setup_env NAME: the variables and run options of a setup, one per line.
setup_env() {
    case "$1" in
    mt2) ;;
    st2) echo MVM_TESTHOST_ACCEL=tcg,thread=single ;;
    mt1) echo --cpus=1 ;;
    q10 | q10s)
        local q=${MVM_QEMU10:-/opt/mvm-l1/qemu10}
        echo "MVM_TESTHOST_QEMU=$q/usr/bin/qemu-system-x86_64"
        # Its modules (a different build refuses the host's).
        echo "QEMU_MODULE_DIR=$q/usr/lib/x86_64-linux-gnu/qemu"
        # The later kvm_amd.npt on L1's command line wins.
        if [ "$1" = q10 ]; then echo "MVM_TESTHOST_APPEND=kvm_amd.npt=1"; fi
        ;;
    k612) echo "MVM_TESTHOST_KERNEL_ROOT=${MVM_L1_KERNEL_ROOT:-/opt/mvm-l1/linux-6.12}" ;;
    *=*) echo "${1#*=}" | tr ',' '\n' ;;
    *) echo "storm: unknown setup '$1' (see --help)" >&2 && return 1 ;;
    esac
}
for s in "${setups[@]}"; do setup_env "$s" >/dev/null || exit 2; done

for n in $(seq "$first" $((first + sessions - 1))); do
    for s in "${setups[@]}"; do
        name=${s%%=*}
        dir=$outdir/$name-$n
        mkdir -p "$dir"
        echo "$name" >"$dir/setup"
        vars=()
        opts=()
        while IFS= read -r kv; do
            [ -n "$kv" ] || continue
            case "$kv" in --*=*) opts+=("${kv%%=*}" "${kv#*=}") ;; *) vars+=("$kv") ;; esac
        done < <(setup_env "$s")
        load0=$(cut -d' ' -f1 /proc/loadavg)
        t0=$SECONDS
        echo "storm: session $n of $name (${vars[*]} ${opts[*]}), $rounds rounds, load $load0" >&2
        rc=0
        env "${vars[@]}" resources/testhost/run --keep "$dir/l1" --freeze-timeout 120 \
            --timeout $((rounds * (RUN_TIMEOUT + 30) + 300)) "${opts[@]}" \
            --env MVM_KERNEL --env MVM_INIT --env BUSYBOX_TAR --env STORM_BIN --env RUN_TIMEOUT -- "$0" --in-l1 "$rounds" \
            >"$dir/run.log" 2>&1 || rc=$?
        load1=$(cut -d' ' -f1 /proc/loadavg)
        fault=none
        case "$rc" in
        0) ;;
        123)
            if grep -q 'no heartbeat' "$dir/run.log"; then
                fault=frozen
            elif grep -q 'soft lockup' "$dir/run.log"; then
                fault=stuck
            else
                fault=died
            fi
            ;;
        124) fault=timeout ;;
        125) fault=boot ;;
        *) fault=exit$rc ;;
        esac
        done_rounds=$(grep -c '^round=' "$dir/l1/rounds" 2>/dev/null) || done_rounds=0
        guest=$(awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^fail=/) f += substr($i, 6) } END { print f + 0 }' "$dir/l1/rounds" 2>/dev/null)
        secs=$(awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^secs=/) t += substr($i, 6) } END { print t + 0 }' "$dir/l1/rounds" 2>/dev/null)
        line="setup=$name session=$n rc=$rc fault=$fault rounds=$done_rounds guest=${guest:-0} secs=${secs:-0}"
        line+=" wall=$((SECONDS - t0)) load=$(awk -v a="$load0" -v b="$load1" 'BEGIN { printf "%.1f", (a + b) / 2 }')"
        echo "$line" >"$dir/result"
        echo "storm: $line" >&2
    done
done
summary "$outdir"
echo "storm: results in $outdir" >&2
