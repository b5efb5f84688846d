#!/usr/bin/env bash
# The long fuzzing runs: ops/fuzz.sh [RUNS] [TARGET...]
#
# Runs each libFuzzer target under fuzz/ (default: all of them) for RUNS executions (default
# 10000000), starting from and adding to fuzz/corpus/TARGET, with a 64 MiB limit on any one
# allocation (the same limit tests/fuzz_corpus.rs checks in CI) and a 2 GiB RSS limit. Then
# minimizes each corpus (cargo fuzz cmin) so that what is committed stays small. Prints one line
# per target: executions, seconds, executions per second, corpus size, peak RSS, and any crash
# (its input is in fuzz/artifacts/TARGET/; copy it to fuzz/regressions/TARGET/ with the fix).
# Uses the nightly toolchain with AddressSanitizer when there is one, else stable without a
# sanitizer (cargo fuzz's reduced mode). Installs cargo-fuzz from crates.io when it is missing.
# Logs go to target/fuzz/TARGET.log.
set -euo pipefail
cd "$(dirname "$0")/.."

runs=${1:-10000000}
[[ "$runs" =~ ^[0-9]+$ ]] || { echo "usage: ops/fuzz.sh [RUNS] [TARGET...]" >&2; exit 2; }
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(segment archive_snapshot raft_snapshot keys messages requests)

command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  fuzz=(cargo +nightly fuzz); mode="nightly, AddressSanitizer"; sanitizer=()
else
  fuzz=(cargo fuzz); mode="stable, no sanitizer"; sanitizer=(-s none)
fi
mkdir -p target/fuzz
echo "fuzz: $runs runs per target ($mode)"
printf '%-17s %12s %8s %9s %7s %8s  %s\n' target runs seconds "exec/s" corpus "rss MiB" result
failed=0
for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$t"
  log=target/fuzz/$t.log
  start=$(date +%s)
  if "${fuzz[@]}" run "${sanitizer[@]}" --release "$t" "fuzz/corpus/$t" -- \
      -runs="$runs" -malloc_limit_mb=64 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
    result=ok
  else
    result="CRASH: see $log and fuzz/artifacts/$t/"; failed=1
  fi
  secs=$(( $(date +%s) - start ))
  done_runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$log" | tail -1)
  if [ "$result" = ok ]; then
    "${fuzz[@]}" cmin "${sanitizer[@]}" --release "$t" "fuzz/corpus/$t" >>"$log" 2>&1 || true
  fi
  corpus=$(find "fuzz/corpus/$t" -type f | wc -l)
  printf '%-17s %12s %8s %9s %7s %8s  %s\n' "$t" "${done_runs:-?}" "$secs" "${rate:-?}" "$corpus" "${rss:-?}" "$result"
done
exit "$failed"
