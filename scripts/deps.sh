#!/usr/bin/env bash
# Installs, with apt-get when missing (root only), what building and testing need besides Rust:
# a C compiler, pkg-config, libpq and MariaDB client headers, libclang (pg_query, the
# PostgreSQL parser of the statement check, runs bindgen), and cmake and OpenSSL's headers for
# the `bundled` build. Called by scripts/test.sh and by
# .ci/run before its first cargo command.
set -euo pipefail

say() { echo "deps.sh: $*" >&2; }

need_apt=()
command -v cc >/dev/null 2>&1 || need_apt+=(gcc libc6-dev)
if ! pkg-config --exists libpq 2>/dev/null && [ ! -f /usr/include/postgresql/libpq-fe.h ]; then
  need_apt+=(libpq-dev)
fi
command -v pkg-config >/dev/null 2>&1 || need_apt+=(pkg-config)
# pg_query (PostgreSQL's parser, for the statement check) runs bindgen, which needs libclang.
# Only libclang itself counts: bindgen looks for libclang.so / libclang-N.so, and a machine may
# carry libclang-cpp (a different library) without it.
if [ -z "${LIBCLANG_PATH:-}" ] \
  && ! compgen -G "/usr/lib/llvm-*/lib/libclang.so*" >/dev/null \
  && ! compgen -G "/usr/lib/llvm-*/lib/libclang-[0-9]*.so*" >/dev/null \
  && ! compgen -G "/usr/lib/*/libclang.so*" >/dev/null \
  && ! compgen -G "/usr/lib/*/libclang-[0-9]*.so*" >/dev/null; then
  need_apt+=(libclang-dev)
fi
if ! pkg-config --exists mysqlclient 2>/dev/null && ! pkg-config --exists libmariadb 2>/dev/null; then
  need_apt+=(libmariadb-dev libmariadb-dev-compat)
fi
# The `bundled` build (libpq and the MySQL client library from source, which scripts/test.sh
# installs and checks) needs cmake and OpenSSL's headers.
command -v cmake >/dev/null 2>&1 || need_apt+=(cmake)
pkg-config --exists openssl 2>/dev/null || need_apt+=(libssl-dev)
if [ ${#need_apt[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || { say "missing packages: ${need_apt[*]}; install them and run again"; exit 1; }
  say "installing ${need_apt[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
