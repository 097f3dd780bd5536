use super::*;

use std::sync::Arc;

fn host(mount: &Path, node: &Path) -> Mount {
    Mount { mount_path: normalize(mount), source: MountSource::HostPath(normalize(node)) }
}

fn same(path: &Path) -> Mount {
    host(path, path)
}

fn other(mount: &Path, what: &'static str) -> Mount {
    Mount { mount_path: normalize(mount), source: MountSource::Other(what) }
}

/// Checks `entry` the way a registration does: against its canonical form on this filesystem.
fn check(mounts: &[Mount], entry: &Path) -> Result<(), Unmounted> {
    check_dir(mounts, entry.to_str().expect("utf-8 path"), &canonicalize_lenient(entry))
}

/// A node dir (a temp dir, canonical so symlinked /tmp does not blur the tests) with `ld` in it.
fn node_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let real = std::fs::canonicalize(dir.path()).expect("canonical");
    std::fs::create_dir(real.join("ld")).expect("mkdir");
    (dir, real)
}

#[test]
fn a_dir_at_or_below_a_hostpath_mounted_at_its_own_path_is_accepted() {
    let (_t, node) = node_dir();
    let mounts = [same(&node.join("ld"))];
    assert_eq!(check(&mounts, &node.join("ld")), Ok(()), "the mount itself");
    assert_eq!(check(&mounts, &node.join("ld/blockmgr-1")), Ok(()), "below it, not created yet");
    assert_eq!(check(&mounts, &node.join("ld/./x/../blockmgr-2")), Ok(()), "spelled with . and ..");
}

#[test]
fn a_dir_outside_every_mount_or_beside_one_is_refused() {
    let (_t, node) = node_dir();
    let mounts = [same(&node.join("ld"))];
    assert_eq!(check(&mounts, &node.join("other/blockmgr-1")), Err(Unmounted::NoMount));
    assert_eq!(check(&mounts, &node.join("ld0/blockmgr-1")), Err(Unmounted::NoMount), "a name prefix is no parent");
    assert_eq!(check(&mounts, &node), Err(Unmounted::NoMount), "the dir above the mount");
    assert_eq!(check(&[], &node.join("ld")), Err(Unmounted::NoMount), "a pod without volumes");
}

#[test]
fn dot_dot_out_of_the_hostpath_is_refused() {
    let (_t, node) = node_dir();
    std::fs::create_dir(node.join("victim")).expect("mkdir");
    let mounts = [same(&node.join("ld"))];
    let entry = node.join("ld/../victim/blockmgr-1");
    assert_eq!(check(&mounts, &entry), Err(Unmounted::NoMount));
}

#[test]
fn a_symlink_in_the_hostpath_to_a_node_dir_the_pod_does_not_mount_is_refused() {
    let (_t, node) = node_dir();
    let victim = node.join("victim");
    std::fs::create_dir(&victim).expect("mkdir");
    std::os::unix::fs::symlink(&victim, node.join("ld/link")).expect("symlink");
    let mounts = [same(&node.join("ld"))];
    assert_eq!(check(&mounts, &node.join("ld/link")), Err(Unmounted::Escapes { canonical: victim.clone() }));
    assert_eq!(
        check(&mounts, &node.join("ld/link/blockmgr-1")),
        Err(Unmounted::Escapes { canonical: victim.join("blockmgr-1") })
    );
    // A symlink that stays inside the hostPath is only another name for a dir in it.
    std::fs::create_dir(node.join("ld/real")).expect("mkdir");
    std::os::unix::fs::symlink(node.join("ld/real"), node.join("ld/inner")).expect("symlink");
    assert_eq!(check(&mounts, &node.join("ld/inner/blockmgr-1")), Ok(()));
}

#[test]
fn a_hostpath_reached_through_a_symlinked_node_path_still_matches_itself() {
    let (_t, node) = node_dir();
    let alias = node.join("alias");
    std::os::unix::fs::symlink(node.join("ld"), &alias).expect("symlink");
    // The pod mounts the hostPath at its path as written; the agent resolves both sides.
    assert_eq!(check(&[same(&alias)], &alias.join("blockmgr-1")), Ok(()));
}

#[test]
fn a_hostpath_mounted_at_another_path_is_refused() {
    let (_t, node) = node_dir();
    let mounts = [host(Path::new("/var/data/spark-1"), &node.join("ld"))];
    assert_eq!(
        check(&mounts, Path::new("/var/data/spark-1/blockmgr-1")),
        Err(Unmounted::OtherPath { mount_path: "/var/data/spark-1".into(), node_path: node.join("ld") })
    );
    // Nor is the node path itself, which this pod does not show at that path.
    assert_eq!(check(&mounts, &node.join("ld/blockmgr-1")), Err(Unmounted::NoMount));
}

#[test]
fn a_subpath_is_served_when_the_mount_path_is_the_hostpath_joined_with_it() {
    let (_t, node) = node_dir();
    // hostPath <node>, subPath ld, mountPath <node>/ld: the container's <node>/ld is the node's.
    let served = [host(&node.join("ld"), &node.join("ld"))];
    assert_eq!(check(&served, &node.join("ld/blockmgr-1")), Ok(()));
    // hostPath <node>, subPath ld, mountPath <node>: the container's <node> is the node's <node>/ld.
    let shifted = [host(&node, &node.join("ld"))];
    assert!(matches!(check(&shifted, &node.join("ld/blockmgr-1")), Err(Unmounted::OtherPath { .. })));
}

#[test]
fn an_emptydir_is_refused_even_nested_inside_a_hostpath() {
    let (_t, node) = node_dir();
    let empty = [other(&node.join("ld"), "an emptyDir volume")];
    assert_eq!(
        check(&empty, &node.join("ld/blockmgr-1")),
        Err(Unmounted::NotHostPath { mount_path: node.join("ld"), what: "an emptyDir volume" })
    );
    // In the container, <node>/ld/tmp is the emptyDir, whatever the node holds at that path.
    let nested = [same(&node), other(&node.join("ld/tmp"), "an emptyDir volume")];
    assert!(matches!(check(&nested, &node.join("ld/tmp/blockmgr-1")), Err(Unmounted::NotHostPath { .. })));
    assert_eq!(check(&nested, &node.join("ld/blockmgr-1")), Ok(()));
    // Nor can a symlink in the hostPath lead the agent into the node dir the emptyDir hides.
    std::fs::create_dir_all(node.join("ld/tmp/x")).expect("mkdir");
    std::os::unix::fs::symlink(node.join("ld/tmp/x"), node.join("ld/link")).expect("symlink");
    assert!(matches!(check(&nested, &node.join("ld/link")), Err(Unmounted::Escapes { .. })));
}

#[test]
fn every_dir_of_a_registration_must_pass_and_the_first_failure_is_named() {
    let (_t, node) = node_dir();
    let mounts = [same(&node.join("ld"))];
    let (good, bad) = (node.join("ld/blockmgr-1"), node.join("elsewhere/blockmgr-2"));
    let (good_s, bad_s) = (good.to_str().expect("utf-8"), bad.to_str().expect("utf-8"));
    let dirs = [(good_s, good.as_path()), (bad_s, bad.as_path())];
    assert_eq!(check_dirs(&mounts, dirs), Err((bad_s, Unmounted::NoMount)));
    assert_eq!(check_dirs(&mounts, [(good_s, good.as_path())]), Ok(()));
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
