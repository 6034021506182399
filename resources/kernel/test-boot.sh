#!/usr/bin/env bash
# Functional check of the guest kernel under plain QEMU TCG (no KVM needed).
#
# Boots the kernel on QEMU's `microvm` machine the way mvm-vmm will (PVH entry,
# no ACPI, no PCI, virtio-mmio devices announced on the command line, an
# uncompressed cpio initramfs, 8250 console), with a busybox initramfs whose
# /init exercises what mvm-init needs: SMP, memory, a virtio-blk disk found by
# its serial, ext4, overlayfs, cgroup2, reboot. Then checks that
# `echo c > /proc/sysrq-trigger` panics and, with panic=-1, resets at once.
#
# usage: test-boot.sh [VMLINUX]   (default: the kernel build.sh builds/caches)
# MVM_TEST_ACCEL=kvm uses -accel kvm -cpu host instead of TCG (needs hardware
# KVM, e.g. inside resources/testhost/run). MVM_TEST_APPEND adds kernel
# command line arguments (e.g. `quiet` to time a boot without console output).
# Exit status 0 only if every check passed. Prints boot times at the end.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DEPS=(qemu-system-x86 busybox-static e2fsprogs cpio)
TIMEOUT=${MVM_TEST_TIMEOUT:-180} # seconds per QEMU run; TCG is slow
SMP=2
case "${MVM_TEST_ACCEL:-tcg}" in
tcg) ACCEL=(-accel tcg -cpu max) ;;
kvm) ACCEL=(-accel kvm -cpu host) ;;
*) echo "test-boot: MVM_TEST_ACCEL must be tcg or kvm, not '$MVM_TEST_ACCEL'" >&2 && exit 1 ;;
esac
MEM_MIB=256

log() { printf 'test-boot: %s\n' "$*" >&2; }
die() {
	printf 'test-boot: FAIL: %s\n' "$*" >&2
	exit 1
}

missing=()
installed=$(dpkg-query -W -f='${Package} ${Status}\n' "${DEPS[@]}" 2>/dev/null |
	awk '$NF == "installed" && $(NF-1) == "ok" {print $1}') || true
for p in "${DEPS[@]}"; do
	grep -qxF -- "$p" <<<"$installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	log "installing ${missing[*]}"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2 ||
		die "could not install ${missing[*]}"
fi
[ "$(id -u)" -eq 0 ] || die "must run as root (the initramfs needs a /dev/console device node)"

