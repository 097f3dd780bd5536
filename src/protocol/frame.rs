//! Spark's transport layer (spark-network-common, spec §1): the `i64 frameLength | u8 type |
//! header | body` frames and the messages they carry, with a tokio-util codec.
//!
//! Two bodies travel *outside* the frame (StreamResponse, UploadStream): the codec hands them on
//! as [`Inbound::Body`] pieces until the announced byte count is consumed, then framing resumes.
//! An incomplete frame is `Ok(None)`; a frame that can never be valid is an error, and the
//! connection that sent it is closed (that is what Spark's JVM service does, spec §13).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use super::wire::{self, WireError};

/// Bytes of `frameLength` + type byte: every frame starts with these 9.
const FRAME_PREFIX: usize = 9;

/// Java's TransportFrameDecoder refuses frames whose length (minus its own 8 bytes) is not below
/// Integer.MAX_VALUE; nothing larger can ever be valid on the wire.
pub const JAVA_MAX_FRAME: usize = i32::MAX as usize - 1;

/// A chunk of a stream: `i64 streamId`, `i32 chunkIndex` (spec §1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StreamChunkId {
    pub stream_id: i64,
    pub chunk_index: i32,
}

impl std::fmt::Display for StreamChunkId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Java's StreamChunkId.toString, which clients quote in their errors.
        write!(f, "StreamChunkId[streamId={},chunkIndex={}]", self.stream_id, self.chunk_index)
    }
}

/// One transport message (Message.Type, spec §1.2). Bodies that travel in the frame are held
/// here; out-of-frame bodies are announced by their byte count only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    ChunkFetchRequest(StreamChunkId),
    ChunkFetchSuccess {
        chunk: StreamChunkId,
        body: Bytes,
    },
    ChunkFetchFailure {
        chunk: StreamChunkId,
        error: String,
    },
    RpcRequest {
        request_id: i64,
        body: Bytes,
    },
    RpcResponse {
        request_id: i64,
        body: Bytes,
    },
    RpcFailure {
        request_id: i64,
        error: String,
    },
    StreamRequest {
        stream_id: String,
    },
    /// `byte_count` raw bytes follow the frame.
    StreamResponse {
        stream_id: String,
        byte_count: i64,
    },
    StreamFailure {
        stream_id: String,
        error: String,
    },
    OneWayMessage {
        body: Bytes,
    },
    /// `body_byte_count` raw bytes follow the frame.
    UploadStream {
        request_id: i64,
        meta: Bytes,
        body_byte_count: i64,
    },
    MergedBlockMetaRequest {
        request_id: i64,
        app_id: String,
        shuffle_id: i32,
        shuffle_merge_id: i32,
        reduce_id: i32,
    },
    MergedBlockMetaSuccess {
        request_id: i64,
        num_chunks: i32,
        body: Bytes,
    },
}

impl Message {
    /// The Message.Type id written after the frame length.
    pub fn type_id(&self) -> u8 {
        match self {
            Message::ChunkFetchRequest(_) => 0,
            Message::ChunkFetchSuccess { .. } => 1,
            Message::ChunkFetchFailure { .. } => 2,
            Message::RpcRequest { .. } => 3,
            Message::RpcResponse { .. } => 4,
            Message::RpcFailure { .. } => 5,
            Message::StreamRequest { .. } => 6,
            Message::StreamResponse { .. } => 7,
            Message::StreamFailure { .. } => 8,
            Message::OneWayMessage { .. } => 9,
            Message::UploadStream { .. } => 10,
            Message::MergedBlockMetaRequest { .. } => 11,
            Message::MergedBlockMetaSuccess { .. } => 12,
        }
    }

