//! Live phase, in real network namespaces (tests/podnet_support): the agent finds an executor
//! pod's namespace from `/proc` by the pod's IP, opens its listener inside it, and serves it
//! with the real accept loop running in the test's own namespace; an executor in the pod
//! registers with its own pod IP and another pod fetches its blocks.
//!
//! Prints the time from "the pod's namespace has its IP" to "the in-pod listener accepts".

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::{fetch_map_0_0, TestClient, VectorLayout, APP_ID};
use crate::podnet_support::{in_netns, privileged, try_connect, wait_for, Serving, Topology};
use spark_shuffle_agent::podnet::gate::wait_until_accepting;
use spark_shuffle_agent::podnet::{bind_in_netns, find_pod_netns, NetnsId};

const PORT: u16 = 7337;

#[test]
fn an_executor_pod_found_through_proc_is_served_by_a_listener_inside_its_namespace() {
    if !privileged("podnet_live") {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let layout = VectorLayout::new();
    let (registry, store) = (crate::podnet_support::registry(&layout.roots()), crate::podnet_support::store());
    let shared = crate::podnet_support::shared(&registry, &store);
    let own = NetnsId::of_path(Path::new("/proc/self/ns/net")).unwrap();

    let mut topo = Topology::new("live", 201);
    topo.pod("podb", 11);
    let pod_a_ip = topo.pod_ip(10);
    let pod_a_addr = SocketAddr::new(pod_a_ip, PORT);
    let pod_b = topo.open("podb");
    topo.sandbox("poda");
    assert!(
        find_pod_netns(Path::new("/proc"), pod_a_ip, Some(own)).unwrap().is_none(),
        "a sandbox without the IP yet is not found"
    );

    // The executor pod's init container: running in the sandbox before the agent has bound
    // anything there (the unit tests in src/podnet/gate.rs show it waits through refusals).
    let (gate_ns, (started_tx, started_rx)) = (topo.open("poda"), std::sync::mpsc::channel());
    let gate = std::thread::spawn(move || {
        gate_ns
            .run(|| {
                started_tx.send(()).unwrap();
                wait_until_accepting("127.0.0.1:7337".parse().unwrap(), Duration::from_secs(20))
            })
            .unwrap()
    });
    started_rx.recv().unwrap();

    // CNI ADD's last step: from here on the pod has its IP, and the clock runs.
    topo.give_ip("poda", 10);
    let has_ip = Instant::now();
    let netns = wait_for("poda's namespace to show up in /proc", || {
        find_pod_netns(Path::new("/proc"), pod_a_ip, Some(own)).expect("scan /proc")
    });
    let found = Instant::now();
    assert_eq!(netns.id(), NetnsId::of_path(&topo.netns_path("poda")).unwrap(), "the pod's own namespace");
    assert_eq!(
        try_connect(&pod_b, pod_a_addr, Duration::from_secs(5)).map_err(|e| e.contains("refused")),
        Err(true),
        "the stock problem: nothing listens on the pod's IP yet"
    );
    let bind_start = Instant::now();
    let listeners = bind_in_netns(&netns, PORT).expect("bind inside the pod");
    let bound = Instant::now();
    assert_eq!(
        NetnsId::of_path(Path::new("/proc/thread-self/ns/net")).unwrap(),
        own,
        "binding in the pod left the caller's thread where it was"
    );
    assert!(listeners.v6.is_some(), "the pod has IPv6 (::1), so [::]:{PORT} is open too");
    let serving = Serving::start(&runtime, listeners.into_vec(), &shared);
    try_connect(&pod_b, pod_a_addr, Duration::from_secs(5)).expect("the in-pod listener accepts");
    let accepting = Instant::now();
    let gate_waited = gate.join().unwrap().expect("the init container's gate opens once the agent listens");
    println!(
        "podnet timing: pod has IP -> in-pod listener accepting: {:?} (scan+verify {:?}, bind {:?}, first connect {:?}; \
         includes the poll loop and one refused connect)",
        accepting - has_ip,
        found - has_ip,
        bound - bind_start,
        accepting - bound,
    );
    println!("podnet gate: the init container waited {gate_waited:?}");

    // The executor in poda registers with its own pod IP, as Spark does.
    let pod_a = topo.open("poda");
    let exec0 = layout.exec0.register(APP_ID, "0");
    in_netns(&pod_a, || async move {
        let mut client = TestClient::connect(pod_a_addr).await;
        assert_eq!(client.rpc_msg(&exec0).await, Ok(None), "RegisterExecutor from inside the pod");
    });
    // A reducer in podb fetches from poda's IP: the same agent serves it.
    let want = layout.map(0, 0).partitions[0].clone();
    let got = in_netns(&pod_b, || async move {
        let mut client = TestClient::connect(pod_a_addr).await;
        let (stream, _) = client.open_stream(&fetch_map_0_0()).await.expect("StreamHandle");
        client.chunk(stream, 0).await.expect("chunk")
    });
    assert_eq!(got, want);
    assert!(shared.registry.executor(APP_ID, "0").is_some());
    // Over the v6 listener too, from inside the pod (the only IPv6 address there is ::1).
    in_netns(&pod_a, || async move {
        let mut client = TestClient::connect("[::1]:7337".parse().unwrap()).await;
        client.open_stream(&fetch_map_0_0()).await.expect("StreamHandle over [::]:7337");
    });
    serving.stop(&runtime);
}

#[test]
fn a_pod_ip_nobody_holds_finds_nothing_and_each_pod_finds_its_own_namespace() {
    if !privileged("podnet_live") {
        return;
    }
    let mut topo = Topology::new("find", 202);
    topo.pod("poda", 10);
    topo.pod("podb", 11);
    let own = NetnsId::of_path(Path::new("/proc/self/ns/net")).unwrap();
    for (pod, n) in [("poda", 10), ("podb", 11)] {
        let netns = wait_for(pod, || find_pod_netns(Path::new("/proc"), topo.pod_ip(n), Some(own)).unwrap());
        assert_eq!(netns.id(), NetnsId::of_path(&topo.netns_path(pod)).unwrap(), "{pod}");
    }
    crate::podnet_support::ip(&[
        "-n",
        &topo.netns_name("podb"),
        "addr",
        "add",
        "fd00:202::11/64",
        "dev",
        "eth0",
        "nodad",
    ]);
    let by_v6 = find_pod_netns(Path::new("/proc"), "fd00:202::11".parse().unwrap(), Some(own)).unwrap();
    assert_eq!(by_v6.map(|n| n.id()), Some(NetnsId::of_path(&topo.netns_path("podb")).unwrap()), "by IPv6 address");
    assert!(find_pod_netns(Path::new("/proc"), topo.pod_ip(99), Some(own)).unwrap().is_none());
    assert!(
        find_pod_netns(Path::new("/proc"), topo.node_ip(), Some(own)).unwrap().is_none(),
        "the node namespace has no process in it, so /proc cannot name it"
    );
}
