//! Mimi, Kyutai's streaming neural audio codec: 24 kHz mono audio <-> 12.5 Hz frames of
//! codebook indices.
//!
//! Path: SEANet encoder (25 Hz) -> transformer -> strided conv (12.5 Hz) -> split RVQ, and back:
//! RVQ decode -> depthwise transposed conv (25 Hz) -> transformer -> SEANet decoder.
//!
//! Weights are immutable and can be shared (`Arc<Mimi>`) by any number of streams; each stream
//! owns an [`EncState`] / [`DecState`] from `init_*_state`. A reset is a fresh state.

pub mod config;
pub mod quantizer;
pub mod seanet;
pub mod train;

use std::path::Path;

use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::module::linear;

use crate::error::{Error, Result};
use crate::nn::batch::Batched;
use crate::nn::conv::{Conv1d, ConvSpec, ConvState, ConvTr1d, ConvTrState};
use crate::nn::transformer::{Transformer, TransformerState};
use crate::weights::{Slots, WeightFile, Weights};
pub use config::MimiConfig;
use quantizer::SplitRvq;
use seanet::{DecoderState, SeanetDecoder, SeanetEncoder};

/// Transformer with optional projections in and out (the reference's `ProjectedTransformer`).
#[derive(Module, Debug)]
pub struct ProjectedTransformer {
    pub input_proj: Option<burn::module::Param<Tensor<2>>>,
    pub output_proj: Option<burn::module::Param<Tensor<2>>>,
    pub transformer: Transformer,
}

impl ProjectedTransformer {
    fn load(w: &mut dyn Weights, prefix: &str, cfg: &MimiConfig) -> Result<Self> {
        let t = &cfg.transformer;
        let spec = cfg.transformer_spec()?;
        let input_proj = (t.d_model != t.input_dimension)
            .then(|| {
                w.linear(
                    &format!("{prefix}.input_proj.weight"),
                    &[t.d_model, t.input_dimension],
                    t.d_model,
                    t.input_dimension,
                )
            })
            .transpose()?;
        let out = t.output_dimensions[0];
        let output_proj = (t.d_model != out)
            .then(|| w.linear(&format!("{prefix}.output_projs.0.weight"), &[out, t.d_model], out, t.d_model))
            .transpose()?;
        Ok(Self { input_proj, output_proj, transformer: Transformer::load(w, &format!("{prefix}.transformer"), spec)? })
    }

    /// `[B, C, T]` in and out (conv layout).
    fn forward(&self, x: Tensor<3>, state: Option<&mut TransformerState>) -> Result<Tensor<3>> {
        let mut x = x.swap_dims(1, 2);
        if let Some(p) = &self.input_proj {
            x = linear(x, p.val(), None);
        }
        let mut y = self.transformer.forward(x, state)?;
        if let Some(p) = &self.output_proj {
            y = linear(y, p.val(), None);
        }
        Ok(y.swap_dims(1, 2))
    }
}

/// Intermediates of [`Mimi::trace`], all `[B, C, T]`.
pub struct Trace {
    pub seanet: Tensor<3>,
    pub transformer: Tensor<3>,
    pub latent: Tensor<3>,
    pub codes: Tensor<3, Int>,
    pub quantized: Tensor<3>,
    pub dec_transformer: Tensor<3>,
    pub audio: Tensor<3>,
}

/// The Mimi codec.
#[derive(Module, Debug)]
pub struct Mimi {
    pub encoder: SeanetEncoder,
    pub encoder_transformer: ProjectedTransformer,
    pub downsample: Option<Conv1d>,
    pub quantizer: SplitRvq,
    pub upsample: Option<ConvTr1d>,
    pub decoder_transformer: ProjectedTransformer,
    pub decoder: SeanetDecoder,
    #[module(skip)]
    pub config: MimiConfig,
    /// Active codebooks (8 for Moshi).
    pub num_codebooks: usize,
}

/// Streaming state of one batch of encoder streams.
#[derive(Clone, Debug)]
pub struct EncState {
    seanet: Vec<ConvState>,
    transformer: TransformerState,
    down: Option<ConvState>,
    batch: usize,
}

/// Streaming state of one batch of decoder streams.
#[derive(Clone, Debug)]
pub struct DecState {
    up: Option<ConvTrState>,
    transformer: TransformerState,
    seanet: DecoderState,
    batch: usize,
}

