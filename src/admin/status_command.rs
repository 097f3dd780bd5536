//! The `spark-shuffle-agent status` command: one HTTP GET of `/status` over a plain tokio
//! TcpStream (no HTTP client crate for one request), and the report printed as tables.

use std::fmt::Write as _;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::status_document::{StatusReport, WatchStatus};

/// Why the status could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// No connection, or the exchange failed.
    #[error("cannot reach the agent's metrics port at {addr}: {source}")]
    Unreachable { addr: String, source: std::io::Error },
    /// Nothing within the time limit.
    #[error("the agent at {0} did not answer within {1:?}")]
    Timeout(String, Duration),
    /// Not an HTTP 200 with a status document.
    #[error("unexpected answer from {addr}: {reason}")]
    BadAnswer { addr: String, reason: String },
}

/// Limit on the whole GET, connect included.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest status document accepted (thousands of apps fit).
const MAX_RESPONSE: u64 = 64 << 20;

/// GETs `/status` from the agent whose metrics port is `addr` (`HOST:PORT`).
pub async fn fetch(addr: &str) -> Result<StatusReport, StatusError> {
    let body = tokio::time::timeout(CLIENT_TIMEOUT, get(addr, "/status"))
        .await
        .map_err(|_| StatusError::Timeout(addr.to_string(), CLIENT_TIMEOUT))??;
    serde_json::from_slice(&body)
        .map_err(|e| StatusError::BadAnswer { addr: addr.to_string(), reason: format!("not a status document: {e}") })
}

/// A one-shot HTTP/1.1 GET; the body of a 200 response.
async fn get(addr: &str, path: &str) -> Result<Vec<u8>, StatusError> {
    let unreachable = |source| StatusError::Unreachable { addr: addr.to_string(), source };
    let bad = |reason: String| StatusError::BadAnswer { addr: addr.to_string(), reason };
    let mut stream = TcpStream::connect(addr).await.map_err(unreachable)?;
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: application/json\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.map_err(unreachable)?;
    let mut response = Vec::new();
    // The server closes after one response, so the body ends at end of input.
    (&mut stream).take(MAX_RESPONSE).read_to_end(&mut response).await.map_err(unreachable)?;
    let split =
        response.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| bad("no HTTP response head".into()))?;
    let head = String::from_utf8_lossy(&response[..split]);
    let status_line = head.lines().next().unwrap_or("");
    let code = status_line.split(' ').nth(1).unwrap_or("");
    if code != "200" {
        return Err(bad(format!("{status_line:?} for {path}")));
    }
    Ok(response[split + 4..].to_vec())
}

