//! The bytes of the registrations journal: the file header, record framing, record payloads, and
//! the scan that finds where the valid records end. Pure: it touches no file, so every torn and
//! corrupt shape is tested on byte slices.
//!
//! ```text
//! file    = header record*
//! header  = magic "SSAREGJ\n" (8 bytes) | u32 version (big-endian)
//! record  = u32 payload_len | u32 crc32(payload) | payload      (big-endian, crc32 = IEEE, crc32fast)
//! payload = u8 kind | fields, in Spark's encoders (protocol::wire: i32-prefixed strings and arrays)
//!   1 Executor    string app, string exec, string[] localDirs, i32 subDirsPerLocalDir, string shuffleManager
//!   2 Driver      string app, i64 heartbeatTimeoutMs
//!   3 AppRemoved  string app, i32 count, count x (i32-prefixed raw path bytes: paths need not be UTF-8)
//!   4 CleanupDone string app
//!   5 ExecutorOnNodeDirs  the Executor fields, then string[] nodeDirs, i32[] onVolume (0 or 1),
//!                 one of each per localDirs entry (`agent.localDirs.translate`)
//! ```
//!
//! The Executor fields after the kind byte are exactly RegisterExecutor's body, so a record can be
//! read with the same decoder the wire uses. Kind 5 came after the first release of version 1 and
//! only translated registrations use it: an older agent stops replay at the first one (an unknown
//! kind is an undecodable record), so downgrading an agent that translated dirs needs a fresh
//! state dir.

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;

use bytes::BufMut;

use super::{NodeDirs, Record};
use crate::protocol::wire::{self, WireError};
use crate::protocol::ExecutorShuffleInfo;

pub(super) const MAGIC: [u8; 8] = *b"SSAREGJ\n";
/// Bumped on any change a version-1 reader would misread; an unknown version refuses to start.
pub(super) const VERSION: u32 = 1;
pub(super) const HEADER_LEN: usize = 12;
/// `u32 payload_len | u32 crc32`.
pub(super) const FRAME_HEADER_LEN: usize = 8;
/// Longest payload written or read. A registration is a few hundred bytes; the limit is there so
/// that a corrupt length can never make replay allocate gigabytes.
pub(super) const MAX_PAYLOAD: usize = 16 << 20;

const EXECUTOR: u8 = 1;
const DRIVER: u8 = 2;
const APP_REMOVED: u8 = 3;
const CLEANUP_DONE: u8 = 4;
const EXECUTOR_ON_NODE_DIRS: u8 = 5;

pub(super) fn header() -> [u8; HEADER_LEN] {
    let mut h = [0; HEADER_LEN];
    h[..8].copy_from_slice(&MAGIC);
    h[8..].copy_from_slice(&VERSION.to_be_bytes());
    h
}

/// What the first bytes of an existing file say.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Header {
    /// A complete version-1 header.
    Valid,
    /// Empty, or a prefix of our header: the agent died while creating the file, before any
    /// record could have been acknowledged. A fresh header is written.
    Missing,
    /// Not a journal of ours; refused so that nothing overwrites someone else's file.
    BadMagic,
    /// Ours, but a format this build does not know (written by a newer agent).
    UnknownVersion(u32),
}

pub(super) fn check_header(file: &[u8]) -> Header {
    let ours = header();
    if file.len() < HEADER_LEN {
        return if ours.starts_with(file) { Header::Missing } else { Header::BadMagic };
    }
    if file[..8] != MAGIC {
        return Header::BadMagic;
    }
    let version = u32::from_be_bytes([file[8], file[9], file[10], file[11]]);
    if version == VERSION {
        Header::Valid
    } else {
        Header::UnknownVersion(version)
    }
}

/// The framed bytes of a record, ready to be appended. The caller checks
/// `frame.len() - FRAME_HEADER_LEN <= MAX_PAYLOAD` (see [`payload_len`]).
pub(super) fn encode(record: &Record) -> Vec<u8> {
    let mut frame = Vec::with_capacity(FRAME_HEADER_LEN + encoded_len(record));
    frame.extend_from_slice(&[0; FRAME_HEADER_LEN]);
    put_payload(&mut frame, record);
    let payload_len = u32::try_from(frame.len() - FRAME_HEADER_LEN).unwrap_or(u32::MAX);
    let crc = crc32fast::hash(&frame[FRAME_HEADER_LEN..]);
    frame[..4].copy_from_slice(&payload_len.to_be_bytes());
    frame[4..8].copy_from_slice(&crc.to_be_bytes());
    frame
}

