//! The Moshi language model: a temporal transformer over 12.5 Hz frames whose input is the sum
//! of the text embedding and one embedding per audio stream, a text head (`text_linear`), and a
//! depth transformer ([`depformer`](super::depformer)) that emits a frame's audio codebooks one
//! by one.

use std::path::Path;

use burn::module::Param;
use burn::prelude::*;
use burn::tensor::DType;

use super::config::LmConfig;
use crate::backend::{self, Precision};
use crate::error::{Error, Result};
use crate::kernels::matvec::{Q8, Weight};
use crate::kernels::q8;
use crate::nn::matrix::Matrix;
use crate::nn::norm::{Norm, NormKind};
use crate::nn::transformer::{Transformer, TransformerState};
use crate::weights::{Slots, WeightFile, Weights};

/// Token meaning "no input": its embedding is zero.
pub const ZERO_TOKEN: i64 = -1;
/// Token meaning "not generated yet".
pub const UNGENERATED_TOKEN: i64 = -2;

#[derive(Module, Debug)]
pub struct LmModel {
    /// One table `[card + 1, dim]` per audio stream.
    pub emb: Vec<Matrix>,
    /// `[text_card + 1, dim]`.
    pub text_emb: Matrix,
    pub transformer: Transformer,
    pub out_norm: Norm,
    /// `[dim, text_out]` (input-major).
    pub text_linear: Matrix,
    /// `[dim, depformer_dim]`, one per step (multi-linear) or shared.
    pub depformer_in: Vec<Matrix>,
    /// `[card + 1, depformer_dim]` for steps 1..dep_q (step 0 takes the text token).
    pub depformer_emb: Vec<Matrix>,
    /// `[text_card + 1, depformer_dim]`.
    pub depformer_text_emb: Matrix,
    pub depformer: Transformer,
    /// Audio heads `[depformer_dim, card]`, one per generated stream.
    pub linears: Vec<Matrix>,
    #[module(skip)]
    pub config: LmConfig,
    /// The input tables stacked in one tensor, where the step's kernels run and it fits one
    /// buffer (`text_emb` and `emb` are then views of it).
    #[module(skip)]
    pub input_table: Option<InputTable>,
    /// The depth transformer's input projections side by side `[dim, dep_q * depformer_dim]`,
    /// step by step, where the step's kernels run and it fits one buffer: a device step projects
    /// the temporal output for every depth step in one launch.
    #[module(skip)]
    pub depformer_in_all: Option<Weight>,
}

/// What [`LmModel::forward_teacher_prefixed`] returns, aligned with the codes it was given.
#[derive(Clone, Debug)]
pub struct TeacherOut {
    /// The temporal transformer's normalised output `[B, T, dim]` at each frame's delayed input
    /// (what the `lm` latent tap streams).
    pub hidden: Tensor<3>,
    /// Text logits `[B, T, text_out]`, undelayed.
    pub text: Tensor<3>,
    /// Audio logits `[B, dep_q, T, card]`, undelayed.
    pub audio: Tensor<4>,
}

/// The LM's input tables stacked, text first then each audio stream, and the first row of each:
/// the temporal transformer's input is then one launch, one row per stream.
#[derive(Clone, Debug)]
pub struct InputTable {
    pub table: Weight,
    pub offsets: Vec<usize>,
}

