//! The streaming transformer shared by Mimi (LayerNorm, GELU MLP, LayerScale), Moshi's temporal
//! transformer (RMSNorm, SiLU gating) and its depth transformer (weights per step).
//!
//! Batch mode (`state = None`) sees the whole sequence at once with the causal `context` mask.
//! Streaming mode keeps, per stream, a position offset and a ring KV cache per layer; streams in
//! one batch may be at different offsets, which is what lets the daemon batch sessions that
//! joined at different times.

use burn::module::Param;
use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::activation::gelu;

use super::attention::{KvCache, attend, mask_bias};
use super::batch::Batched;
use super::matrix::Matrix;
use super::norm::{Norm, NormKind};
use super::rope::RopeTables;
use crate::error::{Error, Result};
use crate::kernels::attention::{self, Rope, Target};
use crate::kernels::matvec::{self, Input, Weight};
use crate::kernels::residual::{Base, residual_norm};
use crate::weights::Weights;

/// Positional embedding of a transformer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PosEmb {
    None,
    /// RoPE with interleaved pairs (`rope`) or halves (`rope_concat`).
    Rope {
        interleave: bool,
    },
    /// Additive sinusoidal embedding (`sin`).
    Sin,
}

impl PosEmb {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "none" => Ok(PosEmb::None),
            "rope" => Ok(PosEmb::Rope { interleave: true }),
            "rope_concat" => Ok(PosEmb::Rope { interleave: false }),
            "sin" => Ok(PosEmb::Sin),
            other => Err(Error::config(
                "positional_embedding",
                format!("`{other}` is not supported (none, rope, rope_concat, sin)"),
            )),
        }
    }
}

/// Feed-forward activation: a plain GELU MLP (`gating = "none"`) or a gated unit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Ffn {
    Mlp,
    Gated(Act),
}

pub use crate::kernels::act::Act;

impl Ffn {
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "none" => Ffn::Mlp,
            "silu" => Ffn::Gated(Act::Silu),
            "gelu" => Ffn::Gated(Act::Gelu),
            "relu" => Ffn::Gated(Act::Relu),
            "sigmoid" => Ffn::Gated(Act::Sigmoid),
            "tanh" => Ffn::Gated(Act::Tanh),
            other => return Err(Error::config("gating", format!("unknown gating `{other}`"))),
        })
    }
}

/// Hyperparameters of a [`Transformer`].
#[derive(Clone, Debug)]
pub struct TransformerSpec {
    pub d_model: usize,
    pub num_heads: usize,
    pub num_layers: usize,
    pub dim_feedforward: usize,
    pub context: Option<usize>,
    pub norm: NormKind,
    pub layer_scale: bool,
    pub ffn: Ffn,
    pub pos_emb: PosEmb,
    pub max_period: f64,
    /// 0 for shared weights, else the number of steps with their own weights.
    pub weights_per_step: usize,
    pub schedule: Option<Vec<usize>>,
}

impl TransformerSpec {
    /// Hidden width of a gated FFN, as the reference derives it.
    pub fn gated_hidden(&self) -> usize {
        if self.dim_feedforward == 4 * self.d_model { 21 * self.d_model / 8 } else { 2 * self.dim_feedforward / 3 }
    }

    fn weight_sets(&self) -> usize {
        match (&self.schedule, self.weights_per_step) {
            (_, 0) => 1,
            (Some(s), _) => s.iter().copied().max().map_or(1, |m| m + 1),
            (None, n) => n,
        }
    }

    /// Capacity of each stream's KV ring.
    pub fn cache_capacity(&self) -> Result<usize> {
        match (self.context, self.weights_per_step) {
            (Some(c), _) if c > 0 => Ok(c),
            (_, n) if n > 0 => Ok(n),
            _ => Err(Error::config("context", "streaming needs a positive context")),
        }
    }

