#!/usr/bin/env bash
# The main job on the embedded default: builds orchestrate and brings the three SQLite binds of
# config/default.toml (files under var/) to head as one atomic batch, then shows their status.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null 2>&1 || { echo "cargo not found: install Rust (https://rustup.rs) first" >&2; exit 1; }
need=()
if ! pkg-config --exists libpq 2>/dev/null && [ ! -f /usr/include/postgresql/libpq-fe.h ]; then
  need+=(libpq-dev)
fi
if ! pkg-config --exists mysqlclient 2>/dev/null && ! pkg-config --exists libmariadb 2>/dev/null; then
  need+=(libmariadb-dev libmariadb-dev-compat)
fi
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
# pg_query (PostgreSQL's parser, for the statement check) runs bindgen, which needs libclang.
if [ -z "${LIBCLANG_PATH:-}" ] && ! compgen -G "/usr/lib/llvm-*/lib/libclang*.so*" >/dev/null \
  && ! compgen -G "/usr/lib/*/libclang*.so*" >/dev/null; then
  need+=(libclang-dev)
fi
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "missing build dependencies: install ${need[*]} (Debian/Ubuntu), or libpq and mysql-client (Homebrew)" >&2; exit 1
  fi
fi
cargo build --release --locked --quiet
target/release/orchestrate upgrade --all-binds
target/release/orchestrate status