/// The input tables (text first, then each audio stream `[rows, dim]`) and, where the kernels run
/// on the device and the stack fits one buffer, their stack, of which they are views: float
/// tables stacked as they are, 8-bit ones each quantized alone and padded to whole blocks of
/// rows, so that each keeps its own scales.
fn input_tables(
    w: &mut dyn Weights,
    names: &[(String, usize)],
    dim: usize,
) -> Result<(Vec<Matrix>, Option<InputTable>)> {
    let device = w.device().clone();
    let stacks = crate::kernels::launches_on(&device);
    if !w.q8() || !dim.is_multiple_of(4) {
        let mut tables =
            names.iter().map(|(n, rows)| w.param(n, [*rows, dim]).map(Matrix::new)).collect::<Result<Vec<_>>>()?;
        let rows: Vec<usize> = names.iter().map(|(_, r)| *r).collect();
        let dtype = w.dtype();
        let bytes = (rows.iter().sum::<usize>() * dim * dtype.size()) as u64;
        if !stacks || backend::max_tensor_bytes(&device).is_some_and(|max| bytes > max) {
            return Ok((tables, None));
        }
        let table = Tensor::cat(tables.iter().map(|t| t.weight.val()).collect(), 0);
        let offsets = offsets(&rows, 1);
        for (t, (&at, &r)) in tables.iter_mut().zip(offsets.iter().zip(&rows)) {
            t.weight = Param::initialized(t.weight.id, table.clone().narrow(0, at, r));
        }
        return Ok((tables, Some(InputTable { table: Weight::Float(table), offsets })));
    }
    // 8 bits: quantize each table on the host, stack padded to whole blocks, upload once; or
    // each alone where the stack does not fit one buffer.
    let block = q8::BLOCK;
    let rows: Vec<usize> = names.iter().map(|(_, r)| *r).collect();
    let offsets = offsets(&rows, block);
    let total = offsets.last().zip(rows.last()).map_or(0, |(o, r)| o + r.div_ceil(block) * block);
    if !stacks || backend::max_tensor_bytes(&device).is_some_and(|max| (total * dim) as u64 > max) {
        let tables = names.iter().map(|(n, r)| w.table(n, *r, dim)).collect::<Result<Vec<_>>>()?;
        return Ok((tables, None));
    }
    let (mut values, mut scales) = (Vec::with_capacity(total * dim / 4), Vec::with_capacity(total / block * dim));
    let mut stand_ins = Vec::with_capacity(names.len());
    for (name, r) in names {
        let (v, s) = w.table_q8_host(name, *r, dim)?;
        values.extend(v);
        values.resize(values.len() + (r.div_ceil(block) * block - r) * dim / 4, 0);
        scales.extend(s);
        stand_ins.push(w.stand_in(name, &[*r, dim]));
    }
    let stack = Q8::upload(values, scales, total, dim, &device)?;
    let dtype = w.dtype();
    let tables = stand_ins
        .into_iter()
        .zip(offsets.iter().zip(&rows))
        .map(|(weight, (&at, &r))| {
            let view = Q8 {
                values: stack.values.clone().narrow(0, at, r),
                scales: stack.scales.clone().narrow(0, at / block, r.div_ceil(block)),
            };
            Matrix { weight, q8: Some((view, dtype)) }
        })
        .collect();
    Ok((tables, Some(InputTable { table: Weight::Q8(stack, dtype), offsets })))
}

/// The first row of each of tables of `rows`, stacked with each starting at a multiple of `align`.
fn offsets(rows: &[usize], align: usize) -> Vec<usize> {
    let mut at = 0;
    rows.iter()
        .map(|r| {
            let o = at;
            at += r.div_ceil(align) * align;
            o
        })
        .collect()
}

fn lin(x: Tensor<3>, w: &Matrix) -> Tensor<3> {
    crate::kernels::matvec::linear(x, w.val())
}

impl LmModel {
    /// Loads a checkpoint in the reference key layout (f32, f16 or bf16 on disk).
    pub fn load(path: &Path, config: LmConfig, device: &Device, dtype: DType) -> Result<Self> {
        let precision = if dtype == DType::F16 { Precision::F16 } else { Precision::F32 };
        Self::load_as(path, config, device, precision)
    }

    /// [`LmModel::load`] at a precision; a checkpoint `kokichi quantize` wrote loads in 8 bits
    /// whatever is asked.
    pub fn load_as(path: &Path, config: LmConfig, device: &Device, precision: Precision) -> Result<Self> {
        Ok(Self::load_with_slots(path, config, device, precision)?.0)
    }

    /// [`LmModel::load_as`], with where each parameter came from in the file.
    pub fn load_with_slots(
        path: &Path,
        config: LmConfig,
        device: &Device,
        precision: Precision,
    ) -> Result<(Self, Slots)> {
        Self::load_adapted(path, config, device, precision, None)
    }