    fn check(&self) -> Result<()> {
        if self.num_heads == 0
            || !self.d_model.is_multiple_of(self.num_heads)
            || !(self.d_model / self.num_heads).is_multiple_of(2)
        {
            return Err(Error::config(
                "num_heads",
                format!("d_model {} must split into an even head size over {} heads", self.d_model, self.num_heads),
            ));
        }
        Ok(())
    }
}

/// One transformer layer.
#[derive(Module, Debug)]
pub struct Layer {
    pub norm1: Norm,
    pub norm2: Norm,
    /// `[d, 3 d]` (input-major) per weight set.
    pub in_proj: Vec<Matrix>,
    /// `[d, d]` per weight set.
    pub out_proj: Vec<Matrix>,
    /// MLP `linear1` `[d, f]` or gating `linear_in` `[d, 2 h]`, per weight set.
    pub ffn_in: Vec<Matrix>,
    /// MLP `linear2` `[f, d]` or gating `linear_out` `[h, d]`, per weight set.
    pub ffn_out: Vec<Matrix>,
    pub scale1: Option<Param<Tensor<1>>>,
    pub scale2: Option<Param<Tensor<1>>>,
}

/// A stack of layers with its hyperparameters.
#[derive(Module, Debug)]
pub struct Transformer {
    pub layers: Vec<Layer>,
    #[module(skip)]
    pub spec: TransformerSpec,
}

/// Streaming state of one stream.
#[derive(Clone, Debug)]
pub struct RowState {
    pub offset: usize,
    caches: Vec<KvCache>,
}

/// Streaming state of a batch of streams.
#[derive(Clone, Debug)]
pub struct TransformerState {
    pub rows: Vec<RowState>,
    /// Steps processed since the state was created (selects per-step weights).
    pub steps: usize,
}

impl TransformerState {
    /// Forgets every position but keeps the rings' memory: a depth transformer starts each frame
    /// from position 0, and reusing its rings spares clearing new ones.
    pub fn reset(&mut self) {
        self.steps = 0;
        for row in &mut self.rows {
            row.offset = 0;
            row.caches.iter_mut().for_each(KvCache::reset);
        }
    }
}

impl Batched for TransformerState {
    fn empty() -> Self {
        TransformerState { rows: Vec::new(), steps: 0 }
    }

    fn batch(&self) -> usize {
        self.rows.len()
    }

    fn merge(parts: Vec<TransformerState>) -> TransformerState {
        let steps = parts.first().map_or(0, |p| p.steps);
        TransformerState { rows: parts.into_iter().flat_map(|p| p.rows).collect(), steps }
    }

    fn split(self) -> Vec<TransformerState> {
        let steps = self.steps;
        self.rows.into_iter().map(|r| TransformerState { rows: vec![r], steps }).collect()
    }
}

fn lin(x: Tensor<3>, w: &Matrix) -> Tensor<3> {
    crate::kernels::matvec::linear(x, w.val())
}

/// Applies one weight set per time step (`weights_per_step`), or the shared one.
fn per_step(x: Tensor<3>, ws: &[Matrix], schedule: Option<&[usize]>, step: usize) -> Result<Tensor<3>> {
    if ws.len() == 1 {
        return Ok(lin(x, &ws[0]));
    }
    let t = x.dims()[1];
    let mut outs = Vec::with_capacity(t);
    for i in 0..t {
        let mut idx = step + i;
        if let Some(s) = schedule {
            idx = *s.get(idx).ok_or_else(|| Error::input(format!("step {idx} beyond the weights schedule")))?;
        }
        let w = ws.get(idx).ok_or_else(|| Error::input(format!("step {idx} has no weights ({} sets)", ws.len())))?;
        outs.push(lin(x.clone().narrow(1, i, 1), w));
    }
    Ok(Tensor::cat(outs, 1))
}

