//! Shuffle messages (BlockTransferMessage, spec §2): the `u8 typeId` + fields payload carried in
//! RpcRequest / RpcResponse / OneWayMessage bodies and in UploadStream meta.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::java_error::{JavaClass, JavaError};
use super::wire::{self, WireError};

/// How an executor laid out its files (spec §2.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutorShuffleInfo {
    pub local_dirs: Vec<String>,
    pub sub_dirs_per_local_dir: i32,
    /// Any string is accepted (Spark 3.1+); push-based shuffle appends `:{json}` which we ignore.
    pub shuffle_manager: String,
}

/// Every BlockTransferMessage type id (spec §2.2). Reply-only messages we never need to parse
/// (MergeStatuses carries RoaringBitmaps) are kept as [`BlockTransferMessage::Unparsed`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockTransferMessage {
    OpenBlocks {
        app_id: String,
        exec_id: String,
        block_ids: Vec<String>,
    },
    UploadBlock {
        app_id: String,
        exec_id: String,
        block_id: String,
        metadata: Bytes,
        block_data: Bytes,
    },
    RegisterExecutor {
        app_id: String,
        exec_id: String,
        info: ExecutorShuffleInfo,
    },
    StreamHandle {
        stream_id: i64,
        num_chunks: i32,
    },
    /// The 2.2 Kubernetes fork's (and Mesos') driver registration; removed from Spark in 4.0.
    RegisterDriver {
        app_id: String,
        heartbeat_timeout_ms: i64,
    },
    ShuffleServiceHeartbeat {
        app_id: String,
    },
    UploadBlockStream {
        block_id: String,
        metadata: Bytes,
    },
    RemoveBlocks {
        app_id: String,
        exec_id: String,
        block_ids: Vec<String>,
    },
    BlocksRemoved {
        num_removed_blocks: i32,
    },
    FetchShuffleBlocks {
        app_id: String,
        exec_id: String,
        shuffle_id: i32,
        map_ids: Vec<i64>,
        reduce_ids: Vec<Vec<i32>>,
        batch_fetch_enabled: bool,
    },
    GetLocalDirsForExecutors {
        app_id: String,
        exec_ids: Vec<String>,
    },
    LocalDirsForExecutors {
        exec_ids: Vec<String>,
        num_local_dirs_by_exec: Vec<i32>,
        all_local_dirs: Vec<String>,
    },
    PushBlockStream {
        app_id: String,
        app_attempt_id: i32,
        shuffle_id: i32,
        shuffle_merge_id: i32,
        map_index: i32,
        reduce_id: i32,
        index: i32,
    },
    FinalizeShuffleMerge {
        app_id: String,
        app_attempt_id: i32,
        shuffle_id: i32,
        shuffle_merge_id: i32,
    },
    FetchShuffleBlockChunks {
        app_id: String,
        exec_id: String,
        shuffle_id: i32,
        shuffle_merge_id: i32,
        reduce_ids: Vec<i32>,
        chunk_ids: Vec<Vec<i32>>,
    },
    DiagnoseCorruption {
        app_id: String,
        exec_id: String,
        shuffle_id: i32,
        map_id: i64,
        reduce_id: i32,
        checksum: i64,
        algorithm: String,
    },
    CorruptionCause {
        cause: u8,
    },
    BlockPushReturnCode {
        return_code: u8,
        failure_block_id: String,
    },
    RemoveShuffleMerge {
        app_id: String,
        app_attempt_id: i32,
        shuffle_id: i32,
        shuffle_merge_id: i32,
    },
    /// A reply-only type (MergeStatuses) that no server ever needs to read.
    Unparsed {
        type_id: u8,
    },
}

/// Why a payload is not a BlockTransferMessage. Both become an RpcFailure, not a closed
/// connection: the frame itself was fine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// The type byte names no message (Java: IllegalArgumentException "Unknown message type: N").
    #[error("Unknown message type: {0}")]
    UnknownType(u8),
    /// The payload was empty.
    #[error("empty message")]
    Empty,
    /// A field was truncated or invalid.
    #[error("malformed {name}: {source}")]
    Malformed { name: &'static str, source: WireError },
}

