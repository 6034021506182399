#!/bin/bash
# Build (or find in the cache) the initramfs of the emulated KVM host ("L1").
#
# L1 boots the host's own Debian kernel (package linux-image-amd64) under
# QEMU TCG with nested SVM. The initramfs only has to bring up what is
# needed to reach the host's root filesystem over virtio-9p and to offer
# /dev/kvm: busybox, our /init, and the kernel modules listed below with
# their dependencies. Every other module loads on demand after switch_root,
# from the host's /lib/modules through the host's /sbin/modprobe.
#
# Usage: build-initramfs.sh [--force]
# Prints the cache directory on stdout. It holds:
#   initramfs.cpio   uncompressed newc archive (the kernel unpacks it with a
#                    plain copy; gzip -1 measured no faster under TCG)
#   vmlinux          the ELF kernel extracted from the bzImage (PVH boot)
#   kernel           path of the image L1 boots (one line): vmlinux, or the
#                    bzImage if extraction failed
#   kver             the kernel release (uname -r of L1)
#   modules          the modules of the archive, in insmod order
#
# Cache: ${MVM_CACHE:-/var/cache/mvm}/testhost/<hash>/, where the hash covers
# this script, the init script, the kernel release and package version and
# the busybox package version. A finished directory is never modified; a
# build happens in a temporary directory that is renamed into place.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache_root="${MVM_CACHE:-/var/cache/mvm}/testhost"

# Modules insmod'ed by the L1 init, before the root filesystem exists
# (dependencies are added automatically from `modinfo -F depends` and
# `softdep pre:`):
#   virtio_pci     transport of every device below
#   9pnet_virtio 9p   the host's root and the out dir
#   overlay        writable root (tmpfs upper over the read-only 9p lower)
#   virtio_console the job's stdout/stderr ports and the interactive console
#   kvm_amd        the point of the exercise: nested /dev/kvm
#   tun loop       loaded eagerly because their /dev nodes only appear once
#                  the module is in (no udev/kmod static-nodes in L1)
# bridge, veth, vhost_net, nf_tables, ... autoload after switch_root.
BOOT_MODULES=(virtio_pci 9pnet_virtio 9p overlay virtio_console kvm_amd tun loop)

die() {
    echo "testhost/build-initramfs: $*" >&2
    exit 1
}

force=0
case "${1:-}" in
"") ;;
--force) force=1 ;;
-h | --help)
    sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
    exit 0
    ;;
*) die "unknown argument '$1' (usage: build-initramfs.sh [--force])" ;;
esac

