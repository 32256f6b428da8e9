//! A streaming cache fill: the origin body of a miss, collected for the store while every
//! client of the miss reads it as it arrives.
//!
//! One writer (the miss's load, detached from any client) appends the origin's chunks; each
//! reader is a response body reading from the first byte at its own pace. While the body may
//! still be stored (at most `max_body_bytes`), every chunk is kept: the store needs them all, so
//! a slow reader costs nothing extra and a reader that joins late gets the body from the start.
//! Past the limit the fill is a relay and holds at most `max_body_bytes` (plus the chunk in
//! hand): chunks every reader has read are dropped; a reader more than the limit behind the
//! fastest one fails (a body error) instead of holding the others back; and when the fastest
//! reader itself is that far behind, the fill waits for it before reading the origin further,
//! so a lone slow client paces the origin as it would without the cache.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use http_body::{Frame, SizeHint};
use tokio::time::Instant;

/// The error type of [`SwrBody`](crate::SwrBody): the inner body's own, or one of the layer's.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a body read from a streaming fill failed.
#[derive(Debug, Clone)]
pub(crate) enum FillError {
    /// The origin's body failed (its error, shared by every reader).
    Origin(Arc<dyn std::error::Error + Send + Sync>),
    /// The fill ended without the end of the body (its load was dropped: runtime shutdown).
    Abandoned,
    /// The reader fell more than the body limit behind the others in a fill too large to store.
    FellBehind,
    /// The origin's body did not have the length its `Content-Length` stated.
    Length { declared: u64, received: u64 },
}

impl fmt::Display for FillError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // The origin's own error, as a client reading the origin directly would see it.
            Self::Origin(error) => error.fmt(f),
            Self::Abandoned => f.write_str("the cache fill ended before the response body did"),
            Self::FellBehind => {
                f.write_str("the client read too slowly to keep up with an uncacheable fill")
            }
            Self::Length { declared, received } => write!(
                f,
                "the origin stated a Content-Length of {declared} and sent {received} bytes"
            ),
        }
    }
}

impl std::error::Error for FillError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Origin(error) => Some(&**error),
            _ => None,
        }
    }
}

/// The shared buffer of one fill.
pub(crate) struct Fill {
    state: Mutex<State>,
    /// The body limit: what is stored, and how far a reader may lag past it.
    limit: usize,
    /// The origin's `Content-Length`, which the body must match.
    declared: Option<u64>,
    /// The origin body's exact length, when its size hint gave one.
    exact: Option<u64>,
}

struct State {
    /// Each chunk with the offset of its first byte in the body.
    chunks: VecDeque<(usize, Bytes)>,
    /// The index (from the start of the body) of `chunks[0]`.
    first: usize,
    /// Bytes in `chunks`.
    held: usize,
    /// Bytes received.
    total: usize,
    /// When the origin last sent a byte (or the fill began).
    progress: Instant,
    /// Still within the limit: every chunk is kept for the store.
    storing: bool,
    end: Option<Result<(), FillError>>,
    readers: Vec<Option<Slot>>,
    /// The writer, waiting for the readers of a fill past the limit to make room.
    writer: Option<Waker>,
}

struct Slot {
    /// The index of the next chunk this reader reads.
    next: usize,
    /// Bytes read.
    read: u64,
    waker: Option<Waker>,
    fell_behind: bool,
}

