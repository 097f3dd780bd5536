//! Threads that can run flat out yield to the ones that must answer at once. The data runtime's
//! workers can run flat out for seconds; a registration needs the control thread and the journal
//! writer to run for a few microseconds each, several times in a row. At equal priority each of
//! those wake-ups may wait for a busy data worker's time slice to end, which put the registration
//! p99 above 5 ms with 64 connections fetching (docs/performance.md measures nice 0, 5, 10 and
//! 19). With the data workers a few nice levels lower, the scheduler hands the core to a waking
//! control thread almost at once. The disk-usage walk, pure bookkeeping, goes lowest of all.
//!
//! Only the agent's own threads are reordered: raising one's own nice value needs no privilege,
//! and in a pod the agent's share of the node against executors is set by its cgroup's CPU
//! weight, not by nice.

use tracing::warn;

/// Lowers the calling thread's priority by `nice` levels (0 leaves it as it is). Linux applies
/// nice per thread; a failure is logged and otherwise ignored (it costs latency only).
pub fn lower_this_thread(nice: i32) {
    if nice == 0 {
        return;
    }
    let tid = rustix::thread::gettid();
    // setpriority takes an absolute value: add to what the thread has (a nice'd agent stays below it).
    let now = rustix::process::getpriority_process(Some(tid)).unwrap_or(0);
    if let Err(e) = rustix::process::setpriority_process(Some(tid), (now + nice).min(19)) {
        warn!(nice, error = %e, "could not lower a thread's priority");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowers_only_the_calling_thread() {
        let before = rustix::process::getpriority_process(None).unwrap();
        let inside = std::thread::spawn(|| {
            lower_this_thread(3);
            rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap()
        })
        .join()
        .unwrap();
        assert_eq!(inside, (before + 3).min(19));
        assert_eq!(rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap(), before);
    }
}
