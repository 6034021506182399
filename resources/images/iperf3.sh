#!/bin/sh
# Debian bookworm minbase plus iperf3 (Debian's own package), for the
# network benchmark (tests/benches/net.rs): the sandbox's side of its
# iperf3 runs, next to the host's iperf3 from the same Debian release.
set -eu
here="$(dirname "$0")"
. "$here/common.sh"
export DEBIAN_INCLUDE="iperf3"
export DEBIAN_OUT="$CACHE_DIR/iperf3-bookworm.tar"
export DEBIAN_NAME="bench/iperf3:bookworm"
exec "$here/debian.sh" "$@"
