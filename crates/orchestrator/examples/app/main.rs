//! An application with three databases that migrates them itself when it starts, all or
//! nothing, from migrations compiled into its binary: two SQLite databases (`users`,
//! `billing`) and one PostgreSQL database (`events`). Then it goes on with its work.
//!
//! ```sh
//! APP_EVENTS_URL=postgres://postgres@127.0.0.1:5432/events APP_DATA_DIR=/tmp/app \
//!   cargo run -p orchestrate --example app
//! ```
//!
//! - `APP_EVENTS_URL`: the PostgreSQL database (its server needs `max_prepared_transactions`
//!   of at least 1);
//! - `APP_DATA_DIR`: where the SQLite files go (default `var`).
//!
//! At start it first finishes a batch an earlier start was killed in (`recover`), then
//! upgrades every database to its head in one atomic batch. Exit 0 when it went on with its
//! work; 1 when a migration failed (every database is as it was); 3 when something needs a
//! person (`orchestrate status` says what).

use std::process::ExitCode;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel_migrations::{embed_migrations, EmbeddedMigrations};
use orchestrate::{Error, Event, Migrations, Orchestrator};

const USERS: EmbeddedMigrations = embed_migrations!("examples/app/migrations/users");
const BILLING: EmbeddedMigrations = embed_migrations!("examples/app/migrations/billing");
const EVENTS: EmbeddedMigrations = embed_migrations!("examples/app/migrations/events");

fn main() -> ExitCode {
    // Test support only: the crash points the project's tests kill this example at (builds
    // with the `failpoints` feature; inert without FAILPOINTS).
    #[cfg(feature = "failpoints")]
    let _crash_points = fail::FailScenario::setup();

    let Ok(events_url) = std::env::var("APP_EVENTS_URL") else {
        eprintln!("app: set APP_EVENTS_URL to a PostgreSQL database, such as postgres://postgres@127.0.0.1:5432/events");
        return ExitCode::from(2);
    };
    let data_dir = std::env::var("APP_DATA_DIR").unwrap_or_else(|_| "var".into());
    if let Err(e) = std::fs::create_dir_all(&data_dir) {
        eprintln!("app: cannot create {data_dir}: {e}");
        return ExitCode::from(2);
    }

    let built = Orchestrator::builder()
        .root(&data_dir)
        .bind(
            "users",
            "sqlite://users.sqlite3",
            Migrations::embedded(&USERS),
        )
        .bind(
            "billing",
            "sqlite://billing.sqlite3",
            Migrations::embedded(&BILLING),
        )
        .bind("events", &events_url, Migrations::embedded(&EVENTS))
        .on_progress(|event| {
            if let Event::Line(line) = event {
                eprintln!("app: {line}");
            }
        })
        .build();
    let orchestrator = match built {
        Ok(o) => o,
        Err(e) => {
            eprintln!("app: {e}");
            return ExitCode::from(2);
        }
    };

    // A batch an earlier start was killed in is finished first, whichever way it was decided.
    match orchestrator.recover() {
        Ok(report) => {
            for action in &report.actions {
                eprintln!(
                    "app: recover: {} {} on {}",
                    action.action, action.batch_id, action.bind
                );
            }
        }
        Err(e) => return stop(e),
    }
    match orchestrator.upgrade() {
        Ok(Some(report)) => eprintln!(
            "app: migrated {} database(s) in batch {}",
            report.binds.len(),
            report.batch_id
        ),
        Ok(None) => eprintln!("app: every database is up to date"),
        Err(e) => return stop(e),
    }

    // The application's own work, on databases it knows are at their head.
    match work(&data_dir, &events_url) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("app: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Why the application does not start, and its exit code.
fn stop(e: Error) -> ExitCode {
    eprintln!("app: not starting: {e}");
    match e {
        Error::RolledBack { .. } => ExitCode::FAILURE,
        Error::Config(_) | Error::Unsupported(_) => ExitCode::from(2),
        Error::Refused {
            kind: orchestrate::RefusalKind::Invalid,
            ..
        } => ExitCode::from(2),
        _ => ExitCode::from(3),
    }
}

fn work(data_dir: &str, events_url: &str) -> Result<String, Box<dyn std::error::Error>> {
    // Another instance may be writing too: wait for SQLite's write lock rather than fail.
    let sqlite = |file: &str| -> Result<SqliteConnection, Box<dyn std::error::Error>> {
        let mut c = SqliteConnection::establish(&format!("{data_dir}/{file}"))?;
        c.batch_execute("PRAGMA busy_timeout = 5000")?;
        Ok(c)
    };
    let mut users = sqlite("users.sqlite3")?;
    users.batch_execute("INSERT INTO users (name, email) VALUES ('ada', 'ada@example.com')")?;
    let mut billing = sqlite("billing.sqlite3")?;
    billing.batch_execute("INSERT INTO invoices (user_id, cents) VALUES (1, 1200)")?;
    let mut events = PgConnection::establish(events_url)?;
    events.batch_execute("INSERT INTO events (kind) VALUES ('started')")?;
    #[derive(QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let count = |conn: &mut dyn FnMut() -> QueryResult<N>| conn().map(|r| r.n);
    let u =
        count(&mut || diesel::sql_query("SELECT count(*) AS n FROM users").get_result(&mut users))?;
    let b = count(&mut || {
        diesel::sql_query("SELECT count(*) AS n FROM invoices").get_result(&mut billing)
    })?;
    let e = count(&mut || {
        diesel::sql_query("SELECT count(*) AS n FROM events").get_result(&mut events)
    })?;
    Ok(format!(
        "app: working: {u} user(s), {b} invoice(s), {e} event(s)"
    ))
}