# --- host packages -------------------------------------------------------
ensure_packages() {
    local missing=()
    command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
    # busybox-static, not busybox: the initramfs has no libc to link against.
    dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'ok installed' || missing+=(busybox-static)
    command -v cpio >/dev/null || missing+=(cpio)
    command -v modinfo >/dev/null || missing+=(kmod)
    command -v readelf >/dev/null || missing+=(binutils)
    command -v xz >/dev/null || missing+=(xz-utils)
    # Machine mode (machine-l1) points L1's 127.0.0.1 at the host with nft.
    command -v nft >/dev/null || [ -x /usr/sbin/nft ] || missing+=(nftables)
    compgen -G '/boot/vmlinuz-*-amd64' >/dev/null || missing+=(linux-image-amd64)
    [ ${#missing[@]} -eq 0 ] && return 0
    [ "$(id -u)" -eq 0 ] || die "missing packages: ${missing[*]}; install them as root: apt-get install ${missing[*]}"
    echo "testhost: installing ${missing[*]} (apt-get)" >&2
    export DEBIAN_FRONTEND=noninteractive
    # A fresh machine may have no package lists yet: update once and retry.
    apt-get install -y --no-install-recommends "${missing[@]}" >&2 ||
        { apt-get update >&2 && apt-get install -y --no-install-recommends "${missing[@]}" >&2; } ||
        die "apt-get install ${missing[*]} failed (see above)"
}

ensure_packages

# --- which kernel --------------------------------------------------------
# The newest installed Debian amd64 kernel that has its modules; override
# with MVM_TESTHOST_KVER. MVM_TESTHOST_KERNEL_ROOT (default /) is where its
# boot/vmlinuz-* and lib/modules/* are: a kernel package unpacked with
# `dpkg -x` (and `depmod -b`) elsewhere than the host's /boot, so that
# trying another L1 kernel does not change the host's default one.
kroot=${MVM_TESTHOST_KERNEL_ROOT:-/}
kroot=${kroot%/}
pick_kver() {
    local v
    if [ -n "${MVM_TESTHOST_KVER:-}" ]; then
        echo "$MVM_TESTHOST_KVER"
        return
    fi
    for v in $(ls "$kroot/boot" | sed -n 's/^vmlinuz-\(.*-amd64\)$/\1/p' | sort -rV); do
        if [ -f "$kroot/lib/modules/$v/modules.dep" ]; then
            echo "$v"
            return
        fi
    done
}
kver=$(pick_kver)
[ -n "$kver" ] || die "no $kroot/boot/vmlinuz-*-amd64 with $kroot/lib/modules/<version>/modules.dep; apt-get install linux-image-amd64"
kernel="$kroot/boot/vmlinuz-$kver"
moddir="$kroot/lib/modules/$kver"
[ -r "$kernel" ] || die "$kernel is missing or unreadable (MVM_TESTHOST_KVER=${MVM_TESTHOST_KVER:-})"
[ -f "$moddir/modules.dep" ] || die "$moddir/modules.dep missing; reinstall linux-image-$kver (or depmod -b $kroot $kver)"

pkg_version() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null || echo unknown; }

# --- cache key ------------------------------------------------------------
key=$(
    {
        cat "$here/build-initramfs.sh" "$here/init"
        echo "kver=$kver kroot=$kroot"
        echo "kernel-pkg=$(pkg_version "linux-image-$kver")"
        stat -c 'kernel-size=%s mtime=%Y' "$kernel"
        echo "busybox=$(pkg_version busybox-static)"
    } | sha256sum | cut -c1-16
)
dir="$cache_root/$key"
if [ "$force" -eq 0 ] && [ -f "$dir/initramfs.cpio" ]; then
    touch "$dir" 2>/dev/null || true # last use, for the pruning below
    echo "$dir"
    exit 0
fi

mkdir -p "$cache_root" || die "cannot create $cache_root (set MVM_CACHE to a writable directory)"
# One builder at a time; a second caller waits and then finds the result.
exec 9>"$cache_root/.lock"
flock 9
if [ "$force" -eq 0 ] && [ -f "$dir/initramfs.cpio" ]; then
    echo "$dir"
    exit 0
fi

tmp=$(mktemp -d "$cache_root/.build.XXXXXX")
chmod 0755 "$tmp"
trap 'rm -rf "$tmp"' EXIT

# --- modules, dependencies first ----------------------------------------
declare -A seen=()
order=()
add_module() {
    local name=${1//-/_} dep file
    [ -n "${seen[$name]:-}" ] && return 0
    seen[$name]=1
    file=$(modinfo -b "$kroot/" -k "$kver" -F filename "$name" 2>/dev/null) ||
        die "module '$name' not found for kernel $kver (modinfo -b $kroot/ -k $kver $name)"
    [ "$file" = "(builtin)" ] && return 0
    for dep in $(modinfo -b "$kroot/" -k "$kver" -F depends "$name" | tr ',' ' ') \
        $(modinfo -b "$kroot/" -k "$kver" -F softdep "$name" | sed -n 's/.*pre:\([^:]*\)\(post:.*\)\{0,1\}$/\1/p'); do
        add_module "$dep"
    done
    order+=("$file")
}
for m in "${BOOT_MODULES[@]}"; do add_module "$m"; done

# --- the kernel image ----------------------------------------------------
# Under TCG, SeaBIOS plus the bzImage's own decompression cost about 3 s of
# CPU per boot. Debian's kernel has CONFIG_PVH, so QEMU can start the ELF
# vmlinux at its PVH entry point directly; extract it once, here.
# extract_vmlinux BZIMAGE OUT: like the kernel's scripts/extract-vmlinux.
extract_vmlinux() {
    local magic tool off
    for magic in '\xfd7zXZ\x00:xz -dcq' '\x28\xb5\x2f\xfd:zstd -dcq' '\x1f\x8b\x08:gzip -dcq'; do
        tool=${magic#*:}
        command -v "${tool%% *}" >/dev/null || continue
        for off in $(LC_ALL=C grep -obUaP "${magic%%:*}" "$1" | cut -d: -f1); do
            # Trailing data after the payload makes the tool complain; the
            # output is what counts.
            tail -c +$((off + 1)) "$1" | $tool >"$2" 2>/dev/null
            if [ "$(head -c 4 "$2" | od -An -c | tr -d ' ')" = '177ELF' ] &&
                LC_ALL=C readelf -n "$2" 2>/dev/null | grep -q 'Xen.*(0x00000012)'; then
                return 0
            fi
        done
    done
    return 1
}

# Debian signs its modules and the kernel checks the signature of every
# module it loads; under TCG that costs about 0.9 s for the boot modules.
# L1 is a throwaway test machine without lockdown, so the copies in the
# initramfs go unsigned (the kernel only notes an "E" taint). The layout
# at the end of a signed module: PKCS#7 signature (sig_len bytes), struct
# module_signature (12 bytes, sig_len big-endian in its last 4), magic.
strip_signature() {
    local f=$1 magic='~Module signature appended~' size siglen
    [ "$(tail -c 28 "$f" | head -c 27)" = "$magic" ] || return 0
    size=$(stat -c %s "$f")
    siglen=$(tail -c 32 "$f" | head -c 4 | od -An -tu1 | awk '{print (($1*256+$2)*256+$3)*256+$4}')
    [ "$siglen" -gt 0 ] && [ "$siglen" -lt "$size" ] || die "$f: implausible signature length $siglen"
    truncate -s $((size - 28 - 12 - siglen)) "$f"
}

# --- the archive tree ----------------------------------------------------
root="$tmp/root"
mkdir -p "$root"/{bin,dev,proc,sys,lower,rw,newroot,out,etc} "$root/lib/modules/$kver"
cp /bin/busybox "$root/bin/busybox"
for applet in $("$root/bin/busybox" --list); do
    [ "$applet" = busybox ] || ln -s busybox "$root/bin/$applet"
done
install -m 0755 "$here/init" "$root/init"
: >"$tmp/modules"
for f in "${order[@]}"; do
    rel=${f#"$moddir"/}
    mkdir -p "$root/lib/modules/$kver/$(dirname "$rel")"
    # Newer Debian kernels ship compressed modules; busybox insmod takes
    # them uncompressed (and the signature sits inside the compression).
    case "$rel" in
    *.ko.xz) xz -dc "$f" >"$root/lib/modules/$kver/${rel%.xz}" && rel=${rel%.xz} ;;
    *.ko.zst) zstd -qdc "$f" >"$root/lib/modules/$kver/${rel%.zst}" && rel=${rel%.zst} ;;
    *.ko.gz) gzip -dc "$f" >"$root/lib/modules/$kver/${rel%.gz}" && rel=${rel%.gz} ;;
    *) cp "$f" "$root/lib/modules/$kver/$rel" ;;
    esac
    strip_signature "$root/lib/modules/$kver/$rel"
    echo "$rel" >>"$tmp/modules"
