#!/bin/sh
# Install the Debian packages that building and testing mvm need.
# Idempotent and quick when everything is already there.
set -eu

PACKAGES="
  build-essential pkg-config cpio xz-utils zstd e2fsprogs busybox-static
  linux-source-6.12 flex bison libelf-dev bc
  qemu-system-x86 linux-image-amd64
  docker-registry skopeo apache2-utils debootstrap
  iproute2 procps psmisc file nftables
  libcap-ng-dev libseccomp-dev
  containerd fio iperf3 protobuf-compiler
"
# containerd (with ctr and runc): the containerd shim's end-to-end suite
# (tests/tests/shim.rs) starts a containerd of its own, and its benchmark
# compares with runc. protobuf-compiler: protoc, which the k8s-cri crate's
# build script needs (the shim suite's CRI client talks to containerd's CRI
# plugin, as the kubelet does). fio: the host side of the volume benchmark
# (tests/benches/volumes.rs; its guest side is resources/images/fio.sh).
# iperf3: the host side of the network benchmark's iperf3 rows
# (tests/benches/net.rs; its guest side is resources/images/iperf3.sh).

# virtiofsd, the virtio-fs backend (no Debian 12 package): built once with
# cargo into the cache by its own script, quick when present.
here=$(cd "$(dirname "$0")" && pwd)
virtiofsd() { "$here/virtiofsd/build.sh" >/dev/null; }

# A clean build (workspace, fuzz targets under AddressSanitizer, kernel,
# base images) takes about 15 GB; a full disk shows up much later as a
# linker killed by SIGBUS, so say it here, where it can be acted on.
need_gb=15
free_gb=$(df -Pk "$here/.." | awk 'NR == 2 { print int($4 / 1048576) }')
if [ "$free_gb" -lt "$need_gb" ]; then
  echo "deps: warning: only ${free_gb} GB free under $(cd "$here/.." && pwd); a clean build needs about ${need_gb} GB (free some, e.g. \`cargo clean\` in old checkouts)" >&2
fi

missing=""
for p in $PACKAGES; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed"; then
    missing="$missing $p"
  fi
done

if [ -z "$missing" ]; then
  echo "deps: all system packages present" >&2
  virtiofsd
  exit 0
fi

echo "deps: installing:$missing" >&2
if [ "$(id -u)" -ne 0 ]; then
  echo "deps: need root to install packages (run as root or with sudo)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >&2
# The registry package starts a system service on :5000 that tests do not
# use; policy-rc.d keeps package scripts from starting services.
printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
chmod +x /usr/sbin/policy-rc.d
trap 'rm -f /usr/sbin/policy-rc.d' EXIT
# shellcheck disable=SC2086
apt-get install -y -q --no-install-recommends $missing >&2
virtiofsd
echo "deps: done" >&2
