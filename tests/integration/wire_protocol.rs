//! The agent on the wire: every request Spark's client (and Spark's own probes) send to the
//! external shuffle service, and every error path of vectors/NOTES.md §5, each checked with the
//! exact first line the JVM service sends. The fixture is the file set of vectors/layout.txt
//! (written under a temp dir), so what is fetched here is what the captures fetched.
//!
//! Tests marked `AGENT BUG` fail because of a defect in the agent, not in the test; each says
//! what Spark does and where that is documented.

use std::path::PathBuf;
use std::time::Duration;

use crate::common::client::first_line;
use crate::common::{
    start_agent, start_agent_with, test_config, wait_until, ChecksumKind, TestAgent, TestClient, VectorLayout, APP_ID,
};
use bytes::{BufMut, Bytes, BytesMut};
use spark_shuffle_agent::config::Config;
use spark_shuffle_agent::protocol::{
    BlockTransferMessage as M, ExecutorShuffleInfo, FrameCodec, Inbound, Message, StreamChunkId,
};
use tokio_util::codec::Decoder;

// ---- fixture -----------------------------------------------------------------------------

/// The vector layout, an agent rooted at it, and a client that registered executors 0 and 1.
async fn setup() -> (VectorLayout, TestAgent, TestClient) {
    setup_with(test_config()).await
}

async fn setup_with(settings: Config) -> (VectorLayout, TestAgent, TestClient) {
    let layout = VectorLayout::new();
    let agent = start_agent_with(&layout.roots(), settings).await;
    let client = registered_client(&agent, &layout).await;
    (layout, agent, client)
}

async fn registered_client(agent: &TestAgent, layout: &VectorLayout) -> TestClient {
    let mut client = agent.connect().await;
    for (files, exec) in [(&layout.exec0, "0"), (&layout.exec1, "1")] {
        assert_eq!(client.rpc_msg(&files.register(APP_ID, exec)).await, Ok(None), "register exec {exec}");
    }
    client
}

fn fetch(exec: &str, shuffle_id: i32, map_ids: &[i64], reduce_ids: &[&[i32]], batch: bool) -> M {
    M::FetchShuffleBlocks {
        app_id: APP_ID.into(),
        exec_id: exec.into(),
        shuffle_id,
        map_ids: map_ids.to_vec(),
        reduce_ids: reduce_ids.iter().map(|r| r.to_vec()).collect(),
        batch_fetch_enabled: batch,
    }
}

fn open_blocks(exec: &str, ids: &[&str]) -> M {
    M::OpenBlocks {
        app_id: APP_ID.into(),
        exec_id: exec.into(),
        block_ids: ids.iter().map(|s| s.to_string()).collect(),
    }
}

fn local_dirs(exec_ids: &[&str]) -> M {
    M::GetLocalDirsForExecutors { app_id: APP_ID.into(), exec_ids: exec_ids.iter().map(|s| s.to_string()).collect() }
}

fn diagnose(exec: &str, map_id: i64, reduce_id: i32, checksum: i64, algorithm: &str) -> M {
    M::DiagnoseCorruption {
        app_id: APP_ID.into(),
        exec_id: exec.into(),
        shuffle_id: 0,
        map_id,
        reduce_id,
        checksum,
        algorithm: algorithm.into(),
    }
}

fn not_registered(exec: &str) -> String {
    format!("java.lang.RuntimeException: Executor is not registered (appId={APP_ID}, execId={exec})")
}

fn cannot_merge() -> &'static str {
    "java.lang.UnsupportedOperationException: Cannot handle shuffle block merge"
}

/// The failure text of a call that must fail.
fn failure<T: std::fmt::Debug>(result: Result<T, String>) -> String {
    match result {
        Err(text) => text,
        Ok(v) => panic!("expected a failure, got {v:?}"),
    }
}

/// Fetches all chunks of a stream one request at a time.
async fn all_chunks(client: &mut TestClient, stream_id: i64, num_chunks: i32) -> Vec<Bytes> {
    let mut out = Vec::new();
    for i in 0..num_chunks {
        out.push(client.chunk(stream_id, i).await.unwrap_or_else(|e| panic!("chunk {i}: {e}")));
    }
    out
}

/// Proves a connection still works: a fetch of shuffle_0_0_0 on it succeeds.
async fn still_serves(client: &mut TestClient, layout: &VectorLayout) {
    let (id, _) = client.open_stream(&fetch("0", 0, &[0], &[&[0]], false)).await.expect("StreamHandle");
    assert_eq!(client.chunk(id, 0).await.expect("chunk"), layout.map(0, 0).partitions[0]);
}

// ---- registration ------------------------------------------------------------------------

#[tokio::test]
async fn registering_an_executor_answers_an_empty_rpc_response() {
    let layout = VectorLayout::new();
    let agent = start_agent(&layout.roots()).await;
    let mut client = agent.connect().await;
    let request_id = 0x5789855aef5165a4;
    client.send(&Message::RpcRequest { request_id, body: layout.exec0.register(APP_ID, "0").encode() }).await;
    // register.txt: `0000000000000015 04 <requestId> 00000000`, nothing else.
    let mut want = vec![0, 0, 0, 0, 0, 0, 0, 0x15, 4];
    want.extend_from_slice(&request_id.to_be_bytes());
    want.extend_from_slice(&[0, 0, 0, 0]);
    assert_eq!(client.recv_raw(21).await.expect("reply"), want);
    assert!(agent.shared.registry.executor(APP_ID, "0").is_some());
}

#[tokio::test]
async fn registering_an_executor_again_replaces_its_dirs() {
    let (layout, _agent, mut client) = setup().await;
    assert_eq!(client.rpc_msg(&layout.exec1.register(APP_ID, "0")).await, Ok(None));
    let reply = client.rpc_msg(&local_dirs(&["0"])).await.expect("local dirs");
    let Some(M::LocalDirsForExecutors { all_local_dirs, .. }) = reply else { panic!("{reply:?}") };
    assert_eq!(all_local_dirs, layout.exec1.local_dirs);
}

#[tokio::test]
async fn any_shuffle_manager_string_is_accepted() {
    let (layout, _agent, mut client) = setup().await;
    let M::RegisterExecutor { app_id, info, .. } = layout.exec1.register(APP_ID, "3") else { unreachable!() };
    let info = ExecutorShuffleInfo {
        shuffle_manager: r#"com.example.MyShuffleManager:{"mergeDir":"merge_manager_1","attemptId":"1"}}}"#.into(),
        ..info
    };
    let msg = M::RegisterExecutor { app_id, exec_id: "3".into(), info };
    assert_eq!(client.rpc_msg(&msg).await, Ok(None));
}

