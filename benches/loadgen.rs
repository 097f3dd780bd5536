//! Load generator: many connections, each pipelining whole FetchShuffleBlocks streams, against a
//! shuffle server. It pushes the server past what Spark's Java client can (the client's own
//! per-block cost dominates there), so the server's own cost per block shows.
//!
//! ```text
//! cargo bench --bench loadgen -- [--profile 4k|4k-reducer|mixed|mixed-reducer|1m] [--connections 16]
//!     [--seconds 10] [--agent target/release/spark-shuffle-agent] [--server-cpu 0] [--client-cpu 1]
//!     [--addr HOST:PORT --server-pid PID [--metrics-addr HOST:PORT]] [--root DIR] [--dataset-gb G]
//!     [--drop-caches] [--one-pass] [--hot-probe] [--register-probe] [--diagnose N]
//!     [--idle [--idle-ms 1000] [--connect-timeout-ms 10000]]
//! ```
//!
//! It writes the profile's shuffle files, starts the agent pinned to `--server-cpu` (taskset),
//! pins itself to `--client-cpu`, registers the executor, warms up for a second, runs for
//! `--seconds` (bounded by a call count too), and prints one metric per line (`  label  value
//! unit`, two spaces or more between label and value; free text only on `  note:` lines):
//! blocks/s, MB/s, per-chunk latency p50/p99, server CPU per block and per GB, server peak RSS,
//! failures. Loopback only.
//!
//! Calls of `4k`, `mixed` and `1m` name every block of one map output. `4k-reducer` and
//! `mixed-reducer` have the shape of Spark's usual reducer fetch: one reduce partition from each
//! of 64 map outputs per call, so the server resolves a map output (index, path, open file) for
//! every block it sends.
//!
//! Modes:
//! * `--addr HOST:PORT --server-pid PID`: load a server that is already running (the agent, or
//!   Spark's JVM service: the same RegisterExecutor and FetchShuffleBlocks) instead of starting
//!   the agent; its CPU and peak RSS are read from /proc/PID. The server must serve `--root`
//!   (the agent's `--root`, the JVM's `spark.local.dir`). `--metrics-addr` (the agent's metrics
//!   port) adds the agent's own registration histogram; without it that line is left out.
//! * `--root DIR`: the files go to `DIR/loadgen-<profile>-<bytes>/`, and a later run with the
//!   same profile and size reuses them (its MANIFEST is written last). Default: a temp dir.
//! * `--dataset-gb G`: as many map outputs of the profile as make G GB (default: the profile's
//!   own few MB).
//! * `--drop-caches`: evicts the dataset's files from the page cache just before the measured
//!   pass (fsync + posix_fadvise DONTNEED, see `Dataset::drop_caches`), and warms up on the hot
//!   block instead of the dataset, so the pass starts cold.
//! * `--one-pass`: every block of the dataset is fetched exactly once, the calls handed out to
//!   the connections in turn; the run ends when all are done, or at `--seconds`. The warm-up
//!   uses the hot block, so no block of the dataset is read before the pass.
//! * `--hot-probe`: one more connection fetches one 4 KiB block every 10 ms from a file of its
//!   own that stays in the page cache: the latency of a cached fetch beside the load.
//! * `--register-probe`: RegisterExecutor every 20 ms on a fresh connection, during the load.
//! * `--idle` (the crowded profile): `--connections` connections opened in one burst (connect
//!   latency of each; refused, timed out after `--connect-timeout-ms`), each then making one
//!   small call every `--idle-ms` (one connection in 100 registers, the others fetch one block)
//!   until `--seconds`; reports which connections got in (their first call answered before the
//!   end of the run, so `--seconds` must exceed `--connect-timeout-ms` by a margin), failed
//!   calls, registration latency, and the server's RSS while they are open. The client raises
//!   its RLIMIT_NOFILE soft limit to the hard limit first (20,000 on the project machine: enough
//!   for 10,000 connections and the probes).

#[path = "loadgen/crowd.rs"]
mod crowd;
#[path = "loadgen/dataset.rs"]
mod dataset;
#[path = "loadgen/probes.rs"]
mod probes;
#[path = "loadgen/server.rs"]
mod server;
#[path = "loadgen/wire.rs"]
mod wire;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use spark_shuffle_agent::protocol::BlockTransferMessage;

use crate::crowd::Crowd;
use crate::dataset::{Dataset, Shape, Workload, EXEC, HOT_EXEC};
use crate::probes::Probe;
use crate::server::Server;
use crate::wire::{Conn, APP};

