//! Journal tests: the format, replay, and compaction. Files live in temp dirs on the test
//! machine's real filesystem. Durability, group commit and failures are in [`durability`].

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::os::unix::ffi::OsStringExt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::format::{self, Header, Step};
use super::*;

#[path = "journal_durability_tests.rs"]
mod durability;

const WAIT: Duration = Duration::from_secs(30);

fn info(n: usize) -> ExecutorShuffleInfo {
    let uuid = format!("{n:08x}-5d1c-4d2a-9b1e-3f0c2a7d{n:04x}");
    ExecutorShuffleInfo {
        local_dirs: vec![
            format!("/var/data/spark-{uuid}/blockmgr-{uuid}"),
            format!("/mnt/disk2/spark-{uuid}/blockmgr-{uuid}"),
        ],
        sub_dirs_per_local_dir: 64,
        shuffle_manager: "org.apache.spark.shuffle.sort.SortShuffleManager".into(),
    }
}

fn exec(app: &str, exec: usize) -> Record {
    Record::Executor { app_id: app.into(), exec_id: exec.to_string(), info: info(exec), node: None }
}

/// A registration translated to node dirs (`agent.localDirs.translate`), one per local dir.
fn exec_on_node(app: &str, exec: usize) -> Record {
    let registered = info(exec);
    let dirs = registered.local_dirs.iter().map(|d| format!("/opt/local-path-provisioner/pvc-{exec}{d}")).collect();
    let on_volume = (0..registered.local_dirs.len()).map(|i| i % 2 == 0).collect();
    let node = Some(NodeDirs { dirs, on_volume });
    Record::Executor { app_id: app.into(), exec_id: exec.to_string(), info: registered, node }
}

fn removed(app: &str, dirs: &[&str]) -> Record {
    Record::AppRemoved { app_id: app.into(), dirs: dirs.iter().map(PathBuf::from).collect() }
}

/// The state, sorted, for comparisons.
type State =
    (Vec<(String, String, ExecutorShuffleInfo, Option<NodeDirs>)>, Vec<(String, i64)>, Vec<(String, Vec<PathBuf>)>);

fn state(r: &Recovered) -> State {
    let (mut e, mut d, mut c) = (r.executors.clone(), r.drivers.clone(), r.pending_cleanups.clone());
    e.sort_by(|x, y| (&x.0, &x.1).cmp(&(&y.0, &y.1)));
    d.sort();
    c.sort();
    (e, d, c)
}

/// The replay rules, written out again independently of `live`, to check it against.
#[derive(Default)]
struct Model {
    executors: BTreeMap<(String, String), (ExecutorShuffleInfo, Option<NodeDirs>)>,
    drivers: BTreeMap<String, i64>,
    cleanups: BTreeMap<String, Vec<PathBuf>>,
}

impl Model {
    fn apply(&mut self, record: &Record) {
        match record.clone() {
            Record::Executor { app_id, exec_id, info, node } => {
                drop(self.executors.insert((app_id, exec_id), (info, node)))
            }
            Record::Driver { app_id, heartbeat_timeout_ms } => drop(self.drivers.insert(app_id, heartbeat_timeout_ms)),
            Record::AppRemoved { app_id, dirs } => {
                self.executors.retain(|(app, _), _| *app != app_id);
                self.drivers.remove(&app_id);
                let pending = self.cleanups.entry(app_id.clone()).or_default();
                dirs.into_iter().for_each(|d| {
                    if !pending.contains(&d) {
                        pending.push(d)
                    }
                });
                if pending.is_empty() {
                    self.cleanups.remove(&app_id);
                }
            }
            Record::CleanupDone { app_id } => drop(self.cleanups.remove(&app_id)),
        }
    }

    fn state(&self) -> State {
        (
            self.executors.iter().map(|((a, e), (i, n))| (a.clone(), e.clone(), i.clone(), n.clone())).collect(),
            self.drivers.iter().map(|(a, t)| (a.clone(), *t)).collect(),
            self.cleanups.iter().map(|(a, d)| (a.clone(), d.clone())).collect(),
        )
    }
}

fn open(dir: &Path) -> (Journal, Recovered) {
    // A child process forked by a concurrent test holds copies of this process's fds until it
    // execs, and so holds the dir's flock for that moment: a reopen right after a drop can find
    // the dir still locked. (The agent opens its journal once, so only tests reopen.)
    let deadline = Instant::now() + WAIT;
    loop {
        match Journal::open(dir) {
            Err(JournalError::Locked { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5))
            }
            opened => return opened.unwrap_or_else(|e| panic!("open {}: {e}", dir.display())),
        }
    }
}