/// Transposes a list of per-part lists into per-index lists.
fn zip_parts<T>(parts: Vec<Vec<T>>) -> Vec<Vec<T>> {
    let n = parts.first().map_or(0, Vec::len);
    let mut out: Vec<Vec<T>> = (0..n).map(|_| Vec::with_capacity(parts.len())).collect();
    for part in parts {
        for (i, item) in part.into_iter().enumerate() {
            if let Some(slot) = out.get_mut(i) {
                slot.push(item);
            }
        }
    }
    out
}

fn unzip_rows<T>(items: Vec<T>, split: impl Fn(T) -> Vec<T>, batch: usize) -> Vec<Vec<T>> {
    let mut rows: Vec<Vec<T>> = (0..batch).map(|_| Vec::with_capacity(items.len())).collect();
    for item in items {
        for (b, s) in split(item).into_iter().enumerate() {
            rows[b].push(s);
        }
    }
    rows
}

impl Batched for EncState {
    /// A state of no streams (a placeholder while a session's state is lent to a batch).
    fn empty() -> Self {
        EncState { seanet: Vec::new(), transformer: TransformerState::empty(), down: None, batch: 0 }
    }

    /// Number of streams in this state.
    fn batch(&self) -> usize {
        self.batch
    }

    /// Joins single- or multi-stream states into one batch (streams keep their own history).
    fn merge(parts: Vec<EncState>) -> EncState {
        let batch = parts.iter().map(|p| p.batch).sum();
        let mut seanet = Vec::new();
        let mut tr = Vec::new();
        let mut down = Vec::new();
        for p in parts {
            seanet.push(p.seanet);
            tr.push(p.transformer);
            down.extend(p.down);
        }
        EncState {
            seanet: zip_parts(seanet).into_iter().map(ConvState::merge).collect(),
            transformer: TransformerState::merge(tr),
            down: (!down.is_empty()).then(|| ConvState::merge(down)),
            batch,
        }
    }

    /// Splits into one state per stream.
    fn split(self) -> Vec<EncState> {
        let b = self.batch;
        let seanet = unzip_rows(self.seanet, ConvState::split, b);
        let tr = self.transformer.split();
        let mut down: Vec<Option<ConvState>> = match self.down {
            Some(d) => d.split().into_iter().map(Some).collect(),
            None => (0..b).map(|_| None).collect(),
        };
        seanet
            .into_iter()
            .zip(tr)
            .enumerate()
            .map(|(i, (s, t))| EncState { seanet: s, transformer: t, down: down[i].take(), batch: 1 })
            .collect()
    }
}

impl Batched for DecState {
    /// A state of no streams (a placeholder while a session's state is lent to a batch).
    fn empty() -> Self {
        DecState {
            up: None,
            transformer: TransformerState::empty(),
            seanet: DecoderState { convs: Vec::new(), ups: Vec::new() },
            batch: 0,
        }
    }

    fn batch(&self) -> usize {
        self.batch
    }

    fn merge(parts: Vec<DecState>) -> DecState {
        let batch = parts.iter().map(|p| p.batch).sum();
        let mut up = Vec::new();
        let mut tr = Vec::new();
        let mut convs = Vec::new();
        let mut ups = Vec::new();
        for p in parts {
            up.extend(p.up);
            tr.push(p.transformer);
            convs.push(p.seanet.convs);
            ups.push(p.seanet.ups);
        }
        DecState {
            up: (!up.is_empty()).then(|| ConvTrState::merge(up)),
            transformer: TransformerState::merge(tr),
            seanet: DecoderState {
                convs: zip_parts(convs).into_iter().map(ConvState::merge).collect(),
                ups: zip_parts(ups).into_iter().map(ConvTrState::merge).collect(),
            },
            batch,
        }
    }

    fn split(self) -> Vec<DecState> {
        let b = self.batch;
        let convs = unzip_rows(self.seanet.convs, ConvState::split, b);
        let ups = unzip_rows(self.seanet.ups, ConvTrState::split, b);
        let tr = self.transformer.split();
        let mut up: Vec<Option<ConvTrState>> = match self.up {
            Some(u) => u.split().into_iter().map(Some).collect(),
            None => (0..b).map(|_| None).collect(),
        };
        convs
            .into_iter()
            .zip(ups)
            .zip(tr)
            .enumerate()
            .map(|(i, ((c, u), t))| DecState {
                up: up[i].take(),
                transformer: t,
                seanet: DecoderState { convs: c, ups: u },
                batch: 1,
            })
            .collect()
    }
}