/// The `status` subcommand: prints the node's status and returns the exit code (0 ready, 3 up
/// but not ready, 1 unreachable or not an agent).
pub fn command(addr: &str, json: bool) -> u8 {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start a runtime: {e}");
            return 1;
        }
    };
    match runtime.block_on(fetch(addr)) {
        Ok(report) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
            } else {
                print!("{}", render(&report, addr));
            }
            if report.ready {
                0
            } else {
                3
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

/// The report as text tables, for a terminal.
pub fn render(r: &StatusReport, addr: &str) -> String {
    let mut out = String::new();
    let state = if r.ready { "READY".to_string() } else { format!("NOT READY ({})", r.phase.as_str()) };
    let live = if r.live { "" } else { "  LIVENESS FAILING: the data-path runtime is stalled" };
    let _ =
        writeln!(out, "spark-shuffle-agent {} at {addr}: {state}, up {}{live}", r.version, duration(r.uptime_seconds));
    let journal = match &r.journal {
        Some(j) => {
            let mut s = format!("{} ({} live records)", bytes(j.bytes), j.live_records);
            if j.failed_appends > 0 {
                s.push_str(&format!(", {} FAILED appends", j.failed_appends));
            }
            if j.repair_pending {
                s.push_str(", REPAIR PENDING: registrations are refused");
            }
            s
        }
        None => "not persisted".into(),
    };
    let _ = writeln!(out, "shuffle port {}   journal {journal}", r.shuffle_addr.as_deref().unwrap_or("not bound"));
    let k8s = match &r.kubernetes {
        None => "not watching".to_string(),
        Some(k) => {
            let watch = |name: &str, w: &WatchStatus| {
                let mut s = format!("{name} {}", if w.up { "up" } else { "DOWN" });
                if w.errors > 0 {
                    s.push_str(&format!(" ({} errors)", w.errors));
                }
                s
            };
            let mut s = format!("{}, {}", watch("executors", &k.executors), watch("drivers", &k.drivers));
            if k.api_errors > 0 {
                s.push_str(&format!("; {} API errors", k.api_errors));
            }
            s.push_str(&format!("; removed {} apps, {} executors", k.apps_removed, k.executors_removed));
            if k.removals_deferred > 0 {
                s.push_str(&format!(" ({} removals deferred: API unsure)", k.removals_deferred));
            }
            s
        }
    };
    let _ = writeln!(out, "kubernetes   {k8s}");
    if let Some(p) = &r.pod_network {
        pod_network(&mut out, p);
    }

    let _ = writeln!(out);
    let scanned = if r.disk.scanned_at_unix == 0 {
        "no disk walk yet".to_string()
    } else {
        format!("disk walked {} ago", duration(crate::clock::unix_secs().saturating_sub(r.disk.scanned_at_unix)))
    };
    let _ = writeln!(
        out,
        "APPLICATIONS ({} registered, {} executors; {scanned})",
        r.registered_apps, r.registered_executors
    );
    let mut rows = vec![["APPLICATION".to_string(), "EXECUTORS".into(), "DISK".into(), "FILES".into(), "IDLE".into()]];
    for a in &r.apps {
        let name = if a.removed { format!("{} (removed)", a.app_id) } else { a.app_id.clone() };
        rows.push([
            name,
            a.executors.to_string(),
            a.disk_bytes.map(bytes).unwrap_or_else(|| "-".into()),
            a.disk_files.map(|f| f.to_string()).unwrap_or_else(|| "-".into()),
            a.idle_seconds.map(duration).unwrap_or_else(|| "-".into()),
        ]);
    }
    if r.apps.is_empty() {
        let _ = writeln!(out, "  (none)");
    } else {
        let total: u64 = r.apps.iter().filter_map(|a| a.disk_bytes).sum();
        let files: u64 = r.apps.iter().filter_map(|a| a.disk_files).sum();
        rows.push(["total".into(), r.registered_executors.to_string(), bytes(total), files.to_string(), String::new()]);
        table(&mut out, &rows, &[false, true, true, true, true]);
    }

    let _ = writeln!(out);
    let _ = writeln!(out, "ROOTS");
    let mut rows = vec![["ROOT".to_string(), "FREE".into(), "SIZE".into(), "USED".into(), "FREE INODES".into()]];
    for s in &r.disk.roots {
        match &s.error {
            Some(e) => rows.push([
                s.root.display().to_string(),
                format!("error: {e}"),
                String::new(),
                String::new(),
                String::new(),
            ]),
            None => rows.push([
                s.root.display().to_string(),
                bytes(s.free_bytes),
                bytes(s.size_bytes),
                percent(s.size_bytes.saturating_sub(s.free_bytes), s.size_bytes),
                s.free_inodes.to_string(),
            ]),
        }
    }
    if r.disk.roots.is_empty() {
        let _ = writeln!(out, "  (not measured yet)");
    } else {
        table(&mut out, &rows, &[false, true, true, true, true]);
    }

    let t = &r.traffic;
    let _ = writeln!(out);
    let _ = writeln!(out, "TRAFFIC (since start)");
    let _ = writeln!(out, "  connections  {} open, {} accepted", t.active_connections, t.connections_total);
    let _ = writeln!(
        out,
        "  served       {} of blocks in {} chunks ({} blocks); {} written in all",
        bytes(t.block_bytes_total),
        t.chunks_total,
        t.blocks_total,
        bytes(t.bytes_written_total)
    );
    let mean = t.fetch_latency_mean_seconds.map(|s| format!("{:.2} ms", s * 1000.0)).unwrap_or_else(|| "-".into());
    let _ = writeln!(
        out,
        "  now          {} streams open, {} chunks in flight; mean fetch latency {mean}",
        t.streams_open, t.chunks_in_flight
    );
    let errors: Vec<String> = r.errors.iter().filter(|(_, n)| **n > 0).map(|(k, n)| format!("{k} {n}")).collect();
    let _ = writeln!(out, "  errors       {}", if errors.is_empty() { "none".to_string() } else { errors.join(", ") });

    let c = &r.cleanups;
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "CLEANUPS     {} executors, {} apps done; {} pending, {} deferred; {} files ({}) deleted; {} errors",
        c.executors_cleaned,
        c.apps_cleaned,
        c.pending,
        c.deferred,
        c.files_deleted,
        bytes(c.bytes_deleted),
        c.errors
    );
    out
}

