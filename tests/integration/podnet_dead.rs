//! Dead phase, in real network namespaces (tests/podnet_support): an executor pod dies (pause
//! killed, veth deleted as CNI DEL does, namespace deleted), and the redirect the agent
//! installs in a surviving pod's namespace sends new connections for the dead IP to the
//! node's agent, which still serves the dead executor's blocks; a connection opened before the
//! death is reset instead of hanging (spec §2.3 "graceful hand-off", lab §7/§8).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::common::{fetch_map_0_0, TestClient, VectorLayout, APP_ID};
use crate::podnet_support::{in_netns, privileged, try_connect, wait_for, Serving, Topology};
use bytes::BytesMut;
use spark_shuffle_agent::podnet::{
    bind_in_netns, dead_ips, find_pod_netns, Applied, DeadIps, Netns, NetnsId, Nft, RedirectTable,
};
use spark_shuffle_agent::protocol::{BlockTransferMessage as M, Message};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PORT: u16 = 7337;

fn frame(msg: &M, request_id: i64) -> BytesMut {
    let mut out = BytesMut::new();
    Message::RpcRequest { request_id, body: msg.encode() }.encode(&mut out);
    out
}

/// How the second request of a connection opened before the death ended, and after how long.
type OldFlowEnd = (std::io::ErrorKind, Duration);

/// A reducer connection from `pod` to `to`, opened (and used once: RegisterExecutor) while the
/// executor lives; on `go` it sends a fetch and reports how the connection failed.
fn old_flow(
    pod: Netns,
    to: SocketAddr,
    register: M,
) -> (mpsc::Receiver<()>, mpsc::Sender<()>, mpsc::Receiver<OldFlowEnd>) {
    let (ready_tx, ready_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let (end_tx, end_rx) = mpsc::channel();
    std::thread::spawn(move || {
        in_netns(&pod, || async move {
            let mut stream = tokio::net::TcpStream::connect(to).await.expect("connect to the live pod");
            stream.write_all(&frame(&register, 1)).await.expect("send RegisterExecutor");
            let mut reply = [0u8; 21]; // an empty RpcResponse
            stream.read_exact(&mut reply).await.expect("RegisterExecutor answered");
            ready_tx.send(()).unwrap();
            // Blocking is fine: this runtime runs this one task.
            let _ = go_rx.recv();
            let started = Instant::now();
            let result = async {
                stream.write_all(&frame(&fetch_map_0_0(), 2)).await?;
                let mut buf = [0u8; 64];
                match stream.read(&mut buf).await? {
                    0 => Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof)),
                    _ => Ok(()),
                }
            };
            let kind = match tokio::time::timeout(Duration::from_secs(15), result).await {
                Ok(Ok(())) => panic!("the old flow was answered: it reached no dead pod"),
                Ok(Err(e)) => e.kind(),
                Err(_) => std::io::ErrorKind::TimedOut,
            };
            end_tx.send((kind, started.elapsed())).unwrap();
        })
    });
    (ready_rx, go_tx, end_rx)
}