fn lock(fill: &Fill) -> MutexGuard<'_, State> {
    // Each critical section leaves the state consistent: poisoning is ignored.
    fill.state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl State {
    fn wake_all(&mut self) {
        for slot in self.readers.iter_mut().flatten() {
            if let Some(waker) = slot.waker.take() {
                waker.wake();
            }
        }
    }

    fn live(&self) -> impl Iterator<Item = &Slot> {
        self.readers
            .iter()
            .flatten()
            .filter(|slot| !slot.fell_behind)
    }

    /// Whether the writer may read on: the body is still kept whole, the fill holds no more
    /// than the limit, or nobody reads it.
    fn has_room(&self, limit: usize) -> bool {
        self.storing || self.held <= limit || self.live().next().is_none()
    }

    /// Past the limit: fails the readers more than `limit` bytes behind the fastest one, drops
    /// what every remaining reader has read, and lets the writer on if there is room.
    fn trim(&mut self, limit: usize) {
        if self.storing {
            return;
        }
        let end = self.first + self.chunks.len();
        let (first, total) = (self.first, self.total);
        let offset = |chunks: &VecDeque<(usize, Bytes)>, next: usize| {
            chunks
                .get(next.saturating_sub(first))
                .map_or(total, |c| c.0)
        };
        let fastest = self.live().map(|slot| slot.next).max().unwrap_or(end);
        for slot in self.readers.iter_mut().flatten() {
            let behind = total - offset(&self.chunks, slot.next);
            if !slot.fell_behind && slot.next < fastest && behind > limit {
                slot.fell_behind = true;
                if let Some(waker) = slot.waker.take() {
                    waker.wake();
                }
            }
        }
        let slowest = self.live().map(|slot| slot.next).min().unwrap_or(end);
        while self.first < slowest {
            if let Some((_, chunk)) = self.chunks.pop_front() {
                self.held -= chunk.len();
            }
            self.first += 1;
        }
        if self.has_room(limit) {
            if let Some(writer) = self.writer.take() {
                writer.wake();
            }
        }
    }
}

/// What became of a chunk the writer appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pushed {
    /// Kept for the store.
    Storing,
    /// This chunk took the body past the limit: the fill will not be stored.
    WentOver,
    /// Relayed to the readers, not stored.
    Relaying,
    /// Not stored and nobody reads: the fill may stop.
    Unwanted,
}

