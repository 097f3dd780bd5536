//! What a connection has to send, in order, and the zero-copy writer that sends it.
//!
//! Small chunk bodies are copied (one pread) into the same buffer as their headers, so many
//! pipelined small responses leave in one write; bodies of `coalesce_max_bytes` or more stay in
//! their file and go out with sendfile(2), header first. Nothing here is unbounded: the
//! connection flushes when [`Outbox::should_flush`] says so, before handling more requests.

use std::io;
use std::os::unix::fs::FileExt;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::Interest;
use tokio::net::TcpStream;

use super::disk_reads::{self, Cached, DiskReads};
use crate::protocol::Message;
use crate::store::Segment;

mod sealed;

pub(super) use sealed::Sealing;

/// Where a connection's bytes go: the socket itself, or the TLS session in front of it. With
/// TLS and a session cipher both on, the session cipher is outside TLS, next to the socket, as
/// Spark's pipeline has it (TransportCipher's handlers are added first, before the SslHandler):
/// plaintext -> TLS records -> session cipher -> socket.
pub(in crate::server) enum Sink<'a> {
    Socket(&'a TcpStream),
    Tls { stream: &'a TcpStream, session: &'a mut crate::tls::TlsSession, outer: Option<Sealing<'a>> },
}

impl Sink<'_> {
    /// Writes all of `buf` (through TLS: encrypts it, then writes the records, never holding
    /// more than the session's limit of them).
    async fn write_all(&mut self, mut buf: &[u8], idle: Duration) -> io::Result<u64> {
        let total = buf.len() as u64;
        match self {
            Sink::Socket(stream) => write_all(stream, buf, idle).await,
            Sink::Tls { stream, session, outer } => {
                while !buf.is_empty() {
                    let taken = session.encrypt(buf)?;
                    buf = &buf[taken..];
                    drain_tls(stream, session, outer, idle).await?;
                }
                Ok(total)
            }
        }
    }

    /// Writes every TLS record the session holds (nothing to do on a plain socket).
    pub(in crate::server) async fn drain(&mut self, idle: Duration) -> io::Result<()> {
        match self {
            Sink::Socket(_) => Ok(()),
            Sink::Tls { stream, session, outer } => drain_tls(stream, session, outer, idle).await,
        }
    }
}

/// Writes every TLS record `session` holds to `stream`, through the session cipher `outer`
/// when one is on.
async fn drain_tls(
    stream: &TcpStream,
    session: &mut crate::tls::TlsSession,
    outer: &mut Option<Sealing<'_>>,
    idle: Duration,
) -> io::Result<()> {
    while session.wants_write() {
        match outer {
            None => {
                writable(stream, idle).await?;
                match session.write_tls(&mut SocketWriter(stream)) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
            Some(sealing) => {
                // The records leave through the session cipher: taken whole (at most the
                // session's limit), encrypted, and written out completely.
                let mut records = Vec::new();
                session.write_tls(&mut records)?;
                session.note_copied(records.len() as u64);
                let items = [Item::Bytes(Bytes::from(records))];
                // Boxed: the sealed writer writes to a sink, and a sink's drain calls it.
                let mut socket = Sink::Socket(stream);
                let mut copied = 0;
                Box::pin(sealed::write(&mut socket, Some(sealing.reborrow()), &items, idle, &mut copied, None)).await?;
                session.note_copied(copied);
            }
        }
    }
    Ok(())
}

/// `io::Write` over a non-blocking socket, for rustls to write its records to.
struct SocketWriter<'a>(&'a TcpStream);

impl io::Write for SocketWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.0.try_write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Flush once this many bytes are buffered, so memory per connection stays bounded.
const FLUSH_BYTES: usize = 256 * 1024;
/// Flush once this many files are queued, so open descriptors per connection stay bounded.
const FLUSH_FILES: usize = 64;

#[derive(Debug)]
enum Item {
    Bytes(Bytes),
    File(Segment),
}