impl Mimi {
    /// Loads a checkpoint in the reference key layout.
    pub fn load(path: &Path, config: MimiConfig, num_codebooks: usize, device: &Device, dtype: DType) -> Result<Self> {
        let mut w = WeightFile::open(path, device, dtype)?;
        let mimi = Self::build(&mut w, config, num_codebooks)?;
        w.finish()?;
        Ok(mimi)
    }

    /// A freshly initialised codec (training), with the slots to export it.
    pub fn random(config: MimiConfig, num_codebooks: usize, device: &Device, seed: u64) -> Result<(Self, Slots)> {
        Self::random_as(config, num_codebooks, device, DType::F32, seed)
    }

    /// [`Mimi::random`] with weights stored as `dtype` (benchmarks of large shapes in f16).
    pub fn random_as(
        config: MimiConfig,
        num_codebooks: usize,
        device: &Device,
        dtype: DType,
        seed: u64,
    ) -> Result<(Self, Slots)> {
        let mut w = crate::weights::RandomWeights::new(device, dtype, seed);
        if let Some(s) = config.transformer.layer_scale {
            w.layer_scale = s as f32;
        }
        let mimi = Self::build(&mut w, config, num_codebooks)?;
        Ok((mimi, w.into_slots()))
    }

    /// Builds the codec from any weight source.
    pub fn build(w: &mut dyn Weights, config: MimiConfig, num_codebooks: usize) -> Result<Self> {
        config.validate()?;
        if num_codebooks == 0 || num_codebooks > config.quantizer.n_q {
            return Err(Error::config(
                "codebooks",
                format!("{num_codebooks} active codebooks requested, the codec has {}", config.quantizer.n_q),
            ));
        }
        let dim = config.seanet.dimension;
        let stride = config.resample_stride();
        let encoder = SeanetEncoder::load(w, "encoder", &config.seanet)?;
        let decoder = SeanetDecoder::load(w, "decoder", &config.seanet)?;
        let encoder_transformer = ProjectedTransformer::load(w, "encoder_transformer", &config)?;
        let decoder_transformer = ProjectedTransformer::load(w, "decoder_transformer", &config)?;
        let (downsample, upsample) = if stride > 1 {
            (
                Some(Conv1d::load(
                    w,
                    "downsample.conv.conv.conv",
                    ConvSpec::new(dim, dim, 2 * stride).stride(stride).bias(false),
                    true,
                )?),
                Some(ConvTr1d::load(
                    w,
                    "upsample.convtr.convtr.convtr",
                    ConvSpec::new(dim, dim, 2 * stride).stride(stride).groups(dim).bias(false),
                )?),
            )
        } else {
            (None, None)
        };
        let quantizer = SplitRvq::load(w, "quantizer", &config.quantizer)?;
        Ok(Self {
            encoder,
            encoder_transformer,
            downsample,
            quantizer,
            upsample,
            decoder_transformer,
            decoder,
            config,
            num_codebooks,
        })
    }

    /// Bytes of weights one streaming frame (encode and decode) reads: all of them.
    pub fn weight_bytes_per_frame(&self) -> u64 {
        self.num_params() as u64 * self.dtype().size() as u64
    }

    /// Samples per frame (1920).
    pub fn frame_size(&self) -> usize {
        self.config.frame_size()
    }

    pub fn sample_rate(&self) -> usize {
        self.config.sample_rate
    }

    /// Codebook size (2048).
    pub fn cardinality(&self) -> usize {
        self.quantizer.bins
    }

    pub(crate) fn device(&self) -> Device {
        self.encoder.first.weight.val().device()
    }

    pub(crate) fn dtype(&self) -> DType {
        self.encoder.first.weight.val().dtype()
    }

    /// A fresh encoder state for `batch` streams.
    pub fn init_enc_state(&self, batch: usize) -> Result<EncState> {
        Ok(EncState {
            seanet: self.encoder.init_state(batch),
            transformer: self.encoder_transformer.transformer.init_state(batch)?,
            down: self.downsample.as_ref().map(|d| d.init_state(batch)),
            batch,
        })
    }

    /// A fresh decoder state for `batch` streams.
    pub fn init_dec_state(&self, batch: usize) -> Result<DecState> {
        Ok(DecState {
            up: self.upsample.as_ref().map(|u| u.init_state(batch)),
            transformer: self.decoder_transformer.transformer.init_state(batch)?,
            seanet: self.decoder.init_state(batch),
            batch,
        })
    }

