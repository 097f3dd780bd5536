//! The many-connection mode (`--idle`): N connections opened in one burst, each then making one
//! small call every `--idle-ms` or so (mostly idle, as thousands of reducers waiting on each
//! other are), until the deadline.
//!
//! A connection "got in" when the server answered its first call: the kernel completes a TCP
//! handshake into the listen backlog whether or not the server ever accepts the socket, so a
//! successful connect alone says nothing.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use spark_shuffle_agent::protocol::ExecutorShuffleInfo;
use tokio::net::TcpStream;

use crate::dataset::{Workload, EXEC};
use crate::probes::CALL_TIMEOUT;
use crate::wire::{micros, Conn};

/// One connection in this many registers an executor of its own on each call (executors
/// register once per start); the others fetch one block per call.
const REGISTER_ONE_IN: usize = 100;
/// Connection attempts started between two yields to the runtime. The client is one thread: if
/// all 10,000 attempts were queued first, each completed connect would wait behind the rest to
/// be noticed, and the client's queue would show as connect latency.
const SPAWNS_PER_YIELD: usize = 16;
/// Upper bound of calls per connection, whatever the deadline says.
const MAX_CALLS: u64 = 100_000;

pub struct Plan {
    pub addr: String,
    pub connections: usize,
    pub idle: Duration,
    pub connect_timeout: Duration,
    pub work: Workload,
    pub info: ExecutorShuffleInfo,
    pub deadline: Instant,
}

/// What every connection of the crowd saw, added up.
#[derive(Default)]
pub struct Crowd {
    /// Connect latency of each connection that connected, µs.
    pub connect_us: Vec<u32>,
    pub refused: u64,
    pub connect_timed_out: u64,
    /// Other connect errors (a client out of descriptors or ports, say), with the first one.
    pub connect_failed: u64,
    /// Connected, but the first call got no answer before the end of the run (the server did not
    /// take the connection while the others were in).
    pub first_call_unanswered: u64,
    pub got_in: u64,
    pub calls: u64,
    pub failed_calls: u64,
    /// Connections that got in and later broke (a call errored or went unanswered).
    pub lost: u64,
    pub first_error: Option<String>,
    /// RegisterExecutor latencies of the registering connections, µs.
    pub registrations_us: Vec<u32>,
    /// How long starting every connection attempt took.
    pub burst: Duration,
}

/// The state of one member connection, merged into [`Crowd`] when it ends.
#[derive(Default)]
struct Member {
    connect_us: Option<u32>,
    connect_error: Option<io::Error>,
    got_in: bool,
    calls: u64,
    failed_calls: u64,
    lost: bool,
    first_error: Option<String>,
    registrations_us: Vec<u32>,
}

/// Runs the crowd; `open` counts the connections in at any moment (read by the caller to
/// sample the server's memory while they are).
pub async fn run(plan: Arc<Plan>, open: Arc<AtomicUsize>) -> Crowd {
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(plan.connections);
    for c in 0..plan.connections {
        tasks.push(tokio::spawn(member(c, Arc::clone(&plan), Arc::clone(&open))));
        if c % SPAWNS_PER_YIELD == SPAWNS_PER_YIELD - 1 {
            tokio::task::yield_now().await;
        }
    }
    let mut crowd = Crowd { burst: started.elapsed(), ..Crowd::default() };
    for t in tasks {
        crowd.add(t.await.expect("crowd connection task"));
    }
    crowd.connect_us.sort_unstable();
    crowd.registrations_us.sort_unstable();
    crowd
}

