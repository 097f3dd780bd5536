//! The start-up check for pod network mode: everything it needs, checked before any port is
//! bound, so a DaemonSet missing one privilege exits with one line naming it instead of failing
//! pod by pod later (spec §4; ztunnel's `InpodNetns::capable()` does the same).
//!
//! Checked in this order, the first missing one reported:
//! 1. CAP_SYS_ADMIN: `setns(CLONE_NEWNET)` into a pod's namespace.
//! 2. CAP_NET_ADMIN: nftables in pod and host namespaces.
//! 3. CAP_SYS_PTRACE: opening `/proc/<pid>/ns/net` of processes of other users (pause runs as
//!    65535, executors as 185).
//! 4. the host's `/proc` (mounted at e.g. `/host/proc`): readable, and its `self/ns/net`
//!    resolves (not pid 1's: an init that is not dumpable refuses even root, as this
//!    project's own sandbox showed).
//! 5. a real `setns` into our own namespace: seccomp or an LSM can refuse what the caps allow.
//! 6. the `nft` program: present and runnable.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use rustix::thread::CapabilitySet;

use super::netns::Netns;

/// The one thing pod network mode lacks.
#[derive(Debug, thiserror::Error)]
pub enum Missing {
    /// A capability absent from the effective set.
    #[error("pod network mode needs {name} ({why})")]
    Capability { name: &'static str, why: &'static str },
    /// The host `/proc` cannot be read.
    #[error("pod network mode needs the host's /proc at {path}: {reason}")]
    HostProc { path: PathBuf, reason: String },
    /// `setns` was refused although the capabilities are there.
    #[error("pod network mode needs setns(CLONE_NEWNET), refused: {reason} (seccomp or LSM profile?)")]
    Setns { reason: String },
    /// `nft` cannot be run.
    #[error("pod network mode needs the nft program ({program}): {reason}")]
    Nft { program: PathBuf, reason: String },
}

const NEEDED: [(CapabilitySet, &str, &str); 3] = [
    (CapabilitySet::SYS_ADMIN, "CAP_SYS_ADMIN", "setns into pod network namespaces"),
    (CapabilitySet::NET_ADMIN, "CAP_NET_ADMIN", "nftables redirects of dead executor IPs"),
    (CapabilitySet::SYS_PTRACE, "CAP_SYS_PTRACE", "opening other users' /proc/<pid>/ns/net"),
];

/// The first capability pod mode needs that `effective` lacks.
pub fn missing_capability(effective: CapabilitySet) -> Option<Missing> {
    NEEDED.iter().find(|(cap, _, _)| !effective.contains(*cap)).map(|&(_, name, why)| Missing::Capability { name, why })
}

/// Checks everything pod mode needs (module doc), with the host `/proc` at `proc_root` and the
/// `nft` program `nft`.
pub fn check(proc_root: &Path, nft: &Path) -> Result<(), Missing> {
    let caps =
        rustix::thread::capabilities(None).map_err(|e| Missing::Setns { reason: format!("capget failed: {e}") })?;
    if let Some(missing) = missing_capability(caps.effective) {
        return Err(missing);
    }
    let host_proc = |reason: String| Missing::HostProc { path: proc_root.into(), reason };
    std::fs::read_dir(proc_root).map_err(|e| host_proc(e.to_string()))?;
    let own_ns = proc_root.join("self/ns/net");
    std::fs::metadata(&own_ns).map_err(|e| host_proc(format!("{}: {e}", own_ns.display())))?;
    let own = Netns::current().map_err(|e| Missing::Setns { reason: e.to_string() })?;
    own.run(|| ()).map_err(|e| Missing::Setns { reason: e.to_string() })?;
    let nft_missing = |reason: String| Missing::Nft { program: nft.into(), reason };
    let status = Command::new(nft)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| nft_missing(e.to_string()))?;
    if !status.success() {
        return Err(nft_missing(format!("`{} --version` exited with {status}", nft.display())));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_missing_capability_is_named_in_order() {
        let all = CapabilitySet::SYS_ADMIN | CapabilitySet::NET_ADMIN | CapabilitySet::SYS_PTRACE;
        assert!(missing_capability(all).is_none());
        let line = |set| missing_capability(set).unwrap().to_string();
        assert_eq!(
            line(CapabilitySet::empty()),
            "pod network mode needs CAP_SYS_ADMIN (setns into pod network namespaces)"
        );
        assert!(line(all - CapabilitySet::NET_ADMIN).contains("CAP_NET_ADMIN"));
        assert!(line(all - CapabilitySet::SYS_PTRACE).contains("CAP_SYS_PTRACE"));
    }

    #[test]
    fn a_missing_host_proc_or_nft_is_named() {
        if missing_capability(rustix::thread::capabilities(None).unwrap().effective).is_some() {
            // Without the capabilities the first error is the capability; covered above.
            return;
        }
        let err = check(Path::new("/nonexistent/host/proc"), Path::new("nft")).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/host/proc"), "{err}");
        let err = check(Path::new("/proc"), Path::new("/nonexistent/nft")).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/nft"), "{err}");
        if Command::new("nft").arg("--version").output().is_ok_and(|o| o.status.success()) {
            check(Path::new("/proc"), Path::new("nft")).expect("everything pod mode needs is here");
        }
    }
}
