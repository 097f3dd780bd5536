//! The registrations journal: every RegisterExecutor, RegisterDriver, application removal and
//! finished cleanup is appended to `<state dir>/registrations.journal` and made durable (write +
//! fdatasync) before it is acknowledged, so a restart, a crash or a kill -9 never loses a
//! registration a client was told about. (Spark's JVM service keeps these in LevelDB/RocksDB;
//! state lost on restart is its users' top complaint.)
//!
//! It owns that one file and the thread that writes it. It does not decide what may be
//! registered (the registry does) and never touches shuffle files: `AppRemoved` only records
//! which dirs someone else still has to delete.
//!
//! * [`format`] (journal_format.rs): the bytes: header, framing, payloads, the tail scan. Pure.
//! * [`live`] (journal_live.rs): the state still in force, as the frames a snapshot writes. Pure.
//! * [`writer`] (journal_writer.rs): the writer thread: group commit, cutting back a failed write,
//!   compaction.
//! * this file: the API, and open: lock, replay, cut a torn or corrupt tail, start the writer.
//!
//! Guarantees: an acknowledged record survives any crash (its bytes were fdatasynced, and nothing
//! before it is ever rewritten in place); a record that got an error may or may not survive a
//! crash that follows; replay applies records in the order they were acknowledged.

#[path = "journal_format.rs"]
mod format;
#[path = "journal_live.rs"]
mod live;
#[cfg(test)]
#[path = "journal_tests.rs"]
mod tests;
#[path = "journal_writer.rs"]
mod writer;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use tokio::sync::oneshot;
use tracing::{debug, warn};

use super::NodeDirs;
use crate::protocol::ExecutorShuffleInfo;
use format::{Header, Step};
use live::Live;
use writer::{Counters, Opened, Request, Wrap, Writer};

/// The journal's file name inside the state dir.
pub const FILE_NAME: &str = "registrations.journal";

/// One durable fact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A registration; replaces an earlier one of the same (app, exec). `node`: where its dirs
    /// are on the node, when translated from its pod's volumes.
    Executor { app_id: String, exec_id: String, info: ExecutorShuffleInfo, node: Option<NodeDirs> },
    /// RegisterDriver (the 2.2 Kubernetes fork and Mesos clients); replaces an earlier one.
    Driver { app_id: String, heartbeat_timeout_ms: i64 },
    /// The app is gone: its registrations and driver with it; `dirs` still have to be deleted.
    /// Removing an app again before its cleanup is done adds to the dirs pending.
    AppRemoved { app_id: String, dirs: Vec<PathBuf> },
    /// Every pending dir of the app's removals was deleted.
    CleanupDone { app_id: String },
}

/// What recovery found: the state in force, in no particular order.
#[derive(Debug, Default)]
pub struct Recovered {
    pub executors: Vec<(String, String, ExecutorShuffleInfo, Option<NodeDirs>)>,
    pub drivers: Vec<(String, i64)>,
    /// Removed apps whose dirs are still to be deleted. Never holds an empty list.
    pub pending_cleanups: Vec<(String, Vec<PathBuf>)>,
    /// Valid records replayed (live or superseded).
    pub records_read: u64,
    /// Why a torn or corrupt tail was cut off, if one was.
    pub skipped: Option<String>,
    /// Length of the journal after recovery (the valid prefix).
    pub bytes: u64,
}

/// For metrics. Counters run from this `open`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JournalStats {
    /// Bytes of the journal file up to its last durable record.
    pub file_bytes: u64,
    /// Facts in force: registrations, drivers and pending cleanups.
    pub live_records: u64,
    /// Bytes a compacted journal would take: the live state, encoded.
    pub snapshot_bytes: u64,
    /// Group commits: one write and one fdatasync each, however many records they carried.
    pub fsyncs: u64,
    /// Records made durable and acknowledged.
    pub appended: u64,
    /// Records answered with an error.
    pub failed_appends: u64,
    pub compactions: u64,
    /// Records waiting for the writer thread now.
    pub queued: u64,
    /// Appends fail until the writer can clean up after an earlier failure (see the log).
    pub repair_pending: bool,
}