pub(super) fn payload_len(frame: &[u8]) -> usize {
    frame.len().saturating_sub(FRAME_HEADER_LEN)
}

fn encoded_len(record: &Record) -> usize {
    1 + match record {
        Record::Executor { app_id, exec_id, info, node } => {
            wire::string_len(app_id)
                + wire::string_len(exec_id)
                + wire::string_array_len(&info.local_dirs)
                + 4
                + wire::string_len(&info.shuffle_manager)
                + node.as_ref().map_or(0, |n| wire::string_array_len(&n.dirs) + 4 + 4 * n.on_volume.len())
        }
        Record::Driver { app_id, .. } => wire::string_len(app_id) + 8,
        Record::AppRemoved { app_id, dirs } => {
            wire::string_len(app_id) + 4 + dirs.iter().map(|d| 4 + d.as_os_str().len()).sum::<usize>()
        }
        Record::CleanupDone { app_id } => wire::string_len(app_id),
    }
}

fn put_payload(b: &mut Vec<u8>, record: &Record) {
    match record {
        Record::Executor { app_id, exec_id, info, node } => {
            b.put_u8(if node.is_some() { EXECUTOR_ON_NODE_DIRS } else { EXECUTOR });
            wire::put_string(b, app_id);
            wire::put_string(b, exec_id);
            wire::put_string_array(b, &info.local_dirs);
            b.put_i32(info.sub_dirs_per_local_dir);
            wire::put_string(b, &info.shuffle_manager);
            if let Some(node) = node {
                wire::put_string_array(b, &node.dirs);
                wire::put_int_array(b, &node.on_volume.iter().map(|v| i32::from(*v)).collect::<Vec<_>>());
            }
        }
        Record::Driver { app_id, heartbeat_timeout_ms } => {
            b.put_u8(DRIVER);
            wire::put_string(b, app_id);
            b.put_i64(*heartbeat_timeout_ms);
        }
        Record::AppRemoved { app_id, dirs } => {
            b.put_u8(APP_REMOVED);
            wire::put_string(b, app_id);
            b.put_i32(i32::try_from(dirs.len()).unwrap_or(i32::MAX));
            dirs.iter().for_each(|d| wire::put_bytes(b, d.as_os_str().as_bytes()));
        }
        Record::CleanupDone { app_id } => {
            b.put_u8(CLEANUP_DONE);
            wire::put_string(b, app_id);
        }
    }
}

/// Decodes a payload whose checksum matched. Failing here is not a torn write: it means the file
/// was written by software that disagrees with this one about version 1, so replay refuses.
pub(super) fn decode(payload: &[u8]) -> Result<Record, String> {
    let (&kind, mut b) = payload.split_first().ok_or("empty payload")?;
    let record =
        decode_fields(kind, &mut b).map_err(|e| e.to_string())?.ok_or_else(|| format!("unknown record kind {kind}"))?;
    if !b.is_empty() {
        return Err(format!("{} bytes after the last field", b.len()));
    }
    if let Record::Executor { info, node: Some(node), .. } = &record {
        if node.dirs.len() != info.local_dirs.len() || node.on_volume.len() != info.local_dirs.len() {
            return Err("node dirs that do not match the local dirs one to one".to_string());
        }
    }
    Ok(record)
}

/// `None` for a kind this version does not know.
fn decode_fields(kind: u8, b: &mut &[u8]) -> Result<Option<Record>, WireError> {
    use wire::{get_i32, get_i64};
    let s = |b: &mut &[u8]| str_ref(b).map(str::to_owned);
    let strings = |b: &mut &[u8]| (0..count(b)?).map(|_| s(b)).collect::<Result<Vec<_>, _>>();
    Ok(Some(match kind {
        EXECUTOR | EXECUTOR_ON_NODE_DIRS => {
            let (app_id, exec_id) = (s(b)?, s(b)?);
            let info = ExecutorShuffleInfo {
                local_dirs: strings(b)?,
                sub_dirs_per_local_dir: get_i32(b)?,
                shuffle_manager: s(b)?,
            };
            let node = if kind == EXECUTOR_ON_NODE_DIRS { Some(node_dirs(b)?) } else { None };
            Record::Executor { app_id, exec_id, info, node }
        }
        DRIVER => Record::Driver { app_id: s(b)?, heartbeat_timeout_ms: get_i64(b)? },
        APP_REMOVED => Record::AppRemoved {
            app_id: s(b)?,
            dirs: (0..count(b)?)
                .map(|_| bytes_ref(b).map(|p| PathBuf::from(OsString::from_vec(p.to_vec()))))
                .collect::<Result<_, _>>()?,
        },
        CLEANUP_DONE => Record::CleanupDone { app_id: s(b)? },
        _ => return Ok(None),
    }))
}

