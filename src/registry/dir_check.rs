//! Where a registered local dir is on this node, judged from its executor pod's volumes: the
//! pure half of binding registrations to pods ([`super::pod_binding`] does the waiting and the
//! PersistentVolume lookups).
//!
//! An executor registers the paths it sees in its own container. Two layouts are served:
//! * [`PathMode::Identical`] (the default): a local dir must lie in a hostPath volume mounted at
//!   the hostPath's own node path, so container, node and agent see it at one path (spec
//!   kubernetes.md §1, §2), and the agent serves the path as registered;
//! * [`PathMode::Translated`] (`agent.localDirs.translate`, issue 12): a local dir may lie in a
//!   hostPath mounted at any path, or in a PersistentVolumeClaim whose PersistentVolume is a
//!   directory on the node (`spec.hostPath` or `spec.local`, what node-local provisioners make).
//!   The agent serves the node path that holds it: the volume's node dir, joined with the mount's
//!   subPath and with the rest of the registered path below the mount path.
//!
//! Either way the agent then resolves the dir on its own filesystem (symlinks included) and
//! serves it only if the pod can see what the agent would read: the resolved path must lie in
//! one of the pod's served volumes and, mapped back into the container, not be hidden there by a
//! nested mount (an emptyDir over part of a hostPath, say). A symlink an executor made in its
//! volume therefore cannot point the agent at node dirs its pod does not mount.

use std::path::{Component, Path, PathBuf};

use super::executor_mounts::{Mount, MountSource};
use super::roots::canonicalize_lenient;

/// How registered local dirs are matched to their pod's mounts (module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathMode {
    /// hostPaths mounted at their own node path, served at the path registered.
    Identical,
    /// hostPaths at any mount path and node-local PersistentVolumes, served at their node path.
    Translated,
}

/// Where one registered dir is on the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    /// The node path that holds the dir (lexical: not resolved yet).
    pub node_dir: PathBuf,
    /// It lies on a PersistentVolume: Kubernetes deletes those files with the claim, the
    /// agent never does.
    pub on_volume: bool,
}

/// Why a local dir is not one the executor's pod gives it (the end of the client's text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unmounted {
    /// No mount of the pod holds it.
    NoMount,
    /// The mount that holds it is not a hostPath (identical mode).
    NotHostPath { mount_path: PathBuf, what: &'static str },
    /// It is a hostPath, shown at another path than its node path (identical mode).
    OtherPath { mount_path: PathBuf, node_path: PathBuf },
    /// The mount that holds it is a volume the agent cannot reach on the node (translated mode).
    NotOnNode { mount_path: PathBuf, what: String },
    /// Symlinks (or `..`) make it resolve outside every volume the pod shows there.
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
                "the pod mounts hostPath {} at {}; only a hostPath mounted at its own node path is served \
                 (agent.localDirs.translate serves it at its node path)",
                node_path.display(),
                mount_path.display()
            ),
            Unmounted::NotOnNode { mount_path, what } => write!(
                f,
                "the pod mounts {what} at {}, not a hostPath or a PersistentVolumeClaim bound to a hostPath or local \
                 PersistentVolume",
                mount_path.display()
            ),
            Unmounted::Escapes { canonical } => {
                write!(f, "it resolves to {}, outside the pod's volumes", canonical.display())
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

/// A relative subPath the API server would accept: no absolute path, no `..`. One that got
/// here anyway is not followed.
pub fn valid_sub_path(sub: &Path) -> bool {
    !sub.is_absolute() && !sub.components().any(|c| matches!(c, Component::ParentDir))
}

/// The mount a container path falls in: the one with the longest mount path above it (a mount
/// nested in another hides what is below it in the outer one).
fn holding<'a>(mounts: &'a [Mount], path: &Path) -> Option<&'a Mount> {
    mounts.iter().filter(|m| path.starts_with(&m.mount_path)).max_by_key(|m| m.mount_path.components().count())
}

/// The node dir a mount shows at its mount path, and whether it is a PersistentVolume; or why
/// this mode does not serve it.
fn node_source(mount: &Mount, mode: PathMode) -> Result<(&Path, bool), Unmounted> {
    let mount_path = || mount.mount_path.clone();
    match (&mount.source, mode) {
        (MountSource::HostPath(node), PathMode::Identical) if *node == mount.mount_path => Ok((node, false)),
        (MountSource::HostPath(node), PathMode::Identical) => {
            Err(Unmounted::OtherPath { mount_path: mount_path(), node_path: node.clone() })
        }
        (MountSource::HostPath(node), PathMode::Translated) => Ok((node, false)),
        (MountSource::Volume(node), PathMode::Translated) => Ok((node, true)),
        (MountSource::Unresolved(why), PathMode::Translated) => {
            Err(Unmounted::NotOnNode { mount_path: mount_path(), what: why.clone() })
        }
        (MountSource::Other(what), PathMode::Translated) => {
            Err(Unmounted::NotOnNode { mount_path: mount_path(), what: (*what).to_string() })
        }
        (MountSource::Claim { .. }, PathMode::Translated) => Err(Unmounted::NotOnNode {
            mount_path: mount_path(),
            what: "a persistentVolumeClaim volume not looked up yet".to_string(),
        }),
        (MountSource::Claim { .. } | MountSource::Volume(_) | MountSource::Unresolved(_), PathMode::Identical) => {
            Err(Unmounted::NotHostPath { mount_path: mount_path(), what: "a persistentVolumeClaim volume" })
        }
        (MountSource::Other(what), PathMode::Identical) => {
            Err(Unmounted::NotHostPath { mount_path: mount_path(), what })
        }
    }
}

/// Where a registered dir (`entry`, a path in the executor's container) is on the node.
pub fn place(mounts: &[Mount], entry: &str, mode: PathMode) -> Result<Placed, Unmounted> {
    let lexical = normalize(Path::new(entry));
    let mount = holding(mounts, &lexical).ok_or(Unmounted::NoMount)?;
    let (node, on_volume) = node_source(mount, mode)?;
    let below = lexical.strip_prefix(&mount.mount_path).unwrap_or(Path::new(""));
    Ok(Placed { node_dir: node.join(below), on_volume })
}

/// Whether the pod can see `canonical`, the path the agent resolved a placed dir to: it lies in
/// a volume this mode serves, and at the matching path in the container no nested mount hides
/// it. Volumes' node dirs are resolved the same way, so one reached through a symlinked node
/// path still matches itself.
pub fn check_visible(mounts: &[Mount], canonical: &Path, mode: PathMode) -> Result<(), Unmounted> {
    let visible = mounts.iter().any(|mount| {
        let Ok((node, _)) = node_source(mount, mode) else { return false };
        let Ok(below) = canonical.strip_prefix(canonicalize_lenient(node)) else { return false };
        let in_container = mount.mount_path.join(below);
        holding(mounts, &in_container).is_some_and(|m| std::ptr::eq(m, mount))
    });
    if visible {
        Ok(())
    } else {
        Err(Unmounted::Escapes { canonical: canonical.to_path_buf() })
    }
}

#[cfg(test)]
#[path = "dir_check_tests.rs"]
mod tests;
