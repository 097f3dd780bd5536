use super::*;

fn host(mount: &Path, node: &Path) -> Mount {
    Mount { mount_path: normalize(mount), source: MountSource::HostPath(normalize(node)) }
}

fn same(path: &Path) -> Mount {
    host(path, path)
}

fn other(mount: &Path, what: &'static str) -> Mount {
    Mount { mount_path: normalize(mount), source: MountSource::Other(what) }
}

/// Checks `entry` the way a registration does in `mode`: placed on the node, then what the agent
/// resolves that to on this filesystem. Returns the node dir served.
fn check_in(mounts: &[Mount], entry: &Path, mode: PathMode) -> Result<PathBuf, Unmounted> {
    let placed = place(mounts, entry.to_str().expect("utf-8 path"), mode)?;
    check_visible(mounts, &canonicalize_lenient(&placed.node_dir), mode)?;
    Ok(placed.node_dir)
}

fn check(mounts: &[Mount], entry: &Path) -> Result<(), Unmounted> {
    check_in(mounts, entry, PathMode::Identical).map(drop)
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

fn volume(mount: &Path, node: &Path) -> Mount {
    Mount { mount_path: normalize(mount), source: MountSource::Volume(normalize(node)) }
}

fn translated(mounts: &[Mount], entry: &Path) -> Result<PathBuf, Unmounted> {
    check_in(mounts, entry, PathMode::Translated)
}

#[test]
fn translated_a_hostpath_at_another_path_is_served_at_its_node_path() {
    let (_t, node) = node_dir();
    let mounts = [host(Path::new("/var/data/spark-1"), &node.join("ld"))];
    assert_eq!(translated(&mounts, Path::new("/var/data/spark-1/blockmgr-1")), Ok(node.join("ld/blockmgr-1")));
    assert_eq!(translated(&mounts, Path::new("/var/data/spark-1/./a/../b")), Ok(node.join("ld/b")));
    assert_eq!(translated(&mounts, Path::new("/var/data/spark-10/x")), Err(Unmounted::NoMount));
    // Identical paths are the special case of it, served as before.
    assert_eq!(translated(&[same(&node.join("ld"))], &node.join("ld/x")), Ok(node.join("ld/x")));
}

#[test]
fn translated_a_claims_volume_is_served_and_marked_as_on_a_volume() {
    let (_t, node) = node_dir();
    let mounts = [volume(Path::new("/data/spark-local-dir-1"), &node.join("ld"))];
    let placed = place(&mounts, "/data/spark-local-dir-1/blockmgr-9", PathMode::Translated).expect("placed");
    assert_eq!(placed, Placed { node_dir: node.join("ld/blockmgr-9"), on_volume: true });
    let host = place(&[host(Path::new("/d"), &node)], "/d/x", PathMode::Translated).expect("placed");
    assert!(!host.on_volume, "a hostPath is the node's, not Kubernetes', to delete");
    // Identical mode does not serve claims at all, resolved or not.
    assert_eq!(
        place(&mounts, "/data/spark-local-dir-1/x", PathMode::Identical),
        Err(Unmounted::NotHostPath {
            mount_path: "/data/spark-local-dir-1".into(),
            what: "a persistentVolumeClaim volume"
        })
    );
}

#[test]
fn translated_volumes_the_agent_cannot_reach_are_refused_with_what_they_are() {
    let mounts = [
        Mount { mount_path: "/a".into(), source: MountSource::Other("an emptyDir volume") },
        Mount {
            mount_path: "/b".into(),
            source: MountSource::Unresolved("PersistentVolume pv-1 is a csi volume".into()),
        },
    ];
    let text = |entry| place(&mounts, entry, PathMode::Translated).expect_err("refused").to_string();
    assert_eq!(
        text("/a/x"),
        "the pod mounts an emptyDir volume at /a, not a hostPath or a PersistentVolumeClaim bound to a hostPath or \
         local PersistentVolume"
    );
    assert!(text("/b/x").starts_with("the pod mounts PersistentVolume pv-1 is a csi volume at /b"), "{}", text("/b/x"));
}

#[test]
fn translated_a_symlink_out_of_the_volume_is_refused_and_one_into_another_of_its_volumes_is_not() {
    let (_t, node) = node_dir();
    for sub in ["pv-a", "pv-b", "victim"] {
        std::fs::create_dir(node.join(sub)).expect("mkdir");
    }
    // As a container would make it: an absolute target that means something else to the agent.
    std::os::unix::fs::symlink(node.join("victim"), node.join("pv-a/out")).expect("symlink");
    std::os::unix::fs::symlink(node.join("pv-b"), node.join("pv-a/to-b")).expect("symlink");
    let one = [volume(Path::new("/data/1"), &node.join("pv-a"))];
    assert_eq!(
        translated(&one, Path::new("/data/1/out/x")),
        Err(Unmounted::Escapes { canonical: node.join("victim/x") })
    );
    assert!(matches!(translated(&one, Path::new("/data/1/to-b")), Err(Unmounted::Escapes { .. })));
    let both = [one[0].clone(), volume(Path::new("/data/2"), &node.join("pv-b"))];
    assert_eq!(translated(&both, Path::new("/data/1/to-b")), Ok(node.join("pv-a/to-b")), "the pod mounts pv-b too");
}

#[test]
fn translated_a_nested_emptydir_still_hides_the_volume_below_it() {
    let (_t, node) = node_dir();
    std::fs::create_dir_all(node.join("ld/tmp/x")).expect("mkdir");
    std::os::unix::fs::symlink(node.join("ld/tmp/x"), node.join("ld/link")).expect("symlink");
    let mounts = [
        host(Path::new("/data"), &node.join("ld")),
        Mount { mount_path: "/data/tmp".into(), source: MountSource::Other("an emptyDir volume") },
    ];
    assert!(matches!(translated(&mounts, Path::new("/data/tmp/blockmgr-1")), Err(Unmounted::NotOnNode { .. })));
    assert!(matches!(translated(&mounts, Path::new("/data/link")), Err(Unmounted::Escapes { .. })));
    assert_eq!(translated(&mounts, Path::new("/data/blockmgr-1")), Ok(node.join("ld/blockmgr-1")));
}
