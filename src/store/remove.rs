//! RemoveBlocks (spec §5.4, NOTES D7): block ids are file names, hashed into the executor's
//! dirs and deleted, without ever deleting anything outside those dirs.

use std::path::Path;

use rustix::fs::AtFlags;

use super::confine::{open_dir_confined, OpenFailure};
use super::{ExecutorDirs, Store};

impl Store {
    /// RemoveBlocks: ids used as file names (spec §5.4 + D7). Invalid ids (empty, containing
    /// '/', '\\' or NUL, exactly "." or "..") are skipped; nothing outside the executor's
    /// canonical dirs is deleted, even through a symlinked subdir; only real deletions count.
    /// The index-cache entry of every removed path is dropped.
    pub fn remove_blocks(&self, dirs: &ExecutorDirs, block_ids: &[String]) -> u32 {
        let mut removed = 0u32;
        for id in block_ids {
            if !is_valid_file_name(id) {
                tracing::warn!(block_id = %id.escape_debug(), "Skipping block with invalid id");
                continue;
            }
            let path = dirs.file_path(id);
            // Drop the cached index whatever happens: if the file is gone or going, the
            // cached offsets describe nothing that will be served again.
            self.index_cache.remove(&path);
            self.open_files.remove(&path);
            match unlink_confined(&path, dirs) {
                Ok(()) => removed = removed.saturating_add(1),
                Err(reason) => {
                    tracing::debug!(path = %path.display(), %reason, "Failed to delete block");
                }
            }
        }
        removed
    }
}

/// A block id we are willing to use as a file name: one plain path component.
fn is_valid_file_name(id: &str) -> bool {
    !id.is_empty() && id != "." && id != ".." && !id.contains(['/', '\\', '\0'])
}

/// Deletes `path`'s last component from its directory, after proving that directory (as
/// opened, not as named) lies inside the dirs. `unlinkat` on that descriptor then cannot reach
/// anywhere else, even if the subdir is swapped for a symlink in the meantime. A symlink named
/// like a block is itself removed; its target is not touched.
fn unlink_confined(path: &Path, dirs: &ExecutorDirs) -> Result<(), String> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err("path has no parent directory".to_string());
    };
    let dir = open_dir_confined(parent, dirs).map_err(|failure| match failure {
        OpenFailure::Io(e) => format!("cannot open its directory: {e}"),
        OpenFailure::NotRegular => "its directory is not a directory".to_string(),
        OpenFailure::Refused(e) => e.to_string(),
    })?;
    rustix::fs::unlinkat(&dir, name, AtFlags::empty()).map_err(|e| std::io::Error::from(e).to_string())
}

#[cfg(test)]
mod tests {
    use super::super::fixture::Fixture;
    use super::*;
    use std::os::unix::fs::symlink;

    fn ids(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn only_real_deletions_are_counted() {
        let fx = Fixture::new();
        fx.write_map_output(0, 0, &[13, 0, 29, 7]);
        let rdd = fx.write("rdd_1_0", b"block");
        let store = Store::new(1 << 20);
        store.shuffle_segment(&fx.dirs, 0, 0, 0, 1).expect("segment"); // caches the index
        let removed =
            store.remove_blocks(&fx.dirs, &ids(&["shuffle_0_0_0.index", "shuffle_0_0_0.data", "rdd_1_0", "rdd_1_99"]));
        assert_eq!(removed, 3);
        assert!(!rdd.exists());
        assert!(!fx.dirs.file_path("shuffle_0_0_0.index").exists());
        assert_eq!(store.index_cache().stats().entries, 0);
        assert_eq!(store.remove_blocks(&fx.dirs, &ids(&["rdd_1_0"])), 0, "already gone");
    }

    #[test]
    fn path_like_ids_are_skipped_and_their_victims_untouched() {
        let fx = Fixture::new();
        // Where Java would have resolved these ids (layout.txt's victims).
        let victim = fx.dirs.file_path("../victim");
        let nested = fx.dirs.file_path("sub/rdd_1_0");
        for path in [&victim, &nested] {
            fx.mkdir_parent(path);
            std::fs::write(path, b"abc").expect("victim");
        }
        let bad = ids(&["../victim", "sub/rdd_1_0", ".", "..", "", "a\\b", "rdd_1_0\0"]);
        assert_eq!(Store::new(1 << 20).remove_blocks(&fx.dirs, &bad), 0);
        assert_eq!(std::fs::read(&victim).expect("victim kept"), b"abc");
        assert_eq!(std::fs::read(&nested).expect("nested kept"), b"abc");
    }

    #[test]
    fn a_symlinked_subdir_pointing_outside_is_not_followed() {
        let fx = Fixture::new();
        let path = fx.dirs.file_path("rdd_1_0");
        let subdir = path.parent().expect("subdir");
        std::fs::create_dir_all(subdir.parent().expect("local dir")).expect("mkdir");
        symlink(&fx.outside, subdir).expect("symlink subdir");
        let target = fx.write_outside("rdd_1_0", b"keep me");
        assert_eq!(Store::new(1 << 20).remove_blocks(&fx.dirs, &ids(&["rdd_1_0"])), 0);
        assert_eq!(std::fs::read(&target).expect("target kept"), b"keep me");
    }

    #[test]
    fn a_block_that_is_a_symlink_is_unlinked_without_touching_its_target() {
        let fx = Fixture::new();
        let target = fx.write_outside("precious", b"keep me");
        let link = fx.dirs.file_path("rdd_3_3");
        fx.mkdir_parent(&link);
        symlink(&target, &link).expect("symlink");
        assert_eq!(Store::new(1 << 20).remove_blocks(&fx.dirs, &ids(&["rdd_3_3"])), 1);
        assert!(std::fs::symlink_metadata(&link).is_err());
        assert_eq!(std::fs::read(&target).expect("target kept"), b"keep me");
    }

    #[test]
    fn valid_ids_are_single_plain_components() {
        for good in ["shuffle_0_0_0.index", "rdd_1_0", "...", "a.b", "é𝄞"] {
            assert!(is_valid_file_name(good), "{good:?}");
        }
        for bad in ["", ".", "..", "a/b", "/abs", "a\\b", "nul\0"] {
            assert!(!is_valid_file_name(bad), "{bad:?}");
        }
    }
}
