//! One client connection: decode frames, handle each request in arrival order, write the
//! responses in that order (spec §1.6). Pipelined requests are all handled before the socket is
//! read again, so their small responses leave together.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::dispatch::{self, Caller, RpcReply};
use super::handshake::{self, Outcome, Peer, Step};
use super::metrics::ErrorKind;
use super::outbox::{Outbox, QueueError};
use super::placement::{is_data_request, Placement};
use super::streams::{BlockRef, ChunkTurn, ConnectionStreams};
use super::transport::Transport;
use super::Shared;
use crate::auth::{Access, Handshake, Refusal};
use crate::protocol::block_id::{java_parse_int, java_split};
use crate::protocol::frame::JAVA_MAX_FRAME;
use crate::protocol::{java_error, FrameCodec, FrameError, Inbound, JavaClass, JavaError, Message, StreamChunkId};
use crate::registry::Executor;
use crate::store::{MapOutput, Segment, StoreError};

/// Why a connection ended, for the log line and the error counters.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionEnd {
    /// The peer closed its side.
    #[error("closed by peer")]
    PeerClosed,
    /// Nothing was read or written for the idle timeout.
    #[error("idle for {0:?}")]
    Idle(std::time::Duration),
    /// The agent is shutting down.
    #[error("shutting down")]
    Shutdown,
    /// A frame could not be decoded; Java closes the connection without a reply.
    #[error("bad frame: {0}")]
    BadFrame(#[from] FrameError),
    /// The socket failed while reading or writing.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// A request we cannot answer without desynchronising the stream (spec §3.1 UploadStream).
    #[error("{0}")]
    Refused(String),
    /// Too many chunks are being transferred server-wide (`spark.shuffle.maxChunksBeingTransferred`).
    #[error("too many chunks being transferred ({0})")]
    ChunkLimit(u64),
    /// A handshake failed in a way after which Spark closes the connection (AuthEngine).
    #[error("authentication failed: {0}")]
    AuthFailed(String),
    /// A large request frame found no room in the node-wide budget for frames being received
    /// (`agent.max.pending.frame.bytes`) within the idle timeout.
    #[error("no room for a {len}-byte request frame in agent.max.pending.frame.bytes after waiting {waited:?}")]
    FrameBudget { len: usize, waited: std::time::Duration },
    /// On a GCM connection, bytes that are no message of the session (bad tag, bad length).
    #[error("session cipher: {0}")]
    Cipher(#[from] crate::auth::GcmError),
    /// TLS failed (handshake, record), or a plaintext client came to a TLS-only port.
    #[error("tls: {0}")]
    Tls(String),
}

impl ConnectionEnd {
    /// The `errors_total` kind this end counts as; None for the routine ends (the peer closed,
    /// the agent stops). The one classification both the counters and the log lines use.
    pub fn error_kind(&self) -> Option<ErrorKind> {
        Some(match self {
            ConnectionEnd::PeerClosed | ConnectionEnd::Shutdown => return None,
            ConnectionEnd::Idle(_) => ErrorKind::IdleTimeout,
            ConnectionEnd::BadFrame(_) | ConnectionEnd::Cipher(_) => ErrorKind::BadFrame,
            ConnectionEnd::Io(_) => ErrorKind::Io,
            ConnectionEnd::Refused(_) | ConnectionEnd::AuthFailed(_) => ErrorKind::Refused,
            ConnectionEnd::ChunkLimit(_) => ErrorKind::ChunkLimit,
            ConnectionEnd::FrameBudget { .. } => ErrorKind::FrameBudget,
            ConnectionEnd::Tls(_) => ErrorKind::Tls,
        })
    }
}

struct Connection {
    shared: Arc<Shared>,
    streams: ConnectionStreams,
    outbox: Outbox,
    /// Chunks queued in the outbox, counted in `shared.chunks_in_flight` until written.
    queued_chunks: u64,
    /// When each chunk queued in the outbox was requested, for the fetch latency histogram.
    /// Bounded like the outbox itself; its capacity is reused, so no allocation per chunk.
    fetch_starts: Vec<Instant>,
    /// The map output the last shuffle block came from (see [`Connection::shuffle_segment`]).
    last_map: Option<MapMemo>,
    /// Served on the control runtime: data requests stop handling for a hand-over.
    control: bool,
    /// Whom the connection acts for; with `spark.authenticate`, nobody until a handshake.
    peer: Peer,
    /// Whether the client speaks TLS: an app whose pods use TLS is not served without it.
    over_tls: bool,
}

/// The map output the last shuffle block came from. It holds the executor it is keyed by, so
/// the key cannot be a freed registration's address reused by a new one.
struct MapMemo {
    executor: Arc<Executor>,
    shuffle_id: i32,
    map_id: i64,
    output: MapOutput,
}

/// Capacity `fetch_starts` keeps between flushes (a batch of 4 KiB blocks); a burst past it
/// is given back, so an idle connection holds little.
const FETCH_STARTS_KEPT: usize = 64;

/// How [`serve_from`] stopped.
pub(super) enum Served {
    End(ConnectionEnd),
    HandOver(Box<HandOver>),
}

/// A connection moving to the data runtime at its first data request: its bytes, whom it
/// acts for, and that request.
pub(super) struct HandOver {
    pub(super) transport: Transport,
    pub(super) peer: Peer,
    pub(super) first: Message,
    pub(super) data: tokio::runtime::Handle,
}

/// Who a connection is, for its whole life on either runtime.
#[derive(Debug, Clone)]
pub(super) struct Session {
    pub(super) conn_id: u64,
    pub(super) shutdown: CancellationToken,
}

/// Why handling stopped: the connection ends, or (on the control runtime) `Message` is the
/// first data request and the connection moves.
enum Stop {
    End(ConnectionEnd),
    HandOver(Message),
}

impl From<ConnectionEnd> for Stop {
    fn from(end: ConnectionEnd) -> Stop {
        Stop::End(end)
    }
}

pub(super) async fn serve_from(
    shared: Arc<Shared>,
    mut transport: Transport,
    session: &Session,
    placement: Placement,
    first: Option<(Peer, Message)>,
) -> Served {
    let (peer, first) = match first {
        Some((peer, first)) => (peer, Some(first)),
        None => (Peer::new(&shared.access), None),
    };
    let idle = shared.settings.idle_timeout;
    let mut conn = Connection {
        streams: ConnectionStreams::new(session.conn_id, Arc::clone(&shared.streams)),
        outbox: Outbox::new(shared.settings.coalesce_max_bytes),
        queued_chunks: 0,
        fetch_starts: Vec::new(),
        last_map: None,
        control: matches!(placement, Placement::Control { .. }),
        over_tls: transport.is_tls(),
        peer,
        shared,
    };
    let mut codec = FrameCodec::new(conn.shared.settings.max_frame_bytes);
    let mut first = first;
    let stop = loop {
        if let Some(msg) = first.take() {
            if let Err(stop) = conn.handle_one(msg, &mut transport).await {
                break stop;
            }
        }
        if let Err(stop) = conn.handle_buffered(&mut codec, &mut transport).await {
            break stop;
        }
        if let Err(e) = conn.flush(&mut transport).await {
            break e.into();
        }
        // Waits (not reading) while a large frame finds no budget: bounded by the idle timeout.
        let budget = &conn.shared.frame_budget;
        if let Err(end) = transport.input.make_room(&codec, budget, idle, &session.shutdown).await {
            break end.into();
        }
        if let Err(end) = transport.read_more(idle, &session.shutdown).await {
            break end.into();
        }
    };
    conn.release_queued();
    match (stop, placement) {
        (Stop::HandOver(first), Placement::Control { data }) => {
            Served::HandOver(Box::new(HandOver { transport, peer: conn.peer, first, data }))
        }
        (Stop::HandOver(_), Placement::Data) => {
            Served::End(ConnectionEnd::Refused("handed over on the data runtime".into()))
        }
        (Stop::End(end), _) => {
            // close_notify, so a TLS client sees an orderly end rather than a cut.
            transport.close(idle.min(std::time::Duration::from_secs(1))).await;
            Served::End(end)
        }
    }
}

impl Connection {
    /// Handles every complete frame in `input`, flushing whenever the outbox fills.
    async fn handle_buffered(&mut self, codec: &mut FrameCodec, transport: &mut Transport) -> Result<(), Stop> {
        loop {
            // Decoded one frame at a time from the transport: a handshake that installs the
            // session cipher decrypts what follows in the buffer before the next decode.
            let msg = match codec.decode(&mut transport.input.buf) {
                Ok(Some(Inbound::Message(msg))) => msg,
                // Bodies only follow UploadStream, after which we close; nothing to do with them.
                Ok(Some(Inbound::Body(_))) => continue,
                Ok(None) => return Ok(()),
                Err(e) => {
                    // Answers to the requests before the bad frame still go out, as on the JVM.
                    self.flush(transport).await?;
                    return Err(ConnectionEnd::from(e).into());
                }
            };
            self.handle_one(msg, transport).await?;
        }
    }

    /// Handles one request, or stops for a hand-over to the data runtime.
    async fn handle_one(&mut self, msg: Message, transport: &mut Transport) -> Result<(), Stop> {
        if self.control && is_data_request(&msg) {
            // Earlier replies leave from here, so the order on the wire is kept.
            self.flush(transport).await?;
            return Err(Stop::HandOver(msg));
        }
        if let Err(end) = self.handle(msg, transport).await {
            // Replies queued before the request that ends the connection still go out, as
            // the JVM service writes each reply as soon as it is handled.
            self.flush(transport).await?;
            return Err(end.into());
        }
        if self.outbox.should_flush() {
            self.flush(transport).await?;
        }
        Ok(())
    }

    async fn flush(&mut self, transport: &mut Transport) -> Result<(), ConnectionEnd> {
        if self.outbox.is_empty() {
            return Ok(());
        }
        self.last_map = None;
        let idle = self.shared.settings.idle_timeout;
        let (sink, cipher) = transport.writer();
        let result = Box::pin(self.outbox.flush(sink, cipher, idle, &self.shared.disk)).await;
        let copied = self.outbox.take_copied() + transport.take_copied();
        self.shared.counters.bytes_copied.fetch_add(copied, Ordering::Relaxed);
        self.release_queued();
        let bytes = match result {
            Ok(bytes) => bytes,
            Err(e) => {
                // Not delivered: the error counters say so, the latency histogram does not.
                self.fetch_starts.clear();
                return Err(e.into());
            }
        };
        self.shared.counters.bytes_sent.fetch_add(bytes, Ordering::Relaxed);
        // Every chunk of this flush is written now; pipelined ones share this end time.
        let written = Instant::now();
        for started in self.fetch_starts.drain(..) {
            self.shared.latency.observe_fetch(written.saturating_duration_since(started));
        }
        self.fetch_starts.shrink_to(FETCH_STARTS_KEPT);
        Ok(())
    }

    fn release_queued(&mut self) {
        self.shared.chunks_in_flight.fetch_sub(self.queued_chunks, Ordering::Relaxed);
        self.queued_chunks = 0;
    }

    async fn handle(&mut self, msg: Message, transport: &mut Transport) -> Result<(), ConnectionEnd> {
        // Known once the first bytes are read, before any message.
        self.over_tls = transport.is_tls();
        if !self.peer.is_authenticated() {
            match msg {
                Message::RpcRequest { request_id, body } if Handshake::is_tagged(&body) => {
                    return Box::pin(self.handshake(request_id, &body, transport)).await
                }
                // Per-app mode: requests for apps without authentication are served (each is
                // checked in dispatch).
                msg if self.shared.access.serves_unauthenticated() => return self.serve(msg).await,
                msg => return self.handle_unauthenticated(msg, transport).await,
            }
        }
        self.serve(msg).await
    }

    async fn serve(&mut self, msg: Message) -> Result<(), ConnectionEnd> {
        match msg {
            Message::RpcRequest { request_id, body } => {
                // Boxed here and below: a connection's future is as large as its largest state,
                // held for the connection's life, and an RPC's is the largest (10,000 of them).
                let reply = match Box::pin(dispatch::rpc(
                    &self.shared,
                    &mut self.streams,
                    Caller { peer: &self.peer, over_tls: self.over_tls },
                    &body,
                ))
                .await
                {
                    RpcReply::Ok(body) => Message::RpcResponse { request_id, body },
                    RpcReply::Fail(error) => {
                        self.shared.counters.rpc_failures.fetch_add(1, Ordering::Relaxed);
                        Message::RpcFailure { request_id, error: error.to_string() }
                    }
                };
                self.outbox.message(&reply);
            }
            Message::OneWayMessage { body } => {
                Box::pin(dispatch::one_way(
                    &self.shared,
                    &mut self.streams,
                    Caller { peer: &self.peer, over_tls: self.over_tls },
                    &body,
                ))
                .await
            }
            Message::ChunkFetchRequest(chunk) => self.chunk(chunk).await?,
            Message::StreamRequest { stream_id } => self.stream(stream_id).await?,
            Message::UploadStream { request_id, .. } => {
                // The body cannot be skipped safely, so after the failure the connection closes
                // (spec §3.1); the standalone JVM service has no merge manager either.
                let error = dispatch::merge_unsupported().to_string();
                self.outbox.message(&Message::RpcFailure { request_id, error: error.clone() });
                return Err(ConnectionEnd::Refused(error));
            }
            Message::MergedBlockMetaRequest { request_id, app_id, .. } => {
                let error = match Box::pin(dispatch::authorize(
                    &self.shared,
                    Caller { peer: &self.peer, over_tls: self.over_tls },
                    &app_id,
                ))
                .await
                {
                    Ok(()) => dispatch::merge_unsupported(),
                    Err(refused) => refused,
                };
                self.outbox.message(&Message::RpcFailure { request_id, error: error.to_string() });
            }
            // Server-to-client messages have no meaning here; Java's request handler ignores
            // responses arriving at a server, and so do we (the connection stays usable).
            other => debug!(type_id = other.type_id(), "ignoring a response message sent to the server"),
        }
        Ok(())
    }

    /// Before authentication only handshakes are served (fail closed, as Spark 4.3): every
    /// RpcRequest is taken as a handshake message, everything else is refused.
    async fn handle_unauthenticated(&mut self, msg: Message, transport: &mut Transport) -> Result<(), ConnectionEnd> {
        let refused = |call| handshake::unauthenticated(call).to_string();
        let reply = match msg {
            Message::RpcRequest { request_id, body } => {
                return Box::pin(self.handshake(request_id, &body, transport)).await
            }
            // No reply channel: Spark throws and logs; so do we (at debug).
            Message::OneWayMessage { .. } => {
                debug!("one-way message before authentication dropped");
                None
            }
            Message::ChunkFetchRequest(chunk) => {
                Some(Message::ChunkFetchFailure { chunk, error: refused("fetchChunk") })
            }
            Message::StreamRequest { stream_id } => {
                Some(Message::StreamFailure { stream_id, error: refused("openStream") })
            }
            Message::UploadStream { request_id, .. } => {
                let error = refused("receiveStream");
                self.outbox.message(&Message::RpcFailure { request_id, error: error.clone() });
                self.shared.counters.handshake(Outcome::Unauthenticated);
                return Err(ConnectionEnd::Refused(error));
            }
            Message::MergedBlockMetaRequest { request_id, .. } => {
                Some(Message::RpcFailure { request_id, error: refused("receiveMergeBlockMetaReq") })
            }
            other => {
                debug!(type_id = other.type_id(), "ignoring a response message sent to the server");
                return Ok(());
            }
        };
        self.shared.counters.handshake(Outcome::Unauthenticated);
        if let Some(reply) = reply {
            self.outbox.message(&reply);
        }
        Ok(())
    }

    /// One handshake message. After an AuthEngine success its reply leaves in plaintext, and
    /// the session cipher covers every byte after it.
    async fn handshake(
        &mut self,
        request_id: i64,
        body: &[u8],
        transport: &mut Transport,
    ) -> Result<(), ConnectionEnd> {
        let parsed = Handshake::decode(&mut &body[..]);
        let policy = match (&self.shared.access, &parsed) {
            (Access::Open, _) => {
                return Err(ConnectionEnd::Refused("a handshake without an authentication policy".into()))
            }
            (Access::Shared(policy), _) => Ok(Arc::clone(policy)),
            // Per app: waits (bounded) for an app whose pod the watch has not delivered yet.
            (access, Ok(handshake)) => access.policy_for(handshake.app_id()).await,
            (_, Err(_)) => Err(Refusal::UnknownApp),
        };
        match self.peer.handshake(parsed, policy) {
            Step::Reply(body) => self.outbox.message(&Message::RpcResponse { request_id, body }),
            Step::Authenticated { reply, app_id, ciphers } => {
                if let Some(started) = self.peer.started() {
                    self.shared.latency.handshake.observe(started.elapsed().as_secs_f64());
                }
                self.shared.counters.handshake(Outcome::Ok);
                debug!(app = %app_id, encrypted = ciphers.is_some(), "authenticated");
                self.peer = Peer::App(app_id);
                self.outbox.message(&Message::RpcResponse { request_id, body: reply });
                if let Some(ciphers) = ciphers {
                    self.flush(transport).await?;
                    transport.install(ciphers)?;
                }
            }
            Step::Fail { error, close, outcome } => {
                self.shared.counters.handshake(outcome);
                self.shared.counters.rpc_failures.fetch_add(1, Ordering::Relaxed);
                self.outbox.message(&Message::RpcFailure { request_id, error: error.to_string() });
                if close {
                    return Err(ConnectionEnd::AuthFailed(outcome.label().to_string()));
                }
            }
        }
        Ok(())
    }

    /// Checks the server-wide limit on chunks being transferred (spec §3.3 step 1): over it,
    /// the connection is closed without a reply and the client retries.
    fn admit_chunk(&mut self) -> Result<(), ConnectionEnd> {
        let limit = self.shared.settings.max_chunks_being_transferred;
        let now = self.shared.chunks_in_flight.fetch_add(1, Ordering::Relaxed);
        self.queued_chunks += 1;
        if now >= limit {
            // The WARN comes with the connection's end, rate-limited there (server::run).
            debug!(in_flight = now, limit, "too many chunks being transferred; closing the connection");
            return Err(ConnectionEnd::ChunkLimit(limit));
        }
        Ok(())
    }

    async fn chunk(&mut self, chunk: StreamChunkId) -> Result<(), ConnectionEnd> {
        let started = Instant::now();
        self.admit_chunk()?;
        let failure = |error: JavaError| Message::ChunkFetchFailure { chunk, error: error.to_string() };
        let outcome = self.resolve(chunk.stream_id, chunk.chunk_index).await;
        match outcome {
            Ok(Some(segment)) if segment.len > (JAVA_MAX_FRAME - 21) as u64 => {
                // No frame can carry it: Java clients fetch such blocks as streams.
                self.fail(failure(java_error::illegal_argument(format_args!(
                    "Block of {} bytes is too large for a chunk; fetch it as a stream",
                    segment.len
                ))));
            }
            Ok(Some(segment)) => {
                let header = Message::ChunkFetchSuccess { chunk, body: bytes::Bytes::new() };
                self.send_segment(&header, segment, true, started, failure).await
            }
            Ok(None) => self.fail(failure(java_error::illegal_state("Chunk was not found"))),
            Err(error) => self.fail(failure(error)),
        }
        Ok(())
    }

    async fn stream(&mut self, stream_id: String) -> Result<(), ConnectionEnd> {
        let started = Instant::now();
        self.admit_chunk()?;
        let failure = |error: String| Message::StreamFailure { stream_id: stream_id.clone(), error };
        let outcome = match parse_stream_chunk_id(&stream_id) {
            Ok((id, index)) => self.resolve(id, index).await,
            Err(e) => Err(e),
        };
        match outcome {
            Ok(Some(segment)) => {
                let header = Message::StreamResponse { stream_id: stream_id.clone(), byte_count: segment.len as i64 };
                self.send_segment(&header, segment, false, started, |e| failure(e.to_string())).await
            }
            // Java's StreamRequest path sends this plain text (no exception) for a missing buffer.
            Ok(None) => self.fail(failure(format!("Stream '{stream_id}' was not found."))),
            Err(error) => self.fail(failure(error.to_string())),
        }
        Ok(())
    }

    async fn send_segment(
        &mut self,
        header: &Message,
        segment: Segment,
        in_frame: bool,
        started: Instant,
        failure: impl Fn(JavaError) -> Message,
    ) {
        let len = segment.len;
        match self.outbox.message_with_segment(header, segment, in_frame, &self.shared.disk).await {
            Ok(()) => {
                self.fetch_starts.push(started);
                self.shared.counters.chunks_served.fetch_add(1, Ordering::Relaxed);
                self.shared.counters.chunk_bytes_served.fetch_add(len, Ordering::Relaxed);
            }
            Err(QueueError::Read { path, error }) => self.fail(failure(JavaError::new(
                JavaClass::Io,
                format_args!("Failed to read {}: {error}", path.display()),
            ))),
            Err(QueueError::Truncated { path, expected, actual }) => {
                self.fail(failure(StoreError::TruncatedData { path: path.to_path_buf(), expected, actual }.into()))
            }
        }
    }

    fn fail(&mut self, msg: Message) {
        self.shared.counters.chunk_failures.fetch_add(1, Ordering::Relaxed);
        self.outbox.message(&msg);
    }

    /// A shuffle block's segment. Consecutive blocks of one map output (the usual shape of a
    /// fetch) reuse its resolved index and data file; the memo lives until the next flush, so
    /// it never outlives one batch of pipelined requests.
    async fn shuffle_segment(
        &mut self,
        ex: &Arc<Executor>,
        shuffle_id: i32,
        map_id: i64,
        start: i32,
        end: i32,
    ) -> Result<Segment, JavaError> {
        if let Some(memo) = &self.last_map {
            if Arc::ptr_eq(&memo.executor, ex) && memo.shuffle_id == shuffle_id && memo.map_id == map_id {
                return memo.output.segment(start, end).map_err(JavaError::from);
            }
        }
        let store = &self.shared.store;
        let output = match store.cached_map_output(&ex.dirs, shuffle_id, map_id) {
            Some(output) => Ok(output),
            // Reading the index and opening the data file may wait for the disk.
            None => {
                let (store, ex) = (Arc::clone(store), Arc::clone(ex));
                self.off_the_loop(move || Ok(store.map_output(&ex.dirs, shuffle_id, map_id))).await?
            }
        };
        match output {
            Ok(output) => {
                let segment = output.segment(start, end).map_err(JavaError::from);
                self.last_map = Some(MapMemo { executor: Arc::clone(ex), shuffle_id, map_id, output });
                segment
            }
            // The one-block path reports errors in Java's order (reduce id before data file).
            Err(_) => {
                let (store, ex) = (Arc::clone(&self.shared.store), Arc::clone(ex));
                self.off_the_loop(move || Ok(store.shuffle_segment(&ex.dirs, shuffle_id, map_id, start, end)))
                    .await?
                    .map_err(JavaError::from)
            }
        }
    }

    /// Store work that may wait for the disk, on the blocking pool.
    async fn off_the_loop<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
    ) -> Result<T, JavaError> {
        self.shared.disk.run(work).await.map_err(|e| JavaError::new(JavaClass::Io, format_args!("{e}")))
    }

    /// Resolves the next chunk of a stream to an open file segment; None for a chunk whose
    /// buffer does not exist (a missing rdd block file), which the two request kinds report
    /// differently.
    async fn resolve(&mut self, stream_id: i64, chunk_index: i32) -> Result<Option<Segment>, JavaError> {
        let (executor, block) = match self.streams.start_chunk(stream_id, chunk_index) {
            ChunkTurn::Refuse(text) => return Err(text),
            ChunkTurn::Serve { executor, block } => (executor, block),
        };
        let result = match (&executor, block) {
            (None, _) => {
                let (app_id, exec_id) = self.streams.ids(stream_id);
                Err(java_error::executor_not_registered(&app_id, &exec_id))
            }
            (Some(ex), BlockRef::Shuffle { shuffle_id, map_id, start, end }) => {
                self.shuffle_segment(ex, shuffle_id, map_id, start, end).await.map(Some)
            }
            (Some(ex), BlockRef::Rdd { rdd_id, split_index }) => {
                match self.shared.store.cached_rdd_segment(&ex.dirs, rdd_id, split_index) {
                    Some(segment) => Ok(Some(segment)),
                    None => {
                        let (store, ex) = (Arc::clone(&self.shared.store), Arc::clone(ex));
                        match self.off_the_loop(move || Ok(store.rdd_segment(&ex.dirs, rdd_id, split_index))).await {
                            Ok(found) => found.map_err(JavaError::from),
                            Err(e) => Err(e),
                        }
                    }
                }
            }
            (Some(_), BlockRef::Merged) => Err(dispatch::merge_unsupported()),
        };
        // Java's shuffle iterators do not advance past a block that failed; the rdd iterator
        // advances even when the file is missing (it yields a null buffer).
        self.streams.finish_chunk(stream_id, result.is_ok());
        if result.is_ok() {
            self.shared.counters.blocks_served.fetch_add(block.block_count(), Ordering::Relaxed);
        }
        result
    }
}

/// `"<streamId>_<chunkIndex>"`, parsed as Java does (Long.parseLong, Integer.parseInt).
fn parse_stream_chunk_id(text: &str) -> Result<(i64, i32), JavaError> {
    let parts = java_split(text);
    let first = parts.first().copied().unwrap_or("");
    let stream_id = first.parse::<i64>().map_err(|_| java_error::number_format(first))?;
    let Some(index) = parts.get(1) else {
        return Err(java_error::array_index(1, parts.len()));
    };
    Ok((stream_id, java_parse_int(index)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_chunk_ids_parse_like_java() {
        assert_eq!(parse_stream_chunk_id("2671724288809882581_2"), Ok((2671724288809882581, 2)));
        assert_eq!(parse_stream_chunk_id("not-a-stream"), Err(java_error::number_format("not-a-stream")));
        assert_eq!(parse_stream_chunk_id("12"), Err(java_error::array_index(1, 1)));
    }
}
