//! The volumes of this node's executor pods, as registrations are checked against them
//! (`agent.auth.secrets=pods`, issue 10; `agent.localDirs.translate`, issue 12).
//!
//! `RegisterExecutor`'s dirs are the client's choice. [`super::dir_owners`] stops an app from
//! registering dirs another app registered first; binding registrations to pods stops it from
//! registering dirs no pod of its own could reach: a new registration of (app, exec) is
//! accepted only if every local dir lies in a volume this node's executor pod of that app and
//! exec id mounts ([`super::dir_check`] says which volumes count, and where they are on the
//! node). Such a pod can read those node dirs already, so accepting them gives the app nothing
//! its pod does not have.
//!
//! What is kept per pod is small, (mount path, node path or what else it is), fed by the
//! executor-pod watch (src/k8s/executors.rs) and dropped when the pod is deleted or finishes.
//! PersistentVolumeClaims are looked up through [`Claims`] only when an executor registers (its
//! claim is bound by then: the kubelet mounted it before the executor started). The check is
//! made once, at registration. Registrations recovered from the journal are not checked again:
//! their pods may be long gone while their files are still served.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::Notify;

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
    /// A PersistentVolumeClaim (a `persistentVolumeClaim` volume, or an `ephemeral` one, whose
    /// claim is `<pod>-<volume>`), in the pod's namespace; `sub_path` is the mount's subPath
    /// ("" for none), already checked to be relative and without `..`.
    Claim { name: String, sub_path: PathBuf },
    /// A claim looked up: the node dir of its PersistentVolume joined with the subPath.
    Volume(PathBuf),
    /// A claim whose PersistentVolume is not a directory on this node, or could not be read:
    /// why, for the refusal text.
    Unresolved(String),
    /// Anything the agent does not serve from, and what it is, for the refusal text
    /// ("an emptyDir volume", "a hostPath volume mounted with subPathExpr").
    Other(&'static str),
}

/// Looks up the node dir of a PersistentVolumeClaim's volume (src/k8s/volumes.rs, through the
/// API). An error is the reason, as the client is told it.
pub trait Claims: Send + Sync + std::fmt::Debug {
    fn node_dir<'a>(&'a self, namespace: &'a str, claim: &'a str) -> BoxFuture<'a, Result<PathBuf, String>>;
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

impl PodMounts {
    /// The pod's namespace, from its key.
    pub fn namespace(&self) -> &str {
        self.pod.split_once('/').map_or("", |(ns, _)| ns)
    }
}

/// This node's live executor pods and their mounts, by pod key. Written by the executor-pod
/// watch; read by registrations, which wait a bounded time for a pod not delivered yet.
#[derive(Debug, Default)]
pub struct ExecutorMounts {
    pods: std::sync::Mutex<HashMap<String, PodMounts>>,
    changed: Notify,
    /// Set once the Kubernetes client exists; unset, claims cannot be looked up.
    claims: OnceLock<Arc<dyn Claims>>,
}

impl ExecutorMounts {
    /// Where claims are looked up from now on (the first call wins).
    pub fn set_claims(&self, claims: Arc<dyn Claims>) {
        let _ = self.claims.set(claims);
    }

    pub fn claims(&self) -> Option<&Arc<dyn Claims>> {
        self.claims.get()
    }

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
