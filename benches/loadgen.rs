//! Load generator: many connections, each pipelining whole FetchShuffleBlocks streams, against a
//! real agent process. It pushes the server past what Spark's Java client can (the client's own
//! per-block cost dominates there), so the agent's own cost per block shows.
//!
//! ```text
//! cargo bench --bench loadgen -- [--profile 4k|4k-reducer|mixed|1m] [--connections 16] [--seconds 10]
//!     [--agent target/release/spark-shuffle-agent] [--server-cpu 0] [--client-cpu 1] [--register-probe]
//!     [--diagnose N]
//! ```
//!
//! It writes the profile's shuffle files under a temp root, starts the agent pinned to
//! `--server-cpu` (taskset), pins itself to `--client-cpu`, registers one executor, runs for
//! `--seconds` (bounded by a call count too), and prints one line per metric: blocks/s, MB/s,
//! per-chunk latency p50/p99, server CPU per block and per GB, server peak RSS. Loopback only.
//!
//! Calls of `4k`, `mixed` and `1m` name every block of one map output. `4k-reducer` has the shape of
//! Spark's usual reducer fetch: one reduce partition from each of 64 map outputs per call, so the
//! server resolves a map output (index, path, open file) for every block it sends.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use spark_shuffle_agent::protocol::{
    BlockTransferMessage, ExecutorShuffleInfo, FrameCodec, Inbound, Message, StreamChunkId,
};
use spark_shuffle_agent::store::ExecutorDirs;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::Decoder;

const APP: &str = "app-loadgen-0000";
/// Upper bound of fetch calls per connection, whatever `--seconds` says.
const MAX_CALLS_PER_CONNECTION: u64 = 5_000_000;

struct Args {
    profile: String,
    connections: usize,
    seconds: f64,
    agent: PathBuf,
    server_cpu: String,
    client_cpu: usize,
    /// Also time RegisterExecutor on fresh connections (as executors register) during the load.
    register_probe: bool,
    /// Connections that send DiagnoseCorruption back to back during the load (each recomputes
    /// a block's checksum from the data file), to see whether they delay registrations.
    diagnose: usize,
}

fn args() -> Args {
    let mut a = Args {
        profile: "4k".into(),
        connections: 16,
        seconds: 10.0,
        agent: PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target/release/spark-shuffle-agent")),
        server_cpu: "0".into(),
        client_cpu: 1,
        register_probe: false,
        diagnose: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--profile" => a.profile = value(),
            "--connections" => a.connections = value().parse().expect("--connections"),
            "--seconds" => a.seconds = value().parse().expect("--seconds"),
            "--agent" => a.agent = PathBuf::from(value()),
            "--server-cpu" => a.server_cpu = value(),
            "--client-cpu" => a.client_cpu = value().parse().expect("--client-cpu"),
            "--register-probe" => a.register_probe = true,
            "--diagnose" => a.diagnose = value().parse().expect("--diagnose"),
            "--bench" => {} // passed by `cargo bench`
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

/// Which blocks one fetch call names.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Shape {
    /// Every reduce of one map output.
    Map,
    /// One reduce of every map output (the same reduce for all of them).
    Reducer,
}

/// What the connections fetch: the reduce count of each map output and the shape of a call.
struct Workload {
    reduces: Vec<usize>,
    shape: Shape,
}

/// The call shape of a profile.
fn shape(name: &str) -> Shape {
    if name.ends_with("-reducer") {
        Shape::Reducer
    } else {
        Shape::Map
    }
}

/// Block sizes of each map output: `sizes[map][reduce]`.
fn profile(name: &str) -> Vec<Vec<u64>> {
    let mut seed = 0x9e3779b97f4a7c15u64;
    let mut uniform = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed >> 11) as f64 / (1u64 << 53) as f64
    };
    match name {
        "4k" => vec![vec![4096; 64]; 32],
        "4k-reducer" => vec![vec![4096; 64]; 64],
        "1m" => vec![vec![1 << 20; 16]; 16],
        "mixed" => (0..32)
            .map(|_| {
                (0..32)
                    .map(|_| {
                        // Lognormal, median 32 KiB, sigma 1 (Box-Muller), clipped to [64 B, 8 MiB].
                        let z =
                            (-2.0 * uniform().max(1e-12).ln()).sqrt() * (2.0 * std::f64::consts::PI * uniform()).cos();
                        ((32768f64).ln() + z).exp().clamp(64.0, (8 << 20) as f64) as u64
                    })
                    .collect()
            })
            .collect(),
        other => panic!("unknown profile {other}"),
    }
}

