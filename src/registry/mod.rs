//! Executor registrations: which (app, executor) wrote its shuffle files where, kept across
//! restarts. This module owns the policy of what may be registered (local dirs confined to the
//! roots), the durable journal every registration goes through before it is acknowledged, and
//! the lookups the data path makes. It does no socket I/O.

pub mod dir_check;
mod dir_owners;
pub mod executor_mounts;
mod journal;
pub mod metrics;
mod pod_binding;
mod roots;

pub use dir_check::PathMode;
pub use executor_mounts::{Claims, ExecutorMounts, Mount, MountSource, PodMounts};
pub use journal::{Journal, JournalError, JournalStats, Record, Recovered};
pub use metrics::RegistrySource;
pub use roots::{canonicalize_lenient, Roots};

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tracing::{info, warn};

use crate::clock::unix_secs;
use crate::protocol::{java_error, ExecutorShuffleInfo, JavaClass, JavaError};
use crate::store::ExecutorDirs;
use crate::sync::{lock, read, write};

/// A registered executor: what it sent, and its dirs ready for path hashing.
#[derive(Debug)]
pub struct Executor {
    pub app_id: String,
    pub exec_id: String,
    /// As the executor sent it (what GetLocalDirsForExecutors answers, as the JVM service does).
    pub info: ExecutorShuffleInfo,
    /// Where its local dirs are on the node, when that is not where the executor sees them
    /// (`agent.localDirs.translate`); None: at the paths registered.
    pub node: Option<NodeDirs>,
    /// The dirs served from: the node dirs if translated, else the registered ones.
    pub dirs: ExecutorDirs,
    /// Seconds since the epoch of the last registration or fetch, for idle-app retention.
    last_used: AtomicU64,
}

impl Executor {
    /// Records use by a fetch; cheap enough for every stream opened (one relaxed store).
    pub fn touch(&self) {
        self.last_used.store(unix_secs(), Ordering::Relaxed);
    }

    pub fn last_used_secs(&self) -> u64 {
        self.last_used.load(Ordering::Relaxed)
    }

    /// The canonical dirs the agent may delete files in: all but those on PersistentVolumes,
    /// which Kubernetes deletes with their claims (the provisioner removes the directory).
    pub fn deletable_dirs(&self) -> impl Iterator<Item = &PathBuf> {
        let on_volume = self.node.as_ref().map(|n| n.on_volume.as_slice()).unwrap_or_default();
        let dirs = self.dirs.canonical_dirs().iter().enumerate();
        dirs.filter(move |(i, _)| !on_volume.get(*i).copied().unwrap_or(false)).map(|(_, d)| d)
    }
}

/// Where an executor's local dirs are on the node, one entry per registered dir, in order.
/// Journaled with the registration, so the files are served after the pod and its volume
/// binding are gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeDirs {
    /// The node path that holds each local dir: what the agent opens.
    pub dirs: Vec<String>,
    /// Whether each lies on a PersistentVolume (never deleted by the agent).
    pub on_volume: Vec<bool>,
}

/// A driver registered with RegisterDriver (the 2.2 Kubernetes fork and Mesos clients).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Driver {
    pub app_id: String,
    pub heartbeat_timeout_ms: i64,
}

