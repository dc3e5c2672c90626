#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for tests and benchmarks.
#
#   scripts/pg-cluster.sh start DIR   initdb in DIR (as an unprivileged user, PostgreSQL refuses
#                                     root), start it on a free port of 127.0.0.1 with prepared
#                                     transactions enabled, print its URL on stdout
#   scripts/pg-cluster.sh restart DIR restart it on the same port (fast shutdown)
#   scripts/pg-cluster.sh crash-restart DIR   stop it as a crash would (immediate: what is not
#                                      yet written to the WAL is lost) and start it again
#   scripts/pg-cluster.sh stop DIR    stop it (DIR is left for the caller to remove)
# PG_EXTRA_OPTS adds server options at start (for example "-c wal_writer_delay=10s").
#
# Installs Debian's postgresql package when no server binaries are found.
set -euo pipefail

die() { echo "pg-cluster: $*" >&2; exit 1; }

find_bindir() {
  local d
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    [ -x "$d/initdb" ] && { echo "$d"; return 0; }
  done
  command -v initdb >/dev/null 2>&1 && { dirname "$(command -v initdb)"; return 0; }
  return 1
}

bindir() {
  local d
  if ! d=$(find_bindir); then
    [ "$(id -u)" = 0 ] || die "no PostgreSQL server binaries found; install the postgresql package"
    echo "pg-cluster: installing the postgresql package" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) >&2 \
      || die "could not install postgresql"
    d=$(find_bindir) || die "postgresql installed but initdb not found"
  fi
  echo "$d"
}

# Runs a command as the unprivileged owner of the cluster.
as_owner() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u "$OWNER" -- "$@"
  else
    "$@"
  fi
}

owner() {
  if [ "$(id -u)" != 0 ]; then id -un; return; fi
  if id postgres >/dev/null 2>&1; then echo postgres; return; fi
  id orchestrate-test >/dev/null 2>&1 || useradd --system --no-create-home orchestrate-test
  echo orchestrate-test
}

free_port() {
  if command -v python3 >/dev/null 2>&1; then
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
    return
  fi
  local p
  for p in $(seq 55432 55532); do
    if ! (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null; then echo $p; return; fi
  done
  die "no free port found"
}

cmd=${1:-}; dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || die "usage: $0 start|stop DIR"
OWNER=$(owner)
BIN=$(bindir)

case "$cmd" in
  start)
    mkdir -p "$dir"
    chmod 755 "$dir"
    [ "$(id -u)" = 0 ] && chown "$OWNER" "$dir"
    as_owner "$BIN/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --no-sync >"$dir/initdb.log" 2>&1 \
      || { cat "$dir/initdb.log" >&2; die "initdb failed"; }
    port=$(free_port)
    # fsync=off: a throwaway cluster; tests that restart the server use a clean or fast stop.
    as_owner "$BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
      -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_prepared_transactions=${PG_MAX_PREPARED:-1100} -c max_connections=${PG_MAX_CONNECTIONS:-200} -c fsync=off -c shared_buffers=64MB ${PG_EXTRA_OPTS:-}" \
      start >"$dir/pg_ctl.log" 2>&1 || { cat "$dir/pg_ctl.log" "$dir/server.log" >&2; die "the server did not start"; }
    echo "$port" >"$dir/port"
    echo "postgres://postgres@127.0.0.1:$port/postgres"
    ;;
  restart)
    as_owner "$BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -m fast -w -t 60 restart >"$dir/pg_ctl.log" 2>&1 \
      || { cat "$dir/pg_ctl.log" >&2; die "restart failed"; }
    ;;
  crash-restart)
    as_owner "$BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -m immediate -w -t 60 restart >"$dir/pg_ctl.log" 2>&1 \
      || { cat "$dir/pg_ctl.log" >&2; die "restart failed"; }
    ;;
  stop)
    [ -d "$dir/data" ] || exit 0
    as_owner "$BIN/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
    ;;
  *) die "unknown command $cmd" ;;
esac
