#!/bin/sh
# Debian bookworm minbase plus python3-minimal (for the example app that
# prints an average).
set -eu
here="$(dirname "$0")"
. "$here/common.sh"
export DEBIAN_INCLUDE="python3-minimal"
export DEBIAN_OUT="$CACHE_DIR/python3-bookworm.tar"
export DEBIAN_NAME="python:3-bookworm"
exec "$here/debian.sh" "$@"