/// Why a registration was refused. The client is sent its [`JavaError`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// A local dir entry was empty.
    #[error("localDirs entries must be non-null and non-empty")]
    EmptyDir,
    /// No local dirs were given.
    #[error("localDirs must not be empty")]
    NoDirs,
    /// A local dir resolves outside every configured root.
    #[error("localDirs entry is not under any of the service's local directories: {0}")]
    OutsideRoots(String),
    /// A local dir is, contains or lies inside a dir another app registered (the other app is
    /// not named to the client). Spark 4.3's LocalDirValidator text for app-scoped dirs.
    #[error("localDirs entry is not within application {app_id}'s directory: {entry}")]
    OtherAppsDir { app_id: String, entry: String },
    /// Dirs bound to pods: no executor pod of this app and executor id is known on this node,
    /// even after the wait, so its dirs cannot be checked against the pod's volumes.
    #[error(
        "Executor {exec_id} of application {app_id} is refused: no executor pod of it (spark-app-selector={app_id}, \
         spark-exec-id={exec_id}) is known on this node, so its localDirs cannot be checked against the pod's volumes"
    )]
    NoExecutorPod { app_id: String, exec_id: String },
    /// `agent.auth.secrets=pods`: a local dir is not within a hostPath volume the executor's
    /// pod mounts at the hostPath's own node path ([`executor_mounts`]).
    #[error(
        "localDirs entry {entry} of executor {exec_id} of application {app_id} is not within a hostPath volume \
         that its pod {pod} mounts at the same path: {reason}"
    )]
    NotInPodHostPath { app_id: String, exec_id: String, entry: String, pod: String, reason: String },
    /// `agent.localDirs.translate`: a local dir is not on a volume of the executor's pod that
    /// is a directory on this node ([`dir_check`]).
    #[error(
        "localDirs entry {entry} of executor {exec_id} of application {app_id} is not on a volume of its pod {pod} \
         that the service can read on this node: {reason}"
    )]
    NotOnPodVolume { app_id: String, exec_id: String, entry: String, pod: String, reason: String },
    /// `agent.localDirs.translate`: a local dir's node path resolves outside every root.
    #[error(
        "localDirs entry {entry} is on node path {node_path}, which is not under any of the service's local directories"
    )]
    NodePathOutsideRoots { entry: String, node_path: String },
    /// subDirsPerLocalDir was zero or negative.
    #[error("subDirsPerLocalDir must be positive, got {0}")]
    BadSubDirs(i32),
    /// The registration could not be made durable, so it is not acknowledged.
    #[error("{0}")]
    NotPersisted(String),
}

impl From<RegistryError> for JavaError {
    fn from(e: RegistryError) -> JavaError {
        let class = match e {
            RegistryError::NotPersisted(_) => JavaClass::Io,
            RegistryError::NoExecutorPod { .. } => JavaClass::Security,
            _ => JavaClass::IllegalArgument,
        };
        JavaError::new(class, e)
    }
}

/// What start-up recovered, for the log line and metrics.
#[derive(Debug, Default, Clone)]
pub struct RecoveryReport {
    pub executors: usize,
    pub drivers: usize,
    pub pending_cleanups: usize,
    /// Registrations dropped because their dirs are no longer under a root.
    pub refused: usize,
    pub records_read: u64,
    pub journal_bytes: u64,
    /// Why a torn or corrupt journal tail was skipped, if one was.
    pub skipped_tail: Option<String>,
}

type Apps = HashMap<String, HashMap<String, Arc<Executor>>>;

/// All registrations. Lookups take a read lock for a hash probe; the chunk path does not come
/// here at all (a stream holds its executor).
#[derive(Debug)]
pub struct Registry {
    roots: Roots,
    apps: RwLock<Apps>,
    drivers: RwLock<HashMap<String, Driver>>,
    /// Removed apps whose dirs are still to be deleted (persisted, so a crash resumes them).
    cleanups: Mutex<HashMap<String, Vec<PathBuf>>>,
    /// Which app each registered dir belongs to: no app registers another's.
    dir_owners: Mutex<dir_owners::DirOwners>,
    /// None: registrations live in memory only (tests, and `--state-dir` unusable is refused).
    journal: Option<Journal>,
    /// New registrations' dirs must lie in their pod's volumes (per-app secrets, or
    /// `agent.localDirs.translate`).
    pod_binding: Option<pod_binding::PodBinding>,
}

impl Registry {
    /// A registry that persists nothing.
    pub fn in_memory(roots: Roots) -> Registry {
        Registry {
            roots,
            apps: RwLock::default(),
            drivers: RwLock::default(),
            cleanups: Mutex::default(),
            dir_owners: Mutex::default(),
            journal: None,
            pod_binding: None,
        }
    }

