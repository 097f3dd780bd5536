//! Opening files that must stay inside an executor's canonical dirs (spec §13 "Every file read
//! is re-checked", NOTES D6).
//!
//! The check runs on the *opened* descriptor, not on the name: we open first, then ask the
//! kernel where that descriptor really lives (`/proc/self/fd/N`). Checking a name and opening
//! it afterwards would let an executor swap in a symlink between the two steps.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};

use super::layout::is_within;
use super::{ExecutorDirs, StoreError};

/// Why a confined open did not give a usable file. Callers map these differently (a missing
/// rdd file is `Ok(None)`, a missing index is "Failed to open file", ...).
#[derive(Debug)]
pub(crate) enum OpenFailure {
    /// open(2) or fstat(2) failed.
    Io(io::Error),
    /// The file is a directory, FIFO, socket or device.
    NotRegular,
    /// The file resolves outside the dirs, or its real path could not be determined.
    Refused(StoreError),
}

/// A regular file known to lie inside the executor's dirs, with its length at open time.
#[derive(Debug)]
pub(crate) struct ConfinedFile {
    pub file: File,
    pub len: u64,
    /// Where the kernel says the file is: inside the dirs it was checked against.
    pub real: PathBuf,
    /// Device and inode, to notice later that the path names another file.
    pub dev: u64,
    pub ino: u64,
}

/// Opens `path` read-only and verifies where it really is.
///
/// O_NONBLOCK makes opening a FIFO planted under a block name return at once instead of
/// hanging the caller; it has no effect on regular files, the only kind we go on to use.
pub(crate) fn open_confined(path: &Path, dirs: &ExecutorDirs) -> Result<ConfinedFile, OpenFailure> {
    let flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOCTTY;
    let fd = rustix::fs::open(path, flags, Mode::empty()).map_err(|e| OpenFailure::Io(e.into()))?;
    let real = check_inside(fd.as_fd(), path, dirs).map_err(OpenFailure::Refused)?;
    let meta = rustix::fs::fstat(&fd).map_err(|e| OpenFailure::Io(e.into()))?;
    if rustix::fs::FileType::from_raw_mode(meta.st_mode) != rustix::fs::FileType::RegularFile {
        return Err(OpenFailure::NotRegular);
    }
    Ok(ConfinedFile { file: File::from(fd), len: meta.st_size as u64, real, dev: meta.st_dev, ino: meta.st_ino })
}

/// Opens the directory `path` and verifies it lies inside the dirs, so that an `*at` call on
/// the returned descriptor cannot touch anything outside, whatever happens to the names later.
pub(crate) fn open_dir_confined(path: &Path, dirs: &ExecutorDirs) -> Result<OwnedFd, OpenFailure> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let fd = rustix::fs::open(path, flags, Mode::empty()).map_err(|e| OpenFailure::Io(e.into()))?;
    check_inside(fd.as_fd(), path, dirs).map_err(OpenFailure::Refused)?;
    Ok(fd)
}

/// Ok when the opened `fd` lies under one of the canonical dirs. `shown` is the hashed path,
/// the one error texts name (the real service names it too, not the symlink target).
fn check_inside(fd: BorrowedFd<'_>, shown: &Path, dirs: &ExecutorDirs) -> Result<PathBuf, StoreError> {
    let real =
        real_path(fd, shown).map_err(|source| StoreError::ResolveFailed { path: shown.to_path_buf(), source })?;
    if dirs.canonical_dirs().iter().any(|dir| is_within(&real, dir)) {
        Ok(real)
    } else {
        Err(StoreError::OutsideDirs { path: shown.to_path_buf() })
    }
}

/// Where the kernel says `fd` lives. A file unlinked after the open reads back with a
/// " (deleted)" suffix on its last component, which does not change which dir it is under.
pub(crate) fn real_path(fd: BorrowedFd<'_>, shown: &Path) -> io::Result<PathBuf> {
    match std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())) {
        Ok(real) => Ok(real),
        // Without /proc (unusual, but possible in a locked-down container) fall back to
        // canonicalising the name and proving it still names the inode we hold open.
        Err(_) => canonical_if_same_inode(fd, shown),
    }
}