/// Upper bound of fetch calls per connection, whatever `--seconds` says.
const MAX_CALLS_PER_CONNECTION: u64 = 5_000_000;

struct Args {
    profile: String,
    connections: usize,
    seconds: f64,
    agent: PathBuf,
    server_cpu: String,
    client_cpu: usize,
    /// A running server to load instead of starting the agent, and its pid.
    addr: Option<String>,
    server_pid: Option<u32>,
    metrics_addr: Option<String>,
    root: Option<PathBuf>,
    dataset_gb: Option<f64>,
    drop_caches: bool,
    one_pass: bool,
    hot_probe: bool,
    /// Also time RegisterExecutor on fresh connections (as executors register) during the load.
    register_probe: bool,
    /// Connections that send DiagnoseCorruption back to back during the load (each recomputes
    /// a block's checksum from the data file), to see whether they delay registrations.
    diagnose: usize,
    idle: bool,
    idle_ms: u64,
    connect_timeout_ms: u64,
}

fn args() -> Args {
    let mut a = Args {
        profile: "4k".into(),
        connections: 16,
        seconds: 10.0,
        agent: PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target/release/spark-shuffle-agent")),
        server_cpu: "0".into(),
        client_cpu: 1,
        addr: None,
        server_pid: None,
        metrics_addr: None,
        root: None,
        dataset_gb: None,
        drop_caches: false,
        one_pass: false,
        hot_probe: false,
        register_probe: false,
        diagnose: 0,
        idle: false,
        idle_ms: 1000,
        connect_timeout_ms: 10_000,
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
            "--addr" => a.addr = Some(value()),
            "--server-pid" => a.server_pid = Some(value().parse().expect("--server-pid")),
            "--metrics-addr" => a.metrics_addr = Some(value()),
            "--root" => a.root = Some(PathBuf::from(value())),
            "--dataset-gb" => a.dataset_gb = Some(value().parse().expect("--dataset-gb")),
            "--drop-caches" => a.drop_caches = true,
            "--one-pass" => a.one_pass = true,
            "--hot-probe" => a.hot_probe = true,
            "--register-probe" => a.register_probe = true,
            "--diagnose" => a.diagnose = value().parse().expect("--diagnose"),
            "--idle" => a.idle = true,
            "--idle-ms" => a.idle_ms = value().parse().expect("--idle-ms"),
            "--connect-timeout-ms" => a.connect_timeout_ms = value().parse().expect("--connect-timeout-ms"),
            "--bench" => {} // passed by `cargo bench`
            other => panic!("unknown flag {other}"),
        }
    }
    assert!(a.addr.is_none() || a.server_pid.is_some(), "--addr needs --server-pid (its CPU and RSS are measured)");
    assert!(!(a.idle && a.one_pass), "--idle and --one-pass are different loads; pick one");
    a
}

impl Args {
    /// Whether the measured pass must find the dataset out of the page cache.
    fn cold(&self) -> bool {
        self.drop_caches || self.one_pass
    }
}

#[derive(Default)]
struct Totals {
    blocks: AtomicU64,
    bytes: AtomicU64,
    failures: AtomicU64,
}

/// Which calls the load connections make: the workload's calls round and round, or with
/// `one_pass` each call once, handed out in turn (the counter is the next call's number).
struct Load {
    exec: &'static str,
    work: Workload,
    one_pass: Option<AtomicUsize>,
}

impl Load {
    /// The blocks of the next call of a connection that has made `pick` (a number of its own);
    /// None once a one-pass load has handed out every call.
    fn next(&self, pick: usize) -> Option<(Vec<i64>, Vec<Vec<i32>>)> {
        match &self.one_pass {
            None => Some(self.work.call(pick)),
            Some(next) => {
                let i = next.fetch_add(1, Ordering::Relaxed);
                (i < self.work.calls()).then(|| self.work.call(i))
            }
        }
    }
}

/// One connection: one fetch call after another (see [`Shape`]), all chunk requests pipelined.
async fn drive(addr: String, load: Arc<Load>, deadline: Instant, totals: Arc<Totals>) -> Vec<u32> {
    let mut conn = Conn::open(&addr).await.expect("connect");
    let mut latencies_us = Vec::new();
    for call in 0..MAX_CALLS_PER_CONNECTION {
        if Instant::now() >= deadline {
            break;
        }
        let Some(blocks) = load.next(call as usize * 7 + latencies_us.len()) else { break };
        let got = conn.fetch(load.exec, blocks, &mut latencies_us).await.expect("fetch");
        totals.blocks.fetch_add(got.blocks, Ordering::Relaxed);
        totals.bytes.fetch_add(got.bytes, Ordering::Relaxed);
        totals.failures.fetch_add(got.failures, Ordering::Relaxed);
    }
    latencies_us
}

