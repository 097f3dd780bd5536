//! The encrypted write path: after an AuthEngine handshake every byte leaves through the
//! session cipher, so file bodies cannot go out with sendfile(2). They are read into one
//! bounded buffer, encrypted in place and written; small items are packed into the same buffer,
//! so a batch of pipelined replies still leaves in few writes.
//!
//! With AES-CTR the keystream simply runs on. With AES-GCM each flush is one GCM message (spec
//! §6.2): its length is known before the first byte leaves (the items' sizes are), it is
//! sealed a 32 KiB segment at a time, in place in the same buffer. Spark writes one message per
//! frame instead; its decryptor hands consecutive messages' plaintext to the frame decoder as
//! one stream, so the grouping is invisible to the client, and one message per flush saves a
//! key derivation and 40-odd bytes per small reply. A flush always ends on a frame boundary, so
//! the client sees every reply of a batch when the batch's message completes.
//!
//! Memory: one buffer of at most [`SEAL_BUFFER`] (plus a segment's tag room) per connection,
//! only while it flushes.

use std::io;
use std::os::unix::fs::FileExt;
use std::time::Duration;

use super::{Item, Sink};
use crate::auth::{gcm, CtrCipher, GcmEncryptor};
use crate::server::disk_reads::{self, Cached, DiskReads};

/// The most plaintext encrypted per write: large enough that the syscall per write is noise
/// next to the AES work, small enough to stay in L2. A multiple of GCM's segment.
const SEAL_BUFFER: usize = 4 * gcm::CIPHER_SEGMENT;

/// How a connection's outbound bytes are encrypted.
pub(in crate::server) enum Sealing<'a> {
    Ctr(&'a mut CtrCipher),
    Gcm(&'a mut GcmEncryptor),
}

/// Encrypts and writes `items` in order. Returns the bytes written to the socket.
impl Sealing<'_> {
    /// The same cipher, borrowed for one write.
    pub(in crate::server) fn reborrow(&mut self) -> Sealing<'_> {
        match self {
            Sealing::Ctr(c) => Sealing::Ctr(c),
            Sealing::Gcm(g) => Sealing::Gcm(g),
        }
    }
}

/// Encrypts (when `sealing`) and writes `items` in order to `sink`: with TLS and no session
/// cipher, bytes go to the TLS session as they are and files are read into one bounded buffer
/// for it. Returns the bytes written before TLS (what the client's frame decoder sees); adds
/// the bytes copied here (reads into the buffer, moves into it) to `copied`.
pub(super) async fn write(
    sink: &mut Sink<'_>,
    sealing: Option<Sealing<'_>>,
    items: &[Item],
    idle: Duration,
    copied: &mut u64,
    disk: Option<&DiskReads>,
) -> io::Result<u64> {
    let mut reader = ItemReader { items, at: 0, offset: 0, copied: 0, disk };
    let written = match sealing {
        None => write_to_tls(sink, &mut reader, idle).await,
        Some(Sealing::Ctr(cipher)) => write_copied(sink, Some(cipher), &mut reader, idle).await,
        Some(Sealing::Gcm(encryptor)) => write_gcm(sink, encryptor, &mut reader, idle).await,
    };
    *copied += reader.copied;
    written
}

/// TLS alone: rustls copies whatever it is given into its records, so queued bytes go to it
/// directly and only file bodies pass through a buffer (one pread, one copy into the records).
async fn write_to_tls(sink: &mut Sink<'_>, reader: &mut ItemReader<'_>, idle: Duration) -> io::Result<u64> {
    let mut buf = Vec::new();
    let mut total = 0;
    for item in reader.items {
        total += match item {
            Item::Bytes(bytes) => sink.write_all(bytes, idle).await?,
            Item::File(segment) => {
                buf.resize(usize::try_from(segment.len).unwrap_or(SEAL_BUFFER).min(SEAL_BUFFER), 0);
                let mut one =
                    ItemReader { items: std::slice::from_ref(item), at: 0, offset: 0, copied: 0, disk: reader.disk };
                let mut left = segment.len;
                while left > 0 {
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                    one.fill(&mut buf[..n]).await?;
                    sink.write_all(&buf[..n], idle).await?;
                    left -= n as u64;
                }
                reader.copied += one.copied;
                segment.len
            }
        };
    }
    Ok(total)
}

