#!/usr/bin/env bash
# Build the mvm guest kernel: Debian's linux-source-6.12 + tinyconfig +
# config.fragment, as an uncompressed, PVH-bootable ELF vmlinux.
#
# The result is cached under ${MVM_CACHE:-/var/cache/mvm}/kernel/<hash>/,
# where <hash> covers everything that decides the kernel's content (the
# fragment, this script and the source package version), so a second run is
# instant and a changed fragment never reuses a stale kernel.
#
# Progress goes to stderr; the LAST line of stdout is the vmlinux path, so
# callers can do `vmlinux=$(resources/kernel/build.sh | tail -n1)`.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
FRAGMENT=$HERE/config.fragment
SELF=$HERE/build.sh
SRC_PKG=linux-source-6.12
TARBALL=/usr/src/linux-source-6.12.tar.xz
# Everything `make vmlinux` needs on a bare Debian 12 (objtool needs libelf).
DEPS=("$SRC_PKG" flex bison libelf-dev bc xz-utils make gcc libc6-dev binutils)
CACHE=${MVM_CACHE:-/var/cache/mvm}/kernel
PROGRESS_EVERY=20 # seconds between progress lines while compiling

log() { printf 'kernel: %s\n' "$*" >&2; }
die() {
	printf 'kernel: error: %s\n' "$*" >&2
	exit 1
}

usage() {
	cat <<EOF
usage: $0 [--print-path | --clean | --help]

Builds the mvm guest kernel (if not cached) and prints the path of the
PVH-bootable vmlinux as the last line of stdout. Progress goes to stderr.

  --print-path  print the path the cached vmlinux has (or would have) and
                build nothing
  --clean       delete the unpacked source and object tree kept between
                builds (the cached kernels stay)
  --help        this text

Cache: \${MVM_CACHE:-/var/cache/mvm}/kernel/<hash>/{vmlinux,config,System.map}
EOF
}

mode=build
case "${1:-}" in
"") ;;
--print-path) mode=print ;;
--clean) mode=clean ;;
-h | --help)
	usage
	exit 0
	;;
*)
	usage >&2
	die "unknown argument '$1'"
	;;
esac
[ $# -le 1 ] || die "expected at most one argument, got $#; see --help"

# Installs the build dependencies that are missing. Needed before hashing
# too, because the hash includes the installed source package version.
ensure_deps() {
	local missing=() p installed
	# One dpkg-query for all packages keeps a cached run fast.
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
		log "apt-get install failed; refreshing the package lists and retrying"
		apt-get update -q >&2 || die "apt-get update failed; check network access to the Debian mirror"
		apt-get install -y -q --no-install-recommends "${missing[@]}" >&2 ||
			die "could not install ${missing[*]}"
	fi
}

[ -f "$FRAGMENT" ] || die "config fragment not found at $FRAGMENT"

if [ "$mode" = clean ]; then
	log "removing $CACHE/work"
	rm -rf "$CACHE/work"
	exit 0
fi

ensure_deps
[ -f "$TARBALL" ] || die "$TARBALL is missing although $SRC_PKG is installed; reinstall it (apt-get install --reinstall $SRC_PKG)"

SRC_VERSION=$(dpkg-query -W -f='${Version}' "$SRC_PKG")
HASH=$({
	cat "$FRAGMENT" "$SELF"
	printf '%s=%s\n' "$SRC_PKG" "$SRC_VERSION"
} | sha256sum | cut -c1-16)
OUT=$CACHE/$HASH
VMLINUX=$OUT/vmlinux

if [ "$mode" = print ] || [ -f "$VMLINUX" ]; then
	echo "$VMLINUX"
	exit 0
fi

mkdir -p "$CACHE"
# One build at a time per cache: two parallel test runs must not share the
# object tree half-built.
exec 9>"$CACHE/.lock"
if ! flock -n 9; then
	log "another kernel build holds $CACHE/.lock; waiting for it"
	flock 9
	if [ -f "$VMLINUX" ]; then
		echo "$VMLINUX"
		exit 0
	fi
fi

# Leftovers of interrupted installs are never valid kernels.
rm -rf "$CACHE"/.tmp-*

# Source and objects are kept between builds (per source version) so that a
# fragment change recompiles only what it affects; kbuild tracks per-option
# dependencies. `--clean` drops them.
WORK=$CACHE/work
SAFE_VERSION=${SRC_VERSION//[^A-Za-z0-9.+-]/_}
SRC=$WORK/src-$SAFE_VERSION
OBJ=$WORK/obj-$SAFE_VERSION
LOG=$WORK/build-$HASH.log
mkdir -p "$WORK"
for d in "$WORK"/src-* "$WORK"/obj-*; do
	[ -e "$d" ] || continue
	case "$d" in "$SRC" | "$OBJ") ;; *)
		log "removing $d (other source version)"
		rm -rf "$d"
		;;
	esac
done
rm -f "$WORK"/build-*.log
: >"$LOG"

log "building guest kernel $HASH ($SRC_PKG $SRC_VERSION); full log: $LOG"
start=$SECONDS

if [ ! -f "$SRC/.mvm-unpacked" ]; then
	log "phase 1/4: unpacking $TARBALL"
	rm -rf "$SRC" "$SRC.tmp"
	mkdir -p "$SRC.tmp"
	tar -xf "$TARBALL" -C "$SRC.tmp" --strip-components=1 ||
		die "could not unpack $TARBALL into $SRC.tmp (disk full?)"
	touch "$SRC.tmp/.mvm-unpacked"
	mv "$SRC.tmp" "$SRC"
	rm -rf "$OBJ" # objects of an older unpack are not trustworthy
else
	log "phase 1/4: source already unpacked in $SRC"
fi

