//! Finding a pod's network namespace without a CNI plugin (spec §2.1, istio-cni's
//! `PodNetnsProcFinder`): scan a `/proc` (the host's, mounted at e.g. `/host/proc`) for
//! processes, group them by the identity of `/proc/<pid>/ns/net`, and pick the namespace in
//! which the pod's IP is a local address.
//!
//! The IP check is the security boundary, not a convenience: pod labels can be forged, a
//! namespace's addresses cannot (from inside an unprivileged pod). An IP held by two namespaces
//! is refused rather than guessed.
//!
//! Must not: enter a namespace during the scan (the scan reads `/proc/<pid>/net/*`); only the
//! final check of the chosen namespace enters it, through [`Netns::run`].

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use super::addrs;
use super::netns::{Netns, NetnsId};
use super::PodnetError;

/// One namespace seen in the scan, through the lowest pid in it (the pause container's,
/// usually; any pid works while it lives).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub pid: u32,
    pub id: NetnsId,
}

impl Candidate {
    /// `<proc_root>/<pid>/ns/net`.
    pub fn ns_path(&self, proc_root: &Path) -> PathBuf {
        proc_root.join(self.pid.to_string()).join("ns/net")
    }

    fn net_dir(&self, proc_root: &Path) -> PathBuf {
        proc_root.join(self.pid.to_string()).join("net")
    }
}

/// Every network namespace with a process in it, once each, except `skip` (the agent's own,
/// which is the host's). Processes that vanish or cannot be read mid-scan are left out: the
/// scan is a snapshot, and a pod whose only process is gone has no usable namespace anyway.
pub fn scan(proc_root: &Path, skip: Option<NetnsId>) -> std::io::Result<Vec<Candidate>> {
    let mut by_id: BTreeMap<NetnsId, u32> = BTreeMap::new();
    for entry in std::fs::read_dir(proc_root)? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(id) = NetnsId::of_path(&entry.path().join("ns/net")) else { continue };
        if Some(id) == skip {
            continue;
        }
        by_id.entry(id).and_modify(|p| *p = (*p).min(pid)).or_insert(pid);
    }
    let mut found: Vec<Candidate> = by_id.into_iter().map(|(id, pid)| Candidate { pid, id }).collect();
    found.sort_by_key(|c| c.pid);
    Ok(found)
}

/// The namespaces among `candidates` whose process's view lists `ip` as local.
pub fn holding(proc_root: &Path, candidates: &[Candidate], ip: IpAddr) -> Vec<Candidate> {
    candidates.iter().filter(|c| addrs::holds_ip(&c.net_dir(proc_root), ip).unwrap_or(false)).cloned().collect()
}

/// Scans `proc_root` for the one namespace holding `ip`, opens it, and checks from inside it
/// (on a [`Netns::run`] thread, reading `/proc/thread-self/net`) that the IP is still local,
/// so a pid reused between the scan and the open cannot hand over another namespace.
/// `Ok(None)`: no namespace holds it (yet: the pod may still be getting its IP).
pub fn find_pod_netns(proc_root: &Path, ip: IpAddr, skip: Option<NetnsId>) -> Result<Option<Netns>, PodnetError> {
    let candidates = scan(proc_root, skip).map_err(|source| PodnetError::Scan { path: proc_root.into(), source })?;
    adopt(proc_root, ip, &holding(proc_root, &candidates, ip))
}

/// One pod IP and what [`find_pods_netns`] found for it.
pub type Found = (IpAddr, Result<Option<Netns>, PodnetError>);

/// [`find_pod_netns`] for many pods with one scan, each namespace's addresses read once: what a
/// restarted agent re-adopting every executor pod of its node needs. One result per IP, in order.
pub fn find_pods_netns(proc_root: &Path, ips: &[IpAddr], skip: Option<NetnsId>) -> Result<Vec<Found>, PodnetError> {
    let candidates = scan(proc_root, skip).map_err(|source| PodnetError::Scan { path: proc_root.into(), source })?;
    let mut by_ip: BTreeMap<IpAddr, Vec<Candidate>> = BTreeMap::new();
    for candidate in &candidates {
        for addr in addrs::local_addrs(&candidate.net_dir(proc_root)).unwrap_or_default() {
            by_ip.entry(addr).or_default().push(candidate.clone());
        }
    }
    Ok(ips.iter().map(|ip| (*ip, adopt(proc_root, *ip, by_ip.get(ip).map_or(&[][..], Vec::as_slice)))).collect())
}

