//! Streaming convolutions in one launch each, as Mimi's SEANet and resamplers run them frame by
//! frame: the history a convolution carries between chunks is read inside the kernel, the
//! activation before it (ELU) and the residual after it are applied on the way, and the next
//! history is written by the same launch.
//!
//! - [`conv1d`]: `y = conv(act([hist, x])) (+ res)`, a causal convolution over the stream's last
//!   inputs and the new chunk, with replicate padding of a stream's first chunk where asked;
//!   returns `y` and the new history (the last inputs, after the activation).
//! - [`conv_tr1d`]: `y = convtr(act(x)) + tail`, a transposed convolution whose overlapping tail
//!   is carried to the next chunk (without the bias, which it gets once).
//!
//! Why: as Burn ops a streaming convolution is an activation, a concatenation, a slice for the
//! next history, the convolution itself (several launches, autotuned) and an add, with masks for
//! replicate padding: about 10 launches, 14 of them a SEANet. Here each is one launch, with no
//! shared memory and no barrier: a unit computes up to 8 output channels of one position, so
//! that each input value is loaded and activated once for all of them.
//!
//! Each has its plain-Burn reference (`*_reference`), which runs off CubeCL devices and is what
//! the kernels are tested against.

use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Cube, Dispatch, backend_extension};
use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::activation::elu;
use burn::tensor::module::{conv_transpose1d, conv1d as burn_conv1d};
use burn::tensor::ops::{ConvOptions, ConvTransposeOptions};

use super::on_cube;

/// Shape of a streaming convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvShape {
    pub stride: usize,
    pub dilation: usize,
    pub groups: usize,
    /// ELU (alpha 1) on the input, history included, before the convolution.
    pub elu: bool,
    /// Also return `elu(y)`, for a consumer that activates its input: computed once here
    /// rather than once per tap there.
    pub elu_out: bool,
}

/// What a streaming convolution returns.
#[derive(Clone, Debug)]
pub struct ConvOut {
    pub y: Tensor<3>,
    /// `elu(y)`, when asked for ([`ConvShape::elu_out`]).
    pub activated: Option<Tensor<3>>,
    /// The next history (or tail); `None` when the convolution carries none.
    pub next: Option<Tensor<3>>,
}

impl ConvShape {
    fn flags(&self, bias: bool, res: bool, state: bool) -> u32 {
        self.elu as u32 | (bias as u32) << 1 | (res as u32) << 2 | (state as u32) << 3 | (self.elu_out as u32) << 4
    }
}

/// `conv(act([hist, x])) + bias (+ res)` for `x` `[B, Cin, T]` (T a multiple of the stride),
/// `hist` `[B, Cin, H]` the last `H = (K - 1) dilation + 1 - stride` inputs after the activation
/// (`None` when `H` is 0), weight `[Cout, Cin / groups, K]`. Rows whose bit is set in `first`
/// replace their history by their chunk's first input (replicate padding). Returns
/// `[B, Cout, T / stride]` and the next history.
pub fn conv1d(
    x: Tensor<3>,
    hist: Option<Tensor<3>>,
    weight: Tensor<3>,
    bias: Option<Tensor<1>>,
    res: Option<Tensor<3>>,
    shape: ConvShape,
    first: &[bool],
) -> ConvOut {
    if !uses_conv_kernel(&x, hist.as_ref(), &weight, res.as_ref(), shape, first) {
        return conv1d_reference(x, hist, weight, bias, res, shape, first);
    }
    let has_hist = hist.is_some();
    let flags = shape.flags(bias.is_some(), res.is_some(), has_hist);
    let mask = first.iter().enumerate().fold(0u32, |m, (i, &f)| m | (f as u32) << i);
    let any = x.clone();
    let (y, ya, h) = <Dispatch as ConvBackend>::conv1d_step(
        x.into_dispatch(),
        hist.unwrap_or_else(|| any.clone()).into_dispatch(),
        weight.into_dispatch(),
        bias.unwrap_or_else(|| any.clone().reshape([-1])).into_dispatch(),
        res.unwrap_or_else(|| any.clone()).into_dispatch(),
        shape.stride as u32,
        shape.dilation as u32,
        shape.groups as u32,
        mask,
        flags,
    );
    ConvOut {
        y: Tensor::from_dispatch(y),
        activated: shape.elu_out.then(|| Tensor::from_dispatch(ya)),
        next: has_hist.then(|| Tensor::from_dispatch(h)),
    }
}

