//! Pod network mode end to end, against the SIMULATED API server: the real agent binary runs
//! in a node's network namespace (`ip netns exec`, so it sees the host's `/proc` as a DaemonSet
//! with the host's `/proc` does), executor pods are namespaces on the node's bridge
//! (tests/podnet_support), and the simulated API server, listening inside the node too, lists
//! them as pods with their pod and node IPs.
//!
//! One scenario, in the order a cluster lives it: the agent adopts both executor pods (a
//! listener inside each); an executor registers with its own pod IP and another fetches from
//! it; the first pod dies (DELETED, then CNI DEL); its IP is redirected to the node's agent,
//! for a pod and for a hostNetwork client on the node; the agent is killed (-9) and restarted
//! and re-adopts the live pod and the dead IP; a new pod takes the dead IP, so its redirect goes
//! and the new pod is served; that pod ends while the agent is down, and the next agent still
//! redirects its IP; the app's driver ends, and its redirects go.
//!
//! Prints the time from the watch showing a pod's IP to its listener accepting.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{json, Value};

use crate::common::binary::Logs;
use crate::common::{fetch_map_0_0, TestClient, VectorLayout, APP_ID};
use crate::k8s_support::{driver_pod, executor_pod, kubeconfig, SimApi};
use crate::podnet_support::{in_netns, privileged, try_connect, Topology};

const PORT: u16 = 7337;
const NODE: &str = "node-a";
const NS: &str = "jobs";

/// An executor pod of the test app on the node, with its pod and node IPs, as the API shows it.
fn pod(name: &str, exec: &str, ip: std::net::IpAddr, topo: &Topology) -> Value {
    let mut pod = executor_pod(NS, name, APP_ID, exec, NODE, "Running");
    pod["status"]["podIP"] = json!(ip.to_string());
    pod["status"]["hostIP"] = json!(topo.node_ip().to_string());
    pod
}

/// The agent binary inside the node's namespace, in pod network mode.
fn start_agent(topo: &Topology, dir: &Path, layout: &VectorLayout, kubeconfig: &Path) -> Logs {
    let conf = dir.join("agent.conf");
    std::fs::write(&conf, "agent.network.mode pod\n").expect("write the config file");
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &topo.netns_name("node"), env!("CARGO_BIN_EXE_spark-shuffle-agent")])
        .args(["--port", &PORT.to_string(), "--metrics-port", "0", "--bind", "0.0.0.0", "--log-format", "json"])
        .arg("--config")
        .arg(&conf)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["--node-name", NODE]);
    for root in layout.roots() {
        cmd.arg("--root").arg(root);
    }
    cmd.env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("NODE_NAME")
        .env_remove("NODE_IP")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    Logs::start(cmd)
}

/// Waits for the agent's "listening inside the executor pod" line for `pod`; returns its millis.
fn adopted(logs: &mut Logs, pod: &str) -> u64 {
    let line = logs.wait_for_all(&["listening inside the executor pod", &format!("\"pod\":\"{NS}/{pod}\"")]);
    let value: Value = serde_json::from_str(&line).expect("a JSON log line");
    value["millis"].as_u64().expect("millis")
}

/// One block of map 0 fetched from `addr` by a client inside `from`, if it connects in 2 s.
fn fetch(from: &spark_shuffle_agent::podnet::Netns, addr: SocketAddr) -> Result<Bytes, String> {
    try_connect(from, addr, Duration::from_secs(2))?;
    in_netns(from, || async move {
        let mut client = TestClient::connect(addr).await;
        let (stream, _) = client.open_stream(&fetch_map_0_0()).await?;
        client.chunk(stream, 0).await
    })
}

