//! RPC dispatch (spec §3.1): one BlockTransferMessage in, one reply out. Runs inline on the
//! connection's task, so a connection's requests are answered strictly in arrival order.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::{debug, info};

use super::handshake::{Outcome, Peer};
use super::metrics::Latency;
use super::streams::{BlockRef, ConnectionStreams, Stream};
use super::Shared;
use crate::auth::Refusal;
use crate::protocol::{java_error, parse_open_blocks, BlockTransferMessage, JavaError, OpenBlocksPlan};
use crate::registry::Driver;

/// What the connection sends back for an RPC.
#[derive(Debug, PartialEq, Eq)]
pub enum RpcReply {
    /// RpcResponse with this body.
    Ok(Bytes),
    /// RpcFailure with this error's text; the connection stays usable.
    Fail(JavaError),
}

/// Spark's standalone service has no merge manager (NoOpMergedShuffleFileManager): every push
/// operation fails with this text (spec §7).
pub fn merge_unsupported() -> JavaError {
    java_error::unsupported("Cannot handle shuffle block merge")
}

/// Runs blocking file work (reading a whole data file to checksum it, unlinking files) on the
/// runtime's blocking pool, so the thread serving this connection, the control thread for most
/// RPCs, stays free for registrations meanwhile. The connection still waits for the answer:
/// replies keep their order.
async fn off_the_loop<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T, JavaError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| java_error::runtime(format_args!("the file operation failed: {e}")))
}

/// The executor id a GetLocalDirsForExecutors request uses for the push merger's dirs.
const SHUFFLE_MERGER_ID: &str = "shuffle-push-merger";

/// Who sends a request: whom the connection authenticated as, and whether it speaks TLS.
#[derive(Debug, Clone, Copy)]
pub(super) struct Caller<'a> {
    pub(super) peer: &'a Peer,
    pub(super) over_tls: bool,
}

/// Handles an RpcRequest body of a connection acting for `caller`.
pub(super) async fn rpc(shared: &Shared, streams: &mut ConnectionStreams, caller: Caller<'_>, body: &[u8]) -> RpcReply {
    let msg = match BlockTransferMessage::decode(body) {
        Ok(msg) => msg,
        Err(e) => return RpcReply::Fail(e.into()),
    };
    if let Err(refused) = check_app(shared, caller, &msg).await {
        return RpcReply::Fail(refused);
    }
    match handle(shared, streams, msg).await {
        Ok(reply) => RpcReply::Ok(reply),
        Err(error) => RpcReply::Fail(error),
    }
}

/// Spark's `checkAuth`, for every message that names an app; refusals are counted.
async fn check_app(shared: &Shared, caller: Caller<'_>, msg: &BlockTransferMessage) -> Result<(), JavaError> {
    match msg.app_id() {
        Some(app_id) => authorize(shared, caller, app_id).await,
        None => Ok(()),
    }
}

/// Whether `caller` may act for `app_id`: the app it authenticated for; or, not authenticated,
/// what the access rules allow (per-app mode: apps known not to use authentication, waiting a
/// bounded time for an app whose pod is not known yet). Then, for an app whose pods use TLS,
/// only over TLS. Refusals are counted.
pub(super) async fn authorize(shared: &Shared, caller: Caller<'_>, app_id: &str) -> Result<(), JavaError> {
    let peer = caller.peer;
    if peer.is_authenticated() {
        peer.check_app(app_id).inspect_err(|_| shared.counters.handshake(Outcome::AppMismatch))?;
    } else {
        shared.access.unauthenticated_may_act(app_id).await.map_err(|refusal| {
            shared.counters.handshake(Outcome::of(&refusal));
            refusal_error(app_id, &refusal)
        })?;
    }
    if !caller.over_tls && shared.access.requires_tls(app_id) {
        shared.counters.handshake(Outcome::PlaintextForTlsApp);
        return Err(java_error::security(format_args!(
            "Application {app_id} uses TLS (spark.ssl.rpc.enabled in its pods) and is not served over plaintext."
        )));
    }
    Ok(())
}

