//! The metrics port against real traffic: an agent in process, built as the binary builds it
//! (`app::build` on `127.0.0.1:0`, temp dirs, real shuffle files in Spark's layout);
//! a client registers, fetches, fails, sends a bad frame; then `/metrics` and `/status` must
//! show exactly that. Readiness is checked over HTTP as main drives it. Nothing here asserts a
//! duration; every wait is a poll with a timeout.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::common::{start_agent_with, test_config, wait_until, ExecutorFiles, TestAgent, TestClient, WAIT};
use bytes::Bytes;
use spark_shuffle_agent::admin::{status_command as status, Admin, AdminServer, Health};
use spark_shuffle_agent::config::Config;
use spark_shuffle_agent::disk_usage::walk_apps;
use spark_shuffle_agent::protocol::{BlockTransferMessage, Message};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const APP: &str = "app-20260101000000-0042";

/// An agent built as the binary builds it, and the addresses and parts the tests look at.
struct Node {
    agent: TestAgent,
    shuffle: SocketAddr,
    http: SocketAddr,
}

impl Node {
    fn render(&self) -> String {
        self.agent.agent().admin().exporter.render()
    }

    /// Walks the app dirs now, exactly as the disk thread does every minute.
    fn walk_disk(&self) {
        let agent = self.agent.agent();
        agent.disk_usage().set_app_usage(walk_apps(&self.agent.shared.registry));
    }
}

async fn start_node(roots: &[PathBuf], config: Config) -> Node {
    let agent = start_agent_with(roots, config).await;
    let (shuffle, http) = (agent.addr, agent.agent().admin_addr());
    Node { agent, shuffle, http }
}

/// A plain HTTP/1.1 request: (status code, body).
async fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect to the metrics port");
        let request = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("send the request");
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.expect("read the response");
        response
    };
    let response = tokio::time::timeout(WAIT, exchange).await.expect("the metrics port answers in time");
    let text = String::from_utf8(response).expect("utf-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
    let code = head.split(' ').nth(1).and_then(|c| c.parse().ok()).expect("a status code");
    (code, body.to_string())
}

/// Samples of a Prometheus text exposition: `name{labels}` (labels as written) -> value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("`series value`");
            (series.to_string(), value.parse::<f64>().expect("a numeric value"))
        })
        .collect()
}

async fn scrape(node: &Node) -> BTreeMap<String, f64> {
    let (code, body) = http(node.http, "GET", "/metrics").await;
    assert_eq!(code, 200);
    samples(&body)
}

fn value(samples: &BTreeMap<String, f64>, series: &str) -> f64 {
    *samples.get(series).unwrap_or_else(|| panic!("{series} is not exported; have {:?}", samples.keys()))
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).expect("written file").len()
}