    /// Audio `[B, 1, T]` to unquantized latents `[B, C, frames]`.
    fn encode_latent(&self, x: Tensor<3>, state: Option<&mut EncState>) -> Result<Tensor<3>> {
        match state {
            Some(s) => {
                let emb = self.encoder.forward(&mut s.seanet, x)?;
                let emb = self.encoder_transformer.forward(emb, Some(&mut s.transformer))?;
                match (&self.downsample, s.down.as_mut()) {
                    (Some(d), Some(ds)) => d.forward(ds, emb),
                    _ => Ok(emb),
                }
            }
            None => {
                let b = x.dims()[0];
                let emb = self.encoder.forward(&mut self.encoder.init_state(b), x)?;
                let emb = self.encoder_transformer.forward(emb, None)?;
                match &self.downsample {
                    Some(d) => d.forward(&mut d.init_state(b), emb),
                    None => Ok(emb),
                }
            }
        }
    }

    /// Quantized latents `[B, C, frames]` to audio `[B, 1, frames * frame_size]`.
    fn decode_latent(&self, emb: Tensor<3>, state: Option<&mut DecState>) -> Result<Tensor<3>> {
        match state {
            Some(s) => {
                let emb = match (&self.upsample, s.up.as_mut()) {
                    (Some(u), Some(us)) => u.forward(us, emb)?,
                    _ => emb,
                };
                let emb = self.decoder_transformer.forward(emb, Some(&mut s.transformer))?;
                self.decoder.forward(&mut s.seanet, emb)
            }
            None => {
                let b = emb.dims()[0];
                let emb = match &self.upsample {
                    Some(u) => u.forward(&mut u.init_state(b), emb)?,
                    None => emb,
                };
                let emb = self.decoder_transformer.forward(emb, None)?;
                self.decoder.forward(&mut self.decoder.init_state(b), emb)
            }
        }
    }

    /// Whole-signal encoding, `[B, T]` audio to `[B, Q, ceil(T / frame)]` codes. The input is
    /// right-padded with zeros to whole frames, as the reference does.
    pub fn encode(&self, pcm: Tensor<2>) -> Result<Tensor<3, Int>> {
        let [b, t] = pcm.dims();
        if t == 0 {
            return Err(Error::input("empty audio"));
        }
        let frame = self.frame_size();
        let padded = t.div_ceil(frame) * frame;
        let pcm = if padded > t {
            Tensor::cat(vec![pcm, Tensor::zeros([b, padded - t], (&self.device(), self.dtype()))], 1)
        } else {
            pcm
        };
        let emb = self.encode_latent(pcm.reshape([b, 1, padded]), None)?;
        Ok(self.quantizer.encode(emb, self.num_codebooks))
    }

    /// Whole-sequence decoding, codes `[B, Q, F]` to audio `[B, F * frame]`.
    pub fn decode(&self, codes: Tensor<3, Int>) -> Result<Tensor<2>> {
        let emb = self.quantizer.decode(codes)?;
        let y = self.decode_latent(emb, None)?;
        let [b, _, t] = y.dims();
        Ok(y.reshape([b, t]))
    }

    /// Streaming encoding of whole frames `[B, n * frame]` to codes `[B, Q, n]`.
    pub fn encode_chunk(&self, state: &mut EncState, pcm: Tensor<2>) -> Result<Tensor<3, Int>> {
        let emb = self.encode_chunk_latent(state, pcm)?;
        Ok(self.quantizer.encode(emb, self.num_codebooks))
    }

    /// Streaming encoding of whole frames `[B, n * frame]` to the unquantized latents
    /// `[B, C, n]` the quantizer takes (the codec's own representation before its codes).
    pub fn encode_chunk_latent(&self, state: &mut EncState, pcm: Tensor<2>) -> Result<Tensor<3>> {
        let [b, t] = pcm.dims();
        let frame = self.frame_size();
        if t == 0 || t % frame != 0 {
            return Err(Error::input(format!(
                "streaming input of {t} samples is not a positive multiple of the frame size {frame}"
            )));
        }
        if b != state.batch {
            return Err(Error::input(format!("encoder state holds {} streams, input has {b}", state.batch)));
        }
        self.encode_latent(pcm.reshape([b, 1, t]), Some(state))
    }