done
cp "$tmp/modules" "$root/etc/modules"
echo "$kver" >"$root/etc/kver"
# Where L1 finds the rest of the kernel's modules after switch_root (the
# init links them into /lib/modules when they are not the host's own).
echo "$moddir" >"$root/etc/moddir"
# The kernel opens /dev/console for init's stdio before anything is mounted.
mknod -m 600 "$root/dev/console" c 5 1 2>/dev/null || true

(cd "$root" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0) >"$tmp/initramfs.cpio"
if extract_vmlinux "$kernel" "$tmp/vmlinux"; then
    echo "$dir/vmlinux" >"$tmp/kernel"
else
    echo "testhost: warning: could not extract an ELF vmlinux from $kernel; L1 boots the bzImage (about 3 s slower)" >&2
    rm -f "$tmp/vmlinux"
    echo "$kernel" >"$tmp/kernel"
fi
echo "$kver" >"$tmp/kver"
rm -rf "$root"

# Atomic install: a finished directory appears in one rename.
if [ -e "$dir" ]; then
    rm -rf "$dir.old.$$"
    mv -T "$dir" "$dir.old.$$"
    rm -rf "$dir.old.$$"
fi
mv -T "$tmp" "$dir"
trap - EXIT
# Builds for older scripts or kernels, unused for a week.
find "$cache_root" -mindepth 1 -maxdepth 1 -type d -name '????????????????' -mtime +7 \
    -exec rm -rf {} + 2>/dev/null || true
echo "testhost: built $dir ($(du -sh "$dir/initramfs.cpio" | cut -f1), kernel $kver, ${#order[@]} modules)" >&2
echo "$dir"