impl Transformer {
    /// Loads `{prefix}.layers.{i}.*` in the reference checkpoint layout.
    pub fn load(w: &mut dyn Weights, prefix: &str, spec: TransformerSpec) -> Result<Self> {
        spec.check()?;
        let d = spec.d_model;
        let sets = spec.weight_sets();
        let mut layers = Vec::with_capacity(spec.num_layers);
        for i in 0..spec.num_layers {
            let p = format!("{prefix}.layers.{i}");
            let in_proj = w.product_parts(&format!("{p}.self_attn.in_proj_weight"), sets, 3 * d, d)?;
            let out_name = format!("{p}.self_attn.out_proj.weight");
            // A narrow layer's output projection runs inside its attention launch, which reads
            // float weights: it stays float under 8 bits (one launch fewer a layer-step).
            let out_proj = if d <= attention::PROJECT_MAX_WIDTH {
                w.linear_parts(&out_name, sets, d, d)?.into_iter().map(Matrix::new).collect()
            } else {
                w.product_parts(&out_name, sets, d, d)?
            };
            let (ffn_in, ffn_out) = match spec.ffn {
                Ffn::Mlp => {
                    let f = spec.dim_feedforward;
                    (
                        vec![w.product(&format!("{p}.linear1.weight"), &[f, d], f, d)?],
                        vec![w.product(&format!("{p}.linear2.weight"), &[d, f], d, f)?],
                    )
                }
                Ffn::Gated(_) => {
                    let h = spec.gated_hidden();
                    let mut fi = Vec::new();
                    let mut fo = Vec::new();
                    for s in 0..sets {
                        let g =
                            if spec.weights_per_step > 0 { format!("{p}.gating.{s}") } else { format!("{p}.gating") };
                        fi.push(w.product(&format!("{g}.linear_in.weight"), &[2 * h, d], 2 * h, d)?);
                        fo.push(w.product(&format!("{g}.linear_out.weight"), &[d, h], d, h)?);
                    }
                    (fi, fo)
                }
            };
            let (scale1, scale2) = if spec.layer_scale {
                (
                    Some(w.param(&format!("{p}.layer_scale_1.scale"), [d])?),
                    Some(w.param(&format!("{p}.layer_scale_2.scale"), [d])?),
                )
            } else {
                (None, None)
            };
            layers.push(Layer {
                norm1: Norm::load(w, &format!("{p}.norm1"), spec.norm, d)?,
                norm2: Norm::load(w, &format!("{p}.norm2"), spec.norm, d)?,
                in_proj,
                out_proj,
                ffn_in,
                ffn_out,
                scale1,
                scale2,
            });
        }
        Ok(Self { layers, spec })
    }

    /// A fresh streaming state for `batch` streams.
    pub fn init_state(&self, batch: usize) -> Result<TransformerState> {
        self.init_state_pinned(batch, 0)
    }

    /// A fresh streaming state for `batch` streams whose first `pinned` positions stay in the
    /// attention cache for the whole stream (a prefix, fed before anything else).
    pub fn init_state_pinned(&self, batch: usize, pinned: usize) -> Result<TransformerState> {
        let cap = self.spec.cache_capacity()?;
        let caches = || (0..self.spec.num_layers).map(|_| KvCache::pinned(cap, pinned)).collect();
        Ok(TransformerState { rows: (0..batch).map(|_| RowState { offset: 0, caches: caches() }).collect(), steps: 0 })
    }

    /// Most positions a stream may bring to one fused step ([`Transformer::step`]).
    pub const MAX_STEP_POSITIONS: usize = 4;

    /// Whether [`Transformer::step`] takes `t` positions per stream: a few positions, weights
    /// shared or one position at a time, and no additive sinusoidal embedding.
    pub fn steps_fused(&self, t: usize) -> bool {
        (1..=Self::MAX_STEP_POSITIONS).contains(&t)
            && (self.spec.weights_per_step == 0 || t == 1)
            && self.spec.pos_emb != PosEmb::Sin
            && !self.layers.is_empty()
    }

