//! End-to-end tests: the built `orchestrate` binary against real PostgreSQL and SQLite
//! databases, checking exit codes, output and the state of every database afterwards.
//!
//! PostgreSQL comes from `ORCHESTRATE_TEST_PG_URL` (set by scripts/test.sh, which starts a
//! throwaway cluster). Without it these tests fail; they never skip.

mod cli;
mod crash;
mod drift;
mod recover;
mod scale;
mod seed;
mod support;
