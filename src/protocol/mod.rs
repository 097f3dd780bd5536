//! Spark's wire protocol, pure: no sockets, files or clocks, so everything here is tested
//! deterministically. Layers, bottom up: [`wire`] (Encoders.*), [`frame`] (transport frames and
//! their codec), [`shuffle`] (BlockTransferMessage payloads), [`block_id`] (OpenBlocks ids) and
//! [`java_error`] (the error texts clients see).

pub mod block_id;
pub mod frame;
pub mod java_error;
pub use java_error::{JavaClass, JavaError};
pub mod shuffle;
pub mod wire;

pub use block_id::{parse_open_blocks, OpenBlocksPlan};
pub use frame::{FrameCodec, FrameError, Inbound, Message, StreamChunkId};
pub use shuffle::{BlockTransferMessage, ExecutorShuffleInfo, MessageError};
