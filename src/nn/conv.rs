//! Causal streaming convolutions, as in Mimi's SEANet and its 25 <-> 12.5 Hz resamplers.
//!
//! `Conv1d` keeps the last `kernel - stride` input samples of each stream, so feeding a signal in
//! chunks gives exactly the output of feeding it whole. With replicate padding the first chunk
//! fills that history with its own first sample (a fresh state restores this).
//!
//! `ConvTr1d` carries the overlapping tail of each output chunk into the next one, with the bias
//! subtracted from the carried part so it is added only once.

use burn::module::Param;
use burn::prelude::*;

use super::batch::Batched;
use crate::error::{Error, Result};
use crate::kernels::conv::{self, ConvOut, ConvShape};
use crate::weights::Weights;

/// Shape of a 1-D convolution.
#[derive(Clone, Copy, Debug)]
pub struct ConvSpec {
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: usize,
    pub stride: usize,
    pub dilation: usize,
    pub groups: usize,
    pub bias: bool,
}

impl ConvSpec {
    pub fn new(in_channels: usize, out_channels: usize, kernel: usize) -> Self {
        Self { in_channels, out_channels, kernel, stride: 1, dilation: 1, groups: 1, bias: true }
    }
    pub fn stride(mut self, stride: usize) -> Self {
        self.stride = stride;
        self
    }
    pub fn dilation(mut self, dilation: usize) -> Self {
        self.dilation = dilation;
        self
    }
    pub fn groups(mut self, groups: usize) -> Self {
        self.groups = groups;
        self
    }
    pub fn bias(mut self, bias: bool) -> Self {
        self.bias = bias;
        self
    }
}

/// Causal 1-D convolution with streaming state. Weight `[out, in / groups, kernel]`.
#[derive(Module, Debug)]
pub struct Conv1d {
    pub weight: Param<Tensor<3>>,
    pub bias: Option<Param<Tensor<1>>>,
    pub stride: usize,
    pub dilation: usize,
    pub groups: usize,
    pub replicate: bool,
}

/// Streaming state of a [`Conv1d`]: the last `kernel - stride` inputs of each row.
#[derive(Clone, Debug)]
pub struct ConvState {
    prev: Option<Tensor<3>>,
    first: Vec<bool>,
}

impl Batched for ConvState {
    fn empty() -> Self {
        ConvState { prev: None, first: Vec::new() }
    }

    fn batch(&self) -> usize {
        self.first.len()
    }

    fn merge(parts: Vec<ConvState>) -> ConvState {
        let first = parts.iter().flat_map(|p| p.first.iter().copied()).collect();
        let prevs: Vec<Tensor<3>> = parts.into_iter().filter_map(|p| p.prev).collect();
        let prev = if prevs.is_empty() { None } else { Some(Tensor::cat(prevs, 0)) };
        ConvState { prev, first }
    }

    fn split(self) -> Vec<ConvState> {
        let n = self.first.len();
        (0..n)
            .map(|b| ConvState {
                prev: self.prev.as_ref().map(|p| p.clone().narrow(0, b, 1)),
                first: vec![self.first[b]],
            })
            .collect()
    }
}

impl Conv1d {
    /// Loads `{prefix}.weight` (and `{prefix}.bias`).
    pub fn load(w: &mut dyn Weights, prefix: &str, spec: ConvSpec, replicate: bool) -> Result<Self> {
        let (weight, bias) = load_params(w, prefix, &spec, false)?;
        Ok(Self { weight, bias, stride: spec.stride, dilation: spec.dilation, groups: spec.groups, replicate })
    }

    /// Builds the layer from tensors (tests, training initialisation).
    pub fn from_tensors(weight: Tensor<3>, bias: Option<Tensor<1>>, spec: ConvSpec, replicate: bool) -> Self {
        Self {
            weight: Param::from_tensor(weight),
            bias: bias.map(Param::from_tensor),
            stride: spec.stride,
            dilation: spec.dilation,
            groups: spec.groups,
            replicate,
        }
    }

    fn kernel(&self) -> usize {
        self.weight.dims()[2]
    }

    fn in_channels(&self) -> usize {
        self.weight.dims()[1] * self.groups
    }

    /// Number of past input samples the convolution needs.
    pub fn history(&self) -> usize {
        (self.kernel() - 1) * self.dilation + 1 - self.stride
    }

