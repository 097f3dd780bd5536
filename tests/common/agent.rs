//! The agent under test, in process: `server::run` on `127.0.0.1:0` with the given roots, on the
//! test's own tokio runtime. The `Arc<Shared>` is handed back so tests can read its counters.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use spark_shuffle_agent::registry::{Registry, Roots};
use spark_shuffle_agent::server::{self, Settings, Shared};
use spark_shuffle_agent::store::Store;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::client::TestClient;
use super::WAIT;

/// A running agent. Dropping it signals shutdown; [`TestAgent::stop`] also waits for it.
pub struct TestAgent {
    pub addr: SocketAddr,
    pub shared: Arc<Shared>,
    shutdown: CancellationToken,
    task: Option<JoinHandle<()>>,
}

/// Starts an agent serving executors whose dirs lie under `roots`, with default settings.
pub async fn start_agent(roots: &[PathBuf]) -> TestAgent {
    start_agent_with(roots, Settings::default()).await
}

/// Starts an agent with explicit data-path settings (short idle timeout, small frame limit, ...).
pub async fn start_agent_with(roots: &[PathBuf], settings: Settings) -> TestAgent {
    let roots = Roots::new(roots).expect("test roots exist");
    // In memory: the journal (`Registry::open`) is the registry's own business, tested there.
    let registry = Arc::new(Registry::in_memory(roots));
    let shared = Arc::new(Shared::new(settings, registry, Arc::new(Store::new(100 << 20))));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local addr");
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(server::run(listener, Arc::clone(&shared), shutdown.clone(), Duration::from_secs(1), None));
    TestAgent { addr, shared, shutdown, task: Some(task) }
}

/// Starts an agent as the binary runs it: the accept loop on a control runtime in a thread of
/// its own, each connection moving to the test's runtime (the data runtime) at its first data
/// request (src/server/placement.rs).
pub async fn start_agent_with_control_thread(roots: &[PathBuf], settings: Settings) -> TestAgent {
    let roots = Roots::new(roots).expect("test roots exist");
    let registry = Arc::new(Registry::in_memory(roots));
    let shared = Arc::new(Shared::new(settings, registry, Arc::new(Store::new(100 << 20))));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.set_nonblocking(true).expect("non-blocking listener");
    let addr = listener.local_addr().expect("local addr");
    let shutdown = CancellationToken::new();
    let data = tokio::runtime::Handle::current();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let (run_shared, run_shutdown) = (Arc::clone(&shared), shutdown.clone());
    std::thread::Builder::new()
        .name("test-control".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("control runtime");
            runtime.block_on(async move {
                let listener = TcpListener::from_std(listener).expect("listener on the control runtime");
                server::run(listener, run_shared, run_shutdown, Duration::from_secs(1), Some(data)).await;
            });
            let _ = done_tx.send(());
        })
        .expect("control thread");
    let task = tokio::spawn(async move {
        let _ = done_rx.await;
    });
    TestAgent { addr, shared, shutdown, task: Some(task) }
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

    /// Signals shutdown and waits for the accept loop and its drain to finish.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(WAIT, task).await.expect("agent stops").expect("agent task did not panic");
        }
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