/// What an unauthenticated client is told. For an app that uses authentication it is the text
/// Spark's service gives a client without SASL; the others say what is wrong.
fn refusal_error(app_id: &str, refusal: &Refusal) -> JavaError {
    match refusal {
        Refusal::NeedsAuthentication => java_error::illegal_state(
            "Expected SaslMessage, received something else (maybe your client does not have SASL enabled?)",
        ),
        Refusal::UnknownApp => java_error::security(format_args!(
            "Application {app_id} is not known to this shuffle service: no executor pod of it was seen."
        )),
        Refusal::Conflicted => java_error::security(format_args!(
            "Application {app_id} is refused: its pods disagree on its secret or namespace."
        )),
        Refusal::Unsupported => java_error::security(format_args!(
            "Application {app_id} is refused: its authentication settings are not supported (see the agent's log)."
        )),
    }
}

/// Handles a OneWayMessage body: same dispatch, results dropped, failures only logged.
pub(super) async fn one_way(shared: &Shared, streams: &mut ConnectionStreams, caller: Caller<'_>, body: &[u8]) {
    let outcome = match BlockTransferMessage::decode(body) {
        Ok(msg) if check_app(shared, caller, &msg).await.is_err() => {
            debug!("one-way message for another app refused");
            return;
        }
        Ok(BlockTransferMessage::RemoveShuffleMerge { app_id, shuffle_id, .. }) => {
            // As on the JVM service: nothing was merged, so there is nothing to remove.
            debug!(app = %app_id, shuffle_id, "ignoring RemoveShuffleMerge: no merge manager");
            return;
        }
        Ok(msg) => handle(shared, streams, msg).await.err(),
        Err(e) => Some(JavaError::from(e)),
    };
    if let Some(text) = outcome {
        debug!(error = %text, "one-way message failed");
    }
}

/// Handles one message, timing the kinds Spark's service times (spec §8): failures included,
/// as the JVM stops its timers in a `finally`.
async fn handle(
    shared: &Shared,
    streams: &mut ConnectionStreams,
    msg: BlockTransferMessage,
) -> Result<Bytes, JavaError> {
    use BlockTransferMessage as M;
    let observe: Option<fn(&Latency, Duration)> = match &msg {
        M::RegisterExecutor { .. } => Some(Latency::observe_register),
        M::OpenBlocks { .. } | M::FetchShuffleBlocks { .. } | M::FetchShuffleBlockChunks { .. } => {
            Some(Latency::observe_open_blocks)
        }
        _ => None,
    };
    let started = Instant::now();
    let result = handle_message(shared, streams, msg).await;
    if let Some(observe) = observe {
        observe(&shared.latency, started.elapsed());
    }
    result
}

async fn handle_message(
    shared: &Shared,
    streams: &mut ConnectionStreams,
    msg: BlockTransferMessage,
) -> Result<Bytes, JavaError> {
    use BlockTransferMessage as M;
    match msg {
        M::RegisterExecutor { app_id, exec_id, info } => {
            // Persisted before the (empty) reply: an acknowledged registration survives a crash.
            let executor = shared.registry.register_executor(&app_id, &exec_id, info).await?;
            info!(app = %app_id, exec = %exec_id, dirs = ?executor.info.local_dirs, "executor registered");
            Ok(Bytes::new())
        }
        M::FetchShuffleBlocks { app_id, exec_id, shuffle_id, map_ids, reduce_ids, batch_fetch_enabled } => {
            let blocks = shuffle_blocks(shuffle_id, &map_ids, &reduce_ids, batch_fetch_enabled)?;
            open_stream(shared, streams, app_id, exec_id, blocks)
        }
        M::OpenBlocks { app_id, exec_id, block_ids } => {
            open_stream(shared, streams, app_id, exec_id, open_blocks(&block_ids)?)
        }
        M::FetchShuffleBlockChunks { app_id, exec_id, chunk_ids, .. } => {
            // Served like the JVM service without a merge manager: a handle, then failing chunks.
            let n = chunk_ids.iter().map(Vec::len).sum();
            open_stream(shared, streams, app_id, exec_id, vec![BlockRef::Merged; n])
        }
        M::GetLocalDirsForExecutors { app_id, exec_ids } => local_dirs(shared, &app_id, exec_ids),
        M::RemoveBlocks { app_id, exec_id, block_ids } => remove_blocks(shared, &app_id, &exec_id, block_ids).await,
        M::DiagnoseCorruption { app_id, exec_id, shuffle_id, map_id, reduce_id, checksum, algorithm } => {
            let block = DiagnosedBlock { shuffle_id, map_id, reduce_id, checksum, algorithm };
            diagnose(shared, &app_id, &exec_id, block).await
        }
        M::RegisterDriver { app_id, heartbeat_timeout_ms } => {
            // The 2.2 Kubernetes fork announces each app this way; Spark 4 no longer sends it.
            info!(app = %app_id, heartbeat_timeout_ms, "driver registered");
            shared.registry.register_driver(Driver { app_id, heartbeat_timeout_ms }).await?;
            Ok(Bytes::new())
        }
        M::ShuffleServiceHeartbeat { app_id } => {
            debug!(app = %app_id, "driver heartbeat");
            Ok(Bytes::new())
        }
        M::FinalizeShuffleMerge { .. } | M::PushBlockStream { .. } => Err(merge_unsupported()),
        M::RemoveShuffleMerge { .. } => Err(java_error::unsupported("Cannot handle merged shuffle remove")),
        other => Err(java_error::unsupported(format_args!("Unexpected message: {}", describe(&other)))),
    }
}

