//! Deleting what executors and applications leave behind (spec §5.2, §5.3), without ever
//! touching anything outside the agent's roots.
//!
//! Every walk is done on directory descriptors: a directory is opened with O_NOFOLLOW, proven
//! (by where the kernel says the descriptor lives) to be strictly inside a root, and everything
//! below it is reached with `openat`/`unlinkat` relative to it. A symlink is removed as a link
//! and never followed, so a link planted by an executor cannot steer a deletion elsewhere.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};

use super::confine::real_path;
use super::layout::is_within;

/// Deeper nesting than this is not something Spark writes; stop instead of exhausting the stack.
const MAX_DEPTH: usize = 32;

/// What a cleanup did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CleanupStats {
    pub files: u64,
    pub bytes: u64,
    pub dirs: u64,
    /// Entries that could not be removed (logged at debug level).
    pub errors: u64,
}

impl std::ops::AddAssign for CleanupStats {
    fn add_assign(&mut self, o: CleanupStats) {
        self.files += o.files;
        self.bytes += o.bytes;
        self.dirs += o.dirs;
        self.errors += o.errors;
    }
}

/// Which files an executor-removal sweep keeps: those the service still serves (spec §5.3).
/// Unlike Spark's JVM service, checksum files are kept so a later DiagnoseCorruption still works.
#[derive(Debug, Clone, Copy)]
pub struct KeepServed {
    /// `spark.shuffle.service.fetch.rdd.enabled`: keep `rdd_*` block files too.
    pub rdd: bool,
}

impl KeepServed {
    fn keeps(&self, name: &str) -> bool {
        name.ends_with(".data")
            || name.ends_with(".index")
            || (name.starts_with("shuffle_") && name.contains(".checksum."))
            || (self.rdd && name.starts_with("rdd_"))
    }
}

/// Deletes `dir` and everything below it. `dir` must lie strictly inside one of `roots`
/// (canonical paths); a root itself is never deleted. Then removes `dir`'s parent too if it is
/// Spark's own `spark-<uuid>` dir around a `blockmgr-<uuid>`, left empty, and strictly inside a
/// root. A `dir` that no longer exists is not an error.
pub fn remove_tree(dir: &Path, roots: &[PathBuf]) -> io::Result<CleanupStats> {
    let Some((parent, name, fd)) = open_confined_dir(dir, roots)? else {
        return Ok(CleanupStats::default());
    };
    let mut stats = CleanupStats::default();
    walk(&fd, &mut stats, None, 0);
    drop(fd);
    match rustix::fs::unlinkat(&parent, name.as_path(), AtFlags::REMOVEDIR) {
        Ok(()) => stats.dirs += 1,
        Err(e) => {
            stats.errors += 1;
            tracing::debug!(dir = %dir.display(), error = %e, "could not remove directory");
        }
    }
    // The enclosing dir goes too when nothing else is left in it; ENOTEMPTY is the usual answer.
    if let Some(grand) =
        dir.parent().filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("spark-")))
    {
        if let Ok(Some((gp, gname, gfd))) = open_confined_dir(grand, roots) {
            drop(gfd);
            if rustix::fs::unlinkat(&gp, gname.as_path(), AtFlags::REMOVEDIR).is_ok() {
                stats.dirs += 1;
            }
        }
    }
    Ok(stats)
}

/// Deletes the files below `dir` that the service does not serve (spill, broadcast, temp
/// files), keeping those `keep` names, and subdirectories left empty. `dir` itself stays.
pub fn remove_unserved_files(dir: &Path, roots: &[PathBuf], keep: KeepServed) -> io::Result<CleanupStats> {
    let Some((_, _, fd)) = open_confined_dir(dir, roots)? else {
        return Ok(CleanupStats::default());
    };
    let mut stats = CleanupStats::default();
    walk(&fd, &mut stats, Some(keep), 0);
    Ok(stats)
}

/// Opens `dir` (not following a symlink at its last component) and checks where it really is.
/// Returns its parent's descriptor and its name too, for removing it. None if it is gone.
fn open_confined_dir(dir: &Path, roots: &[PathBuf]) -> io::Result<Option<(OwnedFd, PathBuf, OwnedFd)>> {
    let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) else {
        return Err(io::Error::other(format!("{} has no parent", dir.display())));
    };
    let dir_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let parent_fd = match rustix::fs::open(parent, dir_flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let fd = match rustix::fs::openat(&parent_fd, name, dir_flags | OFlags::NOFOLLOW, Mode::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(None),
        Err(e) => return Err(io::Error::new(io::Error::from(e).kind(), format!("{}: {e}", dir.display()))),
    };
    let real = real_path(fd.as_fd(), dir)?;
    let strictly_inside = roots.iter().any(|root| is_within(&real, root) && real != *root);
    if !strictly_inside {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{} resolves to {}, which is not strictly inside a root", dir.display(), real.display()),
        ));
    }
    Ok(Some((parent_fd, PathBuf::from(name), fd)))
}

