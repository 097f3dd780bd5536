//! How responsive is the metrics port while the data path is saturated?
//!
//! An agent runs in process the way main runs it: the data path on a multi-thread runtime with
//! one worker per core, `/metrics` on [`AdminServer`] (its own thread, its own current-thread
//! runtime). Load clients (their own threads and runtimes) open streams of 64 chunks of 32 KiB
//! and fetch them pipelined, in a loop, over loopback: on a small machine this saturates every
//! core. Meanwhile a prober GETs `/metrics` every 10 ms and records how long each answer takes.
//!
//! Three runs: no load; load with the metrics server on its own thread (what the agent does);
//! load with the same server spawned on the data-path runtime instead (what the isolation
//! avoids). It prints latency percentiles and the data-path throughput of each; it asserts
//! nothing (timings belong here, not in tests).
//!
//! Run: `cargo bench --bench metrics_under_load` (env LOAD_CLIENTS, PROBES to change the load).

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use spark_shuffle_agent::admin::{Admin, AdminServer, Health};
use spark_shuffle_agent::config::Config;
use spark_shuffle_agent::protocol::{
    BlockTransferMessage, ExecutorShuffleInfo, FrameCodec, Inbound, Message, StreamChunkId,
};
use spark_shuffle_agent::registry::{Registry, Roots};
use spark_shuffle_agent::server::{self, ServerSource, Shared};
use spark_shuffle_agent::store::{ExecutorDirs, Store};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;

const APP: &str = "app-bench";
const PARTITIONS: usize = 64;
const PARTITION_BYTES: usize = 32 << 10;

#[derive(Clone, Copy, PartialEq)]
enum Placement {
    OwnThread,
    DataRuntime,
}

fn main() {
    let clients = env_usize("LOAD_CLIENTS", 16);
    let probes = env_usize("PROBES", 300);
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!("metrics_under_load: {cores} cores, {clients} load clients, {probes} probes every 10 ms");
    println!("{:<44} {:>8} {:>8} {:>8} {:>8} {:>12}", "run", "p50 ms", "p90 ms", "p99 ms", "max ms", "served MB/s");
    for (name, placement, load) in [
        ("no load, metrics on own thread", Placement::OwnThread, false),
        ("saturated, metrics on own thread (agent)", Placement::OwnThread, true),
        ("saturated, metrics on the data runtime", Placement::DataRuntime, true),
    ] {
        let r = run(placement, if load { clients } else { 0 }, probes, cores);
        println!(
            "{name:<44} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>12.0}",
            r.percentile(0.50),
            r.percentile(0.90),
            r.percentile(0.99),
            r.percentile(1.0),
            r.served_mb_s
        );
    }
}

struct Outcome {
    latencies_ms: Vec<f64>,
    served_mb_s: f64,
}

impl Outcome {
    fn percentile(&self, q: f64) -> f64 {
        let mut v = self.latencies_ms.clone();
        v.sort_by(f64::total_cmp);
        let i = ((v.len() as f64 - 1.0) * q).round() as usize;
        v.get(i).copied().unwrap_or(f64::NAN)
    }
}

fn run(placement: Placement, clients: usize, probes: usize, cores: usize) -> Outcome {
    let root = tempfile::tempdir().expect("temp dir");
    let root_path = std::fs::canonicalize(root.path()).expect("canonical root");
    let local_dir = root_path.join("blockmgr-bench");
    write_shuffle(&local_dir);

    let data = tokio::runtime::Builder::new_multi_thread().worker_threads(cores).enable_all().build().expect("runtime");
    let health = Health::new();
    health.set_recovered();
    let metrics = Arc::new(Admin::new(health.clone()));
    let registry = Arc::new(Registry::in_memory(Roots::new(std::slice::from_ref(&root_path)).expect("roots")));
    let settings = Config::default().server_settings();
    let shared = Arc::new(Shared::new(settings, Arc::clone(&registry), Arc::new(Store::new(100 << 20))));
    metrics.exporter.add(ServerSource::new(Arc::clone(&shared)));
    let shutdown = CancellationToken::new();
    let listener = data.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind");
    let shuffle = listener.local_addr().expect("addr");
    data.spawn(server::run(listener, Arc::clone(&shared), shutdown.clone(), Duration::from_secs(1), None));
    health.set_listening();
    let http_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind metrics");
    let http = http_listener.local_addr().expect("addr");
    let _own = match placement {
        Placement::OwnThread => Some(AdminServer::start(http_listener, Arc::clone(&metrics)).expect("metrics server")),
        Placement::DataRuntime => {
            http_listener.set_nonblocking(true).expect("nonblocking");
            let listener = {
                let _enter = data.enter();
                tokio::net::TcpListener::from_std(http_listener).expect("listener")
            };
            data.spawn(spark_shuffle_agent::admin::http::serve(listener, Arc::clone(&metrics), shutdown.clone()));
            None
        }
    };

    let stop = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = (0..clients)
        .map(|i| {
            let stop = Arc::clone(&stop);
            let dir = local_dir.clone();
            std::thread::spawn(move || client_loop(shuffle, &dir, i, &stop))
        })
        .collect();
    // Let the load reach a steady state before probing.
    std::thread::sleep(Duration::from_millis(if clients > 0 { 1000 } else { 0 }));
    let bytes_before = shared.counters.chunk_bytes_served.load(Ordering::Relaxed);
    let started = Instant::now();
    let mut latencies_ms = Vec::with_capacity(probes);
    for _ in 0..probes {
        let t = Instant::now();
        get_metrics(http);
        latencies_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        std::thread::sleep(Duration::from_millis(10));
    }
    let served = shared.counters.chunk_bytes_served.load(Ordering::Relaxed) - bytes_before;
    let served_mb_s = served as f64 / started.elapsed().as_secs_f64() / 1e6;
    stop.store(true, Ordering::Relaxed);
    for handle in load {
        let _ = handle.join();
    }
    shutdown.cancel();
    data.shutdown_timeout(Duration::from_secs(2));
    Outcome { latencies_ms, served_mb_s }
}

