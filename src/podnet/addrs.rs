//! Which IP addresses are local to a network namespace, read from the kernel's text tables
//! under a `/proc/<pid>/net` directory: `fib_trie` for IPv4, `if_inet6` for IPv6. Parsing is
//! pure (tested on captured text); reading takes the directory as a path, so unit tests can
//! point it at fixture files.
//!
//! Why these files and not netlink (`RTM_GETADDR` via rtnetlink): `/proc/<pid>/net/*` shows the
//! namespace *of that process* without entering it, so the `/proc` scan needs no `setns` per
//! candidate and no new dependency, and the same parser serves the check inside an entered
//! namespace (`/proc/thread-self/net`). Why not the lab's `bind(ip:0)` test: it also succeeds
//! for addresses that are not local when the pod sets `net.ipv4.ip_nonlocal_bind=1`, which
//! would let one pod claim another's IP (spec §5.3 "verify the IP inside the netns").

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

/// The local addresses listed in a `fib_trie` text: leaves with a `/32 host LOCAL` entry.
/// Both the Main and the Local trie are printed; the set makes the repeat harmless.
pub fn parse_fib_trie(text: &str) -> BTreeSet<Ipv4Addr> {
    let mut local = BTreeSet::new();
    let mut leaf: Option<Ipv4Addr> = None;
    for line in text.lines() {
        let line = line.trim();
        if let Some(addr) = line.strip_prefix("|-- ") {
            leaf = addr.trim().parse().ok();
        } else if line.starts_with("+-- ") || line.ends_with(':') {
            leaf = None;
        } else if line == "/32 host LOCAL" {
            if let Some(addr) = leaf {
                local.insert(addr);
            }
        }
    }
    local
}

/// The addresses in an `if_inet6` text: the first field of each line, 32 hex digits.
pub fn parse_if_inet6(text: &str) -> BTreeSet<Ipv6Addr> {
    text.lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter_map(|hex| u128::from_str_radix(hex, 16).ok().filter(|_| hex.len() == 32))
        .map(Ipv6Addr::from)
        .collect()
}

/// Every local address of the namespace whose `net` directory is `net_dir`, both families.
pub fn local_addrs(net_dir: &Path) -> std::io::Result<BTreeSet<IpAddr>> {
    let mut all: BTreeSet<IpAddr> =
        parse_fib_trie(&std::fs::read_to_string(net_dir.join("fib_trie"))?).into_iter().map(IpAddr::V4).collect();
    match std::fs::read_to_string(net_dir.join("if_inet6")) {
        Ok(text) => all.extend(parse_if_inet6(&text).into_iter().map(IpAddr::V6)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    Ok(all)
}

/// Whether `ip` is a local address of the namespace whose `net` directory is `net_dir`
/// (`/proc/<pid>/net`, or `/proc/thread-self/net` on a thread that entered it).
/// A missing `if_inet6` means IPv6 is off there, which holds no IPv6 address.
pub fn holds_ip(net_dir: &Path, ip: IpAddr) -> std::io::Result<bool> {
    match ip {
        IpAddr::V4(v4) => Ok(parse_fib_trie(&std::fs::read_to_string(net_dir.join("fib_trie"))?).contains(&v4)),
        IpAddr::V6(v6) => match std::fs::read_to_string(net_dir.join("if_inet6")) {
            Ok(text) => Ok(parse_if_inet6(&text).contains(&v6)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        },
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `/proc/self/net/fib_trie` of a pod netns with 10.244.1.10/24 on eth0 (kernel 6.18).
    pub(crate) const POD_FIB_TRIE: &str = "Main:
  +-- 0.0.0.0/1 2 0 2
     +-- 10.244.1.0/24 2 0 2
        +-- 10.244.1.0/28 2 0 2
           |-- 10.244.1.0
              /24 link UNICAST
           |-- 10.244.1.10
              /32 host LOCAL
        |-- 10.244.1.255
           /32 link BROADCAST
     +-- 127.0.0.0/8 2 0 2
        +-- 127.0.0.0/31 1 0 0
           |-- 127.0.0.0
              /8 host LOCAL
           |-- 127.0.0.1
              /32 host LOCAL
        |-- 127.255.255.255
           /32 link BROADCAST
Local:
  +-- 0.0.0.0/1 2 0 2
     +-- 10.244.1.0/24 2 0 2
           |-- 10.244.1.10
              /32 host LOCAL
";

    pub(crate) const POD_IF_INET6: &str = "\
fe80000000000000f41d46fffe1f68b4 03 40 20 c0       eth0
00000000000000000000000000000001 01 80 10 80       lo
fd000000000000000000000000000010 03 40 00 82       eth0
";

    #[test]
    fn only_host_local_slash_32_leaves_count_as_local_ipv4() {
        let local = parse_fib_trie(POD_FIB_TRIE);
        let want: BTreeSet<Ipv4Addr> = ["10.244.1.10", "127.0.0.1"].iter().map(|a| a.parse().unwrap()).collect();
        assert_eq!(local, want, "network (.0), broadcast (.255) and the 127/8 route are not addresses");
    }

    #[test]
    fn a_local_line_after_an_internal_node_belongs_to_no_leaf() {
        assert!(parse_fib_trie("Local:\n  +-- 10.0.0.0/8 2 0 2\n     /32 host LOCAL\n").is_empty());
    }

    #[test]
    fn if_inet6_lines_give_their_addresses_and_garbage_is_skipped() {
        let mut text = POD_IF_INET6.to_string();
        text.push_str("nothex 01 80 10 80 lo\nfd00 01 80 10 80 short\n\n");
        let addrs = parse_if_inet6(&text);
        assert!(addrs.contains(&"fd00::10".parse().unwrap()));
        assert!(addrs.contains(&Ipv6Addr::LOCALHOST));
        assert_eq!(addrs.len(), 3);
    }

    #[test]
    fn holds_ip_reads_the_directory_it_is_given() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("fib_trie"), POD_FIB_TRIE).unwrap();
        assert!(holds_ip(dir.path(), "10.244.1.10".parse().unwrap()).unwrap());
        assert!(!holds_ip(dir.path(), "10.244.1.11".parse().unwrap()).unwrap());
        assert!(!holds_ip(dir.path(), "fd00::10".parse().unwrap()).unwrap(), "no if_inet6: IPv6 off");
        std::fs::write(dir.path().join("if_inet6"), POD_IF_INET6).unwrap();
        assert!(holds_ip(dir.path(), "fd00::10".parse().unwrap()).unwrap());
        let all = local_addrs(dir.path()).unwrap();
        assert!(all.contains(&"10.244.1.10".parse().unwrap()) && all.contains(&"fd00::10".parse().unwrap()));
        assert_eq!(all.len(), 5, "2 IPv4 + 3 IPv6");
    }
}
