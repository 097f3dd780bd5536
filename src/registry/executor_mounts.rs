//! The directories an executor's own pod gives it on this node, and the check that binds a new
//! registration's local dirs to them (`agent.auth.secrets=pods`, issue 10).
//!
//! `RegisterExecutor`'s dirs are the client's choice. [`super::dir_owners`] stops an app from
//! registering dirs another app registered first; this stops it from registering dirs no pod of
//! its own could reach: with Kubernetes, a new registration of (app, exec) is accepted only if
//! every local dir lies within a hostPath volume that this node's executor pod of that app and
//! exec id mounts at the hostPath's own node path. Such a pod can read those node dirs already,
//! so accepting them gives the app nothing its pod does not have.
//!
//! Only identical paths are served (spec/kubernetes.md §1, §2: executor, node and agent see a
//! local dir at one absolute path). A mount at another path than its node path, a subPathExpr,
//! an emptyDir, a PVC or no mount at all is refused with the reason: the agent would read other
//! files than the executor wrote. Translating mount paths and PVs is a later issue.
//!
//! What is kept per pod is small, (mount path, node path or what else it is), fed by the
//! executor-pod watch (src/k8s/executors.rs) and dropped when the pod is deleted or finishes.
//! The check is made once, when an executor registers (it is alive then). Registrations
//! recovered from the journal are not checked again: their pods may be long gone while their
//! files are still served.
//!
//! Pure apart from the filesystem reads of [`canonicalize_lenient`] and the one [`Notify`]
//! that ends a registration's wait for its pod.

use std::collections::{HashMap, HashSet};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use tokio::sync::Notify;

use super::roots::canonicalize_lenient;
use crate::sync::lock;

/// One volume mount of an executor pod's container, reduced to what the check needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// `volumeMounts[].mountPath`, lexically normalised.
    pub mount_path: PathBuf,
    pub source: MountSource,
}

/// What a mount shows at its mount path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountSource {
    /// A hostPath volume: the node path seen at the mount path (`hostPath.path`, joined with
    /// the mount's `subPath` if it has one), lexically normalised.
    HostPath(PathBuf),
    /// Anything the agent does not serve from, and what it is, for the refusal text
    /// ("an emptyDir volume", "a hostPath volume mounted with subPathExpr").
    Other(&'static str),
}

/// One executor pod of this node, as the check sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodMounts {
    /// `namespace/name`, for the refusal text and the log.
    pub pod: String,
    pub app_id: String,
    pub exec_id: String,
    pub mounts: Vec<Mount>,
}

/// Why a local dir is not one the executor's pod gives it (the end of the client's text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unmounted {
    /// No mount of the pod holds it.
    NoMount,
    /// The mount that holds it is not a hostPath.
    NotHostPath { mount_path: PathBuf, what: &'static str },
    /// It is a hostPath, shown at another path than its node path.
    OtherPath { mount_path: PathBuf, node_path: PathBuf },
    /// Symlinks (or `..`) make it resolve outside every hostPath the pod mounts at its path.
    Escapes { canonical: PathBuf },
}

impl std::fmt::Display for Unmounted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unmounted::NoMount => write!(f, "the pod mounts no volume there"),
            Unmounted::NotHostPath { mount_path, what } => {
                write!(f, "the pod mounts {what} at {}, not a hostPath", mount_path.display())
            }
            Unmounted::OtherPath { mount_path, node_path } => write!(
                f,
                "the pod mounts hostPath {} at {}; only a hostPath mounted at its own node path is served",
                node_path.display(),
                mount_path.display()
            ),
            Unmounted::Escapes { canonical } => {
                write!(f, "it resolves to {}, outside the pod's hostPath volumes", canonical.display())
            }
        }
    }
}

/// `path` made absolute and normalised without the filesystem: `.` dropped, `..` pops. How a
/// container path is read, since the agent cannot resolve the container's own symlinks.
pub fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for component in path.components() {
        match component {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(name) => out.push(name),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

/// The mount a path falls in: the one with the longest mount path above it (a mount nested in
/// another hides what is below it in the outer one). `at` maps a mount to the path compared.
fn holding<'a>(mounts: &'a [Mount], path: &Path, at: impl Fn(&Mount) -> PathBuf) -> Option<&'a Mount> {
    mounts
        .iter()
        .map(|m| (at(m), m))
        .filter(|(p, _)| path.starts_with(p))
        .max_by_key(|(p, _)| p.components().count())
        .map(|(_, m)| m)
}

