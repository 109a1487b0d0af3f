//! Whether the process is stopping. `imc server` stops its API server before its controllers
//! (the node must still stop its containers), so the controllers' watches and event writes fail
//! with connection errors during a graceful stop: expected then, and not worth a warning.

use std::sync::atomic::{AtomicBool, Ordering};

static STOPPING: AtomicBool = AtomicBool::new(false);

/// Marks the graceful stop as begun (called once the API server stops accepting).
pub fn begin() {
    STOPPING.store(true, Ordering::SeqCst);
}

/// Whether a graceful stop has begun: API errors are then expected, not warned about.
pub fn underway() -> bool {
    STOPPING.load(Ordering::SeqCst)
}
