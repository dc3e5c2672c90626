//! The libpq floor of `scripts/bench.py`: the least a client can do to migrate M PostgreSQL
//! databases atomically with two-phase commit, with no bookkeeping at all. Per database, on one
//! libpq connection: `BEGIN`, the migration SQL, `PREPARE TRANSACTION` in a single round trip;
//! once every database has prepared, `COMMIT PREPARED` on that same connection (a database
//! beyond the first KEEP reconnects for it, as a server's `max_connections` demands).
//! PARALLELISM databases at a time.
//!
//! `cargo run --release --example libpq_floor -- PARALLELISM KEEP SQL_FILE URLS_FILE`
//! (one URL a line); prints the seconds taken.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use diesel::connection::SimpleConnection;
use diesel::{Connection, PgConnection};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 {
        eprintln!("usage: libpq_floor PARALLELISM KEEP SQL_FILE URLS_FILE");
        std::process::exit(2);
    }
    let parallelism: usize = args[1].parse().expect("PARALLELISM is a number");
    let keep: usize = args[2].parse().expect("KEEP is a number");
    let sql = std::fs::read_to_string(&args[3]).expect("SQL_FILE");
    let urls: Vec<String> = std::fs::read_to_string(&args[4])
        .expect("URLS_FILE")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect();
    let started = Instant::now();
    let next = AtomicUsize::new(0);
    let kept: Mutex<Vec<(usize, PgConnection)>> = Mutex::new(Vec::new());
    let gid = |i: usize| format!("floor_{i}");
    std::thread::scope(|scope| {
        for _ in 0..parallelism {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= urls.len() {
                    break;
                }
                let mut conn = PgConnection::establish(&urls[i]).expect("connect");
                conn.batch_execute(&format!("BEGIN;\n{sql}\nPREPARE TRANSACTION '{}';", gid(i)))
                    .expect("migrate and prepare");
                let mut kept = kept.lock().unwrap();
                if kept.len() < keep {
                    kept.push((i, conn));
                }
            });
        }
    });
    let kept: Vec<(usize, PgConnection)> = kept.into_inner().unwrap();
    let mut open: Vec<Option<PgConnection>> = (0..urls.len()).map(|_| None).collect();
    for (i, conn) in kept {
        open[i] = Some(conn);
    }
    let open: Vec<Mutex<Option<PgConnection>>> = open.into_iter().map(Mutex::new).collect();
    let next = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..parallelism {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= urls.len() {
                    break;
                }
                let held = open[i].lock().unwrap().take();
                let mut conn = match held {
                    Some(conn) => conn,
                    None => PgConnection::establish(&urls[i]).expect("reconnect"),
                };
                conn.batch_execute(&format!("COMMIT PREPARED '{}'", gid(i)))
                    .expect("commit prepared");
            });
        }
    });
    println!("{:.4}", started.elapsed().as_secs_f64());
}
