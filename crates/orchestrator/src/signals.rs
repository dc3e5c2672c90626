//! Ctrl-C and SIGTERM during a batch. The first signal sets a flag the coordinator reads
//! between steps: before the decision it rolls every bind back; after the decision it finishes
//! committing. A second signal ends the process at once (exit 130), which is a crash like any
//! other: `orchestrate recover` finishes the batch.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

fn flag() -> &'static Arc<AtomicBool> {
    static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    FLAG.get_or_init(|| Arc::new(AtomicBool::new(false)))
}

/// Installs the handlers for SIGINT and SIGTERM.
pub fn install() -> std::io::Result<()> {
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // Registered first, so it sees the flag set by an earlier signal.
        signal_hook::flag::register_conditional_shutdown(signal, 130, flag().clone())?;
        signal_hook::flag::register(signal, flag().clone())?;
    }
    Ok(())
}

/// Whether SIGINT or SIGTERM has arrived.
pub fn interrupted() -> bool {
    flag().load(Ordering::SeqCst)
}