#[tokio::test]
async fn registering_dirs_outside_the_roots_or_an_empty_dir_is_refused() {
    let (layout, agent, mut client) = setup().await;
    let elsewhere = tempfile::tempdir().expect("tempdir outside the root");
    let link = layout.root.join("escape");
    std::os::unix::fs::symlink(elsewhere.path(), &link).expect("symlink");
    let dot_dot = format!("{}/../etc/vec", layout.root_str());
    let cases = [
        (
            "/var/tmp/vec-not-allowed".to_string(),
            "localDirs entry is not under any of the service's local directories: /var/tmp/vec-not-allowed".to_string(),
        ),
        (dot_dot.clone(), format!("localDirs entry is not under any of the service's local directories: {dot_dot}")),
        (
            link.to_str().unwrap().to_string(),
            format!("localDirs entry is not under any of the service's local directories: {}", link.display()),
        ),
        (String::new(), "localDirs entries must be non-null and non-empty".to_string()),
    ];
    for (dir, text) in cases {
        let msg = M::RegisterExecutor {
            app_id: APP_ID.into(),
            exec_id: "2".into(),
            info: ExecutorShuffleInfo {
                local_dirs: vec![dir.clone()],
                sub_dirs_per_local_dir: 64,
                shuffle_manager: crate::common::shuffle_files::SORT_SHUFFLE_MANAGER.into(),
            },
        };
        let error = failure(client.rpc_msg(&msg).await);
        assert_eq!(first_line(&error), format!("java.lang.IllegalArgumentException: {text}"), "dir {dir:?}");
    }
    assert!(agent.shared.registry.executor(APP_ID, "2").is_none());
    still_serves(&mut client, &layout).await;
}

// ---- fetching ----------------------------------------------------------------------------

#[tokio::test]
async fn a_plain_fetch_serves_blocks_in_request_order_even_with_a_map_id_above_int_range() {
    let (layout, agent, mut client) = setup().await;
    // fetch_plain.txt: ids [0_0_0, 0_1_3, 0_0_2, 0_4294967301_1], grouped by map in first-seen order.
    let msg = fetch("0", 0, &[0, 1, 4294967301], &[&[0, 2], &[3], &[1]], false);
    let (id, n) = client.open_stream(&msg).await.expect("StreamHandle");
    assert!(id >= 0);
    assert_eq!(n, 4);
    let chunks: Vec<StreamChunkId> = (0..4).map(|i| StreamChunkId { stream_id: id, chunk_index: i }).collect();
    let requests: Vec<Message> = chunks.iter().map(|c| Message::ChunkFetchRequest(*c)).collect();
    client.send_all(&requests).await;
    let want = [
        layout.map(0, 0).partitions[0].clone(),
        layout.map(0, 0).partitions[2].clone(),
        layout.map(0, 1).partitions[3].clone(),
        layout.map(0, 4294967301).partitions[1].clone(),
    ];
    for (chunk, want) in chunks.iter().zip(want) {
        assert_eq!(client.recv_chunk_reply(*chunk).await.expect("chunk"), want, "{chunk}");
    }
    assert_eq!(agent.counter(|c| &c.chunks_served), 4);
    assert_eq!(agent.counter(|c| &c.chunk_bytes_served), 13 + 29 + 100 + 9);
    // The stream is gone after its last chunk (NOTES D3).
    assert_eq!(failure(client.chunk(id, 4).await), "java.lang.IllegalArgumentException: Unknown stream ID.");
}

#[tokio::test]
async fn a_batch_fetch_serves_each_map_as_one_contiguous_range() {
    let (layout, agent, mut client) = setup().await;
    // fetch_batch.txt: shuffle_0_0_0_3 and shuffle_0_1_1_4.
    let (id, n) = client.open_stream(&fetch("0", 0, &[0, 1], &[&[0, 3], &[1, 4]], true)).await.expect("handle");
    assert_eq!(n, 2);
    let got = all_chunks(&mut client, id, n).await;
    assert_eq!(got[0], layout.map(0, 0).range(0, 3));
    assert_eq!(got[1], layout.map(0, 1).range(1, 4));
    assert_eq!((got[0].len(), got[1].len()), (42, 181));
    assert_eq!(agent.counter(|c| &c.blocks_served), 6);
}

#[tokio::test]
async fn an_empty_partition_is_a_chunk_fetch_success_with_frame_length_21() {
    let (_layout, _agent, mut client) = setup().await;
    let (id, _) = client.open_stream(&fetch("0", 0, &[0], &[&[1]], false)).await.expect("handle");
    client.send(&Message::ChunkFetchRequest(StreamChunkId { stream_id: id, chunk_index: 0 })).await;
    // fetch_empty.txt: `0000000000000015 01 <streamId> 00000000`, no body.
    let mut want = vec![0, 0, 0, 0, 0, 0, 0, 0x15, 1];
    want.extend_from_slice(&id.to_be_bytes());
    want.extend_from_slice(&[0, 0, 0, 0]);
    assert_eq!(client.recv_raw(21).await.expect("reply"), want);
}

#[tokio::test]
async fn open_blocks_serves_shuffle_blocks_in_the_order_asked() {
    let (layout, _agent, mut client) = setup().await;
    // open_blocks.txt: the old protocol, int map ids.
    let (id, n) = client
        .open_stream(&open_blocks("0", &["shuffle_0_0_2", "shuffle_0_1_0", "shuffle_0_0_0"]))
        .await
        .expect("handle");
    assert_eq!(n, 3);
    let got = all_chunks(&mut client, id, n).await;
    let want = [&layout.map(0, 0).partitions[2], &layout.map(0, 1).partitions[0], &layout.map(0, 0).partitions[0]];
    for (got, want) in got.iter().zip(want) {
        assert_eq!(got, want);
    }
}

#[tokio::test]
async fn open_blocks_serves_rdd_blocks_as_whole_files() {
    let (_layout, _agent, mut client) = setup().await;
    let (id, n) = client.open_stream(&open_blocks("0", &["rdd_1_0", "rdd_1_1"])).await.expect("handle");
    let got = all_chunks(&mut client, id, n).await;
    assert_eq!(got[0], crate::common::rdd_bytes(1, 0, 200));
    assert_eq!(got[1], crate::common::rdd_bytes(1, 1, 16));
}

#[tokio::test]
async fn stream_requests_carry_blocks_outside_the_frame_including_an_empty_one() {
    let (layout, _agent, mut client) = setup().await;
    // stream_large.txt: 3000, 0 and 100 bytes, requested as "<streamId>_<chunk>".
    let (id, n) = client.open_stream(&fetch("0", 1, &[0], &[&[0, 1, 2]], false)).await.expect("handle");
    assert_eq!(n, 3);
    for (i, want) in layout.map(1, 0).partitions.iter().enumerate() {
        let got = client.stream_request(&format!("{id}_{i}")).await.unwrap_or_else(|e| panic!("stream {i}: {e}"));
        assert_eq!(&got[..], &want[..], "stream {i}");
    }
}

#[tokio::test]
async fn a_zero_byte_stream_is_a_bare_stream_response_frame() {
    let (layout, _agent, mut client) = setup().await;
    let (id, _) = client.open_stream(&fetch("0", 1, &[0], &[&[1]], false)).await.expect("handle");
    let name = format!("{id}_0");
    client.send(&Message::StreamRequest { stream_id: name.clone() }).await;
    let mut want = BytesMut::new();
    want.put_u64((8 + 1 + 4 + name.len() + 8) as u64);
    want.put_u8(7);
    want.put_u32(name.len() as u32);
    want.put_slice(name.as_bytes());
    want.put_i64(0);
    assert_eq!(client.recv_raw(want.len()).await.expect("reply"), want.to_vec());
    // Nothing follows: the next reply is the answer to the next request.
    still_serves(&mut client, &layout).await;
}

