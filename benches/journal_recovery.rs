//! Registrations journal bench: how long a restart takes to recover 100k registrations, what they
//! cost on disk and in memory, and what an append costs with and without group commit.
//!
//! `cargo bench --bench journal_recovery` (set JOURNAL_BENCH_DIR to measure on another
//! filesystem; the default is the system temp dir). Prints one table.
//!
//! Phases: (1) 64 concurrent appenders register 100k executors (1000 apps x 100 executors, two
//! local dirs each, paths shaped like Spark on Kubernetes); (2) `Journal::open` is timed 5 times;
//! (3) one appender re-registers 2000 executors one after another (latency of a lone commit);
//! (4) 64 appenders re-register 110k executors, so the file passes twice its live state and one
//! compaction runs under load.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use spark_shuffle_agent::protocol::ExecutorShuffleInfo;
use spark_shuffle_agent::registry::{Journal, Record};

const REGISTRATIONS: usize = 100_000;
const EXECUTORS_PER_APP: usize = 100;
const APPENDERS: usize = 64;
const OPEN_RUNS: usize = 5;
const LONE_APPENDS: usize = 2000;

/// Counts live heap bytes, to measure what the journal's in-memory state costs.
struct Counting;

static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; the counter is bookkeeping
// only and never influences what is allocated or freed.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as ours, forwarded.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE_BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours, forwarded.
        unsafe { System.dealloc(ptr, layout) };
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same contract as ours, forwarded.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
            LIVE_BYTES.fetch_add(new_size, Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// A deterministic UUID-shaped string.
fn uuid(seed: u64) -> String {
    let a = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let b = a.rotate_left(29) ^ 0xD1B5_4A32_D192_ED03;
    format!("{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}", a >> 32, a & 0xffff, b & 0xfff, (b >> 12) & 0xfff, b >> 16)
}

fn registration(i: usize) -> Record {
    let app = i / EXECUTORS_PER_APP;
    let seed = i as u64 * 4;
    Record::Executor {
        app_id: format!("spark-{:032x}", (app as u128 + 1).wrapping_mul(0x2545_F491_4F6C_DD1D)),
        exec_id: (i % EXECUTORS_PER_APP + 1).to_string(),
        info: ExecutorShuffleInfo {
            local_dirs: vec![
                format!("/var/data/spark-{}/blockmgr-{}", uuid(seed), uuid(seed + 1)),
                format!("/var/data2/spark-{}/blockmgr-{}", uuid(seed + 2), uuid(seed + 3)),
            ],
            sub_dirs_per_local_dir: 64,
            shuffle_manager: "org.apache.spark.shuffle.sort.SortShuffleManager".into(),
        },
        node: None,
    }
}

/// Appends `indices` from `APPENDERS` tasks; returns the elapsed time and the slowest append.
async fn concurrent(journal: &Journal, indices: Arc<Vec<usize>>) -> (Duration, Duration) {
    let started = Instant::now();
    let tasks: Vec<_> = (0..APPENDERS)
        .map(|t| {
            let (journal, indices) = (journal.clone(), Arc::clone(&indices));
            tokio::spawn(async move {
                let mut slowest = Duration::ZERO;
                for &i in indices.iter().skip(t).step_by(APPENDERS) {
                    let t0 = Instant::now();
                    journal.append(registration(i)).await.expect("append");
                    slowest = slowest.max(t0.elapsed());
                }
                slowest
            })
        })
        .collect();
    let mut slowest = Duration::ZERO;
    for task in tasks {
        slowest = slowest.max(task.await.expect("appender task"));
    }
    (started.elapsed(), slowest)
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// CPU time of the calling thread (the one running `Journal::open`), from the scheduler's own
/// accounting, so a busy machine inflates wall time but not this.
fn thread_cpu() -> Duration {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    Duration::from_nanos(text.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(0))
}

fn filesystem(dir: &Path) -> String {
    let out = std::process::Command::new("df").arg("-T").arg(dir).output();
    let text = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
    let line = text.lines().nth(1).unwrap_or("unknown");
    let fields: Vec<_> = line.split_whitespace().collect();
    match fields.as_slice() {
        [device, fstype, .., mount] => format!("{fstype} ({device} on {mount})"),
        _ => line.to_string(),
    }
}

fn main() {
    let base = std::env::var_os("JOURNAL_BENCH_DIR").map(Into::into).unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::Builder::new().prefix("journal-bench").tempdir_in(&base).expect("temp dir");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let all: Arc<Vec<usize>> = Arc::new((0..REGISTRATIONS).collect());
    let mut rows: Vec<(String, String)> = Vec::new();
    let mut row = |k: &str, v: String| rows.push((k.to_string(), v));
    row("directory", format!("{} on {}", dir.path().display(), filesystem(dir.path())));

    // (1) populate
    let (journal, _) = Journal::open(dir.path()).expect("open");
    let (took, slowest) = runtime.block_on(concurrent(&journal, Arc::clone(&all)));
    let stats = journal.stats();
    row(
        "populate: 100k appends, 64 appenders",
        format!("{} ({:.0} appends/s)", ms(took), REGISTRATIONS as f64 / took.as_secs_f64()),
    );
    row(
        "  group commits (fsyncs), records per commit",
        format!("{}, {:.1}", stats.fsyncs, stats.appended as f64 / stats.fsyncs as f64),
    );
    row("  slowest append", ms(slowest));
    row(
        "journal file",
        format!(
            "{} bytes ({:.1} MiB, {:.0} bytes/registration)",
            stats.file_bytes,
            stats.file_bytes as f64 / 1048576.0,
            stats.file_bytes as f64 / REGISTRATIONS as f64
        ),
    );
    drop(journal);

    // (2) recovery
    let (mut times, mut cpu_times) = (Vec::new(), Vec::new());
    let mut heap = (0, 0);
    for _ in 0..OPEN_RUNS {
        let before = LIVE_BYTES.load(Ordering::Relaxed);
        let (t0, cpu0) = (Instant::now(), thread_cpu());
        let (journal, recovered) = Journal::open(dir.path()).expect("open");
        times.push(t0.elapsed());
        cpu_times.push(thread_cpu().saturating_sub(cpu0));
        assert_eq!(recovered.executors.len(), REGISTRATIONS);
        let with_recovered = LIVE_BYTES.load(Ordering::Relaxed) - before;
        drop(recovered);
        heap = (with_recovered, LIVE_BYTES.load(Ordering::Relaxed) - before);
        drop(journal);
    }
    times.sort();
    cpu_times.sort();
    row("Journal::open, 100k registrations: best (wall / cpu)", format!("{} / {}", ms(times[0]), ms(cpu_times[0])));
    row(
        "Journal::open: median of 5 (wall / cpu)",
        format!("{} / {}", ms(times[OPEN_RUNS / 2]), ms(cpu_times[OPEN_RUNS / 2])),
    );
    row(
        "heap: journal live state (writer thread)",
        format!("{:.1} MiB ({} bytes/registration)", heap.1 as f64 / 1048576.0, heap.1 / REGISTRATIONS),
    );
    row("heap: + Recovered as returned by open", format!("{:.1} MiB", heap.0 as f64 / 1048576.0));

    // (3) one appender alone
    let (journal, _) = Journal::open(dir.path()).expect("open");
    let mut latencies: Vec<Duration> = runtime.block_on(async {
        let mut out = Vec::with_capacity(LONE_APPENDS);
        for i in 0..LONE_APPENDS {
            let t0 = Instant::now();
            journal.append(registration(i * 37 % REGISTRATIONS)).await.expect("append");
            out.push(t0.elapsed());
        }
        out
    });
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    row("lone appender: p50 / p99 / max", format!("{} / {} / {}", ms(pct(0.50)), ms(pct(0.99)), ms(pct(1.0))));

    // (4) re-register everything and then some: one compaction under load
    let again: Arc<Vec<usize>> = Arc::new((0..REGISTRATIONS * 11 / 10).map(|i| i % REGISTRATIONS).collect());
    let before = journal.stats();
    let (took, slowest) = runtime.block_on(concurrent(&journal, Arc::clone(&again)));
    let stats = journal.stats();
    row(
        "re-register 110k, 64 appenders",
        format!("{} ({:.0} appends/s)", ms(took), again.len() as f64 / took.as_secs_f64()),
    );
    row(
        "  compactions, slowest append (includes the compaction stall)",
        format!("{}, {}", stats.compactions - before.compactions, ms(slowest)),
    );
    row(
        "  file after (snapshot = live state)",
        format!("{} bytes (snapshot {} bytes)", stats.file_bytes, stats.snapshot_bytes),
    );
    drop(journal);

    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    println!("\njournal_recovery ({REGISTRATIONS} registrations, debug = {})", cfg!(debug_assertions));
    for (k, v) in rows {
        println!("  {k:<width$}  {v}");
    }
}