/// Why the journal could not be opened or a record could not be made durable.
#[derive(Debug, Clone, thiserror::Error)]
pub enum JournalError {
    /// The state dir or journal could not be created, opened, read or cut back at open.
    #[error("cannot {what} {}: {source}", path.display())]
    Io { what: &'static str, path: PathBuf, source: Arc<io::Error> },
    /// Another process holds the state dir (an older agent still running on this node?).
    #[error("{} is locked by another process (an older agent still running?); refusing to share the journal", path.display())]
    Locked { path: PathBuf },
    /// The file does not start with the journal's magic: not ours, so never overwritten.
    #[error("{} is not a registrations journal (bad magic); refusing to start rather than overwrite it", path.display())]
    NotAJournal { path: PathBuf },
    /// Written by an agent with a newer format.
    #[error("{} has journal format version {found}, this agent reads version {supported}; refusing to start rather than lose registrations (run the newer agent, or move the file aside to start empty)", path.display())]
    UnknownVersion { path: PathBuf, found: u32, supported: u32 },
    /// A record with a valid checksum that this version cannot read: a software mismatch, not a
    /// torn write, so it is not cut off with everything after it.
    #[error("record at byte {offset} of {} has a valid checksum but cannot be read ({reason}); refusing to start rather than drop it and every record after it (move the file aside to start empty)", path.display())]
    Undecodable { path: PathBuf, offset: u64, reason: String },
    /// Writing or syncing the record failed (ENOSPC, EIO, ...); it is not acknowledged.
    #[error("cannot persist registration to {}: {source}", path.display())]
    Persist { path: PathBuf, source: Arc<io::Error> },
    /// An earlier failure is not cleaned up yet, so nothing can be appended safely.
    #[error("cannot persist registration to {}: {reason}: {source}", path.display())]
    Unrepaired { path: PathBuf, reason: &'static str, source: Arc<io::Error> },
    /// The record is larger than replay would accept.
    #[error("cannot persist registration: its record is {len} bytes, over the journal's limit of {limit}")]
    TooLarge { len: usize, limit: usize },
    /// The writer thread is gone (it only stops when the journal is dropped, or on a bug).
    #[error("cannot persist registration to {}: the journal writer has stopped", path.display())]
    Closed { path: PathBuf },
}

/// Handle to the journal; clones share one writer thread, which stops (after finishing its
/// current batch) when the last clone is dropped.
#[derive(Clone)]
pub struct Journal {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    /// Unbounded, but each caller waits for its own ack, so at most one record per concurrent
    /// registration is queued: the network's request limits bound it.
    requests: Option<mpsc::Sender<Request>>,
    counters: Arc<Counters>,
    writer: Option<JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        drop(self.requests.take());
        // Bounded by one commit; joining releases the file and the dir lock deterministically.
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").field("path", &self.inner.path).field("stats", &self.stats()).finish()
    }
}

/// Knobs tests turn; production uses the defaults.
struct Settings {
    /// No compaction below this file size.
    min_compact_bytes: u64,
    wrap: Wrap,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings { min_compact_bytes: 1 << 20, wrap: Arc::new(|file| Box::new(file)) }
    }
}

impl Journal {
    /// Opens (creating the dir and file if needed) `<dir>/registrations.journal`, replays it and
    /// returns the live state. A torn or corrupt tail is cut off with a warning, keeping every
    /// valid record before it; an unknown format version, a foreign file or a checksummed record
    /// that cannot be read is an error. Blocking (reads the whole file): call it at start-up, or
    /// from `spawn_blocking`.
    pub fn open(dir: &Path) -> Result<(Journal, Recovered), JournalError> {
        Journal::open_with(dir, Settings::default())
    }