    /// Header bytes after the type byte (spec §1.3).
    fn header_len(&self) -> usize {
        match self {
            Message::ChunkFetchRequest(_) | Message::ChunkFetchSuccess { .. } => 12,
            Message::ChunkFetchFailure { error, .. } => 12 + wire::string_len(error),
            Message::RpcRequest { .. } | Message::RpcResponse { .. } => 12,
            Message::RpcFailure { error, .. } => 8 + wire::string_len(error),
            Message::StreamRequest { stream_id } => wire::string_len(stream_id),
            Message::StreamResponse { stream_id, .. } => wire::string_len(stream_id) + 8,
            Message::StreamFailure { stream_id, error } => wire::string_len(stream_id) + wire::string_len(error),
            Message::OneWayMessage { .. } => 4,
            Message::UploadStream { meta, .. } => 8 + 4 + meta.len() + 8,
            Message::MergedBlockMetaRequest { app_id, .. } => 8 + wire::string_len(app_id) + 12,
            Message::MergedBlockMetaSuccess { .. } => 12,
        }
    }

    /// The body carried inside the frame, if any.
    fn in_frame_body(&self) -> &[u8] {
        match self {
            Message::ChunkFetchSuccess { body, .. }
            | Message::RpcRequest { body, .. }
            | Message::RpcResponse { body, .. }
            | Message::OneWayMessage { body }
            | Message::MergedBlockMetaSuccess { body, .. } => body,
            _ => &[],
        }
    }

    /// Appends the whole frame (prefix, header, in-frame body) to `dst`.
    pub fn encode(&self, dst: &mut BytesMut) {
        let body = self.in_frame_body();
        self.encode_header(dst, body.len() as u64);
        dst.put_slice(body);
    }

    /// Appends the frame prefix and header only, for a message whose in-frame body of
    /// `body_len` bytes the caller sends itself (zero-copy chunk bodies). For messages with an
    /// out-of-frame body, `body_len` must be 0; the count lives in the header.
    pub fn encode_header(&self, dst: &mut BytesMut, body_len: u64) {
        let frame_len = (FRAME_PREFIX + self.header_len()) as u64 + body_len;
        dst.reserve(FRAME_PREFIX + self.header_len());
        dst.put_u64(frame_len);
        dst.put_u8(self.type_id());
        match self {
            Message::ChunkFetchRequest(c) | Message::ChunkFetchSuccess { chunk: c, .. } => put_chunk_id(dst, c),
            Message::ChunkFetchFailure { chunk, error } => {
                put_chunk_id(dst, chunk);
                wire::put_string(dst, error);
            }
            Message::RpcRequest { request_id, .. } | Message::RpcResponse { request_id, .. } => {
                dst.put_i64(*request_id);
                // The redundant i32 body length; receivers ignore it, Java writes the real one.
                dst.put_i32(body_len as i32);
            }
            Message::RpcFailure { request_id, error } => {
                dst.put_i64(*request_id);
                wire::put_string(dst, error);
            }
            Message::StreamRequest { stream_id } => wire::put_string(dst, stream_id),
            Message::StreamResponse { stream_id, byte_count } => {
                wire::put_string(dst, stream_id);
                dst.put_i64(*byte_count);
            }
            Message::StreamFailure { stream_id, error } => {
                wire::put_string(dst, stream_id);
                wire::put_string(dst, error);
            }
            Message::OneWayMessage { .. } => dst.put_i32(body_len as i32),
            Message::UploadStream { request_id, meta, body_byte_count } => {
                dst.put_i64(*request_id);
                wire::put_bytes(dst, meta);
                dst.put_i64(*body_byte_count);
            }
            Message::MergedBlockMetaRequest { request_id, app_id, shuffle_id, shuffle_merge_id, reduce_id } => {
                dst.put_i64(*request_id);
                wire::put_string(dst, app_id);
                dst.put_i32(*shuffle_id);
                dst.put_i32(*shuffle_merge_id);
                dst.put_i32(*reduce_id);
            }
            Message::MergedBlockMetaSuccess { request_id, num_chunks, .. } => {
                dst.put_i64(*request_id);
                dst.put_i32(*num_chunks);
            }
        }
    }
}

fn put_chunk_id(dst: &mut BytesMut, c: &StreamChunkId) {
    dst.put_i64(c.stream_id);
    dst.put_i32(c.chunk_index);
}

