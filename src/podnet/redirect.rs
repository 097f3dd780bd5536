//! The dead-IP redirect table, as a pure model: what one namespace's nftables table should be
//! (desired), what `nft` says it is (observed), and the `nft -f` script that turns one into the
//! other. No process is run here; [`super::nft`] does that.
//!
//! The rules are the lab's (spec §2.4), in one `inet` table so IPv4 and IPv6 share it:
//! * `out` (nat output): a connection from this namespace to `<dead IP>:<port>` is DNATed to
//!   the agent that holds the dead executor's files (source-side layer B in every live Spark
//!   pod; for hostNetwork clients in the host).
//! * `rst` (filter output): a flow opened *before* the death was not NATed and would hang until
//!   Spark's 120 s timeout; `ct status != dnat ... reject with tcp reset` ends it at once and
//!   Spark's fetch retry reconnects through `out` (lab §7/§8: 0.00 s).
//! * host layer only, `pre` (nat prerouting) and `fwdrst` (filter forward): the same for
//!   traffic routed *through* the node to its own dead executors (destination-side layer A).
//!
//! Every rule carries a comment naming the schema, layer and port (rule comments, unlike table
//! comments, are in nft 1.0.6's JSON listing, so one `nft -j list` tells all). A table whose
//! rules carry another comment, or whose chains hold another number of rules, is replaced whole, in one atomic `nft -f`
//! transaction (`add table; delete table; table {...}`); otherwise only elements change, and a
//! table already right costs no `nft` write at all.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

/// The table's family and name in every namespace the agent programs.
pub const FAMILY: &str = "inet";
pub const TABLE: &str = "spark_shuffle_agent";
/// Bumped whenever the rules below change, so an upgraded agent replaces an old table.
const SCHEMA: &str = "spark-shuffle-agent/1";

/// Which namespace a table is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    /// A live Spark pod's namespace: redirect what this pod dials (layer B).
    Pod,
    /// The node's own namespace: also redirect what is routed through the node (layer A).
    Host,
}

impl Layer {
    fn name(self) -> &'static str {
        match self {
            Layer::Pod => "pod",
            Layer::Host => "host",
        }
    }

    /// (chain name, chain declaration) in rule order; each chain has one v4 and one v6 rule.
    fn chains(self) -> &'static [(&'static str, &'static str, Verdict)] {
        const POD: &[(&str, &str, Verdict)] = &[
            ("out", "type nat hook output priority -110; policy accept;", Verdict::Dnat),
            ("rst", "type filter hook output priority filter; policy accept;", Verdict::Reset),
        ];
        const HOST: &[(&str, &str, Verdict)] = &[
            ("out", "type nat hook output priority -110; policy accept;", Verdict::Dnat),
            ("rst", "type filter hook output priority filter; policy accept;", Verdict::Reset),
            ("pre", "type nat hook prerouting priority -110; policy accept;", Verdict::Dnat),
            ("fwdrst", "type filter hook forward priority filter; policy accept;", Verdict::Reset),
        ];
        match self {
            Layer::Pod => POD,
            Layer::Host => HOST,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Verdict {
    Dnat,
    Reset,
}

/// The table one namespace should have: `dead pod IP -> agent address` for connections to
/// `port` (`spark.shuffle.service.port`). Entries whose two addresses differ in family cannot
/// be DNATed and are left out of the script ([`RedirectTable::usable`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedirectTable {
    pub layer: Layer,
    pub port: u16,
    pub entries: BTreeMap<IpAddr, SocketAddr>,
}

/// What `nft -j list table` reported for our table.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Observed {
    /// The distinct comments of its rules ("" for a rule without one).
    pub comments: BTreeSet<String>,
    /// Rules per chain.
    pub rules: BTreeMap<String, usize>,
    /// Elements of `dead4` and `dead6`.
    pub entries: BTreeMap<IpAddr, SocketAddr>,
}

/// What a reconcile has to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// The table is already as desired.
    Nothing,
    /// Replace the table whole (absent, foreign or older schema).
    Replace(String),
    /// Only elements differ.
    Elements { script: String, added: usize, removed: usize },
}