    /// Opens the journal under `state_dir` and restores every registration it holds.
    pub fn open(roots: Roots, state_dir: &Path) -> Result<(Registry, RecoveryReport), JournalError> {
        let (journal, recovered) = Journal::open(state_dir)?;
        let mut registry = Registry::in_memory(roots);
        let mut report = RecoveryReport {
            drivers: recovered.drivers.len(),
            pending_cleanups: recovered.pending_cleanups.len(),
            records_read: recovered.records_read,
            journal_bytes: recovered.bytes,
            skipped_tail: recovered.skipped.clone(),
            ..RecoveryReport::default()
        };
        for (app_id, exec_id, info, node) in recovered.executors {
            // Re-checked against today's roots: a registration the agent would now refuse is
            // not served just because it was accepted under another configuration.
            match registry.validate(&app_id, &exec_id, info, node).and_then(|e| registry.claim_dirs(e).map(|(e, _)| e))
            {
                Ok(executor) => {
                    registry.insert(executor);
                    report.executors += 1;
                }
                Err(e) => {
                    warn!(app = %app_id, exec = %exec_id, reason = %e, "dropping a recovered registration");
                    report.refused += 1;
                }
            }
        }
        for (app_id, heartbeat_timeout_ms) in recovered.drivers {
            write(&registry.drivers).insert(app_id.clone(), Driver { app_id, heartbeat_timeout_ms });
        }
        *lock(&registry.cleanups) = recovered.pending_cleanups.into_iter().collect();
        registry.journal = Some(journal);
        Ok((registry, report))
    }

    pub fn roots(&self) -> &Roots {
        &self.roots
    }

    /// From now on, a new registration is accepted only if its dirs lie within volumes of its
    /// executor pod in `pods` that `mode` serves, waited for up to `wait` ([`executor_mounts`],
    /// [`dir_check`]). Registrations recovered already are not checked: their pods may be gone.
    ///
    /// Every registration is checked, whether its connection authenticated or acts for an
    /// app whose pods say it does not use authentication (the mixed mode): an unauthenticated
    /// connection may claim any such app's id, and without this it could register dirs of an
    /// authenticated app that has not registered them yet (dir_owners guards only dirs already
    /// registered). How a connection proved its app does not change which dirs its pod has.
    pub fn bind_to_pods(&mut self, pods: Arc<ExecutorMounts>, wait: Duration, mode: PathMode) {
        self.pod_binding = Some(pod_binding::PodBinding { pods, wait, mode });
    }

    /// Validates, persists, then stores a registration (replacing any earlier one for the same
    /// executor). Only after this returns Ok may the client be acknowledged.
    ///
    /// Not serialised against [`Registry::remove_app`] of the same app: a registration racing
    /// its app's removal can stay in memory while the journal says removed. Only an ending app's
    /// executor can hit this, and the worst outcome is that it is forgotten at the next restart.
    pub async fn register_executor(
        &self,
        app_id: &str,
        exec_id: &str,
        info: ExecutorShuffleInfo,
    ) -> Result<Arc<Executor>, RegistryError> {
        let executor = match &self.pod_binding {
            None => self.validate(app_id, exec_id, info, None)?,
            Some(binding) => {
                check_shape(&info)?;
                binding.bind(self, app_id, exec_id, info).await?
            }
        };
        let (executor, claimed) = self.claim_dirs(executor)?;
        let record = Record::Executor {
            app_id: app_id.to_string(),
            exec_id: exec_id.to_string(),
            info: executor.info.clone(),
            node: executor.node.clone(),
        };
        if let Err(e) = self.persist(record).await {
            lock(&self.dir_owners).release(&claimed);
            return Err(e);
        }
        Ok(self.insert(executor))
    }

    /// Records the executor's dirs as its app's, unless one overlaps another app's. Returns the
    /// dirs newly recorded.
    fn claim_dirs(&self, executor: Executor) -> Result<(Executor, Vec<PathBuf>), RegistryError> {
        let mut owners = lock(&self.dir_owners);
        let dirs = executor.dirs.canonical_dirs();
        if let Some((dir, owner)) = owners.conflict(&executor.app_id, dirs) {
            let i = dirs.iter().position(|d| d == dir).unwrap_or(0);
            let entry = executor.info.local_dirs.get(i).cloned().unwrap_or_default();
            warn!(app = %executor.app_id, exec = %executor.exec_id, dir = %dir.display(), owner = %owner, "registration refused: its local dir overlaps another application's");
            return Err(RegistryError::OtherAppsDir { app_id: executor.app_id.clone(), entry });
        }
        let claimed = owners.claim(&executor.app_id, dirs);
        drop(owners);
        Ok((executor, claimed))
    }

