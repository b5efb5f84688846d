#!/usr/bin/env bash
# Installs what building and testing Keepsake needs on a fresh Debian machine with the Rust
# toolchain: a C++ compiler and libclang (RocksDB's bindings), and the S3-compatible server
# the tests archive to (moto, from PyPI, in a virtualenv under target/tools). protoc comes vendored
# through Cargo. Idempotent, and quick when everything is already there.
#
# --with-bench-compare also installs what CI's lint needs: a system protoc, with which the
# bench-compare feature's etcd-client compiles etcd's protos, and cargo-deny.
set -euo pipefail
cd "$(dirname "$0")/.."

# bindgen wants libclang itself (libclang.so* or libclang-N.so*), not libclang-cpp.
has_libclang() {
  local f
  for f in /usr/lib/llvm-*/lib/libclang.so* /usr/lib/llvm-*/lib/libclang-[0-9]*.so* \
           /usr/lib/*-linux-gnu/libclang.so* /usr/lib/*-linux-gnu/libclang-[0-9]*.so*; do
    [ -e "$f" ] && return 0
  done
  return 1
}

need=()
command -v c++ >/dev/null 2>&1 || need+=(g++)
command -v make >/dev/null 2>&1 || need+=(make)
has_libclang || need+=(libclang-dev)
command -v python3 >/dev/null 2>&1 || need+=(python3)
if [ "${1:-}" = "--with-bench-compare" ]; then
  command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
fi
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)

if [ ${#need[@]} -gt 0 ]; then
  echo "ops/setup.sh: installing ${need[*]}" >&2
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "ops/setup.sh: cargo is not on PATH; install the Rust toolchain (rustup) first" >&2
  exit 1
fi

# cargo-deny, for CI's check of licences, bans and sources (deny.toml), built once into
# target/tools from crates.io.
DENY_VERSION=0.18.9
if [ "${1:-}" = "--with-bench-compare" ] && [ "$(cat target/tools/cargo-deny/.installed 2>/dev/null)" != "$DENY_VERSION" ]; then
  echo "ops/setup.sh: building cargo-deny $DENY_VERSION into target/tools/cargo-deny" >&2
  cargo install --quiet --locked --version "$DENY_VERSION" --root target/tools/cargo-deny cargo-deny
  echo "$DENY_VERSION" > target/tools/cargo-deny/.installed
fi

# The S3-compatible test server: the tests start target/tools/moto/bin/moto_server on loopback.
MOTO_VERSION=5.2.5
venv=target/tools/moto
if [ "$(cat "$venv/.installed" 2>/dev/null)" != "$MOTO_VERSION" ]; then
  echo "ops/setup.sh: installing the S3 test server (moto $MOTO_VERSION) into $venv" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION"
  echo "$MOTO_VERSION" > "$venv/.installed"
fi
