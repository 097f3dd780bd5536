//! Block ids as OpenBlocks carries them (spec §3.4): `shuffle_<s>_<m>_<r>`, `rdd_<r>_<p>`, and
//! the push-merge `shuffleChunk_<s>_<merge>_<r>_<c>`. Parsing follows Java's `String.split("_")`
//! and `Integer.parseInt`, so malformed ids fail with the same texts as on the JVM.

use super::java_error::{self, JavaError};

/// What an OpenBlocks request asks for, parsed eagerly as Java does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenBlocksPlan {
    /// One chunk per (map, reduce); map ids are ints in this legacy message.
    Shuffle { shuffle_id: i32, blocks: Vec<(i32, i32)> },
    /// Merged (push-based) chunks: (reduce id, chunk id).
    ShuffleChunk { shuffle_id: i32, shuffle_merge_id: i32, chunks: Vec<(i32, i32)> },
    /// Disk-persisted RDD blocks: (rdd id, split index).
    Rdd { blocks: Vec<(i32, i32)> },
}

/// Java's `s.split("_")`: trailing empty strings are dropped, leading ones kept.
pub fn java_split(s: &str) -> Vec<&str> {
    let mut parts: Vec<&str> = s.split('_').collect();
    while parts.last().is_some_and(|p| p.is_empty()) {
        parts.pop();
    }
    parts
}

/// Java's `Integer.parseInt` (radix 10): an optional sign, ASCII digits, no overflow.
pub fn java_parse_int(s: &str) -> Result<i32, JavaError> {
    s.parse::<i32>().map_err(|_| java_error::number_format(s))
}

/// Parses OpenBlocks ids; the kind of the first id decides what all of them must be.
pub fn parse_open_blocks(ids: &[String]) -> Result<OpenBlocksPlan, JavaError> {
    let Some(first) = ids.first() else {
        return Err(java_error::array_index(0, 0));
    };
    let parts = java_split(first);
    // An id of only underscores splits into nothing, as in Java; it is then no known format.
    match (parts.len(), parts.first().copied().unwrap_or("")) {
        (4, "shuffle") => {
            let shuffle_id = java_parse_int(parts[1])?;
            let blocks = ids.iter().map(|id| shuffle_block(id, shuffle_id)).collect::<Result<_, _>>()?;
            Ok(OpenBlocksPlan::Shuffle { shuffle_id, blocks })
        }
        (5, "shuffleChunk") => {
            let shuffle_id = java_parse_int(parts[1])?;
            let shuffle_merge_id = java_parse_int(parts[2])?;
            let chunks =
                ids.iter().map(|id| shuffle_chunk(id, shuffle_id, shuffle_merge_id)).collect::<Result<_, _>>()?;
            Ok(OpenBlocksPlan::ShuffleChunk { shuffle_id, shuffle_merge_id, chunks })
        }
        (3, "rdd") => Ok(OpenBlocksPlan::Rdd { blocks: ids.iter().map(|id| rdd_block(id)).collect::<Result<_, _>>()? }),
        _ => Err(java_error::illegal_argument(format_args!("Unexpected block id format: {first}"))),
    }
}

fn shuffle_block(id: &str, shuffle_id: i32) -> Result<(i32, i32), JavaError> {
    let parts = java_split(id);
    if parts.len() != 4 || parts[0] != "shuffle" {
        return Err(java_error::illegal_argument(format_args!("Unexpected shuffle block id format: {id}")));
    }
    if java_parse_int(parts[1])? != shuffle_id {
        return Err(java_error::illegal_argument(format_args!("Expected shuffleId={shuffle_id}, got:{id}")));
    }
    Ok((java_parse_int(parts[2])?, java_parse_int(parts[3])?))
}