impl From<MessageError> for JavaError {
    fn from(e: MessageError) -> JavaError {
        let class = match e {
            MessageError::UnknownType(_) => JavaClass::IllegalArgument,
            MessageError::Empty | MessageError::Malformed { .. } => JavaClass::IndexOutOfBounds,
        };
        JavaError::new(class, e)
    }
}

impl BlockTransferMessage {
    /// The application a request acts for: what Spark's `checkAuth` compares with the
    /// authenticated app id. Every request that names an app is covered (Spark's 10 sites, and
    /// the old fork's RegisterDriver and heartbeat); replies name none.
    pub fn app_id(&self) -> Option<&str> {
        use BlockTransferMessage::*;
        match self {
            OpenBlocks { app_id, .. }
            | UploadBlock { app_id, .. }
            | RegisterExecutor { app_id, .. }
            | RegisterDriver { app_id, .. }
            | ShuffleServiceHeartbeat { app_id }
            | RemoveBlocks { app_id, .. }
            | FetchShuffleBlocks { app_id, .. }
            | GetLocalDirsForExecutors { app_id, .. }
            | PushBlockStream { app_id, .. }
            | FinalizeShuffleMerge { app_id, .. }
            | FetchShuffleBlockChunks { app_id, .. }
            | DiagnoseCorruption { app_id, .. }
            | RemoveShuffleMerge { app_id, .. } => Some(app_id),
            StreamHandle { .. }
            | UploadBlockStream { .. }
            | BlocksRemoved { .. }
            | LocalDirsForExecutors { .. }
            | CorruptionCause { .. }
            | BlockPushReturnCode { .. }
            | Unparsed { .. } => None,
        }
    }

    pub fn type_id(&self) -> u8 {
        use BlockTransferMessage::*;
        match self {
            OpenBlocks { .. } => 0,
            UploadBlock { .. } => 1,
            RegisterExecutor { .. } => 2,
            StreamHandle { .. } => 3,
            RegisterDriver { .. } => 4,
            ShuffleServiceHeartbeat { .. } => 5,
            UploadBlockStream { .. } => 6,
            RemoveBlocks { .. } => 7,
            BlocksRemoved { .. } => 8,
            FetchShuffleBlocks { .. } => 9,
            GetLocalDirsForExecutors { .. } => 10,
            LocalDirsForExecutors { .. } => 11,
            PushBlockStream { .. } => 12,
            FinalizeShuffleMerge { .. } => 13,
            FetchShuffleBlockChunks { .. } => 15,
            DiagnoseCorruption { .. } => 16,
            CorruptionCause { .. } => 17,
            BlockPushReturnCode { .. } => 18,
            RemoveShuffleMerge { .. } => 19,
            Unparsed { type_id } => *type_id,
        }
    }