/// The items through one bounded buffer, the CTR keystream applied in place if given.
async fn write_copied(
    sink: &mut Sink<'_>,
    mut cipher: Option<&mut CtrCipher>,
    reader: &mut ItemReader<'_>,
    idle: Duration,
) -> io::Result<u64> {
    let total: u64 = reader.items.iter().map(item_len).sum();
    let mut buf = vec![0u8; usize::try_from(total).unwrap_or(SEAL_BUFFER).min(SEAL_BUFFER)];
    let mut left = total;
    while left > 0 {
        let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
        reader.fill(&mut buf[..n]).await?;
        if let Some(cipher) = cipher.as_deref_mut() {
            cipher.apply(&mut buf[..n]);
        }
        sink.write_all(&buf[..n], idle).await?;
        left -= n as u64;
    }
    Ok(total)
}

/// One GCM message for the whole batch: prefix, then segments sealed in place.
async fn write_gcm(
    sink: &mut Sink<'_>,
    encryptor: &mut GcmEncryptor,
    reader: &mut ItemReader<'_>,
    idle: Duration,
) -> io::Result<u64> {
    let total: u64 = reader.items.iter().map(item_len).sum();
    let mut msg = encryptor.begin(total).map_err(io::Error::other)?;
    let wire = msg.wire_len();
    let room = usize::try_from(wire).unwrap_or(usize::MAX).min(gcm::MAX_PREFIX + SEAL_BUFFER);
    let mut out = Vec::with_capacity(room);
    out.extend_from_slice(msg.prefix());
    while !msg.is_done() {
        let start = out.len();
        out.resize(start + msg.next_segment_len(), 0);
        reader.fill(&mut out[start..]).await?;
        let tag = msg.seal_segment(&mut out[start..]).map_err(io::Error::other)?;
        out.extend_from_slice(&tag);
        if msg.is_done() || out.len() + msg.next_segment_len() + gcm::TAG_BYTES > room {
            sink.write_all(&out, idle).await?;
            out.clear();
        }
    }
    if !out.is_empty() {
        // An empty batch: the prefix is the whole message. (Flush never sends one.)
        sink.write_all(&out, idle).await?;
    }
    Ok(wire)
}

fn item_len(item: &Item) -> u64 {
    match item {
        Item::Bytes(bytes) => bytes.len() as u64,
        Item::File(segment) => segment.len,
    }
}

/// Up to `want` bytes of `file` at `at` (fewer at its end), waiting for the disk.
fn read_up_to(file: &std::fs::File, want: usize, at: u64) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; want];
    let mut filled = 0;
    while filled < want {
        match file.read_at(&mut buf[filled..], at + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(filled);
    Ok(buf)
}

/// The items' bytes in order, copied (bytes) or read (files) into whatever buffer is next.
struct ItemReader<'a> {
    items: &'a [Item],
    /// The item being read.
    at: usize,
    /// How far into it.
    offset: u64,
    /// Bytes copied or read into the buffers filled.
    copied: u64,
    /// Where file reads that miss the page cache go (None: read inline, for batches of bytes).
    disk: Option<&'a DiskReads>,
}

