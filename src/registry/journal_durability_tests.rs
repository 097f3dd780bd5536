//! Durability tests: group commit, kill -9, and failures. Failures that cannot be provoked on a
//! healthy disk are injected through a wrapped file (`FaultyFile`); ENOSPC is also provoked for
//! real on a tiny tmpfs when the test may mount one (skipped, saying why, when it may not).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Condvar, Mutex};

use super::super::writer::JournalFile;
use super::*;

// ---------------------------------------------------------------------------------------------
// Fault injection

/// Holds the writer inside its first fdatasync until the test opens it.
#[derive(Default)]
struct Gate {
    state: Mutex<(bool, bool)>, // (entered, open)
    changed: Condvar,
}

impl Gate {
    fn pass(&self) {
        let mut s = self.state.lock().unwrap();
        s.0 = true;
        self.changed.notify_all();
        let (_s, timeout) = self.changed.wait_timeout_while(s, WAIT, |s| !s.1).unwrap();
        assert!(!timeout.timed_out(), "the gate was never opened");
    }

    fn wait_entered(&self) {
        let s = self.state.lock().unwrap();
        let (_s, timeout) = self.changed.wait_timeout_while(s, WAIT, |s| !s.0).unwrap();
        assert!(!timeout.timed_out(), "the writer never reached fdatasync");
    }

    fn open(&self) {
        self.state.lock().unwrap().1 = true;
        self.changed.notify_all();
    }
}

#[derive(Default)]
struct Faults {
    /// The next write puts this many bytes in the file, then fails with ENOSPC.
    short_write: Option<usize>,
    failing_syncs: u32,
    failing_truncates: u32,
    gate: Option<Arc<Gate>>,
}

struct FaultyFile {
    file: File,
    faults: Arc<Mutex<Faults>>,
}

impl JournalFile for FaultyFile {
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        let short = self.faults.lock().unwrap().short_write.take();
        match short {
            Some(n) => {
                self.file.write_all_at(&buf[..n.min(buf.len())], offset)?;
                Err(io::Error::from_raw_os_error(28))
            }
            None => self.file.write_all_at(buf, offset),
        }
    }

    fn sync_data(&mut self) -> io::Result<()> {
        let gate = self.faults.lock().unwrap().gate.take();
        if let Some(gate) = gate {
            gate.pass();
        }
        let mut faults = self.faults.lock().unwrap();
        if faults.failing_syncs > 0 {
            faults.failing_syncs -= 1;
            return Err(io::Error::from_raw_os_error(5));
        }
        self.file.sync_data()
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        let mut faults = self.faults.lock().unwrap();
        if faults.failing_truncates > 0 {
            faults.failing_truncates -= 1;
            return Err(io::Error::from_raw_os_error(5));
        }
        JournalFile::truncate(&mut self.file, len)
    }
}

