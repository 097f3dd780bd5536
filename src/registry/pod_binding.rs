//! A new registration checked against its executor pod: wait (bounded) for the pod to be
//! known, look up its PersistentVolumeClaims (translated mode), then accept the registration
//! with the dirs its pod gives it, placed on the node ([`super::dir_check`]).

use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use super::dir_check::{self, PathMode, Unmounted};
use super::executor_mounts::{ExecutorMounts, Mount, MountSource, PodMounts};
use super::{Executor, NodeDirs, Registry, RegistryError};
use crate::protocol::ExecutorShuffleInfo;

/// Where a new registration's pod is looked up, how long it is waited for, and which layout
/// of its volumes is served.
#[derive(Debug)]
pub(super) struct PodBinding {
    pub(super) pods: Arc<ExecutorMounts>,
    pub(super) wait: Duration,
    pub(super) mode: PathMode,
}

/// Why one pod does not vouch for a registration.
enum Refusal {
    /// A local dir is not in a volume it serves.
    Dir { entry: String, why: Unmounted },
    /// The dirs are in its volumes, but the registration is refused anyway (a node path
    /// outside the roots, say).
    Registry(RegistryError),
}

impl PodBinding {
    /// The validated executor, served from the dirs one of its pods (there is one, unless pods
    /// were made by hand) gives it; else why the first pod refused.
    pub(super) async fn bind(
        &self,
        registry: &Registry,
        app_id: &str,
        exec_id: &str,
        info: ExecutorShuffleInfo,
    ) -> Result<Executor, RegistryError> {
        let pods = self.pods.wait_for(app_id, exec_id, self.wait).await;
        let mut first = None;
        for pod in &pods {
            let mounts = self.look_up_claims(pod).await;
            match self.try_pod(registry, &mounts, app_id, exec_id, &info) {
                Ok(executor) => {
                    if let Some(node) = &executor.node {
                        info!(app = %app_id, exec = %exec_id, pod = %pod.pod, registered = ?executor.info.local_dirs, node = ?node.dirs, "local dirs placed on the node");
                    }
                    return Ok(executor);
                }
                Err(refusal) => {
                    first.get_or_insert((pod.pod.clone(), refusal));
                }
            }
        }
        let (app_id, exec_id) = (app_id.to_string(), exec_id.to_string());
        let Some((pod, refusal)) = first else {
            warn!(app = %app_id, exec = %exec_id, "registration refused: no executor pod of it is known on this node");
            return Err(RegistryError::NoExecutorPod { app_id, exec_id });
        };
        let (entry, reason) = match refusal {
            Refusal::Registry(e) => {
                warn!(app = %app_id, exec = %exec_id, pod = %pod, reason = %e, "registration refused");
                return Err(e);
            }
            Refusal::Dir { entry, why } => (entry, why.to_string()),
        };
        warn!(app = %app_id, exec = %exec_id, pod = %pod, dir = %entry, reason = %reason, "registration refused: its local dir is not in its pod's volumes");
        Err(match self.mode {
            PathMode::Identical => RegistryError::NotInPodHostPath { app_id, exec_id, entry, pod, reason },
            PathMode::Translated => RegistryError::NotOnPodVolume { app_id, exec_id, entry, pod, reason },
        })
    }

    fn try_pod(
        &self,
        registry: &Registry,
        mounts: &[Mount],
        app_id: &str,
        exec_id: &str,
        info: &ExecutorShuffleInfo,
    ) -> Result<Executor, Refusal> {
        let mut node = NodeDirs { dirs: Vec::new(), on_volume: Vec::new() };
        for entry in &info.local_dirs {
            let placed =
                dir_check::place(mounts, entry, self.mode).map_err(|why| Refusal::Dir { entry: entry.clone(), why })?;
            node.dirs.push(placed.node_dir.to_string_lossy().into_owned());
            node.on_volume.push(placed.on_volume);
        }
        // Identical paths are served as registered, byte for byte (file paths, error texts).
        let node = (self.mode == PathMode::Translated).then_some(node);
        let executor = registry.validate(app_id, exec_id, info.clone(), node).map_err(Refusal::Registry)?;
        for (entry, canonical) in info.local_dirs.iter().zip(executor.dirs.canonical_dirs()) {
            dir_check::check_visible(mounts, canonical, self.mode)
                .map_err(|why| Refusal::Dir { entry: entry.clone(), why })?;
        }
        Ok(executor)
    }

    /// The pod's mounts with each claim replaced by its volume's node dir, or by why it has
    /// none. Only in translated mode, and each lookup bounded by the wait: an executor's
    /// registration times out on its side after `spark.shuffle.registration.timeout`.
    async fn look_up_claims(&self, pod: &PodMounts) -> Vec<Mount> {
        let mut mounts = pod.mounts.clone();
        if self.mode != PathMode::Translated {
            return mounts;
        }
        for mount in &mut mounts {
            let MountSource::Claim { name, sub_path } = &mount.source else { continue };
            let looked_up = match self.pods.claims() {
                None => Err("which the agent cannot look up: it has no Kubernetes client".to_string()),
                Some(claims) => tokio::time::timeout(self.wait, claims.node_dir(pod.namespace(), name))
                    .await
                    .unwrap_or_else(|_| Err(format!("which the API server did not describe within {:?}", self.wait))),
            };
            mount.source = match looked_up {
                Ok(dir) => MountSource::Volume(dir_check::normalize(&dir.join(sub_path))),
                Err(why) => MountSource::Unresolved(format!("persistentVolumeClaim {name}, {why},")),
            };
        }
        mounts
    }
}
