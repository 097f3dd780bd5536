//! A connection's input buffer, and the node-wide budget its large incomplete request frames
//! draw on (`agent.max.pending.frame.bytes`).
//!
//! Every connection may buffer one request frame of up to `agent.max.frame.bytes` (16 MiB) while
//! it arrives; without a node-wide bound, memory would be capped only by `agent.max.connections`
//! times that (64 GiB by default). Ordinary requests are tiny, so only a frame larger than
//! [`SMALL_FRAME`] takes budget, and it takes its whole declared size before the buffer grows
//! for it. Smaller frames never touch the shared semaphore: the hot path takes no shared lock
//! and no shared atomic. The grant lives in [`Input`] and travels with it when the connection
//! moves from the control runtime to the data runtime; it is given back at the first read after
//! its frame was consumed, or when the connection ends (and with it the memory: see
//! `Input::release`).
//!
//! Over budget, the connection stops reading (TCP pushes back on the client) until other
//! connections give budget back, for at most the idle timeout; then it is closed with a WARN and
//! `errors_total{kind="frame_budget"}`. Waiting rather than closing at once keeps honest clients
//! working through a burst of large requests (a FetchShuffleBlocks of 100k blocks is ~1.2 MB):
//! they are delayed by the time the frames ahead of them take to arrive, instead of losing every
//! request in flight on the connection. The whole declared size is granted at once, not grown as
//! bytes arrive, so a connection that was let in can always finish its frame; grants grown
//! piecemeal could leave every holder half-way, each waiting for the others.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};
use tokio_util::sync::CancellationToken;

use super::connection::ConnectionEnd;
use crate::protocol::FrameCodec;

/// Frames up to this size (length field included) are buffered without budget. Requests are far
/// smaller (a fetch of a few thousand blocks); what lies beyond is rare and worth an atomic.
pub const SMALL_FRAME: usize = 64 << 10;

/// A connection's first buffer, and what it goes back to after a large frame.
const INITIAL_CAPACITY: usize = 8 << 10;

/// The budget is kept in units of this many bytes: tokio's semaphore counts permits in `u32`.
const UNIT: usize = 1 << 10;

/// The node-wide budget for large request frames being received. Shared by every connection on
/// both runtimes.
#[derive(Debug)]
pub struct FrameBudget {
    /// One permit per [`UNIT`] bytes. Fair: a waiting large frame is not overtaken forever.
    units: Arc<Semaphore>,
    total_units: u32,
    /// Units held by grants. Not the semaphore's count: tokio hands free permits to a waiting
    /// acquirer bit by bit, and those are not in use by any frame yet.
    granted: Arc<AtomicU64>,
    /// Times a connection had to wait for budget.
    waits: AtomicU64,
}

impl FrameBudget {
    pub fn new(max_bytes: usize) -> FrameBudget {
        let most = u32::try_from(Semaphore::MAX_PERMITS).unwrap_or(u32::MAX);
        let total_units = u32::try_from(max_bytes.div_ceil(UNIT)).unwrap_or(u32::MAX).min(most);
        FrameBudget {
            units: Arc::new(Semaphore::new(total_units as usize)),
            total_units,
            granted: Arc::default(),
            waits: AtomicU64::new(0),
        }
    }

    /// Bytes granted to frames being received now (in whole KiB per frame).
    pub fn in_use_bytes(&self) -> u64 {
        self.granted.load(Ordering::Relaxed) * UNIT as u64
    }

    /// Times a connection had to stop reading because the budget was used up.
    pub fn waits(&self) -> u64 {
        self.waits.load(Ordering::Relaxed)
    }

    /// Takes budget for a frame of `len` bytes, waiting up to `wait` for it.
    async fn take(&self, len: usize, wait: Duration, shutdown: &CancellationToken) -> Result<Grant, ConnectionEnd> {
        let units = u32::try_from(len.div_ceil(UNIT)).unwrap_or(u32::MAX);
        if units > self.total_units {
            // Config validation keeps the budget at least agent.max.frame.bytes; a Settings built
            // by hand may not. Such a frame could never be taken in: do not wait for it.
            return Err(ConnectionEnd::FrameBudget { len, waited: Duration::ZERO });
        }
        match Arc::clone(&self.units).try_acquire_many_owned(units) {
            Ok(permit) => return Ok(self.grant(permit, len)),
            Err(TryAcquireError::Closed) => return Err(ConnectionEnd::Shutdown),
            Err(TryAcquireError::NoPermits) => {}
        }
        self.waits.fetch_add(1, Ordering::Relaxed);
        let acquire = Arc::clone(&self.units).acquire_many_owned(units);
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => Err(ConnectionEnd::Shutdown),
            acquired = tokio::time::timeout(wait, acquire) => match acquired {
                Ok(Ok(permit)) => Ok(self.grant(permit, len)),
                // The semaphore is never closed; if it were, nothing could be granted again.
                Ok(Err(_closed)) => Err(ConnectionEnd::Shutdown),
                Err(_elapsed) => Err(ConnectionEnd::FrameBudget { len, waited: wait }),
            },
        }
    }

    fn grant(&self, permit: OwnedSemaphorePermit, frame_len: usize) -> Grant {
        self.granted.fetch_add(permit.num_permits() as u64, Ordering::Relaxed);
        Grant { permit, frame_len, granted: Arc::clone(&self.granted) }
    }
}

