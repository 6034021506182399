#!/bin/bash
# Acceptance tests of the emulated KVM host: each check boots L1 through
# `run` and asserts what the caller sees (exit status, streams, files).
# Usage: selftest.sh [CHECK...]   (default: all; names below)
#        selftest.sh inside-l1 KERNEL   (internal: runs in L1, see check_nested)
# Takes a few minutes: one L1 boot per check.
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
run=$here/run
failed=0
tmp=

pass() { echo "ok   $*"; }
fail() {
    echo "FAIL $*"
    failed=1
}
now_ms() { local t=${EPOCHREALTIME//[!0-9]/}; echo $((10#$t / 1000)); }

# Boot a guest kernel under nested KVM inside L1 and wait for a marker from
# its init; prints the wall time QEMU needed. Runs inside L1.
inside_l1() {
    local kernel=$1 d=/tmp/l2 start marker_at end rc
    [ -c /dev/kvm ] || { echo "no /dev/kvm in L1" >&2; return 1; }
    mkdir -p $d/root/bin
    cp /bin/busybox $d/root/bin/
    printf '#!/bin/busybox sh\n/bin/busybox echo MVM-L2-MARKER-OK\n/bin/busybox reboot -f\n' >$d/root/init
    chmod +x $d/root/init
    (cd $d/root && find . | cpio -o -H newc -R 0:0 --quiet) >$d/l2.cpio
    start=$(now_ms)
    # reboot=t: QEMU's microvm has no i8042, and the kernel's keyboard
    # controller reset would poll port 0x64 for a long time before giving up.
    qemu-system-x86_64 -M microvm,acpi=off,rtc=off -enable-kvm -cpu host -m 256 \
        -nodefaults -no-user-config -nographic -no-reboot -serial stdio \
        -kernel "$kernel" -initrd $d/l2.cpio \
        -append "console=ttyS0 panic=-1 reboot=t rdinit=/init quiet" </dev/null >$d/out.txt 2>&1 &
    local q=$!
    while ! grep -q MVM-L2-MARKER-OK $d/out.txt 2>/dev/null && kill -0 $q 2>/dev/null; do sleep 0.05; done
    marker_at=$(now_ms)
    wait $q
    rc=$?
    end=$(now_ms)
    grep -q MVM-L2-MARKER-OK $d/out.txt || {
        echo "no marker from the nested guest; its output:" >&2
        tail -20 $d/out.txt >&2
        return 1
    }
    echo "nested-marker after $((marker_at - start)) ms, qemu exit $rc after $((end - start)) ms"
}

check_status_and_streams() {
    local o e rc
    o=$(mktemp) e=$(mktemp)
    "$run" --keep "$tmp/streams" -- sh -c 'ls -l /dev/kvm; grep -c svm /proc/cpuinfo; lsmod | grep kvm; echo to-stderr >&2; exit 7' >"$o" 2>"$e"
    rc=$?
    [ "$rc" -eq 7 ] && pass "exit status of the job returned (7)" || fail "exit status: want 7, got $rc"
    grep -q '^crw.* /dev/kvm$' "$o" && pass "/dev/kvm present in L1" || fail "/dev/kvm not listed: $(cat "$o")"
    grep -q '^kvm_amd ' "$o" && pass "kvm_amd loaded in L1" || fail "kvm_amd not in lsmod output"
    grep -qx '[1-9][0-9]*' "$o" && pass "svm in L1's /proc/cpuinfo" || fail "no svm count"
    grep -qx to-stderr "$e" && ! grep -q to-stderr "$o" && pass "stderr kept apart from stdout" ||
        fail "stderr: $(cat "$e")"
    rm -f "$o" "$e"
}

check_out_dir_and_env() {
    local k rc
    k=$tmp/keep
    mkdir -p "$tmp/rw dir"
    FOO='a b $c "d"' "$run" --keep "$k" --rw "$tmp/rw dir" --env FOO --env BAR=x=y --env UNSET_VAR_XYZ -- \
        sh -c 'printf "%s|%s|%s|%s\n" "$FOO" "$BAR" "${UNSET_VAR_XYZ-unset}" "$PWD" >"$MVM_TESTHOST_OUT/result"
               echo rw-ok >"$0/f"; echo logged' "$tmp/rw dir" >/dev/null
    rc=$?
    [ "$rc" -eq 0 ] || fail "out-dir job exit $rc"
    [ "$(cat "$k/result" 2>/dev/null)" = "a b \$c \"d\"|x=y|unset|$(pwd -P)" ] &&
        pass "file written to \$MVM_TESTHOST_OUT visible on the host; env and cwd passed" ||
        fail "out dir result: '$(cat "$k/result" 2>/dev/null)'"
    grep -qx logged "$k/job.log" && pass "job.log saved in the out dir" || fail "job.log missing or wrong"
    [ "$(cat "$tmp/rw dir/f" 2>/dev/null)" = rw-ok ] && pass "--rw dir written through" || fail "--rw dir not written"
    [ "$(cat "$k/exit-status" 2>/dev/null)" = 0 ] && pass "exit-status file" || fail "exit-status file"
}

check_timeout() {
    local t0 rc el
    t0=$(now_ms)
    "$run" --keep "$tmp/timeout" --timeout 20 -- sleep 1000 >/dev/null 2>&1
    rc=$?
    el=$(($(now_ms) - t0))
    [ "$rc" -eq 124 ] && [ "$el" -lt 30000 ] && pass "timeout: 124 after $el ms" ||
        fail "timeout: rc $rc after $el ms (want 124 within 30 s)"
}

check_failures() {
    local rc e
    e=$(mktemp)
    "$run" --keep "$tmp/panic" -- sh -c 'echo c >/proc/sysrq-trigger; sleep 30' >/dev/null 2>"$e"
    rc=$?
    [ "$rc" -eq 125 ] && grep -q 'console.log' "$e" && pass "L1 panic gives 125 and names console.log" ||
        fail "L1 panic: rc $rc, $(cat "$e")"
    "$run" --keep "$tmp/boot-timeout" --boot-timeout 1 -- true >/dev/null 2>"$e"
    rc=$?
    [ "$rc" -eq 125 ] && grep -q 'did not start the job' "$e" && pass "boot timeout gives 125" ||
        fail "boot timeout: rc $rc, $(cat "$e")"
    (cd /tmp && "$run" --keep "$tmp/cwd" -- true) >/dev/null 2>"$e"
    rc=$?
    [ "$rc" -eq 125 ] && grep -q 'run from elsewhere or share it with --rw' "$e" &&
        pass "cwd hidden in L1 is refused up front" || fail "cwd under /tmp: rc $rc, $(cat "$e")"
    rm -f "$e"
}

check_output_limits() {
    local t0 rc el e
    e=$(mktemp)
    t0=$(now_ms)
    "$run" --keep "$tmp/pipe" --timeout 200 -- yes 2>"$e" | head -n 2 >/dev/null
    rc=${PIPESTATUS[0]}
    el=$(($(now_ms) - t0))
    [ "$rc" -eq 141 ] && [ "$el" -lt 100000 ] && pass "reader gone (run | head): 141 after $el ms" ||
        fail "broken pipe: rc $rc after $el ms, $(cat "$e")"
    "$run" --keep "$tmp/log-limit" --log-limit 5 -- sh -c 'yes >&2' 2>/dev/null >"$e"
    rc=$?
    [ "$rc" -eq 125 ] && pass "runaway output stopped by --log-limit (125)" || fail "log limit: rc $rc"
    rm -f "$e"
}

check_tty() {
    local o rc
    o=$(mktemp)
    # script(1) gives run a terminal (its end of input reaches the job's
    # terminal as a ^D, which this job does not read).
    script -qec "stty rows 30 cols 100; $run --keep $tmp/tty -- sh -c 'tty; stty size; exit 5'" /dev/null \
        </dev/null | tr -d '\r' >"$o"
    rc=${PIPESTATUS[0]}
    [ "$rc" -eq 5 ] && grep -q '/dev/hvc0$' "$o" && grep -qx '30 100' "$o" &&
        pass "--tty: job on /dev/hvc0 with the caller's window size, exit status 5" ||
        fail "tty mode: rc $rc, $(cat "$o")"
    rm -f "$o"
}

check_nested() {
    local kernel o rc
    kernel=$("$here/../kernel/build.sh" --print-path 2>/dev/null)
    if [ ! -f "$kernel" ]; then
        kernel=$(ls /boot/vmlinuz-*-amd64 | sort -V | tail -n1)
        echo "     (our guest kernel is not built; booting $kernel in L2 instead)"
    fi
    o=$(mktemp)
    # The network part needs the kernel's module autoloading through the
    # host's modprobe (bridge, veth) and the eager tun module.
    "$run" --keep "$tmp/nested" --timeout 900 -- bash -c '
        set -e
        ip link add br0 type bridge
        ip link add v0 type veth peer name v1
        ip tuntap add tap0 mode tap
        ip link set v0 master br0; ip link set tap0 master br0
        ip netns add ns1; ip link set v1 netns ns1
        ip addr add 10.9.0.1/24 dev br0; ip link set br0 up; ip link set v0 up
        ip -n ns1 addr add 10.9.0.2/24 dev v1; ip -n ns1 link set v1 up
        busybox ping -c1 -W10 10.9.0.2 >/dev/null && echo net-ok
        exec "$0" inside-l1 "$1"' "$here/selftest.sh" "$kernel" >"$o" 2>&1
    rc=$?
    grep -qx net-ok "$o" && pass "bridge + veth + tap + netns ping in L1" || fail "network in L1: $(cat "$o")"
    if [ "$rc" -eq 0 ] && grep -q '^nested-marker' "$o"; then
        pass "guest booted under nested KVM: $(grep '^nested-marker' "$o") ($kernel)"
    else
        fail "nested boot (rc $rc): $(cat "$o")"
    fi
    rm -f "$o"
}

check_kvm_mode() {
    local m rc
    m=$("$run" --check 2>/dev/null)
    rc=$?
    case "$m:$rc" in
    hardware:0 | pvm:1 | none:1) pass "run --check says '$m' (exit $rc)" ;;
    *) fail "run --check: '$m' exit $rc" ;;
    esac
}

if [ "${1:-}" = inside-l1 ]; then
    inside_l1 "$2"
    exit
fi

checks=("$@")
[ ${#checks[@]} -gt 0 ] || checks=(kvm_mode status_and_streams out_dir_and_env timeout failures output_limits tty nested)
tmp=$(mktemp -d /var/tmp/testhost-selftest.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
cd "$here/../.." || exit 1
for c in "${checks[@]}"; do
    declare -F "check_$c" >/dev/null || {
        echo "unknown check '$c'" >&2
        exit 2
    }
    "check_$c"
done
[ "$failed" -eq 0 ] && echo "all checks passed" || echo "some checks FAILED"
exit "$failed"