/// Whether [`conv1d`] launches the kernel.
pub fn uses_conv_kernel(
    x: &Tensor<3>,
    hist: Option<&Tensor<3>>,
    weight: &Tensor<3>,
    res: Option<&Tensor<3>>,
    shape: ConvShape,
    first: &[bool],
) -> bool {
    let [b, cin, t] = x.dims();
    let [cout, cin_g, k] = weight.dims();
    let h = (k - 1) * shape.dilation + 1;
    matches!(x.dtype(), DType::F32 | DType::F16)
        && weight.dtype() == x.dtype()
        && b <= 32
        && first.len() == b
        && shape.stride > 0
        && shape.groups > 0
        && cin_g * shape.groups == cin
        && cout % shape.groups == 0
        && h >= shape.stride
        && t % shape.stride == 0
        && t > 0
        && hist.map_or(h == shape.stride, |p| p.dims() == [b, cin, h - shape.stride] && p.dtype() == x.dtype())
        && res.is_none_or(|r| r.dims() == [b, cout, t / shape.stride] && r.dtype() == x.dtype())
        && on_cube(x.device())
        && on_cube(weight.device())
}

/// [`conv1d`] with Burn's ops.
pub fn conv1d_reference(
    x: Tensor<3>,
    hist: Option<Tensor<3>>,
    weight: Tensor<3>,
    bias: Option<Tensor<1>>,
    res: Option<Tensor<3>>,
    shape: ConvShape,
    first: &[bool],
) -> ConvOut {
    let x = if shape.elu { elu(x, 1.0) } else { x };
    let [b, c, _] = x.dims();
    let (full, next) = match hist {
        Some(mut prev) => {
            let p = prev.dims()[2];
            if first.iter().any(|&f| f) {
                let init = x.clone().narrow(2, 0, 1).repeat_dim(2, p);
                prev = if first.iter().all(|&f| f) {
                    init
                } else {
                    let mask =
                        crate::backend::bools(first.to_vec(), [b], &x.device()).reshape([b, 1, 1]).expand([b, c, p]);
                    prev.mask_where(mask, init)
                };
            }
            let full = Tensor::cat(vec![prev, x], 2);
            let len = full.dims()[2];
            let next = full.clone().narrow(2, len - p, p);
            (full, Some(next))
        }
        None => (x, None),
    };
    let y = burn_conv1d(full, weight, bias, ConvOptions::new([shape.stride], [0], [shape.dilation], shape.groups));
    let y = match res {
        Some(r) => r + y,
        None => y,
    };
    let activated = shape.elu_out.then(|| elu(y.clone(), 1.0));
    ConvOut { y, activated, next }
}

/// `convtr(act(x)) + bias`, plus the carried `tail` `[B, Cout, K - stride]` on its first
/// positions, for `x` `[B, Cin, T]` and weight `[Cin, Cout / groups, K]`. Returns the first
/// `T * stride` positions and the next tail (the rest, without the bias).
pub fn conv_tr1d(
    x: Tensor<3>,
    tail: Option<Tensor<3>>,
    weight: Tensor<3>,
    bias: Option<Tensor<1>>,
    shape: ConvShape,
) -> ConvOut {
    if !uses_tr_kernel(&x, tail.as_ref(), &weight, shape) {
        return conv_tr1d_reference(x, tail, weight, bias, shape);
    }
    let has_tail = tail.is_some();
    let flags = shape.flags(bias.is_some(), false, has_tail);
    let any = x.clone();
    let (y, ya, t) = <Dispatch as ConvBackend>::conv_tr1d_step(
        x.into_dispatch(),
        tail.unwrap_or_else(|| any.clone()).into_dispatch(),
        weight.into_dispatch(),
        bias.unwrap_or_else(|| any.clone().reshape([-1])).into_dispatch(),
        shape.stride as u32,
        shape.groups as u32,
        flags,
    );
    ConvOut {
        y: Tensor::from_dispatch(y),
        activated: shape.elu_out.then(|| Tensor::from_dispatch(ya)),
        next: has_tail.then(|| Tensor::from_dispatch(t)),
    }
}

