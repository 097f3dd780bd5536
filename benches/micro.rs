//! Criterion micro-benches of the per-request CPU work that does not touch a socket or a disk:
//! frame and message decoding, success-header encoding, Spark's path hashing, and index parsing,
//! range lookup and cache hits.
//!
//! ```text
//! cargo bench --bench micro                # all three groups, about a minute on 2 cores
//! cargo bench --bench micro -- index       # one group (criterion's name filter)
//! cargo bench --bench micro -- --quick     # a rough pass
//! ```
//!
//! Every input is built here in its real byte layout (frames as Spark's client writes them,
//! index files as big-endian i64 offsets). Groups with a batch report `Throughput::Elements`, so
//! criterion prints elements per second next to the time per batch; divide the time by the
//! element count for the cost of one. Nothing here asserts a timing: these print numbers, and the
//! end-to-end comparison lives in `benches/loadgen.rs` and docs/performance.md.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use spark_shuffle_agent::protocol::{
    parse_open_blocks, BlockTransferMessage, FrameCodec, Inbound, Message, StreamChunkId,
};
use spark_shuffle_agent::store::{java_string_hash, non_negative_hash, ExecutorDirs, IndexCache, ShuffleIndex};
use tokio_util::codec::Decoder;

/// Blocks in one fetch: Spark's client pipelines a whole stream's chunk requests at once.
const BATCH: usize = 64;
/// The agent's default `agent.max.frame.bytes`.
const MAX_FRAME: usize = 16 << 20;
/// A stream id as the server hands them out (large, so its bytes are not mostly zero).
const STREAM_ID: i64 = 1_739_203_118_000_042;
const APP_ID: &str = "spark-5f0c1e7a9b2d4c6e8f10a2b4c6d8e0f1";

// ---- codec ----

/// One buffer holding `BATCH` pipelined ChunkFetchRequest frames, as read off one socket.
fn chunk_requests() -> BytesMut {
    let mut buf = BytesMut::new();
    for chunk_index in 0..BATCH as i32 {
        Message::ChunkFetchRequest(StreamChunkId { stream_id: STREAM_ID, chunk_index }).encode(&mut buf);
    }
    buf
}

/// One RpcRequest frame whose body is `message`.
fn rpc_frame(message: &BlockTransferMessage) -> BytesMut {
    let mut buf = BytesMut::new();
    Message::RpcRequest { request_id: 7_000_000_123, body: message.encode() }.encode(&mut buf);
    buf
}

/// A reducer asking for its partition from `BATCH` map outputs: one reduce id per map id,
/// the shape Spark sends when batch fetch is off or not applicable.
fn fetch_shuffle_blocks() -> BlockTransferMessage {
    BlockTransferMessage::FetchShuffleBlocks {
        app_id: APP_ID.to_string(),
        exec_id: "17".to_string(),
        shuffle_id: 3,
        map_ids: (0..BATCH as i64).map(|m| 12_000 + m * 37).collect(),
        reduce_ids: vec![vec![118]; BATCH],
        batch_fetch_enabled: false,
    }
}

/// The legacy request for the same blocks, by block id string.
fn open_blocks() -> BlockTransferMessage {
    BlockTransferMessage::OpenBlocks {
        app_id: APP_ID.to_string(),
        exec_id: "17".to_string(),
        block_ids: (0..BATCH).map(|m| format!("shuffle_3_{}_118", 12_000 + m * 37)).collect(),
    }
}

// The decode benches return a number, not the decoded message, so that the message is freed
// inside the timed routine, as the server frees it, instead of a whole batch of decoded
// messages piling up until criterion drops them outside the measurement.

/// Decodes every frame in `buf`; returns how many there were.
fn decode_all(codec: &mut FrameCodec, buf: &mut BytesMut) -> usize {
    let mut frames = 0;
    while let Ok(Some(item)) = codec.decode(buf) {
        black_box(&item);
        frames += 1;
    }
    frames
}

/// The body of the single RpcRequest frame in `buf`.
fn rpc_body(codec: &mut FrameCodec, buf: &mut BytesMut) -> Bytes {
    match codec.decode(buf) {
        Ok(Some(Inbound::Message(Message::RpcRequest { body, .. }))) => body,
        other => panic!("expected one RpcRequest frame, got {other:?}"),
    }
}

fn codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec");
    group.throughput(Throughput::Elements(BATCH as u64));

    let requests = chunk_requests();
    assert_eq!(decode_all(&mut FrameCodec::new(MAX_FRAME), &mut requests.clone()), BATCH);
    group.bench_function("decode_64_chunk_fetch_requests", |b| {
        let mut codec = FrameCodec::new(MAX_FRAME);
        b.iter_batched(|| requests.clone(), |mut buf| decode_all(&mut codec, &mut buf), BatchSize::SmallInput)
    });

    let fetch = rpc_frame(&fetch_shuffle_blocks());
    group.bench_function("decode_fetch_shuffle_blocks_64", |b| {
        let mut codec = FrameCodec::new(MAX_FRAME);
        b.iter_batched(
            || fetch.clone(),
            |mut buf| match BlockTransferMessage::decode(&rpc_body(&mut codec, &mut buf)) {
                Ok(BlockTransferMessage::FetchShuffleBlocks { map_ids, .. }) => map_ids.len(),
                other => panic!("expected FetchShuffleBlocks, got {other:?}"),
            },
            BatchSize::SmallInput,
        )
    });

    // What the server does with an OpenBlocks: decode it, then parse every block id.
    let open = rpc_frame(&open_blocks());
    group.bench_function("decode_open_blocks_64_and_parse_ids", |b| {
        let mut codec = FrameCodec::new(MAX_FRAME);
        b.iter_batched(
            || open.clone(),
            |mut buf| match BlockTransferMessage::decode(&rpc_body(&mut codec, &mut buf)) {
                Ok(BlockTransferMessage::OpenBlocks { block_ids, .. }) => parse_open_blocks(&block_ids).is_ok(),
                other => panic!("expected OpenBlocks, got {other:?}"),
            },
            BatchSize::SmallInput,
        )
    });

    // Success headers for 4 KiB bodies, into a reused buffer as the server's outbox does.
    let headers: Vec<Message> = (0..BATCH as i32)
        .map(|chunk_index| Message::ChunkFetchSuccess {
            chunk: StreamChunkId { stream_id: STREAM_ID, chunk_index },
            body: Bytes::new(),
        })
        .collect();
    group.bench_function("encode_64_chunk_fetch_success_headers", |b| {
        let mut out = BytesMut::with_capacity(BATCH * 32);
        b.iter(|| {
            out.clear();
            for header in &headers {
                header.encode_header(&mut out, 4096);
            }
            black_box(out.len())
        })
    });
    group.finish();
}

