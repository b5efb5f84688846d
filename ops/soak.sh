#!/usr/bin/env bash
# The long fault run: ops/soak.sh DURATION [SEED]
#
# Runs the fault matrix (tests/fault) for DURATION (e.g. 1800, 90s, 30m, 2h) against a real
# 3-node cluster archiving to the S3-compatible test server, with the nemesis injecting kills,
# pauses, partitions, a full disk and object-store faults. SEED (default: from the clock)
# replays the same sequence of faults. Prints the summary table: faults by kind with the time to
# recover after each, operations ok / failed / unknown, whether every history was
# linearizable, lost acknowledged writes, the change feed, replica digests and the final drill.
# The whole log goes to target/soak/soak-SEED.log. Needs root for the full-disk fault (tmpfs
# data directories); without it that fault is skipped and the table says so.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { echo "usage: ops/soak.sh DURATION [SEED]   (DURATION: seconds, or 90s, 30m, 2h)" >&2; exit 2; }
[ $# -ge 1 ] && [ $# -le 2 ] || usage
case "$1" in
  *h) seconds=$(( ${1%h} * 3600 )) ;;
  *m) seconds=$(( ${1%m} * 60 )) ;;
  *s) seconds=${1%s} ;;
  *) seconds=$1 ;;
esac
[[ "$seconds" =~ ^[0-9]+$ ]] && [ "$seconds" -gt 0 ] || usage
seed=${2:-$(date +%s%N)}
[[ "$seed" =~ ^[0-9]+$ ]] || { echo "SEED must be a number, not $seed" >&2; exit 2; }

[ -x target/tools/moto/bin/moto_server ] || [ -n "${KEEPSAKE_S3_SERVER:-}" ] || bash ops/setup.sh
mkdir -p target/soak
log=target/soak/soak-$seed.log
echo "soak: ${seconds} s, seed $seed; log: $log"
KEEPSAKE_SOAK_SECONDS=$seconds KEEPSAKE_FAULT_SEED=$seed \
  cargo test --test fault soak -- --ignored --exact --nocapture 2>&1 | tee "$log" \
  | sed -n '/^fault run summary/,/^archive restores/p'
status=${PIPESTATUS[0]}
[ "$status" -eq 0 ] && echo "soak: passed" || echo "soak: FAILED (exit $status); see $log"
exit "$status"
