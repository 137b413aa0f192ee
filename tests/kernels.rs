//! The custom kernels of `kernels/` against their plain-Burn references (and the references
//! against a host computation in f64), on every test backend. On wgpu the kernel must actually
//! be taken (`uses_kernel`); on cpu and under autodiff the reference must be.

mod common;

use burn::prelude::*;
use burn::tensor::DType;
use common::*;
use kokichi::backend::{self, BackendKind};
use kokichi::kernels::matvec;
use kokichi::kernels::rms_norm::{reference, rms_norm, uses_kernel};

/// Deterministic values with a spread of magnitudes (and a zero row when `zero_row`).
fn values(n: usize, seed: u32, c: usize, zero_row: bool) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..n)
        .map(|i| {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let u = (s >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0;
            let scale = [0.1, 1.0, 7.0][i % 3];
            if zero_row && i < c { 0.0 } else { u * scale }
        })
        .collect()
}

/// RMSNorm on the host in f64.
fn host(x: &[f32], alpha: &[f32], eps: f64) -> Vec<f32> {
    let c = alpha.len();
    x.chunks(c)
        .flat_map(|row| {
            let ms = row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / c as f64;
            let inv = 1.0 / (ms + eps).sqrt();
            row.iter().zip(alpha).map(move |(&v, &a)| (v as f64 * a as f64 * inv) as f32)
        })
        .collect()
}

/// `|got - want| <= rel * (1 + |want|)` everywhere.
fn assert_rel(what: &str, got: &[f32], want: &[f32], rel: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= rel * (1.0 + w.abs()), "{what}: at {i} got {g}, want {w}");
    }
}

fn check<const D: usize>(kind: BackendKind, device: &Device, shape: [usize; D], dtype: DType, eps: f64) {
    let c = shape[D - 1];
    let n: usize = shape.iter().product();
    let xs = values(n, n as u32, c, n > c); // a zero row (eps alone) when there are several
    let alphas = values(c, 7, c, false);
    let x = backend::floats(xs.clone(), shape, device, dtype);
    let alpha = backend::floats(alphas.clone(), [c], device, dtype);
    let what = format!("{kind} {shape:?} {dtype:?} eps {eps:e}");
    assert_eq!(uses_kernel(&x, &alpha), kind == BackendKind::Wgpu, "{what}: kernel taken");

    let got = rms_norm(x.clone(), alpha.clone(), eps);
    assert_eq!(got.dtype(), dtype, "{what}: output dtype");
    assert_eq!(got.dims(), shape, "{what}: output shape");
    let got = floats(got);
    let want = floats(reference(x.clone(), alpha.clone(), eps));
    let (rel, host_rel) = if dtype == DType::F16 { (1e-3, 2e-3) } else { (1e-5, 1e-5) };
    assert_rel(&format!("{what}: kernel vs reference"), &got, &want, rel);
    // The host sees the inputs as stored (f16-rounded when f16).
    let want = host(&floats(x), &floats(alpha), eps);
    assert_rel(&format!("{what}: kernel vs host"), &got, &want, host_rel);
}

#[test]
fn rms_norm_matches_reference() {
    for (kind, device) in devices() {
        for eps in [1e-8, 1e-5] {
            check(kind, &device, [1, 1, 16], DType::F32, eps);
            check(kind, &device, [2, 3, 100], DType::F32, eps);
        }
        check(kind, &device, [1, 2, 4096], DType::F32, 1e-8);
        check(kind, &device, [2, 5, 1000], DType::F32, 1e-8);
        check(kind, &device, [3, 7], DType::F32, 1e-5);
        check(kind, &device, [2, 1, 3, 24], DType::F32, 1e-5);
        if device.supports_dtype(DType::F16) {
            check(kind, &device, [2, 3, 100], DType::F16, 1e-5);
            check(kind, &device, [1, 2, 4096], DType::F16, 1e-8);
        } else {
            eprintln!("{kind}: no f16 on this device, f16 cases skipped");
        }
    }
}

/// A transposed (non-contiguous) input, f32 alpha with f16 input, and more rows than one axis
/// of cubes holds.
#[test]
fn rms_norm_layouts_and_mixed_dtypes() {
    for (kind, device) in devices() {
        let xs = values(2 * 48 * 5, 3, 0, false);
        let x = backend::floats(xs, [2, 48, 5], &device, DType::F32).swap_dims(1, 2);
        let alpha = backend::floats(values(48, 9, 0, false), [48], &device, DType::F32);
        let got = floats(rms_norm(x.clone(), alpha.clone(), 1e-5));
        let want = floats(reference(x, alpha, 1e-5));
        assert_rel(&format!("{kind} transposed"), &got, &want, 1e-5);

        if device.supports_dtype(DType::F16) {
            let x = backend::floats(values(3 * 40, 4, 0, false), [1, 3, 40], &device, DType::F16);
            let alpha = backend::floats(values(40, 5, 0, false), [40], &device, DType::F32);
            assert_eq!(uses_kernel(&x, &alpha), kind == BackendKind::Wgpu);
            let got = rms_norm(x.clone(), alpha.clone(), 1e-5);
            assert_eq!(got.dtype(), DType::F16);
            assert_rel(&format!("{kind} f16 x, f32 alpha"), &floats(got), &floats(reference(x, alpha, 1e-5)), 1e-3);
        }

        let rows = 70_000; // above the 65 535 cubes of one axis on most GPUs
        let x = backend::floats(values(rows * 4, 6, 4, true), [rows, 4], &device, DType::F32);
        let alpha = backend::floats(vec![1.0, -2.0, 0.5, 3.0], [4], &device, DType::F32);
        let got = floats(rms_norm(x.clone(), alpha.clone(), 1e-8));
        assert_rel(&format!("{kind} {rows} rows"), &got, &floats(reference(x, alpha, 1e-8)), 1e-5);
    }
}