/// The chunk list of an OpenBlocks request (the old fetch protocol, and rdd blocks).
fn open_blocks(block_ids: &[String]) -> Result<Vec<BlockRef>, JavaError> {
    Ok(match parse_open_blocks(block_ids)? {
        OpenBlocksPlan::Shuffle { shuffle_id, blocks } => blocks
            .into_iter()
            .map(|(map, r)| BlockRef::Shuffle { shuffle_id, map_id: map.into(), start: r, end: r + 1 })
            .collect(),
        OpenBlocksPlan::Rdd { blocks } => {
            blocks.into_iter().map(|(rdd_id, split_index)| BlockRef::Rdd { rdd_id, split_index }).collect()
        }
        OpenBlocksPlan::ShuffleChunk { chunks, .. } => vec![BlockRef::Merged; chunks.len()],
    })
}

async fn remove_blocks(
    shared: &Shared,
    app_id: &str,
    exec_id: &str,
    block_ids: Vec<String>,
) -> Result<Bytes, JavaError> {
    let executor = shared.registry.require(app_id, exec_id)?;
    let (store, asked) = (Arc::clone(&shared.store), block_ids.len());
    let removed = off_the_loop(move || store.remove_blocks(&executor.dirs, &block_ids)).await?;
    debug!(app = %app_id, exec = %exec_id, asked, removed, "blocks removed");
    Ok(BlockTransferMessage::BlocksRemoved { num_removed_blocks: removed as i32 }.encode())
}

/// The block a DiagnoseCorruption asks about, and the checksum the reader computed.
struct DiagnosedBlock {
    shuffle_id: i32,
    map_id: i64,
    reduce_id: i32,
    checksum: i64,
    algorithm: String,
}

async fn diagnose(shared: &Shared, app_id: &str, exec_id: &str, b: DiagnosedBlock) -> Result<Bytes, JavaError> {
    let executor = shared.registry.require(app_id, exec_id)?;
    let store = Arc::clone(&shared.store);
    let DiagnosedBlock { shuffle_id, map_id, reduce_id, checksum, algorithm } = b;
    let cause =
        off_the_loop(move || store.diagnose(&executor.dirs, shuffle_id, map_id, reduce_id, checksum, &algorithm))
            .await??;
    info!(app = %app_id, exec = %exec_id, shuffle_id, map_id, reduce_id, ?cause, "corruption diagnosed");
    Ok(BlockTransferMessage::CorruptionCause { cause: cause.code() }.encode())
}

/// The chunk list of a FetchShuffleBlocks request (spec §2.3): one chunk per (map, reduce), or
/// with batch fetch one chunk per map covering `[start, end)`.
fn shuffle_blocks(
    shuffle_id: i32,
    map_ids: &[i64],
    reduce_ids: &[Vec<i32>],
    batch: bool,
) -> Result<Vec<BlockRef>, JavaError> {
    if map_ids.len() != reduce_ids.len() {
        return Err(java_error::illegal_argument(format_args!(
            "FetchShuffleBlocks has {} map ids but {} reduce id lists",
            map_ids.len(),
            reduce_ids.len()
        )));
    }
    let mut blocks = Vec::new();
    for (&map_id, reduces) in map_ids.iter().zip(reduce_ids) {
        if batch {
            let &[start, end] = reduces.as_slice() else {
                return Err(java_error::illegal_argument(format_args!(
                    "batch fetch of map {map_id} needs [startReduceId, endReduceId], got {reduces:?}"
                )));
            };
            blocks.push(BlockRef::Shuffle { shuffle_id, map_id, start, end });
        } else {
            blocks.extend(reduces.iter().map(|&r| BlockRef::Shuffle {
                shuffle_id,
                map_id,
                start: r,
                end: r.saturating_add(1),
            }));
        }
    }
    Ok(blocks)
}