    /// A fresh state for `batch` streams.
    pub fn init_state(&self, batch: usize) -> ConvState {
        let p = self.history();
        let prev = (p > 0).then(|| {
            let w = self.weight.val();
            Tensor::zeros([batch, self.in_channels(), p], (&w.device(), w.dtype()))
        });
        ConvState { prev, first: vec![true; batch] }
    }

    /// Convolves a chunk `[B, C, T]` (T a multiple of the stride), updating the state.
    pub fn forward(&self, state: &mut ConvState, x: Tensor<3>) -> Result<Tensor<3>> {
        Ok(self.forward_fused(state, x, false, None, false)?.y)
    }

    /// [`Conv1d::forward`] of `elu(x)` when `elu`, plus `res` `[B, Cout, T / stride]` when given,
    /// and `elu` of the output too when `elu_out`: one launch on a CubeCL device
    /// (`kernels/conv.rs`). The state keeps the activated inputs.
    pub fn forward_fused(
        &self,
        state: &mut ConvState,
        x: Tensor<3>,
        elu: bool,
        res: Option<Tensor<3>>,
        elu_out: bool,
    ) -> Result<ConvOut> {
        let [b, _, t] = x.dims();
        if t == 0 || t % self.stride != 0 {
            return Err(Error::input(format!(
                "conv input length {t} is not a positive multiple of its stride {}",
                self.stride
            )));
        }
        if b != state.first.len() {
            return Err(Error::input(format!("conv state holds {} streams, input has {b}", state.first.len())));
        }
        let first: Vec<bool> = if self.replicate { state.first.clone() } else { vec![false; b] };
        let shape = ConvShape { stride: self.stride, dilation: self.dilation, groups: self.groups, elu, elu_out };
        let mut out = conv::conv1d(
            x,
            state.prev.take(),
            self.weight.val(),
            self.bias.as_ref().map(|b| b.val()),
            res,
            shape,
            &first,
        );
        state.prev = out.next.take();
        state.first.iter_mut().for_each(|f| *f = false);
        Ok(out)
    }
}

/// Causal transposed 1-D convolution with streaming state. Weight `[in, out / groups, kernel]`.
#[derive(Module, Debug)]
pub struct ConvTr1d {
    pub weight: Param<Tensor<3>>,
    pub bias: Option<Param<Tensor<1>>>,
    pub stride: usize,
    pub groups: usize,
}

/// Streaming state of a [`ConvTr1d`]: the overlap tail `[B, out, kernel - stride]`.
#[derive(Clone, Debug)]
pub struct ConvTrState {
    partial: Option<Tensor<3>>,
    batch: usize,
}

impl Batched for ConvTrState {
    fn empty() -> Self {
        ConvTrState { partial: None, batch: 0 }
    }

    fn batch(&self) -> usize {
        self.batch
    }

    fn merge(parts: Vec<ConvTrState>) -> ConvTrState {
        let batch = parts.iter().map(|p| p.batch).sum();
        let tails: Vec<Tensor<3>> = parts.into_iter().filter_map(|p| p.partial).collect();
        let partial = if tails.is_empty() { None } else { Some(Tensor::cat(tails, 0)) };
        ConvTrState { partial, batch }
    }

    fn split(self) -> Vec<ConvTrState> {
        (0..self.batch)
            .map(|b| ConvTrState { partial: self.partial.as_ref().map(|p| p.clone().narrow(0, b, 1)), batch: 1 })
            .collect()
    }
}

impl ConvTr1d {
    /// Loads `{prefix}.weight` (and `{prefix}.bias`). `spec.in_channels` is the input width.
    pub fn load(w: &mut dyn Weights, prefix: &str, spec: ConvSpec) -> Result<Self> {
        let (weight, bias) = load_params(w, prefix, &spec, true)?;
        Ok(Self { weight, bias, stride: spec.stride, groups: spec.groups })
    }

    pub fn from_tensors(weight: Tensor<3>, bias: Option<Tensor<1>>, spec: ConvSpec) -> Self {
        Self {
            weight: Param::from_tensor(weight),
            bias: bias.map(Param::from_tensor),
            stride: spec.stride,
            groups: spec.groups,
        }
    }

    fn tail(&self) -> usize {
        self.weight.dims()[2].saturating_sub(self.stride)
    }

