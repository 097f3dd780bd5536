//! The process limits a node agent with thousands of connections runs into: open descriptors
//! and the listen backlog. Both default too low for a big job's reducers (a soft
//! `RLIMIT_NOFILE` of 1,024 under systemd and many container runtimes; a backlog of 1,024 in
//! tokio's `bind`, where a burst of connects past it costs a SYN retransmit, ~1 s).

use std::io;
use std::net::SocketAddr;

use tracing::{info, warn};

/// The listen backlog asked for. The kernel caps it at `net.core.somaxconn` of the network
/// namespace (4,096 by default since Linux 5.4), which is what Netty asks for in Spark's service.
pub const LISTEN_BACKLOG: u32 = 65_535;

/// Descriptors kept for everything but connections: block and index files (the open-file
/// cache), the journal, the API server's sockets, the metrics port.
pub const RESERVED_DESCRIPTORS: u64 = 1_024;

/// A listener on `addr` with [`LISTEN_BACKLOG`] (and `SO_REUSEADDR`, as `TcpListener::bind`).
pub fn listen(addr: SocketAddr) -> io::Result<tokio::net::TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (as Go's runtime and the JVM do at start),
/// then returns how many connections `wanted` the limit allows, leaving
/// [`RESERVED_DESCRIPTORS`] for files. Logs what it did; a limit too low for `wanted` is a
/// warning with the limit to raise, not a failure: the agent serves what it can.
pub fn fit_connections(wanted: usize) -> usize {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    let before = limit.current;
    if limit.current < limit.maximum {
        limit.current = limit.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            warn!(error = %e, "could not raise the open-file limit to its hard limit");
            limit.current = before;
        }
    }
    let Some(soft) = limit.current else { return wanted };
    let allowed = usize::try_from(soft.saturating_sub(RESERVED_DESCRIPTORS)).unwrap_or(usize::MAX).max(1);
    if allowed < wanted {
        warn!(
            open_file_limit = soft,
            max_connections = wanted,
            serving = allowed,
            "the open-file limit caps agent.max.connections; raise the pod's nofile ulimit"
        );
        return allowed;
    }
    if before != limit.current {
        info!(from = ?before, to = soft, "raised the open-file limit to its hard limit");
    }
    wanted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_listener_takes_a_burst_larger_than_tokios_default_backlog() {
        // Nobody accepts: every connect must complete in the backlog alone.
        let listener = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let somaxconn: usize = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .map(|s| s.trim().parse().unwrap_or(128))
            .unwrap_or(128);
        // Above tokio's 1,024 when the namespace allows it; bounded for the test's descriptors.
        let burst = somaxconn.min(1_500);
        let mut clients = Vec::new();
        for _ in 0..burst {
            let stream =
                tokio::time::timeout(std::time::Duration::from_millis(500), tokio::net::TcpStream::connect(addr))
                    .await
                    .expect("connect completes from the backlog, without a SYN retransmit")
                    .unwrap();
            clients.push(stream);
        }
        assert_eq!(clients.len(), burst);
    }

    #[test]
    fn connections_fit_under_the_open_file_limit() {
        let fitted = fit_connections(usize::MAX);
        let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
        match soft {
            Some(soft) => assert_eq!(fitted as u64, soft.saturating_sub(RESERVED_DESCRIPTORS).max(1)),
            None => assert_eq!(fitted, usize::MAX),
        }
        assert_eq!(fit_connections(10), 10.min(fitted));
    }
}
