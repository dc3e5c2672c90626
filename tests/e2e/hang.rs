//! Servers that accept a connection and never answer: every connect has a timeout, and a
//! command that is only reading or connecting ends at once on SIGTERM.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use crate::support::Project;

/// A port that accepts connections and never sends a byte, for as long as the value lives.
struct Silent {
    port: u16,
    _listener: TcpListener,
}

fn silent() -> Silent {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // The kernel completes the handshakes on its own (backlog); nothing is ever read or sent.
    Silent {
        port,
        _listener: listener,
    }
}

fn project(url: &str) -> Project {
    let p = Project::new();
    std::fs::create_dir_all(p.path().join("config")).unwrap();
    std::fs::create_dir_all(p.path().join("migrations/silent")).unwrap();
    std::fs::write(
        p.path().join("config/default.toml"),
        format!("lock_timeout_ms = 1000\n[binds.silent]\nurl = \"{url}\"\n"),
    )
    .unwrap();
    p
}

#[test]
fn a_mysql_server_that_never_answers_times_out() {
    let s = silent();
    let p = project(&format!("mysql://root@127.0.0.1:{}/db", s.port));
    let started = Instant::now();
    let run = p.run(&["status"]);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "status took {:?}",
        started.elapsed()
    );
    run.expect(2);
    assert!(
        run.stdout.contains("sent nothing within") || run.stderr.contains("sent nothing within"),
        "{run:?}"
    );
}

#[test]
fn sigterm_ends_a_command_that_is_only_connecting() {
    let s = silent();
    for url in [
        format!("mysql://root@127.0.0.1:{}/db", s.port),
        format!("postgres://postgres@127.0.0.1:{}/db", s.port),
    ] {
        let p = project(&url);
        for args in [&["status"][..], &["upgrade", "--all-binds"][..]] {
            let mut child = p.command(args).spawn().unwrap();
            std::thread::sleep(Duration::from_millis(700));
            let sent = Instant::now();
            std::process::Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status()
                .unwrap();
            let status = child.wait().unwrap();
            assert!(
                sent.elapsed() < Duration::from_secs(3),
                "{url} {args:?}: took {:?} to end after SIGTERM",
                sent.elapsed()
            );
            assert_eq!(status.code(), Some(130), "{url} {args:?}");
        }
    }
}