/// Under autodiff the reference runs, so gradients reach both `x` and `alpha`.
#[test]
fn rms_norm_autodiff_takes_reference_with_gradients() {
    for (kind, device) in devices() {
        let device = device.autodiff();
        let x = backend::floats(values(2 * 3 * 8, 1, 0, false), [2, 3, 8], &device, DType::F32).require_grad();
        let alpha = backend::floats(values(8, 2, 0, false), [8], &device, DType::F32).require_grad();
        assert!(!uses_kernel(&x, &alpha), "{kind}: autodiff must take the reference");
        let grads = rms_norm(x.clone(), alpha.clone(), 1e-5).sum().backward();
        let gx = x.grad(&grads).map(floats);
        let ga = alpha.grad(&grads).map(floats);
        for (name, g) in [("x", gx), ("alpha", ga)] {
            let g = g.unwrap_or_else(|| panic!("{kind}: no gradient for {name}"));
            assert!(g.iter().all(|v| v.is_finite()) && g.iter().any(|v| *v != 0.0), "{kind}: grad {name}");
        }
    }
}

/// `x W` on the host in f64, for `x` `[rows, k]` and `w` `[k, n]`.
fn host_matvec(x: &[f32], w: &[f32], k: usize, n: usize) -> Vec<f32> {
    x.chunks(k)
        .flat_map(|row| {
            (0..n)
                .map(move |j| row.iter().enumerate().map(|(i, &v)| v as f64 * w[i * n + j] as f64).sum::<f64>() as f32)
        })
        .collect()
}

fn check_matvec(kind: BackendKind, device: &Device, b: usize, t: usize, k: usize, n: usize, dtype: DType) {
    let what = format!("{kind} [{b}, {t}, {k}] x [{k}, {n}] {dtype:?}");
    let x = backend::floats(values(b * t * k, (k + n) as u32, 0, false), [b, t, k], device, dtype);
    // Weights of a trained layer's size (|w| ~ 1/sqrt(k)), so sums stay O(1) in f16.
    let ws: Vec<f32> = values(k * n, 11, 0, false).iter().map(|v| v / (k as f32).sqrt()).collect();
    let w = backend::floats(ws, [k, n], device, dtype);
    assert_eq!(matvec::can_launch(&x, &w), kind == BackendKind::Wgpu, "{what}: kernel taken");
    let got = matvec::launch(x.clone(), w.clone());
    assert_eq!(got.dtype(), dtype, "{what}: output dtype");
    assert_eq!(got.dims(), [b, t, n], "{what}: output shape");
    let got = floats(got);
    let rel = if dtype == DType::F16 { 4e-3 } else { 2e-5 };
    assert_rel(&format!("{what}: kernel vs reference"), &got, &floats(matvec::reference(x.clone(), w.clone())), rel);
    // The kernel adds in f32, so it stays close to the host's f64 sums in f16 too; the flex CPU
    // backend's f16 product (the reference there) adds in f16 and strays 0.1 at K = 4096.
    if dtype == DType::F32 || kind == BackendKind::Wgpu {
        assert_rel(&format!("{what}: kernel vs host"), &got, &host_matvec(&floats(x), &floats(w), k, n), rel);
    }
}

/// The matrix-vector kernel against Burn's `linear` and the host: sizes below, at and across its
/// 256-column tiles and 256-row chunks, one to twelve rows, and moshiko's widths.
#[test]
fn matvec_matches_reference() {
    for (kind, device) in devices() {
        for (k, n) in [(1, 1), (16, 8), (64, 64), (256, 64), (257, 65), (300, 70), (1000, 33), (33, 1000)] {
            check_matvec(kind, &device, 1, 1, k, n, DType::F32);
        }
        check_matvec(kind, &device, 1, 2, 700, 130, DType::F32);
        check_matvec(kind, &device, 2, 2, 513, 200, DType::F32);
        check_matvec(kind, &device, 3, 1, 100, 3, DType::F32);
        check_matvec(kind, &device, 6, 2, 130, 96, DType::F32);
        check_matvec(kind, &device, 1, 1, 4096, 1024, DType::F32);
        check_matvec(kind, &device, 1, 1, 1024, 4096, DType::F32);
        if device.supports_dtype(DType::F16) {
            check_matvec(kind, &device, 1, 1, 4096, 300, DType::F16);
            check_matvec(kind, &device, 2, 1, 300, 257, DType::F16);
        } else {
            eprintln!("{kind}: no f16 on this device, f16 cases skipped");
        }
    }
}