#[tokio::test]
async fn counters_and_histograms_move_with_real_traffic_and_errors() {
    let root = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let root_path = std::fs::canonicalize(root.path()).unwrap();
    let node = start_node(std::slice::from_ref(&root_path), test_config()).await;
    let files = ExecutorFiles::new(&[root_path.join("blockmgr-a"), root_path.join("blockmgr-b")], 4);
    let map0 = files.write_map_output(0, 0, &[100, 200, 0]);
    let map1 = files.write_map_output(0, 1, &[50, 60, 70]);

    let before = scrape(&node).await;
    assert_eq!(value(&before, "spark_shuffle_agent_chunks_transferred_total"), 0.0);
    assert_eq!(value(&before, "spark_shuffle_agent_ready"), 1.0);

    let mut client = TestClient::connect(node.shuffle).await;
    client.rpc_msg(&files.register(APP, "1")).await.expect("registration accepted");
    let refused = ExecutorFiles::new(&[outside.path().join("blockmgr-x")], 4);
    let err = client.rpc_msg(&refused.register(APP, "2")).await.expect_err("dirs outside the roots are refused");
    assert!(err.contains("IllegalArgumentException"), "{err}");

    // Three chunks of single blocks, then one batch chunk of three blocks.
    let fetch = BlockTransferMessage::FetchShuffleBlocks {
        app_id: APP.into(),
        exec_id: "1".into(),
        shuffle_id: 0,
        map_ids: vec![0, 1],
        reduce_ids: vec![vec![0, 1], vec![2]],
        batch_fetch_enabled: false,
    };
    let (stream_id, chunks) = client.open_stream(&fetch).await.expect("a stream handle");
    assert_eq!(chunks, 3);
    for i in 0..chunks {
        client.chunk(stream_id, i).await.expect("chunk served");
    }
    let batch = BlockTransferMessage::FetchShuffleBlocks {
        app_id: APP.into(),
        exec_id: "1".into(),
        shuffle_id: 0,
        map_ids: vec![1],
        reduce_ids: vec![vec![0, 3]],
        batch_fetch_enabled: true,
    };
    let (batch_id, _) = client.open_stream(&batch).await.expect("a stream handle");
    assert_eq!(client.chunk(batch_id, 0).await.expect("batch chunk").len(), 180);
    // A fetch from an executor that never registered: the stream opens, the chunk fails.
    let unknown = BlockTransferMessage::FetchShuffleBlocks {
        app_id: APP.into(),
        exec_id: "9".into(),
        shuffle_id: 0,
        map_ids: vec![0],
        reduce_ids: vec![vec![0]],
        batch_fetch_enabled: false,
    };
    let (unknown_id, _) = client.open_stream(&unknown).await.expect("a stream handle");
    client.chunk(unknown_id, 0).await.expect_err("an unregistered executor's chunk fails");

    // A frame whose length is negative: the agent closes that connection without a reply.
    let mut garbage = TestClient::connect(node.shuffle).await;
    garbage.send_raw(&(-5i64).to_be_bytes()).await;
    garbage.send_raw(&[3u8; 16]).await;
    garbage.expect_closed_silently().await;

    // Chunks: map 0 reduces 0 and 1 (100 + 200), map 1 reduce 2 (70), the batch of map 1 (50 + 60 + 70).
    let block_bytes = (100 + 200 + 70 + 50 + 60 + 70) as f64;
    let mut now = scrape(&node).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    // The bad frame is counted when its connection task ends, just after the socket closes; a
    // chunk leaves chunks_in_flight just after its last byte was written (the agent runs on
    // threads of its own, so the client can see the bytes first).
    while value(&now, r#"spark_shuffle_agent_errors_total{kind="bad_frame"}"#) < 1.0
        || value(&now, "spark_shuffle_agent_chunks_in_flight") != 0.0
    {
        assert!(tokio::time::Instant::now() < deadline, "the bad frame was never counted, or chunks stay in flight");
        tokio::time::sleep(Duration::from_millis(5)).await;
        now = scrape(&node).await;
    }
    assert_eq!(value(&now, "spark_shuffle_agent_chunks_transferred_total"), 4.0);
    assert_eq!(value(&now, "spark_shuffle_agent_blocks_transferred_total"), 6.0, "a batch chunk counts its range");
    assert_eq!(value(&now, "spark_shuffle_agent_block_bytes_transferred_total"), block_bytes);
    assert!(value(&now, "spark_shuffle_agent_bytes_written_total") > block_bytes, "headers and replies too");
    assert_eq!(value(&now, r#"spark_shuffle_agent_errors_total{kind="chunk_failure"}"#), 1.0);
    assert_eq!(value(&now, r#"spark_shuffle_agent_errors_total{kind="rpc_failure"}"#), 1.0);
    assert_eq!(value(&now, r#"spark_shuffle_agent_errors_total{kind="io"}"#), 0.0);
    assert_eq!(value(&now, "spark_shuffle_agent_registered_executors"), 1.0);
    assert_eq!(value(&now, "spark_shuffle_agent_registered_apps"), 1.0);
    assert_eq!(value(&now, "spark_shuffle_agent_connections_total"), 2.0);
    assert_eq!(value(&now, "spark_shuffle_agent_active_connections"), 1.0, "the fetching client is still open");
    assert!(value(&now, "spark_shuffle_agent_streams_open") >= 1.0, "the failed stream is not read to its end");
    assert_eq!(value(&now, "spark_shuffle_agent_chunks_in_flight"), 0.0);
    // Histograms: both registrations (one refused) and all three opens are timed, each of the
    // four served chunks once, and every observation lands in the +Inf bucket.
    assert_eq!(value(&now, "spark_shuffle_agent_register_executor_request_latency_seconds_count"), 2.0);
    assert_eq!(value(&now, "spark_shuffle_agent_open_block_request_latency_seconds_count"), 3.0);
    assert_eq!(value(&now, "spark_shuffle_agent_fetch_latency_seconds_count"), 4.0);
    assert_eq!(value(&now, r#"spark_shuffle_agent_fetch_latency_seconds_bucket{le="+Inf"}"#), 4.0);
    assert!(value(&now, "spark_shuffle_agent_fetch_latency_seconds_sum") > 0.0);
    assert_eq!(value(&now, "spark_shuffle_agent_index_cache_entries"), 2.0, "both index files were read once");

    // The disk thread took statvfs of the root at start; its first walk came before the
    // registration and the next is a minute away, so walk here exactly as the thread does.
    node.walk_disk();
    let expected_disk = [&map0.index, &map0.data, &map1.index, &map1.data].iter().map(|p| file_len(p)).sum::<u64>();
    let root_series = format!(r#"spark_shuffle_agent_root_free_bytes{{root="{}"}}"#, root_path.display());
    let mut now = scrape(&node).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while !now.contains_key(&root_series) {
        assert!(tokio::time::Instant::now() < deadline, "the disk thread never measured the root: {now:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
        now = scrape(&node).await;
    }
    assert!(value(&now, &root_series) > 0.0);
    assert_eq!(value(&now, &format!(r#"spark_shuffle_agent_app_disk_bytes{{app="{APP}"}}"#)), expected_disk as f64);
    assert_eq!(value(&now, &format!(r#"spark_shuffle_agent_app_disk_files{{app="{APP}"}}"#)), 4.0);
    assert!(value(&now, "spark_shuffle_agent_disk_scan_timestamp_seconds") > 0.0);

    // /status says the same, and the status command's tables show it.
    let report = status::fetch(&node.http.to_string()).await.expect("/status answers");
    assert!(report.ready);
    assert_eq!(report.registered_executors, 1);
    assert_eq!(report.apps.len(), 1);
    assert_eq!(report.apps[0].app_id, APP);
    assert_eq!(report.apps[0].executors, 1);
    assert_eq!(report.apps[0].disk_bytes, Some(expected_disk));
    assert_eq!(report.traffic.chunks_total, 4);
    assert_eq!(report.errors["bad_frame"], 1);
    assert_eq!(report.shuffle_addr, Some(node.shuffle.to_string()));
    let text = status::render(&report, &node.http.to_string());
    assert!(text.contains(APP) && text.contains("READY"), "{text}");

    drop(client);
    wait_until("the closed connection's streams and the connection are gone", || {
        let text = node.render();
        text.contains("spark_shuffle_agent_streams_open 0") && text.contains("spark_shuffle_agent_active_connections 0")
    })
    .await;
}

#[tokio::test]
async fn an_idle_connection_closed_by_the_agent_counts_as_idle_timeout() {
    let root = tempfile::tempdir().unwrap();
    let settings = Config { idle_timeout: Duration::from_millis(50), ..test_config() };
    let node = start_node(&[root.path().to_path_buf()], settings).await;
    let mut idle = TestClient::connect(node.shuffle).await;
    idle.expect_closed_silently().await;
    wait_until("the idle close is counted", || {
        node.render().contains(r#"spark_shuffle_agent_errors_total{kind="idle_timeout"} 1"#)
    })
    .await;
}

#[tokio::test]
async fn readiness_follows_recovery_the_listener_and_the_drain() {
    let health = Health::new();
    let admin = Arc::new(Admin::new(health.clone()));
    let server = AdminServer::start(std::net::TcpListener::bind("127.0.0.1:0").unwrap(), admin).unwrap();
    let addr = server.local_addr();
    assert_eq!(http(addr, "GET", "/readyz").await, (503, "not ready: recovering\n".into()));
    assert_eq!(http(addr, "GET", "/healthz").await, (200, "ok\n".into()), "recovering is alive");
    health.set_recovered();
    assert_eq!(http(addr, "GET", "/readyz").await, (503, "not ready: binding\n".into()));
    health.set_listening();
    assert_eq!(http(addr, "GET", "/readyz").await, (200, "ready\n".into()));
    let (_, text) = http(addr, "GET", "/metrics").await;
    assert!(text.contains("spark_shuffle_agent_ready 1"));
    health.set_draining();
    assert_eq!(http(addr, "GET", "/readyz").await, (503, "not ready: draining\n".into()));
    assert_eq!(http(addr, "GET", "/healthz").await.0, 200, "a draining agent is not restarted");
    server.stop();
}

#[tokio::test]
async fn unknown_paths_and_methods_get_http_errors() {
    let server =
        AdminServer::start(std::net::TcpListener::bind("127.0.0.1:0").unwrap(), Arc::new(Admin::default())).unwrap();
    let addr = server.local_addr();
    assert_eq!(http(addr, "GET", "/nope").await.0, 404);
    assert_eq!(http(addr, "POST", "/metrics").await.0, 405);
    assert_eq!(http(addr, "HEAD", "/healthz").await, (200, String::new()), "HEAD has no body");
    assert_eq!(http(addr, "GET", "/metrics?name[]=x").await.0, 200, "a query string is ignored");
    // Garbage instead of HTTP is dropped; the server keeps serving.
    let mut junk = tokio::net::TcpStream::connect(addr).await.unwrap();
    junk.write_all(b"\x16\x03\x01 not http\r\n\r\n").await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(WAIT, junk.read_to_end(&mut rest)).await.expect("closed in time");
    assert_eq!(http(addr, "GET", "/healthz").await.0, 200);
}

/// The isolation claim, without a clock: this test's runtime has one thread, and the test
/// blocks it with a synchronous HTTP request. A metrics server running on the caller's runtime
/// could never answer (the request would hit the socket timeout and fail); one on its own
/// thread answers.
#[tokio::test(flavor = "current_thread")]
async fn the_metrics_port_answers_while_the_data_path_runtime_is_blocked() {
    use std::io::{Read, Write};
    let health = Health::new();
    health.set_recovered();
    health.set_listening();
    let admin = Arc::new(Admin::new(health.clone()));
    let server = AdminServer::start(std::net::TcpListener::bind("127.0.0.1:0").unwrap(), admin).unwrap();
    let mut stream = std::net::TcpStream::connect(server.local_addr()).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("answered while this runtime's only thread is blocked");
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    assert!(response.contains("spark_shuffle_agent_ready 1"));
}

#[tokio::test]
async fn an_rpc_that_is_not_a_shuffle_message_is_an_rpc_failure() {
    let root = tempfile::tempdir().unwrap();
    let node = start_node(&[root.path().to_path_buf()], test_config()).await;
    let mut client = TestClient::connect(node.shuffle).await;
    let request_id = client.request_id();
    client.send(&Message::RpcRequest { request_id, body: Bytes::from_static(&[99]) }).await;
    assert!(matches!(client.recv_message().await, Message::RpcFailure { .. }));
    wait_until("the failure is counted", || {
        node.render().contains(r#"spark_shuffle_agent_errors_total{kind="rpc_failure"} 1"#)
    })
    .await;
}