    /// [`LmModel::load_with_slots`] with the text vocabulary extended by `adapter`
    /// ([`crate::adapter`]); the model's config then has `text_card + N`.
    pub fn load_adapted(
        path: &Path,
        config: LmConfig,
        device: &Device,
        precision: Precision,
        adapter: Option<&crate::adapter::Adapter>,
    ) -> Result<(Self, Slots)> {
        let probe = WeightFile::open(path, device, precision.dtype())?;
        let q8 = precision.quantized() || probe.has_q8();
        // 8-bit weights compute in f16.
        let mut w = if q8 { WeightFile::open(path, device, DType::F16)?.quantized(true) } else { probe };
        let config = match adapter {
            Some(a) => a.apply(&mut w, &config)?,
            None => config,
        };
        let lm = Self::build(&mut w, config)?;
        let slots = w.finish()?;
        Ok((lm, slots))
    }

    /// Every matrix of the model (products' weights and embedding tables), as held.
    pub fn matrices(&self) -> Vec<&Matrix> {
        let mut out: Vec<&Matrix> = self.emb.iter().collect();
        out.push(&self.text_emb);
        out.push(&self.text_linear);
        out.extend(&self.depformer_in);
        out.extend(&self.depformer_emb);
        out.push(&self.depformer_text_emb);
        out.extend(&self.linears);
        for t in [&self.transformer, &self.depformer] {
            for l in &t.layers {
                out.extend(l.in_proj.iter().chain(&l.out_proj).chain(&l.ffn_in).chain(&l.ffn_out));
            }
        }
        out
    }

    /// Bytes the model's weights take on its device: its matrices as held (8-bit where they are,
    /// the input tables once however they are stacked), its other parameters, and the stacked
    /// depth-step projections a device step reads.
    pub fn resident_bytes(&self) -> u64 {
        let matrices = self.matrices();
        let matrix_params: usize = matrices.iter().map(|m| m.weight.num_params()).sum();
        let dtype = self.dtype().size() as u64;
        let others = (self.num_params() - matrix_params) as u64 * dtype;
        let held: u64 = matrices.iter().map(|m| m.bytes()).sum();
        let stack = self.depformer_in_all.as_ref().map_or(0, Weight::bytes);
        held + others + stack
    }

    /// A freshly initialised model (training), with the slots to export it.
    pub fn random(config: LmConfig, device: &Device, seed: u64) -> Result<(Self, Slots)> {
        Self::random_as(config, device, DType::F32, seed)
    }

    /// [`LmModel::random`] with weights stored as `dtype` (benchmarks of large shapes in f16).
    pub fn random_as(config: LmConfig, device: &Device, dtype: DType, seed: u64) -> Result<(Self, Slots)> {
        let mut w = crate::weights::RandomWeights::new(device, dtype, seed);
        let lm = Self::build(&mut w, config)?;
        Ok((lm, w.into_slots()))
    }

    /// A random model at a precision ([`Precision::Q8`]: its matrices quantized from the same
    /// random values as [`LmModel::random_as`] draws in f16).
    pub fn random_at(config: LmConfig, device: &Device, precision: Precision, seed: u64) -> Result<Self> {
        let mut w = crate::weights::RandomWeights::new(device, precision.dtype(), seed);
        w.q8 = precision.quantized();
        Self::build(&mut w, config)
    }

