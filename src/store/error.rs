//! Errors of the store, and the Java-style first line a Spark client is sent for each.

use crate::protocol::{JavaClass, JavaError};
use std::io;
use std::path::PathBuf;

/// Everything that can go wrong while resolving a block on disk.
///
/// `Display` is the message for our own logs; its [`JavaError`] is what goes on the wire.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The executor's registration cannot describe any file (no dirs, or subDirsPerLocalDir <= 0).
    #[error("{0}")]
    InvalidDirs(String),
    /// The index file could not be opened or read (missing, unreadable, not a regular file).
    #[error("Failed to open file: {}", path.display())]
    IndexOpen { path: PathBuf, source: io::Error },
    /// The index file exists but its contents cannot be an index.
    #[error("Shuffle index file {} is corrupt: {reason}", path.display())]
    CorruptIndex { path: PathBuf, reason: String },
    /// The requested reduce range is not inside the index (negative, past the end, or reversed).
    #[error("reduce range [{start}, {end_exclusive}) is outside an index of {partitions} partitions")]
    IndexOutOfBounds { start: i32, end_exclusive: i32, partitions: usize },
    /// The data file is shorter than the index says, so the block cannot be sent whole.
    #[error("Shuffle data file {} is truncated: index expects {expected} bytes, file has {actual}", path.display())]
    TruncatedData { path: PathBuf, expected: u64, actual: u64 },
    /// A block file that must exist does not.
    #[error("{} (No such file or directory)", path.display())]
    NotFound { path: PathBuf },
    /// A block file is a directory, FIFO, socket or device rather than a regular file.
    #[error("{} (Not a regular file)", path.display())]
    NotRegularFile { path: PathBuf },
    /// The opened file's real path lies outside the executor's canonical dirs (spec §13, NOTES D6).
    #[error("Block file {} resolves outside the executor's registered local directories", path.display())]
    OutsideDirs { path: PathBuf },
    /// The real path of an opened file could not be determined, so it cannot be trusted.
    #[error("Failed to resolve block file: {}", path.display())]
    ResolveFailed { path: PathBuf, source: io::Error },
    /// Any other I/O failure on a block file.
    #[error("{what} {}: {source}", path.display())]
    Io { what: &'static str, path: PathBuf, source: io::Error },
}

impl StoreError {
    /// The Java exception class the JVM service reports for this failure.
    pub fn java_class(&self) -> JavaClass {
        match self {
            StoreError::InvalidDirs(_) => JavaClass::IllegalArgument,
            StoreError::IndexOutOfBounds { .. } => JavaClass::IndexOutOfBounds,
            StoreError::NotFound { .. } | StoreError::NotRegularFile { .. } => JavaClass::FileNotFound,
            StoreError::Io { .. } => JavaClass::Io,
            StoreError::IndexOpen { .. }
            | StoreError::CorruptIndex { .. }
            | StoreError::TruncatedData { .. }
            | StoreError::OutsideDirs { .. }
            | StoreError::ResolveFailed { .. } => JavaClass::Runtime,
        }
    }
}

impl From<&StoreError> for JavaError {
    /// What Spark's JVM service sends for this failure (NOTES.md §5), which clients and people
    /// grep for.
    fn from(e: &StoreError) -> JavaError {
        match e {
            // The real service sends the bare class name here (NOTES D11): the JVM's message
            // varies with JIT state, so clients can only rely on the class.
            StoreError::IndexOutOfBounds { .. } => JavaError::bare(e.java_class()),
            _ => JavaError::new(e.java_class(), e),
        }
    }
}

impl From<StoreError> for JavaError {
    fn from(e: StoreError) -> JavaError {
        JavaError::from(&e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn java_texts_start_with_the_class_the_jvm_service_uses() {
        let path = PathBuf::from("/tmp/shuffle-vectors/ld1/3b/shuffle_0_7_0.index");
        let open = StoreError::IndexOpen { path: path.clone(), source: io::Error::from(io::ErrorKind::NotFound) };
        assert_eq!(
            JavaError::from(&open).to_string(),
            "java.lang.RuntimeException: Failed to open file: /tmp/shuffle-vectors/ld1/3b/shuffle_0_7_0.index"
        );
        let outside = StoreError::OutsideDirs { path };
        assert_eq!(
            JavaError::from(&outside).to_string(),
            "java.lang.RuntimeException: Block file /tmp/shuffle-vectors/ld1/3b/shuffle_0_7_0.index \
             resolves outside the executor's registered local directories"
        );
        let oob = StoreError::IndexOutOfBounds { start: 4, end_exclusive: 5, partitions: 4 };
        assert_eq!(JavaError::from(&oob).to_string(), "java.lang.IndexOutOfBoundsException");
        let missing = StoreError::NotFound { path: PathBuf::from("/d/2b/shuffle_3_0_0.data") };
        assert_eq!(
            JavaError::from(&missing).to_string(),
            "java.io.FileNotFoundException: /d/2b/shuffle_3_0_0.data (No such file or directory)"
        );
    }
}
