use std::time::Instant;
use burn::prelude::*;
use burn::tensor::DType;
use kokichi::backend::{self, BackendKind, Precision};
use kokichi::kernels::{matvec, embed};

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
    for (k, n) in [(256usize, 768usize), (256, 256), (1024, 1024), (128, 128)] {
        let x = backend::floats(vec![0.5; k], [1, 1, k], &device, DType::F32);
        let w = backend::floats((0..k * n).map(|i| (i % 7) as f32 * 0.1).collect(), [k, n], &device, DType::F32);
        let tp = time(&device, 200, || drop(matvec::partials(matvec::Input::Rows(x.clone()), w.clone())));
        let tr = time(&device, 200, || drop(matvec::reference(x.clone(), w.clone())));
        println!("{k}x{n}: partials {tp:.1} µs, burn linear {tr:.1} µs");
    }
    let table = backend::floats(vec![0.5; 300 * 256], [300, 256], &device, DType::F32);
    let idx = backend::ints(vec![3; 13], [1, 13], &device);
    let tg = time(&device, 400, || drop(embed::gather_add(table.clone(), &idx, embed::Column { offset: 0, stride: 13 }, 1, None)));
    println!("gather 1x256: {tg:.1} µs");
}
