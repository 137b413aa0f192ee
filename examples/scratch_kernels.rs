use std::time::Instant;
use burn::prelude::*;
use burn::tensor::DType;
use kokichi::backend::{self, BackendKind, Precision};
use kokichi::kernels::matvec;

fn time(device: &Device, n: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..5 { f(); }
    device.sync().unwrap();
    let t = Instant::now();
    for _ in 0..n { f(); }
    device.sync().unwrap();
    t.elapsed().as_secs_f64() * 1e6 / n as f64
}

fn main() {
    let device = backend::device(BackendKind::Wgpu, Precision::F32).unwrap();
    let mut line = String::new();
    for (k, n) in [(256usize, 768usize), (256, 1408), (704, 256), (128, 1024), (1024, 1024)] {
        let x = backend::floats(vec![0.5; k], [1, 1, k], &device, DType::F32);
        let w = backend::floats((0..k * n).map(|i| (i % 7) as f32 * 0.1).collect(), [k, n], &device, DType::F32);
        let tp = time(&device, 200, || drop(matvec::partials(matvec::Input::Rows(x.clone()), w.clone())));
        line += &format!(" {k}x{n}:{tp:.0}");
    }
    println!("{line}");
}
