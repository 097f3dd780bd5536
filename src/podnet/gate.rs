//! The executor pod's start gate (spec §2.2 option 2): an init container in the executor pod
//! template that returns only once `127.0.0.1:<port>` accepts inside the pod, that is, once the
//! agent has adopted the pod and opened its listener there. It runs in the pod's namespace after
//! the sandbox has its IP, so the agent can already see the pod; the executor container starts
//! after it, and its first RegisterExecutor cannot be refused. A hard guarantee, without
//! raising `spark.shuffle.registration.maxAttempts` or a CNI plugin.
//!
//! Meant to be run as a subcommand of the agent binary (the same image as the DaemonSet, so no
//! extra image to ship): connect, and on refusal try again shortly, until a deadline.
//!
//! Must not: send anything. The connection is closed at once; the agent logs it as routine.

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Pause between attempts: the agent adopts a pod within milliseconds of seeing its IP
/// (tests/podnet_live.rs prints it), so the watch latency dominates, not this.
const RETRY_EVERY: Duration = Duration::from_millis(100);

/// The gate did not open.
#[derive(Debug, thiserror::Error)]
#[error("nothing accepted on {addr} within {waited:?} (last error: {last})")]
pub struct GateTimeout {
    pub addr: SocketAddr,
    pub waited: Duration,
    pub last: std::io::Error,
}

/// Blocks until `addr` accepts a TCP connection, or `timeout` has passed; returns how long it
/// waited.
pub fn wait_until_accepting(addr: SocketAddr, timeout: Duration) -> Result<Duration, GateTimeout> {
    let start = Instant::now();
    loop {
        let left = timeout.saturating_sub(start.elapsed());
        let attempt = TcpStream::connect_timeout(&addr, left.clamp(Duration::from_millis(1), Duration::from_secs(1)));
        match attempt {
            Ok(_) => return Ok(start.elapsed()),
            Err(last) if start.elapsed() + RETRY_EVERY >= timeout => {
                return Err(GateTimeout { addr, waited: start.elapsed(), last })
            }
            Err(_) => std::thread::sleep(RETRY_EVERY),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_opens_once_a_listener_appears_on_the_port() {
        // A port that is free now: bind, note it, close, then listen on it again later.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let (bound_tx, bound_rx) = std::sync::mpsc::channel();
        let gate = std::thread::spawn(move || {
            let waited = wait_until_accepting(addr, Duration::from_secs(20));
            bound_rx.recv().unwrap();
            waited
        });
        // Let the gate see at least one refusal before the listener exists.
        std::thread::sleep(RETRY_EVERY * 2);
        let listener = std::net::TcpListener::bind(addr).expect("the port is still free");
        bound_tx.send(()).unwrap();
        let waited = gate.join().unwrap().expect("the gate opens");
        assert!(waited >= RETRY_EVERY, "it was refused first ({waited:?})");
        drop(listener);
    }

    #[test]
    fn a_port_nobody_opens_times_out_naming_the_address() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let err = wait_until_accepting(addr, Duration::from_millis(250)).unwrap_err();
        assert!(err.to_string().starts_with(&format!("nothing accepted on 127.0.0.1:{port}")), "{err}");
        assert_eq!(err.last.kind(), std::io::ErrorKind::ConnectionRefused);
    }
}