/// `n` connections driving `load` until `deadline`; their chunk latencies.
async fn drive_all(addr: &str, n: usize, load: &Arc<Load>, deadline: Instant, totals: &Arc<Totals>) -> Vec<u32> {
    let tasks: Vec<_> =
        (0..n).map(|_| tokio::spawn(drive(addr.to_string(), Arc::clone(load), deadline, Arc::clone(totals)))).collect();
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.expect("connection task"));
    }
    latencies
}

/// DiagnoseCorruption of one block after another until `deadline`; how many were answered.
async fn diagnose_loop(addr: String, work: Workload, deadline: Instant) -> u64 {
    let mut conn = Conn::open(&addr).await.expect("connect");
    let mut n = 0u64;
    while Instant::now() < deadline && n < MAX_CALLS_PER_CONNECTION {
        let map = (n as usize * 7) % work.maps;
        let ask = BlockTransferMessage::DiagnoseCorruption {
            app_id: APP.into(),
            exec_id: EXEC.into(),
            shuffle_id: 0,
            map_id: map as i64,
            reduce_id: (n as usize % work.reduces.max(1)) as i32,
            checksum: 0,
            algorithm: "ADLER32".into(),
        };
        conn.rpc(&ask).await.expect("DiagnoseCorruption");
        n += 1;
    }
    n
}

fn pin_self(cpu: usize) {
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    rustix::thread::sched_setaffinity(None, &set).expect("pin the load generator");
}

/// Raises this process's RLIMIT_NOFILE soft limit to the hard limit (the crowd needs a
/// descriptor per connection); the limit now in force.
fn raise_fd_limit() -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    limit.current = limit.maximum;
    setrlimit(Resource::Nofile, limit).expect("raise RLIMIT_NOFILE to the hard limit");
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// Everything a run measured.
#[derive(Default)]
struct Outcome {
    secs: f64,
    cpu: f64,
    totals: Totals,
    latencies_us: Vec<u32>,
    diagnosed: u64,
    /// Files and bytes evicted, and how long that took.
    dropped: Option<(usize, u64, Duration)>,
    registrations: Option<Probe>,
    hot: Option<Probe>,
    crowd: Option<Crowd>,
    /// Connections in, and the server's RSS (MiB), three quarters into a crowd run.
    crowd_rss: Option<(usize, f64)>,
}

async fn run(a: &Args, data: &Dataset, server: &Server) -> Outcome {
    let addr = server.addr.clone();
    let mut conn = Conn::open(&addr).await.expect("connect");
    conn.register(EXEC, data.data.info()).await.expect("register the dataset's executor");
    conn.register(HOT_EXEC, data.hot.info()).await.expect("register the hot block's executor");
    drop(conn);
    warm_up(a, data, &addr).await;
    let mut out = Outcome::default();
    if a.drop_caches {
        let started = Instant::now();
        let (files, bytes) = data.drop_caches();
        out.dropped = Some((files, bytes, started.elapsed()));
    }
    let cpu0 = server.cpu_seconds();
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(a.seconds);
    let stop = Arc::new(probes::Until::new(deadline));
    let registrations =
        a.register_probe.then(|| probes::registrations(addr.clone(), data.data.info(), Arc::clone(&stop)));
    let hot = a.hot_probe.then(|| probes::hot_fetches(addr.clone(), Arc::clone(&stop)));
    if registrations.is_some() || hot.is_some() {
        // A probe stands for another process (an executor registering, another reducer): the
        // load generator's busy thread must not delay it on the client core either.
        let me = rustix::thread::gettid();
        rustix::process::setpriority_process(Some(me), 10).expect("lower the load thread's priority");
    }
    let diagnoses: Vec<_> =
        (0..a.diagnose).map(|_| tokio::spawn(diagnose_loop(addr.clone(), data.work.clone(), deadline))).collect();
    if a.idle {
        let (crowd, rss) = run_crowd(a, data, server, deadline).await;
        out.crowd = Some(crowd);
        out.crowd_rss = Some(rss);
    } else {
        let one_pass = a.one_pass.then(|| AtomicUsize::new(0));
        let load = Arc::new(Load { exec: EXEC, work: data.work.clone(), one_pass });
        let totals = Arc::new(Totals::default());
        out.latencies_us = drive_all(&addr, a.connections, &load, deadline, &totals).await;
        out.totals = Arc::try_unwrap(totals).unwrap_or_default();
    }
    // A one-pass load may end before the deadline: the probes end with it.
    stop.now();
    out.secs = start.elapsed().as_secs_f64();
    out.cpu = server.cpu_seconds() - cpu0;
    for t in diagnoses {
        out.diagnosed += t.await.expect("diagnose task");
    }
    // Every load task has finished: blocking this runtime on the probes' threads holds nothing up.
    out.registrations = registrations.map(|p| p.join().expect("registration probe"));
    out.hot = hot.map(|p| p.join().expect("hot probe"));
    out.latencies_us.sort_unstable();
    out
}