fn get_chunk_id(buf: &mut impl Buf) -> Result<StreamChunkId, WireError> {
    Ok(StreamChunkId { stream_id: wire::get_i64(buf)?, chunk_index: wire::get_i32(buf)? })
}

/// What the decoder yields: a message, or a piece of the raw body that follows a
/// StreamResponse or UploadStream frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    Message(Message),
    Body(Bytes),
}

/// A frame that cannot be decoded. The connection that sent it is closed.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// frameLength minus its own 8 bytes was zero or negative (Java: "Frame length should be positive").
    #[error("Frame length should be positive: {0}")]
    NotPositive(i64),
    /// The frame is larger than this side accepts.
    #[error("Too large frame: {len} (limit {limit})")]
    TooLarge { len: i64, limit: usize },
    /// The type byte names no transport message.
    #[error("Unknown message type: {0}")]
    UnknownType(u8),
    /// The header ran past the end of its frame, or an out-of-frame byte count was negative.
    #[error("malformed {kind} frame: {source}")]
    Malformed { kind: &'static str, source: WireError },
    /// The socket failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// tokio-util codec for transport frames. `max_frame` bounds what is accepted: a server takes
/// small requests, a test client takes whole chunks.
///
/// The codec never reserves room for a frame it is waiting for: how much a reader may buffer is
/// the reader's decision ([`FrameCodec::incomplete_frame_len`] says what the frame needs). The
/// server draws large frames from a node-wide budget before its buffer grows for them
/// (`agent.max.pending.frame.bytes`); reserving the declared size here would allocate it first.
#[derive(Debug)]
pub struct FrameCodec {
    max_frame: usize,
    /// Raw bytes still to come after a StreamResponse / UploadStream frame.
    body_left: u64,
}

impl FrameCodec {
    pub fn new(max_frame: usize) -> Self {
        FrameCodec { max_frame: max_frame.min(JAVA_MAX_FRAME), body_left: 0 }
    }

    /// True while raw out-of-frame body bytes are still expected.
    pub fn in_body(&self) -> bool {
        self.body_left > 0
    }

    /// The whole length (its length field included) of the frame that starts `src` but is not
    /// all there yet: what a reader must make room for before [`Decoder::decode`] can yield it.
    /// None while fewer than 8 bytes are there, inside an out-of-frame body, or when the frame
    /// is complete or invalid (then `decode` does not wait for more bytes).
    pub fn incomplete_frame_len(&self, src: &[u8]) -> Option<usize> {
        if self.body_left > 0 {
            return None;
        }
        match self.frame_len(src) {
            Ok(Some(total)) if src.len() < total => Some(total),
            _ => None,
        }
    }

    /// The whole length of the frame starting `src`, once its length field is there, checked
    /// against the limits before anything is allocated for it.
    fn frame_len(&self, src: &[u8]) -> Result<Option<usize>, FrameError> {
        let Some(field) = src.first_chunk::<8>() else {
            return Ok(None);
        };
        let frame_len = i64::from_be_bytes(*field);
        // The length counts its own 8 bytes (spec §1.1).
        let payload = frame_len.wrapping_sub(8);
        if payload <= 0 {
            return Err(FrameError::NotPositive(payload));
        }
        if payload as u64 > self.max_frame as u64 {
            return Err(FrameError::TooLarge { len: payload, limit: self.max_frame });
        }
        Ok(Some(frame_len as usize))
    }
}

impl Decoder for FrameCodec {
    type Item = Inbound;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Inbound>, FrameError> {
        if self.body_left > 0 {
            if src.is_empty() {
                return Ok(None);
            }
            let n = (src.len() as u64).min(self.body_left) as usize;
            self.body_left -= n as u64;
            return Ok(Some(Inbound::Body(src.split_to(n).freeze())));
        }
        let Some(total) = self.frame_len(src)? else {
            return Ok(None);
        };
        if src.len() < total {
            return Ok(None);
        }
        let mut frame = src.split_to(total).freeze();
        frame.advance(8);
        let msg = decode_message(&mut frame)?;
        match &msg {
            Message::StreamResponse { byte_count, .. } | Message::UploadStream { body_byte_count: byte_count, .. } => {
                self.body_left = u64::try_from(*byte_count).map_err(|_| FrameError::Malformed {
                    kind: "stream",
                    source: WireError::NegativeLength(*byte_count as i32),
                })?;
            }
            _ => {}
        }
        Ok(Some(Inbound::Message(msg)))
    }
}

/// Decodes one frame's type byte, header and in-frame body (`frame` excludes the length).
fn decode_message(frame: &mut Bytes) -> Result<Message, FrameError> {
    let type_id = wire::get_u8(frame).map_err(|source| FrameError::Malformed { kind: "empty", source })?;
    let kind = type_name(type_id).ok_or(FrameError::UnknownType(type_id))?;
    decode_fields(type_id, frame).map_err(|source| FrameError::Malformed { kind, source })
}

fn decode_fields(type_id: u8, b: &mut Bytes) -> Result<Message, WireError> {
    // Whatever follows the header is the in-frame body; Java ignores extra bytes on bodyless types.
    Ok(match type_id {
        0 => Message::ChunkFetchRequest(get_chunk_id(b)?),
        1 => Message::ChunkFetchSuccess { chunk: get_chunk_id(b)?, body: b.split_off(0) },
        2 => Message::ChunkFetchFailure { chunk: get_chunk_id(b)?, error: wire::get_string(b)? },
        3 | 4 => {
            let request_id = wire::get_i64(b)?;
            let _redundant_len = wire::get_i32(b)?;
            let body = b.split_off(0);
            if type_id == 3 {
                Message::RpcRequest { request_id, body }
            } else {
                Message::RpcResponse { request_id, body }
            }
        }
        5 => Message::RpcFailure { request_id: wire::get_i64(b)?, error: wire::get_string(b)? },
        6 => Message::StreamRequest { stream_id: wire::get_string(b)? },
        7 => Message::StreamResponse { stream_id: wire::get_string(b)?, byte_count: wire::get_i64(b)? },
        8 => Message::StreamFailure { stream_id: wire::get_string(b)?, error: wire::get_string(b)? },
        9 => {
            let _redundant_len = wire::get_i32(b)?;
            Message::OneWayMessage { body: b.split_off(0) }
        }
        10 => Message::UploadStream {
            request_id: wire::get_i64(b)?,
            meta: wire::get_bytes(b)?,
            body_byte_count: wire::get_i64(b)?,
        },
        11 => Message::MergedBlockMetaRequest {
            request_id: wire::get_i64(b)?,
            app_id: wire::get_string(b)?,
            shuffle_id: wire::get_i32(b)?,
            shuffle_merge_id: wire::get_i32(b)?,
            reduce_id: wire::get_i32(b)?,
        },
        _ => Message::MergedBlockMetaSuccess {
            request_id: wire::get_i64(b)?,
            num_chunks: wire::get_i32(b)?,
            body: b.split_off(0),
        },
    })
}

fn type_name(type_id: u8) -> Option<&'static str> {
    const NAMES: [&str; 13] = [
        "ChunkFetchRequest",
        "ChunkFetchSuccess",
        "ChunkFetchFailure",
        "RpcRequest",
        "RpcResponse",
        "RpcFailure",
        "StreamRequest",
        "StreamResponse",
        "StreamFailure",
        "OneWayMessage",
        "UploadStream",
        "MergedBlockMetaRequest",
        "MergedBlockMetaSuccess",
    ];
    NAMES.get(type_id as usize).copied()
}

impl Encoder<Message> for FrameCodec {
    type Error = std::io::Error;

    fn encode(&mut self, item: Message, dst: &mut BytesMut) -> Result<(), std::io::Error> {
        item.encode(dst);
        Ok(())
    }
}

#[cfg(test)]
#[path = "frame_tests.rs"]
mod tests;
