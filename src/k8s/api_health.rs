//! How the agent's conversation with the API server is going, for metrics and for people.
//!
//! [`K8sHealth`] is plain atomics, written by the watchers, the reconciler and the client's
//! request layer ([`Observe`]), read by the metrics module. It owns no registry and exports
//! nothing itself.
//!
//! Why a request layer: kube-runtime's watcher resumes a dropped watch without emitting any
//! event, so "the watch is up again" is only visible at the HTTP level, as a watch request the
//! server accepted. Each watcher gets its own client with an [`Observe`] layer that records
//! exactly that, plus every failed request.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

/// One watch (executor pods on this node, or driver pods cluster-wide).
#[derive(Debug, Default)]
pub struct WatchHealth {
    /// True while the watch has a complete list and an accepted watch request; false before the
    /// first list and after any error, until the watch is re-established.
    pub up: AtomicBool,
    /// Complete LISTs. The first is the start; each further one is a re-list after the watch
    /// expired (410 Gone) or a list or watch failed in a way that needs one.
    pub lists: AtomicU64,
    /// Watch requests the API server accepted. Each one after the first resumes a watch that
    /// ended (the server's timeout, a dropped connection) or restarts it after a re-list.
    pub watch_starts: AtomicU64,
    /// Errors the watch reported: refused or failed list/watch requests, a stream cut in the
    /// middle, an ERROR event (410 Gone included). Each is retried with backoff.
    pub errors: AtomicU64,
    /// Unix seconds of the last complete LIST; 0 = never.
    pub last_sync_unix_secs: AtomicU64,
}

impl WatchHealth {
    pub fn snapshot(&self) -> WatchSnapshot {
        WatchSnapshot {
            up: self.up.load(Ordering::Relaxed),
            lists: self.lists.load(Ordering::Relaxed),
            watch_starts: self.watch_starts.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            last_sync_unix_secs: self.last_sync_unix_secs.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn synced(&self) {
        self.lists.fetch_add(1, Ordering::Relaxed);
        self.last_sync_unix_secs.store(crate::clock::unix_secs(), Ordering::Relaxed);
    }

    pub(crate) fn failed(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.up.store(false, Ordering::Relaxed);
    }
}

/// Everything the Kubernetes side reports. Shared as `Arc<K8sHealth>`; all fields only grow
/// or flip, so readers need no lock.
#[derive(Debug, Default)]
pub struct K8sHealth {
    /// The agent talks to an API server (in a cluster, or `--kubeconfig`). When false, nothing
    /// below ever changes and no file is deleted on Kubernetes' account.
    pub enabled: AtomicBool,
    /// Executor pods on this node.
    pub executors: WatchHealth,
    /// Driver pods in all namespaces.
    pub drivers: WatchHealth,
    /// Executor pods in all namespaces, for their IPs (pod network mode only).
    pub executor_ips: WatchHealth,
    /// Pod network mode is on: the `executor_ips` watch runs.
    pub pod_network: AtomicBool,
    /// API requests that failed, from any caller: no connection, a timeout, or a non-2xx answer.
    pub api_errors: AtomicU64,
    /// Applications removed because their driver pod finished or is gone.
    pub apps_removed: AtomicU64,
    /// Executors whose pod was deleted or finished, handed to the lifecycle engine.
    pub executors_removed: AtomicU64,
    /// Times an application's end could not be confirmed (the API did not answer), so its
    /// files were kept. Retried on the next reconcile.
    pub removals_deferred: AtomicU64,
    /// Reconcile passes completed (each checks every application known here).
    pub reconciles: AtomicU64,
    /// Unix seconds of the last reconcile pass that could judge applications; 0 = never.
    pub last_reconcile_unix_secs: AtomicU64,
}

/// A copy of [`WatchHealth`] at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WatchSnapshot {
    pub up: bool,
    pub lists: u64,
    pub watch_starts: u64,
    pub errors: u64,
    pub last_sync_unix_secs: u64,
}

/// A copy of [`K8sHealth`] at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct K8sSnapshot {
    pub enabled: bool,
    pub executors: WatchSnapshot,
    pub drivers: WatchSnapshot,
    /// None unless pod network mode is on.
    pub executor_ips: Option<WatchSnapshot>,
    pub api_errors: u64,
    pub apps_removed: u64,
    pub executors_removed: u64,
    pub removals_deferred: u64,
    pub reconciles: u64,
    pub last_reconcile_unix_secs: u64,
}

impl K8sHealth {
    pub fn snapshot(&self) -> K8sSnapshot {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        K8sSnapshot {
            enabled: self.enabled.load(Ordering::Relaxed),
            executors: self.executors.snapshot(),
            drivers: self.drivers.snapshot(),
            executor_ips: self.pod_network.load(Ordering::Relaxed).then(|| self.executor_ips.snapshot()),
            api_errors: get(&self.api_errors),
            apps_removed: get(&self.apps_removed),
            executors_removed: get(&self.executors_removed),
            removals_deferred: get(&self.removals_deferred),
            reconciles: get(&self.reconciles),
            last_reconcile_unix_secs: get(&self.last_reconcile_unix_secs),
        }
    }

    pub(crate) fn watch(&self, which: Watch) -> &WatchHealth {
        match which {
            Watch::Executors => &self.executors,
            Watch::Drivers => &self.drivers,
            Watch::ExecutorIps => &self.executor_ips,
        }
    }
}

/// Which watch a client serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Watch {
    Executors,
    Drivers,
    ExecutorIps,
}

/// A tower layer on a kube client: counts failed requests, and marks the watch up when the
/// server accepts a watch request.
#[derive(Debug, Clone)]
pub(crate) struct ObserveLayer {
    pub health: Arc<K8sHealth>,
    pub watch: Option<Watch>,
}

impl<S> tower::Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe { inner, health: Arc::clone(&self.health), watch: self.watch }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Observe<S> {
    inner: S,
    health: Arc<K8sHealth>,
    watch: Option<Watch>,
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for Observe<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let is_watch = request.uri().query().is_some_and(|q| q.split('&').any(|kv| kv == "watch=true"));
        let health = Arc::clone(&self.health);
        let watch = self.watch;
        let response = self.inner.call(request);
        Box::pin(async move {
            let result = response.await;
            match &result {
                Ok(r) if r.status().is_success() => {
                    if let (true, Some(which)) = (is_watch, watch) {
                        let w = health.watch(which);
                        w.watch_starts.fetch_add(1, Ordering::Relaxed);
                        w.up.store(true, Ordering::Relaxed);
                    }
                }
                _ => {
                    health.api_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            result
        })
    }
}
