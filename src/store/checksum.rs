//! Shuffle checksum algorithms (spec §4.4) and the verdicts of DiagnoseCorruption (spec §4.5).

/// The algorithms a writer may use for `shuffle_S_M_0.checksum.<NAME>` files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChecksumAlgorithm {
    /// java.util.zip.Adler32, Spark's default.
    Adler32,
    /// java.util.zip.CRC32.
    Crc32,
    /// java.util.zip.CRC32C (Castagnoli).
    Crc32c,
}

impl ChecksumAlgorithm {
    /// Parses the exact name Spark sends and puts in file names; anything else (including
    /// other letter case) is unsupported, as in Java.
    pub fn from_name(name: &str) -> Option<ChecksumAlgorithm> {
        match name {
            "ADLER32" => Some(ChecksumAlgorithm::Adler32),
            "CRC32" => Some(ChecksumAlgorithm::Crc32),
            "CRC32C" => Some(ChecksumAlgorithm::Crc32c),
            _ => None,
        }
    }

    /// The name used on the wire and in the checksum file's name.
    pub fn name(self) -> &'static str {
        match self {
            ChecksumAlgorithm::Adler32 => "ADLER32",
            ChecksumAlgorithm::Crc32 => "CRC32",
            ChecksumAlgorithm::Crc32c => "CRC32C",
        }
    }

    /// A fresh running checksum, fed chunk by chunk.
    pub fn hasher(self) -> Checksummer {
        match self {
            ChecksumAlgorithm::Adler32 => Checksummer::Adler32(adler2::Adler32::new()),
            ChecksumAlgorithm::Crc32 => Checksummer::Crc32(crc32fast::Hasher::new()),
            ChecksumAlgorithm::Crc32c => Checksummer::Crc32c(0),
        }
    }

    /// The checksum of `bytes` in one go, as java.util.zip.Checksum.getValue() gives it.
    pub fn checksum(self, bytes: &[u8]) -> u32 {
        let mut hasher = self.hasher();
        hasher.update(bytes);
        hasher.value()
    }
}

/// A running checksum of one of the [`ChecksumAlgorithm`]s.
#[derive(Clone)]
pub enum Checksummer {
    Adler32(adler2::Adler32),
    Crc32(crc32fast::Hasher),
    /// The crc32c crate is functional: the running value is the state.
    Crc32c(u32),
}

impl Checksummer {
    /// Feeds more bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            Checksummer::Adler32(a) => a.write_slice(bytes),
            Checksummer::Crc32(c) => c.update(bytes),
            Checksummer::Crc32c(c) => *c = crc32c::crc32c_append(*c, bytes),
        }
    }

    /// The unsigned 32-bit value Java holds in a long.
    pub fn value(&self) -> u32 {
        match self {
            Checksummer::Adler32(a) => a.checksum(),
            Checksummer::Crc32(c) => c.clone().finalize(),
            Checksummer::Crc32c(c) => *c,
        }
    }
}

/// DiagnoseCorruption's answer; the discriminant is the byte sent on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum CorruptionCause {
    /// The data on disk no longer matches what the writer checksummed.
    DiskIssue = 0,
    /// The disk is fine, but the reader saw different bytes: they changed in transit.
    NetworkIssue = 1,
    /// The service could not tell (checksum file missing or unreadable, data unreadable).
    UnknownIssue = 2,
    /// Writer, disk and reader all agree.
    ChecksumVerifyPass = 3,
    /// The algorithm name is none of ADLER32, CRC32, CRC32C.
    UnsupportedChecksumAlgorithm = 4,
}

impl CorruptionCause {
    /// The wire byte.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The cause for a wire byte, if it is one.
    pub fn from_code(code: u8) -> Option<CorruptionCause> {
        match code {
            0 => Some(CorruptionCause::DiskIssue),
            1 => Some(CorruptionCause::NetworkIssue),
            2 => Some(CorruptionCause::UnknownIssue),
            3 => Some(CorruptionCause::ChecksumVerifyPass),
            4 => Some(CorruptionCause::UnsupportedChecksumAlgorithm),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shuffle byte i of block (s, m, r), the rule of vectors/layout.txt.
    fn partition_bytes(s: i64, m: i64, r: i64, len: i64) -> Vec<u8> {
        (0..len).map(|i| ((s * 101 + m * 31 + r * 17 + i * 7) & 0xff) as u8).collect()
    }

    #[test]
    fn checksums_match_the_values_captured_from_spark() {
        // layout.txt, shuffle 0 map 0: sizes [13, 0, 29, 7].
        let adler = [167838243u32, 1, 2833714933, 119734777];
        let crc = [354739914u32, 0, 1452515174, 415782967];
        for (r, len) in [13, 0, 29, 7].into_iter().enumerate() {
            let bytes = partition_bytes(0, 0, r as i64, len);
            assert_eq!(ChecksumAlgorithm::Adler32.checksum(&bytes), adler[r], "adler r={r}");
            assert_eq!(ChecksumAlgorithm::Crc32.checksum(&bytes), crc[r], "crc r={r}");
        }
        // shuffle 0 map 1, CRC32 of partition 3 (100 bytes).
        assert_eq!(ChecksumAlgorithm::Crc32.checksum(&partition_bytes(0, 1, 3, 100)), 194922375);
        // CRC32C check value from RFC 3720 / java.util.zip.CRC32C of "123456789".
        assert_eq!(ChecksumAlgorithm::Crc32c.checksum(b"123456789"), 0xE306_9283);
        assert_eq!(ChecksumAlgorithm::Crc32c.checksum(b""), 0);
    }

    #[test]
    fn chunked_updates_equal_one_update() {
        let bytes = partition_bytes(1, 0, 0, 3000);
        for alg in [ChecksumAlgorithm::Adler32, ChecksumAlgorithm::Crc32, ChecksumAlgorithm::Crc32c] {
            let mut hasher = alg.hasher();
            for chunk in bytes.chunks(1024) {
                hasher.update(chunk);
            }
            assert_eq!(hasher.value(), alg.checksum(&bytes), "{alg:?}");
        }
    }

    #[test]
    fn algorithm_names_are_exact() {
        for alg in [ChecksumAlgorithm::Adler32, ChecksumAlgorithm::Crc32, ChecksumAlgorithm::Crc32c] {
            assert_eq!(ChecksumAlgorithm::from_name(alg.name()), Some(alg));
        }
        for bad in ["MD5", "adler32", "crc32", "", "CRC32 "] {
            assert_eq!(ChecksumAlgorithm::from_name(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn cause_codes_are_the_wire_bytes() {
        for code in 0..=4u8 {
            assert_eq!(CorruptionCause::from_code(code).map(CorruptionCause::code), Some(code));
        }
        assert_eq!(CorruptionCause::UnsupportedChecksumAlgorithm as u8, 4);
        assert_eq!(CorruptionCause::from_code(5), None);
    }
}
