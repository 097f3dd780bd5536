//! A small test client speaking Spark's transport frames with the library's own [`FrameCodec`]
//! (the codec is unit-tested against golden bytes, so the wire here is the wire Spark speaks).
//! It can also send and receive raw bytes, for malformed frames and exact-byte checks.
//!
//! Every wait is bounded by [`WAIT`]; a hang fails the test instead of stalling the suite.

use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use spark_shuffle_agent::protocol::{BlockTransferMessage, FrameCodec, Inbound, Message, StreamChunkId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::{Decoder, Encoder};

use super::WAIT;

/// Largest frame the client accepts: chunk bodies of the tests stay far below this.
const CLIENT_MAX_FRAME: usize = 256 << 20;

/// Why nothing (more) could be received.
#[derive(Debug, PartialEq, Eq)]
pub enum RecvError {
    /// The server closed the connection; `pending` bytes of an incomplete frame were left over.
    Eof { pending: usize },
    /// Nothing arrived within [`WAIT`].
    Timeout,
    /// The socket failed (a reset counts as the server closing on us).
    Io(String),
    /// The server sent bytes that are not a frame.
    Frame(String),
}

pub struct TestClient {
    stream: TcpStream,
    codec: FrameCodec,
    buf: BytesMut,
    next_request_id: i64,
}

impl TestClient {
    pub async fn connect(addr: SocketAddr) -> TestClient {
        let stream =
            tokio::time::timeout(WAIT, TcpStream::connect(addr)).await.expect("connect in time").expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        TestClient {
            stream,
            codec: FrameCodec::new(CLIENT_MAX_FRAME),
            buf: BytesMut::with_capacity(64 << 10),
            // Java clients pick abs(random long); any positive id works, the server only echoes it.
            next_request_id: 0x5eed_0000_0000_0001,
        }
    }

    /// A fresh request id.
    pub fn request_id(&mut self) -> i64 {
        self.next_request_id += 1;
        self.next_request_id
    }

    pub async fn send(&mut self, msg: &Message) {
        let mut out = BytesMut::new();
        self.codec.encode(msg.clone(), &mut out).expect("encode");
        self.send_raw(&out).await;
    }

    /// Several messages in one write: the server sees them pipelined.
    pub async fn send_all(&mut self, msgs: &[Message]) {
        let mut out = BytesMut::new();
        for msg in msgs {
            msg.encode(&mut out);
        }
        self.send_raw(&out).await;
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        tokio::time::timeout(WAIT, self.stream.write_all(bytes)).await.expect("send in time").expect("send");
    }

    /// Sends FIN: the server sees end of input, the client can still read.
    pub async fn shutdown_write(&mut self) {
        tokio::time::timeout(WAIT, self.stream.shutdown()).await.expect("shutdown in time").expect("shutdown");
    }

    /// Reads more bytes into the buffer. Ok(false) at end of input.
    async fn fill(&mut self) -> Result<bool, RecvError> {
        if self.buf.capacity() - self.buf.len() < 32 << 10 {
            self.buf.reserve(256 << 10);
        }
        match tokio::time::timeout(WAIT, self.stream.read_buf(&mut self.buf)).await {
            Err(_) => Err(RecvError::Timeout),
            Ok(Ok(0)) => Ok(false),
            Ok(Ok(_)) => Ok(true),
            Ok(Err(e)) => Err(RecvError::Io(e.to_string())),
        }
    }

    /// The next decoded item: a message, or a piece of an out-of-frame stream body.
    pub async fn recv(&mut self) -> Result<Inbound, RecvError> {
        loop {
            match self.codec.decode(&mut self.buf) {
                Ok(Some(item)) => return Ok(item),
                Ok(None) => {}
                Err(e) => return Err(RecvError::Frame(e.to_string())),
            }
            if !self.fill().await? {
                return Err(RecvError::Eof { pending: self.buf.len() });
            }
        }
    }

    /// The next message; panics (failing the test) on anything else.
    pub async fn recv_message(&mut self) -> Message {
        match self.recv().await {
            Ok(Inbound::Message(m)) => m,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    /// Exactly `n` raw bytes, bypassing the codec (for exact-byte checks of what the server sent).
    pub async fn recv_raw(&mut self, n: usize) -> Result<Vec<u8>, RecvError> {
        while self.buf.len() < n {
            if !self.fill().await? {
                return Err(RecvError::Eof { pending: self.buf.len() });
            }
        }
        Ok(self.buf.split_to(n).to_vec())
    }

    /// Waits for the server to close the connection and returns the bytes it sent before that
    /// (undecoded). A reset counts as closed.
    pub async fn recv_until_closed(&mut self) -> Result<Vec<u8>, RecvError> {
        loop {
            match self.fill().await {
                Ok(true) => {}
                Ok(false) | Err(RecvError::Io(_)) => return Ok(self.buf.split().to_vec()),
                Err(e) => return Err(e),
            }
        }
    }

    /// Asserts the server closes the connection without sending anything (more).
    pub async fn expect_closed_silently(&mut self) {
        let rest = self.recv_until_closed().await.expect("the server closes the connection");
        assert!(
            rest.is_empty(),
            "the server sent {} bytes before closing: {:02x?}",
            rest.len(),
            &rest[..rest.len().min(64)]
        );
    }

    /// Sends an RpcRequest and waits for its reply: the response body, or the failure text.
    pub async fn rpc(&mut self, body: Bytes) -> Result<Bytes, String> {
        let request_id = self.request_id();
        self.send(&Message::RpcRequest { request_id, body }).await;
        match self.recv_message().await {
            Message::RpcResponse { request_id: got, body } if got == request_id => Ok(body),
            Message::RpcFailure { request_id: got, error } if got == request_id => Err(error),
            other => panic!("expected the reply to request {request_id}, got {other:?}"),
        }
    }

    /// An RPC whose reply is a BlockTransferMessage (or empty, as RegisterExecutor's).
    pub async fn rpc_msg(&mut self, msg: &BlockTransferMessage) -> Result<Option<BlockTransferMessage>, String> {
        let body = self.rpc(msg.encode()).await?;
        if body.is_empty() {
            return Ok(None);
        }
        Ok(Some(BlockTransferMessage::decode(&body).expect("the reply decodes")))
    }

    /// An RPC that must answer a StreamHandle: (stream id, number of chunks).
    pub async fn open_stream(&mut self, msg: &BlockTransferMessage) -> Result<(i64, i32), String> {
        match self.rpc_msg(msg).await? {
            Some(BlockTransferMessage::StreamHandle { stream_id, num_chunks }) => Ok((stream_id, num_chunks)),
            other => panic!("expected a StreamHandle, got {other:?}"),
        }
    }

    /// ChunkFetchRequest: the chunk body, or the failure text.
    pub async fn chunk(&mut self, stream_id: i64, chunk_index: i32) -> Result<Bytes, String> {
        let chunk = StreamChunkId { stream_id, chunk_index };
        self.send(&Message::ChunkFetchRequest(chunk)).await;
        self.recv_chunk_reply(chunk).await
    }

    /// The reply to an already sent ChunkFetchRequest (for pipelined requests).
    pub async fn recv_chunk_reply(&mut self, chunk: StreamChunkId) -> Result<Bytes, String> {
        match self.recv_message().await {
            Message::ChunkFetchSuccess { chunk: got, body } if got == chunk => Ok(body),
            Message::ChunkFetchFailure { chunk: got, error } if got == chunk => Err(error),
            other => panic!("expected the reply to {chunk}, got {other:?}"),
        }
    }

    /// StreamRequest: the whole stream body, or the failure text.
    pub async fn stream_request(&mut self, id: &str) -> Result<Bytes, String> {
        let mut body = Vec::new();
        self.stream_request_with(id, |piece| body.extend_from_slice(piece)).await?;
        Ok(Bytes::from(body))
    }

    /// StreamRequest whose body is handed to `on_piece` as it arrives (for bodies too large to
    /// collect). Returns the byte count the server announced, after all of it arrived.
    pub async fn stream_request_with(&mut self, id: &str, on_piece: impl FnMut(&[u8])) -> Result<u64, String> {
        self.send(&Message::StreamRequest { stream_id: id.to_string() }).await;
        self.recv_stream_reply(id, on_piece).await
    }

    /// The reply to an already sent StreamRequest, body included.
    pub async fn recv_stream_reply(&mut self, id: &str, mut on_piece: impl FnMut(&[u8])) -> Result<u64, String> {
        let byte_count = match self.recv_message().await {
            Message::StreamResponse { stream_id, byte_count } if stream_id == id => byte_count,
            Message::StreamFailure { stream_id, error } if stream_id == id => return Err(error),
            other => panic!("expected the reply to stream {id}, got {other:?}"),
        };
        let total = u64::try_from(byte_count).expect("non-negative byte count");
        let mut got = 0u64;
        while got < total {
            match self.recv().await {
                Ok(Inbound::Body(piece)) => {
                    got += piece.len() as u64;
                    on_piece(&piece);
                }
                other => panic!("stream {id}: expected body bytes ({got} of {total} so far), got {other:?}"),
            }
        }
        Ok(total)
    }
}

/// The first line of an error text (Java sends a whole stack trace; only line one is stable).
pub fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or("")
}
