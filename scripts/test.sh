#!/usr/bin/env bash
# Runs every test of the project, installing and starting what it needs:
# - the Rust toolchain must be there (cargo); C compiler, libclang (for pg_query's bindgen),
#   libpq and MariaDB client headers are installed with apt-get when missing (root only);
# - a throwaway PostgreSQL cluster with prepared transactions enabled is started in a temporary
#   folder and stopped afterwards, unless ORCHESTRATE_TEST_PG_URL names a server already;
# - likewise a throwaway MariaDB server (scripts/mariadb-server.sh), unless
#   ORCHESTRATE_TEST_MYSQL_URL names one (an admin URL: the tests create databases);
# - Debian's chromium and chromium-driver, for the browser test of `orchestrate serve`.
# With CI=true nothing is skipped: a database that cannot be had fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "test.sh: $*" >&2; }

scripts/deps.sh
command -v cargo >/dev/null 2>&1 || { say "cargo not found: install Rust (https://rustup.rs) first"; exit 1; }

cluster_dir=""
maria_dir=""
cleanup() {
  if [ -n "$cluster_dir" ]; then
    scripts/pg-cluster.sh stop "$cluster_dir" || true
    rm -rf "$cluster_dir"
  fi
  if [ -n "$maria_dir" ]; then
    scripts/mariadb-server.sh stop "$maria_dir" || true
    rm -rf "$maria_dir"
  fi
}
trap cleanup EXIT

if [ -z "${ORCHESTRATE_TEST_PG_URL:-}" ]; then
  cluster_dir=$(mktemp -d /tmp/orchestrate-test-pg.XXXXXX)
  if ! ORCHESTRATE_TEST_PG_URL=$(scripts/pg-cluster.sh start "$cluster_dir"); then
    say "could not start a PostgreSQL cluster; the PostgreSQL tests will fail"
    [ "${CI:-}" = true ] && exit 1
  fi
  export ORCHESTRATE_TEST_PG_URL
  say "PostgreSQL for tests: $ORCHESTRATE_TEST_PG_URL"
fi

if [ -z "${ORCHESTRATE_TEST_MYSQL_URL:-}" ]; then
  maria_dir=$(mktemp -d /tmp/orchestrate-test-maria.XXXXXX)
  if ! ORCHESTRATE_TEST_MYSQL_URL=$(scripts/mariadb-server.sh start "$maria_dir"); then
    say "could not start a MariaDB server; the MySQL tests will fail"
    [ "${CI:-}" = true ] && exit 1
  fi
  export ORCHESTRATE_TEST_MYSQL_URL
  say "MariaDB for tests: $ORCHESTRATE_TEST_MYSQL_URL"
fi

# The browser test (tests/e2e/browser.rs) drives Debian's headless Chromium through
# ChromeDriver; both are installed when missing (root only). Without them that test fails.
if [ -z "${ORCHESTRATE_TEST_CHROMIUM:-}" ] && ! { [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; }; then
  if [ "$(id -u)" = 0 ]; then
    say "installing chromium and chromium-driver (the browser test)"
    if ! (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null); then
      say "could not install chromium; the browser test will fail"
      [ "${CI:-}" = true ] && exit 1
    fi
  else
    say "chromium and chromium-driver are missing and cannot be installed without root; the browser test will fail"
    [ "${CI:-}" = true ] && exit 1
  fi
fi

# The failpoints feature compiles the crash points the crash tests use (inert without FAILPOINTS).
# ORCHESTRATE_KILL_LOOPS sets how many kills each kill loop makes (defaults: 30, 20 and 5).
cargo test --workspace --locked --features orchestrate/failpoints "$@"

# The default build too (no failpoints, as users get it), on the commands a new user runs first;
# only when the whole suite was asked for.
if [ $# -eq 0 ]; then
  cargo test -p orchestrate --locked --test e2e -- cli:: seed::
fi

# Without MySQL (`--no-default-features`): the MySQL client library is not in the build at
# all, and a mysql:// bind is refused when it is read, with a message that says how to get it.
if [ $# -eq 0 ]; then
  # grep reads all of it (no -q): under pipefail an early exit would SIGPIPE cargo and hide a match.
  if cargo tree -p orchestrate --locked --no-default-features -e normal 2>/dev/null | grep mysqlclient >/dev/null; then
    say "a build without the mysql feature still depends on the MySQL client library"
    exit 1
  fi
  cargo test -p orchestrate-driver --locked --no-default-features --lib -- without_mysql
fi

# Installable like a Rust CLI: `cargo install --features bundled` builds libpq and the MySQL
# client library from source into the binary, which must then link neither from the system,
# and passes the seed scenarios. Only with the whole suite (a release build: several minutes);
# ORCHESTRATE_SKIP_INSTALL=1 leaves it out locally, never in CI.
if [ $# -eq 0 ]; then
  if [ "${ORCHESTRATE_SKIP_INSTALL:-}" = 1 ] && [ "${CI:-}" != true ]; then
    say "SKIPPED: the bundled install check (ORCHESTRATE_SKIP_INSTALL=1)"
  else
    install_root=$(mktemp -d /tmp/orchestrate-install.XXXXXX)
    say "cargo install --features bundled (a release build with libpq and the MySQL client from source; several minutes the first time)"
    cargo install --quiet --locked --path crates/orchestrator --features bundled \
      --root "$install_root" --target-dir target/install
    linked=$(ldd "$install_root/bin/orchestrate")
    if echo "$linked" | grep -E "libpq|libmariadb|libmysqlclient"; then
      say "the bundled binary links a system database client library:"
      echo "$linked" >&2
      exit 1
    fi
    say "the bundled binary links no system libpq or MySQL client library"
    ORCHESTRATE_TEST_BIN="$install_root/bin/orchestrate" \
      cargo test -p orchestrate --locked --test e2e -- seed::
    # The Dockerfile's runtime stage, without Docker (none runs here): the same binary in a
    # debootstrap of its Debian release with its packages, running the main job (see the
    # script for what it cannot check). Root only; in CI it must run.
    if [ "$(id -u)" = 0 ]; then
      scripts/image-check.sh "$install_root/bin/orchestrate"
    elif [ "${CI:-}" = true ]; then
      say "the image check needs root (debootstrap, chroot)"
      exit 1
    else
      say "SKIPPED: the image check (needs root)"
    fi
    rm -rf "$install_root"
  fi
fi
