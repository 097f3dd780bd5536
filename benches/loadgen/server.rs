//! The server under load: an agent this bench starts, or any server already running (the agent,
//! or Spark's JVM service) given by address and pid. Its CPU time and peak RSS come from /proc.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

pub struct Server {
    pub addr: String,
    /// The agent's metrics port, if known: only the agent has one, and only it is read there.
    pub metrics: Option<String>,
    pid: u32,
    /// The agent this bench started (killed at the end); None for a server given by --addr.
    child: Option<Child>,
}

impl Server {
    pub fn attach(addr: String, pid: u32, metrics: Option<String>) -> Server {
        assert!(Path::new(&format!("/proc/{pid}")).exists(), "--server-pid {pid}: no such process");
        Server { addr, metrics, pid, child: None }
    }

    /// Starts the agent pinned to `cpu` (taskset) serving `root`, and reads the shuffle and
    /// metrics addresses its log announces.
    pub fn spawn_agent(agent: &Path, root: &Path, state: &Path, cpu: &str) -> Server {
        let mut child = Command::new("taskset")
            .args(["-c", cpu])
            .arg(agent)
            .args(["--bind", "127.0.0.1", "--port", "0", "--metrics-port", "0", "--root"])
            .arg(root)
            .arg("--state-dir")
            .arg(state)
            .env("RUST_LOG", "warn,spark_shuffle_agent=info")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("start the agent");
        let stderr = child.stderr.take().expect("stderr");
        let mut lines = BufReader::new(stderr).lines();
        let (mut addr, mut metrics) = (None, None);
        while addr.is_none() || metrics.is_none() {
            let line = lines.next().expect("agent exited before listening").expect("read log");
            if let Some(at) = line.find(" listening addr=") {
                let value = line[at + 16..].split_whitespace().next().expect("addr").to_string();
                if line.contains("metrics listening") {
                    metrics = Some(value)
                } else {
                    addr = Some(value)
                }
            }
        }
        // Keep draining the log so the agent never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Server { addr: addr.expect("shuffle addr"), metrics, pid: child.id(), child: Some(child) }
    }

    /// utime + stime of the server process, all threads, in seconds.
    pub fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).expect("server stat");
        let fields: Vec<&str> = stat.rsplit_once(')').expect("stat").1.split_whitespace().collect();
        let ticks: f64 = fields[11].parse::<f64>().expect("utime") + fields[12].parse::<f64>().expect("stime");
        // SC_CLK_TCK is 100 on every Linux this runs on.
        ticks / 100.0
    }

    /// A `/proc/PID/status` field in MiB (VmHWM: peak RSS; VmRSS: now).
    pub fn status_mib(&self, key: &str) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).expect("server status");
        let kib: u64 = status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        kib as f64 / 1024.0
    }

    /// The agent's own view of registration latency, from its histogram: (count, how many took
    /// at most 1 ms, at most 5 ms). It starts at accepting the RPC, so it leaves out the client
    /// and the wire. None without a metrics address (a server given by --addr alone).
    pub fn register_histogram(&self) -> Option<(u64, u64, u64)> {
        use std::io::{Read, Write};
        let mut conn = std::net::TcpStream::connect(self.metrics.as_deref()?).expect("metrics port");
        conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").expect("GET /metrics");
        let mut text = String::new();
        conn.read_to_string(&mut text).expect("read /metrics");
        let name = "spark_shuffle_agent_register_executor_request_latency_seconds";
        let value = |series: &str| -> u64 {
            let line = text.lines().find(|l| l.starts_with(series)).unwrap_or_else(|| panic!("{series} not exported"));
            line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()).expect("a number") as u64
        };
        Some((
            value(&format!("{name}_count")),
            value(&format!("{name}_bucket{{le=\"0.001\"}}")),
            value(&format!("{name}_bucket{{le=\"0.005\"}}")),
        ))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
