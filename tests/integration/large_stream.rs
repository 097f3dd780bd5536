//! Blocks larger than 2 GiB (spec §1.1, §3.3): no frame can carry them, so Spark fetches them
//! with StreamRequest, whose byte count is an i64 and whose body follows the frame.
//!
//! The block lives in a sparse data file (2 GiB + 1 MiB long, a few known bytes at its start, at
//! the 2 GiB boundary and at its end, zeros elsewhere), so the test needs almost no disk. The
//! client checks what it receives as it arrives instead of collecting it.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::common::client::first_line;
use crate::common::shuffle_files::{create_parent, index_bytes};
use crate::common::{start_agent, ExecutorFiles, TestAgent, TestClient, APP_ID};
use bytes::Bytes;
use spark_shuffle_agent::protocol::BlockTransferMessage as M;

/// One partition of 2 GiB + 1 MiB: past both i32::MAX and the largest possible frame.
const BLOCK_LEN: u64 = (2 << 30) + (1 << 20);

/// (offset, bytes) written into the otherwise empty (zero) data file.
fn known_bytes() -> Vec<(u64, &'static [u8])> {
    vec![
        (0, b"spark-shuffle-agent: start of a block over 2 GiB"),
        // Straddles offset 2^31, where a 32-bit length or offset would wrap.
        ((1 << 31) - 8, b"across-2GiB-boundary"),
        (BLOCK_LEN - 11, b"end-of-blk!"),
    ]
}

/// The fixture: a temp root, executor 0 with one local dir, the sparse map output (shuffle 0,
/// map 0, one partition) and a small one (shuffle 0, map 1, one partition of 100 bytes).
struct Large {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    exec: ExecutorFiles,
}

impl Large {
    fn new() -> Large {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = std::fs::canonicalize(tmp.path()).expect("canonical");
        let exec = ExecutorFiles::new(&[root.join("ld0")], 64);
        exec.write_file("shuffle_0_0_0.index", &index_bytes(&[BLOCK_LEN]));
        let data = exec.path("shuffle_0_0_0.data");
        create_parent(&data);
        let file = std::fs::File::create(&data).expect("create data file");
        file.set_len(BLOCK_LEN).expect("sparse length");
        for (offset, bytes) in known_bytes() {
            file.write_all_at(bytes, offset).expect("write known bytes");
        }
        exec.write_map_output(0, 1, &[100]);
        Large { _tmp: tmp, root, exec }
    }

    async fn agent_and_client(&self) -> (TestAgent, TestClient) {
        let agent = start_agent(std::slice::from_ref(&self.root)).await;
        let mut client = agent.connect().await;
        assert_eq!(client.rpc_msg(&self.exec.register(APP_ID, "0")).await, Ok(None));
        (agent, client)
    }
}

fn fetch(map_ids: &[i64]) -> M {
    M::FetchShuffleBlocks {
        app_id: APP_ID.into(),
        exec_id: "0".into(),
        shuffle_id: 0,
        map_ids: map_ids.to_vec(),
        reduce_ids: map_ids.iter().map(|_| vec![0]).collect(),
        batch_fetch_enabled: false,
    }
}

/// Checks a received byte stream against the sparse file's content (zeros, with the known
/// bytes in place) piece by piece, as it arrives. An exact comparison rather than a hash: slice
/// equality is a memcmp even in debug builds, where a CRC of 2 GiB would take half a minute.
struct SparseContent {
    known: Vec<(u64, &'static [u8])>,
    zeros: Vec<u8>,
    at: u64,
    first_difference: Option<u64>,
}

impl SparseContent {
    fn new() -> SparseContent {
        SparseContent { known: known_bytes(), zeros: vec![0; 1 << 20], at: 0, first_difference: None }
    }

    fn check(&mut self, mut piece: &[u8]) {
        while !piece.is_empty() {
            let inside = self.known.iter().find(|(o, b)| *o <= self.at && self.at < o + b.len() as u64);
            let (n, same) = match inside {
                Some((o, b)) => {
                    let from = (self.at - o) as usize;
                    let n = piece.len().min(b.len() - from);
                    (n, piece[..n] == b[from..from + n])
                }
                None => {
                    let next = self.known.iter().map(|(o, _)| *o).filter(|&o| o > self.at).min().unwrap_or(u64::MAX);
                    let n =
                        piece.len().min(self.zeros.len()).min(usize::try_from(next - self.at).unwrap_or(usize::MAX));
                    (n, piece[..n] == self.zeros[..n])
                }
            };
            if !same && self.first_difference.is_none() {
                self.first_difference = Some(self.at);
            }
            self.at += n as u64;
            piece = &piece[n..];
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_over_2_gib_is_served_whole_through_a_stream_request() {
    let large = Large::new();
    let data: &Path = &large.exec.path("shuffle_0_0_0.data");
    assert_eq!(std::fs::metadata(data).expect("data file").len(), BLOCK_LEN);
    let (agent, mut client) = large.agent_and_client().await;
    let (id, n) = client.open_stream(&fetch(&[0, 1])).await.expect("StreamHandle");
    assert_eq!(n, 2);

    let mut content = SparseContent::new();
    let announced = client
        .stream_request_with(&format!("{id}_0"), |piece| content.check(piece))
        .await
        .expect("the stream is served");
    assert_eq!(announced, BLOCK_LEN, "announced byte count");
    assert_eq!(content.at, BLOCK_LEN, "bytes received");
    assert_eq!(content.first_difference, None, "offset of the first wrong byte");
    assert_eq!(agent.counter(|c| &c.chunk_bytes_served), BLOCK_LEN);

    // Framing resumes right after the 2 GiB body: the next block of the stream is intact.
    let small = client.stream_request(&format!("{id}_1")).await.expect("the next block");
    assert_eq!(small, Bytes::from(crate::common::partition_bytes(0, 1, 0, 100)));
}

#[tokio::test]
async fn a_chunk_fetch_of_a_block_over_2_gib_fails_cleanly_and_the_stream_moves_on() {
    let large = Large::new();
    let (_agent, mut client) = large.agent_and_client().await;
    let (id, _) = client.open_stream(&fetch(&[0, 1])).await.expect("StreamHandle");
    let error = client.chunk(id, 0).await.expect_err("no frame can carry more than 2 GiB");
    let line = first_line(&error);
    assert!(line.starts_with("java.lang.IllegalArgumentException: "), "{line}");
    assert!(line.contains(&BLOCK_LEN.to_string()) && line.contains("too large"), "{line}");
    // The connection and the stream are still usable: chunk 1 is the small block.
    assert_eq!(client.chunk(id, 1).await.expect("chunk 1"), crate::common::partition_bytes(0, 1, 0, 100));
}
