//! The writer thread: after open, the only code that writes the journal. It drains every queued
//! record, writes them with one write and one fdatasync (group commit) and only then
//! acknowledges each. After a failed write it cuts the file back to its last durable byte before
//! anything else is appended. When the file has grown past twice its live state it compacts it.
//!
//! It is a std thread, not a tokio task: fdatasync blocks for milliseconds, and a dedicated thread
//! keeps that off the runtime without holding a `spawn_blocking` slot per commit.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::oneshot;
use tracing::{info, warn};

use super::format;
use super::live::Live;
use super::{JournalError, Record};

/// A batch stops growing at this many bytes (one record always goes, whatever its size), so the
/// one buffer a commit copies into stays small.
const MAX_BATCH_BYTES: usize = 4 << 20;

/// The file operations a commit needs. Production uses [`File`]; tests wrap it to inject short
/// writes, failed syncs and failed truncates.
pub(super) trait JournalFile: Send {
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()>;
    fn sync_data(&mut self) -> io::Result<()>;
    /// Cuts the file to `len` bytes and makes that durable.
    fn truncate(&mut self, len: u64) -> io::Result<()>;
}

impl JournalFile for File {
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        FileExt::write_all_at(self, buf, offset)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        File::sync_data(self)
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.set_len(len)?;
        // sync_all, not sync_data: a size change is metadata, and this path is rare.
        self.sync_all()
    }
}

/// Turns an opened journal file into what the writer uses (a hook for fault injection).
pub(super) type Wrap = Arc<dyn Fn(File) -> Box<dyn JournalFile> + Send + Sync>;

/// One record waiting for the writer.
pub(super) struct Request {
    pub(super) record: Record,
    /// Encoded by the caller, so the CRC work is spread over the runtime's threads.
    pub(super) frame: Vec<u8>,
    pub(super) ack: oneshot::Sender<Result<(), JournalError>>,
}

/// What the writer publishes for [`super::Journal::stats`].
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) file_bytes: AtomicU64,
    pub(super) live_records: AtomicU64,
    pub(super) snapshot_bytes: AtomicU64,
    pub(super) fsyncs: AtomicU64,
    pub(super) appended: AtomicU64,
    pub(super) failed_appends: AtomicU64,
    pub(super) compactions: AtomicU64,
    pub(super) queued: AtomicU64,
    pub(super) repair_pending: AtomicBool,
}

/// Why appends fail until the writer manages to put things right (retried on every batch).
#[derive(Debug, Clone, Copy)]
enum Broken {
    /// A failed write may have left bytes past the durable length, and cutting them off failed.
    Tail,
    /// A compacted file was renamed into place but the directory could not be synced, so after a
    /// power loss the old file might be the journal: nothing may be acknowledged into the new one.
    DirEntry,
}

impl Broken {
    fn reason(self) -> &'static str {
        match self {
            Broken::Tail => "an earlier failed write could not be cut back to the last durable record",
            Broken::DirEntry => "the compacted journal's directory entry could not be made durable",
        }
    }
}

/// A journal opened and replayed: everything the writer starts from.
pub(super) struct Opened {
    pub(super) path: PathBuf,
    /// The locked state dir, kept open for directory fsyncs (and to hold the lock).
    pub(super) dir: File,
    pub(super) file: File,
    /// Length of the valid prefix (the file was cut to it).
    pub(super) len: u64,
    pub(super) live: Live,
}

pub(super) struct Writer {
    path: PathBuf,
    dir: File,
    file: Box<dyn JournalFile>,
    /// Every byte before this is durable and valid; nothing after it is acknowledged.
    durable_len: u64,
    live: Live,
    counters: Arc<Counters>,
    min_compact_bytes: u64,
    wrap: Wrap,
    broken: Option<Broken>,
    /// After a failed compaction, the next attempt waits until the file reaches this size.
    compact_retry_at: u64,
}

impl Writer {
    pub(super) fn new(opened: Opened, min_compact_bytes: u64, wrap: Wrap, counters: Arc<Counters>) -> Writer {
        let writer = Writer {
            path: opened.path,
            dir: opened.dir,
            file: wrap(opened.file),
            durable_len: opened.len,
            live: opened.live,
            counters,
            min_compact_bytes,
            wrap,
            broken: None,
            compact_retry_at: 0,
        };
        writer.publish();
        writer
    }

    /// Runs until every [`super::Journal`] handle is gone.
    pub(super) fn run(mut self, requests: Receiver<Request>) {
        self.maybe_compact();
        self.publish();
        while let Ok(first) = requests.recv() {
            let mut bytes = first.frame.len();
            let mut batch = vec![first];
            while bytes < MAX_BATCH_BYTES {
                let Ok(next) = requests.try_recv() else { break };
                bytes += next.frame.len();
                batch.push(next);
            }
            self.counters.queued.fetch_sub(batch.len() as u64, Ordering::Relaxed);
            self.commit(batch, bytes);
            self.maybe_compact();
            self.publish();
        }
    }