    pub fn init_state(&self, batch: usize) -> ConvTrState {
        let pt = self.tail();
        let partial = (pt > 0).then(|| {
            let w = self.weight.val();
            let out = w.dims()[1] * self.groups;
            Tensor::zeros([batch, out, pt], (&w.device(), w.dtype()))
        });
        ConvTrState { partial, batch }
    }

    /// Upsamples a chunk `[B, C, T]` to `[B, out, T * stride]`, updating the state.
    pub fn forward(&self, state: &mut ConvTrState, x: Tensor<3>) -> Result<Tensor<3>> {
        Ok(self.forward_fused(state, x, false, false)?.y)
    }

    /// [`ConvTr1d::forward`] of `elu(x)` when `elu`, with `elu` of the output too when `elu_out`:
    /// one launch on a CubeCL device (`kernels/conv.rs`).
    pub fn forward_fused(&self, state: &mut ConvTrState, x: Tensor<3>, elu: bool, elu_out: bool) -> Result<ConvOut> {
        let [b, _, t] = x.dims();
        if t == 0 {
            return Err(Error::input("transposed conv input is empty"));
        }
        if b != state.batch {
            return Err(Error::input(format!("transposed conv state holds {} streams, input has {b}", state.batch)));
        }
        let shape = ConvShape { stride: self.stride, dilation: 1, groups: self.groups, elu, elu_out };
        let mut out =
            conv::conv_tr1d(x, state.partial.take(), self.weight.val(), self.bias.as_ref().map(|b| b.val()), shape);
        state.partial = out.next.take();
        Ok(out)
    }
}

/// Checks the spec, then loads `{prefix}.weight` and, when the spec has one, `{prefix}.bias`.
/// A transposed convolution's weight is `[in, out / groups, kernel]`, a plain one's `[out, in / groups, kernel]`.
fn load_params(
    w: &mut dyn Weights,
    prefix: &str,
    spec: &ConvSpec,
    transposed: bool,
) -> Result<(Param<Tensor<3>>, Option<Param<Tensor<1>>>)> {
    check_spec(spec)?;
    let shape = if transposed {
        [spec.in_channels, spec.out_channels / spec.groups, spec.kernel]
    } else {
        [spec.out_channels, spec.in_channels / spec.groups, spec.kernel]
    };
    let weight = w.param(&format!("{prefix}.weight"), shape)?;
    let bias = if spec.bias { Some(w.param(&format!("{prefix}.bias"), [spec.out_channels])?) } else { None };
    Ok((weight, bias))
}