/// Whether [`conv_tr1d`] launches the kernel.
pub fn uses_tr_kernel(x: &Tensor<3>, tail: Option<&Tensor<3>>, weight: &Tensor<3>, shape: ConvShape) -> bool {
    let [b, cin, t] = x.dims();
    let [wcin, cout_g, k] = weight.dims();
    let cout = cout_g * shape.groups;
    matches!(x.dtype(), DType::F32 | DType::F16)
        && weight.dtype() == x.dtype()
        && shape.stride > 0
        && shape.groups > 0
        && shape.dilation == 1
        && wcin == cin
        && cin % shape.groups == 0
        && k >= shape.stride
        && t > 0
        && tail.map_or(k == shape.stride, |p| p.dims() == [b, cout, k - shape.stride] && p.dtype() == x.dtype())
        && on_cube(x.device())
        && on_cube(weight.device())
}

/// [`conv_tr1d`] with Burn's ops.
pub fn conv_tr1d_reference(
    x: Tensor<3>,
    tail: Option<Tensor<3>>,
    weight: Tensor<3>,
    bias: Option<Tensor<1>>,
    shape: ConvShape,
) -> ConvOut {
    let x = if shape.elu { elu(x, 1.0) } else { x };
    let [b, _, _] = x.dims();
    let y = conv_transpose1d(
        x,
        weight,
        bias.clone(),
        ConvTransposeOptions::new([shape.stride], [0], [0], [1], shape.groups),
    );
    let (y, next) = match tail {
        None => (y, None),
        Some(partial) => {
            let [_, out, len] = y.dims();
            let pt = partial.dims()[2];
            let carried = Tensor::cat(vec![partial, Tensor::zeros([b, out, len - pt], (&y.device(), y.dtype()))], 2);
            let y = y + carried;
            let mut next = y.clone().narrow(2, len - pt, pt);
            if let Some(bias) = &bias {
                next = next - bias.clone().reshape([1, out, 1]);
            }
            (y.narrow(2, 0, len - pt), Some(next))
        }
    };
    let activated = shape.elu_out.then(|| elu(y.clone(), 1.0));
    ConvOut { y, activated, next }
}

/// The streaming convolutions as a Burn backend extension (CubeCL only). Flags: bit 0 ELU on the
/// input, 1 bias, 2 residual, 3 history (or tail), 4 `elu(y)` written too; absent tensors are
/// stand-ins never read. Returns `(y, elu(y) or a placeholder, next history or a placeholder)`.
#[backend_extension(Cube)]
pub trait ConvBackend: Backend {
    #[allow(clippy::too_many_arguments)]
    fn conv1d_step(
        x: FloatTensor<Self>,
        hist: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        res: FloatTensor<Self>,
        stride: u32,
        dilation: u32,
        groups: u32,
        first: u32,
        flags: u32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);

    #[allow(clippy::too_many_arguments)]
    fn conv_tr1d_step(
        x: FloatTensor<Self>,
        tail: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        stride: u32,
        groups: u32,
        flags: u32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
}

impl ConvBackend for Cube {
    fn conv1d_step(
        x: FloatTensor<Self>,
        hist: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        res: FloatTensor<Self>,
        stride: u32,
        dilation: u32,
        groups: u32,
        first: u32,
        flags: u32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        cube::launch_conv(x, hist, weight, bias, res, stride, dilation, groups, first, flags)
    }

    fn conv_tr1d_step(
        x: FloatTensor<Self>,
        tail: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        stride: u32,
        groups: u32,
        flags: u32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        cube::launch_tr(x, tail, weight, bias, stride, groups, flags)
    }
}

mod cube {
    use burn::backend::cubecl::dtype_to_storage_type;
    use burn::tensor::Shape;
    use burn_cubecl::kernel::into_contiguous;
    use burn_cubecl::ops::numeric::empty_device_dtype;
    use burn_cubecl::tensor::CubeTensor;
    use cubecl::prelude::*;

    /// Units of a cube of the short-chunk and transposed convolutions.
    const UNITS: usize = 64;
    /// Units of a cube of the flat convolution (one unit per output position and channel block).
    const FLAT_UNITS: usize = 256;

