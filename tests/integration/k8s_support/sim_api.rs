//! A SIMULATED Kubernetes API server: no real kube-apiserver can run on these machines
//! (spec/kubernetes.md §4), so this serves the same HTTP endpoints kube-rs calls for pods, and
//! the tests that use it say "simulated" in their names.
//!
//! What it speaks:
//! * `GET /api/v1/pods` and `GET /api/v1/namespaces/{ns}/pods`: a PodList with
//!   `metadata.resourceVersion`, filtered by `labelSelector` (`k=v`, `k==v`, `k!=v`, `k`, `!k`)
//!   and `fieldSelector` (`spec.nodeName`, `metadata.name`, `metadata.namespace`,
//!   `status.phase`; anything else is a 400, as on a real server), paged by `limit`/`continue`;
//! * the same with `watch=true&resourceVersion=N`: a chunked stream of JSON watch events
//!   (ADDED, MODIFIED, DELETED; BOOKMARK when asked for and `allowWatchBookmarks=true`), from
//!   just after N, then live; a resourceVersion older than the compacted history gets one
//!   ERROR event with a 410 Status, as the real server sends; `timeoutSeconds` ends it cleanly.
//!
//! * `GET /api/v1/namespaces/{ns}/persistentvolumeclaims/{name}` and
//!   `GET /api/v1/persistentvolumes/{name}`: the object put there by the test, or a 404 Status
//!   (what the agent reads with `agent.localDirs.translate`).
//!
//! And what the tests make it do: add, change and delete pods; cut every open watch without
//! ending the chunked body (a dropped connection); expire them (ERROR 410, history compacted,
//! so the client must re-list); fail chosen requests with 500.
//!
//! The HTTP details (request head, target, selectors, chunks) are in sim_http.rs.
//!
//! Why hand-written over tokio rather than hyper or axum: the scenarios are about the server
//! misbehaving at the byte level (a stream cut mid-body, an ERROR event then end of stream),
//! which is a few lines here and a fight against a framework's response machinery there; it
//! also adds no dependency to compile. It answers one request per connection
//! (`Connection: close`), which kube's client handles like any server closing idle connections.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;

use super::sim_http::{decode_target, parse_target, read_head, respond, status, write_chunk, Query, Selectors};

/// A change the open watches hear about.
#[derive(Debug, Clone)]
enum Signal {
    /// A pod event with this resourceVersion was recorded.
    Event(u64),
    /// Cut every watch: stop writing without the final chunk.
    Drop,
    /// End every watch properly (final chunk), as the server does when `timeoutSeconds` is up.
    End,
    /// Every watch gets ERROR 410 Gone and ends.
    Expire,
    /// Every watch that allowed bookmarks gets a BOOKMARK at this resourceVersion: the
    /// resourceVersion when it was sent, so every event up to it was signalled before it.
    Bookmark(u64),
}

#[derive(Debug, Default)]
struct State {
    rv: u64,
    /// (namespace, name) → pod JSON with its current resourceVersion.
    pods: BTreeMap<(String, String), Value>,
    /// Every event: (resourceVersion, type, object).
    history: Vec<(u64, &'static str, Value)>,
    /// Watches starting before this resourceVersion are told 410 Gone.
    compacted: u64,
    /// Every request line received (method, path and query as sent).
    requests: Vec<String>,
    /// Requests whose decoded target contains one of these get a 500.
    failing: Vec<String>,
    /// Requests whose decoded target contains one of these get a 403, as RBAC would answer.
    forbidden: Vec<String>,
    /// Watch connections currently streaming.
    open_watches: usize,
    /// Objects other than pods, by their API path (claims, volumes).
    objects: BTreeMap<String, Value>,
}

/// The simulated API server; stops when dropped.
pub struct SimApi {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    signals: broadcast::Sender<Signal>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SimApi {
    fn drop(&mut self) {
        self.task.abort();
        // Open watch connections end too: they see the channel close.
        let _ = self.signals.send(Signal::Drop);
    }
}

impl SimApi {
    /// Starts on 127.0.0.1, on a free port.
    pub async fn start() -> SimApi {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the simulated API server");
        SimApi::serve(listener)
    }