/// Walks the directory `fd`. With `keep == None` everything is deleted; otherwise files `keep`
/// names stay, and directories are removed only when left empty.
fn walk(fd: &OwnedFd, stats: &mut CleanupStats, keep: Option<KeepServed>, depth: usize) {
    if depth > MAX_DEPTH {
        stats.errors += 1;
        return;
    }
    let entries = match rustix::fs::Dir::read_from(fd) {
        Ok(d) => d,
        Err(_) => {
            stats.errors += 1;
            return;
        }
    };
    for entry in entries {
        let Ok(entry) = entry else {
            stats.errors += 1;
            break;
        };
        let name: &CStr = entry.file_name();
        let bytes = name.to_bytes();
        if bytes == b"." || bytes == b".." {
            continue;
        }
        let is_dir = match entry.file_type() {
            FileType::Unknown => rustix::fs::statat(fd, name, AtFlags::SYMLINK_NOFOLLOW)
                .map(|st| FileType::from_raw_mode(st.st_mode) == FileType::Directory)
                .unwrap_or(false),
            t => t == FileType::Directory,
        };
        if is_dir {
            let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            match rustix::fs::openat(fd, name, flags, Mode::empty()) {
                Ok(child) => walk(&child, stats, keep, depth + 1),
                Err(_) => stats.errors += 1,
            }
            match rustix::fs::unlinkat(fd, name, AtFlags::REMOVEDIR) {
                Ok(()) => stats.dirs += 1,
                // Keeping files is the point of a selective sweep; its dirs stay with them.
                Err(rustix::io::Errno::NOTEMPTY) if keep.is_some() => {}
                Err(_) => stats.errors += 1,
            }
            continue;
        }
        if keep.is_some_and(|k| k.keeps(&String::from_utf8_lossy(bytes))) {
            continue;
        }
        let size = rustix::fs::statat(fd, name, AtFlags::SYMLINK_NOFOLLOW).map(|st| st.st_size as u64).unwrap_or(0);
        match rustix::fs::unlinkat(fd, name, AtFlags::empty()) {
            Ok(()) => {
                stats.files += 1;
                stats.bytes += size;
            }
            Err(_) => stats.errors += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    struct Tree {
        _tmp: tempfile::TempDir,
        root: PathBuf,
        outside: PathBuf,
    }

    fn tree() -> Tree {
        let tmp = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(tmp.path()).unwrap().join("root");
        let outside = root.parent().unwrap().join("outside");
        fs::create_dir_all(&root).unwrap();
        fs::create_dir_all(&outside).unwrap();
        Tree { _tmp: tmp, root, outside }
    }

    fn write(path: &Path, bytes: &[u8]) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, bytes).unwrap();
    }

    #[test]
    fn an_app_dir_is_removed_with_its_empty_parent_but_never_a_root() {
        let t = tree();
        let blockmgr = t.root.join("spark-1/blockmgr-1");
        write(&blockmgr.join("0c/shuffle_0_0_0.data"), b"12345");
        write(&blockmgr.join("11/temp_shuffle_x"), b"1");
        let stats = remove_tree(&blockmgr, std::slice::from_ref(&t.root)).unwrap();
        assert_eq!((stats.files, stats.bytes, stats.errors), (2, 6, 0));
        assert!(!t.root.join("spark-1").exists(), "the emptied spark-<uuid> dir goes too");
        assert!(t.root.is_dir(), "the root stays");
        assert!(remove_tree(&t.root, std::slice::from_ref(&t.root)).is_err(), "a root is never removed");
    }

    #[test]
    fn symlinks_inside_are_removed_and_their_targets_kept() {
        let t = tree();
        let victim = t.outside.join("precious");
        write(&victim, b"keep");
        let dir = t.root.join("blockmgr-2");
        write(&dir.join("00/f"), b"x");
        symlink(&victim, dir.join("00/link-to-file")).unwrap();
        symlink(&t.outside, dir.join("link-to-dir")).unwrap();
        remove_tree(&dir, std::slice::from_ref(&t.root)).unwrap();
        assert!(!dir.exists());
        assert_eq!(fs::read(&victim).unwrap(), b"keep");
    }

    #[test]
    fn a_dir_that_is_a_symlink_out_of_the_roots_is_refused() {
        let t = tree();
        write(&t.outside.join("precious"), b"keep");
        let link = t.root.join("blockmgr-3");
        symlink(&t.outside, &link).unwrap();
        assert!(remove_tree(&link, std::slice::from_ref(&t.root)).is_err());
        assert!(remove_unserved_files(&link, std::slice::from_ref(&t.root), KeepServed { rdd: false }).is_err());
        assert!(t.outside.join("precious").exists());
    }

    #[test]
    fn executor_removal_keeps_served_files_and_deletes_the_rest() {
        let t = tree();
        let dir = t.root.join("blockmgr-4");
        for keep in ["0c/shuffle_0_0_0.data", "30/shuffle_0_0_0.index", "34/shuffle_0_0_0.checksum.ADLER32"] {
            write(&dir.join(keep), b"k");
        }
        for gone in ["11/temp_shuffle_1", "12/broadcast_0", "13/temp_local_2", "14/rdd_1_0"] {
            write(&dir.join(gone), b"gone");
        }
        let stats = remove_unserved_files(&dir, std::slice::from_ref(&t.root), KeepServed { rdd: false }).unwrap();
        assert_eq!(stats.files, 4);
        assert!(dir.join("0c/shuffle_0_0_0.data").exists());
        assert!(dir.join("34/shuffle_0_0_0.checksum.ADLER32").exists());
        assert!(!dir.join("11").exists(), "emptied subdirs go");
        assert!(dir.is_dir(), "the registered dir stays");
    }

    #[test]
    fn rdd_blocks_are_kept_when_rdd_fetch_is_enabled() {
        let t = tree();
        let dir = t.root.join("blockmgr-5");
        write(&dir.join("14/rdd_1_0"), b"r");
        remove_unserved_files(&dir, std::slice::from_ref(&t.root), KeepServed { rdd: true }).unwrap();
        assert!(dir.join("14/rdd_1_0").exists());
    }

    #[test]
    fn a_missing_dir_is_nothing_to_do() {
        let t = tree();
        assert_eq!(
            remove_tree(&t.root.join("gone/blockmgr"), std::slice::from_ref(&t.root)).unwrap(),
            CleanupStats::default()
        );
    }
}
