use burn::prelude::*;
use burn::tensor::DType;
use kokichi::backend::{self, BackendKind, Precision};
use kokichi::kernels::{matvec, residual, attention};

fn main() {
    let device = backend::device(BackendKind::Wgpu, Precision::F32).unwrap();
    let x = backend::floats(vec![0.5; 2 * 64], [1, 2, 64], &device, DType::F32);
    let w = backend::floats((0..64 * 96).map(|i| (i % 7) as f32 * 0.1).collect(), [64, 96], &device, DType::F32);
    let which = std::env::args().nth(1).unwrap_or_default();
    if which == "matvec" || which.is_empty() {
        let p = matvec::partials(matvec::Input::Rows(x.clone()), w.clone());
        println!("matvec {:?}", backend::read_floats(p.clone()).map(|v| v[..4].to_vec()));
    }
    if which == "residual" || which.is_empty() {
        let p = backend::floats(vec![0.25; 2 * 64], [1, 2, 64], &device, DType::F32);
        let norm = residual::NormParams { weight: backend::floats(vec![1.0; 64], [64], &device, DType::F32), bias: None, eps: 1e-5, rms: true };
        let (xo, h) = residual::residual_norm(x.clone().reshape([2, 64]), Some(p), None, Some(&norm), DType::F32);
        println!("residual {:?} {:?}", backend::read_floats(xo).map(|v| v[..4].to_vec()), h.map(|h| backend::read_floats(h).map(|v| v[..4].to_vec())));
    }
    if which == "attention" || which.is_empty() {
        let qkv = backend::floats(vec![0.1; 1 * 1 * 3 * 64], [1, 1, 3 * 64], &device, DType::F32);
        let k = Tensor::<4>::zeros([1, 2, 8, 32], (&device, DType::F32));
        let v = Tensor::<4>::zeros([1, 2, 8, 32], (&device, DType::F32));
        let out = Tensor::<2>::zeros([1, 64], (&device, DType::F32));
        let (o, _, _) = attention::attend(qkv, 0, 1, k, v, None, attention::Ring { written: 0, capacity: 8, context: None }, out);
        println!("attention {:?}", backend::read_floats(o).map(|v| v[..4].to_vec()));
    }
}
