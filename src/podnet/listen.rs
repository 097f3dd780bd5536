//! The in-pod listeners: `0.0.0.0:<port>` and `[::]:<port>` created *inside* a pod's network
//! namespace (spec §2.2), handed back as std listeners that any thread, and any tokio runtime,
//! can accept on; they stay in the namespace they were created in.
//!
//! Both carry `SO_REUSEPORT` so a second agent (a `maxSurge` rolling update, or a restarted
//! agent while the old process still drains) can bind the same port in the same pod before the
//! old listener closes (spec §5.2 item 3; lab `restart_lab.sh` (b)). The v6 one is `IPV6_V6ONLY`
//! so the two are independent: the v4 one works in a pod with IPv6 disabled, where the v6 one
//! cannot be created at all.
//!
//! Must not: accept, or touch tokio. Binding is synchronous work on a [`Netns::run`] thread.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6, TcpListener};

use rustix::net::{AddressFamily, SocketFlags, SocketType};

use super::netns::Netns;
use super::PodnetError;

/// Listen backlog: Spark opens a burst of connections per reducer; the kernel caps it at
/// `net.core.somaxconn` of the pod's namespace.
const BACKLOG: i32 = crate::server::limits::LISTEN_BACKLOG as i32;

/// The listeners opened in one pod. Non-blocking, ready for `tokio::net::TcpListener::from_std`.
#[derive(Debug)]
pub struct InPodListeners {
    pub v4: TcpListener,
    /// `None` when the namespace has no IPv6 (`socket(AF_INET6)` or the bind refused); the
    /// reason is kept for the log line.
    pub v6: Option<TcpListener>,
    pub v6_unavailable: Option<std::io::Error>,
}

impl InPodListeners {
    /// Both listeners, the missing one left out.
    pub fn into_vec(self) -> Vec<TcpListener> {
        std::iter::once(self.v4).chain(self.v6).collect()
    }
}

/// Opens `0.0.0.0:port` and `[::]:port` inside `netns` (see the module doc). Port 0 is allowed
/// for tests; the v6 listener then gets its own port.
pub fn bind_in_netns(netns: &Netns, port: u16) -> Result<InPodListeners, PodnetError> {
    let (v4, v6) = netns.run(|| (bind_v4(port), bind_v6(port)))?;
    let v4 = v4.map_err(|source| PodnetError::Bind { path: netns.path().into(), port, source })?;
    let (v6, v6_unavailable) = match v6 {
        Ok(l) => (Some(l), None),
        Err(e) if v6_is_off(&e) => (None, Some(e)),
        Err(source) => return Err(PodnetError::Bind { path: netns.path().into(), port, source }),
    };
    Ok(InPodListeners { v4, v6, v6_unavailable })
}

/// Errors meaning "this namespace has no IPv6", as opposed to "the port is taken".
fn v6_is_off(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(code) if code == rustix::io::Errno::AFNOSUPPORT.raw_os_error()
        || code == rustix::io::Errno::ADDRNOTAVAIL.raw_os_error())
}

fn bind_v4(port: u16) -> std::io::Result<TcpListener> {
    let fd = rustix::net::socket_with(AddressFamily::INET, SocketType::STREAM, SocketFlags::CLOEXEC, None)?;
    rustix::net::sockopt::set_socket_reuseaddr(&fd, true)?;
    rustix::net::sockopt::set_socket_reuseport(&fd, true)?;
    rustix::net::bind(&fd, &SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port))?;
    finish(fd)
}

fn bind_v6(port: u16) -> std::io::Result<TcpListener> {
    let fd = rustix::net::socket_with(AddressFamily::INET6, SocketType::STREAM, SocketFlags::CLOEXEC, None)?;
    rustix::net::sockopt::set_ipv6_v6only(&fd, true)?;
    rustix::net::sockopt::set_socket_reuseaddr(&fd, true)?;
    rustix::net::sockopt::set_socket_reuseport(&fd, true)?;
    rustix::net::bind(&fd, &SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, port, 0, 0))?;
    finish(fd)
}

fn finish(fd: std::os::fd::OwnedFd) -> std::io::Result<TcpListener> {
    rustix::net::listen(&fd, BACKLOG)?;
    let listener = TcpListener::from(fd);
    listener.set_nonblocking(true)?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_bound_in_the_current_namespace_accept_and_share_the_port_with_reuseport() {
        let Ok(ns) = Netns::current() else { panic!("open own netns") };
        let first = match bind_in_netns(&ns, 0) {
            Ok(l) => l,
            Err(PodnetError::Setns { .. }) => return, // not root: the namespaced tests cover it
            Err(e) => panic!("{e}"),
        };
        let port = first.v4.local_addr().unwrap().port();
        let second = bind_in_netns(&ns, port).expect("SO_REUSEPORT lets a second listener bind the same port");
        assert_eq!(second.v4.local_addr().unwrap().port(), port);
        let client = std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
        drop(client);
        if let Some(v6) = &first.v6 {
            assert!(v6.local_addr().unwrap().is_ipv6());
        }
    }
}
