//! The one-position step kernels of `kernels/` (products into partials, residual + norm,
//! attention with the ring write, token picking, embedding gathers, streaming convolutions, the
//! split RVQ) against their plain-Burn references, on every test backend: on wgpu the kernel must
//! be taken (`uses_kernel`/`launches`), on cpu the reference, and the two agree.

mod common;

use burn::prelude::*;
use burn::tensor::DType;
use common::*;
use kokichi::backend::{self, BackendKind};
use kokichi::kernels::act::Act;
use kokichi::kernels::attention::{self, Ring, Rope, Target};
use kokichi::kernels::conv::{self, ConvShape};
use kokichi::kernels::embed::Column;
use kokichi::kernels::matvec::{self, Input, Weight};
use kokichi::kernels::pick::{self, Draw};
use kokichi::kernels::q8::{self, Q8};
use kokichi::kernels::residual::{self, Base, NormParams, Update};
use kokichi::kernels::rvq::{self, Quantizer};

/// Deterministic values in (-scale, scale).
fn values(n: usize, seed: u32, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(7);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            ((s >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

fn t2(device: &Device, shape: [usize; 2], seed: u32, scale: f32, dtype: DType) -> Tensor<2> {
    backend::floats(values(shape.iter().product(), seed, scale), shape, device, dtype)
}

fn t3(device: &Device, shape: [usize; 3], seed: u32, scale: f32, dtype: DType) -> Tensor<3> {
    backend::floats(values(shape.iter().product(), seed, scale), shape, device, dtype)
}

fn floats<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    backend::read_floats(t).unwrap()
}

fn ints<const D: usize>(t: Tensor<D, Int>) -> Vec<i64> {
    backend::read_ints(t).unwrap()
}

/// `|got - want| <= tol * (1 + |want|)` everywhere.
fn close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol * (1.0 + w.abs()), "{what}: at {i} got {g}, want {w}");
    }
}

fn dtypes(device: &Device) -> Vec<DType> {
    if device.supports_dtype(DType::F16) { vec![DType::F32, DType::F16] } else { vec![DType::F32] }
}

fn tol(dtype: DType) -> f32 {
    if dtype == DType::F16 { 1e-2 } else { 2e-5 }
}

#[test]
fn products_into_partials_match_the_reference() {
    for (kind, device) in devices() {
        for dtype in dtypes(&device) {
            for (rows, k, n) in [(1, 256, 768), (3, 300, 70), (9, 513, 132), (17, 64, 260)] {
                let what = format!("{kind} {dtype:?} rows {rows} [{k}, {n}]");
                let x = t3(&device, [1, rows, k], 1, 1.0, dtype);
                let w = t2(&device, [k, n], 2, 1.0 / (k as f32).sqrt(), dtype);
                let input = Input::Rows(x);
                assert_eq!(
                    matvec::launches(&input, &Weight::Float(w.clone())),
                    kind == BackendKind::Wgpu,
                    "{what}: kernel taken"
                );
                let got = matvec::sum_parts(matvec::partials(input.clone(), w.clone()), DType::F32);
                let want = matvec::sum_parts(matvec::partials_reference(input, w), DType::F32);
                close(&what, &floats(got), &floats(want), tol(dtype));
            }
            // Hidden inputs from the partials of a first product: gated (SiLU, GELU) and GELU.
            for (rows, h, n) in [(1, 170, 128), (4, 704, 256)] {
                let p = t3(&device, [3, rows, 2 * h], 3, 0.7, DType::F32);
                let w = t2(&device, [h, n], 4, 1.0 / (h as f32).sqrt(), dtype);
                for input in [Input::Gated(p.clone(), Act::Silu), Input::Gated(p.clone(), Act::Gelu)] {
                    let what = format!("{kind} {dtype:?} {input:?}");
                    assert_eq!(
                        matvec::launches(&input, &Weight::Float(w.clone())),
                        kind == BackendKind::Wgpu,
                        "{what}"
                    );
                    let got = matvec::sum_parts(matvec::partials(input.clone(), w.clone()), DType::F32);
                    let want = matvec::sum_parts(matvec::partials_reference(input, w.clone()), DType::F32);
                    close(&format!("{kind} {dtype:?} gated rows {rows}"), &floats(got), &floats(want), tol(dtype));
                }
                let p = t3(&device, [2, rows, h], 5, 1.5, DType::F32);
                let input = Input::Gelu(p);
                let got = matvec::sum_parts(matvec::partials(input.clone(), w.clone()), DType::F32);
                let want = matvec::sum_parts(matvec::partials_reference(input, w), DType::F32);
                close(&format!("{kind} {dtype:?} gelu rows {rows}"), &floats(got), &floats(want), tol(dtype));
            }
        }
    }
}

