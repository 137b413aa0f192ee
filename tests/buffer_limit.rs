//! A tensor larger than the adapter's largest buffer is refused at load, by name, instead of
//! failing at the first read-back with an allocation error that names nothing (lavapipe
//! allocates at most 128 MiB in one buffer; moshiko's f32 text table is 524 MB).

mod common;

use burn::tensor::DType;
use common::*;
use kokichi::backend::{self, BackendKind};
use kokichi::lm::{LmConfig, LmModel};

#[test]
fn the_largest_tensor_fits_and_one_more_value_does_not() {
    for (kind, device) in devices() {
        let Some(max) = backend::max_tensor_bytes(&device) else {
            assert_eq!(kind, BackendKind::Cpu, "only the CPU backend has no buffer limit");
            backend::check_fits(&device, "t", usize::MAX / 8, DType::F32).unwrap();
            continue;
        };
        assert!(max >= 64 << 20, "{kind}: a limit of {max} bytes");
        let most = (max / 4) as usize;
        backend::check_fits(&device, "t", most, DType::F32).unwrap();
        let err = backend::check_fits(&device, "big.weight", most + 1, DType::F32).unwrap_err().to_string();
        assert!(err.contains("`big.weight`") && err.contains(&max.to_string()), "{kind}: {err}");
        assert!(err.contains("--dtype f16"), "{kind}: half the bytes would fit: {err}");
        let err = backend::check_fits(&device, "big.weight", most + 1, DType::F16).err();
        assert!(err.is_none(), "{kind}: f16 fits: {err:?}");
        let err = backend::check_fits(&device, "t", 2 * most + 2, DType::F32).unwrap_err().to_string();
        assert!(!err.contains("--dtype f16"), "{kind}: f16 would not fit either: {err}");
    }
}

/// A whole model whose text table is one row past the limit fails to build and names that
/// table (where the limit is small enough to build such a table here).
#[test]
fn a_model_with_a_table_past_the_limit_names_it() {
    for (kind, device) in devices() {
        let Some(max) = backend::max_tensor_bytes(&device).filter(|&m| m <= 256 << 20) else {
            eprintln!("{kind}: no buffer limit small enough to test with a model");
            continue;
        };
        let dim = 64;
        let rows = (max / 4) as usize / dim + 1; // text_card + 1 rows of dim f32
        let config = LmConfig { text_card: rows - 1, dim, ..LmConfig::tiny() };
        let err = LmModel::random(config, &device, 1).err().map(|e| e.to_string());
        let err = err.unwrap_or_else(|| panic!("{kind}: a {rows} x {dim} f32 table built"));
        assert!(err.contains("`text_emb.weight`"), "{kind}: {err}");
        eprintln!("{kind}: {err}");
    }
}
