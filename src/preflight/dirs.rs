//! The directory checks of the preflight: roots (executors' access, free space) and the state dir.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::Finding;

/// A root must exist, be a directory, let the executors' uid/gid create directories in it
/// (write and search), and have at least `min_free` bytes free for unprivileged users.
pub fn check_root(root: &Path, (uid, gid): (u32, u32), min_free: u64) -> Vec<Finding> {
    let subject = format!("root {}", root.display());
    let meta = match fs::metadata(root) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return vec![Finding::fail(
            subject,
            "does not exist; executors cannot create their block-manager dirs (run `spark-shuffle-agent prepare-dirs`)",
        )]
        }
        Err(e) => return vec![Finding::fail(subject, format!("cannot be read: {e}"))],
    };
    if !meta.is_dir() {
        return vec![Finding::fail(subject, "is not a directory")];
    }
    let seen = format!("{}:{} {:04o}", meta.uid(), meta.gid(), meta.mode() & 0o7777);
    let access = if may_create_in(&meta, uid, gid) {
        Finding::ok(subject.clone(), format!("{seen}, executors ({uid}:{gid}) can create their dirs"))
    } else {
        Finding::fail(
            subject.clone(),
            format!("{seen}: executors ({uid}:{gid}) cannot create dirs here (prepare-dirs --owner {uid}:{gid})"),
        )
    };
    vec![access, free_space(root, &subject, min_free)]
}

/// Whether uid/gid may create entries in a directory with this owner and mode, by the permission
/// bits as the kernel applies them (owner class, else group class, else others). ACLs and
/// supplementary groups are not seen; root may always.
fn may_create_in(meta: &fs::Metadata, uid: u32, gid: u32) -> bool {
    let mode = meta.mode();
    let bits = if uid == 0 {
        return true;
    } else if meta.uid() == uid {
        mode >> 6
    } else if meta.gid() == gid {
        mode >> 3
    } else {
        mode
    };
    bits & 0o3 == 0o3
}

fn free_space(root: &Path, subject: &str, min_free: u64) -> Finding {
    match rustix::fs::statvfs(root) {
        Ok(st) => {
            let free = st.f_bavail.saturating_mul(st.f_frsize);
            let total = st.f_blocks.saturating_mul(st.f_frsize);
            let text = format!("{} free of {}", gib(free), gib(total));
            if free >= min_free {
                Finding::ok(format!("{subject} space"), text)
            } else {
                Finding::fail(
                    format!("{subject} space"),
                    format!("{text}, below the {} asked for (--min-free)", gib(min_free)),
                )
            }
        }
        Err(e) => Finding::fail(format!("{subject} space"), format!("statvfs failed: {e}")),
    }
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// The state dir must be writable by this process (the agent's uid, when run in the pod): a probe
/// file is created and removed. A missing state dir is fine if the agent could create it.
pub fn check_state_dir(dir: &Path) -> Finding {
    let subject = format!("state dir {}", dir.display());
    match fs::metadata(dir) {
        Ok(m) if !m.is_dir() => Finding::fail(subject, "is not a directory"),
        Ok(_) => {
            let probe = dir.join(format!(".preflight-{}", std::process::id()));
            match fs::OpenOptions::new().write(true).create_new(true).open(&probe) {
                Ok(_) => {
                    let _ = fs::remove_file(&probe);
                    Finding::ok(subject, "writable (registrations can be journaled)")
                }
                Err(e) => Finding::fail(subject, format!("not writable: {e}; registrations could not be journaled")),
            }
        }
        // ENOTDIR: some ancestor is a file; creatable() says which.
        Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory) => {
            creatable(dir, subject)
        }
        Err(e) => Finding::fail(subject, format!("cannot be read: {e}")),
    }
}

fn creatable(dir: &Path, subject: String) -> Finding {
    let Some(parent) = dir.ancestors().skip(1).find(|p| p.exists()) else {
        return Finding::fail(subject, "does not exist and has no existing parent");
    };
    if !parent.is_dir() {
        return Finding::fail(subject, format!("cannot be created: {} is not a directory", parent.display()));
    }
    match rustix::fs::access(parent, rustix::fs::Access::WRITE_OK | rustix::fs::Access::EXEC_OK) {
        Ok(()) => Finding::ok(subject, format!("missing; the agent will create it in {}", parent.display())),
        Err(e) => Finding::fail(subject, format!("missing, and {} is not writable: {e}", parent.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn dir_with_mode(mode: u32) -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(mode)).unwrap();
        tmp
    }

    #[test]
    fn group_members_may_create_in_2770_and_others_may_not() {
        let tmp = dir_with_mode(0o2770);
        let m = fs::metadata(tmp.path()).unwrap();
        assert!(may_create_in(&m, 4242, m.gid()));
        assert!(!may_create_in(&m, 4242, 4243));
    }

    #[test]
    fn a_root_executors_cannot_write_fails_and_says_who() {
        let tmp = dir_with_mode(0o755);
        let f = check_root(tmp.path(), (4242, 4243), 0);
        assert!(!f[0].ok, "{}", f[0]);
        assert!(f[0].detail.contains("cannot create dirs") && f[0].detail.contains("4242:4243"), "{}", f[0]);
        assert!(f[1].ok, "space: {}", f[1]);
    }

    #[test]
    fn a_missing_root_is_one_failure() {
        let tmp = tempfile::tempdir().unwrap();
        let f = check_root(&tmp.path().join("nope"), (185, 185), 0);
        assert_eq!(f.len(), 1);
        assert!(!f[0].ok && f[0].detail.contains("does not exist"), "{}", f[0]);
    }

    #[test]
    fn less_free_space_than_asked_fails() {
        let tmp = dir_with_mode(0o777);
        let f = check_root(tmp.path(), (185, 185), u64::MAX);
        assert!(f[0].ok, "{}", f[0]);
        assert!(!f[1].ok && f[1].detail.contains("below"), "{}", f[1]);
    }

    #[test]
    fn a_state_dir_under_a_file_cannot_be_created() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("file"), b"").unwrap();
        let f = check_state_dir(&tmp.path().join("file/state"));
        assert!(!f.ok && f.detail.contains("is not a directory"), "{f}");
    }

    #[test]
    fn a_writable_state_dir_passes_and_keeps_no_probe_file() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(check_state_dir(tmp.path()).ok);
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 0);
    }
}