/// Whether a mount is a hostPath shown at its own node path: the one layout served.
fn identical(mount: &Mount) -> Result<(), Unmounted> {
    match &mount.source {
        MountSource::HostPath(node) if *node == mount.mount_path => Ok(()),
        MountSource::HostPath(node) => {
            Err(Unmounted::OtherPath { mount_path: mount.mount_path.clone(), node_path: node.clone() })
        }
        MountSource::Other(what) => Err(Unmounted::NotHostPath { mount_path: mount.mount_path.clone(), what }),
    }
}

/// Checks one local dir against one pod's mounts. `entry` is the dir as registered (a path in
/// the executor's container); `canonical` is what the agent resolved it to on its own
/// filesystem (Roots::confine), which is what it would read.
///
/// Both must fall in a hostPath mounted at its node path: `entry` so that the container's path
/// and the node's mean the same dir (not an emptyDir nested inside the hostPath, say), and
/// `canonical` so that a symlink the executor made in its hostPath cannot point the agent at
/// node dirs its pod does not mount. Mount paths are compared with `canonical` after the agent
/// resolves them too, so a node path reached through a symlink still matches itself.
pub fn check_dir(mounts: &[Mount], entry: &str, canonical: &Path) -> Result<(), Unmounted> {
    let lexical = normalize(Path::new(entry));
    identical(holding(mounts, &lexical, |m| m.mount_path.clone()).ok_or(Unmounted::NoMount)?)?;
    let resolved = holding(mounts, canonical, |m| canonicalize_lenient(&m.mount_path));
    match resolved.map(identical) {
        Some(Ok(())) => Ok(()),
        _ => Err(Unmounted::Escapes { canonical: canonical.to_path_buf() }),
    }
}

/// Checks all of a registration's dirs (entries paired with their canonical forms) against one
/// pod: the first that fails, with why.
pub fn check_dirs<'a>(
    mounts: &[Mount],
    dirs: impl IntoIterator<Item = (&'a str, &'a Path)>,
) -> Result<(), (&'a str, Unmounted)> {
    for (entry, canonical) in dirs {
        check_dir(mounts, entry, canonical).map_err(|why| (entry, why))?;
    }
    Ok(())
}

/// This node's live executor pods and their mounts, by pod key. Written by the executor-pod
/// watch; read by registrations, which wait a bounded time for a pod not delivered yet.
#[derive(Debug, Default)]
pub struct ExecutorMounts {
    pods: std::sync::Mutex<HashMap<String, PodMounts>>,
    changed: Notify,
}

impl ExecutorMounts {
    /// A pod seen (added, changed, or listed). Pod volumes cannot change; the entry is still
    /// replaced, so a re-created pod of the same name is not judged by its predecessor.
    pub fn upsert(&self, pod: PodMounts) {
        lock(&self.pods).insert(pod.pod.clone(), pod);
        self.changed.notify_waiters();
    }

    /// A pod deleted or finished: it registers nothing any more.
    pub fn remove(&self, pod: &str) {
        lock(&self.pods).remove(pod);
    }

    /// After a complete LIST: pods not in it are gone.
    pub fn retain(&self, listed: &HashSet<String>) {
        lock(&self.pods).retain(|key, _| listed.contains(key));
    }

    /// Pods on this node.
    pub fn len(&self) -> usize {
        lock(&self.pods).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The pods labelled as executor `exec_id` of `app_id`. Spark gives each executor its own
    /// pod; more than one happens only with a pod made by hand or a reused app id whose old pod
    /// is still terminating, and each may vouch for the dirs it mounts.
    pub fn of(&self, app_id: &str, exec_id: &str) -> Vec<PodMounts> {
        let pods = lock(&self.pods);
        let mut found: Vec<PodMounts> =
            pods.values().filter(|p| p.app_id == app_id && p.exec_id == exec_id).cloned().collect();
        found.sort_by(|a, b| a.pod.cmp(&b.pod));
        found
    }

    /// Like [`ExecutorMounts::of`], but waits up to `wait` for a pod to arrive: an executor's
    /// registration can reach the agent before the watch delivers its pod.
    pub async fn wait_for(&self, app_id: &str, exec_id: &str, wait: Duration) -> Vec<PodMounts> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            // Registered before the lookup, so a pod landing in between is not missed.
            notified.as_mut().enable();
            let found = self.of(app_id, exec_id);
            if !found.is_empty() {
                return found;
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(deadline) => return self.of(app_id, exec_id),
            }
        }
    }
}

#[cfg(test)]
#[path = "executor_mounts_tests.rs"]
mod tests;
