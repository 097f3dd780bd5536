//! Liveness and readiness: the few facts `/healthz` and `/readyz` answer from, flipped by main at
//! the moments only it knows (registrations recovered, shuffle port bound, SIGTERM received).
//!
//! Readiness is what Kubernetes routes by (and what the 2.2 fork's drivers pick shuffle pods
//! by): ready = recovered AND listening AND NOT draining. Liveness is what the kubelet restarts
//! on. Because the HTTP server runs on its own thread, answering at all proves little about the
//! data path; so liveness also needs a heartbeat from a task on the data-path runtime, and fails
//! when that runtime has not run it for [`STALL`] (a wedged or starved runtime).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::IntGauge;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::metrics::{Series, Source};

/// A data-path runtime that has not run its heartbeat task for this long is reported dead.
/// Far above any scheduling delay of a busy but healthy runtime (the beat is every second).
pub const STALL: Duration = Duration::from_secs(30);

/// How often [`Health::run_heartbeat`] beats.
const BEAT: Duration = Duration::from_secs(1);

/// Where the agent is in its life, as `/status` and `/readyz` report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Reading the journal; not serving yet.
    Recovering,
    /// Registrations recovered, shuffle port not bound yet.
    Binding,
    /// Ready: the shuffle port accepts and every recovered registration is served.
    Serving,
    /// SIGTERM received: open connections finish, no new ones should be routed here.
    Draining,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Recovering => "recovering",
            Phase::Binding => "binding",
            Phase::Serving => "serving",
            Phase::Draining => "draining",
        }
    }
}

/// The readiness and liveness state. Cheap to clone; every clone is the same state.
#[derive(Debug, Clone)]
pub struct Health {
    inner: Arc<State>,
}

#[derive(Debug)]
struct State {
    recovered: AtomicBool,
    listening: AtomicBool,
    draining: AtomicBool,
    origin: Instant,
    /// Milliseconds after `origin` of the last heartbeat, plus one (0 = never beaten).
    last_beat_ms: AtomicU64,
}

impl Default for Health {
    fn default() -> Self {
        Health::new()
    }
}

impl Health {
    pub fn new() -> Health {
        Health {
            inner: Arc::new(State {
                recovered: AtomicBool::new(false),
                listening: AtomicBool::new(false),
                draining: AtomicBool::new(false),
                origin: Instant::now(),
                last_beat_ms: AtomicU64::new(0),
            }),
        }
    }

    /// The journal's registrations are restored: every executor that registered before a
    /// restart can be served again.
    pub fn set_recovered(&self) {
        self.inner.recovered.store(true, Ordering::Release);
    }

    /// The shuffle port is bound and accepting.
    pub fn set_listening(&self) {
        self.inner.listening.store(true, Ordering::Release);
    }

    /// Shutdown began: readiness goes false for good, so Kubernetes stops routing here while
    /// open connections drain. Liveness is unaffected (a draining agent is not broken).
    pub fn set_draining(&self) {
        self.inner.draining.store(true, Ordering::Release);
    }

    pub fn phase(&self) -> Phase {
        let s = &self.inner;
        if s.draining.load(Ordering::Acquire) {
            Phase::Draining
        } else if !s.recovered.load(Ordering::Acquire) {
            Phase::Recovering
        } else if !s.listening.load(Ordering::Acquire) {
            Phase::Binding
        } else {
            Phase::Serving
        }
    }

    pub fn is_ready(&self) -> bool {
        self.phase() == Phase::Serving
    }

    /// Records that the data-path runtime ran the heartbeat task now.
    pub fn beat(&self) {
        self.beat_at(Instant::now());
    }