fn journal_path(dir: &Path) -> PathBuf {
    dir.join(FILE_NAME)
}

fn file_len(dir: &Path) -> u64 {
    fs::metadata(journal_path(dir)).map(|m| m.len()).unwrap_or(0)
}

async fn append_all(journal: &Journal, records: &[Record]) {
    for r in records {
        journal.append(r.clone()).await.unwrap_or_else(|e| panic!("append {r:?}: {e}"));
    }
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Captures what `tracing` logs while `f` runs on this thread.
fn logged<T>(f: impl FnOnce() -> T) -> (T, String) {
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let sink = buf.clone();
    let subscriber = tracing_subscriber::fmt().with_writer(move || sink.clone()).with_ansi(false).finish();
    let out = tracing::subscriber::with_default(subscriber, f);
    let text = String::from_utf8_lossy(&buf.0.lock().unwrap()).into_owned();
    (out, text)
}

// ---------------------------------------------------------------------------------------------
// Format

#[test]
fn every_record_kind_round_trips_through_its_frame() {
    let odd_path = PathBuf::from(OsString::from_vec(b"/var/data/not-utf8-\xff\xfe".to_vec()));
    let records = [
        exec("app-20240101123456-0001", 7),
        exec_on_node("app-20240101123456-0001", 8),
        Record::Driver { app_id: "app-1".into(), heartbeat_timeout_ms: -120_000 },
        Record::AppRemoved { app_id: "app-1".into(), dirs: vec![odd_path, PathBuf::from("/mnt/disk2/spark-x")] },
        Record::AppRemoved { app_id: "app-2".into(), dirs: vec![] },
        Record::CleanupDone { app_id: "app-1".into() },
    ];
    for record in records {
        let frame = format::encode(&record);
        let Step::Record { payload, next } = format::step(&frame, 0) else { panic!("{record:?} did not scan") };
        assert_eq!(next, frame.len());
        assert_eq!(format::decode(payload).as_ref(), Ok(&record));
    }
}

#[test]
fn a_translated_registration_whose_node_dirs_do_not_match_its_local_dirs_is_undecodable() {
    let Record::Executor { app_id, exec_id, info, node: Some(mut node) } = exec_on_node("a", 1) else {
        panic!("an executor record")
    };
    node.on_volume.pop();
    let frame = format::encode(&Record::Executor { app_id, exec_id, info, node: Some(node) });
    let payload = &frame[format::FRAME_HEADER_LEN..];
    assert_eq!(payload[0], 5, "its own record kind: a version-1 reader without it stops rather than misreads");
    assert_eq!(format::decode(payload), Err("node dirs that do not match the local dirs one to one".to_string()));
}

#[test]
fn the_header_and_a_driver_record_have_these_exact_bytes() {
    assert_eq!(format::header(), *b"SSAREGJ\n\x00\x00\x00\x01");
    let frame = format::encode(&Record::Driver { app_id: "a".into(), heartbeat_timeout_ms: 2 });
    let payload = b"\x02\x00\x00\x00\x01a\x00\x00\x00\x00\x00\x00\x00\x02";
    let mut golden = vec![0, 0, 0, 14];
    golden.extend_from_slice(&crc32fast::hash(payload).to_be_bytes());
    golden.extend_from_slice(payload);
    assert_eq!(frame, golden);
}

#[test]
fn a_header_is_valid_missing_foreign_or_of_another_version() {
    let h = format::header();
    assert_eq!(format::check_header(&h), Header::Valid);
    assert_eq!(format::check_header(b""), Header::Missing);
    assert_eq!(format::check_header(&h[..5]), Header::Missing);
    assert_eq!(format::check_header(b"SSAX"), Header::BadMagic);
    assert_eq!(format::check_header(b"{\"not\": \"a journal\"}"), Header::BadMagic);
    assert_eq!(format::check_header(b"SSAREGJ\n\x00\x00\x00\x02"), Header::UnknownVersion(2));
}

#[test]
fn an_empty_or_oversized_record_length_is_corrupt_before_anything_is_allocated() {
    let mut empty = vec![0, 0, 0, 0, 1, 2, 3, 4];
    empty.extend_from_slice(b"more");
    assert!(matches!(format::step(&empty, 0), Step::Corrupt(_)));
    let huge = [0x7f, 0xff, 0xff, 0xff, 0, 0, 0, 0, 1];
    assert!(matches!(format::step(&huge, 0), Step::Corrupt(_)));
    let torn = [0, 0, 0, 40, 1, 2, 3, 4, 1, 0, 0];
    assert!(matches!(format::step(&torn, 0), Step::Torn(_)));
    assert!(matches!(format::step(&[0; 30], 0), Step::Torn(_)));
}

#[test]
fn a_checksummed_payload_of_unknown_kind_or_with_trailing_bytes_does_not_decode() {
    assert_eq!(format::decode(b"\x09"), Err("unknown record kind 9".to_string()));
    let mut frame = format::encode(&Record::CleanupDone { app_id: "a".into() });
    frame.push(0);
    assert_eq!(format::decode(&frame[8..]), Err("1 bytes after the last field".to_string()));
    assert!(format::decode(b"\x03\x00\x00\x00\x01a\x7f\xff\xff\xff").is_err());
}

// ---------------------------------------------------------------------------------------------
// Replay

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_applies_records_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut replaced = exec("a", 1);
    if let Record::Executor { info, .. } = &mut replaced {
        info.sub_dirs_per_local_dir = 128;
    }
    let records = [
        exec("a", 1),
        exec("a", 2),
        Record::Driver { app_id: "a".into(), heartbeat_timeout_ms: 1000 },
        exec("b", 1),
        replaced.clone(),         // replaces (a, 1)
        removed("a", &["/d/a1"]), // drops (a, *) and a's driver
        exec("a", 3),             // a registers again after removal
        removed("b", &["/d/b1"]),
        removed("b", &["/d/b2", "/d/b1"]),               // pending dirs add up
        Record::CleanupDone { app_id: "nobody".into() }, // unknown app: no effect
        Record::Driver { app_id: "c".into(), heartbeat_timeout_ms: 5 },
        removed("c", &[]), // driver only: nothing to clean
        exec("d", 1),
        removed("d", &["/d/d1"]),
        Record::CleanupDone { app_id: "d".into() },
    ];
    let (journal, recovered) = open(dir.path());
    assert_eq!(recovered.records_read, 0);
    append_all(&journal, &records).await;
    assert_eq!(journal.stats().live_records, 3);
    drop(journal);

    let (_journal, recovered) = open(dir.path());
    let mut model = Model::default();
    records.iter().for_each(|r| model.apply(r));
    let expected = (
        vec![("a".to_string(), "3".to_string(), info(3), None)],
        vec![],
        vec![
            ("a".to_string(), vec![PathBuf::from("/d/a1")]),
            ("b".to_string(), vec![PathBuf::from("/d/b1"), PathBuf::from("/d/b2")]),
        ],
    );
    assert_eq!(model.state(), expected);
    assert_eq!(state(&recovered), expected);
    assert_eq!((recovered.records_read, recovered.skipped, recovered.bytes), (15, None, file_len(dir.path())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_kind_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let odd_path = PathBuf::from(OsString::from_vec(b"/var/data/not-utf8-\xff".to_vec()));
    let (journal, _) = open(dir.path());
    append_all(
        &journal,
        &[
            exec("app-1", 1),
            Record::Driver { app_id: "app-1".into(), heartbeat_timeout_ms: 120_000 },
            exec("app-2", 1),
            Record::AppRemoved { app_id: "app-2".into(), dirs: vec![odd_path.clone()] },
            exec("app-3", 1),
            removed("app-3", &["/d/3"]),
            Record::CleanupDone { app_id: "app-3".into() },
            exec_on_node("app-4", 2),
        ],
    )
    .await;
    drop(journal);
    let (_journal, recovered) = open(dir.path());
    let Record::Executor { node: translated, .. } = exec_on_node("app-4", 2) else { panic!("an executor record") };
    assert_eq!(
        state(&recovered),
        (
            vec![("app-1".into(), "1".into(), info(1), None), ("app-4".into(), "2".into(), info(2), translated)],
            vec![("app-1".into(), 120_000)],
            vec![("app-2".into(), vec![odd_path])]
        )
    );
}

/// Writes `records` to a fresh journal and returns its bytes and where the last record starts.
async fn journal_bytes(dir: &Path, records: &[Record]) -> (Vec<u8>, usize) {
    let (journal, _) = open(dir);
    append_all(&journal, records).await;
    drop(journal);
    let bytes = fs::read(journal_path(dir)).unwrap();
    let last = format::encode(records.last().unwrap()).len();
    (bytes.clone(), bytes.len() - last)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_last_record_is_dropped_at_every_cut_and_the_journal_stays_usable() {
    let source = tempfile::tempdir().unwrap();
    let (bytes, last_start) = journal_bytes(source.path(), &[exec("a", 1), exec("a", 2), exec("a", 3)]).await;
    let dir = tempfile::tempdir().unwrap();
    for cut in last_start..bytes.len() {
        fs::write(journal_path(dir.path()), &bytes[..cut]).unwrap();
        let (journal, recovered) = open(dir.path());
        let kept: Vec<_> = state(&recovered).0.into_iter().map(|(_, e, ..)| e).collect();
        assert_eq!(kept, ["1", "2"], "cut at {cut}");
        assert_eq!(recovered.skipped.is_some(), cut > last_start, "cut at {cut}: {:?}", recovered.skipped);
        assert_eq!((recovered.bytes, file_len(dir.path())), (last_start as u64, last_start as u64), "cut at {cut}");

        journal.append(exec("a", 4)).await.unwrap();
        drop(journal);
        let (_journal, recovered) = open(dir.path());
        let kept: Vec<_> = state(&recovered).0.into_iter().map(|(_, e, ..)| e).collect();
        assert_eq!(kept, ["1", "2", "4"], "cut at {cut}");
        assert_eq!(recovered.skipped, None, "cut at {cut}");
    }
    let saved = fs::read_dir(dir.path()).unwrap().filter(|e| e.as_ref().unwrap().path() != journal_path(dir.path()));
    assert_eq!(saved.count(), 0, "a torn tail is not saved aside");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_checksum_in_the_middle_keeps_the_records_before_it_and_warns() {
    let dir = tempfile::tempdir().unwrap();
    let records: Vec<_> = (1..=5).map(|i| exec("a", i)).collect();
    let (mut bytes, _) = journal_bytes(dir.path(), &records).await;
    let third = format::HEADER_LEN + 2 * format::encode(&records[0]).len();
    bytes[third + 20] ^= 0x01;
    fs::write(journal_path(dir.path()), &bytes).unwrap();

    let ((journal, recovered), logs) = logged(|| open(dir.path()));
    let kept: Vec<_> = state(&recovered).0.into_iter().map(|(_, e, ..)| e).collect();
    assert_eq!(kept, ["1", "2"]);
    let skipped = recovered.skipped.unwrap();
    assert!(skipped.starts_with(&format!("checksum mismatch in the record at byte {third}")), "{skipped}");
    assert!(logs.contains("WARN") && logs.contains("journal tail skipped"), "{logs}");
    assert_eq!(file_len(dir.path()), third as u64);
    // The dropped bytes may hold acknowledged records: they are kept aside for a post-mortem.
    let saved = skipped.rsplit_once("saved to ").unwrap().1.trim_end_matches(')');
    assert_eq!(fs::read(saved).unwrap(), &bytes[third..]);

    journal.append(exec("a", 6)).await.unwrap();
    drop(journal);
    let (_journal, recovered) = open(dir.path());
    assert_eq!(recovered.executors.len(), 3);
    assert_eq!(recovered.skipped, None);
}

#[test]
fn a_checksummed_record_that_cannot_be_read_refuses_to_open_and_leaves_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let payload = [9u8, 1, 2, 3];
    let mut bytes = format::header().to_vec();
    bytes.extend_from_slice(&4u32.to_be_bytes());
    bytes.extend_from_slice(&crc32fast::hash(&payload).to_be_bytes());
    bytes.extend_from_slice(&payload);
    fs::write(journal_path(dir.path()), &bytes).unwrap();
    let err = Journal::open(dir.path()).unwrap_err();
    assert!(matches!(err, JournalError::Undecodable { offset: 12, .. }), "{err}");
    assert!(err.to_string().contains("unknown record kind 9"), "{err}");
    assert_eq!(fs::read(journal_path(dir.path())).unwrap(), bytes);
}

#[test]
fn a_header_with_an_unknown_version_is_refused_and_the_file_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = b"SSAREGJ\n\x00\x00\x00\x02".to_vec();
    bytes.extend_from_slice(&format::encode(&exec("a", 1)));
    fs::write(journal_path(dir.path()), &bytes).unwrap();
    let err = Journal::open(dir.path()).unwrap_err();
    assert!(matches!(err, JournalError::UnknownVersion { found: 2, supported: 1, .. }), "{err}");
    assert!(err.to_string().contains("has journal format version 2, this agent reads version 1"), "{err}");
    assert_eq!(fs::read(journal_path(dir.path())).unwrap(), bytes);
}

#[test]
fn a_foreign_file_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(journal_path(dir.path()), b"#!/bin/sh\necho not a journal\n").unwrap();
    let err = Journal::open(dir.path()).unwrap_err();
    assert!(matches!(err, JournalError::NotAJournal { .. }), "{err}");
    assert_eq!(fs::read(journal_path(dir.path())).unwrap(), b"#!/bin/sh\necho not a journal\n");
}

#[test]
fn a_crash_while_creating_the_file_leaves_a_journal_that_opens_empty() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(journal_path(dir.path()), &format::header()[..5]).unwrap();
    let (_journal, recovered) = open(dir.path());
    assert_eq!((recovered.records_read, recovered.bytes), (0, 12));
    assert_eq!(fs::read(journal_path(dir.path())).unwrap(), format::header());
}