fn get_metrics(addr: SocketAddr) {
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to /metrics");
    stream.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n").expect("send");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).expect("read /metrics");
    assert!(response.starts_with(b"HTTP/1.1 200"), "unexpected answer");
}

/// One map output of `PARTITIONS` partitions, at the paths Spark would use.
fn write_shuffle(local_dir: &Path) {
    std::fs::create_dir_all(local_dir).expect("local dir");
    let canonical = vec![local_dir.to_path_buf()];
    let dirs = ExecutorDirs::new(vec![local_dir.display().to_string()], 8, canonical).expect("dirs");
    let offsets: Vec<u8> = (0..=PARTITIONS).flat_map(|i| ((i * PARTITION_BYTES) as i64).to_be_bytes()).collect();
    for (name, bytes) in
        [("shuffle_0_0_0.index", offsets), ("shuffle_0_0_0.data", vec![7u8; PARTITIONS * PARTITION_BYTES])]
    {
        let path = dirs.file_path(name);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("sub dir");
        std::fs::write(path, bytes).expect("write");
    }
}

/// Registers, then fetches the whole map output again and again, all chunks pipelined.
fn client_loop(addr: SocketAddr, local_dir: &Path, i: usize, stop: &AtomicBool) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("client runtime");
    rt.block_on(async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let mut codec = FrameCodec::new(256 << 20);
        let mut buf = BytesMut::with_capacity(1 << 20);
        let register = BlockTransferMessage::RegisterExecutor {
            app_id: APP.into(),
            exec_id: format!("{i}"),
            info: ExecutorShuffleInfo {
                local_dirs: vec![local_dir.display().to_string()],
                sub_dirs_per_local_dir: 8,
                shuffle_manager: "org.apache.spark.shuffle.sort.SortShuffleManager".into(),
            },
        };
        rpc(&mut stream, &mut codec, &mut buf, &register).await;
        let fetch = BlockTransferMessage::FetchShuffleBlocks {
            app_id: APP.into(),
            exec_id: format!("{i}"),
            shuffle_id: 0,
            map_ids: vec![0],
            reduce_ids: vec![(0..PARTITIONS as i32).collect()],
            batch_fetch_enabled: false,
        };
        while !stop.load(Ordering::Relaxed) {
            let reply = rpc(&mut stream, &mut codec, &mut buf, &fetch).await;
            let Ok(BlockTransferMessage::StreamHandle { stream_id, num_chunks }) = BlockTransferMessage::decode(&reply)
            else {
                panic!("expected a stream handle")
            };
            let mut out = BytesMut::new();
            for chunk_index in 0..num_chunks {
                Message::ChunkFetchRequest(StreamChunkId { stream_id, chunk_index }).encode(&mut out);
            }
            stream.write_all(&out).await.expect("send");
            for _ in 0..num_chunks {
                match next(&mut stream, &mut codec, &mut buf).await {
                    Message::ChunkFetchSuccess { .. } => {}
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
    });
}

async fn rpc(
    stream: &mut tokio::net::TcpStream,
    codec: &mut FrameCodec,
    buf: &mut BytesMut,
    msg: &BlockTransferMessage,
) -> bytes::Bytes {
    let mut out = BytesMut::new();
    Message::RpcRequest { request_id: 1, body: msg.encode() }.encode(&mut out);
    stream.write_all(&out).await.expect("send");
    match next(stream, codec, buf).await {
        Message::RpcResponse { body, .. } => body,
        other => panic!("unexpected {other:?}"),
    }
}

async fn next(stream: &mut tokio::net::TcpStream, codec: &mut FrameCodec, buf: &mut BytesMut) -> Message {
    loop {
        if let Some(Inbound::Message(m)) = codec.decode(buf).expect("a frame") {
            return m;
        }
        if buf.capacity() - buf.len() < 64 << 10 {
            buf.reserve(1 << 20);
        }
        assert!(stream.read_buf(buf).await.expect("read") > 0, "the agent closed the connection");
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}
