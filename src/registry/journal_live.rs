//! The live state of the journal: every fact still in force, kept as the framed record bytes a
//! compaction snapshot writes. Replay builds it from the file and hands it to the writer thread,
//! which then applies every record it has made durable, so a snapshot can never miss an
//! acknowledged record. Pure: no I/O.
//!
//! Memory: an Executor record is kept once, as its framed bytes (8 + 1 + the RegisterExecutor
//! body), plus its exec id as a map key. Measured by benches/journal_recovery.rs: 100k
//! registrations with Spark-on-Kubernetes-shaped ids and two ~100-byte local dirs (322-byte
//! frames) take 35 MiB of heap here, 367 bytes each, of which the frame is 88%. Drivers and
//! pending cleanups are few and small.

use std::collections::HashMap;
use std::path::PathBuf;

use super::format;
use super::Record;

/// An app removed whose dirs are not known to be deleted yet.
#[derive(Debug)]
pub(super) struct Cleanup {
    pub(super) dirs: Vec<PathBuf>,
    /// The AppRemoved record a snapshot writes for it.
    frame: Box<[u8]>,
}

/// exec id -> framed Executor record.
type Execs = HashMap<Box<str>, Box<[u8]>>;

#[derive(Debug, Default)]
pub(super) struct Live {
    /// app -> its executors.
    executors: HashMap<Box<str>, Execs>,
    /// app -> framed Driver record.
    drivers: HashMap<Box<str>, Box<[u8]>>,
    cleanups: HashMap<Box<str>, Cleanup>,
    /// Bytes of all frames above: what a snapshot writes after the header.
    frames_len: u64,
    records: u64,
}

impl Live {
    /// Applies one durable record, in journal order. `frame` is the record's framed bytes (kept
    /// for Executor and Driver records, which a snapshot writes back unchanged).
    pub(super) fn apply(&mut self, record: &Record, frame: Box<[u8]>) {
        match record {
            Record::Executor { app_id, exec_id, .. } => {
                if !self.executors.contains_key(app_id.as_str()) {
                    self.executors.insert(app_id.as_str().into(), HashMap::new());
                }
                if let Some(execs) = self.executors.get_mut(app_id.as_str()) {
                    let new = frame.len();
                    let old = execs.insert(exec_id.as_str().into(), frame);
                    self.account(old.map(|f| f.len()), Some(new));
                }
            }
            Record::Driver { app_id, .. } => {
                let new = frame.len();
                let old = self.drivers.insert(app_id.as_str().into(), frame);
                self.account(old.map(|f| f.len()), Some(new));
            }
            Record::AppRemoved { app_id, dirs } => self.remove_app(app_id, dirs),
            Record::CleanupDone { app_id } => {
                let old = self.cleanups.remove(app_id.as_str());
                self.account(old.map(|c| c.frame.len()), None);
            }
        }
    }

    /// The app's registrations and driver go; its dirs join any still pending from an earlier
    /// removal of the same app (deleting a dir twice is harmless, forgetting one is not).
    fn remove_app(&mut self, app_id: &str, dirs: &[PathBuf]) {
        for frame in self.executors.remove(app_id).unwrap_or_default().values() {
            self.account(Some(frame.len()), None);
        }
        let driver = self.drivers.remove(app_id);
        self.account(driver.map(|f| f.len()), None);
        let old = self.cleanups.remove(app_id);
        self.account(old.as_ref().map(|c| c.frame.len()), None);
        let mut pending = old.map(|c| c.dirs).unwrap_or_default();
        for dir in dirs {
            if !pending.contains(dir) {
                pending.push(dir.clone());
            }
        }
        if pending.is_empty() {
            // Nothing to delete (an app known only by its driver): no cleanup to wait for.
            return;
        }
        let frame = format::encode(&Record::AppRemoved { app_id: app_id.to_string(), dirs: pending.clone() });
        self.account(None, Some(frame.len()));
        self.cleanups.insert(app_id.into(), Cleanup { dirs: pending, frame: frame.into_boxed_slice() });
    }

    /// Keeps the byte and record totals in step with one map change: a frame of `old` bytes
    /// left, one of `new` bytes came.
    fn account(&mut self, old: Option<usize>, new: Option<usize>) {
        if let Some(old) = old {
            self.frames_len -= old as u64;
            self.records -= 1;
        }
        if let Some(new) = new {
            self.frames_len += new as u64;
            self.records += 1;
        }
    }

    /// Number of facts in force: registrations, drivers and pending cleanups.
    pub(super) fn records(&self) -> u64 {
        self.records
    }

    /// Bytes a snapshot of this state takes, header included.
    pub(super) fn snapshot_len(&self) -> u64 {
        format::HEADER_LEN as u64 + self.frames_len
    }

    /// The frames of a snapshot, in an order that replays to this same state: pending cleanups
    /// (AppRemoved) first, because an app can be removed and then registered again, and replaying
    /// its AppRemoved after the new registration would drop that registration.
    pub(super) fn frames(&self) -> impl Iterator<Item = &[u8]> {
        let cleanups = self.cleanups.values().map(|c| &*c.frame);
        let executors = self.executors.values().flat_map(|execs| execs.values().map(|f| &**f));
        cleanups.chain(executors).chain(self.drivers.values().map(|f| &**f))
    }

    pub(super) fn executor_frames(&self) -> impl Iterator<Item = &[u8]> {
        self.executors.values().flat_map(|execs| execs.values().map(|f| &**f))
    }

    pub(super) fn driver_frames(&self) -> impl Iterator<Item = &[u8]> {
        self.drivers.values().map(|f| &**f)
    }

    pub(super) fn cleanups(&self) -> impl Iterator<Item = (&str, &[PathBuf])> {
        self.cleanups.iter().map(|(app, c)| (&**app, &*c.dirs))
    }
}
