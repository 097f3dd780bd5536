//! Where a PersistentVolumeClaim's files are on this node (`agent.localDirs.translate`): GET the
//! claim in the executor pod's namespace, then the PersistentVolume it is bound to, and take the
//! volume's node directory (`spec.hostPath.path` or `spec.local.path`: what node-local
//! provisioners such as rancher's local-path-provisioner and OpenEBS LocalPV hostpath make).
//! Needs `get` on persistentvolumeclaims and persistentvolumes, nothing more.
//!
//! Looked up when an executor registers, never at pod events: by then the kubelet has mounted
//! the claim, so it is bound. Any other kind of volume (CSI, NFS, a cloud disk) is refused with
//! what it is: its files are not a directory the agent can read on the node, and would not stay
//! on the node once the executor is gone.

use std::path::PathBuf;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::Api;

use crate::registry::Claims;

/// The API-backed [`Claims`].
#[derive(Clone)]
pub struct ApiClaims {
    client: kube::Client,
}

impl std::fmt::Debug for ApiClaims {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiClaims")
    }
}

impl ApiClaims {
    pub fn new(client: kube::Client) -> ApiClaims {
        ApiClaims { client }
    }

    async fn look_up(&self, namespace: &str, claim: &str) -> Result<PathBuf, String> {
        let pvc = Api::<PersistentVolumeClaim>::namespaced(self.client.clone(), namespace)
            .get(claim)
            .await
            .map_err(|e| api_error(&e, "persistentvolumeclaims"))?;
        let pv_name = bound_volume(&pvc)?;
        let pv = Api::<PersistentVolume>::all(self.client.clone())
            .get(pv_name)
            .await
            .map_err(|e| format!("whose PersistentVolume {pv_name} {}", api_error(&e, "persistentvolumes")))?;
        node_dir(&pv, namespace, claim)
    }
}

impl Claims for ApiClaims {
    fn node_dir<'a>(&'a self, namespace: &'a str, claim: &'a str) -> BoxFuture<'a, Result<PathBuf, String>> {
        Box::pin(self.look_up(namespace, claim))
    }
}

/// The name of the volume a claim is bound to, or why it has none.
pub fn bound_volume(pvc: &PersistentVolumeClaim) -> Result<&str, String> {
    let phase = pvc.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("");
    let volume = pvc.spec.as_ref().and_then(|s| s.volume_name.as_deref()).filter(|v| !v.is_empty());
    match volume {
        Some(volume) if phase == "Bound" => Ok(volume),
        _ => Err(format!("which is not bound to a PersistentVolume (phase {:?})", phase)),
    }
}

/// The node directory of a PersistentVolume bound to `namespace/claim`, or why it is not one.
/// The volume's claimRef must point back at the claim: a claim names its volume, and only the
/// pair agreeing makes it the claim's (what the PV controller checks before it binds them).
pub fn node_dir(pv: &PersistentVolume, namespace: &str, claim: &str) -> Result<PathBuf, String> {
    let name = pv.metadata.name.as_deref().unwrap_or("");
    let spec = pv.spec.as_ref().ok_or_else(|| format!("whose PersistentVolume {name} has no spec"))?;
    let claimed_by = spec.claim_ref.as_ref().map(|r| (r.namespace.as_deref(), r.name.as_deref()));
    if claimed_by != Some((Some(namespace), Some(claim))) {
        return Err(format!(
            "whose PersistentVolume {name} is not bound back to it (its claimRef names another claim)"
        ));
    }
    let path = match (&spec.host_path, &spec.local) {
        (Some(host), _) => host.path.as_str(),
        (None, Some(local)) => local.path.as_str(),
        (None, None) => {
            return Err(format!(
                "whose PersistentVolume {name} is {}, not a directory on the node (hostPath or local)",
                volume_kind(spec)
            ))
        }
    };
    let path = PathBuf::from(path);
    if !path.is_absolute() {
        return Err(format!("whose PersistentVolume {name} has the relative path {}", path.display()));
    }
    Ok(path)
}

