//! What the agent reads off a pod: the Spark labels, whether the pod has finished, whether it
//! is Ready. Pure functions over k8s-openapi's `Pod`; no API calls.
//!
//! Label names are Spark's (`org.apache.spark.deploy.k8s.Constants`, spec/kubernetes.md §2);
//! the 2.2 fork uses the same three.

use std::path::Path;

use k8s_openapi::api::core::v1::{Pod, Volume, VolumeMount};

use crate::registry::dir_check::{normalize, valid_sub_path};
use crate::registry::{Mount, MountSource, PodMounts};

/// `driver` or `executor`.
pub const ROLE_LABEL: &str = "spark-role";
/// The application id: the same string executors send as appId when they register.
pub const APP_LABEL: &str = "spark-app-selector";
/// The executor id, as executors send it when they register.
pub const EXEC_LABEL: &str = "spark-exec-id";

/// Label selector for every Spark driver pod.
pub const DRIVER_SELECTOR: &str = "spark-role=driver";
/// Label selector for every Spark executor pod.
pub const EXECUTOR_SELECTOR: &str = "spark-role=executor";

/// `namespace/name`: how pods are told apart in the agent's views and logs. A DELETED event
/// carries the same metadata, so it finds the entry an ADDED event made.
pub fn key(pod: &Pod) -> String {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("");
    let name = pod.metadata.name.as_deref().unwrap_or("");
    format!("{ns}/{name}")
}

fn label<'a>(pod: &'a Pod, name: &str) -> Option<&'a str> {
    pod.metadata.labels.as_ref()?.get(name).map(String::as_str).filter(|v| !v.is_empty())
}

/// The pod's application id (label `spark-app-selector`).
pub fn app_id(pod: &Pod) -> Option<&str> {
    label(pod, APP_LABEL)
}

/// The pod's executor id (label `spark-exec-id`).
pub fn exec_id(pod: &Pod) -> Option<&str> {
    label(pod, EXEC_LABEL)
}

/// The pod's phase, "" when the API server has not reported one.
pub fn phase(pod: &Pod) -> &str {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("")
}

/// Phase Succeeded or Failed: every container has stopped and none will restart. Nothing else
/// counts: Pending, Running, Unknown (node unreachable) and a missing phase all mean "may
/// still be running", so nothing is deleted on them.
pub fn is_finished(pod: &Pod) -> bool {
    matches!(phase(pod), "Succeeded" | "Failed")
}

/// Not finished and not being deleted: a pod that is, or may soon be, doing work.
pub fn is_live(pod: &Pod) -> bool {
    !is_finished(pod) && pod.metadata.deletion_timestamp.is_none()
}

/// The pod's Ready condition is True (what the 2.2 fork's drivers require of a shuffle pod).
pub fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|conds| conds.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Whether `value` may be used as a label value in a selector: at most 63 characters,
/// alphanumerics with `-`, `_`, `.` inside. App ids come from the network (RegisterExecutor);
/// one that is not a valid label value cannot be any pod's label, and must never be pasted
/// into a selector where a `,` or `!=` would change its meaning.
pub fn is_label_value(value: &str) -> bool {
    let bytes = value.as_bytes();
    let alnum = |b: &u8| b.is_ascii_alphanumeric();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes.first().is_some_and(alnum)
        && bytes.last().is_some_and(alnum)
        && bytes.iter().all(|b| alnum(b) || matches!(b, b'-' | b'_' | b'.'))
}

/// What an executor pod mounts, for binding its registrations' dirs to it; None for a pod
/// without app or executor id. Every container's mounts count, not only the executor's: a pod
/// of the app that mounts a hostPath in a sidecar can read it already, and the executor
/// container's name is the pod template's choice.
pub fn executor_mounts(pod: &Pod) -> Option<PodMounts> {
    let (app_id, exec_id) = (app_id(pod)?, exec_id(pod)?);
    let spec = pod.spec.as_ref();
    let volumes = spec.and_then(|s| s.volumes.as_deref()).unwrap_or_default();
    let mounts = spec
        .iter()
        .flat_map(|s| &s.containers)
        .flat_map(|c| c.volume_mounts.iter().flatten())
        .filter_map(|m| mount(pod, m, volumes.iter().find(|v| v.name == m.name)?))
        .collect();
    Some(PodMounts { pod: key(pod), app_id: app_id.to_string(), exec_id: exec_id.to_string(), mounts })
}