#[tokio::test]
async fn pipelined_requests_of_every_kind_are_answered_in_arrival_order() {
    let (layout, _agent, mut client) = setup().await;
    let (a, _) = client.open_stream(&fetch("0", 0, &[1], &[&[0, 1, 2, 3]], false)).await.expect("handle");
    let chunk = |i| StreamChunkId { stream_id: a, chunk_index: i };
    let rpc_id = client.request_id();
    client
        .send_all(&[
            Message::ChunkFetchRequest(chunk(0)),
            Message::RpcRequest { request_id: rpc_id, body: local_dirs(&["1"]).encode() },
            Message::StreamRequest { stream_id: format!("{a}_1") },
            Message::ChunkFetchRequest(chunk(2)),
            Message::StreamRequest { stream_id: format!("{a}_3") },
        ])
        .await;
    let parts = &layout.map(0, 1).partitions;
    assert_eq!(client.recv_chunk_reply(chunk(0)).await.expect("chunk 0"), parts[0]);
    match client.recv_message().await {
        Message::RpcResponse { request_id, .. } => assert_eq!(request_id, rpc_id),
        other => panic!("expected the RPC reply second, got {other:?}"),
    }
    let mut body = Vec::new();
    client.recv_stream_reply(&format!("{a}_1"), |p| body.extend_from_slice(p)).await.expect("stream 1");
    assert_eq!(body, parts[1]);
    assert_eq!(client.recv_chunk_reply(chunk(2)).await.expect("chunk 2"), parts[2]);
    body.clear();
    client.recv_stream_reply(&format!("{a}_3"), |p| body.extend_from_slice(p)).await.expect("stream 3");
    assert_eq!(body, parts[3]);
}

#[tokio::test]
async fn hundreds_of_pipelined_chunks_mixing_copied_and_sendfile_bodies_arrive_in_order() {
    // Bodies of 50 bytes or more go out with sendfile, smaller ones are copied next to their
    // headers: both kinds interleave, and the outbox flushes many times on the way.
    let settings = Config { sendfile_min_bytes: 50, ..test_config() };
    let (layout, agent, mut client) = setup_with(settings).await;
    let reduces: Vec<i32> = (0..300).map(|i| i % 4).collect();
    let (id, n) = client.open_stream(&fetch("0", 0, &[1], &[&reduces], false)).await.expect("handle");
    assert_eq!(n, 300);
    let requests: Vec<Message> =
        (0..n).map(|i| Message::ChunkFetchRequest(StreamChunkId { stream_id: id, chunk_index: i })).collect();
    client.send_all(&requests).await;
    for (i, r) in reduces.iter().enumerate() {
        let chunk = StreamChunkId { stream_id: id, chunk_index: i as i32 };
        let got = client.recv_chunk_reply(chunk).await.unwrap_or_else(|e| panic!("{chunk}: {e}"));
        assert_eq!(got, layout.map(0, 1).partitions[*r as usize], "{chunk}");
    }
    assert_eq!(agent.counter(|c| &c.chunks_served), 300);
}

#[tokio::test]
async fn two_connections_get_distinct_non_negative_stream_ids() {
    let (layout, agent, mut a) = setup().await;
    let mut b = registered_client(&agent, &layout).await;
    let msg = fetch("0", 0, &[0], &[&[0]], false);
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(a.open_stream(&msg).await.expect("a").0);
        ids.push(b.open_stream(&msg).await.expect("b").0);
    }
    assert!(ids.iter().all(|&id| id >= 0), "{ids:?}");
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "{ids:?}");
}

// ---- GetLocalDirsForExecutors ------------------------------------------------------------

#[tokio::test]
async fn get_local_dirs_lists_each_executors_dirs_in_request_order() {
    let (layout, _agent, mut client) = setup().await;
    let reply = client.rpc_msg(&local_dirs(&["1", "0"])).await.expect("reply");
    let want = M::LocalDirsForExecutors {
        exec_ids: vec!["1".into(), "0".into()],
        num_local_dirs_by_exec: vec![1, 2],
        all_local_dirs: [layout.exec1.local_dirs.clone(), layout.exec0.local_dirs.clone()].concat(),
    };
    assert_eq!(reply, Some(want));
}

#[tokio::test]
async fn get_local_dirs_with_a_duplicate_exec_id_fails() {
    let (_layout, _agent, mut client) = setup().await;
    let error = failure(client.rpc_msg(&local_dirs(&["0", "0"])).await);
    assert_eq!(first_line(&error), "java.lang.IllegalArgumentException: duplicate element: 0");
}

#[tokio::test]
async fn get_local_dirs_with_an_unregistered_executor_fails_the_whole_rpc() {
    let (layout, _agent, mut client) = setup().await;
    let error = failure(client.rpc_msg(&local_dirs(&["0", "99"])).await);
    assert_eq!(first_line(&error), not_registered("99"));
    still_serves(&mut client, &layout).await;
}

#[tokio::test]
async fn get_local_dirs_for_the_shuffle_push_merger_fails_like_the_standalone_service() {
    let (_layout, _agent, mut client) = setup().await;
    let error = failure(client.rpc_msg(&local_dirs(&["0", "shuffle-push-merger"])).await);
    assert_eq!(first_line(&error), cannot_merge());
}

// ---- RemoveBlocks ------------------------------------------------------------------------

#[tokio::test]
async fn remove_blocks_deletes_the_files_and_counts_only_real_deletions() {
    let (layout, _agent, mut client) = setup().await;
    // Served once first, so the index is cached: removal must forget it.
    still_serves(&mut client, &layout).await;
    let (id, _) = client.open_stream(&fetch("0", 2, &[0], &[&[0]], false)).await.expect("handle");
    assert_eq!(client.chunk(id, 0).await.expect("shuffle_2_0_0"), layout.map(2, 0).partitions[0]);

    let ids = ["shuffle_2_0_0.data", "shuffle_2_0_0.index", "rdd_1_1", "rdd_1_99"];
    let paths: Vec<PathBuf> = ids.iter().map(|id| layout.exec0.path(id)).collect();
    let msg = M::RemoveBlocks {
        app_id: APP_ID.into(),
        exec_id: "0".into(),
        block_ids: ids.iter().map(|s| s.to_string()).collect(),
    };
    assert_eq!(client.rpc_msg(&msg).await, Ok(Some(M::BlocksRemoved { num_removed_blocks: 3 })));
    for path in &paths {
        assert!(!path.exists(), "{} still exists", path.display());
    }
    let (id, _) = client.open_stream(&fetch("0", 2, &[0], &[&[0]], false)).await.expect("handle");
    let index = layout.exec0.path("shuffle_2_0_0.index");
    assert_eq!(
        first_line(&failure(client.chunk(id, 0).await)),
        format!("java.lang.RuntimeException: Failed to open file: {}", index.display())
    );
}

#[tokio::test]
async fn remove_blocks_skips_path_like_ids_and_leaves_the_victims_untouched() {
    let (layout, _agent, mut client) = setup().await;
    let victims: Vec<PathBuf> = ["../victim", "sub/rdd_1_0"].iter().map(|id| layout.exec0.path(id)).collect();
    let msg = M::RemoveBlocks {
        app_id: APP_ID.into(),
        exec_id: "0".into(),
        block_ids: ["../victim", "sub/rdd_1_0", ".", "..", "", "a\\b", "nul\0"].iter().map(|s| s.to_string()).collect(),
    };
    assert_eq!(client.rpc_msg(&msg).await, Ok(Some(M::BlocksRemoved { num_removed_blocks: 0 })));
    for victim in &victims {
        assert_eq!(std::fs::read(victim).expect("victim still there"), b"vic", "{}", victim.display());
    }
    for dir in &layout.exec0.local_dirs {
        assert!(std::path::Path::new(dir).is_dir(), "{dir} still there");
    }
}

