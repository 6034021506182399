#!/usr/bin/env bash
# Install cargo-fuzz (the libFuzzer driver for Rust) at a pinned version
# into a project-owned prefix, with `cargo install --locked`, the way
# resources/virtiofsd/build.sh installs virtiofsd. The fuzz targets
# (fuzz/) also need a nightly toolchain (sanitizer flags): rustup's
# `nightly` must be installed; fuzz/rust-toolchain.toml selects it.
#
# Cache: ${MVM_CACHE:-/var/cache/mvm}/cargo-fuzz/<version>/bin/cargo-fuzz,
# installed in a temporary directory and renamed into place when complete.
# The LAST line of stdout is the binary's path.
set -euo pipefail

VERSION=0.13.1
CACHE=${MVM_CACHE:-/var/cache/mvm}/cargo-fuzz
OUT=$CACHE/$VERSION
BIN=$OUT/bin/cargo-fuzz

log() { printf 'cargo-fuzz: %s\n' "$*" >&2; }
die() {
	printf 'cargo-fuzz: error: %s\n' "$*" >&2
	exit 1
}

case "${1:-}" in
"") ;;
--print-path)
	echo "$BIN"
	exit 0
	;;
-h | --help)
	sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
	exit 0
	;;
*) die "unknown argument '$1' (usage: cargo-fuzz.sh [--print-path])" ;;
esac

rustup run nightly rustc --version >/dev/null 2>&1 ||
	die "no nightly toolchain: install it with 'rustup toolchain install nightly' (the fuzz targets need its sanitizer flags)"

if [ -x "$BIN" ]; then
	echo "$BIN"
	exit 0
fi
command -v cargo >/dev/null || die "cargo is not on PATH"
mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9
if [ -x "$BIN" ]; then
	echo "$BIN"
	exit 0
fi
rm -rf "$CACHE"/.tmp-*
TMP=$CACHE/.tmp-$VERSION-$$
trap 'rm -rf "$TMP"' EXIT
start=$SECONDS
log "building cargo-fuzz $VERSION with cargo install --locked (a minute or two once; cached in $OUT)"
CARGO_TARGET_DIR=$TMP/target cargo install --locked --quiet \
	--root "$TMP/root" cargo-fuzz --version "=$VERSION" >&2 ||
	die "cargo install cargo-fuzz $VERSION failed (see above)"
mkdir -p "$TMP/out/bin"
install -m 0755 "$TMP/root/bin/cargo-fuzz" "$TMP/out/bin/cargo-fuzz"
rm -rf "$OUT"
mv "$TMP/out" "$OUT"
log "done in $((SECONDS - start)) s"
echo "$BIN"