/// Budget held for one large frame; given back when dropped.
#[derive(Debug)]
struct Grant {
    permit: OwnedSemaphorePermit,
    /// The whole length of the frame it was taken for.
    frame_len: usize,
    /// [`FrameBudget::granted`].
    granted: Arc<AtomicU64>,
}

impl Drop for Grant {
    fn drop(&mut self) {
        // The permit itself goes back to the semaphore right after, as a field.
        self.granted.fetch_sub(self.permit.num_permits() as u64, Ordering::Relaxed);
    }
}

/// The bytes read from a connection and not yet decoded, with the budget of the large frame
/// they hold, if any. Moves with the socket from the control runtime to the data runtime.
#[derive(Debug)]
pub(super) struct Input {
    // Declared before `grant`, so dropping an Input frees the memory before the budget.
    pub(super) buf: BytesMut,
    grant: Option<Grant>,
}

impl Input {
    /// Holds no memory until the client sends something (an idle connection costs a few KiB
    /// with 10,000 of them open, not a read buffer each).
    pub(super) fn new() -> Input {
        Input { buf: BytesMut::new(), grant: None }
    }

    /// Room for the next read: the read buffer comes back when the client has sent bytes.
    pub(super) fn reserve_for_read(&mut self) {
        if self.buf.capacity() == self.buf.len() {
            self.buf.reserve(INITIAL_CAPACITY);
        }
    }

    /// Gives the read buffer back while the client sends nothing, unless it holds the start
    /// of a frame (or a large frame's budget) that the next bytes complete.
    pub(super) fn shed(&mut self) {
        if self.buf.is_empty() && self.grant.is_none() && self.buf.capacity() > 0 {
            self.buf = BytesMut::new();
        }
    }

    /// Makes room for the incomplete frame at the front of the buffer before the next read:
    /// taken as is for a small frame, after taking budget for a large one (waiting for it, up
    /// to `wait`, while the budget is used up). Budget held for a frame already consumed is
    /// given back first.
    pub(super) async fn make_room(
        &mut self,
        codec: &FrameCodec,
        budget: &FrameBudget,
        wait: Duration,
        shutdown: &CancellationToken,
    ) -> Result<(), ConnectionEnd> {
        let pending = codec.incomplete_frame_len(&self.buf);
        if self.grant.as_ref().is_some_and(|g| Some(g.frame_len) != pending) {
            self.release();
        }
        let Some(len) = pending else { return Ok(()) };
        if len > SMALL_FRAME && self.grant.is_none() {
            self.grant = Some(budget.take(len, wait, shutdown).await?);
        }
        // Never more than the frame needs; bytes of the frames after it fit in what is left,
        // and the next round makes room for them.
        self.buf.reserve(len - self.buf.len());
        Ok(())
    }

