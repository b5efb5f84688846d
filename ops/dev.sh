#!/usr/bin/env bash
# One command for a fresh machine: install what is missing, build, and run a local 3-node
# cluster (client endpoints 127.0.0.1:7001-7003) until Ctrl-C. Extra arguments go to
# `keepsake dev` (e.g. --data-dir DIR). It builds the same profile as the tests (dependencies
# optimised, RocksDB built once for both); use `cargo build --release` for benchmarks.
set -euo pipefail
cd "$(dirname "$0")/.."
bash ops/setup.sh
exec cargo run --locked --bin keepsake -- dev "$@"