    fn commit(&mut self, batch: Vec<Request>, bytes: usize) {
        if let Err(e) = self.repair() {
            return self.fail(batch, || e.clone());
        }
        let mut buf = Vec::with_capacity(bytes);
        batch.iter().for_each(|r| buf.extend_from_slice(&r.frame));
        let written = self.file.write_all_at(&buf, self.durable_len).and_then(|()| self.file.sync_data());
        match written {
            Ok(()) => {
                self.durable_len += buf.len() as u64;
                self.counters.fsyncs.fetch_add(1, Ordering::Relaxed);
                self.counters.appended.fetch_add(batch.len() as u64, Ordering::Relaxed);
                let acks: Vec<_> = batch
                    .into_iter()
                    .map(|request| {
                        self.live.apply(&request.record, request.frame.into_boxed_slice());
                        request.ack
                    })
                    .collect();
                // Stats first, so a caller that was acknowledged sees its record counted.
                self.publish();
                for ack in acks {
                    // The caller may have stopped waiting; the record is durable either way.
                    let _ = ack.send(Ok(()));
                }
            }
            Err(e) => {
                let source = Arc::new(e);
                warn!(path = %self.path.display(), records = batch.len(), error = %source, "journal write failed; records not acknowledged");
                // Before anything else is appended: whatever part of the batch reached the file
                // must go, or a later replay could read it after records acknowledged later.
                self.cut_back();
                let path = self.path.clone();
                self.fail(batch, || JournalError::Persist { path: path.clone(), source: Arc::clone(&source) });
            }
        }
    }

    fn fail(&self, batch: Vec<Request>, error: impl Fn() -> JournalError) {
        self.counters.failed_appends.fetch_add(batch.len() as u64, Ordering::Relaxed);
        self.publish();
        for request in batch {
            let _ = request.ack.send(Err(error()));
        }
    }

    fn cut_back(&mut self) {
        if let Err(e) = self.file.truncate(self.durable_len) {
            warn!(path = %self.path.display(), durable_bytes = self.durable_len, error = %e,
                "cannot cut the journal back to its last durable record; appends fail until it can");
            self.broken = Some(Broken::Tail);
        }
    }

    /// Puts right what an earlier failure left, or says why appends must still fail.
    fn repair(&mut self) -> Result<(), JournalError> {
        let Some(broken) = self.broken else { return Ok(()) };
        let result = match broken {
            Broken::Tail => self.file.truncate(self.durable_len),
            Broken::DirEntry => self.dir.sync_all(),
        };
        match result {
            Ok(()) => {
                self.broken = None;
                info!(path = %self.path.display(), "journal repaired; appends resume");
                Ok(())
            }
            Err(e) => {
                Err(JournalError::Unrepaired { path: self.path.clone(), reason: broken.reason(), source: Arc::new(e) })
            }
        }
    }

    /// Compacts when the file exceeds max(min_compact_bytes, 2 x snapshot): each compaction
    /// writes the live state once, and at least as many bytes were appended since the last one,
    /// so the cost per append stays constant.
    fn maybe_compact(&mut self) {
        let threshold = self.min_compact_bytes.max(self.live.snapshot_len().saturating_mul(2));
        if self.broken.is_some() || self.durable_len <= threshold || self.durable_len < self.compact_retry_at {
            return;
        }
        let (started, before) = (Instant::now(), self.durable_len);
        match self.compact() {
            Ok(()) => info!(
                path = %self.path.display(),
                bytes_before = before,
                bytes_after = self.durable_len,
                live_records = self.live.records(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "journal compacted"
            ),
            Err(e) => {
                // The old file is intact and complete: keep appending to it, retry later.
                self.compact_retry_at = self.durable_len + self.durable_len / 2;
                warn!(path = %self.path.display(), error = %e, retry_at_bytes = self.compact_retry_at,
                    "journal compaction failed; appending to the uncompacted journal");
            }
        }
    }

    fn compact(&mut self) -> io::Result<()> {
        let tmp_path = tmp_path(&self.path);
        let (tmp, len) = match write_snapshot(&tmp_path, &self.live).and_then(|tmp| {
            fs::rename(&tmp_path, &self.path)?;
            Ok(tmp)
        }) {
            Ok(tmp) => (tmp, self.live.snapshot_len()),
            Err(e) => {
                let _ = fs::remove_file(&tmp_path);
                return Err(e);
            }
        };
        // Renamed: the new file is the journal from here on, whatever happens next.
        self.file = (self.wrap)(tmp);
        self.durable_len = len;
        self.counters.compactions.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.dir.sync_all() {
            warn!(path = %self.path.display(), error = %e, "cannot sync the state dir after compaction; appends fail until it can");
            self.broken = Some(Broken::DirEntry);
        }
        Ok(())
    }

    fn publish(&self) {
        let c = &self.counters;
        c.file_bytes.store(self.durable_len, Ordering::Relaxed);
        c.live_records.store(self.live.records(), Ordering::Relaxed);
        c.snapshot_bytes.store(self.live.snapshot_len(), Ordering::Relaxed);
        c.repair_pending.store(self.broken.is_some(), Ordering::Relaxed);
    }
}

pub(super) fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".tmp");
    PathBuf::from(name)
}

/// Writes header + live frames to `path` and makes them durable; returns the open file.
fn write_snapshot(path: &Path, live: &Live) -> io::Result<File> {
    let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(path)?;
    let mut out = BufWriter::with_capacity(1 << 20, &file);
    out.write_all(&format::header())?;
    for frame in live.frames() {
        out.write_all(frame)?;
    }
    out.flush()?;
    drop(out);
    file.sync_data()?;
    Ok(file)
}
