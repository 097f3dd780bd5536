//! Where an executor puts a file: the path hashing of spec §4.1, which must agree bit for bit
//! with Spark's `DiskBlockManager` (the writer) or the service looks in the wrong place.

use std::path::{Path, PathBuf};

use super::StoreError;

/// Java `String.hashCode()`: `h = 31*h + c` over UTF-16 code units, wrapping at 32 bits.
///
/// UTF-16 matters: a character outside the BMP counts as two code units (a surrogate pair).
pub fn java_string_hash(s: &str) -> i32 {
    s.encode_utf16().fold(0i32, |h, unit| h.wrapping_mul(31).wrapping_add(i32::from(unit)))
}

/// Spark's `JavaUtils.nonNegativeHash`: `abs(hashCode)`, except that `Integer.MIN_VALUE`
/// (whose absolute value does not fit) maps to 0.
pub fn non_negative_hash(s: &str) -> u32 {
    match java_string_hash(s) {
        i32::MIN => 0,
        h => h.unsigned_abs(),
    }
}

/// One executor's registered directories.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutorDirs {
    /// As the executor sent them; the hashing picks among these strings.
    local_dirs: Vec<String>,
    /// `local_dirs` after java.io.File normalisation: the prefixes of every path we compute.
    normalised: Vec<PathBuf>,
    /// The same dirs with symlinks and `..` resolved: every opened file must lie under one.
    canonical: Vec<PathBuf>,
    /// subDirsPerLocalDir, known positive.
    sub_dirs: u32,
}

impl ExecutorDirs {
    /// `local_dirs` as the executor sent them, `sub_dirs` = subDirsPerLocalDir. `canonical` =
    /// the same dirs canonicalised (the registry computes and validates these against the
    /// configured roots). An empty `canonical` list makes every file read fail as "outside":
    /// we never serve from dirs nobody vouched for.
    pub fn new(local_dirs: Vec<String>, sub_dirs: i32, canonical: Vec<PathBuf>) -> Result<ExecutorDirs, StoreError> {
        if local_dirs.is_empty() {
            return Err(StoreError::InvalidDirs("localDirs must not be empty".to_string()));
        }
        // Java would divide by zero (or index with a negative number) later; refuse up front.
        let sub_dirs = match u32::try_from(sub_dirs) {
            Ok(n) if n > 0 => n,
            _ => return Err(StoreError::InvalidDirs(format!("subDirsPerLocalDir must be positive, got {sub_dirs}"))),
        };
        let normalised = local_dirs.iter().map(|d| PathBuf::from(java_normalise(d))).collect();
        Ok(ExecutorDirs { local_dirs, normalised, canonical, sub_dirs })
    }

    /// The dirs as the executor sent them.
    pub fn local_dirs(&self) -> &[String] {
        &self.local_dirs
    }

    /// The canonical dirs every opened file must lie under.
    pub fn canonical_dirs(&self) -> &[PathBuf] {
        &self.canonical
    }

    /// subDirsPerLocalDir.
    pub fn sub_dirs(&self) -> i32 {
        // Constructed from a positive i32, so this cannot saturate.
        i32::try_from(self.sub_dirs).unwrap_or(i32::MAX)
    }

    /// The normalised dir strings, the prefixes of every path [`ExecutorDirs::file_path`] gives.
    pub(crate) fn normalised_dirs(&self) -> &[PathBuf] {
        &self.normalised
    }

    /// spec §4.1: `localDirs[h % n] + "/" + "%02x"((h / n) % subDirs) + "/" + name`, normalised
    /// the way java.io.File does (duplicate slashes collapsed, trailing slash dropped), because
    /// the path is also what error texts show and what the cache is keyed by.
    pub fn file_path(&self, file_name: &str) -> PathBuf {
        let h = non_negative_hash(file_name);
        // `new` guarantees at least one dir; the length of a Vec of Strings fits in u32 in
        // practice, and saturating keeps the arithmetic total even if it did not.
        let n = u32::try_from(self.local_dirs.len()).unwrap_or(u32::MAX).max(1);
        let dir_index = usize::try_from(h % n).unwrap_or(0);
        let sub_dir = (h / n) % self.sub_dirs;
        let dir = self.local_dirs.get(dir_index).map(String::as_str).unwrap_or("");
        PathBuf::from(java_normalise(&format!("{dir}/{sub_dir:02x}/{file_name}")))
    }
}

/// java.io.File's Unix normalisation: runs of '/' become one, and a trailing '/' is dropped
/// unless the whole path is "/".
fn java_normalise(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut previous_was_slash = false;
    for c in path.chars() {
        let is_slash = c == '/';
        if !(is_slash && previous_was_slash) {
            out.push(c);
        }
        previous_was_slash = is_slash;
    }
    if out.len() > 1 && out.ends_with('/') {
        out.pop();
    }
    out
}

