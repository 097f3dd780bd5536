//! One client connection speaking Spark's shuffle protocol: RPCs and pipelined chunk fetches.
//! Every error is returned, not panicked on, so the many-connection mode can count them.

use std::io;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use spark_shuffle_agent::protocol::{
    BlockTransferMessage, ExecutorShuffleInfo, FrameCodec, Inbound, Message, StreamChunkId,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::Decoder;

pub const APP: &str = "app-loadgen-0000";

pub struct Conn {
    stream: TcpStream,
    codec: FrameCodec,
    input: BytesMut,
    out: BytesMut,
    /// Room kept free in `input` for each read: 1 MiB on loaded connections (few syscalls per
    /// big block), 16 KiB on idle ones (10,000 of them must not cost 10 GB of buffers).
    read_room: usize,
}

/// What one fetch call got back.
#[derive(Default)]
pub struct Fetched {
    pub blocks: u64,
    pub bytes: u64,
    /// Chunks answered with ChunkFetchFailure.
    pub failures: u64,
}

fn protocol_error(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

impl Conn {
    /// A connection for a load: see `read_room`.
    pub async fn open(addr: &str) -> io::Result<Conn> {
        Ok(Conn::from(TcpStream::connect(addr).await?, 1 << 20))
    }

    pub fn from(stream: TcpStream, read_room: usize) -> Conn {
        // Only fails on a socket that is already gone; the next read or write says so.
        let _ = stream.set_nodelay(true);
        Conn { stream, codec: FrameCodec::new(64 << 20), input: BytesMut::new(), out: BytesMut::new(), read_room }
    }

    async fn next(&mut self) -> io::Result<Message> {
        loop {
            match self.codec.decode(&mut self.input).map_err(|e| protocol_error(format!("decode: {e:?}")))? {
                Some(Inbound::Message(m)) => return Ok(m),
                Some(Inbound::Body(_)) => continue,
                None => {
                    if self.input.capacity() - self.input.len() < self.read_room / 2 {
                        self.input.reserve(self.read_room);
                    }
                    if self.stream.read_buf(&mut self.input).await? == 0 {
                        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "server closed the connection"));
                    }
                }
            }
        }
    }

    pub async fn rpc(&mut self, msg: &BlockTransferMessage) -> io::Result<Bytes> {
        Message::RpcRequest { request_id: 1, body: msg.encode() }.encode(&mut self.out);
        self.stream.write_all(&self.out.split()).await?;
        match self.next().await? {
            Message::RpcResponse { body, .. } => Ok(body),
            other => Err(protocol_error(format!("rpc failed: {other:?}"))),
        }
    }

    pub async fn register(&mut self, exec_id: &str, info: ExecutorShuffleInfo) -> io::Result<()> {
        self.rpc(&BlockTransferMessage::RegisterExecutor { app_id: APP.into(), exec_id: exec_id.into(), info })
            .await
            .map(drop)
    }

    /// One FetchShuffleBlocks call of shuffle 0, then every chunk requested at once (pipelined).
    /// `chunk_latencies_us` gets, per chunk, the time from sending the requests to its arrival.
    pub async fn fetch(
        &mut self,
        exec_id: &str,
        (map_ids, reduce_ids): (Vec<i64>, Vec<Vec<i32>>),
        chunk_latencies_us: &mut Vec<u32>,
    ) -> io::Result<Fetched> {
        let ask = BlockTransferMessage::FetchShuffleBlocks {
            app_id: APP.into(),
            exec_id: exec_id.into(),
            shuffle_id: 0,
            map_ids,
            reduce_ids,
            batch_fetch_enabled: false,
        };
        let handle =
            BlockTransferMessage::decode(&self.rpc(&ask).await?).map_err(|e| protocol_error(format!("{e:?}")))?;
        let BlockTransferMessage::StreamHandle { stream_id, num_chunks } = handle else {
            return Err(protocol_error(format!("not a stream handle: {handle:?}")));
        };
        let sent = Instant::now();
        for chunk_index in 0..num_chunks {
            Message::ChunkFetchRequest(StreamChunkId { stream_id, chunk_index }).encode(&mut self.out);
        }
        self.stream.write_all(&self.out.split()).await?;
        let mut got = Fetched::default();
        for _ in 0..num_chunks {
            match self.next().await? {
                Message::ChunkFetchSuccess { body, .. } => {
                    got.blocks += 1;
                    got.bytes += body.len() as u64;
                    chunk_latencies_us.push(micros(sent.elapsed()));
                }
                _ => got.failures += 1,
            }
        }
        Ok(got)
    }
}

pub fn micros(d: std::time::Duration) -> u32 {
    d.as_micros().min(u32::MAX as u128) as u32
}