/// Past the kernel's rows, for a transposed (strided) `x`, and for `x` and `W` in different
/// dtypes: the right path is taken and the product is still `linear`'s.
#[test]
fn matvec_rows_layouts_and_mixed_dtypes() {
    for (kind, device) in devices() {
        let max = matvec::MAX_ROWS;
        let w = backend::floats(values(40 * 24, 2, 0, false), [40, 24], &device, DType::F32);
        let x = backend::floats(values((max + 1) * 40, 3, 0, false), [1, max + 1, 40], &device, DType::F32);
        assert!(!matvec::can_launch(&x, &w), "{kind}: {} rows must take the reference", max + 1);
        let xm = x.clone().narrow(1, 0, max);
        assert_eq!(matvec::can_launch(&xm, &w), kind == BackendKind::Wgpu, "{kind}: {max} rows");
        let want = floats(matvec::reference(x.clone(), w.clone()));
        assert_rel(&format!("{kind} {} rows", max + 1), &floats(matvec::launch(x, w.clone())), &want, 1e-5);
        assert_rel(
            &format!("{kind} first {max} rows"),
            &floats(matvec::launch(xm, w.clone())),
            &want[..max * 24],
            1e-5,
        );

        // [1, 3, 40] seen through a transpose of [1, 40, 3].
        let xt = backend::floats(values(3 * 40, 4, 0, false), [1, 40, 3], &device, DType::F32).swap_dims(1, 2);
        assert_eq!(matvec::can_launch(&xt, &w), kind == BackendKind::Wgpu, "{kind}: strided x");
        let got = floats(matvec::launch(xt.clone(), w.clone()));
        assert_rel(&format!("{kind} strided x"), &got, &floats(matvec::reference(xt, w.clone())), 1e-5);

        if device.supports_dtype(DType::F16) {
            let xh = backend::floats(values(2 * 40, 5, 0, false), [2, 1, 40], &device, DType::F16);
            assert!(!matvec::can_launch(&xh, &w), "{kind}: f16 x with f32 W must take the reference");
        }
    }
}

/// Under autodiff the reference runs, so gradients reach both `x` and `W`.
#[test]
fn matvec_autodiff_takes_reference_with_gradients() {
    for (kind, device) in devices() {
        let device = device.autodiff();
        let x = backend::floats(values(16, 1, 0, false), [1, 1, 16], &device, DType::F32).require_grad();
        let w = backend::floats(values(16 * 8, 2, 0, false), [16, 8], &device, DType::F32).require_grad();
        assert!(!matvec::can_launch(&x, &w), "{kind}: autodiff must take the reference");
        let grads = matvec::launch(x.clone(), w.clone()).sum().backward();
        for (name, g) in [("x", x.grad(&grads).map(floats)), ("w", w.grad(&grads).map(floats))] {
            let g = g.unwrap_or_else(|| panic!("{kind}: no gradient for {name}"));
            assert!(g.iter().all(|v| v.is_finite()) && g.iter().any(|v| *v != 0.0), "{kind}: grad {name}");
        }
    }
}

/// What the models call: the kernel for weights of at least `MIN_WEIGHTS` values on wgpu unless
/// turned off, the reference for smaller ones; the same product either way.
#[test]
fn matvec_size_threshold_and_switch() {
    for (kind, device) in devices() {
        let (k, n) = (2048, matvec::MIN_WEIGHTS / 2048);
        let x = backend::floats(values(k, 8, 0, false), [1, 1, k], &device, DType::F32);
        let w =
            backend::floats(values(k * n, 9, 0, false).iter().map(|v| v / 45.0).collect(), [k, n], &device, DType::F32);
        let small = w.clone().narrow(1, 0, n - 1);
        assert_eq!(matvec::uses_kernel(&x, &w), kind == BackendKind::Wgpu, "{kind}: {k} x {n} weights");
        assert!(!matvec::uses_kernel(&x, &small), "{kind}: {k} x {} weights take the reference", n - 1);
        let want = floats(matvec::reference(x.clone(), w.clone()));
        assert_rel(
            &format!("{kind} linear at the threshold"),
            &floats(matvec::linear(x.clone(), w.clone())),
            &want,
            2e-5,
        );
        // No other test reads the switch, so turning it off here races with nothing.
        matvec::set_enabled(false);
        let off = matvec::uses_kernel(&x, &w);
        matvec::set_enabled(true);
        assert!(!off, "{kind}: switched off, linear takes the reference");
    }
}