impl Plan {
    pub fn script(&self) -> Option<&str> {
        match self {
            Plan::Nothing => None,
            Plan::Replace(s) | Plan::Elements { script: s, .. } => Some(s),
        }
    }
}

impl RedirectTable {
    pub fn new(layer: Layer, port: u16) -> RedirectTable {
        RedirectTable { layer, port, entries: BTreeMap::new() }
    }

    /// The comment on every rule (and on the table, for operators) that identifies a table made
    /// by this schema for this layer and port.
    pub fn comment(&self) -> String {
        format!("{SCHEMA} layer={} port={}", self.layer.name(), self.port)
    }

    /// The entries that can be installed: both addresses of one family.
    pub fn usable(&self) -> BTreeMap<IpAddr, SocketAddr> {
        self.entries.iter().filter(|(dead, to)| dead.is_ipv4() == to.is_ipv4()).map(|(d, t)| (*d, *t)).collect()
    }

    /// The whole table, without elements.
    pub fn render_table(&self) -> String {
        let (port, marker) = (self.port, self.comment());
        let mut s = format!("table {FAMILY} {TABLE} {{\n  comment \"{marker}\"\n");
        s.push_str("  map dead4 { type ipv4_addr : ipv4_addr . inet_service; }\n");
        s.push_str("  map dead6 { type ipv6_addr : ipv6_addr . inet_service; }\n");
        for (name, decl, verdict) in self.layer.chains() {
            let _ = writeln!(s, "  chain {name} {{ {decl}");
            for (ip, map) in [("ip", "dead4"), ("ip6", "dead6")] {
                let _ = match verdict {
                    Verdict::Dnat => writeln!(
                        s,
                        "    meta l4proto tcp tcp dport {port} dnat {ip} addr . port to {ip} daddr map @{map} comment \"{marker}\""
                    ),
                    Verdict::Reset => writeln!(
                        s,
                        "    meta l4proto tcp tcp dport {port} {ip} daddr @{map} ct status != dnat reject with tcp reset \
                         comment \"{marker}\""
                    ),
                };
            }
            s.push_str("  }\n");
        }
        s.push_str("}\n");
        s
    }

    fn expected_rules(&self) -> BTreeMap<String, usize> {
        self.layer.chains().iter().map(|(name, _, _)| (name.to_string(), 2)).collect()
    }

    /// The script from `observed` (`None`: no table) to this table.
    pub fn plan(&self, observed: Option<&Observed>) -> Plan {
        let want = self.usable();
        let marker = BTreeSet::from([self.comment()]);
        let matching = observed.filter(|o| o.comments == marker && o.rules == self.expected_rules());
        let Some(have) = matching else {
            let mut script = format!("add table {FAMILY} {TABLE}\ndelete table {FAMILY} {TABLE}\n");
            script.push_str(&self.render_table());
            for (dead, to) in &want {
                push_add(&mut script, *dead, *to);
            }
            return Plan::Replace(script);
        };
        let mut script = String::new();
        let (mut added, mut removed) = (0, 0);
        for (dead, to) in &have.entries {
            if want.get(dead) != Some(to) {
                let _ = writeln!(script, "delete element {FAMILY} {TABLE} {} {{ {dead} }}", map_of(*dead));
                removed += 1;
            }
        }
        for (dead, to) in &want {
            if have.entries.get(dead) != Some(to) {
                push_add(&mut script, *dead, *to);
                added += 1;
            }
        }
        if script.is_empty() {
            Plan::Nothing
        } else {
            Plan::Elements { script, added, removed }
        }
    }
}

fn map_of(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() {
        "dead4"
    } else {
        "dead6"
    }
}

fn push_add(script: &mut String, dead: IpAddr, to: SocketAddr) {
    let _ =
        writeln!(script, "add element {FAMILY} {TABLE} {} {{ {dead} : {} . {} }}", map_of(dead), to.ip(), to.port());
}