    /// Persists, then stores a driver registration.
    pub async fn register_driver(&self, driver: Driver) -> Result<(), RegistryError> {
        let record =
            Record::Driver { app_id: driver.app_id.clone(), heartbeat_timeout_ms: driver.heartbeat_timeout_ms };
        self.persist(record).await?;
        write(&self.drivers).insert(driver.app_id.clone(), driver);
        Ok(())
    }

    async fn persist(&self, record: Record) -> Result<(), RegistryError> {
        match &self.journal {
            Some(journal) => journal.append(record).await.map_err(|e| RegistryError::NotPersisted(e.to_string())),
            None => Ok(()),
        }
    }

    /// Validates a registration without storing it: the dirs served (`node`'s if given, else
    /// the registered ones) must lie under the roots.
    pub fn validate(
        &self,
        app_id: &str,
        exec_id: &str,
        info: ExecutorShuffleInfo,
        node: Option<NodeDirs>,
    ) -> Result<Executor, RegistryError> {
        if info.local_dirs.is_empty() {
            return Err(RegistryError::NoDirs);
        }
        let served = node.as_ref().map_or(&info.local_dirs, |n| &n.dirs);
        let mut canonical = Vec::with_capacity(served.len());
        for (i, dir) in served.iter().enumerate() {
            if dir.is_empty() {
                return Err(RegistryError::EmptyDir);
            }
            let outside = || match &node {
                None => RegistryError::OutsideRoots(dir.clone()),
                Some(_) => RegistryError::NodePathOutsideRoots {
                    entry: info.local_dirs.get(i).cloned().unwrap_or_default(),
                    node_path: dir.clone(),
                },
            };
            canonical.push(self.roots.confine(dir).ok_or_else(outside)?);
        }
        let dirs = ExecutorDirs::new(served.clone(), info.sub_dirs_per_local_dir, canonical)
            .map_err(|_| RegistryError::BadSubDirs(info.sub_dirs_per_local_dir))?;
        Ok(Executor {
            app_id: app_id.to_string(),
            exec_id: exec_id.to_string(),
            info,
            node,
            dirs,
            last_used: AtomicU64::new(unix_secs()),
        })
    }

    fn insert(&self, executor: Executor) -> Arc<Executor> {
        let executor = Arc::new(executor);
        let mut apps = write(&self.apps);
        apps.entry(executor.app_id.clone()).or_default().insert(executor.exec_id.clone(), Arc::clone(&executor));
        executor
    }

    pub fn executor(&self, app_id: &str, exec_id: &str) -> Option<Arc<Executor>> {
        read(&self.apps).get(app_id)?.get(exec_id).cloned()
    }

    /// The executor, or the text the JVM service sends when it is not registered.
    pub fn require(&self, app_id: &str, exec_id: &str) -> Result<Arc<Executor>, JavaError> {
        self.executor(app_id, exec_id).ok_or_else(|| java_error::executor_not_registered(app_id, exec_id))
    }

    pub fn executors_of(&self, app_id: &str) -> Vec<Arc<Executor>> {
        read(&self.apps).get(app_id).map(|execs| execs.values().cloned().collect()).unwrap_or_default()
    }

    pub fn driver(&self, app_id: &str) -> Option<Driver> {
        read(&self.drivers).get(app_id).cloned()
    }

    /// Every app known here: registered executors or a registered driver.
    pub fn app_ids(&self) -> Vec<String> {
        let apps = read(&self.apps);
        let mut ids: Vec<String> = apps.keys().cloned().collect();
        ids.extend(read(&self.drivers).keys().filter(|a| !apps.contains_key(*a)).cloned());
        ids.sort();
        ids
    }

