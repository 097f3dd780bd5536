//! A resolved block: an open file and the byte range of it to send.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

/// A byte range of an open file, ready to be sent (the server uses sendfile on `file`).
///
/// By the time a `Segment` exists the file has been opened, proven to lie inside the
/// executor's dirs, and checked to be at least `offset + len` bytes long, so a success header
/// promising `len` bytes can be completed.
#[derive(Debug, Clone)]
pub struct Segment {
    /// The open file; shared so a chunk can be sent while the stream keeps its own handle.
    pub file: Arc<File>,
    /// Where the block starts in the file.
    pub offset: u64,
    /// How many bytes the block has.
    pub len: u64,
    /// The hashed path of the file (spec §4.1), for logs and error texts.
    pub path: Arc<Path>,
}
