//! Causal multi-head attention over a ring KV cache.
//!
//! Each stream owns one ring of `capacity` key/value slots per layer. Position `p` is written to
//! slot `p % capacity`, so memory stays constant however long a session runs. Which slots a
//! query may see follows the reference exactly: a key is visible when it was written, is not in
//! the future, and lies less than `context` steps back. With several positions written per call
//! (Mimi's transformer gets 2 per frame), the newest overwrite the oldest before the queries
//! run, as in the reference's streaming mode.
//!
//! A ring may pin its first positions (a session's prefix latents, [`crate::gist`]): they keep
//! slots of their own and stay visible for the whole session, however far it runs past the
//! context; the other positions cycle through the remaining slots.

use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::activation::softmax;

use crate::error::{Error, Result};
use crate::kernels::attention::Ring;

/// Keys and values of one layer for one stream.
#[derive(Debug)]
pub struct KvCache {
    k: Option<Tensor<4>>,
    v: Option<Tensor<4>>,
    capacity: usize,
    /// First positions that keep their slots for good.
    pinned: usize,
    /// Number of positions written so far.
    end: usize,
}

/// A clone owns its own ring on the device: the fused step writes rings in place.
impl Clone for KvCache {
    fn clone(&self) -> Self {
        let copy = |t: &Option<Tensor<4>>| t.as_ref().map(|t| t.clone().mul_scalar(1.0));
        Self { k: copy(&self.k), v: copy(&self.v), capacity: self.capacity, pinned: self.pinned, end: self.end }
    }
}

impl KvCache {
    pub fn new(capacity: usize) -> Self {
        Self::pinned(capacity, 0)
    }

    /// A ring of `capacity` cycling slots after `pinned` slots kept by the first positions.
    pub fn pinned(capacity: usize, pinned: usize) -> Self {
        Self { k: None, v: None, capacity: capacity + pinned, pinned, end: 0 }
    }

    /// Positions pinned at the front.
    pub fn pinned_positions(&self) -> usize {
        self.pinned
    }

    /// Where the ring stands, for a fused step of `context`.
    pub fn ring(&self, context: Option<usize>) -> Ring {
        Ring { written: self.end, capacity: self.capacity, context, pinned: self.pinned }
    }

    /// The ring's keys and values `[1, heads, cap, hd]` (zeros before the first write), taken
    /// out so that a fused step can write them in place; [`KvCache::put`] gives them back.
    pub fn take(&mut self, heads: usize, head_dim: usize, device: &Device, dtype: DType) -> (Tensor<4>, Tensor<4>) {
        let shape = [1, heads, self.capacity, head_dim];
        match (self.k.take(), self.v.take()) {
            (Some(k), Some(v)) => (k, v),
            _ => (Tensor::zeros(shape, (device, dtype)), Tensor::zeros(shape, (device, dtype))),
        }
    }

    /// Gives back the ring after a step that wrote `t` positions.
    pub fn put(&mut self, k: Tensor<4>, v: Tensor<4>, t: usize) {
        self.k = Some(k);
        self.v = Some(v);
        self.end += t;
    }

    /// Forgets every position but keeps the ring's memory (a depth transformer's ring, reused
    /// frame after frame).
    pub fn reset(&mut self) {
        self.end = 0;
    }

    /// Writes `k`, `v` `[1, H, T, D]` and returns the whole ring with each slot's position
    /// (`-1` for slots never written).
    pub fn append(&mut self, k: Tensor<4>, v: Tensor<4>) -> Result<(Tensor<4>, Tensor<4>, Vec<i64>)> {
        let [_, h, t, d] = k.dims();
        let cap = self.capacity;
        let ring = self.ring(None);
        // The pinned prefix may come in one call; later calls must fit the cycling slots.
        let room = if self.end < self.pinned { cap } else { cap - self.pinned };
        if t > room {
            return Err(Error::input(format!("{t} positions in one step exceed the attention cache of {room}")));
        }
        let (mut ck, mut cv) = match (self.k.take(), self.v.take()) {
            (Some(ck), Some(cv)) => (ck, cv),
            _ => (
                Tensor::zeros([1, h, cap, d], (&k.device(), k.dtype())),
                Tensor::zeros([1, h, cap, d], (&v.device(), v.dtype())),
            ),
        };
        // Runs of consecutive slots, each one slice-assign.
        let mut done = 0;
        while done < t {
            let slot = ring.slot_of(self.end + done);
            let mut n = 1;
            while done + n < t && ring.slot_of(self.end + done + n) == slot + n {
                n += 1;
            }
            ck = ck.slice_assign([0..1, 0..h, slot..slot + n, 0..d], k.clone().narrow(2, done, n));
            cv = cv.slice_assign([0..1, 0..h, slot..slot + n, 0..d], v.clone().narrow(2, done, n));
            done += n;
        }
        self.end += t;
        let positions = (0..cap).map(|i| ring.slot_position(i, self.end)).collect();
        self.k = Some(ck.clone());
        self.v = Some(cv.clone());
        Ok((ck, cv, positions))
    }
}

pub use crate::kernels::attention::mask_bias;

/// Scaled dot-product attention of `q` `[B, H, T, D]` over `k`, `v` `[B, H, K, D]`.
pub fn attend(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, bias: Tensor<4>) -> Tensor<4> {
    let d = q.dims()[3];
    let scores = q.matmul(k.swap_dims(2, 3)).mul_scalar(1.0 / (d as f64).sqrt()) + bias;
    softmax(scores, 3).matmul(v)
}