    fn beat_at(&self, now: Instant) {
        let ms = now.saturating_duration_since(self.inner.origin).as_millis() as u64 + 1;
        self.inner.last_beat_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// Live unless a heartbeat was seen and the last one is older than [`STALL`]. Before the
    /// first beat (the runtime is still starting) the process counts as live.
    pub fn is_live(&self) -> bool {
        self.is_live_at(Instant::now())
    }

    fn is_live_at(&self, now: Instant) -> bool {
        self.since_beat_at(now).is_none_or(|age| age <= STALL)
    }

    /// Time since the data-path runtime last ran the heartbeat, if it ever did.
    pub fn since_last_beat(&self) -> Option<Duration> {
        self.since_beat_at(Instant::now())
    }

    fn since_beat_at(&self, now: Instant) -> Option<Duration> {
        let ms = self.inner.last_beat_ms.load(Ordering::Relaxed);
        let last = self.inner.origin + Duration::from_millis(ms.checked_sub(1)?);
        Some(now.saturating_duration_since(last))
    }

    /// Beats every second until `shutdown`. Spawn it on the data-path runtime: it is the
    /// runtime's proof of life for `/healthz`.
    pub async fn run_heartbeat(self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(BEAT);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => self.beat(),
            }
        }
    }
}

/// Exports `spark_shuffle_agent_ready`, what `/readyz` answers, as a gauge.
pub struct ReadinessSource {
    health: Health,
    series: Series,
    ready: IntGauge,
}

impl ReadinessSource {
    pub fn new(health: Health) -> ReadinessSource {
        let mut series = Series::new();
        let ready = series.gauge(
            "spark_shuffle_agent_ready",
            "1 when /readyz answers 200: registrations recovered, shuffle port bound, not draining.",
        );
        ReadinessSource { health, series, ready }
    }
}

impl Source for ReadinessSource {
    fn series(&self) -> &Series {
        &self.series
    }

    fn refresh(&self) {
        self.ready.set(i64::from(self.health.is_ready()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_needs_recovery_and_the_listener_and_ends_with_draining() {
        let health = Health::new();
        assert_eq!(health.phase(), Phase::Recovering);
        assert!(!health.is_ready());
        health.set_listening();
        assert_eq!(health.phase(), Phase::Recovering, "bound but not recovered is not ready");
        assert!(!health.is_ready());
        health.set_recovered();
        assert_eq!(health.phase(), Phase::Serving);
        assert!(health.is_ready());
        health.set_draining();
        assert_eq!(health.phase(), Phase::Draining);
        assert!(!health.is_ready());
        assert!(health.is_live(), "draining is not dead");
    }

    #[test]
    fn recovered_before_bound_is_binding_not_ready() {
        let health = Health::new();
        health.set_recovered();
        assert_eq!(health.phase(), Phase::Binding);
        assert!(!health.is_ready());
    }

    #[test]
    fn clones_share_one_state() {
        let health = Health::new();
        let main_side = health.clone();
        main_side.set_recovered();
        main_side.set_listening();
        assert!(health.is_ready());
    }

    #[test]
    fn liveness_fails_only_after_a_stalled_heartbeat() {
        let health = Health::new();
        let t0 = health.inner.origin;
        assert!(health.is_live_at(t0 + STALL * 10), "no heartbeat yet: still starting, so live");
        health.beat_at(t0 + Duration::from_secs(5));
        assert!(health.is_live_at(t0 + Duration::from_secs(5) + STALL));
        assert!(!health.is_live_at(t0 + Duration::from_secs(6) + STALL), "a runtime silent past STALL is dead");
        health.beat_at(t0 + Duration::from_secs(100));
        assert!(health.is_live_at(t0 + Duration::from_secs(101)));
        assert_eq!(health.since_beat_at(t0 + Duration::from_secs(103)), Some(Duration::from_secs(3)));
    }

    #[test]
    fn an_older_beat_never_moves_the_last_beat_back() {
        let health = Health::new();
        let t0 = health.inner.origin;
        health.beat_at(t0 + Duration::from_secs(10));
        health.beat_at(t0 + Duration::from_secs(2));
        assert_eq!(health.since_beat_at(t0 + Duration::from_secs(10)), Some(Duration::ZERO));
    }
}
