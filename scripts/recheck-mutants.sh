#!/usr/bin/env bash
# Re-applies mutants that cargo-mutants reported (its mutants.out/diff/*.diff files) to the code
# as it is now, one at a time, and runs e2e tests against each: did a test written since catch
# it? Run on demand, after scripts/mutants.sh.
#
#   scripts/recheck-mutants.sh DIFF... [-- TEST_FILTER...]
#
# Default filter: the protocol tests (arbitration crash recover mysql protocol_gaps adversarial). Each mutant
# is applied with `patch` in a worktree of HEAD (its own checkout, and its own target folder,
# target/recheck: the first run builds everything), on throwaway PostgreSQL and
# MariaDB servers. Prints `caught`, `MISSED`, `unviable` or `NOT APPLIED` (the code moved) per mutant; exits
# 1 when any mutant was missed or could not be applied.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

diffs=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
  diffs+=("$(realpath "$1")")
  shift
done
[ "${1:-}" = "--" ] && shift
filters=("$@")
[ ${#filters[@]} -gt 0 ] || filters=(arbitration crash recover mysql protocol_gaps adversarial)
[ ${#diffs[@]} -gt 0 ] || { echo "usage: $0 DIFF... [-- TEST_FILTER...]" >&2; exit 2; }

scripts/deps.sh
command -v cargo-nextest >/dev/null 2>&1 || cargo install --locked cargo-nextest

work=$(mktemp -d /tmp/orchestrate-recheck.XXXXXX)
pg_dir=$(mktemp -d /tmp/orchestrate-recheck-pg.XXXXXX)
maria_dir=$(mktemp -d /tmp/orchestrate-recheck-maria.XXXXXX)
cleanup() {
  scripts/pg-cluster.sh stop "$pg_dir" || true
  scripts/mariadb-server.sh stop "$maria_dir" || true
  git worktree remove --force "$work/tree" >/dev/null 2>&1 || true
  rm -rf "$work" "$pg_dir" "$maria_dir"
}
trap cleanup EXIT
git worktree add --detach "$work/tree" HEAD >/dev/null
ORCHESTRATE_TEST_PG_URL=$(scripts/pg-cluster.sh start "$pg_dir")
ORCHESTRATE_TEST_MYSQL_URL=$(scripts/mariadb-server.sh start "$maria_dir")
export ORCHESTRATE_TEST_PG_URL ORCHESTRATE_TEST_MYSQL_URL
export ORCHESTRATE_KILL_LOOPS=${ORCHESTRATE_KILL_LOOPS:-4}
# A target folder of its own: a build in the checkout meanwhile must not replace the mutated
# binary the tests run (they run target/.../debug/orchestrate).
export CARGO_TARGET_DIR=${RECHECK_TARGET_DIR:-$root/target/recheck}

status=0
cd "$work/tree"
for d in "${diffs[@]}"; do
  what=$(sed -n 2p "$d" | sed 's/^+++ //')
  where=$(basename "$d" .diff)
  if ! patch -s -p0 --dry-run < "$d" >/dev/null 2>&1; then
    echo "NOT APPLIED  $where: $what"
    status=1
    continue
  fi
  patch -s -p0 < "$d"
  if cargo nextest run --all-features --test e2e "${filters[@]}" \
      >"$work/last.log" 2>&1; then
    echo "MISSED       $where: $what"
    status=1
  elif grep -q "could not compile" "$work/last.log"; then
    echo "unviable     $where: $what (does not build)"
  else
    failing=$(grep -m3 -E '^\s+FAIL ' "$work/last.log" | awk '{print $NF}' | paste -sd, - || true)
    echo "caught       $where: $what (by ${failing:-a build or test failure; see below})"
    [ -n "$failing" ] || tail -5 "$work/last.log"
  fi
  git checkout -q -- .
done
exit $status