/// Opens the one namespace in `found` and re-checks `ip` from inside it.
fn adopt(proc_root: &Path, ip: IpAddr, found: &[Candidate]) -> Result<Option<Netns>, PodnetError> {
    let chosen = match found {
        [] => return Ok(None),
        [one] => one,
        many => return Err(PodnetError::AmbiguousIp { ip, pids: many.iter().map(|c| c.pid).collect() }),
    };
    let netns = Netns::open(&chosen.ns_path(proc_root))?;
    if netns.id() != chosen.id {
        return Ok(None); // the pid died and was reused; the next scan will find the pod again
    }
    let inside = netns.run(|| addrs::holds_ip(Path::new("/proc/thread-self/net"), ip))?;
    match inside {
        Ok(true) => Ok(Some(netns)),
        Ok(false) => Ok(None),
        Err(source) => Err(PodnetError::Scan { path: "/proc/thread-self/net".into(), source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::podnet::addrs::tests::POD_FIB_TRIE;
    use std::os::unix::fs::symlink;

    /// A fake `/proc`: each pid's `ns/net` is a symlink to a file standing for a namespace, so
    /// pids sharing one share its (dev, ino) just as real ones do.
    struct FakeProc {
        dir: tempfile::TempDir,
    }

    impl FakeProc {
        fn new() -> FakeProc {
            FakeProc { dir: tempfile::tempdir().unwrap() }
        }
        fn root(&self) -> &Path {
            self.dir.path()
        }
        fn namespace(&self, name: &str, fib_trie: &str) {
            let ns = self.root().join(format!("ns-{name}"));
            std::fs::create_dir_all(&ns).unwrap();
            std::fs::write(ns.join("file"), name).unwrap();
            std::fs::write(ns.join("fib_trie"), fib_trie).unwrap();
        }
        fn process(&self, pid: u32, ns: &str) {
            let p = self.root().join(pid.to_string());
            std::fs::create_dir_all(p.join("ns")).unwrap();
            symlink(self.root().join(format!("ns-{ns}/file")), p.join("ns/net")).unwrap();
            symlink(self.root().join(format!("ns-{ns}")), p.join("net")).unwrap();
        }
        fn id(&self, ns: &str) -> NetnsId {
            NetnsId::of_path(&self.root().join(format!("ns-{ns}/file"))).unwrap()
        }
    }

    #[test]
    fn processes_sharing_a_namespace_are_one_candidate_through_the_lowest_pid() {
        let proc = FakeProc::new();
        proc.namespace("pod", POD_FIB_TRIE);
        proc.namespace("host", "");
        for (pid, ns) in [(1, "host"), (40, "pod"), (12, "pod"), (300, "host")] {
            proc.process(pid, ns);
        }
        std::fs::create_dir_all(proc.root().join("self")).unwrap(); // not a pid: ignored
        std::fs::create_dir_all(proc.root().join("77")).unwrap(); // exited mid-scan: no ns/net
        let all = scan(proc.root(), None).unwrap();
        assert_eq!(all, vec![Candidate { pid: 1, id: proc.id("host") }, Candidate { pid: 12, id: proc.id("pod") }]);
        assert_eq!(scan(proc.root(), Some(proc.id("host"))).unwrap(), vec![Candidate { pid: 12, id: proc.id("pod") }]);
    }

    #[test]
    fn the_namespace_holding_the_ip_is_picked_and_a_bystander_is_not() {
        let proc = FakeProc::new();
        proc.namespace("pod-a", POD_FIB_TRIE);
        proc.namespace("pod-b", &POD_FIB_TRIE.replace("10.244.1.10", "10.244.1.11"));
        proc.process(5, "pod-a");
        proc.process(6, "pod-b");
        let all = scan(proc.root(), None).unwrap();
        let a = holding(proc.root(), &all, "10.244.1.10".parse().unwrap());
        assert_eq!(a, vec![Candidate { pid: 5, id: proc.id("pod-a") }]);
        assert!(holding(proc.root(), &all, "10.244.1.99".parse().unwrap()).is_empty());
        assert_eq!(holding(proc.root(), &all, "127.0.0.1".parse().unwrap()).len(), 2, "loopback is everyone's");
    }

    #[test]
    fn an_ip_held_by_two_namespaces_is_refused_not_guessed() {
        let proc = FakeProc::new();
        proc.namespace("a", POD_FIB_TRIE);
        proc.namespace("b", POD_FIB_TRIE);
        proc.process(5, "a");
        proc.process(6, "b");
        let err = find_pod_netns(proc.root(), "10.244.1.10".parse().unwrap(), None).unwrap_err();
        assert!(matches!(err, PodnetError::AmbiguousIp { ref pids, .. } if pids == &[5, 6]), "{err}");
        let many = find_pods_netns(proc.root(), &["10.244.1.10".parse().unwrap(), "10.9.9.9".parse().unwrap()], None);
        let many = many.unwrap();
        assert!(matches!(many[0].1, Err(PodnetError::AmbiguousIp { .. })), "the batch refuses it too");
        assert!(matches!(many[1].1, Ok(None)));
    }

    #[test]
    fn no_namespace_holding_the_ip_is_none_not_an_error() {
        let proc = FakeProc::new();
        proc.namespace("a", POD_FIB_TRIE);
        proc.process(5, "a");
        assert!(find_pod_netns(proc.root(), "10.0.0.1".parse().unwrap(), None).unwrap().is_none());
        assert!(matches!(
            find_pod_netns(Path::new("/nonexistent-proc"), "10.0.0.1".parse().unwrap(), None),
            Err(PodnetError::Scan { .. })
        ));
    }
}
