//! DiagnoseCorruption (spec §4.5), in the check order the real 4.3.0 service uses (NOTES D9):
//! the index first (its errors fail the RPC), then the algorithm name, then the checksum file,
//! then the recomputation over the data on disk.

use std::os::unix::fs::FileExt;
use std::path::Path;

use super::confine::{open_confined, OpenFailure};
use super::{shuffle_file_name, ChecksumAlgorithm, CorruptionCause, ExecutorDirs, Store, StoreError};

/// The data is checksummed in pieces of this size, so a large partition needs no large buffer.
const READ_CHUNK_BYTES: usize = 8 * 1024;

/// Why a diagnosis step could not finish.
enum StepFailure {
    /// Java catches this and answers UNKNOWN_ISSUE; the text is only logged.
    Unknown(String),
    /// A file resolves outside the executor's dirs: fail the RPC (the client reads any failure
    /// as UNKNOWN_ISSUE too, but the reason reaches its log).
    Refused(StoreError),
}

impl Store {
    /// spec §4.5 with the real-Spark check order of NOTES D9: index read first (errors ->
    /// Err), then algorithm name, then checksum file, recompute.
    pub fn diagnose(
        &self,
        dirs: &ExecutorDirs,
        shuffle_id: i32,
        map_id: i64,
        reduce_id: i32,
        checksum_by_reader: i64,
        algorithm: &str,
    ) -> Result<CorruptionCause, StoreError> {
        let index = self.shuffle_index(dirs, shuffle_id, map_id)?;
        let end = reduce_id.checked_add(1).ok_or(StoreError::IndexOutOfBounds {
            start: reduce_id,
            end_exclusive: reduce_id,
            partitions: index.len_partitions(),
        })?;
        let (offset, len) = index.range(reduce_id, end)?;
        let Some(algorithm) = ChecksumAlgorithm::from_name(algorithm) else {
            return Ok(CorruptionCause::UnsupportedChecksumAlgorithm);
        };
        let checksum_name = format!("checksum.{}", algorithm.name());
        let checksum_path = dirs.file_path(&shuffle_file_name(shuffle_id, map_id, &checksum_name));
        let data_path = dirs.file_path(&shuffle_file_name(shuffle_id, map_id, "data"));
        let outcome = read_writer_checksum(&checksum_path, dirs, reduce_id).and_then(|by_writer| {
            let recomputed = recompute(&data_path, dirs, algorithm, offset, len)?;
            Ok(verdict(by_writer, recomputed, checksum_by_reader))
        });
        match outcome {
            Ok(cause) => Ok(cause),
            Err(StepFailure::Refused(e)) => Err(e),
            Err(StepFailure::Unknown(reason)) => {
                tracing::debug!(shuffle_id, map_id, reduce_id, %reason, "corruption diagnosis inconclusive");
                Ok(CorruptionCause::UnknownIssue)
            }
        }
    }
}

/// Java compares the longs directly: the writer's value as stored, the recomputed unsigned
/// 32-bit value widened to a long, and the reader's long from the wire.
fn verdict(by_writer: i64, recomputed: u32, by_reader: i64) -> CorruptionCause {
    if by_writer != i64::from(recomputed) {
        CorruptionCause::DiskIssue
    } else if by_writer != by_reader {
        CorruptionCause::NetworkIssue
    } else {
        CorruptionCause::ChecksumVerifyPass
    }
}

/// Opens a file for diagnosis: anything but an escape is merely inconclusive.
fn open_for_diagnosis(path: &Path, dirs: &ExecutorDirs) -> Result<super::confine::ConfinedFile, StepFailure> {
    open_confined(path, dirs).map_err(|failure| match failure {
        OpenFailure::Refused(e) => StepFailure::Refused(e),
        OpenFailure::Io(e) => StepFailure::Unknown(format!("cannot open {}: {e}", path.display())),
        OpenFailure::NotRegular => StepFailure::Unknown(format!("{} is not a regular file", path.display())),
    })
}

/// The big-endian i64 at byte `8 * reduce_id` of the checksum file (spec §4.4).
fn read_writer_checksum(path: &Path, dirs: &ExecutorDirs, reduce_id: i32) -> Result<i64, StepFailure> {
    let checksums = open_for_diagnosis(path, dirs)?;
    // reduce_id was range-checked against the index, so it is non-negative.
    let at = u64::try_from(reduce_id).unwrap_or(0) * 8;
    let mut be = [0u8; 8];
    checksums
        .file
        .read_exact_at(&mut be, at)
        .map_err(|e| StepFailure::Unknown(format!("cannot read entry {reduce_id} of {}: {e}", path.display())))?;
    Ok(i64::from_be_bytes(be))
}

