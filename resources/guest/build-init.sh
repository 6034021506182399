#!/bin/sh
# Build the guest init (`mvm-init`) as a static binary and print its path as
# the last line of stdout (progress goes to stderr).
#
# Static because it runs in the initramfs, before any library exists; the
# explicit --target keeps crt-static off build scripts and proc macros,
# which must stay dynamic host binaries. Same command and output path as
# `make init`.
#
# usage: resources/guest/build-init.sh [--print-path]
#   --print-path  print where the binary is (or would be) and build nothing
set -eu

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
TARGET=x86_64-unknown-linux-gnu
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
case $TARGET_DIR in /*) ;; *) TARGET_DIR=$ROOT/$TARGET_DIR ;; esac
BIN=$TARGET_DIR/$TARGET/release/mvm-init

die() {
	echo "build-init: error: $*" >&2
	exit 1
}

case "${1:-}" in
"") ;;
--print-path)
	echo "$BIN"
	exit 0
	;;
*) die "unknown argument '$1' (usage: $0 [--print-path])" ;;
esac

cd "$ROOT"
# CARGO_ENCODED_RUSTFLAGS, when set (e.g. by an outer cargo), would win over
# RUSTFLAGS and drop crt-static.
unset CARGO_ENCODED_RUSTFLAGS
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release -p mvm-init --target "$TARGET" \
	--target-dir "$TARGET_DIR" >&2 || die "cargo build failed"
[ -x "$BIN" ] || die "cargo succeeded but $BIN is missing"
# `file` says "statically linked" or "static-pie linked"; anything dynamic
# would fail in the guest with a confusing "not found".
if command -v file >/dev/null 2>&1; then
	case $(file -b "$BIN") in
	*"statically linked"* | *"static-pie linked"*) ;;
	*) die "$BIN is not static: $(file -b "$BIN")" ;;
	esac
fi
echo "build-init: $(wc -c <"$BIN") bytes, static: $BIN" >&2
echo "$BIN"