    /// The RoPE tables of the next `t` positions of each stream of `state` (`None` without RoPE),
    /// to make before the first launch of a stage: an upload after launches costs a submit.
    pub fn step_rope(&self, state: &TransformerState, t: usize, device: &Device) -> Option<Rope> {
        match self.spec.pos_emb {
            PosEmb::Rope { interleave } => {
                let offsets: Vec<usize> = state.rows.iter().map(|r| r.offset).collect();
                let head_dim = self.spec.d_model / self.spec.num_heads;
                Some(RopeTables::new(&offsets, t, head_dim, self.spec.max_period, device).into_rope(interleave))
            }
            _ => None,
        }
    }

    /// Index of the weight set of step `step` (per-step weights), else 0.
    fn weight_set(&self, step: usize) -> Result<usize> {
        if self.spec.weights_per_step == 0 {
            return Ok(0);
        }
        match &self.spec.schedule {
            Some(s) => {
                s.get(step).copied().ok_or_else(|| Error::input(format!("step {step} beyond the weights schedule")))
            }
            None => Ok(step),
        }
    }

    /// The next `T` positions of each stream (`x` `[B, T, d]`) as one streaming step of few,
    /// fused launches per layer: a product into partials, attention with the ring write, a
    /// product, the residual with the next norm, two products, the residual with the next norm
    /// (`kernels/`; Burn's ops where a kernel cannot run). `h` is `x` already normalised by the
    /// first layer's `norm1`, when the caller fused it; `rope` the step's tables
    /// ([`Transformer::step_rope`], made here when `None`); `final_norm` is applied to the output
    /// in the last residual launch. Returns the output `[B, T, d]` and, with `final_norm`, its
    /// normalised form.
    pub fn step(
        &self,
        x: Tensor<3>,
        h: Option<Tensor<2>>,
        state: &mut TransformerState,
        rope: Option<&Rope>,
        final_norm: Option<&Norm>,
    ) -> Result<(Tensor<3>, Option<Tensor<3>>)> {
        let [b, t, c] = x.dims();
        if c != self.spec.d_model {
            return Err(Error::input(format!("transformer input width {c}, expected {}", self.spec.d_model)));
        }
        if state.rows.len() != b {
            return Err(Error::input(format!("transformer state holds {} streams, input has {b}", state.rows.len())));
        }
        if !self.steps_fused(t) {
            return Err(Error::input(format!("{t} positions a stream do not take the fused step")));
        }
        let device = x.device();
        let dtype = x.dtype();
        let rows = b * t;
        let heads = self.spec.num_heads;
        let head_dim = c / heads;
        let own_rope;
        let rope = match rope {
            Some(r) => Some(r),
            None => {
                own_rope = self.step_rope(state, t, &device);
                own_rope.as_ref()
            }
        };
        let set = self.weight_set(state.steps)?;
        let mut x = x.reshape([rows, c]);
        let first = self.layers[0].norm1.params();
        let mut h = match h {
            Some(h) => Some(h),
            None => residual_norm(Base::Rows(x.clone()), None, None, Some(&first), dtype).1,
        };
        for (li, layer) in self.layers.iter().enumerate() {
            let weights = |ws: &[Matrix]| {
                ws.get(set).map(Matrix::weight).ok_or_else(|| Error::input(format!("no weights for step {set}")))
            };
            let normed = h.take().ok_or_else(|| Error::input("fused step lost its normalised input"))?;
            // Attention block.
            let qkv = matvec::partials(Input::Rows(normed.reshape([1, rows, c])), weights(&layer.in_proj)?);
            let w_out = weights(&layer.out_proj)?;
            // Narrow models take the output projection in the attention launch.
            let project = c <= attention::PROJECT_MAX_WIDTH && crate::kernels::run_on(&device);
            let mut target = if let (true, Weight::Float(w)) = (project, &w_out) {
                Target::Projected { partials: Tensor::empty([heads, rows, c], (&device, DType::F32)), w: w.clone() }
            } else {
                Target::Rows(Tensor::empty([rows, c], (&device, dtype)))
            };
            for (bi, row) in state.rows.iter_mut().enumerate() {
                let cache = &mut row.caches[li];
                let (k, v) = cache.take(heads, head_dim, &device, dtype);
                let ring = cache.ring(self.spec.context);
                let (o, k, v) = attention::attend(qkv.clone(), bi * t, t, k, v, rope, ring, target);
                cache.put(k, v, t);
                target = o;
            }
            let update = match target {
                Target::Rows(out) => matvec::partials(Input::Rows(out.reshape([1, rows, c])), w_out),
                projected => projected.into_tensor(),
            };
            let scale1 = layer.scale1.as_ref().map(|s| s.val());
            let (x1, h1) =
                residual_norm(Base::Rows(x), Some(update.into()), scale1, Some(&layer.norm2.params()), dtype);
            let h1 = h1.ok_or_else(|| Error::input("fused step lost its normalised input"))?;
            // Feed-forward block.
            let g = matvec::partials(Input::Rows(h1.reshape([1, rows, c])), weights(&layer.ffn_in)?);
            let hidden = match self.spec.ffn {
                Ffn::Mlp => Input::Gelu(g),
                Ffn::Gated(act) => Input::Gated(g, act),
            };
            let update = matvec::partials(hidden, weights(&layer.ffn_out)?);
            let next = match self.layers.get(li + 1) {
                Some(l) => Some(l.norm1.params()),
                None => final_norm.map(Norm::params),
            };
            let scale2 = layer.scale2.as_ref().map(|s| s.val());
            let (x2, h2) = residual_norm(Base::Rows(x1), Some(update.into()), scale2, next.as_ref(), dtype);
            x = x2;
            h = h2;
        }
        for r in &mut state.rows {
            r.offset += t;
        }
        state.steps += t;
        Ok((x.reshape([b, t, c]), h.map(|h| h.reshape([b, t, c]))))
    }

