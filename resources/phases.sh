#!/bin/bash
# Run make targets one after another and print how long each took: `make
# test` goes through here, so every run of it (CI's included) ends with the
# table that says where a fresh machine's hour goes.
#
# Usage: resources/phases.sh PHASE...
#   PHASE is a make target, or `FG1 FG2...|BG1 BG2...`: FG1, then FG2, ...
#   in the foreground (each a row of its own) while BG1, then BG2, ... run
#   beside them at the lowest CPU priority (nice 19),
#   their output kept in target/phase-BG.log and shown when they end. make
#   test builds the kernel and base images beside the workspace build
#   (uncached only on a fresh machine); nothing runs beside the end-to-end
#   suite, whose emulated host keeps both cores busy (checks beside it only
#   slowed it: CI took 67 minutes that way).
# Stops after the first phase that fails (the table shows how far it got).
set -uo pipefail
cd "$(dirname "$0")/.."
rows=()
t0=$SECONDS
table() {
  printf '\n%-24s %8s\n' phase seconds >&2
  local r
  for r in "${rows[@]}"; do printf '%-24s %8s\n' $r >&2; done
  printf '%-24s %8s\n' total $((SECONDS - t0)) >&2
}
trap table EXIT
stamp() { date -u +%H:%M:%S; }

# beside TARGET...: run each target in turn at nice 19; one line per target
# "NAME SECONDS STATUS" in $beside_times.
beside() {
  local t s rc
  for t in "$@"; do
    s=$SECONDS
    rc=0
    nice -n 19 make --no-print-directory "$t" >"target/phase-$t.log" 2>&1 || rc=$?
    echo "$t $((SECONDS - s)) $rc" >>"$beside_times"
    [ "$rc" = 0 ] || return "$rc"
  done
}

status=0
for phase in "$@"; do
  fg=${phase%%|*}
  bg=()
  [ "$fg" != "$phase" ] && read -ra bg <<<"${phase#*|}"
  pid=
  if [ ${#bg[@]} -gt 0 ]; then
    mkdir -p target
    for t in "${bg[@]}"; do rm -f "target/phase-$t.log"; done
    beside_times=$(mktemp "target/phase-times.XXXXXX")
    echo "=== make ${bg[*]} beside ${fg// /, }, at nice 19 ($(stamp)); output in target/phase-*.log" >&2
    beside "${bg[@]}" &
    pid=$!
  fi
  for t in $fg; do
    start=$SECONDS
    echo "=== make $t ($(stamp))" >&2
    rc=0
    make --no-print-directory "$t" || rc=$?
    rows+=("$t $((SECONDS - start))")
    [ "$rc" = 0 ] || { status=$rc && break; }
  done
  if [ -n "$pid" ]; then
    echo "=== waiting for ${bg[*]} ($(stamp))" >&2
    brc=0
    wait "$pid" || brc=$?
    for t in "${bg[@]}"; do
      [ -f "target/phase-$t.log" ] || continue
      echo "=== make $t (beside $fg): its output" >&2
      cat "target/phase-$t.log" >&2
    done
    while read -r name secs trc; do
      rows+=("$name(beside) $secs")
      [ "$trc" = 0 ] || echo "=== make $name failed (exit $trc)" >&2
    done <"$beside_times"
    rm -f "$beside_times"
    [ "$brc" = 0 ] || [ "$status" != 0 ] || status=$brc
  fi
  if [ "$status" != 0 ]; then
    rows+=("(stopped) -")
    exit "$status"
  fi
done