/// The tail of an ExecutorOnNodeDirs record: one node dir and one flag per local dir.
fn node_dirs(b: &mut &[u8]) -> Result<NodeDirs, WireError> {
    let dirs = (0..count(b)?).map(|_| str_ref(b).map(str::to_owned)).collect::<Result<Vec<_>, _>>()?;
    let flags = (0..count(b)?).map(|_| wire::get_i32(b)).collect::<Result<Vec<_>, _>>()?;
    Ok(NodeDirs { dirs, on_volume: flags.into_iter().map(|f| f != 0).collect() })
}

// Replay decodes every record of the file, so these borrow from it rather than going through
// `wire::get_string` (which copies each string twice): one allocation per string, not two.
// Same rules as `wire`: i32 lengths, checked against what is left before anything is sliced.

fn bytes_ref<'a>(b: &mut &'a [u8]) -> Result<&'a [u8], WireError> {
    let n = wire::get_i32(b)?;
    let n = usize::try_from(n).map_err(|_| WireError::NegativeLength(n))?;
    if b.len() < n {
        return Err(WireError::Truncated { needed: n, left: b.len() });
    }
    let (head, tail) = b.split_at(n);
    *b = tail;
    Ok(head)
}

fn str_ref<'a>(b: &mut &'a [u8]) -> Result<&'a str, WireError> {
    std::str::from_utf8(bytes_ref(b)?).map_err(|_| WireError::BadUtf8)
}

/// An array count; each element costs at least its 4-byte length, so the count is bounded by
/// what is left.
fn count(b: &mut &[u8]) -> Result<usize, WireError> {
    let n = wire::get_i32(b)?;
    let n = usize::try_from(n).map_err(|_| WireError::NegativeLength(n))?;
    if b.len() < n.saturating_mul(4) {
        return Err(WireError::Truncated { needed: n.saturating_mul(4), left: b.len() });
    }
    Ok(n)
}

/// One step of the scan over the bytes after the header.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Step<'a> {
    /// A record with a matching checksum; the next one starts at `next`.
    Record { payload: &'a [u8], next: usize },
    /// The file ends exactly here.
    End,
    /// The file ends inside a record: the write of the last batch was cut short.
    Torn(String),
    /// A complete-looking record whose length or checksum is wrong.
    Corrupt(String),
}

/// Reads the frame that starts at `at` (an offset into `file`, the whole journal).
pub(super) fn step(file: &[u8], at: usize) -> Step<'_> {
    let rest = file.get(at..).unwrap_or_default();
    match frame(rest, at) {
        // Some filesystems expose a zero-filled tail after a crash (size updated, data not):
        // that is a torn write too, not corruption.
        Step::Torn(_) | Step::Corrupt(_) if rest.iter().all(|b| *b == 0) => {
            Step::Torn(format!("zero-filled tail of {} bytes at byte {at}", rest.len()))
        }
        step => step,
    }
}

fn frame(rest: &[u8], at: usize) -> Step<'_> {
    if rest.is_empty() {
        return Step::End;
    }
    if rest.len() < FRAME_HEADER_LEN {
        return Step::Torn(format!("record header at byte {at} is cut short ({} of 8 bytes)", rest.len()));
    }
    let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
    let crc = u32::from_be_bytes([rest[4], rest[5], rest[6], rest[7]]);
    // Checked before anything is sliced or allocated; an empty payload has no kind byte.
    if len == 0 || len > MAX_PAYLOAD {
        return Step::Corrupt(format!("impossible record length {len} at byte {at}"));
    }
    let Some(payload) = rest.get(FRAME_HEADER_LEN..FRAME_HEADER_LEN + len) else {
        return Step::Torn(format!(
            "record at byte {at} is cut short: it needs {} bytes, {} are left",
            FRAME_HEADER_LEN + len,
            rest.len()
        ));
    };
    if crc32fast::hash(payload) != crc {
        return Step::Corrupt(format!("checksum mismatch in the record at byte {at}"));
    }
    Step::Record { payload, next: at + FRAME_HEADER_LEN + len }
}
