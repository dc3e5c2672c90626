//! Ctrl-C, SIGTERM and SIGHUP (a closed terminal or SSH session) during a batch. The first
//! signal sets a flag the coordinator reads between steps: before the decision it rolls every bind back; after the decision it finishes
//! committing. A second signal ends the process at once (exit 130), which is a crash like any
//! other: `orchestrate recover` finishes the batch.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

fn flag() -> &'static Arc<AtomicBool> {
    static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    FLAG.get_or_init(|| Arc::new(AtomicBool::new(false)))
}

/// Installs the handlers for SIGINT, SIGTERM and SIGHUP. SIGHUP's default would end the
/// process mid-batch when the terminal or SSH session running a deploy goes away.
pub fn install() -> std::io::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    for signal in [SIGINT, SIGTERM, SIGHUP] {
        // Registered first, so it sees the flag set by an earlier signal.
        signal_hook::flag::register_conditional_shutdown(signal, 130, flag().clone())?;
        signal_hook::flag::register(signal, flag().clone())?;
    }
    Ok(())
}

/// Whether SIGINT, SIGTERM or SIGHUP has arrived.
pub fn interrupted() -> bool {
    flag().load(Ordering::SeqCst)
}
