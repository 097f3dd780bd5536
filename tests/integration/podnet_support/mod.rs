//! The namespaced fixture of the `podnet_*` tests: one simulated node and its pods, built from
//! real network namespaces, a bridge and veth pairs with the `ip` tool, the way a bridge CNI
//! (flannel, kubenet) wires pods (spec/pod-network.md §3, `lab.sh` §0):
//!
//! ```text
//!   netns <prefix>-node:  cni0 bridge 10.N.0.1/24   <- the node; its agent listens here
//!   netns <prefix>-<pod>: eth0 10.N.0.x/24, default via 10.N.0.1, a `sleep` as pause process
//! ```
//!
//! The test process itself stays in its own namespace, so nothing of the machine's is touched.
//! Names carry the pid and a per-test tag; `N` differs per test so two tests running at once
//! never hold the same pod IP (discovery would rightly refuse an IP held twice). Everything is
//! removed on drop, also when the test fails.
//!
//! Privileges: the tests need root, `ip` and `nft`. Without them a test returns early with a
//! note, except under `CI` (set to anything but `false`/`0`), where it fails: CI must not skip
//! silently (istio/ztunnel `can_run_privilged_test`).
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use spark_shuffle_agent::config::Config;
use spark_shuffle_agent::podnet::Netns;
use spark_shuffle_agent::registry::{Registry, Roots};
use spark_shuffle_agent::server::{self, Shared};
use spark_shuffle_agent::store::Store;
use tokio_util::sync::CancellationToken;

/// Whether this test can run here; panics under CI when it cannot (see the module doc).
pub fn privileged(test: &str) -> bool {
    let missing = if !rustix::process::geteuid().is_root() {
        Some("root".to_string())
    } else {
        ["ip", "nft"].into_iter().find(|tool| !runs(tool, &["-V"])).map(|t| format!("the `{t}` program"))
    };
    let Some(missing) = missing else { return true };
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
    assert!(!ci, "{test}: needs {missing}; under CI a namespaced test must fail, not skip");
    eprintln!("SKIPPED {test}: needs {missing} (set CI=true to make this a failure)");
    false
}

fn runs(program: &str, args: &[&str]) -> bool {
    Command::new(program).args(args).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// Runs `ip args`, failing the test with its stderr if it fails.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

/// One node with a bridge and its pods. See the module doc.
pub struct Topology {
    prefix: String,
    net: u8,
    namespaces: Vec<String>,
    pauses: Vec<(String, Child)>,
}

impl Topology {
    /// A node `<prefix>-node` with `cni0` at `10.<net>.0.1/24`.
    pub fn new(tag: &str, net: u8) -> Topology {
        let mut topo =
            Topology { prefix: format!("pn{}{tag}", std::process::id()), net, namespaces: vec![], pauses: vec![] };
        let node = topo.add_netns("node");
        ip(&["-n", &node, "link", "add", "cni0", "type", "bridge"]);
        // A fixed MAC, as CNI bridges have: a Linux bridge without one takes the lowest of its
        // ports', so a pod's veth going away could change it under the other pods' neighbour
        // entries for the gateway (seen: a pod stuck in PROBE for its node's IP).
        ip(&["-n", &node, "link", "set", "cni0", "address", &format!("02:00:0a:{net:02x}:00:01")]);
        ip(&["-n", &node, "addr", "add", &format!("10.{net}.0.1/24"), "dev", "cni0"]);
        ip(&["-n", &node, "link", "set", "cni0", "up"]);
        topo
    }

    fn add_netns(&mut self, name: &str) -> String {
        let full = format!("{}-{name}", self.prefix);
        ip(&["netns", "add", &full]);
        self.namespaces.push(full.clone());
        ip(&["-n", &full, "link", "set", "lo", "up"]);
        full
    }

    pub fn netns_name(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    /// `/run/netns/<prefix>-<name>`.
    pub fn netns_path(&self, name: &str) -> PathBuf {
        Path::new("/run/netns").join(self.netns_name(name))
    }

    pub fn open(&self, name: &str) -> Netns {
        Netns::open(&self.netns_path(name)).expect("open test netns")
    }

    /// The node's address on the bridge: where its agent listens.
    pub fn node_ip(&self) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, self.net, 0, 1))
    }

    /// The address pod number `n` gets.
    pub fn pod_ip(&self, n: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, self.net, 0, n))
    }

    /// A pod's sandbox without its IP yet: the namespace, a pause process in it, the veth on
    /// the bridge. [`Topology::give_ip`] is CNI ADD's last step.
    pub fn sandbox(&mut self, name: &str) -> u32 {
        let ns = self.add_netns(name);
        let node = self.netns_name("node");
        let host_end = format!("v-{name}");
        ip(&["-n", &node, "link", "add", &host_end, "type", "veth", "peer", "name", "eth0", "netns", &ns]);
        ip(&["-n", &node, "link", "set", &host_end, "master", "cni0", "up"]);
        ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        let pause = Command::new("ip")
            .args(["netns", "exec", &ns, "sleep", "600"])
            .stdin(Stdio::null())
            .spawn()
            .expect("start the pause process");
        let pid = pause.id();
        self.pauses.push((name.to_string(), pause));
        pid
    }

    /// Gives pod `name` the address `10.<net>.0.<n>` and a default route via the node.
    pub fn give_ip(&self, name: &str, n: u8) {
        let ns = self.netns_name(name);
        ip(&["-n", &ns, "addr", "add", &format!("{}/24", self.pod_ip(n)), "dev", "eth0"]);
        ip(&["-n", &ns, "route", "add", "default", "via", &self.node_ip().to_string()]);
    }

    /// Sandbox plus IP.
    pub fn pod(&mut self, name: &str, n: u8) -> u32 {
        let pid = self.sandbox(name);
        self.give_ip(name, n);
        pid
    }

    /// Pod death as the runtime and CNI DEL do it: the pause process is killed and the veth
    /// deleted. The namespace itself goes with [`Topology::delete_netns`] (once the agent has
    /// dropped its sockets and handles in it, the kernel frees it).
    pub fn kill_pod(&mut self, name: &str) {
        if let Some(i) = self.pauses.iter().position(|(n, _)| n == name) {
            let (_, mut pause) = self.pauses.remove(i);
            let _ = pause.kill();
            let _ = pause.wait();
        }
        ip(&["-n", &self.netns_name("node"), "link", "del", &format!("v-{name}")]);
    }

    pub fn delete_netns(&mut self, name: &str) {
        let full = self.netns_name(name);
        ip(&["netns", "del", &full]);
        self.namespaces.retain(|n| n != &full);
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for (_, pause) in &mut self.pauses {
            let _ = pause.kill();
            let _ = pause.wait();
        }
        // Pods first: deleting the node would leave their veth peers behind until then anyway.
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).stderr(Stdio::null()).status();
        }
    }
}

