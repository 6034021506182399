# Shared by the image scripts: argument parsing, cache paths, import hook.
# shellcheck shell=sh

CACHE_DIR="${MVM_CACHE:-/var/cache/mvm}/images"
IMPORT_WITH=""
NAME=""
FORCE=0

usage() {
  cat >&2 <<USAGE
usage: $0 [--force] [--name NAME[:TAG]] [--import-with CMD]
  Builds (or reuses) the root filesystem tarball under $CACHE_DIR
  and prints its path. With --import-with, runs: CMD TARBALL NAME
  (for example --import-with 'mvctl import', or
  --import-with 'target/release/examples/mvm-images-import').
USAGE
  exit 2
}

parse_args() {
  while [ $# -gt 0 ]; do
    case "$1" in
      --import-with) [ $# -ge 2 ] || usage; IMPORT_WITH="$2"; shift 2 ;;
      --name) [ $# -ge 2 ] || usage; NAME="$2"; shift 2 ;;
      --force) FORCE=1; shift ;;
      -h|--help) usage ;;
      *) echo "$0: unknown argument $1" >&2; usage ;;
    esac
  done
}

need_root() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "$0: must run as root (installs packages, sets file owners)" >&2
    exit 1
  fi
}

apt_install() {
  missing=""
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
  done
  [ -z "$missing" ] && return 0
  echo "$0: installing$missing" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >&2
  # shellcheck disable=SC2086
  apt-get install -y -q --no-install-recommends $missing >&2
}

# pack DIR OUT: deterministic-ish tarball of DIR's content, numeric owners,
# xattrs kept, written atomically.
pack() {
  mkdir -p "$(dirname "$2")"
  tar --numeric-owner --xattrs --xattrs-include='*' --sort=name \
      -C "$1" -cf "$2.tmp.$$" .
  mv -f "$2.tmp.$$" "$2"
}

finish() {
  tarball="$1"; default_name="$2"
  echo "$tarball"
  if [ -n "$IMPORT_WITH" ]; then
    # shellcheck disable=SC2086
    $IMPORT_WITH "$tarball" "${NAME:-$default_name}"
  fi
}