fn shuffle_chunk(id: &str, shuffle_id: i32, merge_id: i32) -> Result<(i32, i32), JavaError> {
    let parts = java_split(id);
    if parts.len() != 5 || parts[0] != "shuffleChunk" {
        return Err(java_error::illegal_argument(format_args!("Unexpected shuffle chunk id format: {id}")));
    }
    if java_parse_int(parts[1])? != shuffle_id || java_parse_int(parts[2])? != merge_id {
        return Err(java_error::illegal_argument(format_args!(
            "Expected shuffleId = {shuffle_id} and shuffleMergeId = {merge_id} but got {id}"
        )));
    }
    Ok((java_parse_int(parts[3])?, java_parse_int(parts[4])?))
}

fn rdd_block(id: &str) -> Result<(i32, i32), JavaError> {
    let parts = java_split(id);
    if parts.len() != 3 || parts[0] != "rdd" {
        return Err(java_error::illegal_argument(format_args!("Unexpected RDD block id format: {id}")));
    }
    Ok((java_parse_int(parts[1])?, java_parse_int(parts[2])?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn shuffle_ids_parse_with_int_map_ids() {
        let plan = parse_open_blocks(&ids(&["shuffle_0_0_0", "shuffle_0_1_3", "shuffle_0_0_2"])).unwrap();
        assert_eq!(plan, OpenBlocksPlan::Shuffle { shuffle_id: 0, blocks: vec![(0, 0), (1, 3), (0, 2)] });
    }

    #[test]
    fn rdd_ids_parse() {
        let plan = parse_open_blocks(&ids(&["rdd_1_0", "rdd_1_1"])).unwrap();
        assert_eq!(plan, OpenBlocksPlan::Rdd { blocks: vec![(1, 0), (1, 1)] });
    }

    #[test]
    fn errors_match_the_jvm_service_texts() {
        // NOTES.md §5, first lines as captured.
        let cases = [
            (vec!["broadcast_1"], "java.lang.IllegalArgumentException: Unexpected block id format: broadcast_1"),
            (
                vec!["shuffle_0_0_0", "rdd_1_0"],
                "java.lang.IllegalArgumentException: Unexpected shuffle block id format: rdd_1_0",
            ),
            (vec!["shuffle_0_4294967301_0"], "java.lang.NumberFormatException: For input string: \"4294967301\""),
            (
                vec!["shuffle_0_0_0", "shuffle_1_0_0"],
                "java.lang.IllegalArgumentException: Expected shuffleId=0, got:shuffle_1_0_0",
            ),
            (
                vec!["rdd_1_0", "shuffle_0_0_0"],
                "java.lang.IllegalArgumentException: Unexpected RDD block id format: shuffle_0_0_0",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(parse_open_blocks(&ids(&input)).unwrap_err().to_string(), want);
        }
    }

    #[test]
    fn java_split_drops_only_trailing_empty_parts() {
        assert_eq!(java_split("shuffle_0_0_"), vec!["shuffle", "0", "0"]);
        assert_eq!(java_split("_a__b__"), vec!["", "a", "", "b"]);
        // A batch id has five parts and is not an OpenBlocks shuffle id.
        assert!(parse_open_blocks(&ids(&["shuffle_0_0_0_3"]))
            .unwrap_err()
            .to_string()
            .contains("Unexpected block id format"));
    }

    #[test]
    fn java_parse_int_accepts_signs_and_refuses_overflow() {
        assert_eq!(java_parse_int("+7"), Ok(7));
        assert_eq!(java_parse_int("-7"), Ok(-7));
        assert_eq!(java_parse_int("007"), Ok(7));
        assert!(java_parse_int("2147483648").is_err());
        assert_eq!(java_parse_int(""), Err(java_error::number_format("")));
    }

    #[test]
    fn ids_that_split_into_nothing_are_an_unexpected_format() {
        // Found by the fuzz target: "___".split("_") is empty in Java too.
        for id in ["___", "", "_"] {
            let err = parse_open_blocks(&ids(&[id])).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("java.lang.IllegalArgumentException: Unexpected block id format: {id}")
            );
        }
    }

    #[test]
    fn an_empty_id_list_fails_like_java() {
        assert_eq!(parse_open_blocks(&[]).unwrap_err(), java_error::array_index(0, 0));
    }
}