#[test]
fn a_dead_executors_ip_reaches_the_node_agent_through_the_redirect_and_old_flows_are_reset() {
    if !privileged("podnet_dead") {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let layout = VectorLayout::new();
    let state = tempfile::tempdir().unwrap();
    let (registry, store) = (crate::podnet_support::registry(&layout.roots()), crate::podnet_support::store());
    // One registry and store (one agent), counters per listener: who accepted is observable.
    let (node_shared, pod_shared) =
        (crate::podnet_support::shared(&registry, &store), crate::podnet_support::shared(&registry, &store));
    let own = NetnsId::of_path(Path::new("/proc/self/ns/net")).unwrap();
    let nft = Nft::default();

    let mut topo = Topology::new("dead", 203);
    let node = topo.open("node");
    let node_agent = SocketAddr::new(topo.node_ip(), PORT);
    let node_serving = Serving::start(&runtime, bind_in_netns(&node, PORT).unwrap().into_vec(), &node_shared);
    topo.pod("poda", 10);
    topo.pod("podb", 11);
    let (pod_a_ip, pod_b) = (topo.pod_ip(10), topo.open("podb"));
    let pod_a_addr = SocketAddr::new(pod_a_ip, PORT);

    // Live phase: poda's in-pod listener; podb adopted, with its (empty) table installed at
    // once, so conntrack tracks podb's flows from their first packet (spec §2.2).
    let pod_a = wait_for("poda in /proc", || find_pod_netns(Path::new("/proc"), pod_a_ip, Some(own)).unwrap());
    let pod_a_serving = Serving::start(&runtime, bind_in_netns(&pod_a, PORT).unwrap().into_vec(), &pod_shared);
    let mut dead = DeadIps::default();
    assert_eq!(nft.reconcile(&pod_b, &dead.pod_table(PORT)).unwrap(), Applied::Replaced);
    assert_eq!(nft.reconcile(&pod_b, &dead.pod_table(PORT)).unwrap(), Applied::Unchanged, "idempotent");
    let host_table = |dead: &DeadIps| dead.host_table(node_agent, PORT);
    assert_eq!(nft.reconcile(&node, &host_table(&dead)).unwrap(), Applied::Replaced);
    let (ready, go, ended) = old_flow(topo.open("podb"), pod_a_addr, layout.exec0.register(APP_ID, "0"));
    ready.recv_timeout(Duration::from_secs(20)).expect("the old flow registered exec 0 through poda");
    assert_eq!(pod_shared.counters.connections_opened.load(Ordering::Relaxed), 1);

    // Death: pause killed, CNI DEL removes the veth (so nothing the agent sends can reach
    // podb any more), the agent drops poda's listener and handle, the runtime deletes the netns.
    topo.kill_pod("poda");
    pod_a_serving.stop(&runtime);
    drop(pod_a);
    topo.delete_netns("poda");
    let unreachable = try_connect(&pod_b, pod_a_addr, Duration::from_secs(2));
    assert!(unreachable.is_err(), "without a redirect the dead IP does not answer: {unreachable:?}");

    // The watch reports the death: record it, persist it, install it in podb and the node.
    assert!(dead.executor_died(pod_a_ip, node_agent, APP_ID));
    dead_ips::save(state.path(), &dead).unwrap();
    let reconcile_start = Instant::now();
    assert_eq!(nft.reconcile(&pod_b, &dead.pod_table(PORT)).unwrap(), Applied::Elements { added: 1, removed: 0 });
    let reconciled = reconcile_start.elapsed();
    assert_eq!(nft.reconcile(&node, &host_table(&dead)).unwrap(), Applied::Elements { added: 1, removed: 0 });
    let unchanged_start = Instant::now();
    assert_eq!(nft.reconcile(&pod_b, &dead.pod_table(PORT)).unwrap(), Applied::Unchanged);
    println!(
        "podnet timing: reconcile adding one element {reconciled:?}, reconcile finding nothing to do {:?}",
        unchanged_start.elapsed()
    );
    let observed = nft.observe(&pod_b).unwrap().expect("podb's table");
    assert_eq!(observed.entries.get(&pod_a_ip), Some(&node_agent), "nft reports the entry");

    // The flow opened before the death: reset at once (lab: 0.00 s), not left hanging.
    go.send(()).unwrap();
    let (kind, after) = ended.recv_timeout(Duration::from_secs(20)).expect("the old flow ends");
    assert_eq!(kind, std::io::ErrorKind::ConnectionReset, "after {after:?}");
    println!("podnet timing: pre-death flow reset {after:?} after its next request");

    // A new connection to the dead IP is DNATed to the node's agent, which serves exec 0.
    let before = node_shared.counters.connections_opened.load(Ordering::Relaxed);
    let want = layout.map(0, 0).partitions[0].clone();
    let got = in_netns(&pod_b, || async move {
        let mut client = TestClient::connect(pod_a_addr).await;
        let (stream, _) = client.open_stream(&fetch_map_0_0()).await.expect("StreamHandle for the dead executor");
        client.chunk(stream, 0).await.expect("chunk")
    });
    assert_eq!(got, want);
    assert_eq!(node_shared.counters.connections_opened.load(Ordering::Relaxed), before + 1, "the node listener");
    // And from the node itself (a hostNetwork client): the host layer's output chain.
    try_connect(&node, pod_a_addr, Duration::from_secs(5)).expect("hostNetwork client reaches the agent");
    wait_for("the node listener to accept the hostNetwork client", || {
        (node_shared.counters.connections_opened.load(Ordering::Relaxed) == before + 2).then_some(())
    });

    // The IP shows up on a new pod: the entry goes, from the file and from both tables.
    assert!(dead.ip_reused(pod_a_ip));
    dead_ips::save(state.path(), &dead).unwrap();
    assert_eq!(nft.reconcile(&pod_b, &dead.pod_table(PORT)).unwrap(), Applied::Elements { added: 0, removed: 1 });
    assert_eq!(nft.reconcile(&node, &host_table(&dead)).unwrap(), Applied::Elements { added: 0, removed: 1 });
    assert!(nft.observe(&pod_b).unwrap().expect("table stays").entries.is_empty());
    assert!(dead_ips::load(state.path()).unwrap().dead.is_empty());
    assert!(nft.remove(&pod_b).unwrap(), "the pod's table is removed when the pod ends");
    assert_eq!(nft.observe(&pod_b).unwrap(), None);
    node_serving.stop(&runtime);
}

#[test]
fn a_table_someone_changed_is_put_back_and_a_script_nft_refuses_is_an_error_naming_it() {
    if !privileged("podnet_dead") {
        return;
    }
    let topo = Topology::new("drift", 204);
    let node = topo.open("node");
    let nft = Nft::default();
    let mut want = RedirectTable::new(spark_shuffle_agent::podnet::Layer::Pod, PORT);
    want.entries.insert("10.204.0.10".parse().unwrap(), "10.204.0.1:7337".parse().unwrap());
    assert_eq!(nft.reconcile(&node, &want).unwrap(), Applied::Replaced);
    let flush = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &topo.netns_name("node"),
            "nft",
            "flush",
            "chain",
            "inet",
            "spark_shuffle_agent",
            "rst",
        ])
        .status()
        .unwrap();
    assert!(flush.success());
    assert_eq!(nft.reconcile(&node, &want).unwrap(), Applied::Replaced, "a flushed chain is noticed");
    let observed = nft.observe(&node).unwrap().unwrap();
    assert_eq!(observed.rules.get("rst"), Some(&2));
    assert_eq!(observed.entries, want.entries, "elements are put back with the table");
    assert_eq!(nft.reconcile(&node, &want).unwrap(), Applied::Unchanged);
    let missing = Nft::new("/nonexistent/nft").reconcile(&node, &want).unwrap_err().to_string();
    assert!(missing.contains("/nonexistent/nft"), "{missing}");
}

