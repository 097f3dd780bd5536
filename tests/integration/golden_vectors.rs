//! Replays the conversations captured between Spark 4.3.0's own client and its JVM external
//! shuffle service (`tests/vectors/*.txt`, NOTES.md) against the agent, and checks every reply.
//!
//! Each scenario gets a fresh copy of the files of layout.txt under a temp dir (standing in for
//! `/tmp/shuffle-vectors`) and a fresh agent whose only root is that dir; executors 0 and 1 are
//! registered first, as the captures assume. Then every client frame is sent in capture order
//! on its connection, and every server reply is compared *semantically*:
//!
//! * same transport message type and requestId;
//! * same decoded BlockTransferMessage, except stream ids: the agent's own ids are learnt from
//!   its StreamHandles and substituted into later requests and expected texts;
//! * chunk and stream bodies byte for byte (regenerated from layout.txt's rule where the
//!   capture logs only their first bytes);
//! * failure messages by the first line of their text (the rest is a Java stack trace), with
//!   `/tmp/shuffle-vectors` replaced by the temp dir;
//! * connections the server closed first must be closed by the agent too, without a reply.
//!
//! Where the agent differs from the JVM service on purpose, [`DEVIATIONS`] says how and why,
//! and the replay checks the agent's documented behaviour instead. Everything else must match.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::common::capture::{self, ClientFrame, ErrorTexts, Event, Reply};
use crate::common::client::first_line;
use crate::common::vector_layout::CAPTURE_ROOT;
use crate::common::{start_agent, wait_until, TestAgent, TestClient, VectorLayout, APP_ID};
use bytes::Bytes;
use spark_shuffle_agent::protocol::{BlockTransferMessage, Inbound, Message, StreamChunkId};

fn vectors_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

/// The text the agent sends for the deliberately missing `shuffle_3_0_0.data` (it opens the
/// data file before sending a header), in capture paths.
fn missing_data_text() -> String {
    format!("java.io.FileNotFoundException: {CAPTURE_ROOT}/ld1/2b/shuffle_3_0_0.data (No such file or directory)")
}

/// A known, deliberate difference between the agent and the JVM service.
struct Deviation {
    scenario: &'static str,
    jvm: &'static str,
    agent: &'static str,
    why: &'static str,
    expect: Expect,
}