// ---- path hashing ----

/// Two local dirs shaped like Spark's on Kubernetes, 64 sub dirs each (Spark's default).
fn executor_dirs() -> ExecutorDirs {
    let local_dirs = (1..=2)
        .map(|n| format!("/var/data/spark-{n}f3a9c2e-41d7-4b8e-9a0c/blockmgr-8c2d4e6f-0a1b-4c3d-9e8f-7a6b5c4d3e2{n}"))
        .collect::<Vec<_>>();
    let canonical = local_dirs.iter().map(PathBuf::from).collect();
    ExecutorDirs::new(local_dirs, 64, canonical).expect("valid dirs")
}

fn path_hashing(c: &mut Criterion) {
    let mut group = c.benchmark_group("path_hashing");
    let data = "shuffle_3_12345_0.data";
    let index = "shuffle_3_12345_0.index";
    group.bench_function("java_string_hash/data", |b| b.iter(|| java_string_hash(black_box(data))));
    group.bench_function("non_negative_hash/index", |b| b.iter(|| non_negative_hash(black_box(index))));
    let dirs = executor_dirs();
    for name in [data, index] {
        let suffix = name.rsplit('.').next().unwrap_or(name);
        group.bench_with_input(BenchmarkId::new("file_path", suffix), name, |b, name| {
            b.iter(|| dirs.file_path(black_box(name)))
        });
    }
    // What the server does per map output: format the name, then hash it to a path.
    group.bench_function("format_name_and_file_path/index", |b| {
        b.iter(|| dirs.file_path(&format!("shuffle_{}_{}_0.index", black_box(3), black_box(12345i64))))
    });
    group.finish();
}

// ---- index lookup ----

/// An index file of `partitions` blocks of varied sizes: `partitions + 1` big-endian i64
/// offsets, starting at 0, non-decreasing, some partitions empty.
fn index_bytes(partitions: usize) -> Vec<u8> {
    let mut offset = 0i64;
    let mut bytes = Vec::with_capacity((partitions + 1) * 8);
    bytes.extend_from_slice(&offset.to_be_bytes());
    for p in 0..partitions as i64 {
        offset += if p % 7 == 0 { 0 } else { 1024 + (p * 2_654_435_761) % 65_536 };
        bytes.extend_from_slice(&offset.to_be_bytes());
    }
    bytes
}

/// `BATCH` reduce ids spread over `partitions`, in no particular order.
fn reduce_ids(partitions: usize) -> Vec<i32> {
    (0..BATCH).map(|i| ((i * 7_919 + 13) % partitions) as i32).collect()
}

fn index_lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("index_lookup");
    let path = Path::new("/var/data/ld0/2a/shuffle_3_12345_0.index");
    for partitions in [200usize, 10_000] {
        let bytes = index_bytes(partitions);
        group.throughput(Throughput::Elements(partitions as u64));
        group.bench_with_input(BenchmarkId::new("parse", partitions), &bytes, |b, bytes| {
            b.iter(|| ShuffleIndex::parse(black_box(bytes), path))
        });
    }

    group.throughput(Throughput::Elements(BATCH as u64));
    for partitions in [200usize, 10_000] {
        let index = ShuffleIndex::parse(&index_bytes(partitions), path).expect("valid index");
        let ids = reduce_ids(partitions);
        group.bench_with_input(BenchmarkId::new("range_64", partitions), &ids, |b, ids| {
            b.iter(|| {
                for &r in ids {
                    let _ = black_box(index.range(black_box(r), r + 1));
                }
            })
        });
    }

    // Hits on a warm cache of 1,000 map outputs (200 partitions each), 64 different keys per
    // batch: the lock, the hash lookup and the recency update on every hit.
    let cache = IndexCache::new(100 << 20);
    let index = Arc::new(ShuffleIndex::parse(&index_bytes(200), path).expect("valid index"));
    let dirs = executor_dirs();
    let paths: Vec<PathBuf> = (0..1_000).map(|m| dirs.file_path(&format!("shuffle_3_{m}_0.index"))).collect();
    for p in &paths {
        cache.insert(p.clone(), Arc::clone(&index));
    }
    let batch: Vec<&PathBuf> = (0..BATCH).map(|i| &paths[(i * 389) % paths.len()]).collect();
    group.bench_function("cache_get_hit_64", |b| {
        b.iter(|| {
            for p in &batch {
                black_box(cache.get(p));
            }
        })
    });
    assert_eq!(cache.stats().misses, 0, "every lookup was meant to hit");
    group.finish();
}

criterion_group! {
    name = micro;
    // Short runs: the whole bench stays around a minute on the project's 2-core machine.
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(2));
    targets = codec, path_hashing, index_lookup
}
criterion_main!(micro);
