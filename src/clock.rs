//! Wall-clock time as the agent records it: whole seconds since the Unix epoch, for
//! timestamps in metrics, status and last-use bookkeeping.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch; 0 if the clock is set before it.
pub fn unix_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}