impl ItemReader<'_> {
    /// Fills all of `dst` with the next bytes of the items.
    async fn fill(&mut self, mut dst: &mut [u8]) -> io::Result<()> {
        while !dst.is_empty() {
            let Some(item) = self.items.get(self.at) else {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the items hold fewer bytes than counted"));
            };
            let left = usize::try_from(item_len(item) - self.offset).unwrap_or(usize::MAX).min(dst.len());
            let n = match item {
                Item::Bytes(bytes) => {
                    let from = self.offset as usize;
                    dst[..left].copy_from_slice(&bytes[from..from + left]);
                    left
                }
                Item::File(segment) if left > 0 => {
                    let at = segment.offset + self.offset;
                    let read = match (self.disk, disk_reads::read_cached(&segment.file, &mut dst[..left], at)?) {
                        (_, Cached::Read(n)) => Ok(n),
                        (None, Cached::NotCached) => segment.file.read_at(&mut dst[..left], at),
                        (Some(disk), Cached::NotCached) => {
                            // Read on the pool into a buffer of its own (the one filled here is
                            // borrowed), then copied over: one more copy, for cold bytes only.
                            let (file, want) = (std::sync::Arc::clone(&segment.file), left);
                            let got = disk.run(move || read_up_to(&file, want, at)).await?;
                            dst[..got.len()].copy_from_slice(&got);
                            self.copied += got.len() as u64;
                            Ok(got.len())
                        }
                    };
                    match read {
                        // The file shrank after its header was queued: as on the plaintext path,
                        // the connection is dropped (the client retries).
                        Ok(0) => {
                            return Err(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                format!(
                                    "{} ended at byte {} of {}",
                                    segment.path.display(),
                                    segment.offset + self.offset,
                                    segment.offset + segment.len
                                ),
                            ))
                        }
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
                        Err(e) => return Err(e),
                    }
                }
                Item::File(_) => 0,
            };
            self.offset += n as u64;
            self.copied += n as u64;
            dst = &mut std::mem::take(&mut dst)[n..];
            if self.offset == item_len(item) {
                (self.at, self.offset) = (self.at + 1, 0);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::Arc;

    use bytes::{Bytes, BytesMut};
    use tokio::io::AsyncReadExt;
    use zeroize::Zeroizing;

    use super::*;
    use crate::auth::{GcmDecryptor, SessionKey};
    use crate::store::Segment;

    fn pattern(n: usize, seed: u8) -> Vec<u8> {
        (0..n).map(|i| (i.wrapping_mul(31) ^ (i >> 8)) as u8 ^ seed).collect()
    }

    /// Small bytes, a file body larger than the buffer and not a whole number of segments,
    /// bytes again, and an empty file body: what a batch of replies with one large chunk holds.
    fn batch(dir: &std::path::Path) -> (Vec<Item>, Vec<u8>) {
        let body = pattern(3 * SEAL_BUFFER + 12_345, 1);
        let path = dir.join("data");
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(&[0xee; 100]).unwrap();
        f.write_all(&body).unwrap();
        let file = Arc::new(std::fs::File::open(&path).unwrap());
        let segment = |offset, len| Segment { file: Arc::clone(&file), offset, len, path: Arc::from(path.as_path()) };
        let (head, tail) = (pattern(21, 2), pattern(40_000, 3));
        let items = vec![
            Item::Bytes(Bytes::from(head.clone())),
            Item::File(segment(100, body.len() as u64)),
            Item::Bytes(Bytes::from(tail.clone())),
            Item::File(segment(0, 0)),
        ];
        (items, [head, body, tail].concat())
    }

    /// Runs `write` on one end of a loopback connection; returns what the other end received.
    /// Every byte of the items passes through the one buffer once, so that is what is copied.
    async fn sent(items: &[Item], sealing: Sealing<'_>) -> (u64, Vec<u8>) {
        let (written, wire, copied) = sent_with(items, sealing, &DiskReads::default()).await;
        assert_eq!(copied, items.iter().map(item_len).sum::<u64>());
        (written, wire)
    }

    /// [`sent`], with `disk` for the reads the page cache cannot answer; also returns the bytes copied.
    async fn sent_with(items: &[Item], sealing: Sealing<'_>, disk: &DiskReads) -> (u64, Vec<u8>, u64) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let reader = tokio::spawn(async move {
            let mut client = client;
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            got
        });
        let mut copied = 0;
        let idle = Duration::from_secs(10);
        let written =
            write(&mut Sink::Socket(&server), Some(sealing), items, idle, &mut copied, Some(disk)).await.unwrap();
        drop(server);
        (written, reader.await.unwrap(), copied)
    }

    #[tokio::test]
    async fn a_gcm_flush_is_one_message_that_decrypts_to_the_items_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (items, plain) = batch(dir.path());
        let key = || SessionKey::Aes256(Zeroizing::new([5; 32]));
        let mut encryptor = GcmEncryptor::new(key());
        let (written, wire) = sent(&items, Sealing::Gcm(&mut encryptor)).await;
        assert_eq!(written, wire.len() as u64);
        assert_eq!(wire.len() as u64, encryptor.sealed_len(plain.len() as u64), "one message for the batch");
        let mut dec = GcmDecryptor::new(key());
        let mut out = BytesMut::new();
        dec.feed(&wire, &mut out).unwrap();
        assert!(dec.at_message_boundary());
        assert!(out[..] == plain[..], "the plaintext differs");
    }

    #[tokio::test]
    async fn a_ctr_flush_is_the_keystream_over_the_items_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (items, plain) = batch(dir.path());
        let key = SessionKey::Aes128(Zeroizing::new([6; 16]));
        let mut cipher = CtrCipher::new(&key, &[7; 16]);
        let (written, wire) = sent(&items, Sealing::Ctr(&mut cipher)).await;
        let mut expected = plain.clone();
        CtrCipher::new(&key, &[7; 16]).apply(&mut expected);
        assert_eq!(written, plain.len() as u64);
        assert!(wire == expected, "the ciphertext differs");
    }

    #[tokio::test]
    async fn a_cold_file_body_is_read_on_the_pool_and_encrypts_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let (items, plain) = batch(dir.path());
        let Item::File(segment) = &items[1] else { unreachable!() };
        segment.file.sync_all().unwrap();
        rustix::fs::fadvise(&*segment.file, 0, None, rustix::fs::Advice::DontNeed).unwrap();
        // tmpfs keeps everything in memory: nothing is cold there, and nothing goes to the pool.
        let cold = disk_reads::read_cached(&segment.file, &mut [0u8; 1], segment.offset).unwrap() == Cached::NotCached;
        let key = SessionKey::Aes128(Zeroizing::new([6; 16]));
        let mut cipher = CtrCipher::new(&key, &[7; 16]);
        let disk = DiskReads::default();
        let (written, wire, copied) = sent_with(&items, Sealing::Ctr(&mut cipher), &disk).await;
        let mut expected = plain.clone();
        CtrCipher::new(&key, &[7; 16]).apply(&mut expected);
        assert_eq!(written, plain.len() as u64);
        assert!(wire == expected, "the ciphertext differs");
        let reads = disk.blocking.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(reads > 0, cold, "{reads} reads on the pool, file cold: {cold}");
        assert!(copied > plain.len() as u64 || !cold, "cold bytes are copied once more: {copied}");
    }

    #[tokio::test]
    async fn a_file_shorter_than_its_segment_drops_the_connection_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (mut items, _) = batch(dir.path());
        if let Item::File(segment) = &mut items[1] {
            segment.len += 1;
        }
        let mut encryptor = GcmEncryptor::new(SessionKey::Aes128(Zeroizing::new([5; 16])));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        // Read on, so the writer is never stopped by a full socket buffer before the file ends.
        tokio::spawn(async move { client.read_to_end(&mut Vec::new()).await });
        let err = write(
            &mut Sink::Socket(&server),
            Some(Sealing::Gcm(&mut encryptor)),
            &items,
            Duration::from_secs(10),
            &mut 0,
            None,
        )
        .await
        .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert!(err.to_string().contains("data ended at byte"), "{err}");
    }
}