#[tokio::test]
async fn remove_blocks_for_an_unregistered_executor_fails() {
    let (layout, _agent, mut client) = setup().await;
    let msg = M::RemoveBlocks { app_id: APP_ID.into(), exec_id: "99".into(), block_ids: vec!["rdd_1_0".into()] };
    assert_eq!(first_line(&failure(client.rpc_msg(&msg).await)), not_registered("99"));
    assert!(layout.exec0.path("rdd_1_0").exists());
}

// ---- DiagnoseCorruption ------------------------------------------------------------------

async fn cause(client: &mut TestClient, msg: M) -> u8 {
    match client.rpc_msg(&msg).await {
        Ok(Some(M::CorruptionCause { cause })) => cause,
        other => panic!("expected a CorruptionCause, got {other:?}"),
    }
}

#[tokio::test]
async fn diagnose_corruption_names_each_of_the_five_causes() {
    let (layout, _agent, mut client) = setup().await;
    let adler = |m: i64, r: usize| ChecksumKind::Adler32.of(&layout.map(0, m).partitions[r]);
    let crc = |m: i64, r: usize| ChecksumKind::Crc32.of(&layout.map(0, m).partitions[r]);
    // 0 DISK_ISSUE: map 1's ADLER32 entry r=2 was corrupted on disk (diagnose_disk.txt).
    assert_eq!(cause(&mut client, diagnose("0", 1, 2, adler(1, 2), "ADLER32")).await, 0);
    // 1 NETWORK_ISSUE: the reader's checksum is off by one (diagnose_network.txt).
    assert_eq!(cause(&mut client, diagnose("0", 0, 2, adler(0, 2) + 1, "ADLER32")).await, 1);
    // 2 UNKNOWN_ISSUE: no CRC32C checksum file (diagnose_unknown.txt).
    assert_eq!(cause(&mut client, diagnose("0", 0, 2, 0x1cc4d7d0, "CRC32C")).await, 2);
    // 3 CHECKSUM_VERIFY_PASS, with either algorithm Spark writes by default.
    assert_eq!(cause(&mut client, diagnose("0", 0, 2, adler(0, 2), "ADLER32")).await, 3);
    assert_eq!(cause(&mut client, diagnose("0", 0, 2, crc(0, 2), "CRC32")).await, 3);
    // 4 UNSUPPORTED_CHECKSUM_ALGORITHM (diagnose_unsupported.txt).
    assert_eq!(cause(&mut client, diagnose("0", 0, 2, 12345, "MD5")).await, 4);
}

#[tokio::test]
async fn diagnose_corruption_checks_crc32c_files_and_empty_partitions() {
    let (layout, _agent, mut client) = setup().await;
    let map = layout.map(0, 0);
    let values = layout.exec0.write_checksums(map, ChecksumKind::Crc32c);
    assert_eq!(cause(&mut client, diagnose("0", 0, 3, values[3], "CRC32C")).await, 3);
    // An empty partition: Adler32 of nothing is 1, CRC32 of nothing is 0 (NOTES §3).
    assert_eq!(cause(&mut client, diagnose("0", 0, 1, 1, "ADLER32")).await, 3);
    assert_eq!(cause(&mut client, diagnose("0", 0, 1, 0, "CRC32")).await, 3);
}

#[tokio::test]
async fn diagnose_corruption_reads_the_index_before_it_checks_the_algorithm() {
    let (layout, _agent, mut client) = setup().await;
    let index = layout.exec0.path("shuffle_0_7_0.index");
    let want = format!("java.lang.RuntimeException: Failed to open file: {}", index.display());
    // diagnose_unsupported_missing_index.txt and err_diagnose_missing_index.txt (NOTES D9).
    for algorithm in ["MD5", "ADLER32"] {
        let error = failure(client.rpc_msg(&diagnose("0", 7, 0, 1, algorithm)).await);
        assert_eq!(first_line(&error), want, "{algorithm}");
    }
}

#[tokio::test]
async fn diagnose_corruption_for_an_unregistered_executor_fails_the_rpc() {
    let (_layout, _agent, mut client) = setup().await;
    // The JVM's text here is a NullPointerException (NOTES D8); the agent names the cause.
    let error = failure(client.rpc_msg(&diagnose("99", 0, 2, 0xa8e70ef5, "ADLER32")).await);
    assert_eq!(first_line(&error), not_registered("99"));
}

// ---- RegisterDriver and heartbeats ---------------------------------------------------------

#[tokio::test]
async fn register_driver_is_accepted_with_an_empty_reply() {
    let (_layout, agent, mut client) = setup().await;
    // probe_bad_rpcs.txt's body: type 4, appId "a", heartbeat timeout 1 ms. Spark 4 refuses it;
    // the agent accepts it for the 2.2 Kubernetes fork.
    let body = Bytes::from_static(&[4, 0, 0, 0, 1, b'a', 0, 0, 0, 0, 0, 0, 0, 1]);
    assert_eq!(client.rpc(body).await, Ok(Bytes::new()));
    let driver = agent.shared.registry.driver("a").expect("driver registered");
    assert_eq!(driver.heartbeat_timeout_ms, 1);
    let heartbeat = M::ShuffleServiceHeartbeat { app_id: "a".into() };
    assert_eq!(client.rpc_msg(&heartbeat).await, Ok(None));
}

// ---- push-based shuffle: answered like Spark's standalone service (no merge manager) --------

#[tokio::test]
async fn finalize_shuffle_merge_fails_because_the_service_has_no_merge_manager() {
    let (layout, _agent, mut client) = setup().await;
    let msg = M::FinalizeShuffleMerge { app_id: APP_ID.into(), app_attempt_id: -1, shuffle_id: 0, shuffle_merge_id: 0 };
    let error = failure(client.rpc_msg(&msg).await);
    assert!(error.contains("Cannot handle shuffle block merge"), "{error}");
    assert_eq!(first_line(&error), cannot_merge());
    still_serves(&mut client, &layout).await;
}

/// AGENT BUG (see the report): the RpcFailure is queued but the connection is closed without
/// flushing it, so the client sees only the close. Spark's TransportRequestHandler
/// .processStreamUpload sends the RpcFailure, then closes (spec §3.1 "UploadStream").
#[tokio::test]
async fn an_upload_stream_push_is_refused_with_an_rpc_failure_and_then_the_connection_is_closed() {
    let (layout, agent, mut client) = setup().await;
    let meta = M::PushBlockStream {
        app_id: APP_ID.into(),
        app_attempt_id: -1,
        shuffle_id: 0,
        shuffle_merge_id: 0,
        map_index: 0,
        reduce_id: 0,
        index: 0,
    }
    .encode();
    let request_id = client.request_id();
    let mut out = BytesMut::new();
    Message::UploadStream { request_id, meta, body_byte_count: 4 }.encode(&mut out);
    out.put_slice(b"push");
    client.send_raw(&out).await;
    let sent = client.recv_until_closed().await.expect("the agent closes the connection");
    let mut codec = FrameCodec::new(1 << 20);
    let mut buf = BytesMut::from(&sent[..]);
    let reply = codec.decode(&mut buf).expect("a frame");
    match reply {
        Some(Inbound::Message(Message::RpcFailure { request_id: got, error })) => {
            assert_eq!(got, request_id);
            assert!(error.contains("Cannot handle shuffle block merge"), "{error}");
        }
        other => panic!("expected an RpcFailure before the close, got {other:?} ({} bytes)", sent.len()),
    }
    // Only that connection: others are served.
    let mut other = registered_client(&agent, &layout).await;
    still_serves(&mut other, &layout).await;
}