/// Pod network mode: each adopted pod's listener, then what is pending or failed.
fn pod_network(out: &mut String, p: &super::status_document::PodNetworkStatus) {
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "POD NETWORK ({} pods listened in, {} pending; {} dead IPs redirected; {} adoption failures, {} nft failures)",
        p.pods.len(),
        p.pods_pending,
        p.redirects,
        p.adoption_failures,
        p.nft_failures
    );
    if p.pods.is_empty() {
        return;
    }
    let mut rows = vec![["POD".to_string(), "IP".into(), "LISTENERS".into(), "OPEN AFTER".into()]];
    for pod in &p.pods {
        rows.push([
            pod.pod.clone(),
            pod.ip.to_string(),
            pod.listeners.to_string(),
            format!("{} ms", pod.millis_to_listen),
        ]);
    }
    table(out, &rows, &[false, false, true, true]);
}

/// Left-aligned first column, the others right-aligned, two spaces apart.
fn table<const N: usize>(out: &mut String, rows: &[[String; N]], right: &[bool; N]) {
    let mut widths = [0usize; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in rows {
        let mut line = String::from(" ");
        for (i, cell) in row.iter().enumerate() {
            line.push(' ');
            if right[i] {
                let _ = write!(line, "{cell:>w$}", w = widths[i]);
            } else {
                let _ = write!(line, "{cell:<w$}", w = widths[i]);
            }
            line.push(' ');
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
}

/// 1536 -> "1.5 KiB".
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// 3725 -> "1h02m".
pub fn duration(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s if s < 86400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        s => format!("{}d{:02}h", s / 86400, (s % 86400) / 3600),
    }
}

fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        return "-".into();
    }
    format!("{:.0}%", part as f64 * 100.0 / whole as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::status_document::collect;
    use crate::admin::Health;

    #[test]
    fn sizes_and_durations_read_like_a_person_writes_them() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(5 << 30), "5.0 GiB");
        assert_eq!(duration(59), "59s");
        assert_eq!(duration(3725), "1h02m");
        assert_eq!(duration(90061), "1d01h");
        assert_eq!(percent(1, 4), "25%");
    }

    #[test]
    fn the_report_round_trips_through_json_and_renders() {
        let mut report = collect(&Health::new(), std::time::Instant::now(), None);
        report.apps = vec![crate::admin::status_document::AppStatus {
            app_id: "spark-a".into(),
            executors: 0,
            disk_bytes: Some(2048),
            disk_files: Some(3),
            removed: true,
            idle_seconds: None,
        }];
        let json = serde_json::to_string(&report).unwrap();
        let back: StatusReport = serde_json::from_str(&json).unwrap();
        assert_eq!(back, report);
        let text = render(&back, "127.0.0.1:7338");
        assert!(text.contains("NOT READY (recovering)"), "{text}");
        assert!(text.contains("spark-a (removed)"), "{text}");
        assert!(text.contains("2.0 KiB"), "{text}");
        assert!(text.contains("kubernetes   not watching"), "{text}");
    }
}