/// Fetches until one succeeds (the redirect is installed a moment after the death is seen).
fn fetch_soon(from: &spark_shuffle_agent::podnet::Netns, addr: SocketAddr, what: &str) -> Bytes {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match fetch(from, addr) {
            Ok(bytes) => return bytes,
            Err(e) if Instant::now() > deadline => panic!("{what}: no fetch from {addr} within 20 s: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

#[test]
fn the_agent_serves_executor_pods_on_the_pod_network_and_their_ips_after_death_simulated_api() {
    if !privileged("podnet_agent") {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let tmp = tempfile::tempdir().expect("tempdir");
    let layout = VectorLayout::new();
    let mut topo = Topology::new("agent", 207);
    topo.pod("exec0", 10);
    topo.pod("exec1", 11);
    let (ip0, ip1) = (topo.pod_ip(10), topo.pod_ip(11));
    let (addr0, addr1) = (SocketAddr::new(ip0, PORT), SocketAddr::new(ip1, PORT));

    let node = topo.open("node");
    let api_listener = node.run(|| std::net::TcpListener::bind("127.0.0.1:0")).unwrap().expect("bind in the node");
    let api = runtime.block_on(SimApi::start_on(api_listener));
    api.apply(driver_pod(NS, "driver", APP_ID, "Running"));
    api.apply(pod("exec0", "0", ip0, &topo));
    api.apply(pod("exec1", "1", ip1, &topo));
    let kubeconfig = kubeconfig(tmp.path(), &api.url());
    let mut logs = start_agent(&topo, tmp.path(), &layout, &kubeconfig);
    logs.wait_for("\"message\":\"listening\"");
    let millis = [adopted(&mut logs, "exec0"), adopted(&mut logs, "exec1")];
    println!("podnet agent: watch showed the pod's IP -> in-pod listener open: {millis:?} ms (exec0, exec1)");

    // Live: the executor in exec0 registers with its own pod IP; exec1 fetches from it.
    let (pod0, pod1) = (topo.open("exec0"), topo.open("exec1"));
    let register = layout.exec0.register(APP_ID, "0");
    in_netns(&pod0, || async move {
        let mut client = TestClient::connect(addr0).await;
        assert_eq!(client.rpc_msg(&register).await, Ok(None), "RegisterExecutor from inside the pod");
    });
    let want = layout.map(0, 0).partitions[0].clone();
    assert_eq!(fetch(&pod1, addr0).expect("a fetch from exec0's in-pod listener"), want);
    try_connect(&pod1, addr1, Duration::from_secs(2)).expect("exec1's own listener accepts too");

    // A connection to exec0 opened while it lived: after the death it must fail at once, not hang
    // (the agent closes the dead pod's connections while its veth can still carry that; the nft
    // reset of flows the agent does not hold is tests/podnet_dead.rs).
    let old_flow = pod1.run(|| std::net::TcpStream::connect_timeout(&addr0, Duration::from_secs(2))).unwrap();
    let mut old_flow = old_flow.expect("a connection to exec0 before its death");

    // Death: the API deletes the pod, then CNI DEL takes its veth and namespace.
    assert!(api.delete(NS, "exec0"));
    logs.wait_for("its in-pod listener is closed");
    drop(pod0);
    topo.kill_pod("exec0");
    topo.delete_netns("exec0");
    assert_eq!(fetch_soon(&pod1, addr0, "a pod fetching a dead executor's blocks"), want);
    let reset = Instant::now();
    old_flow.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let sent = std::io::Write::write_all(&mut old_flow, &[0u8; 21]);
    let read = std::io::Read::read(&mut old_flow, &mut [0u8; 64]);
    let timed_out =
        |e: &std::io::Error| matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut);
    match (&sent, &read) {
        (Err(e), _) | (Ok(()), Err(e)) => assert!(!timed_out(e), "the old flow hung: {e}"),
        (Ok(()), Ok(n)) => panic!("the old flow to a dead pod answered {n} bytes"),
    }
    println!("podnet agent: a flow opened before the death failed in {:?} ({sent:?}, {read:?})", reset.elapsed());
    assert_eq!(fetch_soon(&node, addr0, "a hostNetwork client on the node"), want);

    // kill -9 and a new agent: the live pod is adopted again, the dead IP comes from the state dir.
    drop(logs);
    let mut logs = start_agent(&topo, tmp.path(), &layout, &kubeconfig);
    let started = logs.wait_for("pod network mode on");
    assert!(started.contains("\"dead_ips\":1"), "{started}");
    adopted(&mut logs, "exec1");
    assert_eq!(fetch_soon(&pod1, addr0, "the dead IP after a restart"), want);

    // A new pod gets the dead IP: the redirect goes, the new pod is adopted and served.
    topo.pod("exec2", 10);
    api.apply(pod("exec2", "2", ip0, &topo));
    logs.wait_for("a new executor pod has a dead executor's IP");
    adopted(&mut logs, "exec2");
    let pod2 = topo.open("exec2");
    // CNI ADD's gratuitous ARP (the bridge plugin sends one for the new pod's address), stood in
    // for as in the lab (spec/pod-network-lab/lab.sh): exec1 forgets the dead pod's MAC.
    crate::podnet_support::ip(&["-n", &topo.netns_name("exec1"), "neigh", "flush", "dev", "eth0"]);
    assert_eq!(fetch_soon(&pod1, addr0, "exec2's in-pod listener"), want, "the same agent serves the old blocks");
    let listing = in_pod_table(&topo, "exec1");
    assert!(!listing.contains(&ip0.to_string()), "the reused IP is no longer redirected:\n{listing}");

    // What an operator sees: `status` run inside the node, as `kubectl exec` would.
    let metrics = logs.wait_for("metrics listening");
    let metrics: Value = serde_json::from_str(&metrics).expect("a JSON log line");
    let port = metrics["addr"].as_str().and_then(|a| a.rsplit(':').next()).expect("the metrics port");
    // The controller publishes after its nft work for the new pod: poll, briefly.
    let status = || {
        let out = Command::new("ip")
            .args(["netns", "exec", &topo.netns_name("node"), env!("CARGO_BIN_EXE_spark-shuffle-agent"), "status"])
            .args(["--addr", &format!("127.0.0.1:{port}")])
            .output()
            .expect("run status");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let expected = "POD NETWORK (2 pods listened in, 0 pending; 0 dead IPs redirected";
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut text = status();
    while !text.contains(expected) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        text = status();
    }
    println!("{text}");
    assert!(text.contains("POD NETWORK (2 pods listened in, 0 pending; 0 dead IPs redirected"), "{text}");
    for (pod, ip) in [("exec1", ip1), ("exec2", ip0)] {
        assert!(text.lines().any(|l| l.contains(&format!("{NS}/{pod}")) && l.contains(&ip.to_string())), "{text}");
    }

    // A pod that ends while the agent is down: the restarted agent remembers it alive (the
    // state dir), misses it in the first list, and redirects its IP.
    drop(logs);
    assert!(api.delete(NS, "exec2"));
    drop(pod2);
    topo.kill_pod("exec2");
    topo.delete_netns("exec2");
    let mut logs = start_agent(&topo, tmp.path(), &layout, &kubeconfig);
    logs.wait_for_all(&["executor pod ended unseen", &format!("\"pod\":\"{NS}/exec2\"")]);
    assert_eq!(fetch_soon(&pod1, addr0, "a pod that ended while the agent was down"), want);

    // The driver ends: nobody will fetch the app's blocks again, so its redirects go.
    api.set_phase(NS, "driver", "Succeeded");
    logs.wait_for("application ended; its dead executor IPs are no longer redirected");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut table = in_pod_table(&topo, "exec1");
    while table.contains(&ip0.to_string()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50)); // the log line comes before the nft update
        table = in_pod_table(&topo, "exec1");
    }
    assert!(!table.contains(&ip0.to_string()), "no redirect left for the ended app:\n{table}");
    drop(logs);
}

/// The agent's nftables table inside a pod, as `nft list` prints it.
fn in_pod_table(topo: &Topology, pod: &str) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", &topo.netns_name(pod), "nft", "list", "table", "inet", "spark_shuffle_agent"])
        .output()
        .expect("nft list");
    String::from_utf8_lossy(&out.stdout).into_owned()
}
