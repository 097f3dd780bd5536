//! Rate limits for the lines the accept loop logs when it closes a connection for a bad frame,
//! the chunk limit, the frame budget (warn), a socket error or a refused request (info), per
//! `errors_total` kind. One broken client (or a scanner speaking TLS to
//! the shuffle port) can end thousands of connections a minute, and each used to log one WARN
//! line: a flood test produced 2,230 of them. Per kind, the first [`PER_WINDOW`] of each
//! [`WINDOW`] are logged as before (they carry the peer and the reason an operator needs); the
//! rest go to debug, and one summary line says how many were suppressed once the window is
//! over. The error counters are not affected.
//!
//! The bookkeeping ([`Throttle`]) is std only and takes the time from its caller, so tests
//! drive it with made-up instants. Monotonic [`Instant`]s rather than the wall clock of
//! [`crate::clock`]: a clock set back must not silence warnings for the time it jumped.

use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::metrics::ErrorKind;
use crate::sync::lock;

/// The length of a rate-limit window.
pub(super) const WINDOW: Duration = Duration::from_secs(60);

/// Warnings of one kind logged per window; the rest are counted.
pub(super) const PER_WINDOW: u32 = 10;

/// Whether one warning is logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    Log,
    Suppress,
}

/// A window that ended with warnings suppressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Suppressed {
    pub count: u64,
    /// From the window's first warning to when it was closed.
    pub over: Duration,
}

#[derive(Debug, Default)]
struct Window {
    /// When the window's first warning came; None before any.
    start: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

/// A fixed-window limit for one kind of warning.
#[derive(Debug)]
pub(super) struct Throttle {
    window: Duration,
    per_window: u32,
    state: std::sync::Mutex<Window>,
}

impl Throttle {
    pub(super) fn new(window: Duration, per_window: u32) -> Throttle {
        Throttle { window, per_window, state: Default::default() }
    }

    /// Decides on a warning at `now`. When it opens a new window, also returns what the
    /// previous one suppressed (to be logged first).
    pub(super) fn admit(&self, now: Instant) -> (Verdict, Option<Suppressed>) {
        let mut w = lock(&self.state);
        let mut closed = None;
        match w.start {
            Some(start) if now.saturating_duration_since(start) < self.window => {}
            Some(start) => {
                closed = take_suppressed(&mut w, now.saturating_duration_since(start));
                *w = Window { start: Some(now), logged: 0, suppressed: 0 };
            }
            None => w.start = Some(now),
        }
        if w.logged < self.per_window {
            w.logged += 1;
            (Verdict::Log, closed)
        } else {
            w.suppressed += 1;
            (Verdict::Suppress, closed)
        }
    }

    /// What a window over by `now` suppressed, so a flood that stopped still gets its summary
    /// without waiting for the next warning. With `force`, the current window too (shutdown).
    pub(super) fn flush(&self, now: Instant, force: bool) -> Option<Suppressed> {
        let mut w = lock(&self.state);
        let over = now.saturating_duration_since(w.start?);
        if over < self.window && !force {
            return None;
        }
        let closed = take_suppressed(&mut w, over);
        // A new window starts with the next warning: a quiet minute resets the allowance.
        *w = Window::default();
        closed
    }
}

fn take_suppressed(w: &mut Window, over: Duration) -> Option<Suppressed> {
    (w.suppressed > 0).then_some(Suppressed { count: w.suppressed, over })
}

/// Whether a connection end of this kind is logged at warn (garbage, overload) rather than at
/// info (a peer's reset, a refused request), and so its summary line too.
pub(super) fn is_warning(kind: ErrorKind) -> bool {
    !matches!(kind, ErrorKind::Io | ErrorKind::Refused)
}

/// The accept loop's connection-closing lines, one [`Throttle`] per [`ErrorKind`], so a flood
/// of bad frames does not hide that the chunk limit was hit.
#[derive(Debug)]
pub(super) struct ConnectionWarnings {
    throttles: [Throttle; ErrorKind::ALL.len()],
}

impl ConnectionWarnings {
    pub(super) fn new(window: Duration, per_window: u32) -> ConnectionWarnings {
        ConnectionWarnings { throttles: ErrorKind::ALL.map(|_| Throttle::new(window, per_window)) }
    }