/// How the replay of a deviating scenario checks the agent.
enum Expect {
    /// The capture's expectations, rewritten to the agent's documented behaviour.
    Rewritten(fn(&mut Vec<Event>)),
    /// Failure texts are compared by their exception class only.
    ClassOnly,
    /// Not replayed here; the named test covers it.
    Elsewhere(&'static str),
}

/// Every known difference from the JVM service, one row each. Any scenario not listed here must
/// match the capture exactly (in the sense of the module docs).
const DEVIATIONS: &[Deviation] = &[
    Deviation {
        scenario: "err_missing_data",
        jvm: "sends the ChunkFetchSuccess header, then closes the connection (lazyFD); the client retries",
        agent: "ChunkFetchFailure `java.io.FileNotFoundException: <data path> (No such file or directory)`, \
                connection kept",
        why: "the agent opens the data file before the header (spec §3.3 recommends it): a header it cannot \
              complete is never sent",
        expect: Expect::Rewritten(missing_data_as_chunk_failure),
    },
    Deviation {
        scenario: "err_missing_data_stream",
        jvm: "sends the StreamResponse header (byteCount 6), then closes the connection",
        agent: "StreamFailure `java.io.FileNotFoundException: <data path> (No such file or directory)`, \
                connection kept",
        why: "same as err_missing_data, on the stream path",
        expect: Expect::Rewritten(missing_data_as_stream_failure),
    },
    Deviation {
        scenario: "err_diagnose_unregistered",
        jvm:
            "RpcFailure `java.lang.NullPointerException: Cannot read field \"localDirs\" because \"executor\" is null`",
        agent: "RpcFailure `java.lang.RuntimeException: Executor is not registered (appId=..., execId=99)`",
        why: "the JVM text is an accident of a missing null check (NOTES D8); clients map any failure to \
              UNKNOWN_ISSUE, so only the text differs",
        expect: Expect::Rewritten(diagnose_unregistered_text),
    },
    Deviation {
        scenario: "probe_bad_rpcs",
        jvm: "type 4 (RegisterDriver) gets RpcFailure `java.lang.IllegalArgumentException: Unknown message type: 4`",
        agent: "RegisterDriver is accepted with an empty RpcResponse",
        why: "the 2.2 Kubernetes fork's executors send it on every app start; Spark 4 removed it (spec §13)",
        expect: Expect::Rewritten(register_driver_accepted),
    },
    Deviation {
        scenario: "err_reduce_out_of_range",
        jvm: "ChunkFetchFailure `java.lang.IndexOutOfBoundsException` (bare class; with a warm JIT `...: 5`)",
        agent: "ChunkFetchFailure `java.lang.IndexOutOfBoundsException`",
        why: "the JVM's message depends on its JIT state (NOTES D11); only the class name is stable",
        expect: Expect::ClassOnly,
    },
    Deviation {
        scenario: "idle_close",
        jvm: "closes idle connections after spark.shuffle.io.connectionTimeout (120 s), without a message",
        agent: "the same, after Settings::idle_timeout",
        why: "a timing capture (raw socket log, not a conversation); replaying it would take 2 minutes",
        expect: Expect::Elsewhere(
            "wire_protocol::an_idle_connection_is_closed_by_the_server and \
             wire_protocol::a_connection_idle_after_an_rpc_is_closed_by_the_server",
        ),
    },
];

fn deviation(scenario: &str) -> Option<&'static Deviation> {
    DEVIATIONS.iter().find(|d| d.scenario == scenario)
}

/// The scenarios replayed; with the [`Expect::Elsewhere`] rows, every vector file.
const SCENARIOS: &[&str] = &[
    "diagnose_disk",
    "diagnose_network",
    "diagnose_pass",
    "diagnose_pass_crc32",
    "diagnose_unknown",
    "diagnose_unsupported",
    "diagnose_unsupported_missing_index",
    "err_bad_block_id",
    "err_diagnose_missing_index",
    "err_diagnose_unregistered",
    "err_local_dirs_unregistered",
    "err_missing_data",
    "err_missing_data_stream",
    "err_missing_index",
    "err_mixed_ids",
    "err_open_blocks_long_mapid",
    "err_partial",
    "err_rdd_missing",
    "err_rdd_missing_stream",
    "err_reduce_out_of_range",
    "err_register_bad_dirs",
    "err_remove_path_ids",
    "err_remove_unregistered",
    "err_symlink_escape",
    "err_unregistered",
    "err_unregistered_open_blocks",
    "fetch_batch",
    "fetch_empty",
    "fetch_plain",
    "local_dirs",
    "open_blocks",
    "probe_bad_frame_type",
    "probe_bad_frame_zero",
    "probe_bad_rpcs",
    "probe_chunk_order",
    "probe_cross_connection",
    "probe_duplicate_local_dirs",
    "probe_empty_fsb",
    "probe_oneway",
    "rdd",
    "register",
    "register_custom_manager",
    "register_exec1",
    "remove_blocks",
    "stream_large",
    "stream_pipelined",
    "two_fetches_one_client",
];

// ---- deviation rewrites ------------------------------------------------------------------