/// Runs `work` on a thread inside `netns`, on a current-thread runtime of its own: a client
/// that lives in a pod (its sockets are created there).
pub fn in_netns<T: Send, F: std::future::Future<Output = T>>(netns: &Netns, work: impl FnOnce() -> F + Send) -> T {
    netns
        .run(|| {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            runtime.block_on(work())
        })
        .expect("enter the client's netns")
}

/// `Shared` as tests/common/agent.rs builds it, around a registry and store that several
/// agents (or listeners) may share, with counters of its own.
pub fn shared(registry: &Arc<Registry>, store: &Arc<Store>) -> Arc<Shared> {
    Arc::new(Shared::new(Config::default().server_settings(), Arc::clone(registry), Arc::clone(store)))
}

pub fn registry(roots: &[PathBuf]) -> Arc<Registry> {
    Arc::new(Registry::in_memory(Roots::new(roots).expect("test roots exist")))
}

pub fn store() -> Arc<Store> {
    Arc::new(Store::new(100 << 20))
}

/// The accept loops of one agent's listeners, on the given runtime.
pub struct Serving {
    pub shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Serving {
    /// Serves each std listener with `server::run` (the real accept loop and handler).
    pub fn start(
        runtime: &tokio::runtime::Runtime,
        listeners: Vec<std::net::TcpListener>,
        shared: &Arc<Shared>,
    ) -> Serving {
        let shutdown = CancellationToken::new();
        let tasks = listeners
            .into_iter()
            .map(|l| {
                let (shared, shutdown) = (Arc::clone(shared), shutdown.clone());
                runtime.spawn(async move {
                    let listener = tokio::net::TcpListener::from_std(l).expect("listener onto the runtime");
                    server::run(listener, shared, shutdown, Duration::from_millis(200), None).await
                })
            })
            .collect();
        Serving { shutdown, tasks }
    }

    /// Stops accepting and waits until every listener is closed.
    pub fn stop(mut self, runtime: &tokio::runtime::Runtime) {
        self.shutdown.cancel();
        runtime.block_on(async {
            for task in std::mem::take(&mut self.tasks) {
                tokio::time::timeout(Duration::from_secs(20), task).await.expect("server stops").expect("no panic");
            }
        });
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A connect attempt from inside `netns` with a deadline: `Ok` if the port accepted.
pub fn try_connect(netns: &Netns, to: SocketAddr, within: Duration) -> Result<(), String> {
    in_netns(netns, || async move {
        match tokio::time::timeout(within, tokio::net::TcpStream::connect(to)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {within:?}")),
        }
    })
}

/// Polls `condition` every few ms until it holds, failing after 20 s: for state the kernel
/// changes asynchronously (a process that has not entered its namespace yet).
pub fn wait_for<T>(what: &str, mut condition: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = condition() {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}
