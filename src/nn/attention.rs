//! Causal multi-head attention over a ring KV cache.
//!
//! Each stream owns one ring of `capacity` key/value slots per layer. Position `p` is written to
//! slot `p % capacity`, so memory stays constant however long a session runs. Which slots a
//! query may see follows the reference exactly: a key is visible when it was written, is not in
//! the future, and lies less than `context` steps back. With several positions written per call
//! (Mimi's transformer gets 2 per frame), the newest overwrite the oldest before the queries
//! run, as in the reference's streaming mode.

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
    /// Number of positions written so far.
    end: usize,
}

/// A clone owns its own ring on the device: the fused step writes rings in place.
impl Clone for KvCache {
    fn clone(&self) -> Self {
        let copy = |t: &Option<Tensor<4>>| t.as_ref().map(|t| t.clone().mul_scalar(1.0));
        Self { k: copy(&self.k), v: copy(&self.v), capacity: self.capacity, end: self.end }
    }
}

impl KvCache {
    pub fn new(capacity: usize) -> Self {
        Self { k: None, v: None, capacity, end: 0 }
    }

    /// Where the ring stands, for a fused step of `context`.
    pub fn ring(&self, context: Option<usize>) -> Ring {
        Ring { written: self.end, capacity: self.capacity, context }
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
        if t > cap {
            return Err(Error::input(format!("{t} positions in one step exceed the attention cache of {cap}")));
        }
        let (mut ck, mut cv) = match (self.k.take(), self.v.take()) {
            (Some(ck), Some(cv)) => (ck, cv),
            _ => (
                Tensor::zeros([1, h, cap, d], (&k.device(), k.dtype())),
                Tensor::zeros([1, h, cap, d], (&v.device(), v.dtype())),
            ),
        };
        let mut done = 0;
        while done < t {
            let slot = (self.end + done) % cap;
            let n = (t - done).min(cap - slot);
            ck = ck.slice_assign([0..1, 0..h, slot..slot + n, 0..d], k.clone().narrow(2, done, n));
            cv = cv.slice_assign([0..1, 0..h, slot..slot + n, 0..d], v.clone().narrow(2, done, n));
            done += n;
        }
        let last = (self.end + t - 1) as i64;
        let end_index = last % cap as i64;
        self.end += t;
        let positions = (0..cap as i64)
            .map(|i| {
                if i >= self.end as i64 {
                    -1
                } else {
                    let delta = i - end_index;
                    if delta <= 0 { last + delta } else { last + delta - cap as i64 }
                }
            })
            .collect();
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