#[tokio::test]
async fn a_merged_block_meta_request_fails_and_the_connection_stays_usable() {
    let (layout, _agent, mut client) = setup().await;
    let request_id = client.request_id();
    client
        .send(&Message::MergedBlockMetaRequest {
            request_id,
            app_id: APP_ID.into(),
            shuffle_id: 0,
            shuffle_merge_id: 0,
            reduce_id: 0,
        })
        .await;
    match client.recv_message().await {
        Message::RpcFailure { request_id: got, error } => {
            assert_eq!(got, request_id);
            assert_eq!(first_line(&error), cannot_merge());
        }
        other => panic!("expected an RpcFailure, got {other:?}"),
    }
    still_serves(&mut client, &layout).await;
}

#[tokio::test]
async fn fetch_shuffle_block_chunks_opens_a_stream_whose_chunks_all_fail() {
    let (layout, _agent, mut client) = setup().await;
    let msg = M::FetchShuffleBlockChunks {
        app_id: APP_ID.into(),
        exec_id: "0".into(),
        shuffle_id: 0,
        shuffle_merge_id: 0,
        reduce_ids: vec![0, 1],
        chunk_ids: vec![vec![0, 1], vec![0]],
    };
    let (id, n) = client.open_stream(&msg).await.expect("StreamHandle");
    assert_eq!(n, 3);
    for i in 0..n {
        assert_eq!(first_line(&failure(client.chunk(id, i).await)), cannot_merge(), "chunk {i}");
    }
    // Merged chunks asked for the old way (OpenBlocks shuffleChunk ids) fail the same way.
    let (id, n) = client.open_stream(&open_blocks("0", &["shuffleChunk_0_0_0_0"])).await.expect("handle");
    assert_eq!(n, 1);
    assert_eq!(first_line(&failure(client.chunk(id, 0).await)), cannot_merge());
    still_serves(&mut client, &layout).await;
}

#[tokio::test]
async fn a_one_way_remove_shuffle_merge_gets_no_reply_and_the_connection_stays_usable() {
    let (layout, _agent, mut client) = setup().await;
    // probe_oneway.txt: appAttemptId -1, shuffleId 0, shuffleMergeId -1.
    let body = M::RemoveShuffleMerge { app_id: APP_ID.into(), app_attempt_id: -1, shuffle_id: 0, shuffle_merge_id: -1 };
    client.send(&Message::OneWayMessage { body: body.encode() }).await;
    // A one-way message that fails is only logged, too.
    client.send(&Message::OneWayMessage { body: Bytes::from_static(&[99]) }).await;
    // The next thing the server sends is the answer to the next request.
    let reply = client.rpc_msg(&local_dirs(&["0"])).await.expect("local dirs");
    assert!(matches!(reply, Some(M::LocalDirsForExecutors { .. })), "{reply:?}");
    still_serves(&mut client, &layout).await;
}

// ---- error paths of NOTES.md §5 ----------------------------------------------------------

#[tokio::test]
async fn fetching_from_an_unregistered_executor_fails_the_chunk_not_the_rpc() {
    let (layout, _agent, mut client) = setup().await;
    for msg in [fetch("99", 0, &[0], &[&[0]], false), open_blocks("99", &["shuffle_0_0_0"])] {
        let (id, n) = client.open_stream(&msg).await.expect("a StreamHandle even for an unknown executor");
        assert_eq!(n, 1);
        assert_eq!(first_line(&failure(client.chunk(id, 0).await)), not_registered("99"));
    }
    still_serves(&mut client, &layout).await;
}

#[tokio::test]
async fn a_missing_index_file_fails_the_chunk_with_its_hashed_path() {
    let (layout, _agent, mut client) = setup().await;
    let (id, _) = client.open_stream(&fetch("0", 0, &[7], &[&[0]], false)).await.expect("handle");
    let index = layout.exec0.path("shuffle_0_7_0.index");
    assert!(index.ends_with("ld1/3b/shuffle_0_7_0.index"), "{}", index.display());
    assert_eq!(
        first_line(&failure(client.chunk(id, 0).await)),
        format!("java.lang.RuntimeException: Failed to open file: {}", index.display())
    );
}

#[tokio::test]
async fn a_failed_chunk_consumes_its_index_and_its_block_is_tried_again() {
    let (layout, _agent, mut client) = setup().await;
    // err_partial.txt: [shuffle_0_7_0, shuffle_0_0_0, shuffle_0_0_2]; every chunk fails with
    // map 7's error because the iterator does not advance past a failed block.
    let (id, n) = client.open_stream(&fetch("0", 0, &[7, 0], &[&[0], &[0, 2]], false)).await.expect("handle");
    let want = format!(
        "java.lang.RuntimeException: Failed to open file: {}",
        layout.exec0.path("shuffle_0_7_0.index").display()
    );
    let requests: Vec<Message> =
        (0..n).map(|i| Message::ChunkFetchRequest(StreamChunkId { stream_id: id, chunk_index: i })).collect();
    client.send_all(&requests).await;
    for i in 0..n {
        let reply = client.recv_chunk_reply(StreamChunkId { stream_id: id, chunk_index: i }).await;
        assert_eq!(first_line(&failure(reply)), want, "chunk {i}");
    }
    still_serves(&mut client, &layout).await;
}

#[tokio::test]
async fn a_reduce_id_out_of_range_fails_with_index_out_of_bounds_and_the_connection_stays_usable() {
    let (layout, _agent, mut client) = setup().await;
    // err_reduce_out_of_range.txt: map 0 has 4 partitions; reduce 4 and 9. Only the class is
    // stable (NOTES D11).
    for reduce in [4, 9, -1] {
        let (id, _) = client.open_stream(&fetch("0", 0, &[0], &[&[reduce]], false)).await.expect("handle");
        let text = failure(client.chunk(id, 0).await);
        assert!(first_line(&text).starts_with("java.lang.IndexOutOfBoundsException"), "reduce {reduce}: {text}");
    }
    // A reversed batch range fails the same way rather than sending a negative length.
    let (id, _) = client.open_stream(&fetch("0", 0, &[0], &[&[3, 1]], true)).await.expect("handle");
    assert!(failure(client.chunk(id, 0).await).starts_with("java.lang.IndexOutOfBoundsException"));
    still_serves(&mut client, &layout).await;
}

#[tokio::test]
async fn unparseable_open_blocks_ids_fail_the_rpc_with_the_jvm_texts() {
    let (layout, _agent, mut client) = setup().await;
    let cases: [(&[&str], &str); 4] = [
        (&["broadcast_1"], "java.lang.IllegalArgumentException: Unexpected block id format: broadcast_1"),
        (
            &["shuffle_0_0_0", "rdd_1_0"],
            "java.lang.IllegalArgumentException: Unexpected shuffle block id format: rdd_1_0",
        ),
        (&["shuffle_0_4294967301_0"], "java.lang.NumberFormatException: For input string: \"4294967301\""),
        (
            &["shuffle_0_0_0", "shuffle_1_0_0"],
            "java.lang.IllegalArgumentException: Expected shuffleId=0, got:shuffle_1_0_0",
        ),
    ];
    for (ids, want) in cases {
        assert_eq!(first_line(&failure(client.open_stream(&open_blocks("0", ids)).await)), want, "{ids:?}");
    }
    still_serves(&mut client, &layout).await;
}