/// One volume mount: a hostPath's node path (with its subPath), a claim to look up, or what
/// else it is. A mount of a volume the pod does not declare is not a mount (the API server
/// refuses such pods).
fn mount(pod: &Pod, m: &VolumeMount, volume: &Volume) -> Option<Mount> {
    let mount_path = Path::new(&m.mount_path);
    if !mount_path.is_absolute() {
        return None;
    }
    let sub = Path::new(m.sub_path.as_deref().unwrap_or(""));
    let source = match claim(pod, volume) {
        // Expanded by the kubelet from the container's env; not guessed here.
        _ if m.sub_path_expr.as_deref().is_some_and(|s| !s.is_empty()) => {
            MountSource::Other("a volume with subPathExpr")
        }
        // The API server refuses an absolute subPath or one with `..`; one that got here
        // anyway is not followed.
        _ if !valid_sub_path(sub) => MountSource::Other("a volume with an invalid subPath"),
        _ if volume.host_path.is_some() => {
            let host = volume.host_path.as_ref().map_or("", |h| h.path.as_str());
            MountSource::HostPath(normalize(&Path::new(host).join(sub)))
        }
        Some(name) => MountSource::Claim { name, sub_path: sub.to_path_buf() },
        None => MountSource::Other(volume_kind(volume)),
    };
    Some(Mount { mount_path: normalize(mount_path), source })
}

/// The PersistentVolumeClaim behind a volume: a `persistentVolumeClaim` volume names it; an
/// `ephemeral` one's is `<pod name>-<volume name>` (made by Kubernetes for the pod).
fn claim(pod: &Pod, volume: &Volume) -> Option<String> {
    if let Some(pvc) = &volume.persistent_volume_claim {
        return Some(pvc.claim_name.clone()).filter(|c| !c.is_empty());
    }
    volume.ephemeral.as_ref()?;
    Some(format!("{}-{}", pod.metadata.name.as_deref()?, volume.name))
}

/// What a volume that is not a hostPath is, for a refusal's text.
fn volume_kind(volume: &Volume) -> &'static str {
    if volume.empty_dir.is_some() {
        "an emptyDir volume"
    } else if volume.persistent_volume_claim.is_some() {
        "a persistentVolumeClaim volume"
    } else if volume.ephemeral.is_some() {
        "an ephemeral volume"
    } else if volume.config_map.is_some() || volume.secret.is_some() || volume.projected.is_some() {
        "a configMap, secret or projected volume"
    } else {
        "a volume that is not a hostPath"
    }
}

