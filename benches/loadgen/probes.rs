//! Probes: one small timed operation at a fixed pace, beside the load, each on a thread and
//! runtime of its own. On the load's runtime each reply would wait behind the busy connections'
//! work, and the client's queueing would be measured, not the server.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use spark_shuffle_agent::protocol::ExecutorShuffleInfo;

use crate::dataset::HOT_EXEC;
use crate::wire::{micros, Conn};

/// Upper bound of one probe's operations, whatever the deadline says.
const MAX_OPS: u64 = 1_000_000;
/// An operation not answered within this counts as failed (and the probe goes on).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// When the probes stop: at the deadline, or earlier when the load ends (a one-pass load does).
pub struct Until {
    deadline: Instant,
    stopped: AtomicBool,
}

impl Until {
    pub fn new(deadline: Instant) -> Until {
        Until { deadline, stopped: AtomicBool::new(false) }
    }

    pub fn now(&self) {
        self.stopped.store(true, Ordering::Relaxed);
    }

    fn over(&self) -> bool {
        self.stopped.load(Ordering::Relaxed) || Instant::now() >= self.deadline
    }
}

#[derive(Default)]
pub struct Probe {
    /// Latency of each successful operation, in µs.
    pub latencies_us: Vec<u32>,
    pub failures: u64,
    pub first_error: Option<String>,
}

/// Runs `op` every `every` until `until` on a thread of its own; if one takes longer than
/// `every`, the next starts when it ends (no burst to catch up).
fn spawn<F>(until: Arc<Until>, every: Duration, mut op: F) -> JoinHandle<Probe>
where
    F: AsyncFnMut(u64) -> io::Result<()> + Send + 'static,
{
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("probe runtime");
        rt.block_on(async {
            let mut probe = Probe::default();
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            for n in 0..MAX_OPS {
                tick.tick().await;
                if until.over() {
                    break;
                }
                let started = Instant::now();
                match tokio::time::timeout(CALL_TIMEOUT, op(n)).await {
                    Ok(Ok(())) => probe.latencies_us.push(micros(started.elapsed())),
                    Ok(Err(e)) => probe.failed(e.to_string()),
                    Err(_) => probe.failed(format!("no answer within {CALL_TIMEOUT:?}")),
                }
            }
            probe.latencies_us.sort_unstable();
            probe
        })
    })
}

impl Probe {
    fn failed(&mut self, error: String) {
        self.failures += 1;
        self.first_error.get_or_insert(error);
    }
}

/// RegisterExecutor every 20 ms, each on a new connection (as executors register), journaled by
/// the agent before it answers: connect + register is the latency.
pub fn registrations(addr: String, info: ExecutorShuffleInfo, until: Arc<Until>) -> JoinHandle<Probe> {
    spawn(until, Duration::from_millis(20), async move |n| {
        Conn::open(&addr).await?.register(&format!("probe-{n}"), info.clone()).await
    })
}

/// Every 10 ms, the hot executor's one 4 KiB block (kept in the page cache) on one connection
/// of its own: the FetchShuffleBlocks call and its chunk are the latency. A broken connection is
/// opened again on the next tick.
pub fn hot_fetches(addr: String, until: Arc<Until>) -> JoinHandle<Probe> {
    let mut conn: Option<Conn> = None;
    spawn(until, Duration::from_millis(10), async move |_| {
        let mut c = match conn.take() {
            Some(c) => c,
            None => Conn::open(&addr).await?,
        };
        let got = c.fetch(HOT_EXEC, (vec![0], vec![vec![0]]), &mut Vec::new()).await?;
        conn = Some(c);
        match got.blocks {
            1 => Ok(()),
            _ => Err(io::Error::other("the hot block was not served")),
        }
    })
}