/// The lazyFD close (an incomplete ChunkFetchSuccess, then the server's FIN) becomes a
/// ChunkFetchFailure for the same chunk; the agent then closes only after the client does.
fn missing_data_as_chunk_failure(events: &mut Vec<Event>) {
    for event in events.iter_mut() {
        if let Event::Reply { reply: reply @ Reply::Truncated { .. }, .. } = event {
            let Reply::Truncated { bytes } = reply else { unreachable!() };
            let chunk = StreamChunkId {
                stream_id: i64::from_be_bytes(bytes[9..17].try_into().expect("stream id")),
                chunk_index: i32::from_be_bytes(bytes[17..21].try_into().expect("chunk index")),
            };
            *reply = Reply::Message(Message::ChunkFetchFailure { chunk, error: missing_data_text() });
        }
    }
    server_closes_after_client(events);
}

/// The StreamResponse header and its truncated body become a StreamFailure.
fn missing_data_as_stream_failure(events: &mut Vec<Event>) {
    events.retain(|e| !matches!(e, Event::Reply { reply: Reply::StreamData { truncated: true, .. }, .. }));
    for event in events.iter_mut() {
        if let Event::Reply { reply: Reply::Message(msg @ Message::StreamResponse { .. }), .. } = event {
            let Message::StreamResponse { stream_id, .. } = msg else { unreachable!() };
            *msg = Message::StreamFailure { stream_id: stream_id.clone(), error: missing_data_text() };
        }
    }
    server_closes_after_client(events);
}

/// A server FIN that came before the client's moves after it: the agent keeps the connection.
fn server_closes_after_client(events: &mut Vec<Event>) {
    let mut i = 0;
    while i < events.len() {
        if let Event::ServerFin { conn } = &events[i] {
            let conn = conn.clone();
            let client_fin =
                events[i..].iter().position(|e| matches!(e, Event::ClientFin { conn: c } if *c == conn)).map(|p| p + i);
            if let Some(j) = client_fin {
                let fin = events.remove(i);
                events.insert(j, fin);
                continue;
            }
        }
        i += 1;
    }
}

#[allow(clippy::ptr_arg)] // every rewrite has the signature of Expect::Rewritten
fn diagnose_unregistered_text(events: &mut Vec<Event>) {
    for event in events.iter_mut() {
        if let Event::Reply { reply: Reply::Message(Message::RpcFailure { error, .. }), .. } = event {
            assert!(error.starts_with("java.lang.NullPointerException"), "{error}");
            *error = format!("java.lang.RuntimeException: Executor is not registered (appId={APP_ID}, execId=99)");
        }
    }
}

#[allow(clippy::ptr_arg)] // every rewrite has the signature of Expect::Rewritten
fn register_driver_accepted(events: &mut Vec<Event>) {
    for event in events.iter_mut() {
        if let Event::Reply { reply: Reply::Message(msg @ Message::RpcFailure { .. }), .. } = event {
            let Message::RpcFailure { request_id, error } = msg else { unreachable!() };
            if error.ends_with("Unknown message type: 4") {
                *msg = Message::RpcResponse { request_id: *request_id, body: Bytes::new() };
            }
        }
    }
}

// ---- the replay ------------------------------------------------------------------------

/// The bytes of a block named in a capture: `shuffle_S_M_R`, `shuffle_S_M_[A,B)`, `rdd_R_P`.
fn block_bytes(layout: &VectorLayout, name: &str, len: u64) -> Vec<u8> {
    let parts: Vec<&str> = name.split('_').collect();
    let num = |s: &str| -> i64 { s.parse().unwrap_or_else(|_| panic!("number in block name {name}")) };
    let bytes = match parts.as_slice() {
        ["rdd", r, p] => crate::common::rdd_bytes(num(r), num(p), len),
        ["shuffle", s, m, range] if range.starts_with('[') => {
            let (a, b) = range.trim_matches(|c| c == '[' || c == ')').split_once(',').expect("[a,b)");
            layout.map(num(s) as i32, num(m)).range(num(a) as usize, num(b) as usize)
        }
        ["shuffle", s, m, r] => crate::common::partition_bytes(num(s), num(m), num(r), len),
        _ => panic!("unknown block name {name}"),
    };
    assert_eq!(bytes.len() as u64, len, "{name}");
    bytes
}