    /// The Java class name, as used in `"Unexpected message: <Name>[...]"`.
    pub fn name(&self) -> &'static str {
        type_name(self.type_id()).unwrap_or("BlockTransferMessage")
    }

    /// Decodes a whole payload. Trailing bytes are ignored, as Java's decoders ignore them.
    pub fn decode(mut buf: &[u8]) -> Result<BlockTransferMessage, MessageError> {
        let type_id = wire::get_u8(&mut buf).map_err(|_| MessageError::Empty)?;
        let name = type_name(type_id).ok_or(MessageError::UnknownType(type_id))?;
        decode_fields(type_id, &mut buf).map_err(|source| MessageError::Malformed { name, source })
    }

    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(64);
        b.put_u8(self.type_id());
        self.encode_fields(&mut b);
        b.freeze()
    }

    fn encode_fields(&self, b: &mut BytesMut) {
        use BlockTransferMessage::*;
        match self {
            OpenBlocks { app_id, exec_id, block_ids } | RemoveBlocks { app_id, exec_id, block_ids } => {
                wire::put_string(b, app_id);
                wire::put_string(b, exec_id);
                wire::put_string_array(b, block_ids);
            }
            UploadBlock { app_id, exec_id, block_id, metadata, block_data } => {
                wire::put_string(b, app_id);
                wire::put_string(b, exec_id);
                wire::put_string(b, block_id);
                wire::put_bytes(b, metadata);
                wire::put_bytes(b, block_data);
            }
            RegisterExecutor { app_id, exec_id, info } => {
                wire::put_string(b, app_id);
                wire::put_string(b, exec_id);
                wire::put_string_array(b, &info.local_dirs);
                b.put_i32(info.sub_dirs_per_local_dir);
                wire::put_string(b, &info.shuffle_manager);
            }
            StreamHandle { stream_id, num_chunks } => {
                b.put_i64(*stream_id);
                b.put_i32(*num_chunks);
            }
            RegisterDriver { app_id, heartbeat_timeout_ms } => {
                wire::put_string(b, app_id);
                b.put_i64(*heartbeat_timeout_ms);
            }
            ShuffleServiceHeartbeat { app_id } => wire::put_string(b, app_id),
            UploadBlockStream { block_id, metadata } => {
                wire::put_string(b, block_id);
                wire::put_bytes(b, metadata);
            }
            BlocksRemoved { num_removed_blocks } => b.put_i32(*num_removed_blocks),
            FetchShuffleBlocks { app_id, exec_id, shuffle_id, map_ids, reduce_ids, batch_fetch_enabled } => {
                wire::put_string(b, app_id);
                wire::put_string(b, exec_id);
                b.put_i32(*shuffle_id);
                wire::put_long_array(b, map_ids);
                put_nested(b, reduce_ids);
                b.put_u8(u8::from(*batch_fetch_enabled));
            }
            GetLocalDirsForExecutors { app_id, exec_ids } => {
                wire::put_string(b, app_id);
                wire::put_string_array(b, exec_ids);
            }
            LocalDirsForExecutors { exec_ids, num_local_dirs_by_exec, all_local_dirs } => {
                wire::put_string_array(b, exec_ids);
                wire::put_int_array(b, num_local_dirs_by_exec);
                wire::put_string_array(b, all_local_dirs);
            }
            PushBlockStream { app_id, app_attempt_id, shuffle_id, shuffle_merge_id, map_index, reduce_id, index } => {
                wire::put_string(b, app_id);
                for v in [app_attempt_id, shuffle_id, shuffle_merge_id, map_index, reduce_id, index] {
                    b.put_i32(*v);
                }
            }
            FinalizeShuffleMerge { app_id, app_attempt_id, shuffle_id, shuffle_merge_id }
            | RemoveShuffleMerge { app_id, app_attempt_id, shuffle_id, shuffle_merge_id } => {
                wire::put_string(b, app_id);
                for v in [app_attempt_id, shuffle_id, shuffle_merge_id] {
                    b.put_i32(*v);
                }
            }
            FetchShuffleBlockChunks { app_id, exec_id, shuffle_id, shuffle_merge_id, reduce_ids, chunk_ids } => {
                wire::put_string(b, app_id);
                wire::put_string(b, exec_id);
                b.put_i32(*shuffle_id);
                b.put_i32(*shuffle_merge_id);
                wire::put_int_array(b, reduce_ids);
                put_nested(b, chunk_ids);
            }
            DiagnoseCorruption { app_id, exec_id, shuffle_id, map_id, reduce_id, checksum, algorithm } => {
                wire::put_string(b, app_id);
                wire::put_string(b, exec_id);
                b.put_i32(*shuffle_id);
                b.put_i64(*map_id);
                b.put_i32(*reduce_id);
                b.put_i64(*checksum);
                wire::put_string(b, algorithm);
            }
            CorruptionCause { cause } => b.put_u8(*cause),
            BlockPushReturnCode { return_code, failure_block_id } => {
                b.put_u8(*return_code);
                wire::put_string(b, failure_block_id);
            }
            Unparsed { .. } => {}
        }
    }
}

fn put_nested(b: &mut BytesMut, v: &[Vec<i32>]) {
    b.put_i32(v.len() as i32);
    v.iter().for_each(|inner| wire::put_int_array(b, inner));
}

fn type_name(type_id: u8) -> Option<&'static str> {
    const NAMES: [&str; 20] = [
        "OpenBlocks",
        "UploadBlock",
        "RegisterExecutor",
        "StreamHandle",
        "RegisterDriver",
        "ShuffleServiceHeartbeat",
        "UploadBlockStream",
        "RemoveBlocks",
        "BlocksRemoved",
        "FetchShuffleBlocks",
        "GetLocalDirsForExecutors",
        "LocalDirsForExecutors",
        "PushBlockStream",
        "FinalizeShuffleMerge",
        "MergeStatuses",
        "FetchShuffleBlockChunks",
        "DiagnoseCorruption",
        "CorruptionCause",
        "BlockPushReturnCode",
        "RemoveShuffleMerge",
    ];
    NAMES.get(type_id as usize).copied()
}