fn write_files(dirs: &ExecutorDirs, sizes: &[Vec<u64>]) {
    for (map, parts) in sizes.iter().enumerate() {
        let mut offsets = vec![0u64];
        for s in parts {
            offsets.push(offsets.last().copied().unwrap_or(0) + s);
        }
        let write = |name: String, bytes: &[u8]| {
            let path = dirs.file_path(&name);
            std::fs::create_dir_all(path.parent().expect("subdir")).expect("mkdir");
            std::fs::write(path, bytes).expect("write");
        };
        let index: Vec<u8> = offsets.iter().flat_map(|o| o.to_be_bytes()).collect();
        let data: Vec<u8> = (0..*offsets.last().unwrap_or(&0)).map(|i| (i * 7 + map as u64) as u8).collect();
        write(format!("shuffle_0_{map}_0.data"), &data);
        write(format!("shuffle_0_{map}_0.index"), &index);
        // Zeros: a DiagnoseCorruption still reads and checksums the block, then says disk issue.
        write(format!("shuffle_0_{map}_0.checksum.ADLER32"), &vec![0u8; 8 * parts.len()]);
    }
}

/// The agent process and the addresses its log announced: the shuffle port and the metrics port.
fn start_agent(agent: &Path, root: &Path, state: &Path, cpu: &str) -> (Child, String, String) {
    let mut child = Command::new("taskset")
        .args(["-c", cpu])
        .arg(agent)
        .args(["--bind", "127.0.0.1", "--port", "0", "--metrics-port", "0", "--root"])
        .arg(root)
        .arg("--state-dir")
        .arg(state)
        .env("RUST_LOG", "warn,spark_shuffle_agent=info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("start the agent");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let (mut addr, mut metrics) = (None, None);
    while addr.is_none() || metrics.is_none() {
        let line = lines.next().expect("agent exited before listening").expect("read log");
        if let Some(at) = line.find(" listening addr=") {
            let value = line[at + 16..].split_whitespace().next().expect("addr").to_string();
            if line.contains("metrics listening") {
                metrics = Some(value)
            } else {
                addr = Some(value)
            }
        }
    }
    // Keep draining the log so the agent never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, addr.expect("shuffle addr"), metrics.expect("metrics addr"))
}

/// The agent's own view of registration latency, from its histogram: (count, how many took at most
/// 1 ms, at most 5 ms). It starts at accepting the RPC, so it leaves out the client and the wire.
fn server_register_latency(metrics_addr: &str) -> (u64, u64, u64) {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(metrics_addr).expect("metrics port");
    conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").expect("GET /metrics");
    let mut text = String::new();
    conn.read_to_string(&mut text).expect("read /metrics");
    let name = "spark_shuffle_agent_register_executor_request_latency_seconds";
    let value = |series: &str| -> u64 {
        let line = text.lines().find(|l| l.starts_with(series)).unwrap_or_else(|| panic!("{series} not exported"));
        line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()).expect("a number") as u64
    };
    (
        value(&format!("{name}_count")),
        value(&format!("{name}_bucket{{le=\"0.001\"}}")),
        value(&format!("{name}_bucket{{le=\"0.005\"}}")),
    )
}

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let fields: Vec<&str> = stat.rsplit_once(')').expect("stat").1.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().expect("utime") + fields[12].parse::<f64>().expect("stime");
    // SC_CLK_TCK is 100 on every Linux this runs on.
    ticks / 100.0
}