/// A second of load before the measurement (page cache, index cache, the JVM's JIT, connection
/// set-up). A cold run warms up on the hot block only, so no block of the dataset is read.
async fn warm_up(a: &Args, data: &Dataset, addr: &str) {
    let load = if a.cold() {
        Load { exec: HOT_EXEC, work: Workload { maps: 1, reduces: 1, shape: Shape::Map }, one_pass: None }
    } else {
        Load { exec: EXEC, work: data.work.clone(), one_pass: None }
    };
    // A crowd warms up on as many connections as a load, not on all of its own.
    let n = if a.idle { a.connections.min(16) } else { a.connections };
    let deadline = Instant::now() + Duration::from_secs(1);
    drive_all(addr, n, &Arc::new(load), deadline, &Arc::new(Totals::default())).await;
}

/// The crowd, and three quarters into it the number of connections in and the server's RSS.
async fn run_crowd(a: &Args, data: &Dataset, server: &Server, deadline: Instant) -> (Crowd, (usize, f64)) {
    let plan = Arc::new(crowd::Plan {
        addr: server.addr.clone(),
        connections: a.connections,
        idle: Duration::from_millis(a.idle_ms),
        connect_timeout: Duration::from_millis(a.connect_timeout_ms),
        work: data.work.clone(),
        info: data.data.info(),
        deadline,
    });
    let open = Arc::new(AtomicUsize::new(0));
    let sample_at = Instant::now() + Duration::from_secs_f64(a.seconds * 0.75);
    let sample = async {
        tokio::time::sleep_until(sample_at.into()).await;
        (open.load(Ordering::Relaxed), server.status_mib("VmRSS"))
    };
    tokio::join!(crowd::run(plan, Arc::clone(&open)), sample)
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i] as f64 / 1000.0
}

/// One metric: `  label  value unit`. Labels never hold two spaces in a row, so a reader splits
/// the line at the first run of two or more.
fn metric(label: &str, value: impl std::fmt::Display, unit: &str) {
    println!("  {label:<40}  {value:>12} {unit}");
}

fn note(text: &str) {
    println!("  note: {text}");
}

/// p50, p99 and max of sorted µs latencies, in ms, and their count.
fn latency_metrics(what: &str, sorted_us: &[u32]) {
    metric(&format!("{what} p50"), format!("{:.3}", percentile(sorted_us, 0.50)), "ms");
    metric(&format!("{what} p99"), format!("{:.3}", percentile(sorted_us, 0.99)), "ms");
    metric(&format!("{what} max"), format!("{:.3}", percentile(sorted_us, 1.0)), "ms");
    metric(&format!("{what} count"), sorted_us.len(), "");
}

fn probe_metrics(what: &str, p: &Probe) {
    latency_metrics(what, &p.latencies_us);
    metric(&format!("{what} failures"), p.failures, "");
    if let Some(e) = &p.first_error {
        note(&format!("{what}, first failure: {e}"));
    }
}

fn print_load(out: &Outcome) {
    let blocks = out.totals.blocks.load(Ordering::Relaxed) as f64;
    let bytes = out.totals.bytes.load(Ordering::Relaxed) as f64;
    metric("blocks/s", format!("{:.0}", blocks / out.secs), "");
    metric("MB/s", format!("{:.1}", bytes / 1e6 / out.secs), "");
    metric("chunk latency p50", format!("{:.3}", percentile(&out.latencies_us, 0.50)), "ms");
    metric("chunk latency p99", format!("{:.3}", percentile(&out.latencies_us, 0.99)), "ms");
    metric("server CPU per block", format!("{:.2}", out.cpu * 1e6 / blocks), "µs");
    metric("server CPU per GB", format!("{:.3}", out.cpu / (bytes / 1e9)), "s");
    metric("failures", out.totals.failures.load(Ordering::Relaxed), "");
}