fn decode_fields(type_id: u8, b: &mut &[u8]) -> Result<BlockTransferMessage, WireError> {
    use wire::{get_i32, get_i64, get_string as s, get_string_array as sa};
    use BlockTransferMessage::*;
    Ok(match type_id {
        0 => OpenBlocks { app_id: s(b)?, exec_id: s(b)?, block_ids: sa(b)? },
        1 => UploadBlock {
            app_id: s(b)?,
            exec_id: s(b)?,
            block_id: s(b)?,
            metadata: wire::get_bytes(b)?,
            block_data: wire::get_bytes(b)?,
        },
        2 => RegisterExecutor {
            app_id: s(b)?,
            exec_id: s(b)?,
            info: ExecutorShuffleInfo {
                local_dirs: sa(b)?,
                sub_dirs_per_local_dir: get_i32(b)?,
                shuffle_manager: s(b)?,
            },
        },
        3 => StreamHandle { stream_id: get_i64(b)?, num_chunks: get_i32(b)? },
        4 => RegisterDriver { app_id: s(b)?, heartbeat_timeout_ms: get_i64(b)? },
        5 => ShuffleServiceHeartbeat { app_id: s(b)? },
        6 => UploadBlockStream { block_id: s(b)?, metadata: wire::get_bytes(b)? },
        7 => RemoveBlocks { app_id: s(b)?, exec_id: s(b)?, block_ids: sa(b)? },
        8 => BlocksRemoved { num_removed_blocks: get_i32(b)? },
        9 => FetchShuffleBlocks {
            app_id: s(b)?,
            exec_id: s(b)?,
            shuffle_id: get_i32(b)?,
            map_ids: wire::get_long_array(b)?,
            reduce_ids: wire::get_nested_int_array(b)?,
            batch_fetch_enabled: wire::get_bool(b)?,
        },
        10 => GetLocalDirsForExecutors { app_id: s(b)?, exec_ids: sa(b)? },
        11 => LocalDirsForExecutors {
            exec_ids: sa(b)?,
            num_local_dirs_by_exec: wire::get_int_array(b)?,
            all_local_dirs: sa(b)?,
        },
        12 => PushBlockStream {
            app_id: s(b)?,
            app_attempt_id: get_i32(b)?,
            shuffle_id: get_i32(b)?,
            shuffle_merge_id: get_i32(b)?,
            map_index: get_i32(b)?,
            reduce_id: get_i32(b)?,
            index: get_i32(b)?,
        },
        13 => FinalizeShuffleMerge {
            app_id: s(b)?,
            app_attempt_id: get_i32(b)?,
            shuffle_id: get_i32(b)?,
            shuffle_merge_id: get_i32(b)?,
        },
        15 => FetchShuffleBlockChunks {
            app_id: s(b)?,
            exec_id: s(b)?,
            shuffle_id: get_i32(b)?,
            shuffle_merge_id: get_i32(b)?,
            reduce_ids: wire::get_int_array(b)?,
            chunk_ids: wire::get_nested_int_array(b)?,
        },
        16 => DiagnoseCorruption {
            app_id: s(b)?,
            exec_id: s(b)?,
            shuffle_id: get_i32(b)?,
            map_id: get_i64(b)?,
            reduce_id: get_i32(b)?,
            checksum: get_i64(b)?,
            algorithm: s(b)?,
        },
        17 => CorruptionCause { cause: wire::get_u8(b)? },
        18 => BlockPushReturnCode { return_code: wire::get_u8(b)?, failure_block_id: s(b)? },
        19 => RemoveShuffleMerge {
            app_id: s(b)?,
            app_attempt_id: get_i32(b)?,
            shuffle_id: get_i32(b)?,
            shuffle_merge_id: get_i32(b)?,
        },
        other => {
            b.advance(b.remaining());
            Unparsed { type_id: other }
        }
    })
}

#[cfg(test)]
#[path = "shuffle_tests.rs"]
mod tests;
