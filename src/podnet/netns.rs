//! A handle on one network namespace, and the one way this crate enters it: a dedicated OS
//! thread that calls `setns(CLONE_NEWNET)`, does synchronous work, and exits.
//!
//! Why a thread of its own (spec/pod-network.md §1.2, istio/ztunnel `src/inpod/netns.rs`): the
//! network namespace is per *thread*, and a tokio worker that switched namespaces would open
//! every later socket of every task in the pod. A throwaway thread cannot leak its namespace:
//! it never returns to a pool, so nothing has to switch back (and nothing can fail to). Sockets
//! keep the namespace they were created in, whichever thread later uses them, and so do child
//! processes started from that thread (how `nft` is run inside a pod, [`super::nft`]).
//!
//! Must not: hold anything across an `.await` (there is none: the work is a plain closure).

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::PodnetError;

/// Identity of a network namespace: device and inode of its nsfs file, as ztunnel's `NetnsID`.
/// Two paths (`/proc/<pid>/ns/net`, `/run/netns/<name>`) name the same namespace iff equal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NetnsId {
    pub dev: u64,
    pub ino: u64,
}

impl NetnsId {
    /// The identity of whatever `path` names (following symlinks, as `/proc/<pid>/ns/net` is one).
    pub fn of_path(path: &Path) -> std::io::Result<NetnsId> {
        let meta = std::fs::metadata(path)?;
        Ok(NetnsId { dev: meta.dev(), ino: meta.ino() })
    }

    fn of_file(file: &File) -> std::io::Result<NetnsId> {
        let meta = file.metadata()?;
        Ok(NetnsId { dev: meta.dev(), ino: meta.ino() })
    }
}

impl std::fmt::Display for NetnsId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "net:[{}]", self.ino)
    }
}

/// An open network namespace. Holding it keeps the namespace alive (as any fd does), so drop
/// it when the pod ends (spec §5.3 "dead netns lingering").
#[derive(Debug)]
pub struct Netns {
    file: File,
    id: NetnsId,
    /// Where it was opened from; for logs only (a `/proc/<pid>` path may name another
    /// namespace later, the open file never does).
    path: PathBuf,
}

impl Netns {
    /// Opens a namespace by path: `/proc/<pid>/ns/net`, `/run/netns/<name>`, or
    /// `/proc/thread-self/ns/net` for the caller's own.
    pub fn open(path: &Path) -> Result<Netns, PodnetError> {
        let io = |source| PodnetError::Netns { path: path.into(), source };
        let file = File::open(path).map_err(io)?;
        let id = NetnsId::of_file(&file).map_err(io)?;
        Ok(Netns { file, id, path: path.into() })
    }

    /// The namespace the calling thread is in.
    pub fn current() -> Result<Netns, PodnetError> {
        Netns::open(Path::new("/proc/thread-self/ns/net"))
    }

    pub fn id(&self) -> NetnsId {
        self.id
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// Runs `work` on a new OS thread that has entered this namespace, and returns its result.
    /// Blocking: call it from `spawn_blocking` (or a plain thread) when on a runtime.
    pub fn run<T: Send>(&self, work: impl FnOnce() -> T + Send) -> Result<T, PodnetError> {
        std::thread::scope(|scope| {
            let thread = std::thread::Builder::new()
                .name("podnet-setns".into())
                .spawn_scoped(scope, || -> Result<T, PodnetError> {
                    rustix::thread::move_into_link_name_space(
                        self.file.as_fd(),
                        Some(rustix::thread::LinkNameSpaceType::Network),
                    )
                    .map_err(|e| PodnetError::Setns { path: self.path.clone(), source: e.into() })?;
                    Ok(work())
                })
                .map_err(|source| PodnetError::Thread { source })?;
            thread.join().map_err(|_| PodnetError::WorkPanicked)?
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_namespace_opened_twice_has_one_identity() {
        let a = Netns::current().unwrap();
        let b = Netns::open(Path::new("/proc/self/ns/net")).unwrap();
        assert_eq!(a.id(), b.id());
        assert_eq!(NetnsId::of_path(Path::new("/proc/thread-self/ns/net")).unwrap(), a.id());
    }

    #[test]
    fn a_path_that_is_not_a_namespace_is_an_error_naming_it() {
        let err = Netns::open(Path::new("/nonexistent/ns/net")).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/ns/net"), "{err}");
    }

    #[test]
    fn work_runs_on_another_thread_and_its_result_comes_back() {
        let here = std::thread::current().id();
        let ns = Netns::current().unwrap();
        // setns into our own namespace needs CAP_SYS_ADMIN too; without it the error is typed.
        match ns.run(|| std::thread::current().id()) {
            Ok(there) => assert_ne!(there, here),
            Err(e) => assert!(matches!(e, PodnetError::Setns { .. }), "{e}"),
        }
    }
}