/// What a PersistentVolume that is not a node directory is, for the refusal text.
fn volume_kind(spec: &k8s_openapi::api::core::v1::PersistentVolumeSpec) -> String {
    match &spec.csi {
        Some(csi) => format!("a CSI volume of driver {}", csi.driver),
        None if spec.nfs.is_some() => "an NFS volume".to_string(),
        None => "a network or cloud volume".to_string(),
    }
}

/// An API error as the end of a refusal: a missing object, a missing permission, or else.
fn api_error(e: &kube::Error, resource: &str) -> String {
    match e {
        kube::Error::Api(status) if status.code == 404 => "which does not exist".to_string(),
        kube::Error::Api(status) if status.code == 403 => {
            format!("which the agent may not read (it needs get on {resource}: deploy/components/node-local-volumes)")
        }
        e => format!("which could not be read from the API server: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pvc(phase: &str, volume: Option<&str>) -> PersistentVolumeClaim {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "exec-1-pvc-0", "namespace": "jobs"},
            "spec": {"volumeName": volume},
            "status": {"phase": phase},
        }))
        .expect("a claim")
    }

    fn pv(spec: serde_json::Value) -> PersistentVolume {
        serde_json::from_value(serde_json::json!({"metadata": {"name": "pvc-1"}, "spec": spec})).expect("a volume")
    }

    fn claimed(mut spec: serde_json::Value) -> serde_json::Value {
        spec["claimRef"] = serde_json::json!({"namespace": "jobs", "name": "exec-1-pvc-0"});
        spec
    }

    #[test]
    fn a_bound_claim_names_its_volume_and_an_unbound_one_is_refused() {
        assert_eq!(bound_volume(&pvc("Bound", Some("pvc-1"))), Ok("pvc-1"));
        assert_eq!(
            bound_volume(&pvc("Pending", None)),
            Err("which is not bound to a PersistentVolume (phase \"Pending\")".to_string())
        );
        assert!(bound_volume(&pvc("Pending", Some("pvc-1"))).is_err(), "named but not bound yet");
    }

    #[test]
    fn hostpath_and_local_volumes_give_their_node_dir() {
        let host = pv(claimed(serde_json::json!({"hostPath": {"path": "/opt/local-path-provisioner/pvc-1_jobs_x"}})));
        assert_eq!(
            node_dir(&host, "jobs", "exec-1-pvc-0"),
            Ok(PathBuf::from("/opt/local-path-provisioner/pvc-1_jobs_x"))
        );
        let local = pv(claimed(serde_json::json!({"local": {"path": "/var/openebs/local/pvc-1"}})));
        assert_eq!(node_dir(&local, "jobs", "exec-1-pvc-0"), Ok(PathBuf::from("/var/openebs/local/pvc-1")));
    }

    #[test]
    fn other_volumes_and_volumes_of_another_claim_are_refused_with_what_they_are() {
        let csi = pv(claimed(serde_json::json!({"csi": {"driver": "ebs.csi.aws.com", "volumeHandle": "vol-1"}})));
        assert_eq!(
            node_dir(&csi, "jobs", "exec-1-pvc-0"),
            Err("whose PersistentVolume pvc-1 is a CSI volume of driver ebs.csi.aws.com, not a directory on the node \
                 (hostPath or local)"
                .to_string())
        );
        let nfs = pv(claimed(serde_json::json!({"nfs": {"server": "n", "path": "/x"}})));
        assert!(node_dir(&nfs, "jobs", "exec-1-pvc-0").expect_err("refused").contains("an NFS volume"));
        let host = pv(claimed(serde_json::json!({"hostPath": {"path": "/pv/1"}})));
        assert!(node_dir(&host, "other", "exec-1-pvc-0").expect_err("refused").contains("not bound back to it"));
        assert!(node_dir(&host, "jobs", "exec-2-pvc-0").is_err());
        let unclaimed = pv(serde_json::json!({"hostPath": {"path": "/pv/1"}}));
        assert!(node_dir(&unclaimed, "jobs", "exec-1-pvc-0").is_err(), "an unbound volume is no claim's");
        let relative = pv(claimed(serde_json::json!({"hostPath": {"path": "pv/1"}})));
        assert!(node_dir(&relative, "jobs", "exec-1-pvc-0").expect_err("refused").contains("relative path"));
    }
}