    fn open_with(dir: &Path, settings: Settings) -> Result<(Journal, Recovered), JournalError> {
        let path = dir.join(FILE_NAME);
        let dir_handle = lock_dir(dir)?;
        let tmp = writer::tmp_path(&path);
        if fs::remove_file(&tmp).is_ok() {
            // An interrupted compaction; the journal itself is complete.
            debug!(path = %tmp.display(), "removed an unfinished compaction");
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_error("open the journal", &path))?;
        let mut opened = Opened { path: path.clone(), dir: dir_handle, file, len: 0, live: Live::default() };
        let recovered = replay(&mut opened)?;
        let counters = Arc::new(Counters::default());
        let writer = Writer::new(opened, settings.min_compact_bytes, settings.wrap, Arc::clone(&counters));
        let (requests, queue) = mpsc::channel();
        let writer = std::thread::Builder::new()
            .name("journal-writer".into())
            .spawn(move || writer.run(queue))
            .map_err(io_error("start the writer thread for", &path))?;
        let inner = Inner { path, requests: Some(requests), counters, writer: Some(writer) };
        Ok((Journal { inner: Arc::new(inner) }, recovered))
    }

    /// Appends the record and returns once it is durable (written and fdatasynced). Concurrent
    /// appends share one write and one fdatasync. On error nothing was acknowledged and what was
    /// durable before is intact. Dropping the future does not withdraw the record: it may still
    /// be written.
    pub async fn append(&self, record: Record) -> Result<(), JournalError> {
        let frame = format::encode(&record);
        let len = format::payload_len(&frame);
        if len > format::MAX_PAYLOAD {
            return Err(JournalError::TooLarge { len, limit: format::MAX_PAYLOAD });
        }
        let closed = || JournalError::Closed { path: self.inner.path.clone() };
        let requests = self.inner.requests.as_ref().ok_or_else(closed)?;
        let (ack, acked) = oneshot::channel();
        self.inner.counters.queued.fetch_add(1, Ordering::Relaxed);
        if requests.send(Request { record, frame, ack }).is_err() {
            self.inner.counters.queued.fetch_sub(1, Ordering::Relaxed);
            return Err(closed());
        }
        acked.await.map_err(|_| closed())?
    }

    pub fn stats(&self) -> JournalStats {
        let c = &self.inner.counters;
        let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        JournalStats {
            file_bytes: get(&c.file_bytes),
            live_records: get(&c.live_records),
            snapshot_bytes: get(&c.snapshot_bytes),
            fsyncs: get(&c.fsyncs),
            appended: get(&c.appended),
            failed_appends: get(&c.failed_appends),
            compactions: get(&c.compactions),
            queued: get(&c.queued),
            repair_pending: c.repair_pending.load(Ordering::Relaxed),
        }
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }
}

fn io_error<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> JournalError + 'a {
    move |e| JournalError::Io { what, path: path.to_path_buf(), source: Arc::new(e) }
}

/// Creates the state dir if needed and takes an exclusive flock on it for as long as the returned
/// handle lives (the writer keeps it): two agents appending to one journal would interleave
/// records. Locking the dir, not the file, survives compaction replacing the file.
fn lock_dir(dir: &Path) -> Result<File, JournalError> {
    let existed = dir.is_dir();
    fs::create_dir_all(dir).map_err(io_error("create the state dir", dir))?;
    let handle = File::open(dir).map_err(io_error("open the state dir", dir))?;
    if !existed {
        // Make the new dir's own entry durable, or a crash could lose the whole journal.
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            let _ = File::open(parent).and_then(|p| p.sync_all());
        }
    }
    match rustix::fs::flock(&handle, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(handle),
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => Err(JournalError::Locked { path: dir.to_path_buf() }),
        Err(e) => {
            // Some filesystems (old NFS) have no flock; the journal still works, unguarded.
            warn!(dir = %dir.display(), error = %e, "cannot lock the state dir; make sure only one agent uses it");
            Ok(handle)
        }
    }
}

