//! What the agent reads off a pod: the Spark labels, whether the pod has finished, whether it
//! is Ready. Pure functions over k8s-openapi's `Pod`; no API calls.
//!
//! Label names are Spark's (`org.apache.spark.deploy.k8s.Constants`, spec/kubernetes.md §2);
//! the 2.2 fork uses the same three.

use k8s_openapi::api::core::v1::Pod;

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
}