impl Crowd {
    fn add(&mut self, m: Member) {
        match (&m.connect_us, &m.connect_error) {
            (Some(us), _) => self.connect_us.push(*us),
            (None, Some(e)) if e.kind() == io::ErrorKind::ConnectionRefused => self.refused += 1,
            (None, Some(e)) if e.kind() == io::ErrorKind::TimedOut => self.connect_timed_out += 1,
            (None, _) => self.connect_failed += 1,
        }
        if m.connect_us.is_some() && !m.got_in {
            self.first_call_unanswered += 1;
        }
        self.got_in += m.got_in as u64;
        self.calls += m.calls;
        self.failed_calls += m.failed_calls;
        self.lost += m.lost as u64;
        self.registrations_us.extend(m.registrations_us);
        if self.first_error.is_none() {
            self.first_error = m.first_error.or(m.connect_error.map(|e| format!("connect: {e}")));
        }
    }
}

async fn member(c: usize, plan: Arc<Plan>, open: Arc<AtomicUsize>) -> Member {
    let mut m = Member::default();
    let t = Instant::now();
    let stream = match tokio::time::timeout(plan.connect_timeout, TcpStream::connect(&plan.addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Member { connect_error: Some(e), ..m },
        Err(_) => return Member { connect_error: Some(io::ErrorKind::TimedOut.into()), ..m },
    };
    m.connect_us = Some(micros(t.elapsed()));
    let mut conn = Conn::from(stream, 16 << 10);
    // A connection that is only answered once others have left at the end is not in: the
    // connections must be in together.
    let answer_by = (Instant::now() + CALL_TIMEOUT).min(plan.deadline);
    m.got_in = m.call(&mut conn, c, 0, &plan, answer_by).await;
    if !m.got_in {
        // Counted as a connection that did not get in, not as a failed call.
        return Member { calls: 0, failed_calls: 0, ..m };
    }
    open.fetch_add(1, Ordering::Relaxed);
    // The first idle call at an offset of its own within one interval, so that the calls of
    // 10,000 connections do not come in waves.
    let offset = plan.idle.mul_f64((c.wrapping_mul(2_654_435_761) % 1000) as f64 / 1000.0);
    let idle_from = Instant::now() + offset;
    for k in 1..MAX_CALLS {
        let at = idle_from + plan.idle * (k - 1) as u32;
        if at >= plan.deadline {
            break;
        }
        tokio::time::sleep_until(at.into()).await;
        if !m.call(&mut conn, c, k, &plan, Instant::now() + CALL_TIMEOUT).await {
            m.lost = true;
            break;
        }
    }
    open.fetch_sub(1, Ordering::Relaxed);
    m
}

impl Member {
    /// Call `k` of connection `c`, unanswered if not answered by `answer_by`; false if the
    /// connection is no longer usable.
    async fn call(&mut self, conn: &mut Conn, c: usize, k: u64, plan: &Plan, answer_by: Instant) -> bool {
        self.calls += 1;
        let started = Instant::now();
        let registers = c % REGISTER_ONE_IN == 0;
        let answer = tokio::time::timeout_at(answer_by.into(), async {
            if registers {
                conn.register(&format!("crowd-{c}"), plan.info.clone()).await.map(|()| 0)
            } else {
                let pick = c.wrapping_mul(7).wrapping_add(k as usize);
                let (maps, reduces) = plan.work.call(pick);
                // One block of that call: the crowd's calls are small.
                let one = (vec![maps[pick % maps.len()]], vec![vec![reduces[0][pick % reduces[0].len()]]]);
                conn.fetch(EXEC, one, &mut Vec::new()).await.map(|f| f.failures)
            }
        })
        .await;
        let error = match answer {
            Ok(Ok(0)) => {
                if registers {
                    self.registrations_us.push(micros(started.elapsed()));
                }
                return true;
            }
            Ok(Ok(_)) => "ChunkFetchFailure".to_string(),
            Ok(Err(ref e)) => e.to_string(),
            Err(_) => format!("no answer within {:?}", answer_by - started),
        };
        self.failed_calls += 1;
        self.first_error.get_or_insert(format!("call {k} of connection {c}: {error}"));
        // A ChunkFetchFailure leaves the connection usable; an error or a silence does not.
        matches!(answer, Ok(Ok(_)))
    }
}