    /// Runs `x` `[B, T, d]`: the whole sequence (`state = None`) or the next `T` steps of each
    /// stream, the latter through [`Transformer::step`] where it takes them.
    pub fn forward(&self, x: Tensor<3>, state: Option<&mut TransformerState>) -> Result<Tensor<3>> {
        self.forward_pinned(x, state, 0)
    }

    /// [`Transformer::forward`]; in batch mode (`state = None`) the first `pinned` positions stay
    /// visible to every query whatever the context, as a pinned streaming prefix does.
    pub fn forward_pinned(
        &self,
        x: Tensor<3>,
        mut state: Option<&mut TransformerState>,
        pinned: usize,
    ) -> Result<Tensor<3>> {
        let [b, t, c] = x.dims();
        if let Some(s) = state.as_deref_mut()
            && self.steps_fused(t)
            && s.rows.len() == b
            && c == self.spec.d_model
        {
            return Ok(self.step(x, None, s, None, None)?.0);
        }
        if c != self.spec.d_model {
            return Err(Error::input(format!("transformer input width {c}, expected {}", self.spec.d_model)));
        }
        let device = x.device();
        let dtype = x.dtype();
        let (offsets, step) = match state.as_deref() {
            Some(s) => {
                if s.rows.len() != b {
                    return Err(Error::input(format!(
                        "transformer state holds {} streams, input has {b}",
                        s.rows.len()
                    )));
                }
                (s.rows.iter().map(|r| r.offset).collect::<Vec<_>>(), s.steps)
            }
            None => (vec![0; b], 0),
        };
        let head_dim = c / self.spec.num_heads;
        let rope = match self.spec.pos_emb {
            PosEmb::Rope { .. } => Some(RopeTables::new(&offsets, t, head_dim, self.spec.max_period, &device)),
            _ => None,
        };
        let mut x = x;
        if self.spec.pos_emb == PosEmb::Sin {
            x = x + sin_embedding(&offsets, t, c, self.spec.max_period, &device).cast(dtype);
        }
        // Batch mode: one mask for every stream.
        let batch_bias = state.is_none().then(|| {
            let pos: Vec<i64> = (0..t as i64).collect();
            mask_bias(&pos, &pos, self.spec.context, pinned, &device, dtype)
        });
        for (li, layer) in self.layers.iter().enumerate() {
            let schedule = self.spec.schedule.as_deref();
            // Self-attention block.
            let h = layer.norm1.forward(x.clone());
            let qkv = per_step(h, &layer.in_proj, schedule, step)?;
            let heads = self.spec.num_heads;
            let qkv = qkv.reshape([b, t, 3, heads, head_dim]).permute([2, 0, 3, 1, 4]);
            let mut q: Tensor<4> = qkv.clone().narrow(0, 0, 1).reshape([b, heads, t, head_dim]);
            let mut k: Tensor<4> = qkv.clone().narrow(0, 1, 1).reshape([b, heads, t, head_dim]);
            let v: Tensor<4> = qkv.narrow(0, 2, 1).reshape([b, heads, t, head_dim]);
            if let (Some(r), PosEmb::Rope { interleave }) = (&rope, self.spec.pos_emb) {
                q = r.apply(q, interleave);
                k = r.apply(k, interleave);
            }
            let attn = match state.as_deref_mut() {
                None => attend(q, k, v, batch_bias.clone().ok_or_else(|| Error::input("mask"))?),
                Some(s) => {
                    let mut outs = Vec::with_capacity(b);
                    for (bi, row) in s.rows.iter_mut().enumerate() {
                        let (ck, cv, kpos) =
                            row.caches[li].append(k.clone().narrow(0, bi, 1), v.clone().narrow(0, bi, 1))?;
                        let qpos: Vec<i64> = (0..t).map(|i| (row.offset + i) as i64).collect();
                        let pinned = row.caches[li].pinned_positions();
                        let bias = mask_bias(&qpos, &kpos, self.spec.context, pinned, &device, dtype);
                        outs.push(attend(q.clone().narrow(0, bi, 1), ck, cv, bias));
                    }
                    Tensor::cat(outs, 0)
                }
            };
            let attn = attn.swap_dims(1, 2).reshape([b, t, c]);
            let mut update = per_step(attn, &layer.out_proj, schedule, step)?;
            if let Some(s) = &layer.scale1 {
                update = update * s.val().reshape([1, 1, c]);
            }
            x = x + update;
            // Feed-forward block.
            let h = layer.norm2.forward(x.clone());
            let mut update = match self.spec.ffn {
                Ffn::Mlp => lin(gelu(lin(h, &layer.ffn_in[0])), &layer.ffn_out[0]),
                Ffn::Gated(act) => {
                    let hidden = self.spec.gated_hidden();
                    let mut outs = Vec::with_capacity(t);
                    // Per-step weights apply to one time step at a time.
                    let steps: Vec<(usize, Tensor<3>)> = if layer.ffn_in.len() == 1 {
                        vec![(0, h)]
                    } else {
                        (0..t).map(|i| (i, h.clone().narrow(1, i, 1))).collect()
                    };
                    for (i, hs) in steps {
                        let idx = if layer.ffn_in.len() == 1 {
                            0
                        } else {
                            let s = step + i;
                            match schedule {
                                Some(sch) => *sch.get(s).ok_or_else(|| Error::input("step beyond the schedule"))?,
                                None => s,
                            }
                        };
                        let wi = layer
                            .ffn_in
                            .get(idx)
                            .ok_or_else(|| Error::input(format!("no FFN weights for step {idx}")))?;
                        let g = lin(hs, wi);
                        let [gb, gt, _] = g.dims();
                        let g = g.reshape([gb, gt, 2, hidden]);
                        let a = act.apply(g.clone().narrow(2, 0, 1)).reshape([gb, gt, hidden]);
                        let lin_part = g.narrow(2, 1, 1).reshape([gb, gt, hidden]);
                        outs.push(lin(a * lin_part, &layer.ffn_out[idx]));
                    }
                    Tensor::cat(outs, 1)
                }
            };
            if let Some(s) = &layer.scale2 {
                update = update * s.val().reshape([1, 1, c]);
            }
            x = x + update;
        }
        if let Some(s) = state {
            for r in &mut s.rows {
                r.offset += t;
            }
            s.steps += t;
        }
        Ok(x)
    }
}

