#!/usr/bin/env bash
# The main job on the embedded default: builds orchestrate and brings the three SQLite binds of
# config/default.toml (files under var/) to head as one atomic batch, then shows their status.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null 2>&1 || { echo "cargo not found: install Rust (https://rustup.rs) first" >&2; exit 1; }
# The C libraries and headers the build needs (libpq, MariaDB client, libclang for pg_query),
# installed with apt-get when missing and run as root; otherwise it says what to install.
scripts/deps.sh
echo "demo: building orchestrate (release; a few minutes the first time, seconds after)" >&2
cargo build --release --locked --quiet
echo "demo: orchestrate upgrade --all-binds" >&2
target/release/orchestrate upgrade --all-binds
echo "demo: orchestrate status" >&2
target/release/orchestrate status