#[tokio::test]
async fn a_missing_rdd_block_is_chunk_not_found_and_stream_not_found() {
    let (_layout, _agent, mut client) = setup().await;
    let (id, _) = client.open_stream(&open_blocks("0", &["rdd_1_99"])).await.expect("handle");
    assert_eq!(first_line(&failure(client.chunk(id, 0).await)), "java.lang.IllegalStateException: Chunk was not found");
    // err_rdd_missing_stream.txt: the whole text, no class name.
    let (id, _) = client.open_stream(&open_blocks("0", &["rdd_1_99"])).await.expect("handle");
    let name = format!("{id}_0");
    assert_eq!(failure(client.stream_request(&name).await), format!("Stream '{name}' was not found."));
}

#[tokio::test]
async fn block_files_symlinked_out_of_the_executor_dirs_are_refused() {
    let (layout, _agent, mut client) = setup().await;
    let outside = |path: PathBuf| {
        format!(
            "java.lang.RuntimeException: Block file {} resolves outside the executor's registered local directories",
            path.display()
        )
    };
    // err_symlink_escape.txt: both files of shuffle 5 are links; the index is read first.
    let (id, _) = client.open_stream(&fetch("0", 5, &[0], &[&[0]], false)).await.expect("handle");
    assert_eq!(first_line(&failure(client.chunk(id, 0).await)), outside(layout.exec0.path("shuffle_5_0_0.index")));

    // A real index whose data file is a link out.
    let output = layout.exec0.write_map_output(6, 0, &[5, 6]);
    std::fs::remove_file(&output.data).unwrap();
    std::os::unix::fs::symlink(layout.outside.join("shuffle_5_0_0.data"), &output.data).unwrap();
    let (id, _) = client.open_stream(&fetch("0", 6, &[0], &[&[1]], false)).await.expect("handle");
    assert_eq!(first_line(&failure(client.chunk(id, 0).await)), outside(output.data.clone()));

    // An rdd block that is a link out, by chunk and by stream.
    let rdd = layout.exec0.path("rdd_2_0");
    crate::common::shuffle_files::create_parent(&rdd);
    std::os::unix::fs::symlink(layout.outside.join("shuffle_5_0_0.data"), &rdd).unwrap();
    let (id, _) = client.open_stream(&open_blocks("0", &["rdd_2_0", "rdd_2_0"])).await.expect("handle");
    assert_eq!(first_line(&failure(client.chunk(id, 0).await)), outside(rdd.clone()));
    assert_eq!(first_line(&failure(client.stream_request(&format!("{id}_1")).await)), outside(rdd));
}

#[tokio::test]
async fn an_out_of_order_chunk_is_refused_without_consuming_the_index() {
    let (layout, _agent, mut client) = setup().await;
    // probe_chunk_order.txt: chunks 1, 0, 1, 2, 0 of a 3-chunk stream.
    let (id, _) = client.open_stream(&fetch("0", 0, &[0], &[&[0, 2, 3]], false)).await.expect("handle");
    assert_eq!(
        first_line(&failure(client.chunk(id, 1).await)),
        "java.lang.IllegalStateException: Received out-of-order chunk index 1 (expected 0)"
    );
    let parts = &layout.map(0, 0).partitions;
    assert_eq!(client.chunk(id, 0).await.unwrap(), parts[0]);
    assert_eq!(client.chunk(id, 1).await.unwrap(), parts[2]);
    assert_eq!(client.chunk(id, 2).await.unwrap(), parts[3]);
    assert_eq!(
        first_line(&failure(client.chunk(id, 0).await)),
        "java.lang.IllegalArgumentException: Unknown stream ID."
    );
}

#[tokio::test]
async fn an_unknown_stream_is_refused_for_chunks_and_stream_requests() {
    let (_layout, _agent, mut client) = setup().await;
    let unknown = "java.lang.IllegalArgumentException: Unknown stream ID.";
    assert_eq!(first_line(&failure(client.chunk(123456, 0).await)), unknown);
    assert_eq!(first_line(&failure(client.stream_request("123456_0").await)), unknown);
}

#[tokio::test]
async fn another_connections_stream_is_refused_and_a_closed_connections_stream_is_unknown() {
    let (layout, agent, mut a) = setup().await;
    let mut b = agent.connect().await;
    // probe_cross_connection.txt.
    let (id, _) = a.open_stream(&fetch("0", 0, &[0], &[&[0, 2]], false)).await.expect("handle");
    let refused = format!(
        "java.lang.SecurityException: Channel not authorized to read stream {id}: \
         streams may only be read from the connection that registered them."
    );
    assert_eq!(first_line(&failure(b.chunk(id, 0).await)), refused);
    assert_eq!(first_line(&failure(b.stream_request(&format!("{id}_0")).await)), refused);
    // The owner is not disturbed by the refused attempts.
    assert_eq!(a.chunk(id, 0).await.unwrap(), layout.map(0, 0).partitions[0]);
    assert_eq!(a.chunk(id, 1).await.unwrap(), layout.map(0, 0).partitions[2]);

    let mut a2 = agent.connect().await;
    let (id2, _) = a2.open_stream(&fetch("0", 0, &[0], &[&[0]], false)).await.expect("handle");
    drop(a2);
    wait_until("the closed connection's streams are released", || agent.shared.streams.is_empty()).await;
    assert_eq!(first_line(&failure(b.chunk(id2, 0).await)), "java.lang.IllegalArgumentException: Unknown stream ID.");
}

#[tokio::test]
async fn a_stream_request_with_a_non_numeric_id_fails_with_number_format() {
    let (layout, _agent, mut client) = setup().await;
    let error = failure(client.stream_request("not-a-stream").await);
    assert_eq!(first_line(&error), "java.lang.NumberFormatException: For input string: \"not-a-stream\"");
    still_serves(&mut client, &layout).await;
}

#[tokio::test]
async fn chunk_zero_of_an_empty_fetch_is_beyond_the_end() {
    let (_layout, _agent, mut client) = setup().await;
    // probe_empty_fsb.txt (NOTES D10).
    let (id, n) = client.open_stream(&fetch("0", 0, &[], &[], false)).await.expect("handle");
    assert_eq!(n, 0);
    assert_eq!(
        first_line(&failure(client.chunk(id, 0).await)),
        "java.lang.IllegalStateException: Requested chunk index beyond end 0"
    );
}

#[tokio::test]
async fn an_unknown_message_type_fails_the_rpc_and_the_connection_stays_usable() {
    let (layout, _agent, mut client) = setup().await;
    let error = failure(client.rpc(Bytes::from_static(&[99])).await);
    assert_eq!(first_line(&error), "java.lang.IllegalArgumentException: Unknown message type: 99");
    // A truncated body of a known type fails the RPC the same way, without closing.
    let truncated = open_blocks("0", &["shuffle_0_0_0"]).encode().slice(..10);
    assert!(client.rpc(truncated).await.is_err());
    assert!(client.rpc(Bytes::new()).await.is_err());
    still_serves(&mut client, &layout).await;
}

