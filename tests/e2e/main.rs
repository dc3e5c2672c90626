//! End-to-end tests: the built `orchestrate` binary against real PostgreSQL, SQLite and MariaDB
//! databases, checking exit codes, output and the state of every database afterwards.
//!
//! PostgreSQL comes from `ORCHESTRATE_TEST_PG_URL` (set by scripts/test.sh, which starts a
//! throwaway cluster); MariaDB from `ORCHESTRATE_TEST_MYSQL_URL` (likewise). Without them these
//! tests fail; they never skip.

mod adversarial;
mod adversarial2;
mod adversarial3;
mod adversarial5;
mod adversarial6;
mod arbitration;
#[cfg(feature = "serve")]
mod browser;
mod cli;
mod config;
mod crash;
mod drift;
mod environments;
mod hang;
mod kept;
mod library;
mod mysql;
mod protocol_gaps;
mod recover;
mod rollout;
mod scale;
mod seed;
mod segments;
#[cfg(feature = "serve")]
mod serve;
mod statements;
mod support;
