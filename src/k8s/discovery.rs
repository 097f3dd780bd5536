//! Discovery with the 2.2 fork's semantics (spec/kubernetes.md §1): which agent pod serves each
//! node, as the fork's driver (`KubernetesExternalShuffleManager`) would find it. Used by the
//! `discover` subcommand, to check a deployment before pointing fork drivers at it.
//!
//! The rules: pods in one namespace carrying ALL the given labels; only pods whose Ready
//! condition is True count; node → pod IP; two counted pods on one node is an error
//! (ambiguous); a node with none is an error when asked for.
//!
//! [`agents_by_node`] and [`AgentMap`] are pure; [`discover`] makes the one LIST.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::Api;

use super::pods;

/// Why discovery gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// `--labels` is not a list of `key=value` pairs.
    #[error("bad --labels {0:?}: expected key=value[,key=value...]")]
    BadLabels(String),
    /// Two Ready matching pods on one node: a fork driver would not know which to use.
    #[error("ambiguous: node {node} has more than one Ready shuffle pod: {}", pods.join(", "))]
    Ambiguous { node: String, pods: Vec<String> },
    /// No Ready matching pod on the node asked for (the fork driver's words).
    #[error("unable to find shuffle pod on node {0}")]
    NotFound(String),
    /// The client could not be built, or the LIST failed.
    #[error("Kubernetes API: {0}")]
    Api(#[from] kube::Error),
}

/// One agent pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agent {
    /// `namespace/name`.
    pub pod: String,
    pub ip: String,
}

/// Node name → the Ready agent pods on it (normally one).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentMap {
    pub nodes: BTreeMap<String, Vec<Agent>>,
}

impl AgentMap {
    /// The agent on `node`, as a fork driver would pick it.
    pub fn agent_on(&self, node: &str) -> Result<&Agent, DiscoveryError> {
        match self.nodes.get(node).map(Vec::as_slice) {
            None | Some([]) => Err(DiscoveryError::NotFound(node.to_string())),
            Some([agent]) => Ok(agent),
            Some(many) => Err(ambiguous(node, many)),
        }
    }

    /// Every node's agent; an error naming the first node (by name) with more than one.
    pub fn resolve(&self) -> Result<BTreeMap<&str, &Agent>, DiscoveryError> {
        self.nodes.keys().map(|node| Ok((node.as_str(), self.agent_on(node)?))).collect()
    }

    /// The map as `discover` prints it: `node<TAB>ip<TAB>namespace/pod`, one line per node,
    /// sorted by node.
    pub fn render(&self) -> Result<String, DiscoveryError> {
        let mut out = String::new();
        for (node, agent) in self.resolve()? {
            let _ = writeln!(out, "{node}\t{}\t{}", agent.ip, agent.pod);
        }
        Ok(out)
    }
}

fn ambiguous(node: &str, agents: &[Agent]) -> DiscoveryError {
    DiscoveryError::Ambiguous { node: node.to_string(), pods: agents.iter().map(|a| a.pod.clone()).collect() }
}

/// Builds the map from listed pods: Ready pods with a node and an IP; everything else is
/// skipped, as the fork's driver skips it.
pub fn agents_by_node<'a>(listed: impl IntoIterator<Item = &'a Pod>) -> AgentMap {
    let mut map = AgentMap::default();
    for pod in listed.into_iter().filter(|p| pods::is_ready(p)) {
        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone()).filter(|n| !n.is_empty());
        let ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone()).filter(|ip| !ip.is_empty());
        if let (Some(node), Some(ip)) = (node, ip) {
            map.nodes.entry(node).or_default().push(Agent { pod: pods::key(pod), ip });
        }
    }
    for agents in map.nodes.values_mut() {
        agents.sort_by(|a, b| a.pod.cmp(&b.pod));
    }
    map
}

/// Checks `k=v,k2=v2` (the form of `spark.kubernetes.shuffle.labels`) and returns it as a
/// label selector. Only equality: that is all the fork supports.
pub fn label_selector(labels: &str) -> Result<String, DiscoveryError> {
    let bad = || DiscoveryError::BadLabels(labels.to_string());
    let mut pairs = Vec::new();
    for pair in labels.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').ok_or_else(bad)?;
        let (key, value) = (key.trim(), value.trim());
        let key_ok = !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b));
        if !key_ok || !(value.is_empty() || pods::is_label_value(value)) {
            return Err(bad());
        }
        pairs.push(format!("{key}={value}"));
    }
    if pairs.is_empty() {
        return Err(bad());
    }
    Ok(pairs.join(","))
}

/// Lists pods in `namespace` with all of `labels` and maps them by node.
pub async fn discover(client: kube::Client, namespace: &str, labels: &str) -> Result<AgentMap, DiscoveryError> {
    let selector = label_selector(labels)?;
    let api = Api::<Pod>::namespaced(client, namespace);
    let listed = api.list(&ListParams::default().labels(&selector)).await?;
    Ok(agents_by_node(&listed.items))
}

/// What `discover` prints: the whole map, or with `node` just that node's agent IP (what a
/// fork driver would hand that node's executors). Each ends with a newline.
pub async fn discover_text(
    config: kube::Config,
    namespace: &str,
    labels: &str,
    node: Option<&str>,
) -> Result<String, DiscoveryError> {
    let client = kube::Client::try_from(config)?;
    let map = discover(client, namespace, labels).await?;
    match node {
        Some(node) => Ok(format!("{}\n", map.agent_on(node)?.ip)),
        None => map.render(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_checked_and_normalised() {
        assert_eq!(
            label_selector("app=spark-shuffle-service, spark-version=2.2.0").unwrap(),
            "app=spark-shuffle-service,spark-version=2.2.0"
        );
        assert_eq!(label_selector("example.com/tier=shuffle").unwrap(), "example.com/tier=shuffle");
        for bad in ["", "app", "app!=x", "=x", "app=a,b", "a=b c"] {
            assert!(matches!(label_selector(bad), Err(DiscoveryError::BadLabels(_))), "{bad:?}");
        }
    }

    #[test]
    fn an_empty_map_finds_nothing() {
        let map = AgentMap::default();
        assert_eq!(map.render().unwrap(), "");
        assert_eq!(map.agent_on("n1").unwrap_err().to_string(), "unable to find shuffle pod on node n1");
    }
}