    /// Builds the model from any weight source.
    pub fn build(w: &mut dyn Weights, config: LmConfig) -> Result<Self> {
        config.validate()?;
        let c = &config;
        let names: Vec<(String, usize)> = std::iter::once(("text_emb.weight".to_string(), c.text_card + 1))
            .chain((0..c.n_q).map(|k| (format!("emb.{k}.weight"), c.card + 1)))
            .collect();
        let (mut tables, input_table) = input_tables(w, &names, c.dim)?;
        let emb = tables.split_off(1);
        let text_emb = tables.pop().ok_or_else(|| Error::config("lm", "no text table"))?;
        let transformer = Transformer::load(w, "transformer", c.transformer_spec()?)?;
        let out_norm = Norm::load(w, "out_norm", NormKind::parse(&c.norm)?, c.dim)?;
        let text_linear = w.product("text_linear.weight", &[c.text_out(), c.dim], c.text_out(), c.dim)?;
        let n_in = if c.depformer_multi_linear {
            c.depformer_weights_per_step_schedule
                .as_ref()
                .and_then(|s| s.iter().max().map(|m| m + 1))
                .unwrap_or(c.dep_q)
        } else {
            1
        };
        let depformer_in = (0..n_in)
            .map(|k| w.product(&format!("depformer_in.{k}.weight"), &[c.depformer_dim, c.dim], c.depformer_dim, c.dim))
            .collect::<Result<Vec<_>>>()?;
        let depformer_in_all = stack_columns(&depformer_in, c, w.device());
        let depformer_emb = (0..c.dep_q - 1)
            .map(|k| w.table(&format!("depformer_emb.{k}.weight"), c.card + 1, c.depformer_dim))
            .collect::<Result<Vec<_>>>()?;
        let depformer_text_emb = w.table("depformer_text_emb.weight", c.text_card + 1, c.depformer_dim)?;
        let depformer = Transformer::load(w, "depformer", c.depformer_spec()?)?;
        let linears = (0..c.dep_q)
            .map(|k| w.product(&format!("linears.{k}.weight"), &[c.card, c.depformer_dim], c.card, c.depformer_dim))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            emb,
            text_emb,
            transformer,
            out_norm,
            text_linear,
            depformer_in,
            depformer_emb,
            depformer_text_emb,
            depformer,
            linears,
            config,
            input_table,
            depformer_in_all,
        })
    }

    pub fn device(&self) -> Device {
        self.text_emb.weight.val().device()
    }

    /// Bytes of weights one step reads at least once: every weight but the embedding tables,
    /// of which it reads one row per stream and per depth step.
    pub fn weight_bytes_per_step(&self) -> u64 {
        let c = &self.config;
        let size = self.dtype().size() as u64;
        let tables: Vec<&Matrix> = self
            .emb
            .iter()
            .chain(self.depformer_emb.iter())
            .chain([&self.text_emb, &self.depformer_text_emb])
            .collect();
        let matrices = self.matrices();
        let matrix_params: usize = matrices.iter().map(|m| m.weight.num_params()).sum();
        let others = (self.num_params() - matrix_params) as u64 * size;
        let products: u64 =
            matrices.iter().map(|m| m.bytes()).sum::<u64>() - tables.iter().map(|t| t.bytes()).sum::<u64>();
        // One row of each input table, and one of a depth table per depth step.
        let row = |t: &Matrix| t.bytes() / t.dims()[0] as u64;
        let input_rows: u64 = std::iter::once(&self.text_emb).chain(&self.emb).map(row).sum();
        let depth_rows = row(&self.depformer_text_emb) + self.depformer_emb.iter().map(row).sum::<u64>();
        debug_assert_eq!(self.depformer_emb.len() + 1, c.dep_q);
        products + others + input_rows + depth_rows
    }

    pub fn dtype(&self) -> DType {
        self.text_emb.weight.val().dtype()
    }

    /// Looks up `tokens` (`[B * T]`, `-1` = zero vector) in `table`, giving `[B, T, dim]`.
    fn embed(&self, table: &Matrix, tokens: &[i64], b: usize, t: usize) -> Result<Tensor<3>> {
        let [rows, dim] = table.dims();
        let mut zero = Vec::new();
        let mut idx = Vec::with_capacity(tokens.len());
        for (i, &tok) in tokens.iter().enumerate() {
            if tok == ZERO_TOKEN {
                zero.push(i);
                idx.push(0);
            } else if tok < 0 || tok as usize >= rows {
                return Err(Error::input(format!("token {tok} outside 0..{rows}")));
            } else {
                idx.push(tok);
            }
        }
        let device = self.device();
        let e = table.rows(backend::ints(idx, [tokens.len()], &device));
        let e = if zero.is_empty() {
            e
        } else {
            let mut keep = vec![1f32; tokens.len()];
            zero.iter().for_each(|&i| keep[i] = 0.0);
            e * backend::floats(keep, [tokens.len(), 1], &device, self.dtype())
        };
        Ok(e.reshape([b, t, dim]))
    }

    /// Runs the temporal transformer on token columns `tokens` `[B, 1 + n_q, T]` (host values,
    /// text first). Returns the normalised output `[B, T, dim]` and text logits `[B, T, text_out]`.
    pub fn forward_text(
        &self,
        tokens: &[i64],
        b: usize,
        t: usize,
        state: Option<&mut TransformerState>,
    ) -> Result<(Tensor<3>, Tensor<3>)> {
        let x = self.input_embeddings(tokens, b, t)?;
        let out = self.transformer.forward(x, state)?;
        let out = self.out_norm.forward(out);
        let logits = lin(out.clone(), &self.text_linear);
        Ok((out, logits))
    }

    /// The temporal transformer's input for token columns `tokens` `[B, 1 + n_q, T]` (host
    /// values, text first): the sum of the text embedding and one embedding per audio stream,
    /// `[B, T, dim]`.
    pub fn input_embeddings(&self, tokens: &[i64], b: usize, t: usize) -> Result<Tensor<3>> {
        let k = self.config.n_q + 1;
        if tokens.len() != b * k * t {
            return Err(Error::input(format!("{} tokens for [{b}, {k}, {t}]", tokens.len())));
        }
        let stream = |s: usize| -> Vec<i64> {
            (0..b).flat_map(|r| tokens[(r * k + s) * t..(r * k + s + 1) * t].iter().copied()).collect()
        };
        let mut x = self.embed(&self.text_emb, &stream(0), b, t)?;
        for (i, table) in self.emb.iter().enumerate() {
            x = x + self.embed(table, &stream(i + 1), b, t)?;
        }
        Ok(x)
    }

    /// Depth-transformer step `step` for one time step: input projection of `transformer_out`
    /// `[B, 1, dim]` plus the embedding of the previous token (`prev` `[B]`, on the device; valid
    /// indices, no `-1` zero tokens). Returns audio logits `[B, 1, card]`.
    pub fn depformer_step(
        &self,
        step: usize,
        prev: Tensor<1, Int>,
        transformer_out: Tensor<3>,
        state: &mut TransformerState,
    ) -> Result<Tensor<3>> {
        let [b] = prev.dims();
        let proj = self.depformer_input(step, transformer_out)?;
        let table = if step == 0 {
            &self.depformer_text_emb
        } else {
            self.depformer_emb
                .get(step - 1)
                .ok_or_else(|| Error::input(format!("depformer step {step} beyond dep_q")))?
        };
        let dim = table.dims()[1];
        let x = proj + table.rows(prev).reshape([b, 1, dim]);
        let y = self.depformer.forward(x, Some(state))?;
        Ok(lin(y, &self.linears[step]))
    }

    /// The depth transformer's input projection of step `step`.
    pub(crate) fn depformer_in_weight(&self, step: usize) -> Result<Weight> {
        let idx = if self.depformer_in.len() == 1 {
            0
        } else {
            match &self.config.depformer_weights_per_step_schedule {
                Some(s) => {
                    *s.get(step).ok_or_else(|| Error::input(format!("depformer step {step} beyond the schedule")))?
                }
                None => step,
            }
        };
        self.depformer_in
            .get(idx)
            .map(Matrix::weight)
            .ok_or_else(|| Error::input(format!("no depformer input projection for step {step}")))
    }

    fn depformer_input(&self, step: usize, transformer_out: Tensor<3>) -> Result<Tensor<3>> {
        let idx = if self.depformer_in.len() == 1 {
            0
        } else {
            match &self.config.depformer_weights_per_step_schedule {
                Some(s) => s[step],
                None => step,
            }
        };
        let w = self
            .depformer_in
            .get(idx)
            .ok_or_else(|| Error::input(format!("no depformer input projection for step {step}")))?;
        Ok(lin(transformer_out, w))
    }

    /// Teacher-forced logits, as the reference `LMModel.forward`: `codes` `[B, 1 + n_q, T]`
    /// (host, undelayed). Returns text logits `[B, T, text_out]` and audio logits
    /// `[B, dep_q, T, card]`, both aligned with `codes`; positions beyond a stream's delay at the
    /// end are invalid (see [`LmModel::valid_mask`]).
    pub fn forward_teacher(&self, codes: &[i64], b: usize, t: usize) -> Result<(Tensor<3>, Tensor<4>)> {
        let out = self.forward_teacher_prefixed(None, codes, b, t)?;
        Ok((out.text, out.audio))
    }

    /// [`LmModel::forward_teacher`] after `prefix` `[K, dim]`: the temporal transformer first
    /// reads the K prefix vectors as input vectors (in place of the embedding sum) at positions
    /// 0..K, then the frames at K, K + 1, ..., exactly as a streaming session with a gist runs
    /// them; the prefix positions' outputs are dropped. The prefix may require gradients (an
    /// autodiff device): only the positions' inputs differ, the weights are the model's.
    pub fn forward_teacher_prefixed(
        &self,
        prefix: Option<Tensor<2>>,
        codes: &[i64],
        b: usize,
        t: usize,
    ) -> Result<TeacherOut> {
        let c = &self.config;
        let k = c.n_q + 1;
        if codes.len() != b * k * t {
            return Err(Error::input(format!("{} codes for [{b}, {k}, {t}]", codes.len())));
        }
        let initial = |s: usize| if s == 0 { c.text_card as i64 } else { c.card as i64 };
        // Delayed sequence with one initial step in front: [B, K, T + 1].
        let mut delayed = vec![0i64; b * k * (t + 1)];
        for r in 0..b {
            for s in 0..k {
                let d = c.delays[s];
                let base = (r * k + s) * (t + 1);
                delayed[base] = initial(s);
                for i in 0..t {
                    delayed[base + 1 + i] = if i < d { initial(s) } else { codes[(r * k + s) * t + i - d] };
                }
            }
        }
        let take = |from: usize| -> Vec<i64> {
            (0..b * k).flat_map(|row| delayed[row * (t + 1) + from..row * (t + 1) + from + t].iter().copied()).collect()
        };
        let (out, text_logits) = self.forward_text_prefixed(prefix, &take(0), b, t)?;
        let next = take(1);
        // Depformer over the dep_q steps of every time step at once: [B * T, dep_q, depformer_dim].
        let mut inputs = Vec::with_capacity(c.dep_q);
        for step in 0..c.dep_q {
            let proj = self.depformer_input(step, out.clone())?;
            let src = if step == 0 { 0 } else { step };
            let toks: Vec<i64> =
                (0..b).flat_map(|r| next[(r * k + src) * t..(r * k + src + 1) * t].iter().copied()).collect();
            let table = if step == 0 { &self.depformer_text_emb } else { &self.depformer_emb[step - 1] };
            inputs.push((proj + self.embed(table, &toks, b, t)?).reshape([b * t, 1, c.depformer_dim]));
        }
        let y = self.depformer.forward(Tensor::cat(inputs, 1), None)?;
        let mut logits = Vec::with_capacity(c.dep_q);
        for step in 0..c.dep_q {
            let ys = y.clone().narrow(1, step, 1);
            logits.push(lin(ys, &self.linears[step]).reshape([b, 1, t, c.card]));
        }
        let logits = Tensor::cat(logits, 1);
        // Undelay: stream s's prediction for time i sits at delayed position i + d.
        let text = shift_left(text_logits.unsqueeze_dim(1), c.delays[0]).squeeze_dim(1);
        let parts: Vec<Tensor<4>> =
            (0..c.dep_q).map(|s| shift_left(logits.clone().narrow(1, s, 1), c.delays[s + 1])).collect();
        Ok(TeacherOut { hidden: out, text, audio: Tensor::cat(parts, 1) })
    }

    /// [`LmModel::forward_text`] (no state) after `prefix` `[K, dim]`, read as input vectors at
    /// positions 0..K and dropped from the output: [`LmModel::forward_teacher_prefixed`].
    fn forward_text_prefixed(
        &self,
        prefix: Option<Tensor<2>>,
        tokens: &[i64],
        b: usize,
        t: usize,
    ) -> Result<(Tensor<3>, Tensor<3>)> {
        let Some(prefix) = prefix else { return self.forward_text(tokens, b, t, None) };
        let [n, dim] = prefix.dims();
        if dim != self.config.dim || n == 0 {
            return Err(Error::input(format!("prefix of [{n}, {dim}], expected [K > 0, {}]", self.config.dim)));
        }
        let prefix = prefix.cast(self.dtype()).unsqueeze_dim::<3>(0).repeat_dim(0, b);
        let x = Tensor::cat(vec![prefix, self.input_embeddings(tokens, b, t)?], 1);
        // The prefix stays visible to every frame, as it does pinned in a streaming session.
        let out = self.transformer.forward_pinned(x, None, n)?.narrow(1, n, t);
        let out = self.out_norm.forward(out);
        let logits = lin(out.clone(), &self.text_linear);
        Ok((out, logits))
    }

    /// The text logits of [`LmModel::forward_teacher`] alone `[B, T, text_out]`, without the
    /// depth transformer (training a vocabulary adapter's text rows, [`crate::train::tokens`]).
    pub fn forward_teacher_text(&self, codes: &[i64], b: usize, t: usize) -> Result<Tensor<3>> {
        self.forward_teacher_text_prefixed(None, codes, b, t)
    }

    /// [`LmModel::forward_teacher_text`] after an optional gist `prefix` `[K, dim]`, as
    /// [`LmModel::forward_teacher_prefixed`] reads it.
    pub fn forward_teacher_text_prefixed(
        &self,
        prefix: Option<Tensor<2>>,
        codes: &[i64],
        b: usize,
        t: usize,
    ) -> Result<Tensor<3>> {
        let c = &self.config;
        let k = c.n_q + 1;
        if codes.len() != b * k * t {
            return Err(Error::input(format!("{} codes for [{b}, {k}, {t}]", codes.len())));
        }
        let initial = |s: usize| if s == 0 { c.text_card as i64 } else { c.card as i64 };
        let mut input = vec![0i64; b * k * t];
        for r in 0..b {
            for s in 0..k {
                let d = c.delays[s];
                for i in 0..t {
                    // Position i of the delayed sequence with one initial step in front.
                    input[(r * k + s) * t + i] =
                        if i < d + 1 { initial(s) } else { codes[(r * k + s) * t + i - d - 1] };
                }
            }
        }
        let (_, text_logits) = self.forward_text_prefixed(prefix, &input, b, t)?;
        Ok(shift_left(text_logits.unsqueeze_dim(1), c.delays[0]).squeeze_dim(1))
    }

    /// Whether position `i` of stream `s` (0 = text) has a valid teacher-forced logit.
    pub fn valid_mask(&self, s: usize, i: usize, t: usize) -> bool {
        i + self.config.delays[s] < t
    }

    /// A fresh streaming state of the temporal transformer for `batch` streams.
    pub fn init_transformer_state(&self, batch: usize) -> Result<TransformerState> {
        self.transformer.init_state(batch)
    }

    /// A fresh depformer state (one per frame).
    pub fn init_depformer_state(&self, batch: usize) -> Result<TransformerState> {
        self.depformer.init_state(batch)
    }
}