/// The checksum of `[offset, offset + len)` of the data file as it is on disk now.
///
/// Like Java (checked against Spark 4.3.0's `ShuffleChecksumHelper`), a file that ends inside
/// or before the range is checksummed as far as it goes, possibly over zero bytes, and so
/// almost surely disagrees with the writer: a disk issue, which a truncated file is.
fn recompute(
    path: &Path,
    dirs: &ExecutorDirs,
    algorithm: ChecksumAlgorithm,
    offset: u64,
    len: u64,
) -> Result<u32, StepFailure> {
    let data = open_for_diagnosis(path, dirs)?;
    let end = offset.saturating_add(len).min(data.len);
    let mut hasher = algorithm.hasher();
    let mut buf = [0u8; READ_CHUNK_BYTES];
    let mut at = offset;
    while at < end {
        let want = usize::try_from(end - at).unwrap_or(READ_CHUNK_BYTES).min(READ_CHUNK_BYTES);
        let piece = &mut buf[..want];
        let read = data
            .file
            .read_at(piece, at)
            .map_err(|e| StepFailure::Unknown(format!("cannot read {} at {at}: {e}", path.display())))?;
        if read == 0 {
            break; // the file shrank since it was opened
        }
        hasher.update(&piece[..read]);
        at += read as u64;
    }
    Ok(hasher.value())
}

#[cfg(test)]
mod tests {
    use super::super::fixture::Fixture;
    use super::*;
    use std::os::unix::fs::symlink;
    use CorruptionCause::*;

    const ALGORITHMS: [ChecksumAlgorithm; 3] =
        [ChecksumAlgorithm::Adler32, ChecksumAlgorithm::Crc32, ChecksumAlgorithm::Crc32c];

    /// Map output (0, 0) of layout.txt plus a checksum file whose entry 2 is corrupted.
    fn setup(alg: ChecksumAlgorithm) -> (Fixture, Vec<i64>) {
        let fx = Fixture::new();
        let parts = fx.write_map_output(0, 0, &[13, 0, 29, 7]);
        let mut values: Vec<i64> = parts.iter().map(|p| i64::from(alg.checksum(p))).collect();
        let true_values = values.clone();
        values[2] ^= 1;
        fx.write_checksums(0, 0, alg, &values);
        (fx, true_values)
    }

    #[test]
    fn all_five_causes_for_every_algorithm() {
        for alg in ALGORITHMS {
            let (fx, sums) = setup(alg);
            let store = Store::new(1 << 20);
            let diagnose = |reduce: i32, reader: i64, name: &str| {
                store.diagnose(&fx.dirs, 0, 0, reduce, reader, name).expect("diagnosis")
            };
            assert_eq!(diagnose(0, sums[0], alg.name()), ChecksumVerifyPass, "{alg:?}");
            assert_eq!(diagnose(1, sums[1], alg.name()), ChecksumVerifyPass, "{alg:?} empty partition");
            assert_eq!(diagnose(0, sums[0] ^ 1, alg.name()), NetworkIssue, "{alg:?}");
            assert_eq!(diagnose(2, sums[2], alg.name()), DiskIssue, "{alg:?}");
            assert_eq!(diagnose(0, sums[0], "MD5"), UnsupportedChecksumAlgorithm, "{alg:?}");
            std::fs::remove_file(fx.dirs.file_path(&format!("shuffle_0_0_0.checksum.{}", alg.name())))
                .expect("remove checksum file");
            assert_eq!(diagnose(0, sums[0], alg.name()), UnknownIssue, "{alg:?}");
        }
    }

    #[test]
    fn the_adler32_values_spark_wrote_pass() {
        let fx = Fixture::new();
        fx.write_map_output(0, 0, &[13, 0, 29, 7]);
        let spark = [167838243i64, 1, 2833714933, 119734777];
        fx.write_checksums(0, 0, ChecksumAlgorithm::Adler32, &spark);
        let store = Store::new(1 << 20);
        for (r, value) in spark.into_iter().enumerate() {
            let cause = store.diagnose(&fx.dirs, 0, 0, r as i32, value, "ADLER32").expect("diagnosis");
            assert_eq!(cause, ChecksumVerifyPass, "reduce {r}");
        }
    }