/// Reads the file, checks the header, replays every valid record into `opened.live` and cuts off
/// a torn or corrupt tail.
fn replay(opened: &mut Opened) -> Result<Recovered, JournalError> {
    let path = opened.path.clone();
    let mut bytes = Vec::new();
    opened.file.read_to_end(&mut bytes).map_err(io_error("read the journal", &path))?;
    match format::check_header(&bytes) {
        Header::Valid => {}
        Header::Missing => {
            write_header(opened).map_err(io_error("initialise the journal", &path))?;
            bytes = format::header().to_vec();
        }
        Header::BadMagic => return Err(JournalError::NotAJournal { path }),
        Header::UnknownVersion(found) => {
            return Err(JournalError::UnknownVersion { path, found, supported: format::VERSION })
        }
    }
    let (mut at, mut records_read) = (format::HEADER_LEN, 0);
    let tail = loop {
        match format::step(&bytes, at) {
            Step::Record { payload, next } => {
                let record = format::decode(payload).map_err(|reason| JournalError::Undecodable {
                    path: path.clone(),
                    offset: at as u64,
                    reason,
                })?;
                opened.live.apply(&record, bytes[at..next].into());
                records_read += 1;
                at = next;
            }
            Step::End => break None,
            Step::Torn(reason) => break Some((reason, false)),
            Step::Corrupt(reason) => break Some((reason, true)),
        }
    };
    let skipped = match tail {
        Some((reason, corrupt)) => Some(cut_tail(opened, &bytes, at, reason, corrupt)?),
        None => None,
    };
    opened.len = at as u64;
    let mut recovered = recovered_state(&opened.live, &path)?;
    recovered.records_read = records_read;
    recovered.skipped = skipped;
    recovered.bytes = at as u64;
    Ok(recovered)
}

/// Empty or cut inside the header: the agent died while creating the file, before anything
/// could have been acknowledged.
fn write_header(opened: &Opened) -> io::Result<()> {
    opened.file.set_len(0)?;
    opened.file.write_all_at(&format::header(), 0)?;
    opened.file.sync_all()?;
    opened.dir.sync_all()
}

/// Cuts the file at `at`, the end of the last valid record, and says why. The dropped bytes of a
/// corrupt (not merely torn) tail may hold acknowledged records, so they are saved next to the
/// journal for a post-mortem first.
fn cut_tail(opened: &Opened, bytes: &[u8], at: usize, reason: String, corrupt: bool) -> Result<String, JournalError> {
    let dropped = &bytes[at..];
    let saved = if corrupt { save_dropped(&opened.path, dropped) } else { None };
    opened.file.set_len(at as u64).map_err(io_error("cut the torn tail off", &opened.path))?;
    opened.file.sync_all().map_err(io_error("cut the torn tail off", &opened.path))?;
    let why = match saved {
        Some(saved) => format!("{reason}; {} bytes dropped (saved to {})", dropped.len(), saved.display()),
        None => format!("{reason}; {} bytes dropped", dropped.len()),
    };
    warn!(path = %opened.path.display(), valid_bytes = at, reason = %why, "journal tail skipped; every record before it is kept");
    Ok(why)
}

fn save_dropped(path: &Path, dropped: &[u8]) -> Option<PathBuf> {
    let secs = crate::clock::unix_secs();
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".corrupt-{secs}"));
    let saved = PathBuf::from(name);
    let written = fs::write(&saved, dropped).and_then(|()| File::open(&saved)?.sync_all());
    match written {
        Ok(()) => Some(saved),
        Err(e) => {
            warn!(path = %saved.display(), error = %e, "cannot save the corrupt journal tail");
            None
        }
    }
}

/// The live state as values. Every frame here was decoded once during replay already.
fn recovered_state(live: &Live, path: &Path) -> Result<Recovered, JournalError> {
    let decode = |frame: &[u8]| {
        format::decode(frame.get(format::FRAME_HEADER_LEN..).unwrap_or_default()).map_err(|reason| {
            JournalError::Undecodable {
                path: path.to_path_buf(),
                offset: 0,
                reason: format!("re-reading a live record: {reason}"),
            }
        })
    };
    let mut recovered = Recovered::default();
    for frame in live.executor_frames() {
        if let Record::Executor { app_id, exec_id, info, node } = decode(frame)? {
            recovered.executors.push((app_id, exec_id, info, node));
        }
    }
    for frame in live.driver_frames() {
        if let Record::Driver { app_id, heartbeat_timeout_ms } = decode(frame)? {
            recovered.drivers.push((app_id, heartbeat_timeout_ms));
        }
    }
    recovered.pending_cleanups = live.cleanups().map(|(app, dirs)| (app.to_string(), dirs.to_vec())).collect();
    Ok(recovered)
}