    /// ELU with alpha 1, as Burn computes it: `x` where positive, else `e^x - 1`.
    #[cube]
    fn elu_f32(x: f32) -> f32 {
        let mut y = x;
        if x <= 0.0f32 {
            y = x.exp() - 1.0f32;
        }
        y
    }

    /// Input `i` of channel `c` of row `b` in the padded stream `[hist, x]` (`h` history values),
    /// after the activation and rounded to the model's dtype as the reference's ops round it.
    // Every branch of the runtime `if` assigns `v`; the kernel language needs it declared first.
    #[allow(unused_assignments)]
    #[cube]
    fn padded<F: Float>(
        x: &[F],
        hist: &[F],
        b: usize,
        c: usize,
        i: usize,
        cin: usize,
        t: usize,
        h: usize,
        first: bool,
        #[comptime] elu: bool,
    ) -> f32 {
        let mut v = 0.0f32;
        if i >= h {
            v = f32::cast_from(x[(b * cin + c) * t + i - h]);
            if elu {
                v = f32::cast_from(F::cast_from(elu_f32(v)));
            }
        } else if first {
            v = f32::cast_from(x[(b * cin + c) * t]);
            if elu {
                v = f32::cast_from(F::cast_from(elu_f32(v)));
            }
        } else {
            v = f32::cast_from(hist[(b * cin + c) * h + i]);
        }
        v
    }

    /// One unit per `oc` output channels of one output position `(b, o0.., t)`, each input value
    /// loaded once for all of them; then one unit per next-history value `(b, c, j)`.
    #[cube(launch)]
    fn conv_step<F: Float>(
        x: &[F],
        hist: &[F],
        weight: &[F],
        bias: &[F],
        res: &[F],
        y: &mut [F],
        ya: &mut [F],
        next: &mut [F],
        rows: u32,
        cin: u32,
        cout: u32,
        t: u32,
        k: u32,
        stride: u32,
        dilation: u32,
        groups: u32,
        first: u32,
        #[comptime] flags: u32,
        #[comptime] oc: usize,
        #[define(F)] _dtype: ElemType,
    ) {
        let i = ABSOLUTE_POS;
        let rows = rows as usize;
        let cin = cin as usize;
        let cout = cout as usize;
        let t = t as usize;
        let k = k as usize;
        let stride = stride as usize;
        let dilation = dilation as usize;
        let groups = groups as usize;
        let span = (k - 1) * dilation + 1;
        let h = span - stride;
        let tout = t / stride;
        let blocks = cout / oc;
        let n_out = rows * blocks * tout;
        let n_next = rows * cin * h;
        if i < n_out {
            let b = i / (blocks * tout);
            let o0 = ((i / tout) % blocks) * oc;
            let to = i % tout;
            let mut is_first = false;
            if comptime!(flags & 8 != 0) {
                is_first = ((first >> (b as u32)) & 1u32) == 1u32;
            }
            let cin_g = cin / groups;
            let c0 = (o0 / (cout / groups)) * cin_g;
            let mut acc = Array::<f32>::new(oc);
            #[unroll]
            for r in 0..oc {
                acc[r] = 0.0f32;
            }
            for cg in 0..cin_g {
                let c = c0 + cg;
                for j in 0..k {
                    let v = padded::<F>(
                        x,
                        hist,
                        b,
                        c,
                        to * stride + j * dilation,
                        cin,
                        t,
                        h,
                        is_first,
                        comptime!(flags & 1 != 0),
                    );
                    #[unroll]
                    for r in 0..oc {
                        acc[r] += v * f32::cast_from(weight[((o0 + r) * cin_g + cg) * k + j]);
                    }
                }
            }
            #[unroll]
            for r in 0..oc {
                let o = o0 + r;
                let mut a = acc[r];
                if comptime!(flags & 2 != 0) {
                    a += f32::cast_from(bias[o]);
                }
                let at = (b * cout + o) * tout + to;
                let mut out = F::cast_from(a);
                if comptime!(flags & 4 != 0) {
                    out = res[at] + out;
                }
                y[at] = out;
                if comptime!(flags & 16 != 0) {
                    ya[at] = F::cast_from(elu_f32(f32::cast_from(out)));
                }
            }
        } else if comptime!(flags & 8 != 0) {
            if i < n_out + n_next {
                // The next history: the last `h` values of the padded stream, after the activation.
                let n = i - n_out;
                let b = n / (cin * h);
                let c = (n / h) % cin;
                let j = n % h;
                let is_first = ((first >> (b as u32)) & 1u32) == 1u32;
                let v = padded::<F>(x, hist, b, c, t + j, cin, t, h, is_first, comptime!(flags & 1 != 0));
                next[n] = F::cast_from(v);
            }
        }
    }