impl Fill {
    pub(crate) fn new(limit: usize, declared: Option<u64>, exact: Option<u64>) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                chunks: VecDeque::new(),
                first: 0,
                held: 0,
                total: 0,
                progress: Instant::now(),
                storing: true,
                end: None,
                readers: Vec::new(),
                writer: None,
            }),
            limit,
            declared,
            exact: declared.or(exact),
        })
    }

    /// A reader from the first byte; `None` once the fill has dropped its start (too large).
    pub(crate) fn reader(self: &Arc<Self>) -> Option<FillReader> {
        let mut state = lock(self);
        if state.first > 0 {
            return None;
        }
        let slot = Slot {
            next: 0,
            read: 0,
            waker: None,
            fell_behind: false,
        };
        let id = match state.readers.iter().position(Option::is_none) {
            Some(free) => {
                state.readers[free] = Some(slot);
                free
            }
            None => {
                state.readers.push(Some(slot));
                state.readers.len() - 1
            }
        };
        Some(FillReader {
            fill: Arc::clone(self),
            id,
            done: false,
        })
    }

    /// Appends a chunk from the origin.
    pub(crate) fn push(&self, chunk: Bytes) -> Pushed {
        let mut state = lock(self);
        let offset = state.total;
        state.progress = Instant::now();
        state.total = state.total.saturating_add(chunk.len());
        state.held += chunk.len();
        state.chunks.push_back((offset, chunk));
        let went_over = state.storing && state.total > self.limit;
        if went_over {
            state.storing = false;
        }
        state.wake_all();
        state.trim(self.limit);
        let reading = state.live().next().is_some();
        match (state.storing, went_over) {
            (true, _) => Pushed::Storing,
            (false, _) if !reading => Pushed::Unwanted,
            (false, true) => Pushed::WentOver,
            (false, false) => Pushed::Relaying,
        }
    }

    /// The origin body ended: the readers end, and the whole body is returned if it is kept.
    /// A body of another length than the origin stated is a body error for the readers (the
    /// head they were sent promised another); the caller does not store it.
    pub(crate) fn finish(&self) -> Option<Bytes> {
        let mut state = lock(self);
        let received = state.total as u64;
        state.end = Some(match self.declared {
            Some(declared) if declared != received => Err(FillError::Length { declared, received }),
            _ => Ok(()),
        });
        state.wake_all();
        if !state.storing {
            return None;
        }
        Some(match state.chunks.len() {
            0 => Bytes::new(),
            // Copied, not shared: the chunk may be a slice of a larger buffer (see `buffer`).
            1 => Bytes::copy_from_slice(&state.chunks[0].1),
            _ => {
                let mut whole = BytesMut::with_capacity(state.total);
                for (_, chunk) in &state.chunks {
                    whole.extend_from_slice(chunk);
                }
                whole.freeze()
            }
        })
    }

    /// The fill failed: every reader fails once it has read what came before.
    pub(crate) fn fail(&self, error: FillError) {
        let mut state = lock(self);
        if state.end.is_none() {
            state.end = Some(Err(error));
        }
        state.wake_all();
    }

    /// Whether the body will be stored if it ends well: its length is known and fits.
    pub(crate) fn expects_to_store(&self) -> bool {
        self.exact.is_some_and(|len| len <= self.limit as u64)
    }

    /// Whether a client still reads the fill.
    pub(crate) fn has_readers(&self) -> bool {
        lock(self).live().next().is_some()
    }

    /// How long since the origin last sent a byte of it.
    pub(crate) fn idle(&self) -> std::time::Duration {
        lock(self).progress.elapsed()
    }

    /// Ready when the writer may read the origin on (see [`State::has_room`]).
    pub(crate) fn poll_room(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = lock(self);
        if state.has_room(self.limit) {
            return Poll::Ready(());
        }
        state.writer = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl fmt::Debug for Fill {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fill")
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

/// The writer's hold on a fill: a fill dropped before its end (its load was dropped) fails its
/// readers rather than leave them waiting.
pub(crate) struct FillWriter(pub(crate) Arc<Fill>);

impl Drop for FillWriter {
    fn drop(&mut self) {
        self.0.fail(FillError::Abandoned);
    }
}

/// One client's read of a fill, from the first byte.
pub(crate) struct FillReader {
    fill: Arc<Fill>,
    id: usize,
    done: bool,
}

impl FillReader {
    pub(crate) fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let limit = self.fill.limit;
        let mut state = lock(&self.fill);
        let state = &mut *state;
        let Some(slot) = state.readers.get_mut(self.id).and_then(Option::as_mut) else {
            self.done = true;
            return Poll::Ready(None);
        };
        if slot.fell_behind || slot.next < state.first {
            self.done = true;
            return Poll::Ready(Some(Err(Box::new(FillError::FellBehind))));
        }
        if let Some((_, chunk)) = state.chunks.get(slot.next - state.first) {
            let chunk = chunk.clone();
            slot.next += 1;
            slot.read += chunk.len() as u64;
            state.trim(limit);
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        match &state.end {
            Some(Ok(())) => {
                self.done = true;
                Poll::Ready(None)
            }
            Some(Err(error)) => {
                self.done = true;
                Poll::Ready(Some(Err(Box::new(error.clone()))))
            }
            None => {
                slot.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    pub(crate) fn is_end_stream(&self) -> bool {
        if self.done {
            return true;
        }
        let state = lock(&self.fill);
        let slot = state.readers.get(self.id).and_then(Option::as_ref);
        matches!(state.end, Some(Ok(())))
            && slot.is_some_and(|s| !s.fell_behind && s.next == state.first + state.chunks.len())
    }

    pub(crate) fn size_hint(&self) -> SizeHint {
        let state = lock(&self.fill);
        let read = (state.readers.get(self.id).and_then(Option::as_ref)).map_or(0, |s| s.read);
        match (&state.end, self.fill.exact) {
            (Some(Ok(())), _) => SizeHint::with_exact((state.total as u64).saturating_sub(read)),
            (None, Some(exact)) => SizeHint::with_exact(exact.saturating_sub(read)),
            _ => {
                let mut hint = SizeHint::new();
                hint.set_lower((state.total as u64).saturating_sub(read));
                hint
            }
        }
    }
}

impl Drop for FillReader {
    fn drop(&mut self) {
        let mut state = lock(&self.fill);
        if let Some(slot) = state.readers.get_mut(self.id) {
            *slot = None;
        }
        state.trim(self.fill.limit);
    }
}

impl fmt::Debug for FillReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FillReader")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}