fn check_spec(spec: &ConvSpec) -> Result<()> {
    if spec.groups == 0
        || !spec.in_channels.is_multiple_of(spec.groups)
        || !spec.out_channels.is_multiple_of(spec.groups)
        || spec.stride == 0
        || spec.kernel == 0
        || spec.dilation == 0
    {
        return Err(Error::config("conv", format!("invalid convolution shape {spec:?}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    fn max_diff(a: Tensor<3>, b: Tensor<3>) -> f32 {
        (a - b).abs().max().into_scalar::<f32>()
    }

    fn chunked_conv(conv: &Conv1d, x: &Tensor<3>, chunk: usize) -> Tensor<3> {
        let [b, _, t] = x.dims();
        let mut state = conv.init_state(b);
        let outs: Vec<Tensor<3>> =
            (0..t / chunk).map(|i| conv.forward(&mut state, x.clone().narrow(2, i * chunk, chunk)).unwrap()).collect();
        Tensor::cat(outs, 2)
    }

    #[test]
    fn conv_whole_equals_chunks() {
        let device = Device::flex();
        for (k, s, dil, groups, replicate) in [
            (7, 1, 1, 1, false),
            (3, 1, 2, 1, false),
            (8, 4, 1, 1, false),
            (4, 2, 1, 3, true),
            (1, 1, 1, 1, false),
            (10, 5, 1, 1, true),
        ] {
            let spec = ConvSpec::new(6, 9, k).stride(s).dilation(dil).groups(groups);
            let w = Tensor::random([9, 6 / groups, k], Distribution::Normal(0.0, 0.5), &device);
            let bias = Tensor::random([9], Distribution::Normal(0.0, 0.5), &device);
            let conv = Conv1d::from_tensors(w, Some(bias), spec, replicate);
            let x = Tensor::random([2, 6, 12 * s * 5], Distribution::Normal(0.0, 1.0), &device);
            let whole = conv.forward(&mut conv.init_state(2), x.clone()).unwrap();
            assert_eq!(whole.dims()[2], 60);
            for chunk in [s, 2 * s, 5 * s, 12 * s] {
                let d = max_diff(whole.clone(), chunked_conv(&conv, &x, chunk));
                assert!(d < 1e-5, "k{k} s{s} d{dil} g{groups} chunk {chunk}: {d}");
            }
        }
    }

    #[test]
    fn replicate_padding_repeats_first_sample_and_fresh_state_restores_it() {
        let device = Device::flex();
        let spec = ConvSpec::new(1, 1, 4).stride(2).bias(false);
        let w = Tensor::<3>::ones([1, 1, 4], &device);
        let conv = Conv1d::from_tensors(w, None, spec, true);
        let x = Tensor::<3>::from_data([[[3.0f32, 1.0, 1.0, 1.0]]], &device);
        // History [3, 3] then [3, 1]: first window 3+3+3+1.
        let y = conv.forward(&mut conv.init_state(1), x.clone()).unwrap();
        let v = y.into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(v, vec![10.0, 6.0]);
        let again = conv.forward(&mut conv.init_state(1), x).unwrap().into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(again, vec![10.0, 6.0]);
    }

    #[test]
    fn conv_rejects_partial_stride() {
        let device = Device::flex();
        let spec = ConvSpec::new(1, 1, 4).stride(2);
        let conv = Conv1d::from_tensors(Tensor::ones([1, 1, 4], &device), None, spec, false);
        let x = Tensor::<3>::zeros([1, 1, 3], &device);
        assert!(conv.forward(&mut conv.init_state(1), x).is_err());
    }

    #[test]
    fn conv_transpose_whole_equals_chunks() {
        let device = Device::flex();
        for (k, s, groups) in [(4, 2, 1), (16, 8, 1), (4, 2, 6), (3, 1, 1), (12, 6, 2), (5, 5, 1)] {
            let spec = ConvSpec::new(6, 6, k).stride(s).groups(groups);
            let w = Tensor::random([6, 6 / groups, k], Distribution::Normal(0.0, 0.5), &device);
            let bias = Tensor::random([6], Distribution::Normal(0.0, 0.5), &device);
            let conv = ConvTr1d::from_tensors(w, Some(bias), spec);
            let x = Tensor::random([2, 6, 12], Distribution::Normal(0.0, 1.0), &device);
            let whole = conv.forward(&mut conv.init_state(2), x.clone()).unwrap();
            assert_eq!(whole.dims()[2], 12 * s);
            for chunk in [1, 2, 3, 12] {
                let mut state = conv.init_state(2);
                let outs: Vec<Tensor<3>> = (0..12 / chunk)
                    .map(|i| conv.forward(&mut state, x.clone().narrow(2, i * chunk, chunk)).unwrap())
                    .collect();
                let d = max_diff(whole.clone(), Tensor::cat(outs, 2));
                assert!(d < 1e-5, "k{k} s{s} g{groups} chunk {chunk}: {d}");
            }
        }
    }

    #[test]
    fn merged_states_step_like_separate_ones() {
        let device = Device::flex();
        let spec = ConvSpec::new(2, 3, 5).stride(1);
        let conv =
            Conv1d::from_tensors(Tensor::random([3, 2, 5], Distribution::Normal(0.0, 1.0), &device), None, spec, true);
        let xa = Tensor::random([1, 2, 8], Distribution::Normal(0.0, 1.0), &device);
        let xb = Tensor::random([1, 2, 8], Distribution::Normal(0.0, 1.0), &device);
        // Stream a runs one chunk ahead, then both step together from merged states.
        let mut sa = conv.init_state(1);
        conv.forward(&mut sa, xa.clone().narrow(2, 0, 4)).unwrap();
        let sb = conv.init_state(1);
        let mut merged = ConvState::merge(vec![sa.clone(), sb.clone()]);
        let y = conv
            .forward(&mut merged, Tensor::cat(vec![xa.clone().narrow(2, 4, 4), xb.clone().narrow(2, 0, 4)], 0))
            .unwrap();
        let ya = conv.forward(&mut sa, xa.narrow(2, 4, 4)).unwrap();
        let mut sb = sb;
        let yb = conv.forward(&mut sb, xb.narrow(2, 0, 4)).unwrap();
        assert!(max_diff(y, Tensor::cat(vec![ya, yb], 0)) < 1e-6);
        assert_eq!(merged.split().len(), 2);
    }
}
