//! The directories the agent agrees to serve from (`--root`). A registration whose local dirs
//! resolve (symlinks and `..` included) outside every root is refused: this is what keeps a
//! client from turning the agent into a reader of arbitrary files (spec §13, LocalDirValidator).

use std::io;
use std::path::{Component, Path, PathBuf};

/// Canonical root directories.
#[derive(Debug, Clone)]
pub struct Roots {
    canonical: Vec<PathBuf>,
}

impl Roots {
    /// Canonicalises every root; a root that does not exist is a configuration error.
    pub fn new(dirs: &[PathBuf]) -> io::Result<Roots> {
        let canonical = dirs
            .iter()
            .map(|d| {
                std::fs::canonicalize(d).map_err(|e| io::Error::new(e.kind(), format!("root {}: {e}", d.display())))
            })
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Roots { canonical })
    }

    pub fn dirs(&self) -> &[PathBuf] {
        &self.canonical
    }

    /// The canonical form of `dir` if it lies under (or is) one of the roots.
    pub fn confine(&self, dir: &str) -> Option<PathBuf> {
        let canonical = canonicalize_lenient(Path::new(dir));
        self.canonical.iter().any(|root| canonical.starts_with(root)).then_some(canonical)
    }
}

/// Like `std::fs::canonicalize`, but a path whose tail does not exist yet is still resolved, as
/// Java's `File.getCanonicalPath` does: the longest existing prefix is canonicalised by the OS,
/// the rest is normalised lexically (`.` dropped, `..` pops). Relative paths are taken from the
/// agent's working directory.
pub fn canonicalize_lenient(path: &Path) -> PathBuf {
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/")).join(path)
    };
    let mut resolved = PathBuf::from("/");
    let mut components = absolute.components().peekable();
    while let Some(component) = components.next() {
        match component {
            Component::RootDir | Component::Prefix(_) | Component::CurDir => {}
            Component::ParentDir => {
                resolved.pop();
            }
            Component::Normal(name) => {
                let candidate = resolved.join(name);
                match std::fs::canonicalize(&candidate) {
                    Ok(real) => resolved = real,
                    // Nothing below a missing component can be a symlink: finish lexically.
                    Err(_) => {
                        resolved = candidate;
                        for rest in components.by_ref() {
                            match rest {
                                Component::ParentDir => {
                                    resolved.pop();
                                }
                                Component::Normal(n) => resolved.push(n),
                                _ => {}
                            }
                        }
                    }
                }
            }
        }
    }
    resolved
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dir_under_a_root_is_accepted_and_canonicalised() {
        let root = tempfile::tempdir().unwrap();
        let roots = Roots::new(&[root.path().to_path_buf()]).unwrap();
        let sub = root.path().join("blockmgr-1");
        std::fs::create_dir(&sub).unwrap();
        let got = roots.confine(sub.to_str().unwrap()).unwrap();
        assert_eq!(got, std::fs::canonicalize(&sub).unwrap());
    }

    #[test]
    fn dot_dot_out_of_a_root_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let roots = Roots::new(&[root.path().to_path_buf()]).unwrap();
        let escape = format!("{}/../etc/vec", root.path().display());
        assert_eq!(roots.confine(&escape), None);
    }

    #[test]
    fn a_symlink_out_of_a_root_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let link = root.path().join("link");
        std::os::unix::fs::symlink(outside.path(), &link).unwrap();
        let roots = Roots::new(&[root.path().to_path_buf()]).unwrap();
        assert_eq!(roots.confine(link.to_str().unwrap()), None);
        assert_eq!(roots.confine(&format!("{}/not-yet-created", link.display())), None);
    }

    #[test]
    fn a_root_prefix_that_is_not_a_parent_is_refused() {
        let parent = tempfile::tempdir().unwrap();
        let root = parent.path().join("ld1");
        std::fs::create_dir(&root).unwrap();
        std::fs::create_dir(parent.path().join("ld10")).unwrap();
        let roots = Roots::new(&[root]).unwrap();
        assert_eq!(roots.confine(&format!("{}/ld10", parent.path().display())), None);
    }

    #[test]
    fn a_missing_root_is_an_error() {
        assert!(Roots::new(&[PathBuf::from("/nonexistent/agent-root")]).is_err());
    }
}
