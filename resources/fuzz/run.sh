#!/usr/bin/env bash
# Build the libFuzzer targets (fuzz/libfuzzer/, whose bodies are in fuzz/src/)
# and run each for a while.
#
# Usage: resources/fuzz/run.sh SECONDS [TARGET...]
#   SECONDS  CPU time per target (the smoke run in `make test` gives each a
#            few seconds: the targets keep building and shallow crashes are
#            caught; `make fuzz` gives each FUZZ_SECONDS, 300 by default).
#   TARGET   the targets to run (default: all of them).
# Corpora persist in ${MVM_CACHE:-/var/cache/mvm}/fuzz/corpus/<target>
# (seeded by fuzz/make_seeds.py where libFuzzer would take long to find
# the format: tar archives, JSON documents); a crash leaves its input
# in fuzz/libfuzzer/artifacts/<target>/ and fails the run, naming the
# reproducer:
#   (cd fuzz/libfuzzer && cargo fuzz run --fuzz-dir . TARGET artifacts/TARGET/crash-...)
# FUZZ_PROFILE (release or dev) picks how the targets are built.
# At the end a table prints each target's executions, coverage and corpus
# size (what docs/security.md reports).
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:?usage: run.sh SECONDS [TARGET...]}
shift
# FUZZ_PROFILE=release (the default, `make fuzz`): optimised targets, as
# long runs want. FUZZ_PROFILE=dev (`make fuzz-smoke`): unoptimised, a
# few times quicker to build from clean (the sanitizer and debug
# assertions stay); a smoke run's seconds find shallow crashes either way.
case "${FUZZ_PROFILE:-release}" in
	release) profile=(-O --debug-assertions) ;;
	dev) profile=(--dev) ;;
	*) echo "fuzz: FUZZ_PROFILE must be release or dev, not ${FUZZ_PROFILE}" >&2; exit 2 ;;
esac
fuzz=$(resources/fuzz/cargo-fuzz.sh | tail -n1)
# The crate is its own workspace under fuzz/, whose library (the target
# bodies) cargo-fuzz would otherwise take for the project: name the
# directory. Its rust-toolchain.toml selects nightly.
cd fuzz/libfuzzer
fdir=(--fuzz-dir "$PWD")
echo "fuzz: building the targets (nightly, AddressSanitizer, ${FUZZ_PROFILE:-release})" >&2
"$fuzz" build "${fdir[@]}" "${profile[@]}" >&2
if [ $# -eq 0 ]; then
	mapfile -t targets < <("$fuzz" list "${fdir[@]}")
else
	targets=("$@")
fi
corpora=${MVM_CACHE:-/var/cache/mvm}/fuzz/corpus
seeds_dir=$(mktemp -d)
trap 'rm -rf "$seeds_dir"' EXIT
python3 ../make_seeds.py "$seeds_dir"
status=0
summary=()
for t in "${targets[@]}"; do
	mkdir -p "$corpora/$t" "artifacts/$t"
	seeds=()
	[ -d "$seeds_dir/$t" ] && seeds=("$seeds_dir/$t")
	log=$(mktemp)
	echo "=== fuzz: $t for ${secs} s" >&2
	rc=0
	"$fuzz" run "${fdir[@]}" "${profile[@]}" "$t" "$corpora/$t" "${seeds[@]}" -- \
		-max_total_time="$secs" -rss_limit_mb=2048 -max_len=65536 \
		-print_final_stats=1 >"$log" 2>&1 || rc=$?
	if [ "$rc" != 0 ]; then
		tail -n 60 "$log" >&2
		echo "fuzz: $t FAILED (exit $rc); reproducer in fuzz/libfuzzer/artifacts/$t/" >&2
		status=1
	fi
	execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)
	cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n1 | cut -d' ' -f2)
	n=$(find "$corpora/$t" -type f | wc -l)
	summary+=("$(printf '%-16s %8s s %12s %8s %8s %s' "$t" "$secs" "${execs:-?}" "${cov:-?}" "$n" "$([ "$rc" = 0 ] && echo ok || echo CRASH)")")
	rm -f "$log"
done
printf '\n%-16s %10s %12s %8s %8s %s\n' target time executions edges corpus result
printf '%s\n' "${summary[@]}"
exit "$status"