    /// Quantizes latents `[B, C, n]` (from [`Mimi::encode_chunk_latent`]) to codes `[B, Q, n]`.
    pub fn quantize(&self, latent: Tensor<3>) -> Tensor<3, Int> {
        self.quantizer.encode(latent, self.num_codebooks)
    }

    /// Latent width `C` of [`Mimi::encode_chunk_latent`].
    pub fn latent_dim(&self) -> usize {
        self.config.quantizer.input_dimension
    }

    /// Streaming encoding of one frame `[B, frame]` to codes `[B, Q]`.
    pub fn encode_step(&self, state: &mut EncState, pcm: Tensor<2>) -> Result<Tensor<2, Int>> {
        let [b, t] = pcm.dims();
        if t != self.frame_size() {
            return Err(Error::input(format!("a frame has {} samples, got {t}", self.frame_size())));
        }
        let codes = self.encode_chunk(state, pcm)?;
        let q = codes.dims()[1];
        Ok(codes.reshape([b, q]))
    }

    /// Streaming decoding of codes `[B, Q, n]` to audio `[B, n * frame]`.
    pub fn decode_chunk(&self, state: &mut DecState, codes: Tensor<3, Int>) -> Result<Tensor<2>> {
        let [b, _, _] = codes.dims();
        if b != state.batch {
            return Err(Error::input(format!("decoder state holds {} streams, input has {b}", state.batch)));
        }
        let emb = self.quantizer.decode(codes)?;
        let y = self.decode_latent(emb, Some(state))?;
        let [b, _, t] = y.dims();
        Ok(y.reshape([b, t]))
    }

    /// Streaming decoding of one frame of codes `[B, Q]` to audio `[B, frame]`.
    pub fn decode_step(&self, state: &mut DecState, codes: Tensor<2, Int>) -> Result<Tensor<2>> {
        let [b, q] = codes.dims();
        self.decode_chunk(state, codes.reshape([b, q, 1]))
    }

    pub(crate) fn encoder_transformer_forward(&self, x: Tensor<3>) -> Result<Tensor<3>> {
        self.encoder_transformer.forward(x, None)
    }

    pub(crate) fn decoder_transformer_forward(&self, x: Tensor<3>) -> Result<Tensor<3>> {
        self.decoder_transformer.forward(x, None)
    }

    /// Every intermediate of a whole-signal round trip (`pcm` `[B, T]`, whole frames), for
    /// parity checks against the reference.
    pub fn trace(&self, pcm: Tensor<2>) -> Result<Trace> {
        let [b, t] = pcm.dims();
        let seanet = self.encoder.forward(&mut self.encoder.init_state(b), pcm.reshape([b, 1, t]))?;
        let transformer = self.encoder_transformer.forward(seanet.clone(), None)?;
        let latent = match &self.downsample {
            Some(d) => d.forward(&mut d.init_state(b), transformer.clone())?,
            None => transformer.clone(),
        };
        let codes = self.quantizer.encode(latent.clone(), self.num_codebooks);
        let quantized = self.quantizer.decode(codes.clone())?;
        let up = match &self.upsample {
            Some(u) => u.forward(&mut u.init_state(b), quantized.clone())?,
            None => quantized.clone(),
        };
        let dec_transformer = self.decoder_transformer.forward(up, None)?;
        let audio = self.decoder.forward(&mut self.decoder.init_state(b), dec_transformer.clone())?;
        Ok(Trace { seanet, transformer, latent, codes, quantized, dec_transformer, audio })
    }

    /// Uploads host codes `[B, Q, T]` after checking each is in `0..cardinality`.
    pub fn codes_tensor(&self, values: Vec<i64>, shape: [usize; 3]) -> Result<Tensor<3, Int>> {
        if values.len() != shape.iter().product::<usize>() {
            return Err(Error::input(format!("{} codes do not fill shape {shape:?}", values.len())));
        }
        let bins = self.cardinality() as i64;
        if let Some(bad) = values.iter().find(|&&c| c < 0 || c >= bins) {
            return Err(Error::input(format!("code {bad} is outside 0..{bins}")));
        }
        Ok(crate::backend::ints(values, shape, &self.device()))
    }

    /// Uploads host audio `[B, T]` in the codec's dtype.
    pub fn pcm_tensor(&self, values: Vec<f32>, shape: [usize; 2]) -> Tensor<2> {
        crate::backend::floats(values, shape, &self.device(), self.dtype())
    }
}
