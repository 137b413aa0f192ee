//! Streaming state that many streams share for one batched step.
//!
//! Every streaming layer keeps each stream's history (conv tails, KV rings, token rings). To
//! step sessions that started at different times in one batch, their states are merged, the
//! batch is stepped, and the result is split back, one part per stream. While a session's state
//! is lent to a batch the session holds an empty one.

use std::mem;

/// Per-stream streaming state that can be joined into a batch and split again.
pub trait Batched: Sized {
    /// A state of no streams.
    fn empty() -> Self;
    /// Number of streams in this state.
    fn batch(&self) -> usize;
    /// Joins states along the batch, streams in order (each keeps its own history).
    fn merge(parts: Vec<Self>) -> Self;
    /// One state per stream, in order: the inverse of [`Batched::merge`].
    fn split(self) -> Vec<Self>;
}

/// Takes the states out of `slots` (leaving empty ones behind) and merges them into one batch.
pub fn lend<'a, S: Batched + 'a>(slots: impl IntoIterator<Item = &'a mut S>) -> S {
    S::merge(slots.into_iter().map(|s| mem::replace(s, S::empty())).collect())
}

/// Splits a batch made by [`lend`] and puts each stream's state back in its slot, in order.
pub fn give_back<'a, S: Batched + 'a>(slots: impl IntoIterator<Item = &'a mut S>, batch: S) {
    for (slot, part) in slots.into_iter().zip(batch.split()) {
        *slot = part;
    }
}
