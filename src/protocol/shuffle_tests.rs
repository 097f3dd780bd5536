//! Shuffle message tests: every type round-trips, golden bytes from the captures, and bad
//! payloads give the Java-style texts the JVM service sends.

use super::*;

fn all_messages() -> Vec<BlockTransferMessage> {
    use BlockTransferMessage::*;
    let (app, exec) = ("app-1".to_string(), "0".to_string());
    vec![
        OpenBlocks {
            app_id: app.clone(),
            exec_id: exec.clone(),
            block_ids: vec!["shuffle_0_1_2".into(), "rdd_1_0".into()],
        },
        UploadBlock {
            app_id: app.clone(),
            exec_id: exec.clone(),
            block_id: "rdd_9_9".into(),
            metadata: Bytes::from_static(b"mm"),
            block_data: Bytes::from_static(b"d"),
        },
        RegisterExecutor {
            app_id: app.clone(),
            exec_id: exec.clone(),
            info: ExecutorShuffleInfo {
                local_dirs: vec!["/tmp/a".into(), "/tmp/b".into()],
                sub_dirs_per_local_dir: 64,
                shuffle_manager: "org.apache.spark.shuffle.sort.SortShuffleManager".into(),
            },
        },
        StreamHandle { stream_id: 2671724288809882576, num_chunks: 4 },
        RegisterDriver { app_id: app.clone(), heartbeat_timeout_ms: 0 },
        ShuffleServiceHeartbeat { app_id: app.clone() },
        UploadBlockStream { block_id: "rdd_1_1".into(), metadata: Bytes::from_static(b"m") },
        RemoveBlocks { app_id: app.clone(), exec_id: exec.clone(), block_ids: vec!["shuffle_0_0_0.data".into()] },
        BlocksRemoved { num_removed_blocks: 3 },
        FetchShuffleBlocks {
            app_id: app.clone(),
            exec_id: exec.clone(),
            shuffle_id: 0,
            map_ids: vec![0, 1, 4294967301],
            reduce_ids: vec![vec![0, 2], vec![3], vec![1]],
            batch_fetch_enabled: false,
        },
        GetLocalDirsForExecutors { app_id: app.clone(), exec_ids: vec!["0".into(), "1".into()] },
        LocalDirsForExecutors {
            exec_ids: vec!["0".into()],
            num_local_dirs_by_exec: vec![2],
            all_local_dirs: vec!["/a".into(), "/b".into()],
        },
        PushBlockStream {
            app_id: app.clone(),
            app_attempt_id: 1,
            shuffle_id: 2,
            shuffle_merge_id: 3,
            map_index: 4,
            reduce_id: 5,
            index: 6,
        },
        FinalizeShuffleMerge { app_id: app.clone(), app_attempt_id: 1, shuffle_id: 2, shuffle_merge_id: 3 },
        FetchShuffleBlockChunks {
            app_id: app.clone(),
            exec_id: exec.clone(),
            shuffle_id: 1,
            shuffle_merge_id: 0,
            reduce_ids: vec![0, 1],
            chunk_ids: vec![vec![0], vec![0, 1]],
        },
        DiagnoseCorruption {
            app_id: app.clone(),
            exec_id: exec,
            shuffle_id: 0,
            map_id: 1,
            reduce_id: 2,
            checksum: 553395041,
            algorithm: "ADLER32".into(),
        },
        CorruptionCause { cause: 3 },
        BlockPushReturnCode { return_code: 0, failure_block_id: String::new() },
        RemoveShuffleMerge { app_id: app, app_attempt_id: 1, shuffle_id: 2, shuffle_merge_id: -1 },
    ]
}

#[test]
fn every_shuffle_message_round_trips() {
    for m in all_messages() {
        let bytes = m.encode();
        assert_eq!(bytes[0], m.type_id());
        assert_eq!(BlockTransferMessage::decode(&bytes).unwrap(), m);
    }
}

#[test]
fn every_truncation_of_a_message_is_an_error_not_a_panic() {
    for m in all_messages() {
        let bytes = m.encode();
        for cut in 0..bytes.len() {
            // Cutting a message short must never decode as the original, and never panic.
            if let Ok(got) = BlockTransferMessage::decode(&bytes[..cut]) {
                assert_ne!(got, m, "cut {cut} of {m:?}");
            }
        }
    }
}

#[test]
fn register_executor_matches_the_captured_bytes() {
    // register.txt, "full body".
    let m = BlockTransferMessage::RegisterExecutor {
        app_id: "app-20260101000000-0000".into(),
        exec_id: "0".into(),
        info: ExecutorShuffleInfo {
            local_dirs: vec!["/tmp/shuffle-vectors/ld0".into(), "/tmp/shuffle-vectors/ld1".into()],
            sub_dirs_per_local_dir: 64,
            shuffle_manager: "org.apache.spark.shuffle.sort.SortShuffleManager".into(),
        },
    };
    let bytes = m.encode();
    assert_eq!(bytes.len(), 149);
    assert_eq!(&bytes[..5], b"\x02\x00\x00\x00\x17");
}

#[test]
fn an_unknown_type_gives_the_java_text() {
    let err = BlockTransferMessage::decode(&[99]).unwrap_err();
    assert_eq!(JavaError::from(err).to_string(), "java.lang.IllegalArgumentException: Unknown message type: 99");
    let err = BlockTransferMessage::decode(&[14 + 100]).unwrap_err();
    assert!(matches!(err, MessageError::UnknownType(114)));
}

#[test]
fn an_empty_payload_is_an_error() {
    assert_eq!(BlockTransferMessage::decode(&[]), Err(MessageError::Empty));
}

#[test]
fn merge_statuses_is_kept_unparsed() {
    let got = BlockTransferMessage::decode(&[14, 1, 2, 3]).unwrap();
    assert_eq!(got, BlockTransferMessage::Unparsed { type_id: 14 });
    assert_eq!(got.name(), "MergeStatuses");
}
