#!/bin/bash
# Unpack QEMU 10 and Debian's 6.12 kernel from bookworm-backports for the
# emulated KVM host ("L1") experiments of tests/storm.sh (setups q10, q10s,
# k612), without installing either system-wide: the packages are fetched
# with `apt-get download` through a private apt state (its own sources list
# and package lists, so the host's apt configuration is left as it is) and
# unpacked with `dpkg -x`.
#
# Usage: backports.sh [qemu10] [linux-6.12]     (default: both)
#   qemu10      qemu-system-x86, -common, -data  -> $MVM_L1_ALT/qemu10
#               (tests/storm.sh's MVM_QEMU10 default)
#   linux-6.12  linux-image-6.12.*-amd64, the kernel and its modules,
#               with depmod run on the copy -> $MVM_L1_ALT/linux-6.12
#               (tests/storm.sh's MVM_L1_KERNEL_ROOT default; build-
#               initramfs.sh reads it as MVM_TESTHOST_KERNEL_ROOT)
# MVM_L1_ALT defaults to /opt/mvm-l1. Each target directory holds a file
# `packages` with the versions unpacked; a target whose packages are the
# current backports versions is left alone, otherwise it is replaced in one
# rename. Needs root (apt's download lists), dpkg, kmod (depmod).
set -euo pipefail

base=${MVM_L1_ALT:-/opt/mvm-l1}
suite=bookworm-backports
mirror=http://deb.debian.org/debian
keyring=/usr/share/keyrings/debian-archive-keyring.gpg

die() {
    echo "testhost/backports: $*" >&2
    exit 1
}
msg() { echo "testhost/backports: $*" >&2; }

targets=()
for a in "$@"; do
    case "$a" in
    qemu10 | linux-6.12) targets+=("$a") ;;
    -h | --help)
        sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
        exit 0
        ;;
    *) die "unknown argument '$a' (usage: backports.sh [qemu10] [linux-6.12])" ;;
    esac
done
[ ${#targets[@]} -gt 0 ] || targets=(qemu10 linux-6.12)
[ -r "$keyring" ] || die "$keyring missing (apt-get install debian-archive-keyring)"
command -v dpkg >/dev/null || die "dpkg missing"

mkdir -p "$base" || die "cannot create $base (set MVM_L1_ALT)"
exec 9>"$base/.lock"
flock 9

# The private apt state: only the backports suite, its own lists and cache.
apt_dir=$base/.apt
mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial"
echo "deb [signed-by=$keyring] $mirror $suite main" >"$apt_dir/sources.list"
apt_opts=(
    -o "Dir::Etc::SourceList=$apt_dir/sources.list" -o Dir::Etc::SourceParts=/dev/null
    -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache"
    # Downloads into a root-only temp dir (no _apt sandbox there).
    -o APT::Sandbox::User=root
)
apt-get -qq "${apt_opts[@]}" update >&2 || die "apt-get update of $suite failed"

# version PKG: the backports version of PKG (empty if there is none).
version() {
    apt-cache "${apt_opts[@]}" show "$1" 2>/dev/null | awk '/^Version:/ && /bpo/ { print $2; exit }'
}

# unpack NAME PKG=VERSION...: download and dpkg -x into $base/NAME (atomic).
unpack() {
    local name=$1 dest=$base/$1 tmp p
    shift
    if [ -f "$dest/packages" ] && [ "$(cat "$dest/packages")" = "$(printf '%s\n' "$@")" ]; then
        msg "$dest is up to date ($*)"
        return 1
    fi
    tmp=$(mktemp -d "$base/.$name.XXXXXX")
    mkdir "$tmp/debs" "$tmp/root"
    (cd "$tmp/debs" && apt-get -qq "${apt_opts[@]}" download "$@" >&2) || {
        rm -rf "$tmp"
        die "apt-get download $* failed"
    }
    for p in "$tmp"/debs/*.deb; do dpkg -x "$p" "$tmp/root" || die "dpkg -x $p failed"; done
    rm -rf "$tmp/debs"
    printf '%s\n' "$@" >"$tmp/root/packages"
    staged=$tmp
    return 0
}

# install NAME: move the staged tree into place.
install_staged() {
    local dest=$base/$1
    if [ -e "$dest" ]; then rm -rf "$dest.old" && mv -T "$dest" "$dest.old"; fi
    mv -T "$staged/root" "$dest" && rm -rf "$staged" "$dest.old"
}

for t in "${targets[@]}"; do
    case "$t" in
    qemu10)
        v=$(version qemu-system-x86)
        [ -n "$v" ] || die "no qemu-system-x86 in $suite"
        if unpack qemu10 "qemu-system-x86=$v" "qemu-system-common=$v" "qemu-system-data=$v"; then
            q=$staged/root/usr/bin/qemu-system-x86_64
            [ -x "$q" ] || die "the packages have no usr/bin/qemu-system-x86_64"
            # Its libraries come from the host (bookworm's, as for QEMU 7.2).
            missing=$(ldd "$q" | awk '/not found/ { print $1 }' | tr '\n' ' ')
            [ -z "$missing" ] || die "QEMU 10 needs libraries this host lacks: $missing(apt-get install the packages that ship them)"
            install_staged qemu10
            msg "QEMU $("$base/qemu10/usr/bin/qemu-system-x86_64" --version | head -n 1) in $base/qemu10"
        fi
        ;;
    linux-6.12)
        # The meta-package names the current 6.12 image.
        mv=$(version linux-image-amd64)
        [ -n "$mv" ] || die "no linux-image-amd64 in $suite"
        img=$(apt-cache "${apt_opts[@]}" show "linux-image-amd64=$mv" | sed -n 's/^Depends: \(linux-image-[^ ,]*\).*/\1/p' | head -n 1)
        [[ $img == linux-image-6.12* ]] || die "$suite's linux-image-amd64 $mv depends on '$img', not a 6.12 image"
        v=$(version "$img")
        if unpack linux-6.12 "$img=$v"; then
            r=$staged/root
            # Newer packages may keep the modules under usr/lib only.
            if [ ! -d "$r/lib/modules" ] && [ -d "$r/usr/lib/modules" ]; then ln -s usr/lib "$r/lib"; fi
            kver=${img#linux-image-}
            [ -f "$r/boot/vmlinuz-$kver" ] || die "$img has no boot/vmlinuz-$kver"
            # modules.dep and the indexes that modprobe and modinfo read
            # (the package's postinst would make them).
            depmod -b "$r" "$kver" || die "depmod -b $r $kver failed"
            install_staged linux-6.12
            msg "kernel $kver in $base/linux-6.12"
        fi
        ;;
    esac
done
