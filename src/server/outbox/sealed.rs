//! The encrypted write path: after an AuthEngine handshake every byte leaves through the
//! session cipher, so file bodies cannot go out with sendfile(2). They are read into one
//! bounded buffer, encrypted in place and written; small items are packed into the same buffer,
//! so a batch of pipelined replies still leaves in few writes.
//!
//! Memory: one buffer of at most [`SEAL_BUFFER`] per connection, only while it flushes.

use std::io;
use std::os::unix::fs::FileExt;
use std::time::Duration;

use tokio::net::TcpStream;

use super::{write_all, Item};
use crate::auth::CtrCipher;

/// The most plaintext encrypted per write: large enough that the syscall per write is noise
/// next to the AES work, small enough to stay in L2.
const SEAL_BUFFER: usize = 128 * 1024;

/// Encrypts and writes `items` in order. Returns the bytes written.
pub(super) async fn write(
    stream: &TcpStream,
    cipher: &mut CtrCipher,
    items: &[Item],
    idle: Duration,
) -> io::Result<u64> {
    let total: u64 = items.iter().map(item_len).sum();
    let mut buf = vec![0u8; usize::try_from(total).unwrap_or(SEAL_BUFFER).min(SEAL_BUFFER)];
    let mut filled = 0usize;
    for item in items {
        match item {
            Item::Bytes(bytes) => {
                let mut rest = &bytes[..];
                while !rest.is_empty() {
                    let n = rest.len().min(buf.len() - filled);
                    buf[filled..filled + n].copy_from_slice(&rest[..n]);
                    (filled, rest) = (filled + n, &rest[n..]);
                    if filled == buf.len() {
                        seal_and_write(stream, cipher, &mut buf[..filled], idle).await?;
                        filled = 0;
                    }
                }
            }
            Item::File(segment) => {
                let (mut offset, end) = (segment.offset, segment.offset + segment.len);
                while offset < end {
                    let want = usize::try_from(end - offset).unwrap_or(usize::MAX).min(buf.len() - filled);
                    let n = match segment.file.read_at(&mut buf[filled..filled + want], offset) {
                        // The file shrank after its header was queued: as on the plaintext path,
                        // the connection is dropped (the client retries).
                        Ok(0) => {
                            return Err(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                format!("{} ended at byte {offset} of {end}", segment.path.display()),
                            ))
                        }
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
                        Err(e) => return Err(e),
                    };
                    (filled, offset) = (filled + n, offset + n as u64);
                    if filled == buf.len() {
                        seal_and_write(stream, cipher, &mut buf[..filled], idle).await?;
                        filled = 0;
                    }
                }
            }
        }
    }
    if filled > 0 {
        seal_and_write(stream, cipher, &mut buf[..filled], idle).await?;
    }
    Ok(total)
}

fn item_len(item: &Item) -> u64 {
    match item {
        Item::Bytes(bytes) => bytes.len() as u64,
        Item::File(segment) => segment.len,
    }
}

async fn seal_and_write(
    stream: &TcpStream,
    cipher: &mut CtrCipher,
    plain: &mut [u8],
    idle: Duration,
) -> io::Result<()> {
    cipher.apply(plain);
    write_all(stream, plain, idle).await.map(|_| ())
}