#[test]
fn a_missing_state_dir_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("var/lib/spark-shuffle-agent");
    let (journal, recovered) = open(&state_dir);
    assert_eq!((recovered.bytes, journal.stats().file_bytes), (12, 12));
    assert_eq!(journal.path(), journal_path(&state_dir));
}

#[test]
fn a_second_open_of_the_same_dir_is_refused_while_the_first_is_alive() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = open(dir.path());
    let err = Journal::open(dir.path()).unwrap_err();
    assert!(matches!(err, JournalError::Locked { .. }), "{err}");
    drop(journal);
    open(dir.path());
}

// ---------------------------------------------------------------------------------------------
// Compaction

fn small_compactions() -> Settings {
    Settings { min_compact_bytes: 4096, ..Settings::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_keeps_exactly_the_live_state_and_shrinks_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = Journal::open_with(dir.path(), small_compactions()).unwrap();
    let mut model = Model::default();
    let mut appended_bytes = format::HEADER_LEN;
    let mut log = |records: &[Record]| {
        records.iter().for_each(|r| {
            model.apply(r);
            appended_bytes += format::encode(r).len();
        })
    };
    // Removed and then registered again: the snapshot must replay to both facts.
    let early = [
        exec("b", 1),
        removed("b", &["/d/b"]),
        exec("b", 2),
        exec("c", 1),
        removed("c", &["/d/c"]),
        Record::CleanupDone { app_id: "c".into() },
        Record::Driver { app_id: "a".into(), heartbeat_timeout_ms: 30_000 },
    ];
    append_all(&journal, &early).await;
    log(&early);
    for round in 0..40 {
        let records: Vec<_> = (0..10)
            .map(|i| {
                let mut r = exec("a", i);
                if let Record::Executor { info, .. } = &mut r {
                    info.sub_dirs_per_local_dir = round + 1;
                }
                r
            })
            .collect();
        let tasks: Vec<_> = records
            .iter()
            .cloned()
            .map(|r| {
                let journal = journal.clone();
                tokio::spawn(async move { journal.append(r).await })
            })
            .collect();
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        log(&records);
    }
    let stats = journal.stats();
    assert!(stats.compactions >= 1, "{stats:?}");
    assert_eq!(stats.live_records, 10 + 1 + 1 + 1, "{stats:?}");
    // Compaction runs after the acks of the batch that triggered it: dropping the journal waits
    // for the writer, so the file is final only then.
    drop(journal);
    let len = file_len(dir.path());
    assert!(len <= 4096u64.max(2 * stats.snapshot_bytes), "{len} bytes, {stats:?}");
    assert!(len < appended_bytes as u64 / 4, "{len} bytes, {appended_bytes} appended");

    let (_journal, recovered) = open(dir.path());
    assert_eq!(state(&recovered), model.state());
    assert_eq!((recovered.skipped, recovered.bytes), (None, len));
    let leftovers: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers, [FILE_NAME], "no temp file is left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_compaction_leaves_the_journal_appending() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = Journal::open_with(dir.path(), small_compactions()).unwrap();
    // The snapshot cannot be created where a directory stands in its way.
    fs::create_dir(writer::tmp_path(&journal_path(dir.path()))).unwrap();
    for i in 0..60 {
        journal.append(exec("a", i % 3)).await.unwrap();
    }
    let stats = journal.stats();
    assert_eq!((stats.compactions, stats.appended, stats.repair_pending), (0, 60, false), "{stats:?}");
    assert!(stats.file_bytes > 4096);
    drop(journal);
    let (_journal, recovered) = open(dir.path());
    assert_eq!((recovered.executors.len(), recovered.records_read), (3, 60));
}
