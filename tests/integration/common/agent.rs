//! The agent under test, in process, built by the same composition root as the binary
//! (`app::build`): real journal in a temp state dir, the control thread, the data runtime, the
//! admin port, all on `127.0.0.1:0`. Tests change the configuration, never the wiring.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use spark_shuffle_agent::app::{self, Agent};
use spark_shuffle_agent::config::Config;
use spark_shuffle_agent::server::{self, Shared};

use super::client::TestClient;
use super::WAIT;

/// A running agent. Dropping it signals shutdown; [`TestAgent::stop`] also waits for it.
pub struct TestAgent {
    pub addr: SocketAddr,
    pub shared: Arc<Shared>,
    agent: Option<Agent>,
    _state: tempfile::TempDir,
}

/// The configuration tests start from: the embedded defaults on loopback, free ports, a short
/// drain.
pub fn test_config() -> Config {
    Config {
        bind: std::net::Ipv4Addr::LOCALHOST.into(),
        port: 0,
        metrics_port: 0,
        drain_grace: Duration::from_secs(1),
        ..Config::default()
    }
}

/// Starts an agent serving executors whose dirs lie under `roots`, with default settings.
pub async fn start_agent(roots: &[PathBuf]) -> TestAgent {
    start_agent_with(roots, test_config()).await
}

/// Starts an agent with `config` (from [`test_config`]), serving `roots` with a state dir of
/// its own.
pub async fn start_agent_with(roots: &[PathBuf], config: Config) -> TestAgent {
    let state = tempfile::tempdir().expect("state dir");
    let config = Config { roots: roots.to_vec(), state_dir: state.path().to_path_buf(), ..config };
    let agent = tokio::task::spawn_blocking(move || app::build(config))
        .await
        .expect("build did not panic")
        .expect("the agent starts");
    TestAgent { addr: agent.shuffle_addr(), shared: Arc::clone(agent.shared()), agent: Some(agent), _state: state }
}

impl TestAgent {
    /// A new connection to the agent.
    pub async fn connect(&self) -> TestClient {
        TestClient::connect(self.addr).await
    }

    /// A counter of the agent's data path, e.g. `agent.counter(|c| &c.bad_frames)`.
    pub fn counter(&self, pick: impl Fn(&server::Counters) -> &std::sync::atomic::AtomicU64) -> u64 {
        pick(&self.shared.counters).load(Ordering::Relaxed)
    }

    /// The running agent (its admin port, its status document).
    pub fn agent(&self) -> &Agent {
        self.agent.as_ref().expect("running")
    }

    /// Stops as SIGTERM does and waits for the accept loop and its drain to finish.
    pub async fn stop(mut self) {
        let Some(agent) = self.agent.take() else { return };
        agent.stop();
        let waited = tokio::task::spawn_blocking(move || agent.wait_termination());
        tokio::time::timeout(WAIT, waited)
            .await
            .expect("agent stops")
            .expect("agent thread did not panic")
            .expect("agent stopped cleanly");
    }
}
