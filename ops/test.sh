#!/usr/bin/env bash
# One command for a fresh machine: install what is missing, build, and run the whole test
# suite (unit tests, openraft's storage suite, and integration tests with real processes).
# The tests' binary has crash points (the failpoints feature); a release build never does.
set -euo pipefail
cd "$(dirname "$0")/.."
bash ops/setup.sh
if cargo nextest --version >/dev/null 2>&1; then
  exec cargo nextest run --workspace --locked --no-fail-fast --features keepsake/failpoints "$@"
else
  echo "ops/test.sh: cargo-nextest not found; using cargo test" >&2
  exec cargo test --workspace --locked --no-fail-fast --features keepsake/failpoints "$@"
fi
