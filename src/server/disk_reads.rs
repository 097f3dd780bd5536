//! File reads that may wait for the disk, kept off the event loop.
//!
//! A data runtime worker serves hundreds of connections; a read that misses the page cache
//! holds it for the disk's latency (77 µs for this machine's disk, 0.5-10 ms for a cloud
//! network disk), stalling every connection on that worker. So each read first asks the page
//! cache alone: `preadv2(RWF_NOWAIT)` returns what is cached and never waits (no copy beyond
//! the read itself); for sendfile bodies, whose bytes never enter user space, the first byte
//! of the range is asked for the same way. Whatever is not cached is read on the blocking
//! pool, at most [`MAX_BLOCKING_READS`] at once, while the worker serves everyone else. Data
//! in the page cache keeps the inline, zero-copy path.

use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rustix::io::ReadWriteFlags;
use tokio::sync::Semaphore;

/// Reads waiting for the disk at once, node-wide: enough to keep a disk's queue busy (an NVMe
/// or network disk serves dozens in parallel), few enough that threads stay bounded.
pub const MAX_BLOCKING_READS: usize = 64;

/// The blocking pool's share for file reads, and what went through it.
#[derive(Debug)]
pub struct DiskReads {
    permits: Arc<Semaphore>,
    /// Reads (block bodies, sendfile calls, index reads and opens) that went to the pool
    /// because the page cache did not have their bytes.
    pub blocking: AtomicU64,
}

impl Default for DiskReads {
    fn default() -> DiskReads {
        DiskReads { permits: Arc::new(Semaphore::new(MAX_BLOCKING_READS)), blocking: AtomicU64::new(0) }
    }
}

impl DiskReads {
    /// Runs `work` (which may wait for the disk) on the blocking pool; the caller's task waits,
    /// its worker does not. The slot goes with the work, not with the caller: a connection
    /// that ends while its read hangs does not free a slot for one more hanging read.
    pub async fn run<T: Send + 'static>(&self, work: impl FnOnce() -> io::Result<T> + Send + 'static) -> io::Result<T> {
        let permit =
            Arc::clone(&self.permits).acquire_owned().await.map_err(|_| io::Error::other("the disk pool is closed"))?;
        self.blocking.fetch_add(1, Ordering::Relaxed);
        let work = move || {
            let _slot = permit;
            work()
        };
        tokio::task::spawn_blocking(work).await.map_err(|e| io::Error::other(format!("the disk read failed: {e}")))?
    }
}

/// What the page cache alone gave for a read.
#[derive(Debug, PartialEq)]
pub enum Cached {
    /// This many bytes (0 at the end of the file).
    Read(usize),
    /// None of them: the read would wait for the disk (or the filesystem cannot say without
    /// waiting, `RWF_NOWAIT` unsupported).
    NotCached,
}

/// Reads into `buf` at `offset` what the page cache holds, without waiting for the disk.
pub fn read_cached(file: &File, buf: &mut [u8], offset: u64) -> io::Result<Cached> {
    loop {
        match rustix::io::preadv2(file, &mut [io::IoSliceMut::new(buf)], offset, ReadWriteFlags::NOWAIT) {
            Ok(n) => return Ok(Cached::Read(n)),
            Err(rustix::io::Errno::INTR) => {}
            Err(rustix::io::Errno::AGAIN | rustix::io::Errno::OPNOTSUPP) => return Ok(Cached::NotCached),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Whether `[start, end)` of `file` looks cached: its first byte is. One probe, not one per
/// end: two cost 7% of the agent's CPU in the hot mixed-size bench (perf), one half that.
/// Pages of a block file leave the cache oldest first (written in order, rarely read twice),
/// so the first page goes first; a page missing further in costs one inline disk read, as
/// every read did before this check.
pub fn looks_cached(file: &File, start: u64, end: u64) -> io::Result<bool> {
    if end <= start {
        return Ok(true);
    }
    Ok(read_cached(file, &mut [0u8; 1], start)? != Cached::NotCached)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::FileExt;

    /// A file of `len` bytes, written and synced, then dropped from the page cache.
    fn cold_file(dir: &std::path::Path, len: usize) -> File {
        let path = dir.join("data");
        let mut f = File::create(&path).unwrap();
        f.write_all(&vec![7u8; len]).unwrap();
        f.sync_all().unwrap();
        let f = File::open(&path).unwrap();
        rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed).unwrap();
        f
    }

    #[test]
    fn a_cold_range_is_not_read_inline_and_a_warm_one_is() {
        let dir = tempfile::tempdir().unwrap();
        let file = cold_file(dir.path(), 1 << 20);
        let mut buf = vec![0u8; 4096];
        // After DONTNEED, on a filesystem with RWF_NOWAIT, nothing is cached. (tmpfs keeps
        // everything in memory: the test then sees it cached, which is also the truth.)
        let cold = read_cached(&file, &mut buf, 512 << 10).unwrap();
        let warm_fs = cold != Cached::NotCached;
        if !warm_fs {
            assert!(!looks_cached(&file, 0, 1 << 20).unwrap());
        }
        // Read once (as the blocking pool does), the same range is served from the cache.
        file.read_at(&mut buf, 512 << 10).unwrap();
        assert_eq!(read_cached(&file, &mut buf, 512 << 10).unwrap(), Cached::Read(4096));
        assert!(buf.iter().all(|&b| b == 7));
        file.read_exact_at(&mut vec![0u8; 1 << 20], 0).unwrap();
        assert!(looks_cached(&file, 0, 1 << 20).unwrap());
        assert_eq!(read_cached(&file, &mut buf, 1 << 20).unwrap(), Cached::Read(0), "end of file");
    }

    /// Yields until `done`, for at most 10 s.
    async fn until(done: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "timed out");
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn a_read_abandoned_by_its_caller_keeps_its_slot_until_it_ends() {
        let disk = std::sync::Arc::new(DiskReads::default());
        let (release, held) = std::sync::mpsc::channel::<()>();
        let waiter = {
            let disk = std::sync::Arc::clone(&disk);
            tokio::spawn(async move { disk.run(move || Ok(held.recv().ok())).await })
        };
        let free = || disk.permits.available_permits();
        until(|| free() < MAX_BLOCKING_READS).await;
        waiter.abort();
        let _ = waiter.await;
        assert_eq!(free(), MAX_BLOCKING_READS - 1, "the hanging read still holds its slot");
        release.send(()).unwrap();
        until(|| free() == MAX_BLOCKING_READS).await;
    }

    #[tokio::test]
    async fn blocking_reads_run_on_the_pool_and_are_counted() {
        let disk = DiskReads::default();
        let n = disk.run(|| Ok(5)).await.unwrap();
        assert_eq!(n, 5);
        assert_eq!(disk.blocking.load(Ordering::Relaxed), 1);
        let err = disk.run(|| -> io::Result<()> { Err(io::Error::other("EIO")) }).await.unwrap_err();
        assert_eq!(err.to_string(), "EIO");
    }
}