    #[test]
    fn the_index_is_read_before_the_algorithm_name_is_checked() {
        let fx = Fixture::new();
        let err = Store::new(1 << 20).diagnose(&fx.dirs, 0, 7, 0, 1, "MD5").expect_err("missing index");
        let index = fx.dirs.file_path("shuffle_0_7_0.index");
        assert_eq!(
            crate::protocol::JavaError::from(&err).to_string(),
            format!("java.lang.RuntimeException: Failed to open file: {}", index.display())
        );
    }

    #[test]
    fn an_out_of_range_reduce_id_fails_the_rpc() {
        let (fx, _) = setup(ChecksumAlgorithm::Adler32);
        let store = Store::new(1 << 20);
        for reduce in [4, -1, i32::MAX] {
            let err = store.diagnose(&fx.dirs, 0, 0, reduce, 0, "ADLER32").expect_err("out of range");
            assert_eq!(
                crate::protocol::JavaError::from(&err).to_string(),
                "java.lang.IndexOutOfBoundsException",
                "{reduce}"
            );
        }
    }

    #[test]
    fn unreadable_checksum_or_data_is_an_unknown_issue() {
        let (fx, sums) = setup(ChecksumAlgorithm::Crc32);
        let store = Store::new(1 << 20);
        // A checksum file too short for entry 3.
        fx.write_checksums(0, 0, ChecksumAlgorithm::Crc32, &sums[..3]);
        assert_eq!(store.diagnose(&fx.dirs, 0, 0, 3, sums[3], "CRC32").ok(), Some(UnknownIssue));
        assert_eq!(store.diagnose(&fx.dirs, 0, 0, 0, sums[0], "CRC32").ok(), Some(ChecksumVerifyPass));
        // The data file is gone.
        std::fs::remove_file(fx.dirs.file_path("shuffle_0_0_0.data")).expect("remove data");
        assert_eq!(store.diagnose(&fx.dirs, 0, 0, 0, sums[0], "CRC32").ok(), Some(UnknownIssue));
    }

    #[test]
    fn a_data_file_cut_short_is_a_disk_issue_as_in_spark() {
        let (fx, sums) = setup(ChecksumAlgorithm::Adler32);
        let data = fx.dirs.file_path("shuffle_0_0_0.data");
        let bytes = std::fs::read(&data).expect("read");
        std::fs::write(&data, &bytes[..20]).expect("truncate"); // partition 2 is [13, 42)
        fx.write_checksums(0, 0, ChecksumAlgorithm::Adler32, &sums); // all entries true
        let store = Store::new(1 << 20);
        assert_eq!(store.diagnose(&fx.dirs, 0, 0, 0, sums[0], "ADLER32").ok(), Some(ChecksumVerifyPass));
        assert_eq!(store.diagnose(&fx.dirs, 0, 0, 2, sums[2], "ADLER32").ok(), Some(DiskIssue));
        // Partition 3 starts past the end of the file: zero bytes checksummed, as in Java.
        assert_eq!(store.diagnose(&fx.dirs, 0, 0, 3, sums[3], "ADLER32").ok(), Some(DiskIssue));
        // An empty partition past the end checksums to the empty value and passes.
        assert_eq!(store.diagnose(&fx.dirs, 0, 0, 1, sums[1], "ADLER32").ok(), Some(ChecksumVerifyPass));
    }

    #[test]
    fn a_checksum_file_symlinked_outside_the_dirs_is_refused() {
        let (fx, sums) = setup(ChecksumAlgorithm::Crc32c);
        let link = fx.dirs.file_path("shuffle_0_0_0.checksum.CRC32C");
        std::fs::remove_file(&link).expect("remove");
        let bytes: Vec<u8> = sums.iter().flat_map(|v| v.to_be_bytes()).collect();
        symlink(fx.write_outside("sums", &bytes), &link).expect("symlink");
        let err = Store::new(1 << 20).diagnose(&fx.dirs, 0, 0, 0, sums[0], "CRC32C").expect_err("escape");
        assert!(matches!(err, StoreError::OutsideDirs { ref path } if *path == link), "{err}");
    }

    #[test]
    fn verdicts_compare_unsigned_values_as_java_longs() {
        assert_eq!(verdict(2833714933, 2833714933, 2833714933), ChecksumVerifyPass);
        // A reader that sign-extended the int would send a negative long: that is a mismatch.
        assert_eq!(verdict(2833714933, 2833714933, i64::from(2833714933u32 as i32)), NetworkIssue);
        assert_eq!(verdict(553395040, 553395041, 553395041), DiskIssue);
    }
}