/// Queued responses of one connection.
#[derive(Debug)]
pub struct Outbox {
    items: Vec<Item>,
    /// Bytes after the last queued file; becomes an item when a file is queued or on flush.
    tail: BytesMut,
    buffered: usize,
    files: usize,
    coalesce_max_bytes: u64,
    window: ReadWindow,
    /// Bytes copied in user space (file reads into buffers, moves between buffers) since the
    /// last [`Outbox::take_copied`]: what `spark_shuffle_agent_bytes_copied_total` counts.
    copied: u64,
}

/// How far ahead a sequential run of small blocks is read at most: one pread then serves the
/// next blocks of the same map output (a fetch asks for them in file order). A run earns its
/// read-ahead: twice what it has used so far, so bytes read and never sent stay below what was
/// sent (a reducer's fetch takes a few blocks of each map output, not 128 KiB of them).
const READ_AHEAD: usize = 128 * 1024;

/// The bytes of the last read, for the blocks that follow it in the same file.
#[derive(Debug, Default)]
struct ReadWindow {
    file: Option<std::sync::Arc<std::fs::File>>,
    start: u64,
    filled: usize,
    /// Where the block after the last one served starts: a request there is sequential.
    next: u64,
    /// Bytes of the current sequential run of blocks, the one being read included.
    run: u64,
    buf: Vec<u8>,
    /// Bytes read into `buf`, read-ahead included.
    read_bytes: u64,
}

impl ReadWindow {
    /// The segment's bytes, from the window or from one pread (longer when access is
    /// sequential). Only the page cache is read here; what it lacks is read on the blocking
    /// pool (`disk`), so a cold block never holds up the worker's other connections.
    async fn read(&mut self, segment: &Segment, disk: &DiskReads) -> io::Result<&[u8]> {
        let len = segment.len as usize;
        let same = self.file.as_ref().is_some_and(|f| std::sync::Arc::ptr_eq(f, &segment.file));
        let end = segment.offset + segment.len;
        let sequential = same && segment.offset == self.next;
        self.run = if sequential { self.run + segment.len } else { segment.len };
        if !(same && segment.offset >= self.start && end <= self.start + self.filled as u64) {
            let earned = usize::try_from(2 * self.run).unwrap_or(READ_AHEAD).min(READ_AHEAD);
            let want = if sequential { len.max(earned) } else { len };
            if self.buf.len() < want {
                self.buf.resize(want, 0);
            }
            self.file = None;
            let mut filled = 0;
            // At least the segment must arrive; what the read-ahead gets past it is a bonus.
            while filled < len {
                let at = segment.offset + filled as u64;
                match disk_reads::read_cached(&segment.file, &mut self.buf[filled..want], at)? {
                    Cached::Read(0) => return Err(early_end()),
                    Cached::Read(n) => filled += n,
                    Cached::NotCached => {
                        let buf = std::mem::take(&mut self.buf);
                        let (buf, got) = read_from_disk(disk, segment, buf, filled, want).await;
                        self.buf = buf;
                        filled = got?;
                    }
                }
            }
            self.file = Some(std::sync::Arc::clone(&segment.file));
            self.start = segment.offset;
            self.filled = filled;
            self.read_bytes += filled as u64;
        }
        self.next = end;
        let at = (segment.offset - self.start) as usize;
        Ok(&self.buf[at..at + len])
    }
}

fn early_end() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "block file ended early")
}

/// Reads the segment's bytes from `filled` on into `buf` (up to `want`, at least the segment)
/// on the blocking pool; hands the buffer back, read into or not.
async fn read_from_disk(
    disk: &DiskReads,
    segment: &Segment,
    mut buf: Vec<u8>,
    filled: usize,
    want: usize,
) -> (Vec<u8>, io::Result<usize>) {
    let (file, offset, len) = (std::sync::Arc::clone(&segment.file), segment.offset, segment.len as usize);
    let read = move || {
        let mut filled = filled;
        while filled < len {
            match file.read_at(&mut buf[filled..want], offset + filled as u64) {
                Ok(0) => return Ok((buf, Err(early_end()))),
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Ok((buf, Err(e))),
            }
        }
        Ok((buf, Ok(filled)))
    };
    match disk.run(read).await {
        Ok((buf, got)) => (buf, got),
        Err(e) => (Vec::new(), Err(e)),
    }
}