    /// Whether to log one warning of `kind` now; logs the summary of the kind's previous
    /// window first if it suppressed anything.
    pub(super) fn admit(&self, kind: ErrorKind, now: Instant) -> Verdict {
        let (verdict, closed) = self.throttles[kind as usize].admit(now);
        if let Some(s) = closed {
            log_suppressed(kind, s);
        }
        verdict
    }

    /// Logs the summaries of the windows over by `now` (all of them with `force`).
    pub(super) fn flush(&self, now: Instant, force: bool) {
        for kind in ErrorKind::ALL {
            if let Some(s) = self.throttles[kind as usize].flush(now, force) {
                log_suppressed(kind, s);
            }
        }
    }
}

fn log_suppressed(kind: ErrorKind, s: Suppressed) {
    let secs = s.over.as_secs().max(1);
    if is_warning(kind) {
        warn!(
            kind = kind.as_str(),
            suppressed = s.count,
            "suppressed {} similar warnings in the last {secs} s",
            s.count
        );
    } else {
        info!(kind = kind.as_str(), suppressed = s.count, "suppressed {} similar lines in the last {secs} s", s.count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(base: Instant, secs: u64) -> Instant {
        base + Duration::from_secs(secs)
    }

    #[test]
    fn the_first_warnings_of_a_window_are_logged_and_the_rest_counted() {
        let t = Throttle::new(WINDOW, 3);
        let base = Instant::now();
        let verdicts: Vec<Verdict> = (0..5).map(|i| t.admit(at(base, i)).0).collect();
        assert_eq!(verdicts, [Verdict::Log, Verdict::Log, Verdict::Log, Verdict::Suppress, Verdict::Suppress]);
    }

    #[test]
    fn the_next_window_logs_again_after_a_summary_of_the_last_one() {
        let t = Throttle::new(WINDOW, 2);
        let base = Instant::now();
        for i in 0..6 {
            t.admit(at(base, i));
        }
        assert_eq!(t.admit(at(base, 59)), (Verdict::Suppress, None), "still the first window");
        let (verdict, closed) = t.admit(at(base, 60));
        assert_eq!(verdict, Verdict::Log);
        assert_eq!(closed, Some(Suppressed { count: 5, over: Duration::from_secs(60) }));
        assert_eq!(t.admit(at(base, 61)), (Verdict::Log, None));
        assert_eq!(t.admit(at(base, 62)), (Verdict::Suppress, None));
    }

    #[test]
    fn a_window_that_suppressed_nothing_has_no_summary() {
        let t = Throttle::new(WINDOW, 2);
        let base = Instant::now();
        t.admit(base);
        assert_eq!(t.admit(at(base, 120)), (Verdict::Log, None));
        assert_eq!(t.flush(at(base, 500), true), None);
    }

    #[test]
    fn a_flood_that_stopped_is_summarised_once_its_window_is_over() {
        let t = Throttle::new(WINDOW, 1);
        let base = Instant::now();
        for i in 0..4 {
            t.admit(at(base, i));
        }
        assert_eq!(t.flush(at(base, 30), false), None, "the window is not over");
        assert_eq!(t.flush(at(base, 75), false), Some(Suppressed { count: 3, over: Duration::from_secs(75) }));
        assert_eq!(t.flush(at(base, 200), false), None, "summarised once");
        assert_eq!(t.admit(at(base, 201)), (Verdict::Log, None), "a fresh allowance after a quiet window");
    }

    #[test]
    fn shutdown_summarises_the_current_window() {
        let t = Throttle::new(WINDOW, 1);
        let base = Instant::now();
        t.admit(base);
        t.admit(at(base, 1));
        assert_eq!(t.flush(at(base, 2), true), Some(Suppressed { count: 1, over: Duration::from_secs(2) }));
    }

    #[test]
    fn each_kind_has_its_own_allowance() {
        let w = ConnectionWarnings::new(WINDOW, 1);
        let now = Instant::now();
        assert_eq!(w.admit(ErrorKind::BadFrame, now), Verdict::Log);
        assert_eq!(w.admit(ErrorKind::BadFrame, now), Verdict::Suppress);
        assert_eq!(w.admit(ErrorKind::ChunkLimit, now), Verdict::Log, "bad frames do not hide the chunk limit");
        assert_eq!(w.admit(ErrorKind::FrameBudget, now), Verdict::Log);
    }
}