/// True when `path` is `dir` or lies below it, compared by path components (so `/tmp/ld1`
/// does not contain `/tmp/ld10/x`).
pub(crate) fn is_within(path: &Path, dir: &Path) -> bool {
    path.starts_with(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dirs(local: &[&str], sub_dirs: i32) -> ExecutorDirs {
        let local: Vec<String> = local.iter().map(|s| s.to_string()).collect();
        ExecutorDirs::new(local, sub_dirs, Vec::new()).expect("valid test dirs")
    }

    #[test]
    fn hashes_and_subdirs_match_the_spec_table() {
        // spec §4.1 table, verified against a JVM: (name, hashCode, 1 dir x 64, 2 dirs x 5).
        let table = [
            ("shuffle_0_0_0.data", 581811660, "/a/0c", "/d0/00"),
            ("shuffle_0_0_0.index", 861282032, "/a/30", "/d0/01"),
            ("shuffle_0_0_0.checksum.ADLER32", -103986100, "/a/34", "/d0/00"),
            ("rdd_1_0", 1054351957, "/a/15", "/d1/03"),
        ];
        let one = dirs(&["/a"], 64);
        let two = dirs(&["/d0", "/d1"], 5);
        for (name, hash, one_dir, two_dirs) in table {
            assert_eq!(java_string_hash(name), hash, "{name}");
            assert_eq!(one.file_path(name), Path::new(one_dir).join(name), "{name}");
            assert_eq!(two.file_path(name), Path::new(two_dirs).join(name), "{name}");
        }
    }

    #[test]
    fn paths_match_the_captured_layout_for_two_dirs_of_64() {
        let exec0 = dirs(&["/tmp/shuffle-vectors/ld0", "/tmp/shuffle-vectors/ld1"], 64);
        let expected = [
            ("shuffle_0_0_0.data", "ld0/26"),
            ("shuffle_0_0_0.index", "ld0/38"),
            ("shuffle_0_0_0.checksum.ADLER32", "ld0/1a"),
            ("shuffle_0_0_0.checksum.CRC32", "ld0/25"),
            ("shuffle_0_1_0.data", "ld1/2a"),
            ("shuffle_0_4294967301_0.index", "ld1/0e"),
            ("shuffle_0_4294967301_0.data", "ld1/3f"),
            ("shuffle_3_0_0.data", "ld1/2b"),
            ("shuffle_0_7_0.index", "ld1/3b"),
            ("shuffle_5_0_0.index", "ld1/1a"),
            ("rdd_1_0", "ld1/2a"),
            ("rdd_1_1", "ld0/2b"),
        ];
        for (name, sub) in expected {
            let want = Path::new("/tmp/shuffle-vectors").join(sub).join(name);
            assert_eq!(exec0.file_path(name), want, "{name}");
        }
    }

    #[test]
    fn non_ascii_names_hash_over_utf16_code_units() {
        // 'é' is one UTF-16 unit (0xE9); U+1D11E is the surrogate pair D834 DD1E.
        // Java 17: "é𝄞".hashCode() == 1996307, and "é𝄞".length() == 3.
        let by_hand = ((0xE9i32 * 31) + 0xD834) * 31 + 0xDD1E;
        assert_eq!(by_hand, 1996307);
        assert_eq!(java_string_hash("é𝄞"), 1996307);
        assert_eq!(dirs(&["/a", "/b"], 64).file_path("é𝄞"), Path::new("/b/09/é𝄞"));
    }

    #[test]
    fn a_hash_of_integer_min_value_maps_to_zero() {
        // Java 17: "polygenelubricants".hashCode() == Integer.MIN_VALUE.
        assert_eq!(java_string_hash("polygenelubricants"), i32::MIN);
        assert_eq!(non_negative_hash("polygenelubricants"), 0);
        assert_eq!(non_negative_hash("shuffle_0_0_0.checksum.ADLER32"), 103986100);
        assert_eq!(dirs(&["/d0", "/d1"], 64).file_path("polygenelubricants"), Path::new("/d0/00/polygenelubricants"));
    }

    #[test]
    fn dir_strings_are_normalised_like_java_io_file() {
        let d = dirs(&["/tmp//shuffle-vectors//ld0/"], 64);
        assert_eq!(d.file_path("shuffle_0_0_0.index"), Path::new("/tmp/shuffle-vectors/ld0/30/shuffle_0_0_0.index"));
        assert_eq!(d.normalised_dirs(), [PathBuf::from("/tmp/shuffle-vectors/ld0")]);
        assert_eq!(d.local_dirs(), ["/tmp//shuffle-vectors//ld0/".to_string()]);
        assert_eq!(dirs(&["/"], 64).file_path("rdd_1_0"), Path::new("/15/rdd_1_0"));
        assert_eq!(java_normalise("//"), "/");
    }

    #[test]
    fn empty_dirs_and_non_positive_subdirs_are_refused() {
        assert!(matches!(ExecutorDirs::new(Vec::new(), 64, Vec::new()), Err(StoreError::InvalidDirs(_))));
        for bad in [0, -1, i32::MIN] {
            let r = ExecutorDirs::new(vec!["/a".to_string()], bad, Vec::new());
            assert!(matches!(r, Err(StoreError::InvalidDirs(_))), "{bad}");
        }
        assert_eq!(dirs(&["/a"], 7).sub_dirs(), 7);
    }

    #[test]
    fn containment_compares_whole_components() {
        assert!(is_within(Path::new("/tmp/ld1/0c/x"), Path::new("/tmp/ld1")));
        assert!(!is_within(Path::new("/tmp/ld10/0c/x"), Path::new("/tmp/ld1")));
        assert!(!is_within(Path::new("/tmp/ld1x"), Path::new("/tmp/ld1")));
    }
}
