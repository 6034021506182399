#!/bin/bash
# Build the benchmarks on this host and run them: every `[[bench]]` target
# of the mvm-e2e package (tests/Cargo.toml) on real KVM - natively when the
# host has hardware virtualization, otherwise all of them inside ONE boot
# of the emulated KVM host - then the host-side image benchmarks
# (`cargo bench -p mvm-images`). Each benchmark prints a table.
# See docs/benchmarks.md.
#
# Usage: tests/run-bench.sh [NAME...]
#   NAME: an mvm-e2e bench target (boot, agent, ...) or `images`; default
#   all. `make bench` runs everything after `make build-release`.
# Environment: MVM_PROFILE_DIR (debug|release, default release) picks the
# mvm-vmm build; CARGO_TARGET_DIR is respected; MVM_KERNEL, MVM_INIT,
# MVM_VMM, MVM_VIRTIOFSD override the artifacts and are passed to the benchmarks, as are
# all MVM_BENCH_* variables (e.g. MVM_BENCH_BOOT_RUNS).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

profile_dir=${MVM_PROFILE_DIR:-release}
target=${CARGO_TARGET_DIR:-$root/target}
case "$target" in /*) ;; *) target=$root/$target ;; esac
names=("$@")

# wanted NAME: whether NAME was asked for (no names: everything).
wanted() {
  [ ${#names[@]} -eq 0 ] && return 0
  local n
  for n in "${names[@]}"; do [ "$n" = "$1" ] && return 0; done
  return 1
}

# The product's binaries with `make build`'s selection (the `run` and
# `volumes` benchmarks start mvmd, mvctl and, through mvmd, the jailer
# from next to mvm-vmm); a `-p` selection would unify features apart
# from it and rebuild dozens of crates.
release=()
[ "$profile_dir" = release ] && release=(--release)
echo "bench: building the product ($profile_dir)" >&2
cargo build "${release[@]}" --workspace --exclude mvm-init --exclude mvm-e2e >&2
export MVM_KERNEL=${MVM_KERNEL:-$(resources/kernel/build.sh --print-path)}
export MVM_INIT=${MVM_INIT:-$target/x86_64-unknown-linux-gnu/release/mvm-init}
export MVM_VMM=${MVM_VMM:-$target/$profile_dir/mvm-vmm}
export MVM_VIRTIOFSD=${MVM_VIRTIOFSD:-$(resources/virtiofsd/build.sh | tail -n1)}
# The containerd benchmark runs the shim as installed, as the shim suite
# does (tests/run-e2e.sh, tests/src/containerd.rs).
make --no-print-directory install PREFIX="$root/target/e2e-install" PROFILE="$profile_dir" >/dev/null ||
  { echo "bench: make install PREFIX=$root/target/e2e-install failed" >&2; exit 1; }
for f in "$MVM_KERNEL" "$MVM_INIT" "$MVM_VMM" "$MVM_VIRTIOFSD"; do
  [ -f "$f" ] || { echo "bench: $f is missing; run 'make kernel build-release' (or 'make bench') first" >&2; exit 1; }
done

# The bench executables of mvm-e2e: "NAME PATH" per line. Built in the
# bench profile (release), which is what `cargo bench` would run, or with
# MVM_PROFILE_DIR=debug in the dev profile next to the debug product,
# whose dependencies `cargo test --workspace` has built already (the
# benchmarks only drive the product; what they time is the product's
# code). The whole workspace is selected, as `cargo test --workspace`
# does, so that features unify the same way; only mvm-e2e's benchmarks
# are kept below.
bench_profile=()
[ "$profile_dir" = debug ] && bench_profile=(--profile dev)
echo "bench: building the benchmark executables" >&2
mkdir -p "$target"
json=$(mktemp "$target/mvm-bench-build.XXXXXX")
job=$(mktemp "$target/mvm-bench-job.XXXXXX")
trap 'rm -f "$json" "$job"' EXIT
cargo bench --workspace --bench '*' "${bench_profile[@]}" --no-run --message-format=json-render-diagnostics >"$json" ||
  { echo "bench: building the benchmarks failed" >&2; exit 1; }
mapfile -t benches < <(
  python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if (m.get("reason") == "compiler-artifact" and m.get("executable")
            and "bench" in m["target"]["kind"]
            and m.get("manifest_path") == sys.argv[1]):
        print(m["target"]["name"], m["executable"])
' "$root/tests/Cargo.toml" <"$json"
)
[ ${#benches[@]} -gt 0 ] || { echo "bench: no [[bench]] target was built for mvm-e2e" >&2; exit 1; }
selected=()
for entry in "${benches[@]}"; do
  wanted "${entry%% *}" && selected+=("$entry")
done
if [ ${#names[@]} -gt 0 ]; then
  for n in "${names[@]}"; do
    [ "$n" = images ] && continue
    printf '%s\n' "${benches[@]}" | grep -q "^$n " ||
      { echo "bench: no bench target '$n' in tests/Cargo.toml (have: $(printf '%s ' "${benches[@]%% *}")images)" >&2; exit 1; }
  done
fi

# The volumes benchmark's inputs, made here where there is a network and
# a writable cache (the emulated host has neither): Debian's fio in an
# image (resources/images/fio.sh, debootstrap once) and an uncompressed
# source tree (the fs/ directory of Debian's linux-source-6.12, which the
# guest kernel is built from), extracted once.
if printf '%s\n' "${selected[@]}" | grep -q '^volumes '; then
  command -v fio >/dev/null || { echo "bench: no fio on this host; run 'make deps'" >&2; exit 1; }
  export MVM_BENCH_VOL_IMAGE=${MVM_BENCH_VOL_IMAGE:-$(resources/images/fio.sh)}
  if [ -z "${MVM_BENCH_VOL_TREE:-}" ]; then
    MVM_BENCH_VOL_TREE=${MVM_CACHE:-/var/cache/mvm}/bench/linux-6.12-fs.tar
    if [ ! -s "$MVM_BENCH_VOL_TREE" ]; then
      echo "bench: extracting fs/ of /usr/src/linux-source-6.12.tar.xz (once)" >&2
      mkdir -p "$(dirname "$MVM_BENCH_VOL_TREE")"
      tree_tmp=$(mktemp -d "$(dirname "$MVM_BENCH_VOL_TREE")/tree.XXXXXX")
      tar -xJf /usr/src/linux-source-6.12.tar.xz -C "$tree_tmp" linux-source-6.12/fs
      tar --numeric-owner --owner=0 --group=0 --sort=name -C "$tree_tmp/linux-source-6.12" \
        -cf "$MVM_BENCH_VOL_TREE.tmp" fs
      mv "$MVM_BENCH_VOL_TREE.tmp" "$MVM_BENCH_VOL_TREE"
      rm -rf "$tree_tmp"
    fi
    export MVM_BENCH_VOL_TREE
  fi
fi

# The network benchmark's iperf3 rows: Debian's iperf3 on the host and in
# an image (resources/images/iperf3.sh, debootstrap once).
if printf '%s\n' "${selected[@]}" | grep -q '^net ' && [ "${MVM_BENCH_IPERF_SECS:-10}" != 0 ]; then
  command -v iperf3 >/dev/null || { echo "bench: no iperf3 on this host; run 'make deps'" >&2; exit 1; }
  export MVM_BENCH_IPERF_IMAGE=${MVM_BENCH_IPERF_IMAGE:-$(resources/images/iperf3.sh)}
fi

status=0
if [ ${#selected[@]} -gt 0 ]; then
  # The job must be visible inside the emulated host, whose /tmp is its
  # own tmpfs: it is under the target directory.
  {
    echo '#!/bin/sh'
    echo 'status=0'
    for entry in "${selected[@]}"; do
      printf 'echo "=== bench %s" >&2\n' "${entry%% *}"
      printf '"%s" --bench || { echo "bench %s FAILED" >&2; status=1; }\n' "${entry#* }" "${entry%% *}"
    done
    echo 'exit $status'
  } >"$job"
  chmod +x "$job"

  envs=(--env MVM_KERNEL --env MVM_INIT --env MVM_VMM --env MVM_VIRTIOFSD --env RUST_BACKTRACE)
  while IFS= read -r v; do envs+=(--env "$v"); done < <(compgen -e | grep '^MVM_BENCH_' || true)

  mode=$(resources/testhost/run --check 2>/dev/null || true)
  if [ "$mode" = hardware ]; then
    echo "bench: hardware KVM here; running natively" >&2
    "$job" || status=$?
  else
    echo "bench: no hardware KVM here ($mode); running inside the emulated KVM host" >&2
    resources/testhost/run --timeout "${MVM_BENCH_TIMEOUT:-1800}" "${envs[@]}" -- "$job" || status=$?
  fi
fi

if wanted images; then
  # Host-side: root disk from a tarball (mvm-images), and pull + root disk
  # through a real mvmd against skopeo + tar + mkfs.ext4 (mvmd's `pull`
  # bench, which starts its own docker-registry and mvmd). Inputs are the
  # tarballs of resources/images/*.sh (missing ones are reported and
  # skipped).
  echo "=== bench images (cargo bench -p mvm-images --bench '*', on this host)" >&2
  cargo bench -p mvm-images --bench "*" || { echo "bench images FAILED" >&2; status=1; }
  echo "=== bench images: pull (cargo bench -p mvmd --bench pull, on this host)" >&2
  cargo bench -p mvmd --bench pull || { echo "bench images: pull FAILED" >&2; status=1; }
fi
exit "$status"