/// The depth steps' input projections side by side, in step order (`[dim, dep_q * dd]`, float
/// or 8-bit like them), where the kernels run on `device` and the result fits one buffer.
fn stack_columns(depformer_in: &[Matrix], c: &LmConfig, device: &Device) -> Option<Weight> {
    if !crate::kernels::launches_on(device) {
        return None;
    }
    let per_step: Vec<Weight> = (0..c.dep_q)
        .map(|step| {
            let idx = match (&c.depformer_weights_per_step_schedule, depformer_in.len()) {
                (_, 1) => 0,
                (Some(s), _) => s.get(step).copied().unwrap_or(step),
                (None, _) => step,
            };
            depformer_in.get(idx).map(Matrix::weight)
        })
        .collect::<Option<Vec<_>>>()?;
    let bytes = per_step.iter().map(|w| w.bytes()).sum::<u64>();
    if backend::max_tensor_bytes(device).is_some_and(|max| bytes > max) {
        return None;
    }
    match &per_step[0] {
        Weight::Float(_) => {
            let floats = per_step.into_iter().map(|w| w.to_float()).collect();
            Some(Weight::Float(Tensor::cat(floats, 1)))
        }
        Weight::Q8(_, dtype) => {
            let dtype = *dtype;
            let (values, scales): (Vec<_>, Vec<_>) = per_step
                .into_iter()
                .filter_map(|w| match w {
                    Weight::Q8(q, _) => Some((q.values, q.scales)),
                    Weight::Float(_) => None,
                })
                .unzip();
            Some(Weight::Q8(Q8 { values: Tensor::cat(values, 1), scales: Tensor::cat(scales, 1) }, dtype))
        }
    }
}

/// Shifts `[B, S, T, C]` left by `d` along T, padding with zeros at the end.
fn shift_left(x: Tensor<4>, d: usize) -> Tensor<4> {
    if d == 0 {
        return x;
    }
    let [b, s, t, c] = x.dims();
    let d = d.min(t);
    let pad = Tensor::zeros([b, s, d, c], (&x.device(), x.dtype()));
    Tensor::cat(vec![x.narrow(2, d, t - d), pad], 2)
}
