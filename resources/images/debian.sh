#!/bin/sh
# Debian 12 (bookworm) minbase root filesystem from deb.debian.org.
# Extra packages: DEBIAN_INCLUDE=pkg1,pkg2 (used by python.sh).
set -eu
. "$(dirname "$0")/common.sh"
parse_args "$@"
SUITE="${DEBIAN_SUITE:-bookworm}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
INCLUDE="${DEBIAN_INCLUDE:-}"
OUT="${DEBIAN_OUT:-$CACHE_DIR/debian-$SUITE.tar}"
DEFAULT_NAME="${DEBIAN_NAME:-debian:$SUITE}"
if [ "$FORCE" -eq 0 ] && [ -s "$OUT" ]; then finish "$OUT" "$DEFAULT_NAME"; exit 0; fi
need_root
apt_install debootstrap
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
r="$work/rootfs"
set -- --variant=minbase
[ -n "$INCLUDE" ] && set -- "$@" --include="$INCLUDE"
debootstrap "$@" "$SUITE" "$r" "$MIRROR" >&2
# What docker's debian images drop: package lists, caches, logs.
rm -rf "$r"/var/lib/apt/lists/* "$r"/var/cache/apt/*.bin "$r"/var/cache/apt/archives/*.deb \
       "$r"/var/log/*.log "$r"/var/log/apt/* "$r"/tmp/* "$r"/root/.bash_history
# No device nodes in images (the guest mounts devtmpfs on /dev).
find "$r/dev" -mindepth 1 -delete
pack "$r" "$OUT"
finish "$OUT" "$DEFAULT_NAME"
