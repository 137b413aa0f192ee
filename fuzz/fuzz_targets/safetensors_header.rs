//! Fuzzes the safetensors header handling of kokichi's weight loader without building Burn:
//! the same calls and index arithmetic as `WeightFile::open` (`read_metadata`, entry offsets
//! `8 + header + data_offsets`), `stored`/`host` (slicing the data by those offsets, checking
//! the size against the shape) and `read_int_tensor` (`deserialize`, `tensor`). A panic here is
//! a panic there. `fuzz/loader`'s `model_folder` runs the loader itself, Burn included.
#![no_main]

use libfuzzer_sys::fuzz_target;
use safetensors::{Dtype, SafeTensors};

fuzz_target!(|data: &[u8]| {
    // WeightFile::open
    if let Ok((header, meta)) = SafeTensors::read_metadata(data) {
        let base = 8 + header;
        for (_, info) in meta.tensors() {
            let (start, end) = (base + info.data_offsets.0, base + info.data_offsets.1);
            // stored(), host(): the bytes of the tensor, then their count against the shape.
            let bytes = &data[start..end];
            let n: usize = info.shape.iter().product();
            let size = match info.dtype {
                Dtype::F32 | Dtype::U32 => 4,
                Dtype::F16 | Dtype::BF16 => 2,
                _ => 1,
            };
            let _ = bytes.len() == n * size;
        }
    }
    // read_int_tensor
    if let Ok(st) = SafeTensors::deserialize(data) {
        for name in st.names() {
            if let Ok(view) = st.tensor(name) {
                let _ = (view.dtype(), view.shape().len(), view.data().len());
            }
        }
    }
});