fn print_crowd(c: &Crowd, (open, rss_mib): (usize, f64), attempted: usize) {
    metric("connections attempted", attempted, "");
    metric("connections in", c.got_in, "");
    metric("connections not in", attempted as u64 - c.got_in, "");
    metric("connect refused", c.refused, "");
    metric("connect timed out", c.connect_timed_out, "");
    metric("connect failed otherwise", c.connect_failed, "");
    metric("connected, first call unanswered", c.first_call_unanswered, "");
    metric("connect burst", format!("{:.1}", c.burst.as_secs_f64() * 1e3), "ms");
    latency_metrics("connect", &c.connect_us);
    metric("calls", c.calls, "");
    metric("failed calls", c.failed_calls, "");
    metric("connections lost after getting in", c.lost, "");
    latency_metrics("crowd registration", &c.registrations_us);
    metric("connections in at 3/4 of the run", open, "");
    metric("server RSS at 3/4 of the run", format!("{rss_mib:.1}"), "MiB");
    if let Some(e) = &c.first_error {
        note(&format!("crowd, first error: {e}"));
    }
}

fn print_report(a: &Args, data: &Dataset, server: &Server, out: &Outcome, fd_limit: u64) {
    let at = match &a.addr {
        Some(addr) => format!("server {addr} (pid {})", a.server_pid.unwrap_or(0)),
        None => format!("agent pinned to cpu {}", a.server_cpu),
    };
    let kind = if a.idle { "mostly idle" } else { "pipelined" };
    println!("profile {} | {} connections, {kind} | {at}", a.profile, a.connections);
    metric("dataset", format!("{:.3}", data.bytes as f64 / 1e9), "GB");
    metric("dataset reused", data.reused, "");
    metric("seconds measured", format!("{:.2}", out.secs), "s");
    metric("server CPU", format!("{:.2}", out.cpu), "s");
    metric("client RLIMIT_NOFILE", fd_limit, "");
    if a.idle && a.seconds * 1e3 < a.connect_timeout_ms as f64 + 5e3 {
        note("--seconds is not 5 s longer than --connect-timeout-ms: late connects may not get a chance to get in");
    }
    if (fd_limit as usize) < a.connections + a.diagnose + 64 {
        note(&format!("RLIMIT_NOFILE {fd_limit} is too low for {} connections", a.connections));
    }
    if let Some((files, bytes, took)) = out.dropped {
        metric("page cache dropped, files", files, "");
        metric("page cache dropped, GB", format!("{:.3}", bytes as f64 / 1e9), "GB");
        metric("page cache drop took", format!("{:.0}", took.as_secs_f64() * 1e3), "ms");
    }
    match (&out.crowd, out.crowd_rss) {
        (Some(c), Some(rss)) => print_crowd(c, rss, a.connections),
        _ => print_load(out),
    }
    if a.one_pass {
        let blocks = out.totals.blocks.load(Ordering::Relaxed);
        metric("one pass, blocks fetched", blocks, "");
        metric("one pass, blocks in dataset", data.work.blocks(), "");
        metric("one pass, complete", blocks == data.work.blocks() as u64, "");
    }
    metric("server peak RSS", format!("{:.1}", server.status_mib("VmHWM")), "MiB");
    if a.diagnose > 0 {
        metric("DiagnoseCorruption/s", format!("{:.0}", out.diagnosed as f64 / out.secs), "");
    }
    if let Some(p) = &out.hot {
        probe_metrics("hot fetch", p);
    }
    if let Some(p) = &out.registrations {
        probe_metrics("registration", p);
        if let Some((count, within_1ms, within_5ms)) = server.register_histogram() {
            metric("agent histogram, registrations", count, "");
            metric("agent histogram, within 1 ms", within_1ms, "");
            metric("agent histogram, within 5 ms", within_5ms, "");
        }
    }
}

fn main() {
    let a = args();
    let fd_limit = raise_fd_limit();
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = a.root.clone().unwrap_or_else(|| tmp.path().join("root"));
    std::fs::create_dir_all(&root).expect("mkdir root");
    // The servers confine executor dirs to their canonical roots.
    let root = std::fs::canonicalize(root).expect("canonical root");
    let data = Dataset::prepare(&root, &a.profile, a.dataset_gb.map(|gb| (gb * 1e9) as u64));
    let server = match &a.addr {
        Some(addr) => Server::attach(addr.clone(), a.server_pid.expect("--server-pid"), a.metrics_addr.clone()),
        None => Server::spawn_agent(&a.agent, &root, &tmp.path().join("state"), &a.server_cpu),
    };
    pin_self(a.client_cpu);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let out = rt.block_on(run(&a, &data, &server));
    print_report(&a, &data, &server, &out, fd_limit);
}