/// An 8-bit weight of host values.
fn q8_weight(device: &Device, k: usize, n: usize, seed: u32, scale: f32) -> Q8 {
    let (values, scales) = q8::quantize(&values(k * n, seed, scale), k, n).unwrap();
    Q8::upload(values, scales, k, n, device).unwrap()
}

#[test]
fn products_with_8_bit_weights_match_the_reference() {
    for (kind, device) in devices() {
        for dtype in dtypes(&device) {
            for (rows, k, n) in [(1, 256, 768), (3, 300, 72), (9, 520, 132)] {
                let what = format!("{kind} {dtype:?} q8 rows {rows} [{k}, {n}]");
                let w = Weight::Q8(q8_weight(&device, k, n, 6, 1.0 / (k as f32).sqrt()), dtype);
                let input = Input::Rows(t3(&device, [1, rows, k], 7, 1.0, dtype));
                assert_eq!(matvec::launches(&input, &w), kind == BackendKind::Wgpu, "{what}: kernel taken");
                let got = matvec::sum_parts(matvec::partials(input.clone(), w.clone()), DType::F32);
                let want = matvec::sum_parts(matvec::partials_reference(input, w.clone()), DType::F32);
                close(&what, &floats(got), &floats(want), tol(dtype));
                // A gated hidden input.
                let p = t3(&device, [2, rows, 2 * k], 8, 0.7, DType::F32);
                let input = Input::Gated(p, Act::Silu);
                let got = matvec::sum_parts(matvec::partials(input.clone(), w.clone()), DType::F32);
                let want = matvec::sum_parts(matvec::partials_reference(input, w), DType::F32);
                close(&format!("{what} gated"), &floats(got), &floats(want), tol(dtype));
            }
        }
    }
}

fn norm(device: &Device, d: usize, rms: bool, dtype: DType) -> NormParams {
    NormParams {
        weight: backend::floats(values(d, 11, 0.3).iter().map(|v| v + 1.0).collect(), [d], device, dtype),
        bias: (!rms).then(|| backend::floats(values(d, 12, 0.2), [d], device, dtype)),
        eps: if rms { 1e-8 } else { 1e-5 },
        rms,
    }
}

