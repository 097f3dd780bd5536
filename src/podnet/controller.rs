//! The pod network controller: the one owner of pod network mode's state (adopted pod
//! namespaces and their listeners, the dead-IP map, the nftables tables), driven by
//! [`PodChange`]s from the executor-pod watch (src/k8s/executor_ips.rs).
//!
//! It runs on a thread of its own ([`Controller::spawn`]), because everything it does is
//! synchronous and may take milliseconds (a `/proc` scan, `setns` threads, `nft` processes);
//! on a runtime worker it would stall every connection there. Listeners it opens are handed to
//! [`Serve`], which runs them with the same accept loop as the node's own listener.
//!
//! The order of the graceful hand-off when an executor dies (spec/pod-network.md §2.3): the
//! redirect is installed everywhere first, then the dead pod's listeners are closed, so a
//! client never finds the IP both unserved and unredirected.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::dead_ips::{LivePod, LivePods};
use super::{bind_in_netns, dead_ips, find_pods_netns, DeadIps, Netns, NetnsId, Nft, PodnetError};

/// What the executor-pod watch tells the controller. `local`: the pod runs on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodChange {
    /// An executor pod on the pod network has its IP and runs.
    Live { pod: String, app_id: String, ip: IpAddr, host_ip: IpAddr, local: bool },
    /// That pod ended (finished, being deleted, or gone); the IPs are those it had alive.
    Died { pod: String, app_id: String, ip: IpAddr, host_ip: IpAddr, local: bool },
    /// The application's driver ended: nobody fetches its blocks any more.
    AppEnded { app_id: String },
    /// A complete list of executor pods on the pod network is in (every live one's key): a
    /// pod remembered alive but not in it ended unseen, e.g. while the agent was down.
    Listed { pods: std::collections::HashSet<String> },
}

/// Serves one listener opened inside a pod until the token is cancelled.
pub type Serve = Box<dyn Fn(std::net::TcpListener, CancellationToken) + Send>;

/// How the controller works.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The shuffle port: in-pod listeners and redirect targets.
    pub port: u16,
    /// The host's `/proc` (`agent.network.procRoot`).
    pub proc_root: PathBuf,
    /// Where the dead-IP map is persisted (the agent's state dir).
    pub state_dir: PathBuf,
    /// The `nft` program (`agent.network.nft`).
    pub nft: PathBuf,
    /// This node's IP, if configured (`agent.network.node.ip`); else learned from local pods.
    pub node_ip: Option<IpAddr>,
    /// How long a local pod with an IP may stay without a namespace in `/proc` before it
    /// counts as an adoption failure (it keeps being looked for after that).
    pub adopt_warn_after: Duration,
}

/// What the controller did, for metrics and `/status`.
#[derive(Debug, Default)]
pub struct PodnetStats {
    pub listeners_open: AtomicU64,
    pub pods_pending: AtomicU64,
    pub redirects: AtomicU64,
    pub adoptions: AtomicU64,
    pub adoption_failures: AtomicU64,
    pub nft_failures: AtomicU64,
    /// Milliseconds from the watch showing a local pod's IP to its listener accepting, last pod.
    pub last_listener_millis: AtomicU64,
    /// Each adopted pod: (pod, ip, listener addresses), for `/status`.
    pub pods: Mutex<Vec<PodListener>>,
}

/// One adopted pod's listener, as `/status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PodListener {
    pub pod: String,
    pub app_id: String,
    pub ip: IpAddr,
    pub netns: String,
    pub listeners: usize,
    pub millis_to_listen: u64,
}

struct Adopted {
    listener: PodListener,
    netns: Netns,
    token: CancellationToken,
}

struct Pending {
    app_id: String,
    ip: IpAddr,
    since: Instant,
    warned: bool,
}

/// See the module doc.
pub struct Controller {
    settings: Settings,
    nft: Nft,
    host: Netns,
    own: NetnsId,
    node: Option<SocketAddr>,
    dead: DeadIps,
    /// Executor pods alive when last seen (persisted with `dead`).
    live: LivePods,
    adopted: HashMap<String, Adopted>,
    pending: HashMap<String, Pending>,
    serve: Serve,
    stats: Arc<PodnetStats>,
    shutdown: CancellationToken,
}

impl Controller {
    /// Loads the persisted dead IPs and takes the agent's own namespace as the host's.
    pub fn new(
        settings: Settings,
        serve: Serve,
        stats: Arc<PodnetStats>,
        shutdown: CancellationToken,
    ) -> Result<Controller, PodnetError> {
        let loaded = dead_ips::load(&settings.state_dir)
            .map_err(|source| PodnetError::Scan { path: settings.state_dir.join(dead_ips::FILE_NAME), source })?;
        if let Some(why) = &loaded.discarded {
            warn!(%why, "the persisted dead executor IPs were unusable; starting without them");
        }
        let host = Netns::current()?;
        let own = host.id();
        let node = settings.node_ip.map(|ip| SocketAddr::new(ip, settings.port));
        info!(dead_ips = loaded.dead.len(), live_pods = loaded.live.len(), node = ?node, "pod network mode on");
        Ok(Controller {
            nft: Nft::new(&settings.nft),
            settings,
            host,
            own,
            node,
            dead: loaded.dead,
            live: loaded.live,
            adopted: HashMap::new(),
            pending: HashMap::new(),
            serve,
            stats,
            shutdown,
        })
    }