/// A pod in namespace `jobs` with these labels and phase, for the watchers' unit tests.
#[cfg(test)]
pub(crate) fn test_pod(name: &str, phase: Option<&str>, labels: &[(&str, &str)]) -> Pod {
    use k8s_openapi::api::core::v1::PodStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("jobs".into()),
            labels: Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
            ..ObjectMeta::default()
        },
        status: Some(PodStatus { phase: phase.map(str::to_string), ..PodStatus::default() }),
        ..Pod::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodCondition, PodStatus};

    fn pod(phase: Option<&str>, labels: &[(&str, &str)]) -> Pod {
        test_pod("p", phase, labels)
    }

    #[test]
    fn only_succeeded_and_failed_count_as_finished() {
        for (phase, finished) in
            [(Some("Succeeded"), true), (Some("Failed"), true), (Some("Running"), false), (Some("Pending"), false)]
        {
            assert_eq!(is_finished(&pod(phase, &[])), finished, "{phase:?}");
        }
        assert!(!is_finished(&pod(Some("Unknown"), &[])), "a node that stopped reporting is not a finished pod");
        assert!(!is_finished(&pod(None, &[])), "no phase yet is not finished");
    }

    #[test]
    fn a_pod_being_deleted_is_not_live_but_not_finished_either() {
        let mut p = pod(Some("Running"), &[]);
        p.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::chrono::DateTime::UNIX_EPOCH));
        assert!(!is_live(&p));
        assert!(!is_finished(&p));
    }

    #[test]
    fn spark_labels_are_read_and_empty_values_ignored() {
        let p = pod(Some("Running"), &[(APP_LABEL, "spark-123"), (EXEC_LABEL, ""), (ROLE_LABEL, "executor")]);
        assert_eq!(app_id(&p), Some("spark-123"));
        assert_eq!(exec_id(&p), None);
        assert_eq!(key(&p), "jobs/p");
    }

    #[test]
    fn ready_means_the_ready_condition_is_true() {
        let with_ready = |status: &str| {
            let mut p = pod(Some("Running"), &[]);
            let ready = PodCondition { type_: "Ready".into(), status: status.into(), ..PodCondition::default() };
            p.status.get_or_insert_with(PodStatus::default).conditions = Some(vec![ready]);
            p
        };
        assert!(!is_ready(&pod(Some("Running"), &[])));
        assert!(!is_ready(&with_ready("False")));
        assert!(is_ready(&with_ready("True")));
    }

    #[test]
    fn label_values_that_could_change_a_selector_are_rejected() {
        assert!(is_label_value("spark-0123456789abcdef"));
        assert!(is_label_value("app-20240101-0001"));
        assert!(is_label_value("application_1_2"));
        for bad in ["", "a,spark-role!=driver", "a=b", "-a", "a-", "x y", &"a".repeat(64)] {
            assert!(!is_label_value(bad), "{bad:?}");
        }
    }

    /// An executor pod of app-1, exec 1, with these volumes and mounts (as JSON, as the API
    /// server sends them).
    fn with_volumes(volumes: serde_json::Value, containers: serde_json::Value) -> Pod {
        let mut p = pod(Some("Running"), &[(APP_LABEL, "app-1"), (EXEC_LABEL, "1"), (ROLE_LABEL, "executor")]);
        p.spec =
            Some(serde_json::from_value(serde_json::json!({"volumes": volumes, "containers": containers})).unwrap());
        p
    }

    fn host(mount: &str, node: &str) -> Mount {
        Mount { mount_path: mount.into(), source: MountSource::HostPath(node.into()) }
    }

    fn claim(mount: &str, name: &str, sub_path: &str) -> Mount {
        Mount { mount_path: mount.into(), source: MountSource::Claim { name: name.into(), sub_path: sub_path.into() } }
    }

    #[test]
    fn an_executor_pods_mounts_are_read_with_hostpaths_subpaths_and_other_volumes() {
        let p = with_volumes(
            serde_json::json!([
                {"name": "spark-local-dir-1", "hostPath": {"path": "/data/spark/", "type": "DirectoryOrCreate"}},
                {"name": "disks", "hostPath": {"path": "/mnt"}},
                {"name": "scratch", "emptyDir": {}},
                {"name": "claim", "persistentVolumeClaim": {"claimName": "c"}},
                {"name": "spark-local-dir-2", "ephemeral": {"volumeClaimTemplate": {"spec": {}}}},
            ]),
            serde_json::json!([
                {"name": "spark-kubernetes-executor", "volumeMounts": [
                    {"name": "spark-local-dir-1", "mountPath": "/data/spark"},
                    {"name": "disks", "mountPath": "/mnt/disk2", "subPath": "disk2"},
                    {"name": "disks", "mountPath": "/mnt/x", "subPathExpr": "$(POD_NAME)"},
                    {"name": "scratch", "mountPath": "/var/data/spark-1"},
                    {"name": "undeclared", "mountPath": "/nowhere"},
                ]},
                {"name": "sidecar", "volumeMounts": [
                    {"name": "claim", "mountPath": "/pv/"},
                    {"name": "claim", "mountPath": "/pv2", "subPath": "a/b"},
                    {"name": "spark-local-dir-2", "mountPath": "/data/eph"},
                ]},
            ]),
        );
        let got = executor_mounts(&p).expect("an executor pod");
        assert_eq!((got.pod.as_str(), got.app_id.as_str(), got.exec_id.as_str()), ("jobs/p", "app-1", "1"));
        assert_eq!(
            got.mounts,
            [
                host("/data/spark", "/data/spark"),
                host("/mnt/disk2", "/mnt/disk2"),
                Mount { mount_path: "/mnt/x".into(), source: MountSource::Other("a volume with subPathExpr") },
                Mount { mount_path: "/var/data/spark-1".into(), source: MountSource::Other("an emptyDir volume") },
                claim("/pv", "c", ""),
                claim("/pv2", "c", "a/b"),
                claim("/data/eph", "p-spark-local-dir-2", ""),
            ]
        );
    }

    #[test]
    fn a_subpath_that_climbs_out_of_its_hostpath_is_not_followed() {
        let p = with_volumes(
            serde_json::json!([{"name": "v", "hostPath": {"path": "/data/a"}}]),
            serde_json::json!([{"name": "c", "volumeMounts": [
                {"name": "v", "mountPath": "/data/b", "subPath": "../b"},
                {"name": "v", "mountPath": "/data/c", "subPath": "/data/c"},
            ]}]),
        );
        let got = executor_mounts(&p).expect("an executor pod").mounts;
        assert!(got.iter().all(|m| m.source == MountSource::Other("a volume with an invalid subPath")), "{got:?}");
    }

    #[test]
    fn a_pod_without_app_or_exec_id_gives_no_mounts() {
        assert!(executor_mounts(&pod(Some("Running"), &[(APP_LABEL, "app-1")])).is_none());
        let bare = executor_mounts(&pod(Some("Running"), &[(APP_LABEL, "app-1"), (EXEC_LABEL, "1")]));
        assert_eq!(bare.map(|m| m.mounts), Some(vec![]), "no spec, no mounts");
    }
}