    /// Serves on a listener bound elsewhere (e.g. inside a test's network namespace).
    pub async fn start_on(listener: std::net::TcpListener) -> SimApi {
        listener.set_nonblocking(true).expect("non-blocking");
        SimApi::serve(TcpListener::from_std(listener).expect("register the listener"))
    }

    fn serve(listener: TcpListener) -> SimApi {
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(Mutex::new(State { rv: 100, ..State::default() }));
        let (signals, _) = broadcast::channel(4096);
        let task = tokio::spawn(accept_loop(listener, Arc::clone(&state), signals.clone()));
        SimApi { addr, state, signals, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Creates or replaces a pod (ADDED or MODIFIED).
    pub fn apply(&self, mut pod: Value) {
        let key = pod_key(&pod);
        let mut state = lock(&self.state);
        state.rv += 1;
        let rv = state.rv;
        pod["metadata"]["resourceVersion"] = json!(rv.to_string());
        let kind = if state.pods.insert(key, pod.clone()).is_some() { "MODIFIED" } else { "ADDED" };
        state.history.push((rv, kind, pod));
        let _ = self.signals.send(Signal::Event(rv));
    }

    /// Serves `object` at its API path: a PersistentVolumeClaim (namespaced) or a
    /// PersistentVolume (cluster-scoped), by its `kind`.
    pub fn put_object(&self, object: Value) {
        let name = object["metadata"]["name"].as_str().expect("a name").to_string();
        let path = match object["kind"].as_str() {
            Some("PersistentVolumeClaim") => {
                let ns = object["metadata"]["namespace"].as_str().expect("a namespace");
                format!("/api/v1/namespaces/{ns}/persistentvolumeclaims/{name}")
            }
            Some("PersistentVolume") => format!("/api/v1/persistentvolumes/{name}"),
            other => panic!("the simulated server does not serve {other:?}"),
        };
        lock(&self.state).objects.insert(path, object);
    }

    /// Sets a pod's phase (MODIFIED).
    pub fn set_phase(&self, namespace: &str, name: &str, phase: &str) {
        let pod = lock(&self.state).pods.get(&(namespace.to_string(), name.to_string())).cloned();
        let mut pod = pod.unwrap_or_else(|| panic!("no pod {namespace}/{name}"));
        pod["status"]["phase"] = json!(phase);
        self.apply(pod);
    }

    /// Deletes a pod (DELETED). Returns whether it existed.
    pub fn delete(&self, namespace: &str, name: &str) -> bool {
        let mut state = lock(&self.state);
        let Some(mut pod) = state.pods.remove(&(namespace.to_string(), name.to_string())) else { return false };
        state.rv += 1;
        let rv = state.rv;
        pod["metadata"]["resourceVersion"] = json!(rv.to_string());
        state.history.push((rv, "DELETED", pod));
        let _ = self.signals.send(Signal::Event(rv));
        true
    }

    /// Changes the pods without telling any watch (what a client misses while its watch is
    /// down): deletes `namespace/name` and forgets the event, so only a re-list shows it.
    pub fn delete_silently(&self, namespace: &str, name: &str) {
        let mut state = lock(&self.state);
        state.pods.remove(&(namespace.to_string(), name.to_string()));
        state.rv += 1;
        state.compacted = state.rv;
        state.history.clear();
    }

    /// Cuts every open watch connection in the middle of its chunked body.
    pub fn drop_watches(&self) {
        let _ = self.signals.send(Signal::Drop);
    }

    /// Ends every open watch cleanly, as a real server does at the watch's timeout.
    pub fn end_watches(&self) {
        let _ = self.signals.send(Signal::End);
    }

    /// Expires every open watch (ERROR 410 Gone) and compacts the history, so resuming from
    /// any resourceVersion seen so far is also 410: the client has to re-list.
    pub fn expire_watches(&self) {
        let mut state = lock(&self.state);
        state.rv += 1;
        state.compacted = state.rv;
        state.history.clear();
        let _ = self.signals.send(Signal::Expire);
    }

    /// Sends a BOOKMARK to every watch that allows them.
    pub fn bookmark(&self) {
        let state = lock(&self.state);
        let _ = self.signals.send(Signal::Bookmark(state.rv));
    }

    /// Answers 500 to every request whose (decoded) target contains `needle`.
    pub fn fail_requests_containing(&self, needle: &str) {
        lock(&self.state).failing.push(needle.to_string());
    }

    /// Answers 403 Forbidden, with the API server's RBAC text, to every request whose (decoded)
    /// target contains `needle`.
    pub fn forbid_requests_containing(&self, needle: &str) {
        lock(&self.state).forbidden.push(needle.to_string());
    }

    pub fn stop_failing(&self) {
        lock(&self.state).failing.clear();
    }

    /// Decoded request targets received so far, e.g.
    /// `/api/v1/pods?labelSelector=spark-role=driver&watch=true&...`.
    pub fn requests(&self) -> Vec<String> {
        lock(&self.state).requests.clone()
    }

    /// Requests whose target contains every one of `parts`.
    pub fn count_requests(&self, parts: &[&str]) -> usize {
        self.requests().iter().filter(|r| parts.iter().all(|p| r.contains(p))).count()
    }

    pub fn open_watches(&self) -> usize {
        lock(&self.state).open_watches
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn pod_key(pod: &Value) -> (String, String) {
    let meta = &pod["metadata"];
    (meta["namespace"].as_str().unwrap_or("default").to_string(), meta["name"].as_str().expect("pod name").to_string())
}

async fn accept_loop(listener: TcpListener, state: Arc<Mutex<State>>, signals: broadcast::Sender<Signal>) {
    loop {
        let Ok((socket, _)) = listener.accept().await else { continue };
        let (state, signals) = (Arc::clone(&state), signals.clone());
        tokio::spawn(async move {
            let _ = serve(socket, state, signals).await;
        });
    }
}

async fn serve(
    mut socket: TcpStream,
    state: Arc<Mutex<State>>,
    signals: broadcast::Sender<Signal>,
) -> std::io::Result<()> {
    let head = read_head(&mut socket).await?;
    let line = head.lines().next().unwrap_or_default().to_string();
    let mut parts = line.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let decoded = decode_target(target);
    let (failing, forbidden) = {
        let mut s = lock(&state);
        s.requests.push(decoded.clone());
        let hit = |needles: &[String]| needles.iter().any(|needle| decoded.contains(needle.as_str()));
        (hit(&s.failing), hit(&s.forbidden))
    };
    if forbidden {
        let text = "pods is forbidden: User \"system:serviceaccount:spark-shuffle-agent:spark-shuffle-agent\" \
                    cannot list resource \"pods\" in API group \"\" at the cluster scope";
        return respond(&mut socket, 403, &status(403, "Forbidden", text)).await;
    }
    if failing {
        return respond(&mut socket, 500, &status(500, "InternalError", "simulated failure")).await;
    }
    let path = decoded.split('?').next().unwrap_or_default();
    if method == "GET" && (path.starts_with("/api/v1/persistentvolumes/") || path.contains("/persistentvolumeclaims/"))
    {
        let object = lock(&state).objects.get(path).cloned();
        return match object {
            Some(object) => respond(&mut socket, 200, &object).await,
            None => {
                let name = path.rsplit('/').next().unwrap_or_default();
                respond(&mut socket, 404, &status(404, "NotFound", &format!("\"{name}\" not found"))).await
            }
        };
    }
    let Some(query) = parse_target(target).filter(|_| method == "GET") else {
        return respond(&mut socket, 404, &status(404, "NotFound", "the simulated server only serves pods")).await;
    };
    let selectors = match Selectors::parse(query.get("labelSelector"), query.get("fieldSelector")) {
        Ok(s) => s,
        Err(msg) => return respond(&mut socket, 400, &status(400, "BadRequest", &msg)).await,
    };
    if query.get("watch") == Some("true") {
        watch(socket, &state, signals.subscribe(), &query, &selectors).await
    } else {
        let body = list(&state, &query, &selectors);
        respond(&mut socket, 200, &body).await
    }
}

fn in_scope(query: &Query, selectors: &Selectors, pod: &Value) -> bool {
    let ns_ok = query.namespace.as_deref().is_none_or(|ns| pod["metadata"]["namespace"].as_str() == Some(ns));
    ns_ok && selectors.matches(pod)
}

fn list(state: &Mutex<State>, query: &Query, selectors: &Selectors) -> Value {
    let state = lock(state);
    let matching: Vec<&Value> = state.pods.values().filter(|p| in_scope(query, selectors, p)).collect();
    let offset: usize = query.get("continue").and_then(|c| c.parse().ok()).unwrap_or(0);
    let limit: usize = query.get("limit").and_then(|l| l.parse().ok()).filter(|l| *l > 0).unwrap_or(usize::MAX);
    let page: Vec<Value> = matching.iter().skip(offset).take(limit).map(|p| (*p).clone()).collect();
    let next = offset.saturating_add(page.len());
    let mut metadata = json!({ "resourceVersion": state.rv.to_string() });
    if next < matching.len() {
        metadata["continue"] = json!(next.to_string());
    }
    json!({ "kind": "PodList", "apiVersion": "v1", "metadata": metadata, "items": page })
}

async fn watch(
    mut socket: TcpStream,
    state: &Mutex<State>,
    mut signals: broadcast::Receiver<Signal>,
    query: &Query,
    selectors: &Selectors,
) -> std::io::Result<()> {
    let bookmarks = query.get("allowWatchBookmarks") == Some("true");
    let timeout = query.get("timeoutSeconds").and_then(|t| t.parse().ok()).map(Duration::from_secs);
    let start: u64 = query.get("resourceVersion").and_then(|rv| rv.parse().ok()).unwrap_or(0);
    socket
        .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
        .await?;
    // Subscribed before reading the history, so nothing falls between the two; `sent` dedupes.
    let (backlog, gone) = {
        let s = lock(state);
        let gone = start != 0 && start < s.compacted;
        let backlog: Vec<(u64, &'static str, Value)> =
            s.history.iter().filter(|(rv, _, pod)| *rv > start && in_scope(query, selectors, pod)).cloned().collect();
        (backlog, gone)
    };
    if gone {
        let event =
            json!({ "type": "ERROR", "object": status(410, "Expired", &format!("too old resource version: {start}")) });
        write_chunk(&mut socket, &event).await?;
        return socket.write_all(b"0\r\n\r\n").await;
    }
    lock(state).open_watches += 1;
    let result =
        stream_events(&mut socket, state, &mut signals, query, selectors, backlog, start, bookmarks, timeout).await;
    lock(state).open_watches -= 1;
    result
}

#[allow(clippy::too_many_arguments)]
async fn stream_events(
    socket: &mut TcpStream,
    state: &Mutex<State>,
    signals: &mut broadcast::Receiver<Signal>,
    query: &Query,
    selectors: &Selectors,
    backlog: Vec<(u64, &'static str, Value)>,
    start: u64,
    bookmarks: bool,
    timeout: Option<Duration>,
) -> std::io::Result<()> {
    let mut sent = start;
    for (rv, kind, pod) in backlog {
        write_chunk(socket, &json!({ "type": kind, "object": pod })).await?;
        sent = rv;
    }
    let deadline = tokio::time::sleep(timeout.unwrap_or(Duration::from_secs(3600)));
    tokio::pin!(deadline);
    loop {
        let signal = tokio::select! {
            _ = &mut deadline => return socket.write_all(b"0\r\n\r\n").await,
            signal = signals.recv() => signal,
        };
        match signal {
            Ok(Signal::Event(rv)) if rv > sent => {
                let event = lock(state).history.iter().find(|(r, _, _)| *r == rv).cloned();
                if let Some((rv, kind, pod)) = event {
                    sent = rv;
                    if in_scope(query, selectors, &pod) {
                        write_chunk(socket, &json!({ "type": kind, "object": pod })).await?;
                    }
                }
            }
            Ok(Signal::Event(_)) => {}
            Ok(Signal::Bookmark(rv)) if bookmarks => {
                sent = sent.max(rv);
                let object =
                    json!({ "kind": "Pod", "apiVersion": "v1", "metadata": { "resourceVersion": rv.to_string() } });
                write_chunk(socket, &json!({ "type": "BOOKMARK", "object": object })).await?;
            }
            Ok(Signal::Bookmark(_)) => {}
            Ok(Signal::Expire) => {
                let event = json!({ "type": "ERROR", "object": status(410, "Expired", "The resourceVersion for the provided watch is too old.") });
                write_chunk(socket, &event).await?;
                return socket.write_all(b"0\r\n\r\n").await;
            }
            Ok(Signal::End) => return socket.write_all(b"0\r\n\r\n").await,
            // A cut connection: no final chunk, the socket just closes.
            Ok(Signal::Drop) | Err(_) => return Ok(()),
        }
    }
}
