//! Shared fixtures of the integration tests: an in-process agent on `127.0.0.1:0`, built as
//! the binary builds it ([`agent`]), the real binary as a child process with its log ([`binary`]), shuffle files written in Spark's layout ([`shuffle_files`], [`vector_layout`]),
//! a small client speaking Spark's frames ([`client`]), and the reader of the captured
//! conversations in `tests/vectors/` ([`capture`]).
//!
//! Every test crate compiles this module whole but uses only part of it, hence the allows.
#![allow(dead_code, unused_imports)]

pub mod agent;
pub mod binary;
pub mod capture;
pub mod client;
pub mod shuffle_files;
pub mod vector_layout;

use std::time::Duration;

pub use agent::{start_agent, start_agent_with, test_config, TestAgent};
pub use client::{RecvError, TestClient};
pub use shuffle_files::{partition_bytes, rdd_bytes, ChecksumKind, ExecutorFiles};
pub use vector_layout::{fetch_map_0_0, VectorLayout, APP_ID};

/// How long any single wait of a test may take before it is a failure. Generous on purpose:
/// these are hang detectors, not timing assertions.
pub const WAIT: Duration = Duration::from_secs(20);

/// Polls `condition` until it holds, failing the test after [`WAIT`]. For state that changes
/// on another task (counters, connection teardown), where there is nothing to await directly.
pub async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