    /// Runs on a thread named `podnet` until `shutdown` or until every sender is gone.
    pub fn spawn(mut self, changes: Receiver<PodChange>) -> std::io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new().name("podnet".into()).spawn(move || {
            // The host table at once, even empty, so its state matches the persisted map.
            self.sync_tables();
            self.run(&changes);
        })
    }

    fn run(&mut self, changes: &Receiver<PodChange>) {
        while !self.shutdown.is_cancelled() {
            let wait = self.next_look();
            let (mut tables_changed, mut any) = (false, false);
            let mut closing = Vec::new();
            match changes.recv_timeout(wait) {
                Ok(change) => (tables_changed, any) = (self.apply(change, &mut closing), true),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            while let Ok(change) = changes.try_recv() {
                tables_changed |= self.apply(change, &mut closing);
            }
            // Live pods are persisted too, so a change of any kind is saved (once per batch).
            if any {
                self.save();
            }
            if tables_changed {
                self.sync_tables();
            }
            // After the redirects are in (module doc).
            for (pod, adopted) in closing {
                adopted.token.cancel();
                info!(%pod, ip = %adopted.listener.ip, "executor pod ended; its in-pod listener is closed");
            }
            self.adopt_pending();
            self.publish();
        }
    }

    /// Applies one change; returns whether the dead-IP map changed.
    fn apply(&mut self, change: PodChange, closing: &mut Vec<(String, Adopted)>) -> bool {
        match change {
            PodChange::Live { pod, app_id, ip, host_ip, local } => {
                let seen = LivePod { pod: pod.clone(), app_id: app_id.clone(), ip, host_ip, local };
                self.live.insert(pod.clone(), seen);
                let reused = self.dead.ip_reused(ip);
                if reused {
                    info!(%pod, %ip, "a new executor pod has a dead executor's IP; its redirect is removed");
                }
                if local {
                    self.node.get_or_insert(SocketAddr::new(host_ip, self.settings.port));
                    if !self.adopted.contains_key(&pod) {
                        self.pending.insert(pod, Pending { app_id, ip, since: Instant::now(), warned: false });
                    }
                }
                reused
            }
            PodChange::Died { pod, app_id, ip, host_ip, local } => {
                self.live.remove(&pod);
                self.pending.remove(&pod);
                if let Some(adopted) = self.adopted.remove(&pod) {
                    closing.push((pod.clone(), adopted));
                }
                let owner = SocketAddr::new(host_ip, self.settings.port);
                if local {
                    self.node.get_or_insert(owner);
                }
                debug!(%pod, %ip, %owner, "executor pod ended; its IP is redirected to the agent holding its files");
                self.dead.executor_died(ip, owner, &app_id)
            }
            PodChange::AppEnded { app_id } => {
                let removed = self.dead.app_ended(&app_id);
                if removed > 0 {
                    info!(app = %app_id, removed, "application ended; its dead executor IPs are no longer redirected");
                }
                removed > 0
            }
            PodChange::Listed { pods } => {
                let gone: Vec<LivePod> = self.live.values().filter(|p| !pods.contains(&p.pod)).cloned().collect();
                let mut changed = false;
                for LivePod { pod, app_id, ip, host_ip, local } in gone {
                    info!(%pod, %ip, "executor pod ended unseen (not in the list); its IP is redirected");
                    changed |= self.apply(PodChange::Died { pod, app_id, ip, host_ip, local }, closing);
                }
                changed
            }
        }
    }

    /// How long to wait for changes before looking for pending pods again: often while one is
    /// new (the executor's registration is racing us), once a second for pods pending longer
    /// (one that never shows up, e.g. a Kata pod, must not cost a `/proc` scan every 20 ms),
    /// and without pending pods only to notice shutdown.
    fn next_look(&self) -> Duration {
        match self.pending.values().map(|p| p.since.elapsed()).min() {
            Some(youngest) if youngest < Duration::from_secs(2) => Duration::from_millis(20),
            Some(_) => Duration::from_secs(1),
            None => Duration::from_millis(500),
        }
    }

    /// Looks for every pending pod's namespace with one `/proc` scan, and serves those found.
    fn adopt_pending(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let wanted: Vec<(String, IpAddr)> = self.pending.iter().map(|(k, p)| (k.clone(), p.ip)).collect();
        let ips: Vec<IpAddr> = wanted.iter().map(|(_, ip)| *ip).collect();
        let found = match find_pods_netns(&self.settings.proc_root, &ips, Some(self.own)) {
            Ok(found) => found,
            Err(e) => {
                self.stats.adoption_failures.fetch_add(1, Ordering::Relaxed);
                warn!(error = %e, "cannot scan for executor pods' network namespaces");
                return;
            }
        };
        for ((pod, _), (ip, result)) in wanted.into_iter().zip(found) {
            match result {
                Ok(Some(netns)) => {
                    if let Some(pending) = self.pending.remove(&pod) {
                        self.adopt(pod, pending, netns);
                    }
                }
                Ok(None) => self.not_found_yet(&pod, None),
                Err(e) => self.not_found_yet(&pod, Some(format!("{ip}: {e}"))),
            }
        }
    }

    /// A pending pod not found (yet): warned about once, after `adopt_warn_after`, or at once
    /// for an error; looked for again either way (a pod slow to start is not a failure).
    fn not_found_yet(&mut self, pod: &str, error: Option<String>) {
        let Some(pending) = self.pending.get_mut(pod) else { return };
        let overdue = pending.since.elapsed() >= self.settings.adopt_warn_after;
        if pending.warned || (error.is_none() && !overdue) {
            return;
        }
        pending.warned = true;
        self.stats.adoption_failures.fetch_add(1, Ordering::Relaxed);
        let waited_ms = pending.since.elapsed().as_millis() as u64;
        match error {
            Some(error) => warn!(%pod, %error, "cannot adopt the executor pod's network namespace; still trying"),
            None => {
                warn!(%pod, ip = %pending.ip, waited_ms, "no network namespace in /proc holds the executor pod's IP; still looking")
            }
        }
    }

    /// Opens the pod's listeners, serves them, and installs its redirect table (even empty:
    /// loading it switches conntrack on there, so flows opened from now on can be reset when
    /// a peer dies; spec §2.2).
    fn adopt(&mut self, pod: String, pending: Pending, netns: Netns) {
        let listeners = match bind_in_netns(&netns, self.settings.port) {
            Ok(l) => l,
            Err(e) => {
                self.stats.adoption_failures.fetch_add(1, Ordering::Relaxed);
                warn!(%pod, error = %e, "cannot listen inside the executor pod; it is looked for again");
                self.pending.insert(pod, Pending { warned: true, ..pending });
                return;
            }
        };
        if let Some(why) = &listeners.v6_unavailable {
            debug!(%pod, reason = %why, "no IPv6 listener in the pod");
        }
        let token = self.shutdown.child_token();
        let count = listeners.v6.as_ref().map_or(1, |_| 2);
        for listener in listeners.into_vec() {
            (self.serve)(listener, token.clone());
        }
        let millis = pending.since.elapsed().as_millis() as u64;
        self.stats.adoptions.fetch_add(1, Ordering::Relaxed);
        self.stats.last_listener_millis.store(millis, Ordering::Relaxed);
        info!(%pod, ip = %pending.ip, netns = %netns.id(), millis, "listening inside the executor pod");
        let listener = PodListener {
            pod: pod.clone(),
            app_id: pending.app_id,
            ip: pending.ip,
            netns: netns.id().to_string(),
            listeners: count,
            millis_to_listen: millis,
        };
        let adopted = Adopted { listener, netns, token };
        self.reconcile_pod(&pod, &adopted.netns);
        self.adopted.insert(pod, adopted);
    }

    fn save(&self) {
        if let Err(e) = dead_ips::save_with_live(&self.settings.state_dir, &self.dead, &self.live) {
            warn!(error = %e, "cannot persist the dead executor IPs; a restart now would forget some redirects");
        }
    }

    /// Every adopted pod's table to the cluster-wide map, the host's to this node's dead IPs.
    fn sync_tables(&self) {
        for (pod, adopted) in &self.adopted {
            self.reconcile_pod(pod, &adopted.netns);
        }
        // Without the node's IP there is no DNAT target, and no local dead IP either.
        if let Some(node) = self.node {
            let table = self.dead.host_table(node, self.settings.port);
            if let Err(e) = self.nft.reconcile(&self.host, &table) {
                self.stats.nft_failures.fetch_add(1, Ordering::Relaxed);
                warn!(error = %e, "cannot update the node's redirect table");
            }
        }
    }

    fn reconcile_pod(&self, pod: &str, netns: &Netns) {
        if let Err(e) = self.nft.reconcile(netns, &self.dead.pod_table(self.settings.port)) {
            self.stats.nft_failures.fetch_add(1, Ordering::Relaxed);
            warn!(%pod, error = %e, "cannot update the executor pod's redirect table");
        }
    }

    fn publish(&self) {
        let stats = &self.stats;
        let open: usize = self.adopted.values().map(|a| a.listener.listeners).sum();
        stats.listeners_open.store(open as u64, Ordering::Relaxed);
        stats.pods_pending.store(self.pending.len() as u64, Ordering::Relaxed);
        stats.redirects.store(self.dead.len() as u64, Ordering::Relaxed);
        let mut pods: Vec<PodListener> = self.adopted.values().map(|a| a.listener.clone()).collect();
        pods.sort_by(|a, b| a.pod.cmp(&b.pod));
        *crate::sync::lock(&stats.pods) = pods;
    }
}
