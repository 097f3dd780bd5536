//! Streams opened by OpenBlocks / FetchShuffleBlocks / FetchShuffleBlockChunks (spec §3.2): a
//! lazy list of blocks, served one chunk at a time and strictly in order (`curChunk`).
//!
//! A stream belongs to the connection that opened it (spec §13, D2): the connection keeps its
//! streams in its own table, so the chunk path touches no shared lock. The shared
//! [`StreamOwners`] map only answers "which connection owns this id", to tell a client that asks
//! for another connection's stream why it is refused.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use crate::protocol::{java_error, JavaError};
use crate::registry::Executor;

/// One block of a stream, resolved to files only when its chunk is requested.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockRef {
    /// Reduce partitions [start, end) of one map output.
    Shuffle { shuffle_id: i32, map_id: i64, start: i32, end: i32 },
    /// A whole disk-persisted RDD block file.
    Rdd { rdd_id: i32, split_index: i32 },
    /// A push-merged chunk; the agent, like Spark's standalone service, has no merge manager.
    Merged,
}

impl BlockRef {
    /// How many shuffle blocks this chunk counts for (batch chunks count their range).
    pub fn block_count(&self) -> u64 {
        match self {
            BlockRef::Shuffle { start, end, .. } => (*end as i64 - *start as i64).max(1) as u64,
            _ => 1,
        }
    }
}

/// A stream's state. `blocks[cursor]` is served next.
#[derive(Debug)]
pub struct Stream {
    pub app_id: String,
    pub exec_id: String,
    /// None when the executor was not registered at open time: every chunk then fails with
    /// "Executor is not registered", as the JVM service reports it lazily.
    pub executor: Option<Arc<Executor>>,
    pub blocks: Vec<BlockRef>,
    /// Java's `curChunk`: the index the next request must carry. It advances even when
    /// producing the chunk fails.
    pub cur_chunk: i32,
    /// Java's iterator position: advances only when a block was produced, so a failed block is
    /// tried again for the next chunk index (spec §3.2, NOTES err_partial).
    pub cursor: usize,
}

impl Stream {
    pub fn new(app_id: String, exec_id: String, executor: Option<Arc<Executor>>, blocks: Vec<BlockRef>) -> Stream {
        Stream { app_id, exec_id, executor, blocks, cur_chunk: 0, cursor: 0 }
    }
}

/// What a chunk request resolves to before any file is touched.
#[derive(Debug)]
pub enum ChunkTurn {
    /// Serve this block; call [`ConnectionStreams::finish_chunk`] with the outcome.
    Serve { executor: Option<Arc<Executor>>, block: BlockRef },
    /// Refuse with this text.
    Refuse(JavaError),
}

/// Server-wide: stream id allocation and ownership.
#[derive(Debug)]
pub struct StreamOwners {
    next_id: AtomicI64,
    owners: Mutex<HashMap<i64, u64>>,
}

impl StreamOwners {
    /// `first_id` should be random and non-negative (Spark 4.3 starts at a random 63-bit value).
    pub fn new(first_id: i64) -> StreamOwners {
        StreamOwners { next_id: AtomicI64::new(first_id & i64::MAX), owners: Mutex::default() }
    }

    fn open(&self, conn_id: u64) -> i64 {
        // Wrapping past i64::MAX restarts at 0: ids stay non-negative and unique among live streams
        // for any realistic lifetime.
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) & i64::MAX;
        self.lock().insert(id, conn_id);
        id
    }

    fn close(&self, ids: impl Iterator<Item = i64>) {
        let mut owners = self.lock();
        ids.for_each(|id| {
            owners.remove(&id);
        });
    }

    fn owner(&self, id: i64) -> Option<u64> {
        self.lock().get(&id).copied()
    }

    /// Number of live streams on the server.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, u64>> {
        crate::sync::lock(&self.owners)
    }
}

/// One connection's streams.
#[derive(Debug)]
pub struct ConnectionStreams {
    conn_id: u64,
    owners: Arc<StreamOwners>,
    streams: HashMap<i64, Stream>,
}

impl ConnectionStreams {
    pub fn new(conn_id: u64, owners: Arc<StreamOwners>) -> ConnectionStreams {
        ConnectionStreams { conn_id, owners, streams: HashMap::new() }
    }

    /// Streams open on this connection.
    pub fn open_count(&self) -> usize {
        self.streams.len()
    }

    /// Registers a stream and returns its id.
    pub fn open(&mut self, stream: Stream) -> i64 {
        let id = self.owners.open(self.conn_id);
        self.streams.insert(id, stream);
        id
    }

