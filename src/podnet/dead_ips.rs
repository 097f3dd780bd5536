//! The dead-executor IPs the redirect tables are built from: `dead pod IP -> the agent holding
//! its files`, per application, and their file in the state dir.
//!
//! Why persisted (spec §5.2): a deleted pod is gone from the watch's next initial list, so after
//! a restart only this file knows where a dead executor's files are, while its app still runs.
//! Entries leave when their app ends, or when the IP shows up on any new pod (IP reuse, spec
//! §2.3: a stale entry would send a new pod's :7337 traffic to the wrong agent).
//!
//! The file is one line, `<crc32 hex> <json>`, replaced by write-to-temp, fsync, rename, fsync
//! of the directory. A torn or corrupt file is reported and read as empty: the cost is
//! FetchFailed and a recompute for those blocks (Spark's stock behaviour), never a wrong redirect.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::redirect::{Layer, RedirectTable};

/// The file's name in the state dir.
pub const FILE_NAME: &str = "podnet-dead-ips.json";

/// Where one dead executor's files are served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadIp {
    pub ip: IpAddr,
    /// The agent (node IP, shuffle port) on the node that holds the executor's files.
    pub owner: SocketAddr,
    pub app_id: String,
}

/// All dead-executor IPs this agent knows of, cluster-wide.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadIps {
    by_ip: BTreeMap<IpAddr, DeadIp>,
}

impl DeadIps {
    /// An executor pod at `ip` of `app_id` ended; its files are at `owner`. Returns whether
    /// anything changed (the tables then need a reconcile).
    pub fn executor_died(&mut self, ip: IpAddr, owner: SocketAddr, app_id: &str) -> bool {
        let entry = DeadIp { ip, owner, app_id: app_id.to_string() };
        self.by_ip.insert(ip, entry.clone()) != Some(entry)
    }

    /// A new pod (any pod) was seen with `ip`: its old redirect must go.
    pub fn ip_reused(&mut self, ip: IpAddr) -> bool {
        self.by_ip.remove(&ip).is_some()
    }

    /// `app_id` ended: nobody will fetch its blocks again. Returns how many entries went.
    pub fn app_ended(&mut self, app_id: &str) -> usize {
        let before = self.by_ip.len();
        self.by_ip.retain(|_, d| d.app_id != app_id);
        before - self.by_ip.len()
    }

    pub fn len(&self) -> usize {
        self.by_ip.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_ip.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &DeadIp> {
        self.by_ip.values()
    }

    /// The table for every live Spark pod's namespace: all dead IPs, cluster-wide (layer B).
    pub fn pod_table(&self, port: u16) -> RedirectTable {
        let mut table = RedirectTable::new(Layer::Pod, port);
        table.entries = self.by_ip.values().map(|d| (d.ip, d.owner)).collect();
        table
    }

    /// The table for this node's own namespace: only the dead IPs whose files are here
    /// (`node` is this agent's address), so a reused IP elsewhere is never hijacked by this
    /// node (spec §2.3, layer A).
    pub fn host_table(&self, node: SocketAddr, port: u16) -> RedirectTable {
        let mut table = RedirectTable::new(Layer::Host, port);
        table.entries = self.by_ip.values().filter(|d| d.owner == node).map(|d| (d.ip, d.owner)).collect();
        table
    }
}

/// An executor pod on the pod network as last seen alive, with the IPs it had then. Kept in
/// the same file so that a pod which ends while the agent is down is still known to have been
/// there: the first complete list after a restart lacks it, and that makes its IP dead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LivePod {
    pub pod: String,
    pub app_id: String,
    pub ip: IpAddr,
    pub host_ip: IpAddr,
    pub local: bool,
}

/// Executor pods alive when last seen, by `namespace/name`.
pub type LivePods = BTreeMap<String, LivePod>;

#[derive(Serialize, Deserialize)]
struct FileBody {
    version: u32,
    dead: Vec<DeadIp>,
    /// Absent in files written before live pods were kept.
    #[serde(default)]
    live: Vec<LivePod>,
}

/// What [`load`] found.
#[derive(Debug)]
pub struct Loaded {
    pub dead: DeadIps,
    pub live: LivePods,
    /// Why the file was not used, when it existed but was torn or corrupt (for one warn line).
    pub discarded: Option<String>,
}

/// Writes `dead` to `dir/FILE_NAME`, atomically.
pub fn save(dir: &Path, dead: &DeadIps) -> std::io::Result<()> {
    save_with_live(dir, dead, &LivePods::new())
}

/// Writes `dead` and the live pods to `dir/FILE_NAME`, atomically.
pub fn save_with_live(dir: &Path, dead: &DeadIps, live: &LivePods) -> std::io::Result<()> {
    let body =
        FileBody { version: 1, dead: dead.by_ip.values().cloned().collect(), live: live.values().cloned().collect() };
    let json = serde_json::to_string(&body).map_err(std::io::Error::other)?;
    let line = format!("{:08x} {json}\n", crc32fast::hash(json.as_bytes()));
    let tmp = dir.join(format!("{FILE_NAME}.tmp"));
    {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(line.as_bytes())?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path(dir))?;
    std::fs::File::open(dir)?.sync_all()
}

