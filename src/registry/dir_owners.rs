//! Which application each registered local dir belongs to. `RegisterExecutor`'s dirs are the
//! client's choice, and authentication proves only the app id: without this, an authenticated
//! app could register another app's `blockmgr-*` dirs under its own id and fetch its files
//! (auth.md §7). So a dir, or any dir above or below it, belongs to the first app that
//! registered it, until that app is removed.
//!
//! Paths are canonical (Roots::confine resolved symlinks and `..`), so two spellings of one
//! directory are one key. In a `BTreeMap<PathBuf, _>` the paths below a dir sort right after it
//! (Path orders by components), so "anything inside" is one range scan.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Default)]
pub(super) struct DirOwners {
    owners: BTreeMap<PathBuf, String>,
}

impl DirOwners {
    /// The app owning `dir`, a dir above it or a dir below it, if that is not `app_id`.
    fn other_owner(&self, app_id: &str, dir: &Path) -> Option<&str> {
        let above = dir.ancestors().find_map(|a| self.owners.get(a));
        let below = self.owners.range(dir.to_path_buf()..).take_while(|(p, _)| p.starts_with(dir)).map(|(_, a)| a);
        above.into_iter().chain(below).find(|owner| *owner != app_id).map(String::as_str)
    }

    /// The first of `dirs` that overlaps another app's dir, with that app.
    pub(super) fn conflict<'a>(&'a self, app_id: &str, dirs: &'a [PathBuf]) -> Option<(&'a Path, &'a str)> {
        dirs.iter().find_map(|d| self.other_owner(app_id, d).map(|owner| (d.as_path(), owner)))
    }

    /// Records `dirs` as `app_id`'s; returns the ones that were not recorded before (to undo a
    /// registration that could not be persisted).
    pub(super) fn claim(&mut self, app_id: &str, dirs: &[PathBuf]) -> Vec<PathBuf> {
        let mut new = Vec::new();
        for dir in dirs {
            if !self.owners.contains_key(dir) {
                self.owners.insert(dir.clone(), app_id.to_string());
                new.push(dir.clone());
            }
        }
        new
    }

    pub(super) fn release(&mut self, dirs: &[PathBuf]) {
        for dir in dirs {
            self.owners.remove(dir);
        }
    }

    pub(super) fn release_app(&mut self, app_id: &str) {
        self.owners.retain(|_, owner| owner != app_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    #[test]
    fn the_same_dir_a_dir_above_and_a_dir_below_another_apps_all_overlap() {
        let mut owners = DirOwners::default();
        owners.claim("a", &[p("/r/blockmgr-1"), p("/r/x/blockmgr-2")]);
        for dir in ["/r/blockmgr-1", "/r/blockmgr-1/0c", "/r", "/r/x"] {
            let dirs = [p(dir)];
            assert_eq!(owners.conflict("b", &dirs).map(|(_, o)| o), Some("a"), "{dir}");
            assert_eq!(owners.conflict("a", &dirs), None, "an app's own dirs: {dir}");
        }
        for dir in ["/r/blockmgr-10", "/r/blockmgr-", "/r/y", "/s"] {
            assert_eq!(owners.conflict("b", &[p(dir)]), None, "{dir}");
        }
    }

    #[test]
    fn a_removed_apps_dirs_are_free_again_and_only_new_claims_are_undone() {
        let mut owners = DirOwners::default();
        assert_eq!(owners.claim("a", &[p("/r/1")]), [p("/r/1")]);
        assert_eq!(owners.claim("a", &[p("/r/1"), p("/r/2")]), [p("/r/2")]);
        owners.release(&[p("/r/2")]);
        assert_eq!(owners.conflict("b", &[p("/r/2")]), None);
        assert!(owners.conflict("b", &[p("/r/1")]).is_some());
        owners.release_app("a");
        assert_eq!(owners.conflict("b", &[p("/r/1")]), None);
    }
}
