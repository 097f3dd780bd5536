//! Restarts and upgrades, in real network namespaces (tests/podnet_support): a second agent
//! (a restarted or a surge pod) re-adopts a pod's namespace from `/proc`, binds the same
//! in-pod port while the first still listens (`SO_REUSEPORT`), takes over every connection
//! once the first closes, and reconciles the nftables state the first one left in the kernel,
//! starting from the dead IPs persisted in the state dir instead of a clean slate.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::common::VectorLayout;
use crate::podnet_support::{privileged, try_connect, wait_for, Serving, Topology};
use spark_shuffle_agent::podnet::{
    bind_in_netns, dead_ips, find_pod_netns, find_pods_netns, Applied, DeadIps, NetnsId, Nft,
};

const PORT: u16 = 7337;
const CONNECTIONS: u64 = 8;

#[test]
fn a_second_agent_readopts_the_pod_overlaps_with_reuseport_takes_over_and_reconciles_nft() {
    if !privileged("podnet_restart") {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let layout = VectorLayout::new();
    let state = tempfile::tempdir().unwrap();
    let store = crate::podnet_support::store();
    let registry = crate::podnet_support::registry(&layout.roots());
    let (first, second) =
        (crate::podnet_support::shared(&registry, &store), crate::podnet_support::shared(&registry, &store));
    let opened =
        |s: &std::sync::Arc<spark_shuffle_agent::server::Shared>| s.counters.connections_opened.load(Ordering::Relaxed);
    let own = NetnsId::of_path(Path::new("/proc/self/ns/net")).unwrap();
    let nft = Nft::default();

    let mut topo = Topology::new("rst", 205);
    topo.pod("poda", 10);
    topo.pod("podb", 11);
    let pod_b = topo.open("podb");
    let pod_a_addr = SocketAddr::new(topo.pod_ip(10), PORT);
    let node_agent = SocketAddr::new(topo.node_ip(), PORT);

    // The first agent: poda's listener, and podb's table with one dead IP of a running app.
    let adopted = wait_for("poda in /proc", || find_pod_netns(Path::new("/proc"), topo.pod_ip(10), Some(own)).unwrap());
    let first_serving = Serving::start(&runtime, bind_in_netns(&adopted, PORT).unwrap().into_vec(), &first);
    let mut dead = DeadIps::default();
    dead.executor_died(topo.pod_ip(99), node_agent, "app-running");
    dead_ips::save(state.path(), &dead).unwrap();
    assert_eq!(nft.reconcile(&pod_b, &dead.pod_table(PORT)).unwrap(), Applied::Replaced);
    try_connect(&pod_b, pod_a_addr, Duration::from_secs(5)).expect("first agent serves poda");
    // try_connect returns on the handshake; the accept loop counts a moment later.
    wait_for("the first agent to accept", || (opened(&first) == 1).then_some(()));
    drop(adopted); // the first agent "is killed": its handle goes, its listener lingers a while

    // The second agent starts from the state dir and /proc, not from a clean slate.
    let loaded = dead_ips::load(state.path()).unwrap();
    assert!(loaded.discarded.is_none());
    assert_eq!(loaded.dead, dead, "the dead IPs the watch cannot give back");
    // One scan for every pod of the node, as a restart does.
    let ips = [topo.pod_ip(10), topo.pod_ip(11), topo.pod_ip(77)];
    let mut found = find_pods_netns(Path::new("/proc"), &ips, Some(own)).unwrap().into_iter().map(|(_, n)| n.unwrap());
    let (readopted, pod_b_again, nobody) = (found.next().unwrap(), found.next().unwrap(), found.next().unwrap());
    let readopted = readopted.expect("poda re-adopted");
    assert_eq!(pod_b_again.map(|n| n.id()), Some(pod_b.id()));
    assert!(nobody.is_none(), "no pod holds .77");
    assert_eq!(readopted.id(), NetnsId::of_path(&topo.netns_path("poda")).unwrap());
    // Without SO_REUSEPORT the port is taken while the first listener lives ...
    let plain = readopted
        .run(|| std::net::TcpListener::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, PORT)).map(drop))
        .unwrap();
    assert_eq!(plain.map_err(|e| e.kind()), Err(std::io::ErrorKind::AddrInUse));
    // ... with it both listen at once, as in a maxSurge rolling update.
    let second_serving = Serving::start(&runtime, bind_in_netns(&readopted, PORT).unwrap().into_vec(), &second);
    for _ in 0..CONNECTIONS {
        try_connect(&pod_b, pod_a_addr, Duration::from_secs(5)).expect("served while both listen");
    }
    wait_for("every connection accepted by one of the two", || {
        (opened(&first) - 1 + opened(&second) == CONNECTIONS).then_some(())
    });
    println!(
        "podnet overlap: {CONNECTIONS} connections split {}/{} between the old and the new listener",
        opened(&first) - 1,
        opened(&second)
    );

    // The kernel kept podb's table: the reconcile finds it right and writes nothing ...
    assert_eq!(nft.reconcile(&pod_b, &loaded.dead.pod_table(PORT)).unwrap(), Applied::Unchanged);
    // ... and changes only what the watch reports since: the old IP reused, a new death.
    let mut now = loaded.dead;
    assert!(now.ip_reused(topo.pod_ip(99)));
    now.executor_died(topo.pod_ip(50), node_agent, "app-running");
    assert_eq!(nft.reconcile(&pod_b, &now.pod_table(PORT)).unwrap(), Applied::Elements { added: 1, removed: 1 });
    let entries = nft.observe(&pod_b).unwrap().unwrap().entries;
    assert_eq!(entries.keys().copied().collect::<Vec<_>>(), [topo.pod_ip(50)]);

    // The first agent's listener closes: from then on the second one gets every connection.
    first_serving.stop(&runtime);
    let (first_total, second_before) = (opened(&first), opened(&second));
    for _ in 0..CONNECTIONS {
        try_connect(&pod_b, pod_a_addr, Duration::from_secs(5)).expect("served by the second agent");
    }
    wait_for("the second agent to accept all", || (opened(&second) - second_before == CONNECTIONS).then_some(()));
    assert_eq!(opened(&first), first_total, "nothing reaches the closed listener");
    second_serving.stop(&runtime);
}
