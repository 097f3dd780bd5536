//! Pod network mode, the kernel-facing core (issue 11, spec/pod-network.md): serving executors
//! that use the ordinary pod network, with no change to Spark.
//!
//! * Live phase: [`discover`] finds an executor pod's network namespace from the host's `/proc`
//!   by the pod's IP; [`listen`] opens `0.0.0.0:<port>` and `[::]:<port>` inside it (through
//!   [`netns::Netns::run`], a dedicated thread that `setns`-es and exits); the caller serves
//!   those listeners with the same accept loop as the host one ([`crate::server::run`]).
//! * Dead phase: [`dead_ips`] keeps `dead pod IP -> owning agent` (persisted in the state dir);
//!   [`redirect`] turns it into the nftables table one namespace should have, and [`nft`]
//!   reconciles a namespace's actual table to it, resetting flows opened before the death.
//! * [`gate`] is the executor pod's init-container wait: until the in-pod port accepts.
//! * [`privilege`] checks at start that pod mode can work, naming the first thing missing.
//!
//! [`controller`] is the one caller of all this in the agent: it follows the order below.
//!
//! This module does not watch Kubernetes and owns no tokio task: the executor watcher decides
//! *when* (pod got an IP, pod ended, app ended) and calls in here, from `spawn_blocking`, since
//! every call here is synchronous (setns threads, `nft` processes).
//!
//! How the watcher is meant to call it (spec §2.3 "graceful hand-off" gives the order):
//! 1. At start, in pod mode: [`privilege::check`]; then [`dead_ips::load`] from the state dir,
//!    [`find_pods_netns`] for the node's executor pods listed by the first watch, and for
//!    each found pod what step 2 does. Tables left by a previous agent are reconciled, not reset.
//! 2. A local executor pod has an IP: [`find_pod_netns`] (retry while `Ok(None)`), keep the
//!    [`Netns`]; [`bind_in_netns`] and serve the listeners with `server::run` under a child
//!    token of that pod; [`Nft::reconcile`] its namespace to [`DeadIps::pod_table`] at once, even
//!    empty, so conntrack tracks the pod's flows from their first packet.
//! 3. Any pod (cluster-wide) shows up with an IP in [`DeadIps`]: [`DeadIps::ip_reused`].
//! 4. An executor pod ends (deletion timestamp or terminal phase; IP and node from the last live
//!    object): [`DeadIps::executor_died`], [`dead_ips::save`], reconcile every adopted pod's
//!    namespace to the pod table and the host's ([`Netns::current`]) to
//!    [`DeadIps::host_table`]; then, if it was local, cancel its listeners' token and drop its
//!    [`Netns`] (both pin the namespace).
//! 5. An application ends: [`DeadIps::app_ended`], save, reconcile as in 4.

pub mod addrs;
pub mod controller;
pub mod dead_ips;
pub mod discover;
pub mod gate;
pub mod listen;
pub mod metrics;
pub mod netns;
pub mod nft;
pub mod privilege;
pub mod redirect;

use std::net::IpAddr;
use std::path::PathBuf;

pub use controller::{Controller, PodChange, PodListener, PodnetStats};
pub use dead_ips::{DeadIp, DeadIps};
pub use discover::{find_pod_netns, find_pods_netns};
pub use listen::{bind_in_netns, InPodListeners};
pub use metrics::PodnetSource;
pub use netns::{Netns, NetnsId};
pub use nft::{Applied, Nft};
pub use redirect::{Layer, RedirectTable};

/// Where the agent serves executors: the value of the network-mode key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NetworkMode {
    /// One listener on the node (today's behaviour): executors use `hostNetwork`.
    #[default]
    Host,
    /// Listeners inside each executor pod's namespace, plus dead-IP redirects.
    Pod,
    /// Both: a cluster migrating from host-network executors to pod-network ones.
    Both,
}

impl NetworkMode {
    /// Whether the pod-network machinery (and its privileges) is needed.
    pub fn uses_pod_network(self) -> bool {
        matches!(self, NetworkMode::Pod | NetworkMode::Both)
    }
}

impl std::str::FromStr for NetworkMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "host" => Ok(NetworkMode::Host),
            "pod" => Ok(NetworkMode::Pod),
            "both" => Ok(NetworkMode::Both),
            _ => Err("expected host, pod or both".into()),
        }
    }
}

impl std::fmt::Display for NetworkMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NetworkMode::Host => "host",
            NetworkMode::Pod => "pod",
            NetworkMode::Both => "both",
        })
    }
}

/// What went wrong in a pod network operation.
#[derive(Debug, thiserror::Error)]
pub enum PodnetError {
    /// A namespace path could not be opened (the pod's process is gone, or no permission).
    #[error("cannot open network namespace {path}: {source}")]
    Netns { path: PathBuf, source: std::io::Error },
    /// `setns` into a namespace was refused.
    #[error("cannot enter network namespace {path}: {source}")]
    Setns { path: PathBuf, source: std::io::Error },
    /// The thread that enters a namespace could not be started.
    #[error("cannot start a namespace thread: {source}")]
    Thread { source: std::io::Error },
    /// The work run inside a namespace panicked.
    #[error("work inside a network namespace panicked")]
    WorkPanicked,
    /// The `/proc` scan failed as a whole.
    #[error("cannot scan {path}: {source}")]
    Scan { path: PathBuf, source: std::io::Error },
    /// More than one namespace holds the pod's IP; none is trusted.
    #[error("{ip} is local in more than one network namespace (pids {pids:?}); refusing to pick one")]
    AmbiguousIp { ip: IpAddr, pids: Vec<u32> },
    /// A listener could not be opened inside a namespace.
    #[error("cannot listen on port {port} in {path}: {source}")]
    Bind { path: PathBuf, port: u16, source: std::io::Error },
    /// The `nft` program could not be started.
    #[error("cannot run {program}: {source}")]
    NftSpawn { program: PathBuf, source: std::io::Error },
    /// `nft` refused a command or script.
    #[error("nft {args} in {netns} failed: {stderr}")]
    Nft { netns: PathBuf, args: String, stderr: String, script: Option<String> },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mode_parses_its_three_values_and_defaults_to_host() {
        assert_eq!(NetworkMode::default(), NetworkMode::Host);
        for mode in [NetworkMode::Host, NetworkMode::Pod, NetworkMode::Both] {
            assert_eq!(mode.to_string().parse::<NetworkMode>(), Ok(mode));
        }
        assert_eq!(" POD ".parse::<NetworkMode>(), Ok(NetworkMode::Pod));
        assert!("hostNetwork".parse::<NetworkMode>().is_err());
        assert!(!NetworkMode::Host.uses_pod_network() && NetworkMode::Both.uses_pod_network());
    }
}