/// Reads `dir/FILE_NAME`; a missing file is an empty map, a torn or corrupt one too (with the
/// reason in [`Loaded::discarded`]). Only an unreadable file is an error.
pub fn load(dir: &Path) -> std::io::Result<Loaded> {
    let text = match std::fs::read_to_string(path(dir)) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Loaded { dead: DeadIps::default(), live: LivePods::new(), discarded: None })
        }
        Err(e) => return Err(e),
    };
    match parse(&text) {
        Ok((dead, live)) => Ok(Loaded { dead, live, discarded: None }),
        Err(why) => Ok(Loaded { dead: DeadIps::default(), live: LivePods::new(), discarded: Some(why) }),
    }
}

fn path(dir: &Path) -> PathBuf {
    dir.join(FILE_NAME)
}

fn parse(text: &str) -> Result<(DeadIps, LivePods), String> {
    let line = text.strip_suffix('\n').ok_or("no final newline (torn write)")?;
    let (crc, json) = line.split_once(' ').ok_or("no checksum")?;
    let crc = u32::from_str_radix(crc, 16).map_err(|_| "bad checksum field")?;
    if crc32fast::hash(json.as_bytes()) != crc {
        return Err("checksum mismatch".into());
    }
    let body: FileBody = serde_json::from_str(json).map_err(|e| format!("bad json: {e}"))?;
    if body.version != 1 {
        return Err(format!("unknown version {}", body.version));
    }
    let live = body.live.into_iter().map(|p| (p.pod.clone(), p)).collect();
    Ok((DeadIps { by_ip: body.dead.into_iter().map(|d| (d.ip, d)).collect() }, live))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn sample() -> DeadIps {
        let mut d = DeadIps::default();
        d.executor_died("10.244.1.10".parse().unwrap(), addr("192.168.50.1:7337"), "app-1");
        d.executor_died("10.244.2.30".parse().unwrap(), addr("192.168.50.2:7337"), "app-1");
        d.executor_died("fd00::10".parse().unwrap(), addr("[fd00::1]:7337"), "app-2");
        d
    }

    #[test]
    fn entries_leave_when_their_app_ends_or_their_ip_is_reused() {
        let mut d = sample();
        assert!(!d.executor_died("10.244.1.10".parse().unwrap(), addr("192.168.50.1:7337"), "app-1"), "no change");
        assert!(d.ip_reused("10.244.2.30".parse().unwrap()));
        assert!(!d.ip_reused("10.244.2.30".parse().unwrap()));
        assert_eq!(d.app_ended("app-2"), 1);
        assert_eq!(d.iter().map(|e| e.ip.to_string()).collect::<Vec<_>>(), ["10.244.1.10"]);
    }

    #[test]
    fn pods_get_every_dead_ip_and_the_host_only_its_own() {
        let d = sample();
        assert_eq!(d.pod_table(7337).entries.len(), 3);
        let host = d.host_table(addr("192.168.50.1:7337"), 7337);
        assert_eq!(host.layer, Layer::Host);
        assert_eq!(host.entries.keys().map(|k| k.to_string()).collect::<Vec<_>>(), ["10.244.1.10"]);
    }

    #[test]
    fn the_file_round_trips_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).unwrap().dead.is_empty(), "no file yet");
        save(dir.path(), &sample()).unwrap();
        let loaded = load(dir.path()).unwrap();
        assert_eq!(loaded.dead, sample());
        assert!(loaded.discarded.is_none());
        assert!(loaded.live.is_empty());
        let pod = LivePod {
            pod: "jobs/e1".into(),
            app_id: "app-1".into(),
            ip: "10.244.1.11".parse().unwrap(),
            host_ip: "192.168.50.1".parse().unwrap(),
            local: true,
        };
        save_with_live(dir.path(), &sample(), &LivePods::from([(pod.pod.clone(), pod.clone())])).unwrap();
        assert_eq!(load(dir.path()).unwrap().live.into_values().collect::<Vec<_>>(), [pod]);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, [FILE_NAME]);
    }

    #[test]
    fn a_torn_or_flipped_file_is_read_as_empty_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        save(dir.path(), &sample()).unwrap();
        let good = std::fs::read(path(dir.path())).unwrap();
        for cut in [1, good.len() / 2, good.len() - 1] {
            std::fs::write(path(dir.path()), &good[..cut]).unwrap();
            let loaded = load(dir.path()).unwrap();
            assert!(loaded.dead.is_empty(), "cut at {cut}");
            assert!(loaded.discarded.is_some(), "cut at {cut}");
        }
        let mut flipped = good.clone();
        let at = flipped.len() - 10;
        flipped[at] ^= 0x01;
        std::fs::write(path(dir.path()), &flipped).unwrap();
        assert_eq!(load(dir.path()).unwrap().discarded.as_deref(), Some("checksum mismatch"));
    }
}