    /// Cube `(tile, 1, row)`, one unit per output value `(o, t)`: for chunks too short to fill a
    /// cube with positions (the deep, slow layers), whose parallelism is in their channels.
    /// Cubes past the output's tiles write the next history, one unit per value `(c, j)`.
    #[cube(launch)]
    fn conv_step_by_channel<F: Float>(
        x: &[F],
        hist: &[F],
        weight: &[F],
        bias: &[F],
        res: &[F],
        y: &mut [F],
        ya: &mut [F],
        next: &mut [F],
        cin: u32,
        cout: u32,
        t: u32,
        k: u32,
        stride: u32,
        dilation: u32,
        groups: u32,
        first: u32,
        tiles: u32,
        #[comptime] flags: u32,
        #[define(F)] _dtype: ElemType,
    ) {
        let unit = UNIT_POS as usize;
        let tile = CUBE_POS_X as usize;
        let b = CUBE_POS_Z as usize;
        let cin = cin as usize;
        let cout = cout as usize;
        let t = t as usize;
        let k = k as usize;
        let stride = stride as usize;
        let dilation = dilation as usize;
        let groups = groups as usize;
        let span = (k - 1) * dilation + 1;
        let h = span - stride;
        let tout = t / stride;
        let mut is_first = false;
        if comptime!(flags & 8 != 0) {
            is_first = ((first >> (b as u32)) & 1u32) == 1u32;
        }
        if tile < tiles as usize {
            let n = tile * UNITS + unit;
            if n < cout * tout {
                let o = n / tout;
                let to = n % tout;
                let cin_g = cin / groups;
                let c0 = (o / (cout / groups)) * cin_g;
                {
                    let mut acc = 0.0f32;
                    for cg in 0..cin_g {
                        let c = c0 + cg;
                        for j in 0..k {
                            let v = padded::<F>(
                                x,
                                hist,
                                b,
                                c,
                                to * stride + j * dilation,
                                cin,
                                t,
                                h,
                                is_first,
                                comptime!(flags & 1 != 0),
                            );
                            acc += v * f32::cast_from(weight[(o * cin_g + cg) * k + j]);
                        }
                    }
                    if comptime!(flags & 2 != 0) {
                        acc += f32::cast_from(bias[o]);
                    }
                    let at = (b * cout + o) * tout + to;
                    let mut out = F::cast_from(acc);
                    if comptime!(flags & 4 != 0) {
                        out = res[at] + out;
                    }
                    y[at] = out;
                    if comptime!(flags & 16 != 0) {
                        ya[at] = F::cast_from(elu_f32(f32::cast_from(out)));
                    }
                }
            }
        } else if comptime!(flags & 8 != 0) {
            let n = (tile - tiles as usize) * UNITS + unit;
            if n < cin * h {
                let c = n / h;
                let j = n % h;
                let v = padded::<F>(x, hist, b, c, t + j, cin, t, h, is_first, comptime!(flags & 1 != 0));
                next[(b * cin + c) * h + j] = F::cast_from(v);
            }
        }
    }