#[test]
fn an_ipv6_dead_executor_ip_is_redirected_through_the_ip6_map() {
    if !privileged("podnet_dead") {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let layout = VectorLayout::new();
    let shared = crate::podnet_support::shared(
        &crate::podnet_support::registry(&layout.roots()),
        &crate::podnet_support::store(),
    );
    let mut topo = Topology::new("dead6", 206);
    topo.pod("podb", 11);
    let (node_ns, pod_ns) = (topo.netns_name("node"), topo.netns_name("podb"));
    crate::podnet_support::ip(&["-n", &node_ns, "addr", "add", "fd00:206::1/64", "dev", "cni0", "nodad"]);
    crate::podnet_support::ip(&["-n", &pod_ns, "addr", "add", "fd00:206::11/64", "dev", "eth0", "nodad"]);
    let (node, pod_b) = (topo.open("node"), topo.open("podb"));
    let serving = Serving::start(&runtime, bind_in_netns(&node, PORT).unwrap().into_vec(), &shared);
    let node_agent: SocketAddr = "[fd00:206::1]:7337".parse().unwrap();
    let dead_ip = "fd00:206::10".parse().unwrap();
    try_connect(&pod_b, node_agent, Duration::from_secs(5)).expect("the node's [::]:7337 listener");

    let mut dead = DeadIps::default();
    dead.executor_died(dead_ip, node_agent, APP_ID);
    assert_eq!(Nft::default().reconcile(&pod_b, &dead.pod_table(PORT)).unwrap(), Applied::Replaced);
    let before = shared.counters.connections_opened.load(Ordering::Relaxed);
    try_connect(&pod_b, SocketAddr::new(dead_ip, PORT), Duration::from_secs(5)).expect("DNATed to the node's agent");
    wait_for("the node listener to accept", || {
        (shared.counters.connections_opened.load(Ordering::Relaxed) == before + 1).then_some(())
    });
    serving.stop(&runtime);
}
