//! Prefix latents ("gists"): K vectors of the LM's width fed to its temporal transformer as
//! extra positions before a session's first frame, so that the session starts already prompted.
//!
//! On disk a gist is a safetensors file holding one tensor `gist` `[K, d_model]` (f32, f16 or
//! bf16), with optional string metadata (`model`, `prompt`, `kl_*` figures written by
//! `kokichi gist train`). The same layout a PyTorch user gets from
//! `safetensors.torch.save_file({"gist": t}, path)`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Result};

/// The tensor name of a gist file.
pub const TENSOR: &str = "gist";
/// Most prefix positions a gist may hold.
pub const MAX_K: usize = 64;

/// K prefix vectors of width `dim`, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Gist {
    pub values: Vec<f32>,
    pub k: usize,
    pub dim: usize,
    /// String metadata kept beside the tensor.
    pub meta: HashMap<String, String>,
}

impl Gist {
    /// A gist of `k` rows of `dim` from `values`.
    pub fn new(values: Vec<f32>, k: usize, dim: usize) -> Result<Self> {
        if k == 0 || k > MAX_K {
            return Err(Error::input(format!("a gist holds 1..={MAX_K} vectors, not {k}")));
        }
        if values.len() != k * dim {
            return Err(Error::input(format!("{} values for a gist of [{k}, {dim}]", values.len())));
        }
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(Error::input(format!("gist value {i} is not finite ({})", values[i])));
        }
        Ok(Self { values, k, dim, meta: HashMap::new() })
    }

    /// Reads a gist file.
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::from_bytes(&bytes, path)
    }

    /// Reads a gist from the bytes of a safetensors file (`path` names it in errors).
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self> {
        let file_err = |msg: String| Error::File { path: path.to_path_buf(), msg };
        let tensor_err = |msg: String| Error::Tensor { path: path.to_path_buf(), name: TENSOR.into(), msg };
        let st = SafeTensors::deserialize(bytes)
            .map_err(|e| file_err(format!("not a valid safetensors file ({e:?}); truncated or corrupt?")))?;
        let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| file_err(format!("{e:?}")))?;
        let view =
            st.tensor(TENSOR).map_err(|_| tensor_err(format!("missing (file holds: {})", st.names().join(", "))))?;
        let (k, dim) = match view.shape() {
            &[k, dim] => (k, dim),
            other => return Err(tensor_err(format!("shape {other:?}, expected [K, d_model]"))),
        };
        let data = view.data();
        let values: Vec<f32> = match view.dtype() {
            Dtype::F32 => data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            Dtype::F16 => data.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            Dtype::BF16 => data.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            other => return Err(tensor_err(format!("dtype {other:?}, expected f32, f16 or bf16"))),
        };
        let mut gist = Self::new(values, k, dim).map_err(|e| tensor_err(e.to_string()))?;
        gist.meta = header.metadata().clone().unwrap_or_default();
        Ok(gist)
    }

    /// Writes the gist (f32) with its metadata.
    pub fn write(&self, path: &Path) -> Result<()> {
        let bytes: Vec<u8> = self.values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let view = safetensors::tensor::TensorView::new(Dtype::F32, vec![self.k, self.dim], &bytes).map_err(|e| {
            Error::Tensor { path: path.to_path_buf(), name: TENSOR.into(), msg: format!("cannot serialize: {e:?}") }
        })?;
        let meta = (!self.meta.is_empty()).then(|| self.meta.clone());
        safetensors::serialize_to_file([(TENSOR, view)], meta, path)
            .map_err(|e| Error::File { path: path.to_path_buf(), msg: format!("cannot write: {e:?}") })
    }

    /// Checks that the gist fits an LM of width `d_model`; `source` names it in the error.
    pub fn check_width(&self, d_model: usize, source: &Path) -> Result<()> {
        if self.dim != d_model {
            return Err(Error::Tensor {
                path: PathBuf::from(source),
                name: TENSOR.into(),
                msg: format!("width {} but the model's d_model is {d_model}", self.dim),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_names_bad_files() {
        let dir = std::env::temp_dir().join(format!("kokichi-gist-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("g.safetensors");
        let mut g = Gist::new((0..12).map(|i| i as f32 * 0.5 - 2.0).collect(), 3, 4).unwrap();
        g.meta.insert("model".into(), "test".into());
        g.write(&path).unwrap();
        let back = Gist::read(&path).unwrap();
        assert_eq!(back, g);
        assert!(back.check_width(4, &path).is_ok());
        let e = back.check_width(8, &path).unwrap_err().to_string();
        assert!(e.contains("g.safetensors") && e.contains("gist") && e.contains("d_model is 8"), "{e}");
        let bytes = std::fs::read(&path).unwrap();
        let e = Gist::from_bytes(&bytes[..bytes.len() - 3], &path).unwrap_err().to_string();
        assert!(e.contains("g.safetensors") && e.contains("truncated"), "{e}");
        assert!(Gist::new(vec![f32::NAN; 4], 1, 4).unwrap_err().to_string().contains("not finite"));
        assert!(Gist::new(vec![0.0; 4], 0, 4).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