    /// One unit per `oc` output channels of one position `(b, o0.., u)` of the full transposed
    /// output `T * stride + tail`.
    #[cube(launch)]
    fn conv_tr_step<F: Float>(
        x: &[F],
        tail: &[F],
        weight: &[F],
        bias: &[F],
        y: &mut [F],
        ya: &mut [F],
        next: &mut [F],
        rows: u32,
        cin: u32,
        cout: u32,
        t: u32,
        k: u32,
        stride: u32,
        groups: u32,
        #[comptime] flags: u32,
        #[comptime] oc: usize,
        #[define(F)] _dtype: ElemType,
    ) {
        let i = ABSOLUTE_POS;
        let rows = rows as usize;
        let cin = cin as usize;
        let cout = cout as usize;
        let t = t as usize;
        let k = k as usize;
        let stride = stride as usize;
        let groups = groups as usize;
        let pt = k - stride;
        let len = t * stride + pt;
        let blocks = cout / oc;
        if i >= rows * blocks * len {
            terminate!();
        }
        let b = i / (blocks * len);
        let o0 = ((i / len) % blocks) * oc;
        let u = i % len;
        let cout_g = cout / groups;
        let cin_g = cin / groups;
        let g = o0 / cout_g;
        let og0 = o0 % cout_g;
        // Inputs t0 with u - t0 * stride in [0, k).
        let mut t_hi = u / stride;
        if t_hi >= t {
            t_hi = t - 1;
        }
        let mut t_lo = 0usize;
        if u + 1 > k {
            t_lo = (u + 1 - k + stride - 1) / stride;
        }
        let mut acc = Array::<f32>::new(oc);
        for cg in 0..cin_g {
            let c = g * cin_g + cg;
            let mut ti = t_lo;
            while ti <= t_hi {
                let j = u - ti * stride;
                let mut v = f32::cast_from(x[(b * cin + c) * t + ti]);
                if comptime!(flags & 1 != 0) {
                    v = f32::cast_from(F::cast_from(elu_f32(v)));
                }
                #[unroll]
                for r in 0..oc {
                    acc[r] += v * f32::cast_from(weight[(c * cout_g + og0 + r) * k + j]);
                }
                ti += 1;
            }
        }
        #[unroll]
        for r in 0..oc {
            let o = o0 + r;
            // The reference adds the bias to the whole product, then the carried tail.
            let mut full = acc[r];
            if comptime!(flags & 2 != 0) {
                full = f32::cast_from(F::cast_from(full + f32::cast_from(bias[o])));
            }
            if comptime!(flags & 8 != 0) {
                if u < pt {
                    full = f32::cast_from(F::cast_from(full) + tail[(b * cout + o) * pt + u]);
                }
            }
            if u < t * stride {
                let at = (b * cout + o) * t * stride + u;
                y[at] = F::cast_from(full);
                if comptime!(flags & 16 != 0) {
                    ya[at] = F::cast_from(elu_f32(f32::cast_from(F::cast_from(full))));
                }
            } else if comptime!(flags & 8 != 0) {
                let mut rest = full;
                if comptime!(flags & 2 != 0) {
                    rest = f32::cast_from(F::cast_from(full) - bias[o]);
                }
                next[(b * cout + o) * pt + u - t * stride] = F::cast_from(rest);
            }
        }
    }