    /// Checks a chunk request against the stream's state (spec §3.3 and §13).
    pub fn start_chunk(&mut self, stream_id: i64, chunk_index: i32) -> ChunkTurn {
        let Some(stream) = self.streams.get_mut(&stream_id) else {
            return ChunkTurn::Refuse(match self.owners.owner(stream_id) {
                Some(owner) if owner != self.conn_id => java_error::stream_of_another_connection(stream_id),
                _ => java_error::unknown_stream(),
            });
        };
        if chunk_index != stream.cur_chunk {
            return ChunkTurn::Refuse(java_error::illegal_state(format_args!(
                "Received out-of-order chunk index {chunk_index} (expected {})",
                stream.cur_chunk
            )));
        }
        let Some(block) = stream.blocks.get(stream.cursor).copied() else {
            return ChunkTurn::Refuse(java_error::illegal_state(format_args!(
                "Requested chunk index beyond end {chunk_index}"
            )));
        };
        stream.cur_chunk += 1;
        ChunkTurn::Serve { executor: stream.executor.clone(), block }
    }

    /// The (app, executor) ids a stream was opened for, for error texts.
    pub fn ids(&self, stream_id: i64) -> (String, String) {
        self.streams.get(&stream_id).map(|s| (s.app_id.clone(), s.exec_id.clone())).unwrap_or_default()
    }

    /// Records the outcome of the chunk started last: on `advanced`, the stream moves to its
    /// next block and disappears once its last block has been handed out.
    pub fn finish_chunk(&mut self, stream_id: i64, advanced: bool) {
        if !advanced {
            return;
        }
        let done = match self.streams.get_mut(&stream_id) {
            Some(stream) => {
                stream.cursor += 1;
                stream.cursor >= stream.blocks.len()
            }
            None => false,
        };
        if done {
            self.streams.remove(&stream_id);
            self.owners.close(std::iter::once(stream_id));
        }
    }
}

impl Drop for ConnectionStreams {
    /// A closed connection's streams go with it (Java: connectionTerminated).
    fn drop(&mut self) {
        self.owners.close(self.streams.keys().copied());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shuffle(n: i32) -> Vec<BlockRef> {
        (0..n).map(|r| BlockRef::Shuffle { shuffle_id: 0, map_id: 0, start: r, end: r + 1 }).collect()
    }

    fn refused(turn: ChunkTurn) -> String {
        match turn {
            ChunkTurn::Refuse(error) => error.to_string(),
            ChunkTurn::Serve { .. } => panic!("served"),
        }
    }

    #[test]
    fn chunks_must_come_in_order_and_the_stream_ends_after_its_last() {
        let owners = Arc::new(StreamOwners::new(42));
        let mut conn = ConnectionStreams::new(1, owners.clone());
        let id = conn.open(Stream::new("a".into(), "0".into(), None, shuffle(2)));
        assert_eq!(
            refused(conn.start_chunk(id, 1)),
            "java.lang.IllegalStateException: Received out-of-order chunk index 1 (expected 0)"
        );
        assert!(matches!(conn.start_chunk(id, 0), ChunkTurn::Serve { .. }));
        conn.finish_chunk(id, true);
        assert!(matches!(conn.start_chunk(id, 1), ChunkTurn::Serve { .. }));
        conn.finish_chunk(id, true);
        assert_eq!(refused(conn.start_chunk(id, 2)), "java.lang.IllegalArgumentException: Unknown stream ID.");
        assert!(owners.is_empty());
    }

    #[test]
    fn a_failed_chunk_consumes_its_index_but_not_its_block() {
        let owners = Arc::new(StreamOwners::new(0));
        let mut conn = ConnectionStreams::new(1, owners);
        let id = conn.open(Stream::new("a".into(), "0".into(), None, shuffle(2)));
        let ChunkTurn::Serve { block: first, .. } = conn.start_chunk(id, 0) else { panic!() };
        conn.finish_chunk(id, false);
        let ChunkTurn::Serve { block: again, .. } = conn.start_chunk(id, 1) else { panic!() };
        assert_eq!(first, again);
    }

    #[test]
    fn another_connections_stream_is_refused_with_a_security_exception() {
        let owners = Arc::new(StreamOwners::new(7));
        let mut a = ConnectionStreams::new(1, owners.clone());
        let mut b = ConnectionStreams::new(2, owners.clone());
        let id = a.open(Stream::new("a".into(), "0".into(), None, shuffle(1)));
        assert!(refused(b.start_chunk(id, 0))
            .starts_with("java.lang.SecurityException: Channel not authorized to read stream"));
        drop(a);
        assert_eq!(refused(b.start_chunk(id, 0)), "java.lang.IllegalArgumentException: Unknown stream ID.");
    }

    #[test]
    fn an_empty_stream_refuses_chunk_zero_as_beyond_end() {
        let mut conn = ConnectionStreams::new(1, Arc::new(StreamOwners::new(0)));
        let id = conn.open(Stream::new("a".into(), "0".into(), None, vec![]));
        assert_eq!(
            refused(conn.start_chunk(id, 0)),
            "java.lang.IllegalStateException: Requested chunk index beyond end 0"
        );
    }
}