fn status_kib(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

struct Conn {
    stream: TcpStream,
    codec: FrameCodec,
    input: BytesMut,
    out: BytesMut,
}

impl Conn {
    async fn open(addr: &str) -> Conn {
        let stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        Conn { stream, codec: FrameCodec::new(64 << 20), input: BytesMut::with_capacity(1 << 20), out: BytesMut::new() }
    }

    async fn next(&mut self) -> Message {
        loop {
            match self.codec.decode(&mut self.input).expect("decode") {
                Some(Inbound::Message(m)) => return m,
                Some(Inbound::Body(_)) => continue,
                None => {
                    if self.stream.read_buf(&mut self.input).await.expect("read") == 0 {
                        panic!("server closed the connection");
                    }
                }
            }
        }
    }

    async fn rpc(&mut self, msg: &BlockTransferMessage) -> Bytes {
        Message::RpcRequest { request_id: 1, body: msg.encode() }.encode(&mut self.out);
        self.stream.write_all(&self.out.split()).await.expect("write");
        match self.next().await {
            Message::RpcResponse { body, .. } => body,
            other => panic!("rpc failed: {other:?}"),
        }
    }
}

#[derive(Default)]
struct Totals {
    diagnosed: AtomicU64,
    blocks: AtomicU64,
    bytes: AtomicU64,
    failures: AtomicU64,
}

/// The map ids and per-map reduce ids of call number `pick` (spread over the maps or reduces).
fn call_blocks(w: &Workload, pick: usize) -> (Vec<i64>, Vec<Vec<i32>>) {
    let maps = w.reduces.len();
    match w.shape {
        Shape::Map => {
            let map = pick % maps;
            (vec![map as i64], vec![(0..w.reduces[map] as i32).collect()])
        }
        Shape::Reducer => {
            let reduce = (pick % w.reduces.iter().copied().min().unwrap_or(1).max(1)) as i32;
            ((0..maps as i64).collect(), vec![vec![reduce]; maps])
        }
    }
}

/// One connection: one fetch call after another (see [`Shape`]), all chunk requests pipelined.
async fn drive(addr: String, work: Arc<Workload>, deadline: Instant, totals: Arc<Totals>) -> Vec<u32> {
    let mut conn = Conn::open(&addr).await;
    let mut latencies_us = Vec::new();
    for call in 0..MAX_CALLS_PER_CONNECTION {
        if Instant::now() >= deadline {
            break;
        }
        let (map_ids, reduce_ids) = call_blocks(&work, call as usize * 7 + latencies_us.len());
        let ask = BlockTransferMessage::FetchShuffleBlocks {
            app_id: APP.into(),
            exec_id: "0".into(),
            shuffle_id: 0,
            map_ids,
            reduce_ids,
            batch_fetch_enabled: false,
        };
        let handle = BlockTransferMessage::decode(&conn.rpc(&ask).await).expect("stream handle");
        let BlockTransferMessage::StreamHandle { stream_id, num_chunks } = handle else { panic!("{handle:?}") };
        let sent = Instant::now();
        for chunk_index in 0..num_chunks {
            Message::ChunkFetchRequest(StreamChunkId { stream_id, chunk_index }).encode(&mut conn.out);
        }
        conn.stream.write_all(&conn.out.split()).await.expect("write");
        for _ in 0..num_chunks {
            match conn.next().await {
                Message::ChunkFetchSuccess { body, .. } => {
                    totals.blocks.fetch_add(1, Ordering::Relaxed);
                    totals.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
                    latencies_us.push(sent.elapsed().as_micros().min(u32::MAX as u128) as u32);
                }
                _ => {
                    totals.failures.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
    latencies_us
}

/// DiagnoseCorruption of one block after another until `deadline`; how many were answered.
async fn diagnose_loop(addr: String, work: Arc<Workload>, deadline: Instant) -> u64 {
    let mut conn = Conn::open(&addr).await;
    let mut n = 0u64;
    while Instant::now() < deadline && n < MAX_CALLS_PER_CONNECTION {
        let map = (n as usize * 7) % work.reduces.len();
        let reduce_id = (n as usize % work.reduces[map].max(1)) as i32;
        let ask = BlockTransferMessage::DiagnoseCorruption {
            app_id: APP.into(),
            exec_id: "0".into(),
            shuffle_id: 0,
            map_id: map as i64,
            reduce_id,
            checksum: 0,
            algorithm: "ADLER32".into(),
        };
        conn.rpc(&ask).await;
        n += 1;
    }
    n
}

/// RegisterExecutor every 20 ms on a new connection until `deadline`; latencies in µs.
async fn probe_registrations(addr: String, local_dirs: Vec<String>, deadline: Instant) -> Vec<u32> {
    let mut latencies = Vec::new();
    let mut n = 0u64;
    while Instant::now() < deadline {
        n += 1;
        let info = ExecutorShuffleInfo {
            local_dirs: local_dirs.clone(),
            sub_dirs_per_local_dir: 64,
            shuffle_manager: "org.apache.spark.shuffle.sort.SortShuffleManager".into(),
        };
        let started = Instant::now();
        let mut conn = Conn::open(&addr).await;
        conn.rpc(&BlockTransferMessage::RegisterExecutor { app_id: APP.into(), exec_id: format!("probe-{n}"), info })
            .await;
        latencies.push(started.elapsed().as_micros().min(u32::MAX as u128) as u32);
        drop(conn);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    latencies
}

fn pin_self(cpu: usize) {
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    rustix::thread::sched_setaffinity(None, &set).expect("pin the load generator");
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i] as f64 / 1000.0
}

fn main() {
    let a = args();
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = std::fs::canonicalize(tmp.path()).expect("canonical").join("root");
    let local_dirs: Vec<String> = (0..2).map(|i| root.join(format!("blockmgr/ld{i}")).display().to_string()).collect();
    for d in &local_dirs {
        std::fs::create_dir_all(d).expect("mkdir");
    }
    let canonical = local_dirs.iter().map(PathBuf::from).collect();
    let dirs = ExecutorDirs::new(local_dirs.clone(), 64, canonical).expect("dirs");
    let sizes = profile(&a.profile);
    write_files(&dirs, &sizes);

    let (mut child, addr, metrics_addr) = start_agent(&a.agent, &root, &tmp.path().join("state"), &a.server_cpu);
    pin_self(a.client_cpu);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let work = Arc::new(Workload { reduces: sizes.iter().map(Vec::len).collect(), shape: shape(&a.profile) });
    let totals = Arc::new(Totals::default());
    let (cpu, secs, mut latencies, registrations) = rt.block_on(async {
        let mut conn = Conn::open(&addr).await;
        let info = ExecutorShuffleInfo {
            local_dirs: local_dirs.clone(),
            sub_dirs_per_local_dir: 64,
            shuffle_manager: "org.apache.spark.shuffle.sort.SortShuffleManager".into(),
        };
        conn.rpc(&BlockTransferMessage::RegisterExecutor { app_id: APP.into(), exec_id: "0".into(), info }).await;
        // Warm-up: page cache, index cache, connection set-up.
        let warm = Instant::now() + Duration::from_secs(1);
        let tasks: Vec<_> = (0..a.connections)
            .map(|_| tokio::spawn(drive(addr.clone(), Arc::clone(&work), warm, Arc::new(Totals::default()))))
            .collect();
        for t in tasks {
            t.await.expect("warm-up");
        }
        let cpu0 = cpu_seconds(child.id());
        let start = Instant::now();
        let deadline = start + Duration::from_secs_f64(a.seconds);
        let tasks: Vec<_> = (0..a.connections)
            .map(|_| tokio::spawn(drive(addr.clone(), Arc::clone(&work), deadline, Arc::clone(&totals))))
            .collect();
        let diagnoses: Vec<_> =
            (0..a.diagnose).map(|_| tokio::spawn(diagnose_loop(addr.clone(), Arc::clone(&work), deadline))).collect();
        // The probe gets its own thread and runtime: on the load's runtime, each reply would wait
        // behind 64 busy connections' work, and the client's queueing would be measured, not the agent.
        let probe = a.register_probe.then(|| {
            let (addr, local_dirs) = (addr.clone(), local_dirs.clone());
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("probe runtime");
                rt.block_on(probe_registrations(addr, local_dirs, deadline))
            })
        });
        if a.register_probe {
            // The probe stands for an executor registering from a process of its own: the load
            // generator's busy thread must not delay it on the client core either.
            let me = rustix::thread::gettid();
            rustix::process::setpriority_process(Some(me), 10).expect("lower the load thread's priority");
        }
        let mut latencies = Vec::new();
        for t in tasks {
            latencies.extend(t.await.expect("connection task"));
        }
        let mut diagnosed = 0;
        for t in diagnoses {
            diagnosed += t.await.expect("diagnose task");
        }
        totals.diagnosed.store(diagnosed, Ordering::Relaxed);
        let mut registrations = match probe {
            // Every connection task has finished: blocking this runtime here holds nothing up.
            Some(p) => p.join().expect("probe"),
            None => Vec::new(),
        };
        registrations.sort_unstable();
        (cpu_seconds(child.id()) - cpu0, start.elapsed().as_secs_f64(), latencies, registrations)
    });
    latencies.sort_unstable();
    let blocks = totals.blocks.load(Ordering::Relaxed) as f64;
    let bytes = totals.bytes.load(Ordering::Relaxed) as f64;
    let peak_mib = status_kib(child.id(), "VmHWM") as f64 / 1024.0;
    let server_registrations = server_register_latency(&metrics_addr);
    let _ = child.kill();
    let _ = child.wait();
    println!(
        "profile {} | {} connections, pipelined | server pinned to cpu {}",
        a.profile, a.connections, a.server_cpu
    );
    println!("  blocks/s             {:>12.0}", blocks / secs);
    println!("  MB/s                 {:>12.1}", bytes / 1e6 / secs);
    println!("  chunk latency p50    {:>12.3} ms", percentile(&latencies, 0.50));
    println!("  chunk latency p99    {:>12.3} ms", percentile(&latencies, 0.99));
    println!("  server CPU per block {:>12.2} µs", cpu * 1e6 / blocks);
    println!("  server CPU per GB    {:>12.3} s", cpu / (bytes / 1e9));
    println!("  server peak RSS      {:>12.1} MiB", peak_mib);
    println!("  failures             {:>12}", totals.failures.load(Ordering::Relaxed));
    if a.diagnose > 0 {
        let diagnosed = totals.diagnosed.load(Ordering::Relaxed) as f64;
        println!("  DiagnoseCorruption/s {:>12.0} on {} connections", diagnosed / secs, a.diagnose);
    }
    if !registrations.is_empty() {
        println!(
            "  registration (fresh connection, journaled) p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms over {}",
            percentile(&registrations, 0.50),
            percentile(&registrations, 0.99),
            percentile(&registrations, 1.0),
            registrations.len()
        );
        let (count, within_1ms, within_5ms) = server_registrations;
        println!(
            "  registration, the agent's histogram: {within_1ms} of {count} within 1 ms, {within_5ms} within 5 ms"
        );
    }
}