/// How a segment could not be queued.
#[derive(Debug)]
pub enum QueueError {
    /// Reading the file failed before anything was queued: answer with a failure message.
    Read { path: std::sync::Arc<std::path::Path>, error: io::Error },
    /// The file is now shorter than the block (truncated in place since it was opened).
    Truncated { path: std::sync::Arc<std::path::Path>, expected: u64, actual: u64 },
}

impl Outbox {
    pub fn new(coalesce_max_bytes: u64) -> Outbox {
        Outbox {
            items: Vec::new(),
            tail: BytesMut::new(),
            buffered: 0,
            files: 0,
            coalesce_max_bytes,
            window: ReadWindow::default(),
            copied: 0,
        }
    }

    /// The bytes copied in user space since the last call.
    pub fn take_copied(&mut self) -> u64 {
        std::mem::take(&mut self.copied) + std::mem::take(&mut self.window.read_bytes)
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty() && self.tail.is_empty()
    }

    pub fn should_flush(&self) -> bool {
        self.buffered + self.tail.len() >= FLUSH_BYTES || self.files >= FLUSH_FILES
    }

    /// Queues a whole message (headers and any in-frame body).
    pub fn message(&mut self, msg: &Message) {
        msg.encode(&mut self.tail);
    }

    /// Queues `header` (a message whose body is `segment`) followed by the segment's bytes.
    /// `body_in_frame` is false for StreamResponse, whose header counts no body.
    pub async fn message_with_segment(
        &mut self,
        header: &Message,
        segment: Segment,
        body_in_frame: bool,
        disk: &DiskReads,
    ) -> Result<(), QueueError> {
        let mark = self.tail.len();
        if segment.len >= self.coalesce_max_bytes {
            // Checked right before the header is queued: a success header must never promise
            // bytes the file no longer has (one fstat, against a block of agent.sendfile.min.bytes or more).
            let expected = segment.offset + segment.len;
            match segment.file.metadata() {
                Ok(meta) if meta.len() >= expected => {}
                Ok(meta) => return Err(QueueError::Truncated { path: segment.path, expected, actual: meta.len() }),
                Err(error) => return Err(QueueError::Read { path: segment.path, error }),
            }
        }
        header.encode_header(&mut self.tail, if body_in_frame { segment.len } else { 0 });
        if segment.len >= self.coalesce_max_bytes {
            self.push_tail();
            self.files += 1;
            self.items.push(Item::File(segment));
            return Ok(());
        }
        // Small body: copy it next to its header now, so the descriptor is not held.
        match self.window.read(&segment, disk).await {
            Ok(bytes) => {
                if self.tail.capacity() - self.tail.len() < bytes.len() {
                    // Room for the whole batch at once: growing by doubling copied everything
                    // queued so far each time (perf: ~45% of the agent's memmove).
                    self.tail.reserve(FLUSH_BYTES + self.coalesce_max_bytes as usize);
                }
                self.tail.extend_from_slice(bytes);
                self.copied += bytes.len() as u64;
                Ok(())
            }
            Err(e) => {
                // Nothing of this response may leave: drop its header too.
                self.tail.truncate(mark);
                if e.kind() == io::ErrorKind::UnexpectedEof {
                    let actual = segment.file.metadata().map(|m| m.len()).unwrap_or(0);
                    let expected = segment.offset + segment.len;
                    return Err(QueueError::Truncated { path: segment.path, expected, actual });
                }
                Err(QueueError::Read { path: segment.path, error: e })
            }
        }
    }

    fn push_tail(&mut self) {
        if !self.tail.is_empty() {
            let bytes = self.tail.split().freeze();
            self.buffered += bytes.len();
            self.items.push(Item::Bytes(bytes));
        }
    }