if [ $# -ge 1 ]; then
	VMLINUX=$1
else
	VMLINUX=$("$HERE/build.sh" | tail -n1)
fi
[ -f "$VMLINUX" ] || die "kernel not found: $VMLINUX"

WORK=$(mktemp -d /tmp/mvm-kernel-test.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

# --- initramfs: busybox + /init + /dev/console ------------------------------
root=$WORK/initramfs
mkdir -p "$root"/{bin,dev,etc,proc,sys,mnt/ro,mnt/rw,mnt/ov}
cp /bin/busybox "$root/bin/busybox"
echo 'nobody:x:65534:65534:nobody:/:/bin/sh' >"$root/etc/passwd"
echo 'nogroup:x:65534:' >"$root/etc/group"
mknod -m 600 "$root/dev/console" c 5 1
cat >"$root/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
echo "MVMTEST init-start"
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
echo "MVMTEST init-uptime=$(cut -d' ' -f1 /proc/uptime)"
echo "MVMTEST nproc=$(nproc)"
echo "MVMTEST $(grep MemTotal /proc/meminfo | tr -s ' ')"
case "$(cat /proc/cmdline)" in
*mvmtest=panic*)
	echo "MVMTEST triggering a crash"
	echo c >/proc/sysrq-trigger
	echo "MVMTEST still alive after sysrq-c"
	;;
esac
echo "MVMTEST serial=$(cat /sys/block/vda/serial)"
mount -t ext4 -o ro /dev/vda /mnt/ro && echo "MVMTEST ext4=$(cat /mnt/ro/hello.txt)"
mount -t tmpfs tmp /mnt/rw && mkdir /mnt/rw/upper /mnt/rw/work
mount -t overlay overlay -o lowerdir=/mnt/ro,upperdir=/mnt/rw/upper,workdir=/mnt/rw/work /mnt/ov &&
	echo changed >/mnt/ov/hello.txt && echo "MVMTEST overlay=$(cat /mnt/ov/hello.txt)/$(cat /mnt/ro/hello.txt)"
mkdir -p /sys/fs/cgroup
mount -t cgroup2 cgroup2 /sys/fs/cgroup && echo "MVMTEST cgroup2=$(cat /sys/fs/cgroup/cgroup.controllers)"
echo "+cpuset +cpu +io +memory +pids" >/sys/fs/cgroup/cgroup.subtree_control && mkdir /sys/fs/cgroup/t &&
	echo "MVMTEST cgroup-files=$(cd /sys/fs/cgroup/t && ls cpu.max io.max memory.max pids.max cpuset.cpus | tr '\n' ' ')"
echo "MVMTEST cmdline=$(cat /proc/cmdline)"
echo "MVMTEST rng=$(cat /sys/class/misc/hw_random/rng_current)"
ip link set lo up && ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 &&
	ping -c1 -W5 127.0.0.1 >/dev/null && ping -6 -c1 -W5 ::1 >/dev/null && echo "MVMTEST net=eth0-up,ping4,ping6"
[ -c /dev/vsock ] && echo "MVMTEST vsock=/dev/vsock"
echo "MVMTEST setuid=$(su -s /bin/sh -c 'id -u' nobody)"
unshare -u -i -n -p -U -f true && echo "MVMTEST namespaces=ok"
echo "MVMTEST reboot"
reboot -f
EOF
chmod 755 "$root/init"
(cd "$root" && find . | cpio -o -H newc --quiet) >"$WORK/initramfs.cpio"

# --- disk: an ext4 image with one known file ---------------------------------
mkdir -p "$WORK/disk"
echo "hello-from-disk" >"$WORK/disk/hello.txt"
mkfs.ext4 -q -F -d "$WORK/disk" "$WORK/disk.ext4" 16M >/dev/null

# QEMU's microvm has no keyboard controller by default; mvm-vmm ends the VM
# when the guest writes 0xFE to port 0x64 (reboot=k), so the test adds an
# i8042 and traces its commands to check the guest resets exactly that way.
#
# Runs QEMU, timestamps each console line relative to QEMU's start, and
# writes them to $1. Returns QEMU's exit status.
run_qemu() {
	local out=$1 extra=$2 status
	local t0=${EPOCHREALTIME/./} now
	set +e
	timeout "$TIMEOUT" qemu-system-x86_64 \
		-M microvm,x-option-roms=off,rtc=off,acpi=off \
		"${ACCEL[@]}" -m "$MEM_MIB" -smp "$SMP" \
		-display none -no-reboot -nodefaults -serial stdio \
		-kernel "$VMLINUX" -initrd "$WORK/initramfs.cpio" \
		-drive id=d0,file="$WORK/disk.ext4",format=raw,if=none \
		-device virtio-blk-device,drive=d0,serial=rootfs \
		-device virtio-rng-device \
		-device i8042 -trace pckbd_kbd_write_command \
		-netdev user,id=n0 -device virtio-net-device,netdev=n0 \
		-append "console=ttyS0 reboot=k panic=-1 rdinit=/init ${MVM_TEST_APPEND:-} $extra" </dev/null 2>&1 |
		while IFS= read -r line; do
			line=${line%$'\r'}
			now=${EPOCHREALTIME/./}
			printf '%d.%03d %s\n' $(((now - t0) / 1000000)) $(((now - t0) / 1000 % 1000)) "$line"
		done >"$out"
	status=${PIPESTATUS[0]}
	set -e
	return "$status"
}

expect() { # expect FILE REGEX WHAT
	grep -qE -- "$2" "$1" || {
		log "console output:"
		sed 's/^/    /' "$1" >&2
		die "$3 (no line matching '$2')"
	}
}

# --- 1. normal boot ----------------------------------------------------------
log "boot 1/2: normal boot of $VMLINUX under QEMU ${ACCEL[*]} (-smp $SMP, ${MEM_MIB} MiB)"
status=0
run_qemu "$WORK/boot.log" "" || status=$?
[ "$status" != 124 ] || { sed 's/^/    /' "$WORK/boot.log" >&2; die "QEMU did not exit within ${TIMEOUT}s"; }
expect "$WORK/boot.log" "MVMTEST nproc=$SMP\$" "the guest did not see $SMP CPUs (SMP / MP table)"
expect "$WORK/boot.log" 'MVMTEST MemTotal: [0-9]+ kB' "no MemTotal in /proc/meminfo"
expect "$WORK/boot.log" 'MVMTEST serial=rootfs$' "virtio-blk serial not visible in /sys/block/vda/serial"
expect "$WORK/boot.log" 'MVMTEST ext4=hello-from-disk$' "ext4 mount of the virtio-blk disk failed"
expect "$WORK/boot.log" 'MVMTEST overlay=changed/hello-from-disk$' "overlayfs over ext4 + tmpfs failed"
expect "$WORK/boot.log" 'MVMTEST cgroup2=.*cpuset.*cpu.*io.*memory.*pids' "cgroup2 lacks a controller (want cpuset cpu io memory pids)"
expect "$WORK/boot.log" 'MVMTEST cgroup-files=cpu.max cpuset.cpus io.max memory.max pids.max' "cgroup v2 interface files missing (CFS_BANDWIDTH, BLK_DEV_THROTTLING, MEMCG, PIDS, CPUSETS)"
expect "$WORK/boot.log" 'MVMTEST cmdline=.*virtio_mmio\.device=' "QEMU did not announce the virtio-mmio devices on the command line"
expect "$WORK/boot.log" 'MVMTEST rng=virtio_rng' "virtio-rng is not the current hw_random source"
expect "$WORK/boot.log" 'MVMTEST net=eth0-up,ping4,ping6$' "virtio-net or IPv4/IPv6 loopback failed"
expect "$WORK/boot.log" 'MVMTEST vsock=/dev/vsock$' "no /dev/vsock (VSOCKETS)"
expect "$WORK/boot.log" 'MVMTEST setuid=65534$' "setuid to nobody failed (MULTIUSER)"
expect "$WORK/boot.log" 'MVMTEST namespaces=ok$' "unshare of uts/ipc/net/pid/user namespaces failed"
expect "$WORK/boot.log" 'MVMTEST reboot' "init did not reach reboot"
if grep -qE 'Kernel panic|BUG:|Oops' "$WORK/boot.log"; then
	sed 's/^/    /' "$WORK/boot.log" >&2
	die "the kernel reported a panic/BUG/oops during the normal boot"
fi
expect "$WORK/boot.log" 'pckbd_kbd_write_command 0xfe' "the guest did not reset through the i8042 (reboot=k)"
[ "$status" = 0 ] || die "QEMU exited with status $status after reboot -f (expected 0 with -no-reboot)"
kstart=$(awk '/Linux version/ {print $1; exit}' "$WORK/boot.log")
kstart=${kstart:+${kstart}s}
first=$(awk '/MVMTEST init-start/ {print $1; exit}' "$WORK/boot.log")
uptime=$(sed -n 's/.*MVMTEST init-uptime=\([0-9.]*\).*/\1/p' "$WORK/boot.log" | head -n1)
last=$(awk 'END {print $1}' "$WORK/boot.log")
log "ok: SMP, memory, virtio-blk serial, ext4, overlayfs, cgroup2 controllers, virtio-rng, virtio-net, IPv4/6, vsock, setuid, namespaces, reboot"
grep 'MVMTEST' "$WORK/boot.log" | sed 's/^/    /' >&2

# --- 2. sysrq crash ----------------------------------------------------------
log "boot 2/2: echo c > /proc/sysrq-trigger must panic and reset (panic=-1)"
status=0
run_qemu "$WORK/panic.log" "mvmtest=panic" || status=$?
[ "$status" != 124 ] || { sed 's/^/    /' "$WORK/panic.log" >&2; die "QEMU did not exit within ${TIMEOUT}s: the panic did not reset the guest"; }
expect "$WORK/panic.log" 'Kernel panic - not syncing: sysrq triggered crash' "sysrq-c did not panic the kernel"
if grep -q 'MVMTEST still alive' "$WORK/panic.log"; then die "init survived sysrq-c"; fi
expect "$WORK/panic.log" 'pckbd_kbd_write_command 0xfe' "the panicked guest did not reset through the i8042 (panic=-1, reboot=k)"
[ "$status" = 0 ] || die "QEMU exited with status $status after the panic reset (expected 0 with -no-reboot)"
log "ok: sysrq-c panicked and the guest reset"

size=$(stat -c %s "$VMLINUX")
printf 'test-boot: PASS  vmlinux=%s bytes; wall time after QEMU start: first kernel line %s, /init %ss (guest uptime then %ss), reboot done %ss\n' \
	"$size" "${kstart:-n/a (quiet)}" "$first" "$uptime" "$last"