#[test]
fn residual_and_norm_match_the_reference() {
    for (kind, device) in devices() {
        for dtype in dtypes(&device) {
            for (rows, d) in [(1, 256), (3, 1000), (2, 4096)] {
                for (rms, with_scale, offset) in [(true, false, 0), (false, true, 0), (true, true, 7)] {
                    let what = format!("{kind} {dtype:?} [{rows}, {d}] rms {rms} scale {with_scale} offset {offset}");
                    let x = t2(&device, [rows, d], 21, 2.0, dtype);
                    let p = t3(&device, [3, rows, d + offset + 5], 22, 0.5, DType::F32);
                    let update = Update { partials: p, offset };
                    let scale = with_scale.then(|| backend::floats(values(d, 23, 0.1), [d], &device, dtype));
                    let n = norm(&device, d, rms, dtype);
                    let base = Base::Rows(x);
                    assert_eq!(
                        residual::uses_kernel(&base, Some(&update), scale.as_ref(), Some(&n), dtype),
                        kind == BackendKind::Wgpu,
                        "{what}: kernel taken"
                    );
                    let (xk, hk) =
                        residual::residual_norm(base.clone(), Some(update.clone()), scale.clone(), Some(&n), dtype);
                    let (xr, hr) = residual::reference(base, Some(update), scale, Some(&n), dtype);
                    close(&format!("{what}: x"), &floats(xk), &floats(xr), tol(dtype));
                    close(&format!("{what}: h"), &floats(hk.unwrap()), &floats(hr.unwrap()), 5.0 * tol(dtype));
                }
            }
            // Gathered rows (a "no input" token among them), plain and without a norm.
            let table = t2(&device, [40, 96], 24, 1.0, dtype);
            let idx = backend::ints(vec![3, 17, -1, 39, 0, 5, 12, 12, 30], [3, 3], &device);
            let base = Base::Gather {
                table: Weight::Float(table),
                idx,
                column: Column { offset: 0, stride: 3 },
                count: 3,
                rows: 3,
            };
            let n = norm(&device, 96, true, dtype);
            let (xk, hk) = residual::residual_norm(base.clone(), None, None, Some(&n), dtype);
            let (xr, hr) = residual::reference(base.clone(), None, None, Some(&n), dtype);
            close(&format!("{kind} {dtype:?} gathered x"), &floats(xk), &floats(xr), tol(dtype));
            close(
                &format!("{kind} {dtype:?} gathered h"),
                &floats(hk.unwrap()),
                &floats(hr.unwrap()),
                5.0 * tol(dtype),
            );
            // The same from an 8-bit table.
            let qt = Weight::Q8(q8_weight(&device, 40, 96, 25, 1.0), dtype);
            let idx8 = backend::ints(vec![3, 17, -1, 39, 0, 5, 12, 12, 30], [3, 3], &device);
            let base8 =
                Base::Gather { table: qt, idx: idx8, column: Column { offset: 0, stride: 3 }, count: 3, rows: 3 };
            assert_eq!(
                residual::uses_kernel(&base8, None, None, Some(&n), dtype),
                kind == BackendKind::Wgpu,
                "{kind}: q8 gather"
            );
            let (xk, hk) = residual::residual_norm(base8.clone(), None, None, Some(&n), dtype);
            let (xr, hr) = residual::reference(base8, None, None, Some(&n), dtype);
            close(&format!("{kind} {dtype:?} gathered 8-bit x"), &floats(xk), &floats(xr), tol(dtype));
            close(
                &format!("{kind} {dtype:?} gathered 8-bit h"),
                &floats(hk.unwrap()),
                &floats(hr.unwrap()),
                5.0 * tol(dtype),
            );
            let (xk, hk) = residual::residual_norm(base.clone(), None, None, None, dtype);
            assert!(hk.is_none(), "{kind}: no norm, no h");
            close(
                &format!("{kind} {dtype:?} gathered, no norm"),
                &floats(xk),
                &floats(residual::reference(base, None, None, None, dtype).0),
                tol(dtype),
            );
        }
    }
}