fail_with_log() {
	log "$1 failed; last lines of $LOG:"
	tail -n 40 "$LOG" >&2 || true
	die "$1 failed; full log: $LOG"
}

kmake() { make -C "$SRC" O="$OBJ" "$@" >>"$LOG" 2>&1; }

log "phase 2/4: configuring (tinyconfig + $(basename "$FRAGMENT") + olddefconfig)"
fresh_obj=1
[ -f "$OBJ/vmlinux" ] && fresh_obj=0
mkdir -p "$OBJ"
kmake tinyconfig || fail_with_log "make tinyconfig"
"$SRC/scripts/kconfig/merge_config.sh" -m -O "$OBJ" "$OBJ/.config" "$FRAGMENT" >>"$LOG" 2>&1 ||
	fail_with_log "merge_config.sh"
kmake olddefconfig || fail_with_log "make olddefconfig"

# Kconfig silently drops an option whose dependencies are not met. Every
# value the fragment sets must be in the final .config, verbatim.
dropped=()
while IFS= read -r line; do
	line=${line%"${line##*[![:space:]]}"} # trailing blanks
	case "$line" in
	CONFIG_*=*)
		grep -qxF -- "$line" "$OBJ/.config" || {
			name=${line%%=*}
			got=$(grep -E "^($name=|# $name is not set)" "$OBJ/.config" || echo "absent")
			dropped+=("$line (final: $got)")
		}
		;;
	"# CONFIG_"*" is not set")
		name=${line#"# "}
		name=${name%% *}
		if got=$(grep -E "^$name=" "$OBJ/.config"); then
			dropped+=("$line (final: $got)")
		fi
		;;
	esac
done <"$FRAGMENT"
if [ ${#dropped[@]} -gt 0 ]; then
	log "these options of $FRAGMENT did not survive olddefconfig:"
	printf '  %s\n' "${dropped[@]}" >&2
	die "${#dropped[@]} option(s) dropped; add their missing dependencies to the fragment (see 'depends on' in the Kconfig files under $SRC)"
fi
log "configuration ok: every option of the fragment is in the final .config"

log "phase 3/4: compiling vmlinux with $(nproc) jobs"
expected=""
if [ "$fresh_obj" = 1 ] && [ -f "$WORK/objects-full-build" ]; then
	expected=$(cat "$WORK/objects-full-build")
fi
log_base=$(wc -l <"$LOG")
count_objects() { tail -n +"$((log_base + 1))" "$LOG" | grep -cE '^  (CC|AS|AR|LD) ' || true; }

# make runs in its own process group (setsid) so that stopping this script
# stops every compiler it started, and nothing keeps running unseen.
setsid make -C "$SRC" O="$OBJ" -j"$(nproc)" vmlinux >>"$LOG" 2>&1 &
make_pid=$!
stop_make() { kill -- "-$make_pid" 2>/dev/null || true; }
trap stop_make EXIT
trap 'stop_make; exit 130' INT
trap 'stop_make; exit 143' TERM
last=$SECONDS
while kill -0 "$make_pid" 2>/dev/null; do
	sleep 2
	if [ $((SECONDS - last)) -ge "$PROGRESS_EVERY" ]; then
		last=$SECONDS
		n=$(count_objects)
		if [ -n "$expected" ]; then
			log "  ... $n of ~$expected objects built ($((SECONDS - start)) s)"
		else
			log "  ... $n objects built ($((SECONDS - start)) s)"
		fi
	fi
done
make_status=0
wait "$make_pid" || make_status=$?
trap - EXIT INT TERM
[ "$make_status" = 0 ] || fail_with_log "make vmlinux"
built=$(count_objects)
[ "$fresh_obj" = 1 ] && echo "$built" >"$WORK/objects-full-build"
log "compiled: $built objects in $((SECONDS - start)) s"

log "phase 4/4: installing into $OUT"
TMP=$CACHE/.tmp-$HASH-$$
trap 'rm -rf "$TMP"' EXIT
mkdir -p "$TMP"

# The VMM (and QEMU) find the 32-bit PVH entry point through the Xen ELF
# note XEN_ELFNOTE_PHYS32_ENTRY (type 0x12). Without it the kernel is useless.
has_pvh_note() { readelf -n "$1" 2>/dev/null | grep -E '^[[:space:]]*Xen[[:space:]]' | grep -q '0x00000012'; }
has_pvh_note "$OBJ/vmlinux" || die "$OBJ/vmlinux has no PVH entry note (Xen note 0x12); is CONFIG_PVH=y in the fragment?"

# Symbols are only for debugging (System.map is kept next to the kernel);
# stripping shrinks the file the VMM reads on every boot.
if strip -o "$TMP/vmlinux" "$OBJ/vmlinux" && has_pvh_note "$TMP/vmlinux"; then
	stripped=yes
else
	log "warning: the stripped vmlinux lost its PVH note; installing it unstripped"
	cp "$OBJ/vmlinux" "$TMP/vmlinux"
	stripped=no
fi
cp "$OBJ/.config" "$TMP/config"
cp "$OBJ/System.map" "$TMP/System.map"
cat >"$TMP/build-info" <<EOF
hash=$HASH
source_package=$SRC_PKG
source_version=$SRC_VERSION
compiler=$(gcc --version | head -n1)
built_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)
build_seconds=$((SECONDS - start))
unstripped_bytes=$(stat -c %s "$OBJ/vmlinux")
vmlinux_bytes=$(stat -c %s "$TMP/vmlinux")
stripped=$stripped
EOF
rm -rf "$OUT"
mv "$TMP" "$OUT"
trap - EXIT
log "done in $((SECONDS - start)) s: $(stat -c %s "$VMLINUX") bytes (unstripped $(stat -c %s "$OBJ/vmlinux"))"
echo "$VMLINUX"