/// What the replay learnt and needs: the agent's stream ids for the captured ones.
struct Replay<'a> {
    layout: &'a VectorLayout,
    class_only: bool,
    stream_ids: HashMap<i64, i64>,
}

impl Replay<'_> {
    fn stream_id(&self, captured: i64) -> i64 {
        self.stream_ids.get(&captured).copied().unwrap_or(captured)
    }

    /// `"<streamId>_<chunk>"` with the agent's stream id.
    fn stream_name(&self, captured: &str) -> String {
        match captured.split_once('_').and_then(|(id, rest)| Some((id.parse::<i64>().ok()?, rest))) {
            Some((id, rest)) => format!("{}_{rest}", self.stream_id(id)),
            None => captured.to_string(),
        }
    }

    /// An expected text in the agent's terms: its root, its stream ids.
    fn text(&self, captured: &str) -> String {
        let mut text = self.layout.relocate(captured);
        for (captured, ours) in &self.stream_ids {
            text = text.replace(&captured.to_string(), &ours.to_string());
        }
        text
    }

    /// A captured client message in the agent's terms.
    fn outbound(&self, msg: Message) -> Message {
        match msg {
            Message::RpcRequest { request_id, body } => {
                let body = match BlockTransferMessage::decode(&body) {
                    Ok(BlockTransferMessage::RegisterExecutor { app_id, exec_id, mut info }) => {
                        info.local_dirs = info.local_dirs.iter().map(|d| self.layout.relocate(d)).collect();
                        BlockTransferMessage::RegisterExecutor { app_id, exec_id, info }.encode()
                    }
                    _ => body,
                };
                Message::RpcRequest { request_id, body }
            }
            Message::ChunkFetchRequest(c) => {
                Message::ChunkFetchRequest(StreamChunkId { stream_id: self.stream_id(c.stream_id), ..c })
            }
            Message::StreamRequest { stream_id } => Message::StreamRequest { stream_id: self.stream_name(&stream_id) },
            other => other,
        }
    }

    fn same_first_line(&self, expected: &str, got: &str) -> Result<(), String> {
        let (want, got_line) = (self.text(expected), first_line(got).to_string());
        let ok = if self.class_only { class_of(&want) == class_of(&got_line) } else { want == got_line };
        ok.then_some(()).ok_or_else(|| format!("error text differs:\n  capture: {want}\n  agent:   {got_line}"))
    }

    /// Compares one reply; learns stream ids from StreamHandles.
    fn check(&mut self, expected: &Message, got: &Message) -> Result<(), String> {
        if expected.type_id() != got.type_id() {
            return Err(format!("message type differs:\n  capture: {expected:?}\n  agent:   {got:?}"));
        }
        match (expected, got) {
            (Message::RpcResponse { request_id: a, body: want }, Message::RpcResponse { request_id: b, body }) => {
                same("requestId", a, b)?;
                self.same_rpc_body(want, body)
            }
            (Message::RpcFailure { request_id: a, error: want }, Message::RpcFailure { request_id: b, error }) => {
                same("requestId", a, b)?;
                self.same_first_line(want, error)
            }
            (Message::ChunkFetchSuccess { chunk: a, body: want }, Message::ChunkFetchSuccess { chunk: b, body }) => {
                same("chunk", &self.chunk(a), b)?;
                same("chunk body", want, body)
            }
            (Message::ChunkFetchFailure { chunk: a, error: want }, Message::ChunkFetchFailure { chunk: b, error }) => {
                same("chunk", &self.chunk(a), b)?;
                self.same_first_line(want, error)
            }
            (
                Message::StreamResponse { stream_id: a, byte_count: x },
                Message::StreamResponse { stream_id: b, byte_count: y },
            ) => {
                same("stream id", &self.stream_name(a), b)?;
                same("byteCount", x, y)
            }
            (Message::StreamFailure { stream_id: a, error: want }, Message::StreamFailure { stream_id: b, error }) => {
                same("stream id", &self.stream_name(a), b)?;
                self.same_first_line(want, error)
            }
            _ => same("message", expected, got),
        }
    }

    fn chunk(&self, c: &StreamChunkId) -> StreamChunkId {
        StreamChunkId { stream_id: self.stream_id(c.stream_id), ..*c }
    }

    fn same_rpc_body(&mut self, want: &Bytes, got: &Bytes) -> Result<(), String> {
        if want.is_empty() || got.is_empty() {
            return same("RpcResponse body", want, got);
        }
        let want = BlockTransferMessage::decode(want).map_err(|e| format!("capture body: {e}"))?;
        let got = BlockTransferMessage::decode(got).map_err(|e| format!("agent body: {e}"))?;
        match (want, got) {
            (
                BlockTransferMessage::StreamHandle { stream_id: captured, num_chunks: a },
                BlockTransferMessage::StreamHandle { stream_id: ours, num_chunks: b },
            ) => {
                same("numChunks", &a, &b)?;
                if ours < 0 || self.stream_ids.values().any(|&v| v == ours) {
                    return Err(format!("stream id {ours} is negative or was handed out before"));
                }
                self.stream_ids.insert(captured, ours);
                Ok(())
            }
            (BlockTransferMessage::LocalDirsForExecutors { exec_ids, num_local_dirs_by_exec, all_local_dirs }, got) => {
                let all_local_dirs = all_local_dirs.iter().map(|d| self.layout.relocate(d)).collect();
                let want =
                    BlockTransferMessage::LocalDirsForExecutors { exec_ids, num_local_dirs_by_exec, all_local_dirs };
                same("LocalDirsForExecutors", &want, &got)
            }
            (want, got) => same("reply", &want, &got),
        }
    }
}

