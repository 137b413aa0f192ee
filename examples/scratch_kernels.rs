use std::time::Instant;
use burn::prelude::*;
use burn::tensor::DType;
use kokichi::backend::{self, BackendKind, Precision};
use kokichi::kernels::conv::{self, ConvShape};
use kokichi::kernels::matvec;

fn time(device: &Device, n: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..3 { f(); }
    device.sync().unwrap();
    let t = Instant::now();
    for _ in 0..n { f(); }
    device.sync().unwrap();
    t.elapsed().as_secs_f64() * 1e6 / n as f64
}

fn main() {
    let device = backend::device(BackendKind::Wgpu, Precision::F32).unwrap();
    for (cin, cout, k, t, stride, elu) in [(16usize, 8usize, 3usize, 1920usize, 1usize, true), (16, 8, 3, 1920, 1, false), (16, 32, 8, 1920, 4, false)] {
        let x = backend::floats((0..cin * t).map(|i| (i as f32 * 0.01).sin()).collect(), [1, cin, t], &device, DType::F32);
        let w = backend::floats((0..cout * cin * k).map(|i| (i % 7) as f32 * 0.1).collect(), [cout, cin, k], &device, DType::F32);
        let h = k - stride;
        let hist = (h > 0).then(|| Tensor::<3>::zeros([1, cin, h], (&device, DType::F32)));
        let shape = ConvShape { stride, dilation: 1, groups: 1, elu, elu_out: false };
        let tk = time(&device, 50, || drop(conv::conv1d(x.clone(), hist.clone(), w.clone(), None, None, shape, &[false])));
        println!("conv {cin}->{cout} k{k} s{stride} T{t} elu {elu}: kernel {tk:.0} µs");
    }
    for (k, n) in [(256usize, 768usize), (1024, 1024)] {
        let x = backend::floats(vec![0.5; k], [1, 1, k], &device, DType::F32);
        let w = backend::floats((0..k * n).map(|i| (i % 7) as f32 * 0.1).collect(), [k, n], &device, DType::F32);
        let tp = time(&device, 200, || drop(matvec::partials(matvec::Input::Rows(x.clone()), w.clone())));
        let tr = time(&device, 200, || drop(matvec::reference(x.clone(), w.clone())));
        println!("{k}x{n}: partials {tp:.1} µs, burn linear {tr:.1} µs");
    }
}
