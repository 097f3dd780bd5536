//! The operator's side of the agent, on its own port: `/metrics`, `/healthz`, `/readyz` and
//! `/status`, answered by a small HTTP server on a thread of its own ([`AdminServer`]), so a
//! saturated data path cannot starve the kubelet's probes or Prometheus.
//!
//! This is the top of the house: it reads every component (through their metric sources and
//! their public counters) and nothing below imports it.
//!
//! * [`readiness`]: liveness and readiness ([`Health`]), flipped by the composition root;
//! * [`http`]: the HTTP server and its routes;
//! * [`status_document`]: the `/status` JSON, built from the components;
//! * [`status_command`]: the `spark-shuffle-agent status` client that prints it as tables.

pub mod http;
pub mod readiness;
pub mod status_command;
pub mod status_document;

use std::sync::OnceLock;
use std::time::Instant;

pub use http::AdminServer;
pub use readiness::{Health, Phase, ReadinessSource, STALL};
pub use status_document::{Node, StatusReport};

use crate::metrics::Exporter;

/// What the admin endpoints answer from. It exists from start-up on, before registrations are
/// recovered: the probes answer (503) while the journal is read, and the node's components are
/// attached once they exist ([`Admin::node_is_up`]).
#[derive(Debug)]
pub struct Admin {
    pub exporter: Exporter,
    pub health: Health,
    started: Instant,
    node: OnceLock<Node>,
}

impl Admin {
    /// An admin side for an agent starting now, exporting its readiness.
    pub fn new(health: Health) -> Admin {
        let exporter = Exporter::new();
        exporter.add(ReadinessSource::new(health.clone()));
        Admin { exporter, health, started: Instant::now(), node: OnceLock::new() }
    }

    /// The node's components, for `/status`, once they run. Called once; later calls are ignored.
    pub fn node_is_up(&self, node: Node) {
        let _ = self.node.set(node);
    }

    /// The `/status` document now.
    pub fn status(&self) -> StatusReport {
        status_document::collect(&self.health, self.started, self.node.get())
    }
}

impl Default for Admin {
    fn default() -> Self {
        Admin::new(Health::new())
    }
}