    /// Output channels a unit computes: the largest of 8, 4, 2, 1 dividing a group's channels.
    fn block(cout_per_group: usize) -> usize {
        [8, 4, 2, 1].into_iter().find(|b| cout_per_group % b == 0).unwrap_or(1)
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn launch_conv(
        x: CubeTensor,
        hist: CubeTensor,
        weight: CubeTensor,
        bias: CubeTensor,
        res: CubeTensor,
        stride: u32,
        dilation: u32,
        groups: u32,
        first: u32,
        flags: u32,
    ) -> (CubeTensor, CubeTensor, CubeTensor) {
        let x = into_contiguous(x);
        let hist = into_contiguous(hist);
        let weight = into_contiguous(weight);
        let bias = into_contiguous(bias);
        let res = into_contiguous(res);
        let client = x.client.clone();
        let [b, cin, t] = [x.meta.shape()[0], x.meta.shape()[1], x.meta.shape()[2]];
        let [cout, _, k] = [weight.meta.shape()[0], weight.meta.shape()[1], weight.meta.shape()[2]];
        let h = (k - 1) * dilation as usize + 1 - stride as usize;
        let tout = t / stride as usize;
        let y = empty_device_dtype(client.clone(), x.device.clone(), Shape::new([b, cout, tout]), x.dtype);
        let ya_shape = if flags & 16 != 0 { [b, cout, tout] } else { [1, 1, 1] };
        let ya = empty_device_dtype(client.clone(), x.device.clone(), Shape::new(ya_shape), x.dtype);
        let next_shape = if flags & 8 != 0 { [b, cin, h] } else { [1, 1, 1] };
        let next = empty_device_dtype(client.clone(), x.device.clone(), Shape::new(next_shape), x.dtype);
        let hist_tiles = if flags & 8 != 0 { (cin * h).div_ceil(UNITS) } else { 0 };
        let dtype = dtype_to_storage_type(x.dtype);
        if tout < UNITS / 2 {
            // Few positions: one unit per output value.
            let tiles = (cout * tout).div_ceil(UNITS);
            conv_step_by_channel::launch(
                &client,
                CubeCount::Static((tiles + hist_tiles) as u32, 1, b as u32),
                CubeDim::new_1d(UNITS as u32),
                x.clone().into_buffer_arg(),
                hist.into_buffer_arg(),
                weight.into_buffer_arg(),
                bias.into_buffer_arg(),
                res.into_buffer_arg(),
                y.clone().into_buffer_arg(),
                ya.clone().into_buffer_arg(),
                next.clone().into_buffer_arg(),
                cin as u32,
                cout as u32,
                t as u32,
                k as u32,
                stride,
                dilation,
                groups,
                first,
                tiles as u32,
                flags,
                dtype,
            );
            return (y, ya, next);
        }
        let oc = block(cout / groups as usize);
        let n = b * (cout / oc) * tout + if flags & 8 != 0 { b * cin * h } else { 0 };
        conv_step::launch(
            &client,
            CubeCount::Static(n.div_ceil(FLAT_UNITS) as u32, 1, 1),
            CubeDim::new_1d(FLAT_UNITS as u32),
            x.clone().into_buffer_arg(),
            hist.into_buffer_arg(),
            weight.into_buffer_arg(),
            bias.into_buffer_arg(),
            res.into_buffer_arg(),
            y.clone().into_buffer_arg(),
            ya.clone().into_buffer_arg(),
            next.clone().into_buffer_arg(),
            b as u32,
            cin as u32,
            cout as u32,
            t as u32,
            k as u32,
            stride,
            dilation,
            groups,
            first,
            flags,
            oc,
            dtype,
        );
        (y, ya, next)
    }

    pub(super) fn launch_tr(
        x: CubeTensor,
        tail: CubeTensor,
        weight: CubeTensor,
        bias: CubeTensor,
        stride: u32,
        groups: u32,
        flags: u32,
    ) -> (CubeTensor, CubeTensor, CubeTensor) {
        let x = into_contiguous(x);
        let tail = into_contiguous(tail);
        let weight = into_contiguous(weight);
        let bias = into_contiguous(bias);
        let client = x.client.clone();
        let [b, cin, t] = [x.meta.shape()[0], x.meta.shape()[1], x.meta.shape()[2]];
        let [_, cout_g, k] = [weight.meta.shape()[0], weight.meta.shape()[1], weight.meta.shape()[2]];
        let cout = cout_g * groups as usize;
        let pt = k - stride as usize;
        let y =
            empty_device_dtype(client.clone(), x.device.clone(), Shape::new([b, cout, t * stride as usize]), x.dtype);
        let ya_shape = if flags & 16 != 0 { [b, cout, t * stride as usize] } else { [1, 1, 1] };
        let ya = empty_device_dtype(client.clone(), x.device.clone(), Shape::new(ya_shape), x.dtype);
        let next_shape = if flags & 8 != 0 { [b, cout, pt] } else { [1, 1, 1] };
        let next = empty_device_dtype(client.clone(), x.device.clone(), Shape::new(next_shape), x.dtype);
        let oc = block(cout_g);
        let n = b * (cout / oc) * (t * stride as usize + pt);
        conv_tr_step::launch(
            &client,
            CubeCount::Static(n.div_ceil(UNITS) as u32, 1, 1),
            CubeDim::new_1d(UNITS as u32),
            x.clone().into_buffer_arg(),
            tail.into_buffer_arg(),
            weight.into_buffer_arg(),
            bias.into_buffer_arg(),
            y.clone().into_buffer_arg(),
            ya.clone().into_buffer_arg(),
            next.clone().into_buffer_arg(),
            b as u32,
            cin as u32,
            cout as u32,
            t as u32,
            k as u32,
            stride,
            groups,
            flags,
            oc,
            dtype_to_storage_type(x.dtype),
        );
        (y, ya, next)
    }
}