fn open_stream(
    shared: &Shared,
    streams: &mut ConnectionStreams,
    app_id: String,
    exec_id: String,
    blocks: Vec<BlockRef>,
) -> Result<Bytes, JavaError> {
    // Streams a client opens and never reads stay until its connection closes; bound them so
    // one connection cannot hold unbounded memory (the JVM service has no such limit).
    let limit = shared.settings.max_streams_per_connection;
    if streams.open_count() >= limit {
        return Err(java_error::illegal_state(format_args!(
            "Too many open streams on this connection ({limit}, agent.max.streams.per.connection)"
        )));
    }
    // The executor is looked up now but only reported missing when a chunk is asked for, as the
    // JVM service does (spec §3.2: errors of a fetch appear as chunk failures).
    let executor = shared.registry.executor(&app_id, &exec_id);
    if let Some(executor) = &executor {
        executor.touch();
    }
    let num_chunks = blocks.len() as i32;
    let stream_id = streams.open(Stream::new(app_id, exec_id, executor, blocks));
    Ok(BlockTransferMessage::StreamHandle { stream_id, num_chunks }.encode())
}

fn local_dirs(shared: &Shared, app_id: &str, exec_ids: Vec<String>) -> Result<Bytes, JavaError> {
    let mut seen = std::collections::HashSet::new();
    if let Some(dup) = exec_ids.iter().find(|id| !seen.insert(id.as_str())) {
        return Err(java_error::illegal_argument(format_args!("duplicate element: {dup}")));
    }
    if exec_ids.iter().any(|id| id == SHUFFLE_MERGER_ID) {
        return Err(merge_unsupported());
    }
    let mut num_local_dirs_by_exec = Vec::with_capacity(exec_ids.len());
    let mut all_local_dirs = Vec::new();
    for exec_id in &exec_ids {
        let executor = shared.registry.require(app_id, exec_id)?;
        num_local_dirs_by_exec.push(executor.info.local_dirs.len() as i32);
        all_local_dirs.extend(executor.info.local_dirs.iter().cloned());
    }
    Ok(BlockTransferMessage::LocalDirsForExecutors { exec_ids, num_local_dirs_by_exec, all_local_dirs }.encode())
}

/// Java's toString of a message that has no business reaching the service.
fn describe(msg: &BlockTransferMessage) -> String {
    match msg {
        BlockTransferMessage::UploadBlock { app_id, exec_id, block_id, metadata, block_data } => format!(
            "UploadBlock[appId={app_id},execId={exec_id},blockId={block_id},metadata size={},block size={}]",
            metadata.len(),
            block_data.len()
        ),
        other => other.name().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_fetch_makes_one_chunk_per_map_and_reduce_in_request_order() {
        let blocks = shuffle_blocks(0, &[0, 1, 4294967301], &[vec![0, 2], vec![3], vec![1]], false).unwrap();
        let got: Vec<(i64, i32, i32)> = blocks
            .iter()
            .map(|b| match b {
                BlockRef::Shuffle { map_id, start, end, .. } => (*map_id, *start, *end),
                _ => panic!(),
            })
            .collect();
        assert_eq!(got, vec![(0, 0, 1), (0, 2, 3), (1, 3, 4), (4294967301, 1, 2)]);
    }

    #[test]
    fn batch_fetch_makes_one_chunk_per_map() {
        let blocks = shuffle_blocks(0, &[0, 1], &[vec![0, 3], vec![1, 4]], true).unwrap();
        assert_eq!(blocks[1], BlockRef::Shuffle { shuffle_id: 0, map_id: 1, start: 1, end: 4 });
        assert!(shuffle_blocks(0, &[0], &[vec![0]], true).is_err());
        assert!(shuffle_blocks(0, &[0, 1], &[vec![0]], false).is_err());
    }
}