/// Reads our table out of `nft -j list table` output: rules per chain, their comments, the
/// elements. Anything not understood is left out, which at worst makes [`RedirectTable::plan`]
/// replace the table: the safe direction.
pub fn parse_listing(json: &str) -> Observed {
    let mut observed = Observed::default();
    let Ok(doc) = serde_json::from_str::<serde_json::Value>(json) else { return observed };
    for item in doc.get("nftables").and_then(|v| v.as_array()).into_iter().flatten() {
        if let Some(rule) = item.get("rule") {
            if let Some(chain) = rule.get("chain").and_then(|c| c.as_str()) {
                *observed.rules.entry(chain.to_string()).or_default() += 1;
            }
            observed.comments.insert(rule.get("comment").and_then(|c| c.as_str()).unwrap_or("").to_string());
        }
        let Some(map) = item.get("map") else { continue };
        for elem in map.get("elem").and_then(|e| e.as_array()).into_iter().flatten() {
            if let Some((dead, to)) = parse_elem(elem) {
                observed.entries.insert(dead, to);
            }
        }
    }
    observed
}

/// `["10.244.1.10", {"concat": ["10.244.1.1", 7337]}]`
fn parse_elem(elem: &serde_json::Value) -> Option<(IpAddr, SocketAddr)> {
    let dead: IpAddr = elem.get(0)?.as_str()?.parse().ok()?;
    let concat = elem.get(1)?.get("concat")?;
    let ip: IpAddr = concat.get(0)?.as_str()?.parse().ok()?;
    let port = u16::try_from(concat.get(1)?.as_u64()?).ok()?;
    Some((dead, SocketAddr::new(ip, port)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(layer: Layer, entries: &[(&str, &str)]) -> RedirectTable {
        let mut t = RedirectTable::new(layer, 7337);
        for (dead, to) in entries {
            t.entries.insert(dead.parse().unwrap(), to.parse().unwrap());
        }
        t
    }

    fn observed_as(t: &RedirectTable) -> Observed {
        Observed { comments: BTreeSet::from([t.comment()]), rules: t.expected_rules(), entries: t.usable() }
    }

    /// What nft 1.0.6 printed for a pod table with one v4 and one v6 element.
    const LISTING_JSON: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
      {"table": {"family": "inet", "name": "spark_shuffle_agent", "handle": 1}},
      {"map": {"family": "inet", "name": "dead4", "table": "spark_shuffle_agent", "type": "ipv4_addr", "handle": 3,
        "map": "ipv4_addr . inet_service", "elem": [["10.244.1.10", {"concat": ["10.244.1.1", 7337]}]]}},
      {"map": {"family": "inet", "name": "dead6", "table": "spark_shuffle_agent", "type": "ipv6_addr", "handle": 4,
        "map": "ipv6_addr . inet_service", "elem": [["fd00::10", {"concat": ["fd00::1", 7337]}]]}},
      {"chain": {"family": "inet", "table": "spark_shuffle_agent", "name": "out", "handle": 1}},
      {"rule": {"family": "inet", "table": "spark_shuffle_agent", "chain": "out", "handle": 5, "expr": [], "comment": "spark-shuffle-agent/1 layer=pod port=7337"}},
      {"rule": {"family": "inet", "table": "spark_shuffle_agent", "chain": "out", "handle": 6, "expr": [], "comment": "spark-shuffle-agent/1 layer=pod port=7337"}},
      {"rule": {"family": "inet", "table": "spark_shuffle_agent", "chain": "rst", "handle": 7, "expr": [], "comment": "spark-shuffle-agent/1 layer=pod port=7337"}},
      {"rule": {"family": "inet", "table": "spark_shuffle_agent", "chain": "rst", "handle": 8, "expr": [], "comment": "spark-shuffle-agent/1 layer=pod port=7337"}}]}"#;

    #[test]
    fn a_listing_is_read_back_as_rules_their_comments_and_elements() {
        let o = parse_listing(LISTING_JSON);
        let want = table(Layer::Pod, &[("10.244.1.10", "10.244.1.1:7337"), ("fd00::10", "[fd00::1]:7337")]);
        assert_eq!(o, observed_as(&want));
        assert_eq!(want.plan(Some(&o)), Plan::Nothing, "already right: nothing to run");
    }

    #[test]
    fn no_table_or_a_foreign_one_is_replaced_whole_with_its_elements() {
        let want = table(Layer::Pod, &[("10.244.1.10", "10.244.1.1:7337")]);
        let Plan::Replace(script) = want.plan(None) else { panic!("absent table must be created") };
        assert!(script.starts_with("add table inet spark_shuffle_agent\ndelete table inet spark_shuffle_agent\n"));
        assert!(script.contains("comment \"spark-shuffle-agent/1 layer=pod port=7337\""));
        assert!(script.ends_with("add element inet spark_shuffle_agent dead4 { 10.244.1.10 : 10.244.1.1 . 7337 }\n"));
        let mut old_port = observed_as(&want);
        old_port.comments = BTreeSet::from(["spark-shuffle-agent/1 layer=pod port=7000".to_string()]);
        assert!(matches!(want.plan(Some(&old_port)), Plan::Replace(_)));
        let mut hand_added = observed_as(&want);
        hand_added.comments.insert(String::new());
        assert!(matches!(want.plan(Some(&hand_added)), Plan::Replace(_)), "a rule someone added by hand");
        let mut flushed = observed_as(&want);
        flushed.rules.insert("rst".into(), 0);
        assert!(matches!(want.plan(Some(&flushed)), Plan::Replace(_)), "someone flushed a chain");
    }

    #[test]
    fn only_changed_elements_are_written_and_a_moved_ip_is_deleted_then_added() {
        let have = table(Layer::Pod, &[("10.244.1.10", "10.244.1.1:7337"), ("10.244.1.12", "10.244.2.1:7337")]);
        let want = table(Layer::Pod, &[("10.244.1.10", "10.244.3.1:7337"), ("10.244.1.13", "10.244.2.1:7337")]);
        let plan = want.plan(Some(&observed_as(&have)));
        let Plan::Elements { script, added, removed } = plan else { panic!("{plan:?}") };
        assert_eq!((added, removed), (2, 2));
        assert_eq!(
            script,
            "delete element inet spark_shuffle_agent dead4 { 10.244.1.10 }\n\
             delete element inet spark_shuffle_agent dead4 { 10.244.1.12 }\n\
             add element inet spark_shuffle_agent dead4 { 10.244.1.10 : 10.244.3.1 . 7337 }\n\
             add element inet spark_shuffle_agent dead4 { 10.244.1.13 : 10.244.2.1 . 7337 }\n"
        );
    }

    #[test]
    fn an_entry_mixing_families_is_never_written() {
        let want = table(Layer::Pod, &[("10.244.1.10", "[fd00::1]:7337")]);
        assert_eq!(want.plan(Some(&observed_as(&RedirectTable::new(Layer::Pod, 7337)))), Plan::Nothing);
    }

    #[test]
    fn the_host_layer_adds_prerouting_and_forward_reset_chains() {
        let host = RedirectTable::new(Layer::Host, 7337).render_table();
        let pod = RedirectTable::new(Layer::Pod, 7337).render_table();
        for chain in ["chain out", "chain rst", "chain pre", "chain fwdrst", "hook prerouting", "hook forward"] {
            assert!(host.contains(chain), "{chain}");
        }
        assert!(!pod.contains("prerouting") && !pod.contains("forward"));
        assert!(pod.contains("tcp dport 7337 ip daddr @dead4 ct status != dnat reject with tcp reset"));
        assert!(pod.contains("tcp dport 7337 dnat ip6 addr . port to ip6 daddr map @dead6"));
    }

    #[test]
    fn garbage_from_nft_reads_as_no_usable_table() {
        let o = parse_listing("not json");
        assert!(matches!(RedirectTable::new(Layer::Pod, 7337).plan(Some(&o)), Plan::Replace(_)));
    }
}
