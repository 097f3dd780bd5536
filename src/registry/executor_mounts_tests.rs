use super::*;

use std::path::Path;

fn same(path: &Path) -> Mount {
    Mount { mount_path: path.into(), source: MountSource::HostPath(path.into()) }
}

fn pod(name: &str, app: &str, exec: &str) -> PodMounts {
    PodMounts {
        pod: format!("jobs/{name}"),
        app_id: app.into(),
        exec_id: exec.into(),
        mounts: vec![same(Path::new("/data"))],
    }
}

#[test]
fn pods_are_found_by_app_and_exec_id_and_go_when_deleted_or_not_relisted() {
    let table = ExecutorMounts::default();
    table.upsert(pod("e1", "app-1", "1"));
    table.upsert(pod("e2", "app-1", "2"));
    table.upsert(pod("f1", "app-2", "1"));
    assert_eq!(table.of("app-1", "1"), [pod("e1", "app-1", "1")]);
    assert!(table.of("app-1", "3").is_empty());
    table.remove("jobs/e1");
    assert!(table.of("app-1", "1").is_empty());
    table.retain(&HashSet::from(["jobs/e2".to_string()]));
    assert_eq!(table.len(), 1);
    assert!(table.of("app-2", "1").is_empty());
}

#[tokio::test]
async fn a_registration_waits_for_its_pod_up_to_the_bound() {
    let table = Arc::new(ExecutorMounts::default());
    assert!(table.wait_for("app-1", "1", Duration::from_millis(30)).await.is_empty());
    let waiter = tokio::spawn({
        let table = Arc::clone(&table);
        async move { table.wait_for("app-1", "1", Duration::from_secs(60)).await }
    });
    // Another executor's pod does not end the wait; its own does.
    table.upsert(pod("e2", "app-1", "2"));
    table.upsert(pod("e1", "app-1", "1"));
    let found = tokio::time::timeout(Duration::from_secs(30), waiter).await.expect("ends").expect("joins");
    assert_eq!(found, [pod("e1", "app-1", "1")]);
}