fn same<T: PartialEq + std::fmt::Debug>(what: &str, want: &T, got: &T) -> Result<(), String> {
    if want == got {
        Ok(())
    } else {
        Err(format!("{what} differs:\n  capture: {want:?}\n  agent:   {got:?}"))
    }
}

/// `java.lang.Foo` of `java.lang.Foo: message`.
fn class_of(line: &str) -> &str {
    line.split(':').next().unwrap_or(line)
}

async fn register_executors(agent: &TestAgent, layout: &VectorLayout) {
    let mut c = agent.connect().await;
    for (files, exec) in [(&layout.exec0, "0"), (&layout.exec1, "1")] {
        assert_eq!(c.rpc_msg(&files.register(APP_ID, exec)).await, Ok(None), "register exec {exec}");
    }
    c.shutdown_write().await;
    c.expect_closed_silently().await;
}

/// Replays one scenario; returns a description of the first difference.
async fn replay(scenario: &str) {
    let layout = VectorLayout::new();
    let agent = start_agent(&layout.roots()).await;
    register_executors(&agent, &layout).await;

    let mut errors = ErrorTexts::load(&vectors_dir().join("errors_full.txt"));
    let mut events =
        capture::load(&vectors_dir(), scenario, &mut errors, &|name, len| block_bytes(&layout, name, len)).events;
    let dev = deviation(scenario);
    if let Some(Deviation { expect: Expect::Rewritten(rewrite), .. }) = dev {
        rewrite(&mut events);
    }
    let mut replay = Replay {
        layout: &layout,
        class_only: matches!(dev, Some(Deviation { expect: Expect::ClassOnly, .. })),
        stream_ids: HashMap::new(),
    };
    let mut conns: HashMap<String, TestClient> = HashMap::new();
    for (step, event) in events.into_iter().enumerate() {
        let at = |conn: &str| format!("{scenario}, step {step} on {conn}");
        match event {
            Event::Open { conn } => {
                conns.insert(conn, agent.connect().await);
            }
            Event::Send { conn, frame } => {
                let client = conns.get_mut(&conn).expect("open connection");
                match frame {
                    ClientFrame::Raw(bytes) => client.send_raw(&bytes).await,
                    ClientFrame::Message(msg) => client.send(&replay.outbound(msg)).await,
                }
            }
            Event::Reply { conn, reply } => {
                let client = conns.get_mut(&conn).expect("open connection");
                match reply {
                    Reply::Message(expected) => {
                        let got = match client.recv().await {
                            Ok(Inbound::Message(m)) => m,
                            other => panic!("{}: expected {expected:?}, got {other:?}", at(&conn)),
                        };
                        if let Err(diff) = replay.check(&expected, &got) {
                            panic!("{}: {diff}", at(&conn));
                        }
                    }
                    Reply::StreamData { bytes, truncated: false } => {
                        let mut got = Vec::new();
                        while got.len() < bytes.len() {
                            match client.recv().await {
                                Ok(Inbound::Body(piece)) => got.extend_from_slice(&piece),
                                other => panic!("{}: expected stream data, got {other:?}", at(&conn)),
                            }
                        }
                        assert!(got == bytes, "{}: stream data differs", at(&conn));
                    }
                    other => {
                        panic!("{}: the capture's {other:?} is not the agent's behaviour; add a deviation", at(&conn))
                    }
                }
            }
            Event::ClientFin { conn } => {
                // The server may have closed first (bad frames): its FIN was already checked.
                if let Some(client) = conns.get_mut(&conn) {
                    client.shutdown_write().await;
                }
            }
            Event::ServerFin { conn } => {
                let mut client = conns.remove(&conn).expect("open connection");
                let rest =
                    client.recv_until_closed().await.unwrap_or_else(|e| panic!("{}: not closed: {e:?}", at(&conn)));
                assert!(rest.is_empty(), "{}: {} unexpected bytes before the close", at(&conn), rest.len());
                // The agent releases a connection's streams once its task ends; later steps may
                // depend on that (probe_cross_connection), so wait for it.
                let open = conns.len() as u64;
                wait_until("closed connections are released", || agent.counter(|c| &c.connections_active) <= open)
                    .await;
            }
        }
    }
    agent.stop().await;
}