/// The canonical form of `shown`, provided it still names the inode `fd` holds: then the
/// opened file was, at the time of the check, reachable at that canonical path.
fn canonical_if_same_inode(fd: BorrowedFd<'_>, shown: &Path) -> io::Result<PathBuf> {
    let canonical = std::fs::canonicalize(shown)?;
    let held = rustix::fs::fstat(fd)?;
    let named = rustix::fs::stat(&canonical)?;
    if (held.st_dev, held.st_ino) == (named.st_dev, named.st_ino) {
        Ok(canonical)
    } else {
        Err(io::Error::other("file was replaced while its path was being resolved"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn dirs_for(root: &Path) -> ExecutorDirs {
        let local = vec![root.to_string_lossy().into_owned()];
        let canonical = vec![std::fs::canonicalize(root).expect("canonical root")];
        ExecutorDirs::new(local, 64, canonical).expect("dirs")
    }

    #[test]
    fn a_sibling_dir_sharing_a_name_prefix_is_outside() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let ld1 = tmp.path().join("ld1");
        let ld10 = tmp.path().join("ld10");
        std::fs::create_dir_all(&ld1).expect("mkdir");
        std::fs::create_dir_all(&ld10).expect("mkdir");
        std::fs::write(ld10.join("f"), b"x").expect("write");
        symlink(ld10.join("f"), ld1.join("link")).expect("symlink");
        let refused = open_confined(&ld1.join("link"), &dirs_for(&ld1));
        assert!(matches!(refused, Err(OpenFailure::Refused(StoreError::OutsideDirs { .. }))));
        assert!(open_confined(&ld10.join("f"), &dirs_for(&ld10)).is_ok());
    }

    #[test]
    fn a_fifo_under_a_block_name_is_refused_without_blocking() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let fifo = tmp.path().join("shuffle_0_0_0.index");
        rustix::fs::mknodat(rustix::fs::CWD, &fifo, rustix::fs::FileType::Fifo, Mode::from_raw_mode(0o600), 0)
            .expect("mkfifo");
        assert!(matches!(open_confined(&fifo, &dirs_for(tmp.path())), Err(OpenFailure::NotRegular)));
    }

    #[test]
    fn without_proc_the_fallback_resolves_symlinks_and_notices_replaced_files() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = std::fs::canonicalize(tmp.path()).expect("canonical");
        std::fs::write(root.join("real"), b"a").expect("write");
        symlink(root.join("real"), root.join("link")).expect("symlink");
        let file = File::open(root.join("link")).expect("open");
        let resolved = canonical_if_same_inode(file.as_fd(), &root.join("link")).expect("same inode");
        assert_eq!(resolved, root.join("real"));
        // Replace the name with another file: the held descriptor no longer matches it.
        std::fs::write(root.join("other"), b"b").expect("write");
        std::fs::rename(root.join("other"), root.join("real")).expect("rename");
        assert!(canonical_if_same_inode(file.as_fd(), &root.join("link")).is_err());
    }

    #[test]
    fn a_directory_opened_for_removal_must_be_inside() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let inside = tmp.path().join("ld0");
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(&inside).expect("mkdir");
        std::fs::create_dir_all(&outside).expect("mkdir");
        symlink(&outside, inside.join("0c")).expect("symlink");
        std::fs::create_dir_all(inside.join("0d")).expect("mkdir");
        let dirs = dirs_for(&inside);
        assert!(matches!(
            open_dir_confined(&inside.join("0c"), &dirs),
            Err(OpenFailure::Refused(StoreError::OutsideDirs { .. }))
        ));
        assert!(open_dir_confined(&inside.join("0d"), &dirs).is_ok());
    }
}