#[tokio::test]
async fn upload_block_is_refused_as_an_unexpected_message() {
    let (_layout, _agent, mut client) = setup().await;
    let msg = M::UploadBlock {
        app_id: APP_ID.into(),
        exec_id: "0".into(),
        block_id: "rdd_9_9".into(),
        metadata: Bytes::from_static(&[1, 2]),
        block_data: Bytes::from_static(&[3]),
    };
    assert_eq!(
        first_line(&failure(client.rpc_msg(&msg).await)),
        format!(
            "java.lang.UnsupportedOperationException: Unexpected message: \
             UploadBlock[appId={APP_ID},execId=0,blockId=rdd_9_9,metadata size=2,block size=1]"
        )
    );
}

// ---- data files that are missing or short ---------------------------------------------------

#[tokio::test]
async fn a_missing_data_file_fails_the_chunk_with_file_not_found_and_the_connection_stays_usable() {
    let (layout, agent, mut client) = setup().await;
    // The JVM sends the success header, then closes (lazyFD); the agent opens the file first.
    let data = layout.exec0.path("shuffle_3_0_0.data");
    let want = format!("java.io.FileNotFoundException: {} (No such file or directory)", data.display());
    let (id, _) = client.open_stream(&fetch("0", 3, &[0], &[&[0, 1]], false)).await.expect("handle");
    assert_eq!(first_line(&failure(client.chunk(id, 0).await)), want);
    assert_eq!(first_line(&failure(client.stream_request(&format!("{id}_1")).await)), want);
    still_serves(&mut client, &layout).await;
    let mut other = registered_client(&agent, &layout).await;
    still_serves(&mut other, &layout).await;
}

#[tokio::test]
async fn a_truncated_data_file_fails_the_chunk_with_a_clear_text() {
    let (layout, agent, mut client) = setup().await;
    let output = layout.exec0.write_map_output(7, 0, &[10, 20]);
    std::fs::OpenOptions::new().write(true).open(&output.data).unwrap().set_len(15).unwrap();
    let (id, _) = client.open_stream(&fetch("0", 7, &[0], &[&[0, 1]], false)).await.expect("handle");
    assert_eq!(client.chunk(id, 0).await.expect("the first partition is whole"), output.partitions[0]);
    assert_eq!(
        first_line(&failure(client.chunk(id, 1).await)),
        format!(
            "java.lang.RuntimeException: Shuffle data file {} is truncated: index expects 30 bytes, file has 15",
            output.data.display()
        )
    );
    still_serves(&mut client, &layout).await;
    let mut other = registered_client(&agent, &layout).await;
    still_serves(&mut other, &layout).await;
}

// ---- bad frames: only the sender's connection closes -------------------------------------

/// Sends `bytes` on a fresh connection and checks that the agent closes it without a reply,
/// counts it, and keeps serving an open stream on another connection and new connections.
async fn bad_frame_closes_only_its_connection(bytes: &[u8], settings: Config, then_eof: bool) {
    let (layout, agent, mut good) = setup_with(settings).await;
    let (id, _) = good.open_stream(&fetch("0", 0, &[0], &[&[0, 2]], false)).await.expect("handle");
    let mut bad = agent.connect().await;
    bad.send_raw(bytes).await;
    if then_eof {
        bad.shutdown_write().await;
    }
    bad.expect_closed_silently().await;
    if !then_eof {
        wait_until("the bad frame is counted", || agent.counter(|c| &c.bad_frames) == 1).await;
    }
    assert_eq!(good.chunk(id, 0).await.expect("the other connection is served"), layout.map(0, 0).partitions[0]);
    assert_eq!(good.chunk(id, 1).await.expect("and keeps its stream"), layout.map(0, 0).partitions[2]);
    let mut fresh = registered_client(&agent, &layout).await;
    still_serves(&mut fresh, &layout).await;
}

#[tokio::test]
async fn a_zero_frame_length_closes_only_its_connection() {
    // probe_bad_frame_zero.txt.
    bad_frame_closes_only_its_connection(&[0; 8], test_config(), false).await;
}

#[tokio::test]
async fn a_frame_length_below_its_own_size_closes_only_its_connection() {
    bad_frame_closes_only_its_connection(&[0, 0, 0, 0, 0, 0, 0, 8], test_config(), false).await;
}

#[tokio::test]
async fn a_negative_frame_length_closes_only_its_connection() {
    bad_frame_closes_only_its_connection(&(-21i64).to_be_bytes(), test_config(), false).await;
}

#[tokio::test]
async fn an_unknown_transport_type_closes_only_its_connection() {
    // probe_bad_frame_type.txt: frameLength 9, type 0x0d.
    bad_frame_closes_only_its_connection(&[0, 0, 0, 0, 0, 0, 0, 9, 0x0d], test_config(), false).await;
}

#[tokio::test]
async fn a_header_running_past_its_frame_closes_only_its_connection() {
    // A ChunkFetchRequest frame holding 4 of its 12 header bytes.
    let bytes = [0, 0, 0, 0, 0, 0, 0, 13, 0, 0, 0, 0, 1];
    bad_frame_closes_only_its_connection(&bytes, test_config(), false).await;
}

#[tokio::test]
async fn a_frame_over_the_configured_limit_closes_the_connection_before_its_body_arrives() {
    // Only the length is sent: the agent must not wait for the megabyte it announces.
    let settings = Config { max_frame_bytes: 4096, ..test_config() };
    bad_frame_closes_only_its_connection(&((1u64 << 20) + 8).to_be_bytes(), settings, false).await;
}

#[tokio::test]
async fn a_truncated_frame_then_eof_closes_only_its_connection() {
    // Half of a ChunkFetchRequest, then FIN.
    let bytes = [0, 0, 0, 0, 0, 0, 0, 0x15, 0, 0, 0, 0];
    bad_frame_closes_only_its_connection(&bytes, test_config(), true).await;
}

#[tokio::test]
async fn replies_to_requests_before_a_bad_frame_are_sent_before_the_close() {
    let (_layout, _agent, mut client) = setup().await;
    let request_id = client.request_id();
    let mut out = BytesMut::new();
    Message::RpcRequest { request_id, body: local_dirs(&["1"]).encode() }.encode(&mut out);
    out.put_slice(&[0; 8]);
    client.send_raw(&out).await;
    match client.recv_message().await {
        Message::RpcResponse { request_id: got, .. } => assert_eq!(got, request_id),
        other => panic!("expected the reply before the close, got {other:?}"),
    }
    client.expect_closed_silently().await;
}

// ---- the server-wide chunk limit --------------------------------------------------------