fn faulty(faults: &Arc<Mutex<Faults>>) -> Settings {
    let faults = Arc::clone(faults);
    Settings {
        wrap: Arc::new(move |file| Box::new(FaultyFile { file, faults: Arc::clone(&faults) })),
        ..Settings::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Durability and group commit

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_from_many_tasks_are_all_durable() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = open(dir.path());
    let tasks: Vec<_> = (0..64)
        .map(|t| {
            let journal = journal.clone();
            tokio::spawn(async move {
                for i in 0..10 {
                    journal.append(exec(&format!("app-{t}"), i)).await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let stats = journal.stats();
    assert_eq!((stats.appended, stats.live_records, stats.queued, stats.failed_appends), (640, 640, 0, 0));
    assert!(stats.fsyncs <= 640);
    println!("640 appends from 64 tasks took {} fsyncs", stats.fsyncs);
    drop(journal);
    let (_journal, recovered) = open(dir.path());
    assert_eq!(recovered.executors.len(), 640);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_queued_behind_a_commit_share_the_next_fsync() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Arc::new(Gate::default());
    let faults = Arc::new(Mutex::new(Faults { gate: Some(Arc::clone(&gate)), ..Faults::default() }));
    let (journal, _) = Journal::open_with(dir.path(), faulty(&faults)).unwrap();
    let spawn = |i: usize| {
        let journal = journal.clone();
        tokio::spawn(async move { journal.append(exec("app", i)).await })
    };
    let first = spawn(0);
    let entered = Arc::clone(&gate);
    tokio::task::spawn_blocking(move || entered.wait_entered()).await.unwrap();
    let rest: Vec<_> = (1..100).map(spawn).collect();
    wait_until("99 appends are queued", || journal.stats().queued == 99).await;
    gate.open();
    first.await.unwrap().unwrap();
    for append in rest {
        append.await.unwrap().unwrap();
    }
    let stats = journal.stats();
    assert_eq!((stats.appended, stats.fsyncs), (100, 2), "{stats:?}");
}

/// Child side of the kill -9 test: appends from 8 tasks and prints every acknowledgement.
fn sigkill_child(dir: &Path) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().unwrap();
    runtime.block_on(async {
        let (journal, _) = open(dir);
        let tasks: Vec<_> = (0..8)
            .map(|t| {
                let journal = journal.clone();
                tokio::spawn(async move {
                    // Bounded, in case the parent dies before it kills us.
                    for i in 0..5000 {
                        journal.append(exec(&format!("app-{t}"), i)).await.unwrap();
                        println!("acked app-{t} {i}");
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
    });
    std::process::exit(0);
}

#[test]
fn an_agent_killed_with_sigkill_loses_no_acknowledged_record() {
    const CHILD: &str = "SSA_JOURNAL_SIGKILL_CHILD_DIR";
    if let Some(dir) = std::env::var_os(CHILD) {
        return sigkill_child(Path::new(&dir));
    }
    let dir = tempfile::tempdir().unwrap();
    let name = format!("{}::an_agent_killed_with_sigkill_loses_no_acknowledged_record", module_path!());
    let name = name.split_once("::").unwrap().1; // libtest names leave out the crate
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (lines, acks) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            // The first one shares its line with libtest's "test <name> ... ".
            if let Some(ack) = line.rfind("acked ").map(|at| &line[at + "acked ".len()..]) {
                let (app, exec) = ack.split_once(' ').unwrap();
                let _ = lines.send((app.to_string(), exec.to_string()));
            }
        }
    });
    let mut acked = Vec::new();
    while acked.len() < 300 {
        acked.push(acks.recv_timeout(WAIT).expect("the child stopped acknowledging"));
    }
    child.kill().unwrap(); // SIGKILL: no destructor, no flush, no shutdown
    let status = child.wait().unwrap();
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(9));
    reader.join().unwrap();
    acked.extend(acks.try_iter());

    let (_journal, recovered) = open(dir.path());
    let durable: std::collections::HashSet<_> =
        recovered.executors.iter().map(|(a, e, ..)| (a.clone(), e.clone())).collect();
    let lost: Vec<_> = acked.iter().filter(|k| !durable.contains(*k)).collect();
    assert!(lost.is_empty(), "{} acknowledged records lost, e.g. {:?}", lost.len(), lost.first());
    // At most one unacknowledged record per appending task can have made it too.
    assert!(durable.len() <= acked.len() + 8, "{} durable, {} acked", durable.len(), acked.len());
}

// ---------------------------------------------------------------------------------------------
// Failures

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_write_fails_the_append_and_is_cut_back_before_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Arc::new(Mutex::new(Faults::default()));
    let (journal, _) = Journal::open_with(dir.path(), faulty(&faults)).unwrap();
    journal.append(exec("a", 1)).await.unwrap();
    let durable = file_len(dir.path());
    faults.lock().unwrap().short_write = Some(30);

    let err = journal.append(exec("a", 2)).await.unwrap_err();
    let expected =
        format!("cannot persist registration to {}: No space left on device (os error 28)", journal.path().display());
    assert_eq!(err.to_string(), expected);
    assert_eq!((file_len(dir.path()), journal.stats().file_bytes), (durable, durable));

    journal.append(exec("a", 3)).await.unwrap();
    assert_eq!((journal.stats().appended, journal.stats().failed_appends), (2, 1));
    drop(journal);
    let (_journal, recovered) = open(dir.path());
    let kept: Vec<_> = state(&recovered).0.into_iter().map(|(_, e, ..)| e).collect();
    assert_eq!((kept, recovered.skipped), (vec!["1".to_string(), "3".to_string()], None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fdatasync_is_not_acknowledged_and_is_cut_back() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Arc::new(Mutex::new(Faults::default()));
    let (journal, _) = Journal::open_with(dir.path(), faulty(&faults)).unwrap();
    journal.append(exec("a", 1)).await.unwrap();
    let durable = file_len(dir.path());
    faults.lock().unwrap().failing_syncs = 1;
    let err = journal.append(exec("a", 2)).await.unwrap_err();
    assert!(err.to_string().ends_with("Input/output error (os error 5)"), "{err}");
    assert_eq!(file_len(dir.path()), durable);
    journal.append(exec("a", 3)).await.unwrap();
    drop(journal);
    let (_journal, recovered) = open(dir.path());
    let kept: Vec<_> = state(&recovered).0.into_iter().map(|(_, e, ..)| e).collect();
    assert_eq!(kept, ["1", "3"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_cut_back_keeps_failing_appends_until_a_retry_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Arc::new(Mutex::new(Faults::default()));
    let (journal, _) = Journal::open_with(dir.path(), faulty(&faults)).unwrap();
    journal.append(exec("a", 1)).await.unwrap();
    let durable = file_len(dir.path());
    *faults.lock().unwrap() = Faults { short_write: Some(30), failing_truncates: 2, ..Faults::default() };

    let err = journal.append(exec("a", 2)).await.unwrap_err();
    assert!(matches!(err, JournalError::Persist { .. }), "{err}");
    assert!(journal.stats().repair_pending);
    assert_eq!(file_len(dir.path()), durable + 30, "the short write is still there");

    let err = journal.append(exec("a", 3)).await.unwrap_err();
    assert!(matches!(err, JournalError::Unrepaired { .. }), "{err}");
    assert!(err.to_string().contains("could not be cut back to the last durable record: Input/output error"), "{err}");

    journal.append(exec("a", 4)).await.unwrap();
    assert!(!journal.stats().repair_pending);
    drop(journal);
    let (_journal, recovered) = open(dir.path());
    let kept: Vec<_> = state(&recovered).0.into_iter().map(|(_, e, ..)| e).collect();
    assert_eq!((kept, recovered.skipped), (vec!["1".to_string(), "4".to_string()], None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_over_the_limit_is_refused_without_touching_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = open(dir.path());
    let mut huge = info(1);
    huge.shuffle_manager = "x".repeat(format::MAX_PAYLOAD);
    let record = Record::Executor { app_id: "a".into(), exec_id: "1".into(), info: huge, node: None };
    let err = journal.append(record).await.unwrap_err();
    assert!(matches!(err, JournalError::TooLarge { .. }), "{err}");
    assert_eq!((file_len(dir.path()), journal.stats().appended), (12, 0));
}

/// A tmpfs of `size` mounted on a temp dir, unmounted on drop.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Result<Tmpfs, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        match out.status.success() {
            true => Ok(Tmpfs(dir)),
            false => Err(String::from_utf8_lossy(&out.stderr).split_whitespace().collect::<Vec<_>>().join(" ")),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_the_append_with_enospc_and_keeps_every_acknowledged_record() {
    let mnt = match Tmpfs::mount("64k") {
        Ok(mnt) => mnt,
        Err(why) => {
            return eprintln!(
                "skipped: cannot mount a 64k tmpfs ({why}); the injected short-write test covers the cut-back"
            )
        }
    };
    let state_dir = mnt.0.path().join("state");
    let filler = mnt.0.path().join("filler");
    fs::write(&filler, vec![7u8; 16 << 10]).unwrap();
    let (journal, _) = open(&state_dir);
    let big = |i: usize| {
        let mut record = exec("app-20240101123456-0001", i);
        if let Record::Executor { info, .. } = &mut record {
            info.local_dirs.iter_mut().for_each(|d| d.push_str(&"/deeper".repeat(60)));
        }
        record
    };
    let mut acked = 0;
    let err = loop {
        assert!(acked < 200, "64k tmpfs never filled up");
        match journal.append(big(acked)).await {
            Ok(()) => acked += 1,
            Err(e) => break e,
        }
    };
    let expected =
        format!("cannot persist registration to {}: No space left on device (os error 28)", journal.path().display());
    assert_eq!(err.to_string(), expected);
    let stats = journal.stats();
    assert_eq!((stats.file_bytes, stats.appended, stats.failed_appends), (file_len(&state_dir), acked as u64, 1));
    assert!(!stats.repair_pending && acked > 0);

    fs::remove_file(&filler).unwrap();
    journal.append(big(acked)).await.unwrap();
    drop(journal);
    let (journal, recovered) = open(&state_dir);
    assert_eq!((recovered.executors.len(), recovered.skipped), (acked + 1, None));
    drop(journal);
    println!("tmpfs filled after {acked} acknowledged records");
}