    /// Writes everything queued. `idle` bounds each wait for the socket to become writable:
    /// a peer that stops reading for that long is dropped, like Java's idle handler does.
    /// With a session cipher or TLS, everything is encrypted on the way (file bodies
    /// included, read into a bounded buffer: no sendfile).
    pub(in crate::server) async fn flush(
        &mut self,
        sink: Sink<'_>,
        sealing: Option<Sealing<'_>>,
        idle: Duration,
        disk: &DiskReads,
    ) -> io::Result<u64> {
        self.push_tail();
        let written = match (sink, sealing) {
            (Sink::Socket(stream), None) => {
                let mut written = 0u64;
                for item in self.items.drain(..) {
                    written += match item {
                        Item::Bytes(bytes) => write_all(stream, &bytes, idle).await?,
                        Item::File(segment) => send_file(stream, &segment, idle, disk).await?,
                    };
                }
                written
            }
            (mut sink, sealing) => {
                let items = std::mem::take(&mut self.items);
                let written =
                    Box::pin(sealed::write(&mut sink, sealing, &items, idle, &mut self.copied, Some(disk))).await;
                // Keep the vector's capacity for the next batch.
                self.items = items;
                self.items.clear();
                written?
            }
        };
        self.buffered = 0;
        self.files = 0;
        // Between batches the connection may idle for long: give the window's memory back,
        // and the tail's. Split off a batch buffer, the tail would still hold all of it.
        self.copied += self.window.read_bytes;
        self.window = ReadWindow::default();
        self.tail = BytesMut::new();
        Ok(written)
    }
}

async fn writable(stream: &TcpStream, idle: Duration) -> io::Result<()> {
    match tokio::time::timeout(idle, stream.writable()).await {
        Ok(ready) => ready,
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "peer stopped reading")),
    }
}

async fn write_all(stream: &TcpStream, mut buf: &[u8], idle: Duration) -> io::Result<u64> {
    let total = buf.len() as u64;
    while !buf.is_empty() {
        writable(stream, idle).await?;
        match stream.try_write(buf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(total)
}

/// The most one sendfile call sends: the range whose first byte is checked in the page cache.
const SENDFILE_STEP: u64 = 4 << 20;

/// sendfile(2) from the segment's file straight to the socket: the bytes never enter user space.
/// Ranges the page cache does not hold are sent from the blocking pool instead (sendfile there
/// waits for the disk, not for the socket, which stays non-blocking), so the worker is free.
async fn send_file(stream: &TcpStream, segment: &Segment, idle: Duration, disk: &DiskReads) -> io::Result<u64> {
    let mut offset = segment.offset;
    let end = segment.offset + segment.len;
    while offset < end {
        writable(stream, idle).await?;
        let want = (end - offset).min(SENDFILE_STEP);
        let sent = if disk_reads::looks_cached(&segment.file, offset, offset + want)? {
            stream.try_io(Interest::WRITABLE, || {
                rustix::fs::sendfile(stream, &*segment.file, Some(&mut offset), want as usize).map_err(io::Error::from)
            })
        } else {
            let sent = send_file_from_disk(stream, segment, offset, want, disk).await;
            if let Ok(n) = sent {
                offset += n as u64;
            }
            if matches!(&sent, Err(e) if e.kind() == io::ErrorKind::WouldBlock) {
                // The socket filled: clear tokio's readiness so the next wait really waits.
                let _ = stream.try_io(Interest::WRITABLE, || Err::<(), _>(io::ErrorKind::WouldBlock.into()));
            }
            sent
        };
        match sent {
            // The file shrank under us after its header went out: the only honest move left is
            // to drop the connection, as the JVM service does (the client retries).
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("{} ended at byte {offset} of {end}", segment.path.display()),
                ))
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(segment.len)
}

/// One sendfile call on the blocking pool, through a duplicate of the socket's descriptor: the
/// pool's thread may outlive this connection's task (cancelled at shutdown), and must never
/// write to a descriptor number reused by another connection.
async fn send_file_from_disk(
    stream: &TcpStream,
    segment: &Segment,
    offset: u64,
    want: u64,
    disk: &DiskReads,
) -> io::Result<usize> {
    use std::os::fd::AsFd;
    let socket = rustix::io::fcntl_dupfd_cloexec(stream.as_fd(), 0)?;
    let file = std::sync::Arc::clone(&segment.file);
    disk.run(move || {
        let mut at = offset;
        rustix::fs::sendfile(&socket, &*file, Some(&mut at), want as usize).map_err(io::Error::from)
    })
    .await
}
