//! The real binary's threads run at the priorities src/thread_priority.rs promises: the data
//! runtime's workers below the control thread and the journal writer, the disk walk lowest.
//! Read from /proc of a running agent, so a runtime built without the hook fails here.

use std::collections::BTreeMap;

use crate::common::binary::{agent_command, Logs};

/// Nice value of every thread, by thread name (several threads may share a name).
fn nice_by_thread(pid: u32) -> BTreeMap<String, Vec<i32>> {
    let mut out: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("/proc") {
        let task = task.expect("task").path();
        let name = std::fs::read_to_string(task.join("comm")).expect("comm").trim().to_string();
        let stat = std::fs::read_to_string(task.join("stat")).expect("stat");
        // Fields after the ")" closing the name: nice is field 19 of stat, the 17th after it.
        let nice = stat.rsplit_once(')').expect("stat").1.split_whitespace().nth(16).expect("nice");
        out.entry(name).or_default().push(nice.parse().expect("a number"));
    }
    out
}

fn check(config: &str, data_nice: i32) {
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = dir.path().join("agent.conf");
    std::fs::write(&conf, config).expect("write config");
    let mut agent = Logs::start(agent_command(dir.path(), &["--config", conf.to_str().expect("utf-8")]));
    agent.wait_for("metrics listening");
    let as_promised = |threads: &BTreeMap<String, Vec<i32>>| {
        threads.get("tokio-rt-worker").is_some_and(|w| w.iter().all(|&n| n == data_nice))
            && ["control", "journal-writer", "metrics-http"].iter().all(|name| threads.get(*name) == Some(&vec![0]))
            && threads.get("disk-usage") == Some(&vec![19])
    };
    // Threads are named, and lower themselves, as they start: some may start just after "listening".
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let threads = loop {
        let threads = nice_by_thread(agent.pid());
        if as_promised(&threads) || std::time::Instant::now() > deadline {
            break threads;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    drop(agent);
    assert!(as_promised(&threads), "data workers at {data_nice}, control path at 0, disk walk at 19: {threads:?}");
}

#[test]
fn data_workers_run_ten_nice_levels_below_the_control_path_by_default() {
    check("", 10);
}

#[test]
fn the_config_key_sets_how_far_data_workers_are_lowered() {
    check("agent.data.threads.nice 3\n", 3);
}
