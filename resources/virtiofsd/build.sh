#!/usr/bin/env bash
# Install the virtio-fs backend, the Rust virtiofsd (virtio-fs project), at a
# pinned version into a project-owned prefix. Debian 12 has no virtiofsd
# package, so it is built from crates.io with `cargo install --locked` (the
# crate's own lock file: the same dependency versions on every machine).
#
# The result is cached under ${MVM_CACHE:-/var/cache/mvm}/virtiofsd/<version>/
# (bin/virtiofsd), so a second run is instant; it is installed into a
# temporary directory and renamed into place only when complete.
#
# Progress goes to stderr; the LAST line of stdout is the binary's path, so
# callers can do `virtiofsd=$(resources/virtiofsd/build.sh | tail -n1)`.
set -euo pipefail

# Pinned: a new version is a deliberate change (and a new cache directory).
VERSION=1.14.0
# libseccomp for its seccomp filter (the crate's default feature),
# libcap-ng for dropping capabilities.
DEPS=(libcap-ng-dev libseccomp-dev pkg-config gcc libc6-dev)
CACHE=${MVM_CACHE:-/var/cache/mvm}/virtiofsd
OUT=$CACHE/$VERSION
BIN=$OUT/bin/virtiofsd

log() { printf 'virtiofsd: %s\n' "$*" >&2; }
die() {
	printf 'virtiofsd: error: %s\n' "$*" >&2
	exit 1
}

usage() {
	cat <<EOF
usage: $0 [--print-path | --version | --help]

Installs virtiofsd $VERSION (if not cached) with cargo and prints the path
of the binary as the last line of stdout. Progress goes to stderr.

  --print-path  print the path the cached binary has (or would have) and
                install nothing
  --version     print the pinned version
  --help        this text

Cache: \${MVM_CACHE:-/var/cache/mvm}/virtiofsd/<version>/bin/virtiofsd
EOF
}

case "${1:-}" in
"") ;;
--print-path)
	echo "$BIN"
	exit 0
	;;
--version)
	echo "$VERSION"
	exit 0
	;;
-h | --help)
	usage
	exit 0
	;;
*)
	usage >&2
	die "unknown argument '$1'"
	;;
esac

if [ -x "$BIN" ]; then
	echo "$BIN"
	exit 0
fi

ensure_deps() {
	local missing=() p installed
	installed=$(dpkg-query -W -f='${Package} ${Status}\n' "${DEPS[@]}" 2>/dev/null |
		awk '$NF == "installed" && $(NF-1) == "ok" {print $1}' | sed 's/:.*//') || true
	for p in "${DEPS[@]}"; do
		grep -qxF -- "$p" <<<"$installed" || missing+=("$p")
	done
	[ ${#missing[@]} -eq 0 ] && return 0
	[ "$(id -u)" -eq 0 ] || die "missing packages: ${missing[*]}; install them (apt-get install ${missing[*]}) or run as root"
	log "installing missing packages: ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	if ! apt-get install -y -q --no-install-recommends "${missing[@]}" >&2; then
		apt-get update -q >&2 || die "apt-get update failed; check access to the Debian mirror"
		apt-get install -y -q --no-install-recommends "${missing[@]}" >&2 ||
			die "could not install ${missing[*]}"
	fi
}

ensure_deps
command -v cargo >/dev/null || die "cargo is not on PATH (the Rust toolchain builds virtiofsd)"

mkdir -p "$CACHE"
# One install at a time per cache.
exec 9>"$CACHE/.lock"
if ! flock -n 9; then
	log "another install holds $CACHE/.lock; waiting for it"
	flock 9
	if [ -x "$BIN" ]; then
		echo "$BIN"
		exit 0
	fi
fi
rm -rf "$CACHE"/.tmp-*

TMP=$CACHE/.tmp-$VERSION-$$
trap 'rm -rf "$TMP"' EXIT
mkdir -p "$TMP"
start=$SECONDS
log "building virtiofsd $VERSION with cargo install --locked (a few minutes once; cached in $OUT)"
# Its own target dir inside the temporary prefix: removed with it, never
# shared with a workspace build.
CARGO_TARGET_DIR=$TMP/target cargo install --locked --quiet \
	--root "$TMP/root" virtiofsd --version "=$VERSION" >&2 ||
	die "cargo install virtiofsd $VERSION failed (see above)"
mkdir -p "$TMP/out/bin"
install -m 0755 "$TMP/root/bin/virtiofsd" "$TMP/out/bin/virtiofsd"
"$TMP/out/bin/virtiofsd" --version >&2 || die "the built virtiofsd does not run"
rm -rf "$OUT"
mv "$TMP/out" "$OUT"
log "done in $((SECONDS - start)) s"
echo "$BIN"
