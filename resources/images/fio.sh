#!/bin/sh
# Debian bookworm minbase plus fio (Debian's own package, with what it
# depends on), for the volume benchmark (tests/benches/volumes.rs): the
# guest side of its fio runs, next to the host's fio from the same
# Debian release.
set -eu
here="$(dirname "$0")"
. "$here/common.sh"
export DEBIAN_INCLUDE="fio"
export DEBIAN_OUT="$CACHE_DIR/fio-bookworm.tar"
export DEBIAN_NAME="bench/fio:bookworm"
exec "$here/debian.sh" "$@"
