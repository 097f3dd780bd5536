//! The real agent binary as a child process: started on free ports under a temp dir, its JSON
//! log read on a thread so a test can wait for a line with a deadline. Killed when dropped.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long to wait for one log line: a process start is slower than an in-process agent.
const WAIT: Duration = Duration::from_secs(30);

/// The agent binary, serving on free ports under `dir`, logging JSON to a pipe.
pub fn agent_command(dir: &Path, extra: &[&str]) -> Command {
    for sub in ["local", "state"] {
        std::fs::create_dir_all(dir.join(sub)).expect("mkdir");
    }
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_spark-shuffle-agent"));
    cmd.args(["--port", "0", "--metrics-port", "0", "--bind", "127.0.0.1", "--log-format", "json", "--root"])
        .arg(dir.join("local"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .args(extra)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("NODE_NAME")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

/// Log lines of a running agent, read on a thread so waits can time out.
pub struct Logs {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// Every line read so far.
    pub seen: Vec<String>,
}

impl Logs {
    pub fn start(mut cmd: Command) -> Logs {
        let mut child = cmd.spawn().expect("start the agent");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Logs { child, lines, seen: Vec::new() }
    }

    /// The agent's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a log line containing `needle`; returns it.
    pub fn wait_for(&mut self, needle: &str) -> String {
        self.wait_for_all(&[needle])
    }

    /// Waits for a log line containing every one of `needles` (seen before, or new); returns it.
    pub fn wait_for_all(&mut self, needles: &[&str]) -> String {
        let matches = |line: &str| needles.iter().all(|n| line.contains(n));
        if let Some(line) = self.seen.iter().find(|l| matches(l)) {
            return line.clone();
        }
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if matches(&line) {
                        return line;
                    }
                }
                Err(_) => panic!("no log line with {needles:?} in {WAIT:?}; saw:\n{}", self.seen.join("\n")),
            }
        }
    }
}

impl Drop for Logs {
    fn drop(&mut self) {
        // A failing test shows what the agent said (what was read of it, then the rest).
        if std::thread::panicking() {
            self.seen.extend(self.lines.try_iter());
            eprintln!("the agent's log:\n{}", self.seen.join("\n"));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
