//! The metrics port: `/metrics`, `/healthz`, `/readyz`, `/status`, answered by a minimal
//! HTTP/1.1 server (GET and HEAD, one request per connection, `Connection: close`).
//!
//! It runs on a current-thread tokio runtime in an OS thread of its own ([`AdminServer`]), not
//! on the data path's runtime: when every data-path worker is busy sending blocks, the kubelet's
//! probes and Prometheus's scrapes are still answered, because the kernel schedules this thread
//! like any other. A scrape only reads atomics and takes short read locks; nothing here waits on
//! the data path. Requests are small and bounded: a head over `MAX_HEAD` bytes or slower than
//! `IO_TIMEOUT` is dropped, and at most `MAX_CONNECTIONS` are served at once.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::Admin;

/// Largest request head read; a probe's or a scrape's is a few hundred bytes.
const MAX_HEAD: usize = 8 * 1024;
/// Time allowed to read a request or write its response.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 32;

/// The admin HTTP server's thread. Stopped by [`AdminServer::stop`] or when dropped.
#[derive(Debug)]
pub struct AdminServer {
    addr: SocketAddr,
    shutdown: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AdminServer {
    /// Serves `listener` (already bound, so a busy port fails before anything starts) on a
    /// thread named `metrics-http` with its own single-threaded runtime.
    pub fn start(listener: std::net::TcpListener, admin: Arc<Admin>) -> io::Result<AdminServer> {
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_io().enable_time().build()?;
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let thread = std::thread::Builder::new().name("metrics-http".into()).spawn(move || {
            runtime.block_on(async move {
                match TcpListener::from_std(listener) {
                    Ok(listener) => serve(listener, admin, stop).await,
                    Err(e) => warn!(error = %e, "the metrics listener cannot be used"),
                }
            });
        })?;
        Ok(AdminServer { addr, shutdown, thread: Some(thread) })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, drops requests in progress, and joins the thread.
    pub fn stop(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        self.shutdown.cancel();
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                warn!("the metrics-http thread panicked");
            }
        }
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// Serves HTTP on `listener` until `shutdown`, on whatever runtime it is spawned on. The agent
/// runs it through [`AdminServer`]; the load bench also runs it on the data-path runtime to
/// show what the isolation buys.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>, shutdown: CancellationToken) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => return,
            permit = Arc::clone(&permits).acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let admin = Arc::clone(&admin);
        tokio::spawn(async move {
            if let Err(e) = exchange(stream, &admin).await {
                debug!(%peer, error = %e, "metrics request dropped");
            }
            drop(permit);
        });
    }
}

/// One request, one response.
async fn exchange(mut stream: TcpStream, admin: &Admin) -> io::Result<()> {
    let head = tokio::time::timeout(IO_TIMEOUT, read_head(&mut stream))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "request head not received in time"))??;
    let response = match parse_request_line(&head) {
        Some((method @ ("GET" | "HEAD"), path)) => {
            let mut r = route(path, admin);
            r.head_only = method == "HEAD";
            r
        }
        Some(_) => Response::text(405, "method not allowed\n").header("Allow", "GET, HEAD"),
        None => Response::text(400, "bad request\n"),
    };
    tokio::time::timeout(IO_TIMEOUT, async {
        stream.write_all(&response.to_bytes()).await?;
        stream.shutdown().await
    })
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "response not written in time"))?
}

/// Reads up to the blank line ending the request head. Any body is ignored (GET has none).
async fn read_head(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed before the end of the request head"));
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.windows(2).any(|w| w == b"\n\n") {
            return Ok(buf);
        }
        if buf.len() > MAX_HEAD {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "request head too large"));
        }
    }
}

/// The method and path (without the query) of a request head's first line; None for anything
/// but `METHOD TARGET HTTP/1.x`. Public for its fuzz target (fuzz/fuzz_targets/admin_request.rs).
pub fn parse_request_line(head: &[u8]) -> Option<(&str, &str)> {
    let line = head.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?.trim_end_matches('\r');
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if !version.starts_with("HTTP/1.") || parts.next().is_some() {
        return None;
    }
    Some((method, target.split('?').next().unwrap_or(target)))
}

fn route(path: &str, admin: &Admin) -> Response {
    let health = &admin.health;
    match path {
        "/metrics" => {
            Response::new(200, "text/plain; version=0.0.4; charset=utf-8", admin.exporter.render().into_bytes())
        }
        "/healthz" if health.is_live() => Response::text(200, "ok\n"),
        "/healthz" => Response::text(
            503,
            &format!(
                "the data-path runtime has not run for {}s\n",
                health.since_last_beat().unwrap_or_default().as_secs()
            ),
        ),
        "/readyz" if health.is_ready() => Response::text(200, "ready\n"),
        "/readyz" => Response::text(503, &format!("not ready: {}\n", health.phase().as_str())),
        "/status" => match serde_json::to_vec_pretty(&admin.status()) {
            Ok(mut body) => {
                body.push(b'\n');
                Response::new(200, "application/json", body)
            }
            Err(e) => Response::text(500, &format!("cannot encode the status: {e}\n")),
        },
        "/" => Response::text(200, "spark-shuffle-agent: /metrics /healthz /readyz /status\n"),
        _ => Response::text(404, "not found; try /metrics, /healthz, /readyz or /status\n"),
    }
}

struct Response {
    status: u16,
    content_type: &'static str,
    extra: Vec<(&'static str, &'static str)>,
    body: Vec<u8>,
    head_only: bool,
}

impl Response {
    fn new(status: u16, content_type: &'static str, body: Vec<u8>) -> Response {
        Response { status, content_type, extra: Vec::new(), body, head_only: false }
    }

    fn text(status: u16, body: &str) -> Response {
        Response::new(status, "text/plain; charset=utf-8", body.as_bytes().to_vec())
    }

    fn header(mut self, name: &'static str, value: &'static str) -> Response {
        self.extra.push((name, value));
        self
    }

    fn to_bytes(&self) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            503 => "Service Unavailable",
            _ => "Internal Server Error",
        };
        let mut out = format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n",
            self.status,
            self.content_type,
            self.body.len()
        );
        for (name, value) in &self.extra {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        if !self.head_only {
            bytes.extend_from_slice(&self.body);
        }
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines_parse_with_or_without_a_query() {
        assert_eq!(parse_request_line(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"), Some(("GET", "/metrics")));
        assert_eq!(parse_request_line(b"HEAD /readyz?verbose=1 HTTP/1.0\r\n\r\n"), Some(("HEAD", "/readyz")));
        assert_eq!(parse_request_line(b"GET /metrics\r\n\r\n"), None, "HTTP/0.9 is not spoken");
        assert_eq!(parse_request_line(b"\x16\x03\x01\x02\x00"), None, "a TLS hello is not HTTP");
    }

    #[test]
    fn a_head_response_has_the_length_but_not_the_body() {
        let mut r = Response::text(200, "ready\n");
        r.head_only = true;
        let text = String::from_utf8(r.to_bytes()).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(text.contains("Content-Length: 6\r\n"));
        assert!(text.ends_with("\r\n\r\n"));
    }
}