    /// Forgets an application: its registrations and driver go, and its executors' dirs are
    /// queued for deletion (not those on PersistentVolumes: Kubernetes deletes them with their
    /// claims). Persisted first, so a crash before the deletion resumes it. Returns the dirs to
    /// delete (empty if the app was unknown, or all its dirs are on volumes).
    pub async fn remove_app(&self, app_id: &str) -> Result<Vec<PathBuf>, RegistryError> {
        let executors = self.executors_of(app_id);
        let dirs: Vec<PathBuf> = executors
            .iter()
            .flat_map(|e| e.deletable_dirs().cloned())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let known = !executors.is_empty() || self.driver(app_id).is_some();
        if !known {
            return Ok(Vec::new());
        }
        self.persist(Record::AppRemoved { app_id: app_id.to_string(), dirs: dirs.clone() }).await?;
        write(&self.apps).remove(app_id);
        write(&self.drivers).remove(app_id);
        lock(&self.dir_owners).release_app(app_id);
        if !dirs.is_empty() {
            // Merged, not replaced, exactly as the journal replays two removals of one app.
            let mut cleanups = lock(&self.cleanups);
            let pending = cleanups.entry(app_id.to_string()).or_default();
            pending.extend(dirs.iter().cloned());
            pending.sort();
            pending.dedup();
        }
        info!(app = %app_id, dirs = dirs.len(), "application removed");
        Ok(dirs)
    }

    /// Removed apps whose dirs still have to be deleted.
    pub fn pending_cleanups(&self) -> Vec<(String, Vec<PathBuf>)> {
        lock(&self.cleanups).iter().map(|(a, d)| (a.clone(), d.clone())).collect()
    }

    /// Records that a removed app's dirs are deleted. `deleted` is the list the caller worked
    /// from: if another removal of the app added dirs meanwhile, nothing is recorded (the
    /// journal's CleanupDone clears all of the app's pending dirs) and Ok(false) says the
    /// cleanup has to run again.
    pub async fn cleanup_done(&self, app_id: &str, deleted: &[PathBuf]) -> Result<bool, RegistryError> {
        let unchanged = |cleanups: &HashMap<String, Vec<PathBuf>>| {
            cleanups.get(app_id).is_none_or(|pending| pending.iter().all(|d| deleted.contains(d)))
        };
        if !unchanged(&lock(&self.cleanups)) {
            return Ok(false);
        }
        self.persist(Record::CleanupDone { app_id: app_id.to_string() }).await?;
        let mut cleanups = lock(&self.cleanups);
        if !unchanged(&cleanups) {
            // A removal landed during the append; its dirs are journaled after our CleanupDone,
            // so they stay pending on replay too.
            return Ok(false);
        }
        cleanups.remove(app_id);
        Ok(true)
    }

    /// Number of (app, executor) registrations.
    pub fn executor_count(&self) -> usize {
        read(&self.apps).values().map(HashMap::len).sum()
    }

    pub fn app_count(&self) -> usize {
        read(&self.apps).len()
    }

    pub fn journal_stats(&self) -> Option<JournalStats> {
        self.journal.as_ref().map(Journal::stats)
    }
}

/// The checks of a registration that need neither roots nor pods, made before its pod is
/// waited for.
fn check_shape(info: &ExecutorShuffleInfo) -> Result<(), RegistryError> {
    if info.local_dirs.is_empty() {
        return Err(RegistryError::NoDirs);
    }
    if info.local_dirs.iter().any(String::is_empty) {
        return Err(RegistryError::EmptyDir);
    }
    if info.sub_dirs_per_local_dir <= 0 {
        return Err(RegistryError::BadSubDirs(info.sub_dirs_per_local_dir));
    }
    Ok(())
}

/// Refuses to start on another port than the one the persisted registrations were made on:
/// executors only know that port, so serving elsewhere would strand them silently. The port is
/// recorded in `<state_dir>/shuffle.port`; port 0 (ephemeral, tests) is neither checked nor
/// recorded.
pub fn pin_port(state_dir: &Path, port: u16, registrations: usize) -> Result<(), String> {
    if port == 0 {
        return Ok(());
    }
    std::fs::create_dir_all(state_dir).map_err(|e| format!("cannot create {}: {e}", state_dir.display()))?;
    let path = state_dir.join("shuffle.port");
    if let Ok(text) = std::fs::read_to_string(&path) {
        let previous = text.trim().parse::<u16>().ok();
        if let Some(previous) = previous.filter(|p| *p != port && registrations > 0) {
            return Err(format!(
                "{} holds {registrations} registration(s) made on port {previous}, but the agent was started on port {port}; \
                 executors would not find it. Start it on port {previous}, or give it another --state-dir",
                state_dir.display()
            ));
        }
    }
    std::fs::write(&path, format!("{port}\n")).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
#[path = "pod_binding_tests.rs"]
mod pod_binding_tests;
