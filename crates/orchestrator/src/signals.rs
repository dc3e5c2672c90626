//! Ctrl-C, SIGTERM and SIGHUP (a closed terminal or SSH session). While a command only reads
//! or connects (status, check, history, planning), the first signal ends the process at once
//! (exit 130): nothing is under way that needs finishing. Once a command starts writing
//! ([`writing`]), the first signal sets a flag the coordinator reads between steps: before
//! the decision it rolls every bind back; after the decision it finishes committing. A second
//! signal ends the process at once (exit 130), which is a crash like any other:
//! `orchestrate recover` finishes the batch.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

fn flag() -> &'static Arc<AtomicBool> {
    static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    FLAG.get_or_init(|| Arc::new(AtomicBool::new(false)))
}

/// True while the command only reads: a signal then ends the process at once.
fn reading() -> &'static Arc<AtomicBool> {
    static READING: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    READING.get_or_init(|| Arc::new(AtomicBool::new(true)))
}

/// From here on the command writes: a first signal is a request to stop cleanly.
pub fn writing() {
    reading().store(false, Ordering::SeqCst);
}

/// Installs the handlers for SIGINT, SIGTERM and SIGHUP. SIGHUP's default would end the
/// process mid-batch when the terminal or SSH session running a deploy goes away.
pub fn install() -> std::io::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    for signal in [SIGINT, SIGTERM, SIGHUP] {
        signal_hook::flag::register_conditional_shutdown(signal, 130, reading().clone())?;
        // Registered before the flag is set, so it sees only an earlier signal's.
        signal_hook::flag::register_conditional_shutdown(signal, 130, flag().clone())?;
        signal_hook::flag::register(signal, flag().clone())?;
    }
    Ok(())
}

/// Whether SIGINT, SIGTERM or SIGHUP has arrived.
pub fn interrupted() -> bool {
    flag().load(Ordering::SeqCst)
}
