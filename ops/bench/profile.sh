#!/usr/bin/env bash
# Profiles the write path: a 64-client, 1 KiB write run of `keepsake bench --start-cluster`
# (3 nodes, local archive), sampled by `perf record` (cpu-clock, DWARF call graphs) on the three
# nodes for SECONDS, then summarised: CPU by thread and the costliest functions, inclusive and
# self. Needs Debian's linux-perf (installed if missing).
#
# Usage: ops/bench/profile.sh [SECONDS] [extra keepsake bench flags…]   (default 6)
set -euo pipefail
cd "$(dirname "$0")/../.."
SECS=${1:-6}
shift || true
if ! command -v perf >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq linux-perf >/dev/null
fi
cargo build --release --locked --bin keepsake >&2
OUT=target/bench/profile-$(date +%Y%m%d-%H%M%S)
mkdir -p "$OUT"
target/release/keepsake bench --start-cluster --cluster-port 27201 --clients 64 --mix write \
  --warmup 3s --duration "$((SECS + 6))s" "$@" > "$OUT/bench.txt" 2>&1 &
BENCH=$!
trap 'kill $BENCH 2>/dev/null || true' EXIT
pids=""
for _ in $(seq 200); do
  pids=$(pgrep -d, -f 'keepsake serve .*--cluster-id keepsake-bench' || true)
  [ "$(tr ',' '\n' <<<"$pids" | grep -c .)" -ge 3 ] && break
  sleep 0.1
done
sleep 4 # past the cluster's start and the warm-up
perf record -F 499 -g --call-graph dwarf,16384 -p "$pids" -o "$OUT/perf.data" -- sleep "$SECS" 2>/dev/null
wait $BENCH || true
{
  echo "== bench"; cat "$OUT/bench.txt"
  echo; echo "== CPU samples by process and thread"
  perf report -i "$OUT/perf.data" --no-children --sort pid,comm --stdio -g none 2>/dev/null | grep -v '^#' | grep . | head -20 || true
  echo; echo "== inclusive (children), top functions"
  perf report -i "$OUT/perf.data" --children --sort symbol --stdio -g none --percent-limit 3 2>/dev/null | grep -v '^#' | grep . | cut -c1-150 | head -60 || true
  echo; echo "== self time, top functions"
  perf report -i "$OUT/perf.data" --no-children --sort dso,symbol --stdio -g none --percent-limit 0.7 2>/dev/null | grep -v '^#' | grep . | cut -c1-150 | head -40 || true
} | tee "$OUT/summary.txt"
echo "profile: $OUT/summary.txt (perf.data kept for perf report)" >&2