/// Two streams at different positions of rings that fill, wrap and look back `context`, some
/// with pinned first positions (a prefix that stays visible past the context).
#[test]
fn attention_steps_match_the_reference() {
    for (kind, device) in devices() {
        for dtype in dtypes(&device) {
            for (heads, hd, cap, context, t, rope_mode, project, pinned) in [
                (2, 32, 8, None, 1, 0, false, 0),
                (4, 64, 10, Some(6), 1, 1, false, 0),
                (2, 64, 12, Some(12), 2, 2, true, 0),
                (8, 32, 5, None, 1, 1, true, 0),
                (4, 64, 10, Some(6), 1, 1, false, 3),
                (2, 64, 12, Some(9), 2, 2, true, 3),
            ] {
                let d = heads * hd;
                let what = format!(
                    "{kind} {dtype:?} heads {heads} x {hd} ring {cap} ctx {context:?} t {t} rope {rope_mode} project {project} pinned {pinned}"
                );
                let rings = |seed: u32| t3(&device, [heads, cap, hd], seed, 1.0, dtype).reshape([1, heads, cap, hd]);
                let (mut kk, mut vk) = ([rings(31), rings(32)], [rings(33), rings(34)]);
                let (mut kr, mut vr) = (kk.clone(), vk.clone());
                let mut written = [0usize, 3];
                let w_out = t2(&device, [d, d], 35, 1.0 / (d as f32).sqrt(), dtype);
                for step in 0..(cap + 4) {
                    let qkv = t3(&device, [2, 2 * t, 3 * d], 40 + step as u32, 1.0, DType::F32);
                    let rope = (rope_mode != 0).then(|| {
                        let cos: Vec<f32> = (0..2 * t * hd / 2).map(|i| ((i + step) as f32 * 0.3).cos()).collect();
                        let sin: Vec<f32> = (0..2 * t * hd / 2).map(|i| ((i + step) as f32 * 0.3).sin()).collect();
                        Rope {
                            cos: backend::floats(cos, [2, t, hd / 2], &device, DType::F32),
                            sin: backend::floats(sin, [2, t, hd / 2], &device, DType::F32),
                            interleave: rope_mode == 1,
                        }
                    });
                    let target = || {
                        if project {
                            Target::Projected {
                                partials: Tensor::zeros([heads, 2 * t, d], (&device, DType::F32)),
                                w: w_out.clone(),
                            }
                        } else {
                            Target::Rows(Tensor::zeros([2 * t, d], (&device, dtype)))
                        }
                    };
                    let (mut out_k, mut out_r) = (target(), target());
                    for s in 0..2 {
                        let ring = Ring { written: written[s], capacity: cap, context, pinned };
                        let take = |t: &Tensor<4>| t.clone();
                        assert_eq!(
                            attention::uses_kernel(&qkv, t, &kk[s], &vk[s], rope.as_ref(), ring, &out_k),
                            kind == BackendKind::Wgpu,
                            "{what}: kernel taken"
                        );
                        let (o, k2, v2) = attention::attend(
                            qkv.clone(),
                            s * t,
                            t,
                            take(&kk[s]),
                            take(&vk[s]),
                            rope.as_ref(),
                            ring,
                            out_k,
                        );
                        (out_k, kk[s], vk[s]) = (o, k2, v2);
                        let (o, k2, v2) = attention::reference(
                            qkv.clone(),
                            s * t,
                            t,
                            take(&kr[s]),
                            take(&vr[s]),
                            rope.as_ref(),
                            ring,
                            out_r,
                        );
                        (out_r, kr[s], vr[s]) = (o, k2, v2);
                        written[s] += t;
                    }
                    let got = matvec::sum_parts(out_k.into_tensor(), DType::F32);
                    let want = matvec::sum_parts(out_r.into_tensor(), DType::F32);
                    close(&format!("{what} step {step}: output"), &floats(got), &floats(want), 5.0 * tol(dtype));
                    for s in 0..2 {
                        close(
                            &format!("{what} step {step}: keys {s}"),
                            &floats(kk[s].clone()),
                            &floats(kr[s].clone()),
                            tol(dtype),
                        );
                        close(
                            &format!("{what} step {step}: values {s}"),
                            &floats(vk[s].clone()),
                            &floats(vr[s].clone()),
                            tol(dtype),
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn picks_match_the_reference() {
    for (kind, device) in devices() {
        for v in [300, 2048] {
            let rows = 3;
            let logits = t3(&device, [2, rows, v], 51, 3.0, DType::F32);
            let draws = vec![
                vec![
                    Draw { inv_temperature: 0.0, top_k: 0, seed: 0, forced: None },
                    Draw { inv_temperature: 1.25, top_k: 25, seed: 7, forced: None },
                    Draw { inv_temperature: 1.0, top_k: 0, seed: 9, forced: Some(11) },
                ],
                vec![
                    Draw { inv_temperature: 2.0, top_k: 1, seed: 3, forced: None },
                    Draw { inv_temperature: 0.5, top_k: 250, seed: 5, forced: None },
                    Draw { inv_temperature: 0.0, top_k: 0, seed: 0, forced: None },
                ],
            ];
            let params = pick::params(&draws, &device);
            let empty = || Tensor::<2, Int>::zeros([2, rows], &device);
            let (mut got, mut want) = (empty(), empty());
            for (i, row) in draws.iter().enumerate() {
                assert_eq!(
                    pick::uses_kernel(&logits, &params, i, &got),
                    kind == BackendKind::Wgpu,
                    "{kind}: kernel taken"
                );
                got = pick::pick(logits.clone(), &params, row, i, got);
                want = pick::reference(logits.clone(), row, i, want);
            }
            assert_eq!(ints(got), ints(want), "{kind} V {v}: tokens");
        }
    }
}

#[test]
fn streaming_convolutions_match_the_reference() {
    for (kind, device) in devices() {
        for dtype in dtypes(&device) {
            // (cin, cout, k, stride, dilation, groups, t, elu, elu_out, residual, replicate)
            for (cin, cout, k, stride, dil, groups, t, elu, elu_out, res, rep) in [
                (1, 16, 7, 1, 1, 1, 480, false, true, false, false),
                (16, 8, 3, 1, 2, 1, 480, true, true, false, false),
                (8, 16, 1, 1, 1, 1, 480, false, true, true, false),
                (16, 32, 8, 4, 1, 1, 480, false, true, false, false),
                (64, 128, 16, 8, 1, 1, 16, false, false, false, false),
                (24, 24, 4, 2, 1, 1, 4, false, false, false, true),
                (12, 18, 3, 1, 1, 3, 96, true, false, true, false),
            ] {
                let what = format!("{kind} {dtype:?} conv {cin}->{cout} k{k} s{stride} d{dil} g{groups} t{t}");
                let shape = ConvShape { stride, dilation: dil, groups, elu, elu_out };
                let w = t3(&device, [cout, cin / groups, k], 71, 1.0 / ((cin / groups * k) as f32).sqrt(), dtype);
                let bias = Some(backend::floats(values(cout, 72, 0.2), [cout], &device, dtype));
                let h = (k - 1) * dil + 1 - stride;
                let mut hist_k = (h > 0).then(|| t3(&device, [2, cin, h], 73, 1.0, dtype));
                let mut hist_r = hist_k.clone();
                // Two chunks: the first replicate-padded for row 0 only, where asked.
                for (chunk, first) in [(0u32, [rep, false]), (1, [false, false])] {
                    let x = t3(&device, [2, cin, t], 74 + chunk, 1.5, dtype);
                    let r = res.then(|| t3(&device, [2, cout, t / stride], 76 + chunk, 1.0, dtype));
                    assert_eq!(
                        conv::uses_conv_kernel(&x, hist_k.as_ref(), &w, r.as_ref(), shape, &first),
                        kind == BackendKind::Wgpu,
                        "{what}: kernel taken"
                    );
                    let got = conv::conv1d(x.clone(), hist_k.take(), w.clone(), bias.clone(), r.clone(), shape, &first);
                    let want = conv::conv1d_reference(x, hist_r.take(), w.clone(), bias.clone(), r, shape, &first);
                    close(&format!("{what} chunk {chunk}: y"), &floats(got.y), &floats(want.y), tol(dtype));
                    assert_eq!(got.activated.is_some(), elu_out, "{what}: activated output");
                    if let (Some(a), Some(b)) = (got.activated, want.activated) {
                        close(&format!("{what} chunk {chunk}: elu(y)"), &floats(a), &floats(b), tol(dtype));
                    }
                    if let (Some(a), Some(b)) = (&got.next, &want.next) {
                        close(
                            &format!("{what} chunk {chunk}: history"),
                            &floats(a.clone()),
                            &floats(b.clone()),
                            tol(dtype),
                        );
                    }
                    hist_k = got.next;
                    hist_r = want.next;
                }
            }
            // (cin, cout, k, stride, groups, t, elu, elu_out)
            for (cin, cout, k, stride, groups, t, elu, elu_out) in [
                (32, 16, 16, 8, 1, 2, true, true),
                (16, 8, 10, 5, 1, 24, false, true),
                (24, 24, 4, 2, 24, 3, false, false),
                (8, 4, 4, 4, 1, 5, true, false),
            ] {
                let what = format!("{kind} {dtype:?} convtr {cin}->{cout} k{k} s{stride} g{groups} t{t}");
                let shape = ConvShape { stride, dilation: 1, groups, elu, elu_out };
                let w = t3(&device, [cin, cout / groups, k], 81, 1.0 / (cin as f32).sqrt(), dtype);
                let bias = Some(backend::floats(values(cout, 82, 0.2), [cout], &device, dtype));
                let pt = k - stride;
                let mut tail_k = (pt > 0).then(|| t3(&device, [2, cout, pt], 83, 1.0, dtype));
                let mut tail_r = tail_k.clone();
                for chunk in 0..2u32 {
                    let x = t3(&device, [2, cin, t], 84 + chunk, 1.5, dtype);
                    assert_eq!(
                        conv::uses_tr_kernel(&x, tail_k.as_ref(), &w, shape),
                        kind == BackendKind::Wgpu,
                        "{what}"
                    );
                    let got = conv::conv_tr1d(x.clone(), tail_k.take(), w.clone(), bias.clone(), shape);
                    let want = conv::conv_tr1d_reference(x, tail_r.take(), w.clone(), bias.clone(), shape);
                    close(&format!("{what} chunk {chunk}: y"), &floats(got.y), &floats(want.y), tol(dtype));
                    if let (Some(a), Some(b)) = (got.activated, want.activated) {
                        close(&format!("{what} chunk {chunk}: elu(y)"), &floats(a), &floats(b), tol(dtype));
                    }
                    if let (Some(a), Some(b)) = (&got.next, &want.next) {
                        close(
                            &format!("{what} chunk {chunk}: tail"),
                            &floats(a.clone()),
                            &floats(b.clone()),
                            tol(dtype),
                        );
                    }
                    tail_k = got.next;
                    tail_r = want.next;
                }
            }
        }
    }
}

#[test]
fn split_rvq_matches_the_reference() {
    for (kind, device) in devices() {
        let (c, d, bins) = (48, 16, 64);
        let quantizer = |levels: usize, seed: u32| Quantizer {
            in_proj: t2(&device, [c, d], seed, 0.3, DType::F32),
            out_proj: t2(&device, [d, c], seed + 1, 0.3, DType::F32),
            books: t2(&device, [levels * bins, d], seed + 2, 1.0, DType::F32),
            levels,
        };
        let (first, rest) = (quantizer(1, 91), quantizer(5, 95));
        let x = t3(&device, [2, c, 3], 99, 2.0, DType::F32);
        for n in [1, 4, 6] {
            let what = format!("{kind} {n} levels");
            assert_eq!(
                rvq::uses_kernel(&device, DType::F32, &first, &rest, n, bins),
                kind == BackendKind::Wgpu,
                "{what}"
            );
            let codes = rvq::encode(x.clone(), &first, &rest, n, bins);
            let want = rvq::encode_reference(x.clone(), &first, &rest, n, bins);
            assert_eq!(codes.dims(), [2, n, 3], "{what}: shape");
            assert_eq!(ints(codes.clone()), ints(want), "{what}: codes");
            let got = rvq::decode(codes.clone(), &first, &rest, bins);
            close(
                &format!("{what}: decoded"),
                &floats(got),
                &floats(rvq::decode_reference(codes, &first, &rest, bins)),
                2e-5,
            );
        }
    }
}
