#!/usr/bin/env bash
# Mutation testing of the protocol modules with cargo-mutants (run on demand, not in CI).
#
#   scripts/mutants.sh [FILE...]      default: the modules of the batch, the decision, recovery
#                                     and the participants (see PROTOCOL below)
#
# Starts throwaway PostgreSQL and MariaDB servers (as scripts/test.sh does), then runs
# `cargo mutants` on the files given, each mutant built once and tested with the e2e tests of
# the protocol (arbitration, crash, recover, mysql, protocol_gaps, adversarial*) under nextest,
# three at a time (they mostly wait on databases), with every feature on (the e2e tests
# need `failpoints`). Results go to mutants.out/ (caught.txt,
# missed.txt, timeout.txt, unviable.txt, outcomes.json); MUTANTS.md summarises a run and gives
# a reason for every survivor. Installs cargo-mutants when missing. Expect about 2 minutes per
# mutant on 2 cores: the whole default set (about 260 mutants) takes most of a working day;
# give fewer files, MUTANTS_RE='function names' to pick mutants, or MUTANTS_ARGS="--shard 1/4",
# to split it.
set -euo pipefail
cd "$(dirname "$0")/.."

# The orchestrate crate's protocol modules. The driver's participants are mutated by
# scripts/named-mutations.py instead: cargo-mutants 27 tests a mutant with the tests of the
# package it mutates, and the e2e tests live in the orchestrate package (its --test-package
# and --test-workspace options were not honoured for a mutated driver file here).
PROTOCOL=(
  crates/orchestrator/src/coordinator.rs
  crates/orchestrator/src/recover.rs
  crates/orchestrator/src/nonatomic.rs
  crates/orchestrator/src/work.rs
)
files=("$@")
[ ${#files[@]} -gt 0 ] || files=("${PROTOCOL[@]}")

scripts/deps.sh
command -v cargo-mutants >/dev/null 2>&1 || cargo install --locked cargo-mutants
# nextest stops at the first failing test: a caught mutant costs its build and one failure,
# not the whole filter (cargo test runs every test of the e2e binary to the end).
command -v cargo-nextest >/dev/null 2>&1 || cargo install --locked cargo-nextest

pg_dir=$(mktemp -d /tmp/orchestrate-mutants-pg.XXXXXX)
maria_dir=$(mktemp -d /tmp/orchestrate-mutants-maria.XXXXXX)
cleanup() {
  scripts/pg-cluster.sh stop "$pg_dir" || true
  scripts/mariadb-server.sh stop "$maria_dir" || true
  rm -rf "$pg_dir" "$maria_dir"
}
trap cleanup EXIT
ORCHESTRATE_TEST_PG_URL=$(scripts/pg-cluster.sh start "$pg_dir")
ORCHESTRATE_TEST_MYSQL_URL=$(scripts/mariadb-server.sh start "$maria_dir")
export ORCHESTRATE_TEST_PG_URL ORCHESTRATE_TEST_MYSQL_URL
# Four kills per kill loop: every kill still ends in the all-or-nothing check, and below five
# the loops do not require both outcomes, which a few random kills could miss by chance (a
# chance failure would count a surviving mutant as caught).
export ORCHESTRATE_KILL_LOOPS=${ORCHESTRATE_KILL_LOOPS:-4}

file_args=()
for f in "${files[@]}"; do file_args+=(--file "$f"); done
# MUTANTS_RE: only the mutants whose names match this regular expression (it may hold spaces).
[ -z "${MUTANTS_RE:-}" ] || file_args+=(--re "$MUTANTS_RE")
# MUTANTS_EXCLUDE_RE: leave out the mutants whose names match this one.
[ -z "${MUTANTS_EXCLUDE_RE:-}" ] || file_args+=(--exclude-re "$MUTANTS_EXCLUDE_RE")
# shellcheck disable=SC2086
cargo mutants --no-shuffle --all-features --test-tool=nextest \
  --timeout 300 ${MUTANTS_ARGS:-} "${file_args[@]}" \
  -- --test e2e --test-threads "${MUTANTS_TEST_THREADS:-3}" \
  -E 'test(/^(arbitration|crash|recover|mysql|protocol_gaps|adversarial)/)'