    /// Gives the budget back, and the memory with it: the buffer was sized for the large frame,
    /// and BytesMut would otherwise reuse that allocation for later small frames, holding
    /// memory the budget no longer counts.
    fn release(&mut self) {
        let mut fresh = BytesMut::with_capacity(INITIAL_CAPACITY.max(self.buf.len()));
        fresh.extend_from_slice(&self.buf);
        self.buf = fresh;
        self.grant = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Message;

    fn frame_of(len: usize) -> BytesMut {
        // An RpcRequest whose whole frame is `len` bytes (21 of them prefix and header).
        let mut b = BytesMut::new();
        Message::RpcRequest { request_id: 1, body: vec![0; len - 21].into() }.encode(&mut b);
        assert_eq!(b.len(), len);
        b
    }

    fn wait() -> Duration {
        Duration::from_secs(5)
    }

    #[tokio::test]
    async fn a_small_frame_takes_no_budget_and_a_large_one_its_whole_size() {
        let budget = FrameBudget::new(1 << 20);
        let codec = FrameCodec::new(1 << 20);
        let token = CancellationToken::new();
        let mut input = Input::new();
        input.buf.extend_from_slice(&frame_of(SMALL_FRAME)[..100]);
        input.make_room(&codec, &budget, wait(), &token).await.unwrap();
        assert_eq!(budget.in_use_bytes(), 0);
        assert!(input.buf.capacity() >= SMALL_FRAME);

        let mut input = Input::new();
        input.buf.extend_from_slice(&frame_of(300 << 10)[..100]);
        input.make_room(&codec, &budget, wait(), &token).await.unwrap();
        assert_eq!(budget.in_use_bytes(), 300 << 10);
        assert!(input.buf.capacity() >= 300 << 10);
        drop(input);
        assert_eq!(budget.in_use_bytes(), 0, "an ended connection gives its budget back");
    }

    #[tokio::test]
    async fn budget_and_memory_go_back_once_the_frame_is_consumed() {
        let budget = FrameBudget::new(1 << 20);
        let codec = FrameCodec::new(1 << 20);
        let token = CancellationToken::new();
        let mut input = Input::new();
        let frame = frame_of(300 << 10);
        input.buf.extend_from_slice(&frame[..100]);
        input.make_room(&codec, &budget, wait(), &token).await.unwrap();
        input.buf.extend_from_slice(&frame[100..]);
        input.buf.extend_from_slice(&[0, 0, 0]); // the start of the next frame
        let consumed = input.buf.split_to(frame.len());
        drop(consumed);
        input.make_room(&codec, &budget, wait(), &token).await.unwrap();
        assert_eq!(budget.in_use_bytes(), 0);
        assert_eq!(&input.buf[..], &[0, 0, 0], "unread bytes are kept");
        assert!(input.buf.capacity() <= SMALL_FRAME, "the large allocation is not kept: {}", input.buf.capacity());
    }

    #[tokio::test]
    async fn over_budget_a_frame_waits_until_budget_is_given_back() {
        let budget = Arc::new(FrameBudget::new(512 << 10));
        let codec = FrameCodec::new(1 << 20);
        let token = CancellationToken::new();
        let mut first = Input::new();
        first.buf.extend_from_slice(&frame_of(400 << 10)[..100]);
        first.make_room(&codec, &budget, wait(), &token).await.unwrap();
        let mut second = Input::new();
        second.buf.extend_from_slice(&frame_of(200 << 10)[..100]);
        let waiting = {
            let (budget, token) = (Arc::clone(&budget), token.clone());
            tokio::spawn(async move {
                second.make_room(&FrameCodec::new(1 << 20), &budget, wait(), &token).await.map(|()| second)
            })
        };
        while budget.waits() == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(budget.in_use_bytes(), 400 << 10, "the second frame took nothing yet");
        drop(first);
        let second = waiting.await.unwrap().expect("granted once the first gave its budget back");
        assert_eq!(budget.in_use_bytes(), 200 << 10);
        drop(second);
        assert_eq!(budget.in_use_bytes(), 0);
    }

    #[tokio::test]
    async fn a_frame_that_finds_no_budget_within_the_wait_ends_its_connection() {
        let budget = FrameBudget::new(256 << 10);
        let codec = FrameCodec::new(1 << 20);
        let token = CancellationToken::new();
        let mut holder = Input::new();
        holder.buf.extend_from_slice(&frame_of(200 << 10)[..100]);
        holder.make_room(&codec, &budget, wait(), &token).await.unwrap();
        let mut late = Input::new();
        late.buf.extend_from_slice(&frame_of(100 << 10)[..100]);
        let end = late.make_room(&codec, &budget, Duration::from_millis(20), &token).await.unwrap_err();
        assert!(matches!(end, ConnectionEnd::FrameBudget { len, .. } if len == 100 << 10), "{end}");
        let capacity = late.buf.capacity();
        assert!(capacity < 100 << 10, "no room was made without budget: {capacity}");
        let mut huge = Input::new();
        huge.buf.extend_from_slice(&frame_of(300 << 10)[..100]);
        let end = huge.make_room(&codec, &budget, wait(), &token).await.unwrap_err();
        assert!(matches!(end, ConnectionEnd::FrameBudget { waited, .. } if waited.is_zero()), "never fits: {end}");
        assert_eq!(budget.in_use_bytes(), 200 << 10);
    }
}