/// AGENT BUG (same defect as the UploadStream case): a request over
/// `spark.shuffle.maxChunksBeingTransferred` closes the connection without flushing the replies
/// already queued for the requests before it. Spark answers each request as it handles it, so
/// only the request over the limit goes unanswered (spec §3.3 step 1).
#[tokio::test]
async fn a_chunk_over_the_server_wide_limit_closes_the_connection_after_the_replies_before_it() {
    let settings = Config { max_chunks_being_transferred: 1, ..test_config() };
    let (layout, agent, mut client) = setup_with(settings).await;
    let (id, _) = client.open_stream(&fetch("0", 0, &[0], &[&[0, 2]], false)).await.expect("handle");
    let chunk = |i| StreamChunkId { stream_id: id, chunk_index: i };
    // One write: the second request arrives while the first chunk may still be in flight.
    client.send_all(&[Message::ChunkFetchRequest(chunk(0)), Message::ChunkFetchRequest(chunk(1))]).await;
    assert_eq!(
        client.recv_chunk_reply(chunk(0)).await.expect("the chunk admitted before the limit is answered"),
        layout.map(0, 0).partitions[0]
    );
    // The second is either served (the first was already written) or refused by a silent close.
    match client.recv().await {
        Ok(Inbound::Message(Message::ChunkFetchSuccess { chunk: got, body })) => {
            assert_eq!((got, &body[..]), (chunk(1), &layout.map(0, 0).partitions[2][..]));
        }
        Err(crate::common::RecvError::Eof { pending: 0 }) | Err(crate::common::RecvError::Io(_)) => {}
        other => panic!("expected chunk 1 or a close, got {other:?}"),
    }
    // The limit is server-wide but the in-flight count drains: new connections are served.
    wait_until("no chunk is in flight", || {
        agent.shared.chunks_in_flight.load(std::sync::atomic::Ordering::Relaxed) == 0
    })
    .await;
    let mut fresh = registered_client(&agent, &layout).await;
    still_serves(&mut fresh, &layout).await;
}

// ---- idle connections ----------------------------------------------------------------------

fn short_idle() -> Config {
    Config { idle_timeout: Duration::from_millis(500), ..test_config() }
}

#[tokio::test]
async fn an_idle_connection_is_closed_by_the_server() {
    let layout = VectorLayout::new();
    let agent = start_agent_with(&layout.roots(), short_idle()).await;
    let mut silent = agent.connect().await;
    silent.expect_closed_silently().await;
    wait_until("the connection is released", || agent.counter(|c| &c.connections_active) == 0).await;
}

#[tokio::test]
async fn a_connection_idle_after_an_rpc_is_closed_by_the_server() {
    let (layout, agent, mut client) = setup_with(short_idle()).await;
    still_serves(&mut client, &layout).await;
    client.expect_closed_silently().await;
    // The agent itself keeps serving.
    let mut fresh = registered_client(&agent, &layout).await;
    still_serves(&mut fresh, &layout).await;
}

#[tokio::test]
async fn streams_past_the_per_connection_limit_are_refused_until_one_is_read_to_its_end() {
    let (_layout, _agent, mut client) = setup_with(Config { max_streams_per_connection: 2, ..test_config() }).await;
    let ask = fetch("0", 0, &[0], &[&[0]], false);
    let (first, _) = client.open_stream(&ask).await.expect("first stream");
    client.open_stream(&ask).await.expect("second stream");
    let refused = client.open_stream(&ask).await.expect_err("third stream");
    assert!(
        refused.starts_with("java.lang.IllegalStateException: Too many open streams on this connection (2"),
        "{refused}"
    );
    // Reading a stream's last chunk closes it and frees its place; the connection stays usable.
    client.chunk(first, 0).await.expect("chunk");
    client.open_stream(&ask).await.expect("a stream after one was read");
}

// ---- warnings under a flood of bad connections ---------------------------------------------

/// Everything the process logs from [`CapturedLogs::start`] on, as text lines. The agent runs on
/// threads of its own, so the capture is process-wide: one subscriber for the test binary, its
/// buffer cleared at each start, and the tests that capture serialized. Exact counts assume no
/// other test logs in the same process, which holds under cargo nextest (a process per test),
/// the runner tests/run-all.sh uses.
struct CapturedLogs {
    _serial: std::sync::MutexGuard<'static, ()>,
}

static CAPTURED: std::sync::OnceLock<std::sync::Arc<std::sync::Mutex<Vec<u8>>>> = std::sync::OnceLock::new();
static CAPTURING: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl CapturedLogs {
    fn start() -> CapturedLogs {
        let serial = CAPTURING.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let text = CAPTURED.get_or_init(|| {
            let text = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
            let sink = std::sync::Arc::clone(&text);
            let subscriber = tracing_subscriber::fmt()
                .with_max_level(tracing::Level::DEBUG)
                .with_ansi(false)
                .with_writer(move || LogSink(std::sync::Arc::clone(&sink)))
                .finish();
            tracing::subscriber::set_global_default(subscriber).expect("the only global subscriber");
            text
        });
        text.lock().unwrap().clear();
        CapturedLogs { _serial: serial }
    }

    fn lines_with(&self, level: &str, needle: &str) -> Vec<String> {
        let text = CAPTURED.get().expect("started");
        let text = String::from_utf8_lossy(&text.lock().unwrap()).into_owned();
        text.lines().filter(|l| l.contains(level) && l.contains(needle)).map(str::to_string).collect()
    }
}

struct LogSink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_flood_of_bad_frames_logs_a_bounded_number_of_warnings_and_counts_every_one() {
    let logs = CapturedLogs::start();
    let layout = VectorLayout::new();
    let agent = start_agent(&layout.roots()).await;
    const FLOOD: u64 = 60;
    for _ in 0..FLOOD {
        let mut bad = agent.connect().await;
        bad.send_raw(&[0; 8]).await;
        bad.expect_closed_silently().await;
    }
    wait_until("every bad frame is counted", || agent.counter(|c| &c.bad_frames) == FLOOD).await;
    let warned = logs.lines_with("WARN", "connection closed");
    assert_eq!(warned.len(), 10, "the first ten of the minute are logged:\n{}", warned.join("\n"));
    assert!(warned.iter().all(|l| l.contains("Frame length should be positive")), "{warned:?}");
    let quiet = logs.lines_with("DEBUG", "connection closed (rate-limited)");
    assert_eq!(quiet.len(), FLOOD as usize - 10, "the rest are still there at debug");
    // The agent still serves, and stopping it reports what was suppressed.
    let mut client = registered_client(&agent, &layout).await;
    still_serves(&mut client, &layout).await;
    agent.stop().await;
    let summary = logs.lines_with("WARN", "suppressed 50 similar warnings in the last");
    assert_eq!(summary.len(), 1, "{summary:?}");
    assert!(summary[0].contains("kind=\"bad_frame\"") || summary[0].contains("kind=bad_frame"), "{}", summary[0]);
}

#[tokio::test]
async fn a_flood_of_reset_connections_logs_a_bounded_number_of_info_lines() {
    let logs = CapturedLogs::start();
    let layout = VectorLayout::new();
    let agent = start_agent(&layout.roots()).await;
    const FLOOD: u64 = 40;
    for _ in 0..FLOOD {
        // Half a frame, then a reset (linger 0): the agent's read fails with ECONNRESET.
        let mut stream = tokio::net::TcpStream::connect(agent.addr).await.expect("connect");
        // Linger 0 closes at once with a reset (tokio deprecates it only for blocking in drop).
        rustix::net::sockopt::set_socket_linger(&stream, Some(Duration::ZERO)).expect("linger 0");
        tokio::io::AsyncWriteExt::write_all(&mut stream, &[0, 0, 0, 0]).await.expect("half a length");
        drop(stream);
    }
    wait_until("every reset is counted", || agent.counter(|c| &c.io_errors) == FLOOD).await;
    let logged = logs.lines_with("INFO", "connection closed");
    assert_eq!(logged.len(), 10, "the first ten of the minute are logged:\n{}", logged.join("\n"));
    assert!(logs.lines_with("WARN", "connection closed").is_empty(), "a peer's reset is not a warning");
    agent.stop().await;
    let summary = logs.lines_with("INFO", "suppressed 30 similar lines in the last");
    assert_eq!(summary.len(), 1, "{summary:?}");
}