/// The reference's sinusoidal embedding `[B, T, C]` (cos half, then sin half), in f32.
fn sin_embedding(offsets: &[usize], t: usize, c: usize, max_period: f64, device: &Device) -> Tensor<3> {
    let half = c / 2;
    let mut v = Vec::with_capacity(offsets.len() * t * c);
    for &off in offsets {
        for i in 0..t {
            let pos = (off + i) as f32;
            let phases: Vec<f32> =
                (0..half).map(|j| pos / (max_period as f32).powf(j as f32 / (half as f32 - 1.0))).collect();
            v.extend(phases.iter().map(|p| p.cos()));
            v.extend(phases.iter().map(|p| p.sin()));
        }
    }
    crate::backend::floats(v, [offsets.len(), t, c], device, burn::tensor::DType::F32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    fn random_transformer(device: &Device, spec: TransformerSpec) -> Transformer {
        let d = spec.d_model;
        let rnd = |shape: [usize; 2]| Param::from_tensor(Tensor::random(shape, Distribution::Normal(0.0, 0.3), device));
        let norm = || Norm {
            weight: Param::from_tensor(Tensor::random([d], Distribution::Uniform(0.7, 1.3), device)),
            bias: Some(Param::from_tensor(Tensor::random([d], Distribution::Normal(0.0, 0.1), device))),
            rms: false,
            eps: 1e-5,
        };
        let layers = (0..spec.num_layers)
            .map(|_| Layer {
                norm1: norm(),
                norm2: norm(),
                in_proj: vec![Matrix::new(rnd([d, 3 * d]))],
                out_proj: vec![Matrix::new(rnd([d, d]))],
                ffn_in: vec![Matrix::new(rnd([d, spec.dim_feedforward]))],
                ffn_out: vec![Matrix::new(rnd([spec.dim_feedforward, d]))],
                scale1: None,
                scale2: None,
            })
            .collect();
        Transformer { layers, spec }
    }

    fn spec(context: usize) -> TransformerSpec {
        TransformerSpec {
            d_model: 16,
            num_heads: 2,
            num_layers: 2,
            dim_feedforward: 32,
            context: Some(context),
            norm: NormKind::LayerNorm,
            layer_scale: false,
            ffn: Ffn::Mlp,
            pos_emb: PosEmb::Rope { interleave: true },
            max_period: 10000.0,
            weights_per_step: 0,
            schedule: None,
        }
    }

    #[test]
    fn whole_equals_steps_within_context() {
        let device = Device::flex();
        let tr = random_transformer(&device, spec(24));
        let x = Tensor::random([2, 24, 16], Distribution::Normal(0.0, 1.0), &device);
        let whole = tr.forward(x.clone(), None).unwrap();
        for chunk in [1, 2, 3, 8, 24] {
            let mut st = tr.init_state(2).unwrap();
            let outs: Vec<Tensor<3>> = (0..24 / chunk)
                .map(|i| tr.forward(x.clone().narrow(1, i * chunk, chunk), Some(&mut st)).unwrap())
                .collect();
            let d = (whole.clone() - Tensor::cat(outs, 1)).abs().max().into_scalar::<f32>();
            assert!(d < 1e-4, "chunk {chunk}: {d}");
        }
    }

    #[test]
    fn single_steps_match_batch_mask_beyond_context() {
        // One position per step: the ring of `context` slots sees exactly the keys the batch
        // mask allows (delta < context), however long the stream runs.
        let device = Device::flex();
        let tr = random_transformer(&device, spec(5));
        let x = Tensor::random([1, 40, 16], Distribution::Normal(0.0, 1.0), &device);
        let whole = tr.forward(x.clone(), None).unwrap();
        let mut st = tr.init_state(1).unwrap();
        let outs: Vec<Tensor<3>> =
            (0..40).map(|i| tr.forward(x.clone().narrow(1, i, 1), Some(&mut st)).unwrap()).collect();
        let d = (whole - Tensor::cat(outs, 1)).abs().max().into_scalar::<f32>();
        assert!(d < 1e-4, "{d}");
        assert_eq!(st.rows[0].offset, 40);
    }

    #[test]
    fn pinned_prefix_stays_visible_past_the_context() {
        // A prefix of 3 fed in one call, then single steps far past a context of 5: the stream
        // equals the batch run whose mask keeps the prefix visible, and differs from the plain
        // batch run (which forgets it) once the context is passed.
        let device = Device::flex();
        let tr = random_transformer(&device, spec(5));
        let x = Tensor::random([1, 30, 16], Distribution::Normal(0.0, 1.0), &device);
        let pinned_whole = tr.forward_pinned(x.clone(), None, 3).unwrap();
        let plain_whole = tr.forward(x.clone(), None).unwrap();
        let mut st = tr.init_state_pinned(1, 3).unwrap();
        let mut outs = vec![tr.forward(x.clone().narrow(1, 0, 3), Some(&mut st)).unwrap()];
        outs.extend((3..30).map(|i| tr.forward(x.clone().narrow(1, i, 1), Some(&mut st)).unwrap()));
        let streamed = Tensor::cat(outs, 1);
        let d = (pinned_whole.clone() - streamed.clone()).abs().max().into_scalar::<f32>();
        assert!(d < 1e-4, "{d}");
        let early = (pinned_whole.clone().narrow(1, 0, 5) - plain_whole.clone().narrow(1, 0, 5)).abs().max();
        assert!(early.into_scalar::<f32>() < 1e-5, "within the context, pinning changes nothing");
        let late = (pinned_whole.narrow(1, 10, 20) - plain_whole.narrow(1, 10, 20)).abs().max();
        assert!(late.into_scalar::<f32>() > 1e-3, "past the context, the prefix is still seen");
    }

    #[test]
    fn rows_at_different_offsets_step_together() {
        let device = Device::flex();
        let tr = random_transformer(&device, spec(6));
        let xa = Tensor::random([1, 10, 16], Distribution::Normal(0.0, 1.0), &device);
        let xb = Tensor::random([1, 3, 16], Distribution::Normal(0.0, 1.0), &device);
        let mut sa = tr.init_state(1).unwrap();
        for i in 0..7 {
            tr.forward(xa.clone().narrow(1, i, 1), Some(&mut sa)).unwrap();
        }
        let mut sb = tr.init_state(1).unwrap();
        let mut merged = TransformerState::merge(vec![sa.clone(), sb.clone()]);
        let y = tr
            .forward(Tensor::cat(vec![xa.clone().narrow(1, 7, 1), xb.clone().narrow(1, 0, 1)], 0), Some(&mut merged))
            .unwrap();
        let ya = tr.forward(xa.narrow(1, 7, 1), Some(&mut sa)).unwrap();
        let yb = tr.forward(xb.narrow(1, 0, 1), Some(&mut sb)).unwrap();
        let d = (y - Tensor::cat(vec![ya, yb], 0)).abs().max().into_scalar::<f32>();
        assert!(d < 1e-5, "{d}");
    }
}