macro_rules! scenarios {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test]
                async fn replays_like_the_jvm_service() {
                    super::replay(stringify!($name)).await;
                }
            }
        )*
        /// The scenarios the macro turned into tests, to check against [`SCENARIOS`].
        const REPLAYED: &[&str] = &[$(stringify!($name)),*];
    };
}

scenarios!(
    diagnose_disk,
    diagnose_network,
    diagnose_pass,
    diagnose_pass_crc32,
    diagnose_unknown,
    diagnose_unsupported,
    diagnose_unsupported_missing_index,
    err_bad_block_id,
    err_diagnose_missing_index,
    err_diagnose_unregistered,
    err_local_dirs_unregistered,
    err_missing_data,
    err_missing_data_stream,
    err_missing_index,
    err_mixed_ids,
    err_open_blocks_long_mapid,
    err_partial,
    err_rdd_missing,
    err_rdd_missing_stream,
    err_reduce_out_of_range,
    err_register_bad_dirs,
    err_remove_path_ids,
    err_remove_unregistered,
    err_symlink_escape,
    err_unregistered,
    err_unregistered_open_blocks,
    fetch_batch,
    fetch_empty,
    fetch_plain,
    local_dirs,
    open_blocks,
    probe_bad_frame_type,
    probe_bad_frame_zero,
    probe_bad_rpcs,
    probe_chunk_order,
    probe_cross_connection,
    probe_duplicate_local_dirs,
    probe_empty_fsb,
    probe_oneway,
    rdd,
    register,
    register_custom_manager,
    register_exec1,
    remove_blocks,
    stream_large,
    stream_pipelined,
    two_fetches_one_client,
);

