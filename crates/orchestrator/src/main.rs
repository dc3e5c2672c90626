use std::io::Write;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};

use clap::Parser;
use orchestrate::exit;
use orchestrate_driver::redact_text;

/// Set by the panic hook: a panic in any thread, caught or not, makes the command exit 3.
static PANICKED: AtomicBool = AtomicBool::new(false);

fn main() {
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    install_logging();
    install_panic_hook();
    let cli = match orchestrate::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => usage_error(e),
    };
    if let Err(e) = orchestrate::signals::install() {
        eprintln!(
            "warning: cannot install signal handlers ({e}); Ctrl-C will end the process at once"
        );
    }
    // A panic (ours, a library's, or one propagated from a worker thread) is not exit 101:
    // a batch may be half-way, and the exit code says so.
    let result = panic::catch_unwind(AssertUnwindSafe(|| {
        orchestrate::cli::run(cli, &mut std::io::stdout(), &mut std::io::stderr())
    }));
    let code = match result {
        Ok(code) if !PANICKED.load(Ordering::SeqCst) => code,
        _ => exit::ATTENTION,
    };
    let _ = std::io::stdout().flush();
    std::process::exit(code);
}

/// A command line clap cannot read: its message (exit 2, or `--help`/`--version`, exit 0);
/// with `--json` among the arguments, also the JSON error object every refusal prints.
fn usage_error(e: clap::Error) -> ! {
    use clap::error::ErrorKind;
    let json = std::env::args().any(|a| a == "--json");
    if json && !matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        let text = e.to_string();
        let head = text.split("\n\nUsage").next().unwrap_or(&text);
        let message = head
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .trim_start_matches("error: ")
            .to_string();
        let refusal = orchestrate::commands::Refusal::argument(message);
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "error": refusal.to_json() }))
                .expect("JSON values serialise")
        );
        eprint!("{text}");
        std::process::exit(exit::INVALID);
    }
    e.exit()
}

/// Replaces the default panic message (which could quote anything, a URL included) with one
/// that says what to do, redacted.
fn install_panic_hook() {
    panic::set_hook(Box::new(|info| {
        PANICKED.store(true, Ordering::SeqCst);
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".into());
        let location = info
            .location()
            .map(|l| format!("\n  the panic was at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let _ = writeln!(
            std::io::stderr(),
            "orchestrate panicked ({}); if a batch was running, run `orchestrate recover`{location}",
            redact_text(&message)
        );
    }));
}

/// Log events (warnings by default; `RUST_LOG` chooses) to stderr, each redacted as a whole
/// before it is written.
fn install_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(|| RedactedEvent(Vec::new()))
        .try_init();
}

/// One log event, buffered, and written to stderr redacted when the formatter is done.
struct RedactedEvent(Vec<u8>);

impl Write for RedactedEvent {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for RedactedEvent {
    fn drop(&mut self) {
        let text = redact_text(&String::from_utf8_lossy(&self.0));
        let _ = std::io::stderr().write_all(text.as_bytes());
    }
}
