#!/usr/bin/env bash
# A throwaway MariaDB server for tests.
#
#   scripts/mariadb-server.sh start DIR   create a data folder in DIR (owned by an unprivileged
#                                         user), start mariadbd on a free port of 127.0.0.1,
#                                         print an admin URL (mysql://root@127.0.0.1:PORT/mysql)
#   scripts/mariadb-server.sh stop DIR    stop it (DIR is left for the caller to remove)
#
# Installs Debian's mariadb-server package when no server binaries are found (root only).
set -euo pipefail

die() { echo "mariadb-server: $*" >&2; exit 1; }

find_server() {
  local b
  for b in mariadbd mysqld; do
    command -v "$b" >/dev/null 2>&1 && { command -v "$b"; return 0; }
    [ -x "/usr/sbin/$b" ] && { echo "/usr/sbin/$b"; return 0; }
  done
  return 1
}

server() {
  local b
  if ! b=$(find_server); then
    [ "$(id -u)" = 0 ] || die "no MariaDB server binaries found; install the mariadb-server package"
    echo "mariadb-server: installing the mariadb-server package" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mariadb-server mariadb-client >/dev/null) >&2 \
      || die "could not install mariadb-server"
    b=$(find_server) || die "mariadb-server installed but mariadbd not found"
  fi
  echo "$b"
}

owner() {
  if [ "$(id -u)" != 0 ]; then id -un; return; fi
  if id mysql >/dev/null 2>&1; then echo mysql; return; fi
  id orchestrate-test >/dev/null 2>&1 || useradd --system --no-create-home orchestrate-test
  echo orchestrate-test
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

cmd=${1:-}
dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || die "usage: $0 start|stop DIR"

case "$cmd" in
  start)
    bin=$(server)
    install_db=$(command -v mariadb-install-db || command -v mysql_install_db || true)
    [ -n "$install_db" ] || die "mariadb-install-db not found"
    user=$(owner)
    mkdir -p "$dir/data"
    chown -R "$user" "$dir" 2>/dev/null || true
    chmod 755 "$dir"
    "$install_db" --no-defaults --user="$user" --datadir="$dir/data" --auth-root-authentication-method=normal \
      --skip-test-db >"$dir/install.log" 2>&1 || { cat "$dir/install.log" >&2; die "mariadb-install-db failed"; }
    port=$(free_port)
    echo "$port" >"$dir/port"
    "$bin" --no-defaults --user="$user" --datadir="$dir/data" --port="$port" --bind-address=127.0.0.1 \
      --socket="$dir/mysqld.sock" --pid-file="$dir/mysqld.pid" --skip-name-resolve \
      --innodb-buffer-pool-size=64M --innodb-log-file-size=16M --max-connections=200 \
      --log-error="$dir/error.log" >/dev/null 2>&1 &
    for _ in $(seq 1 100); do
      if [ -S "$dir/mysqld.sock" ] && mariadb --no-defaults -uroot -h127.0.0.1 -P"$port" -e 'SELECT 1' >/dev/null 2>&1; then
        echo "mysql://root@127.0.0.1:$port/mysql"
        exit 0
      fi
      sleep 0.2
    done
    cat "$dir/error.log" >&2 || true
    die "the server did not start"
    ;;
  stop)
    if [ -f "$dir/mysqld.pid" ]; then
      pid=$(cat "$dir/mysqld.pid")
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || exit 0
        sleep 0.1
      done
      kill -9 "$pid" 2>/dev/null || true
    fi
    ;;
  *) die "unknown command $cmd" ;;
esac