#[test]
fn every_vector_file_is_replayed_or_listed_as_a_deviation() {
    let mut files: Vec<String> = std::fs::read_dir(vectors_dir())
        .expect("tests/vectors")
        .map(|e| e.expect("dir entry").file_name().to_string_lossy().into_owned())
        .filter_map(|n| n.strip_suffix(".txt").map(str::to_string))
        .filter(|n| n != "layout" && n != "errors_full")
        .collect();
    files.sort();
    let mut covered: Vec<String> = SCENARIOS.iter().map(|s| s.to_string()).collect();
    covered
        .extend(DEVIATIONS.iter().filter(|d| matches!(d.expect, Expect::Elsewhere(_))).map(|d| d.scenario.to_string()));
    covered.sort();
    assert_eq!(files, covered);
    assert_eq!(REPLAYED, SCENARIOS, "the scenarios! list and SCENARIOS differ");
    for d in DEVIATIONS {
        assert!(files.iter().any(|f| f == d.scenario), "deviation for unknown scenario {}", d.scenario);
        assert!(!d.jvm.is_empty() && !d.agent.is_empty() && !d.why.is_empty(), "{}: undocumented", d.scenario);
        if let Expect::Elsewhere(test) = d.expect {
            assert!(test.contains("::"), "{}: name the test that covers it", d.scenario);
        }
    }
}

/// Every file line of layout.txt (`<path> (<n> bytes) [offsets=[..] | values=[..]]`, symlinks,
/// victims, NOT WRITTEN) against what [`VectorLayout`] wrote: this pins the path hashing, the
/// index and checksum formats and the checksum algorithms to the capture's own generator.
#[test]
fn the_written_files_match_layout_txt() {
    let layout = VectorLayout::new();
    let text = std::fs::read_to_string(vectors_dir().join("layout.txt")).expect("layout.txt");
    let mut checked = 0;
    // The "symlink escape:" line only introduces the two symlink lines after it.
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.starts_with("symlink escape:")) {
        let Some(start) = line.find(CAPTURE_ROOT) else { continue };
        let spec = &line[start..];
        let path_end = spec.find(' ').unwrap_or(spec.len());
        let path = PathBuf::from(layout.relocate(&spec[..path_end]));
        let rest = &spec[path_end..];
        if rest.contains("NOT WRITTEN") {
            assert!(!path.exists(), "{} should be missing", path.display());
            let name = path.file_name().unwrap().to_str().unwrap();
            assert_eq!(layout.exec0.path(name), path, "hashed path of {name}");
        } else if let Some(target) = rest.trim_start().strip_prefix("-> ") {
            let target = PathBuf::from(layout.relocate(target.trim()));
            assert_eq!(std::fs::read_link(&path).expect("a symlink"), target);
        } else {
            let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let size: usize = between(rest, "(", " bytes)").parse().expect("size");
            assert_eq!(bytes.len(), size, "{}", path.display());
            for key in ["offsets=[", "values=["] {
                if let Some(i) = rest.find(key) {
                    let longs: Vec<i64> =
                        bytes.chunks(8).map(|c| i64::from_be_bytes(c.try_into().expect("8-byte longs"))).collect();
                    let list = between(&rest[i..], "[", "]");
                    let want: Vec<i64> = list.split(", ").map(|v| v.parse().expect("number")).collect();
                    assert_eq!(longs, want, "{}", path.display());
                }
            }
        }
        checked += 1;
    }
    assert_eq!(checked, 22, "file lines checked in layout.txt");
    // Every map output's data is the generator's bytes at the offsets its index names.
    for output in layout.maps.values().filter(|m| m.data.exists()) {
        assert_eq!(std::fs::read(&output.data).unwrap(), output.range(0, output.partitions.len()));
    }
}

fn between<'a>(text: &'a str, open: &str, close: &str) -> &'a str {
    let start = text.find(open).expect("opening delimiter") + open.len();
    let end = start + text[start..].find(close).expect("closing delimiter");
    &text[start..end]
}
