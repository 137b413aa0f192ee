//! `kokichi quantize`: writes a copy of a model folder whose LM holds its products' weights and
//! embedding tables in 8 bits (`kernels/q8.rs`), so that loading it (always in 8 bits, as with
//! `--dtype q8`) skips quantizing gigabytes of weights at every start.
//!
//! The LM file keeps its name; each 8-bit matrix is written as `NAME.q8` (u32, four values a
//! word, in kokichi's input-major layout) and `NAME.scale` (f32), a stored tensor holding several
//! (the depth transformer's per-step weights) as `NAME.partI.q8` and `.scale`; every other tensor
//! is copied as it is. The codec, tokenizer and `config.json` are copied unchanged.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use burn::tensor::DType;
use clap::Args;

use kokichi::backend::Precision;
use kokichi::lm::LmModel;
use kokichi::model_dir;
use kokichi::weights::{OutTensor, WeightFile, q8_part_name, write_tensors};

#[derive(Args, Debug)]
pub struct QuantizeArgs {
    /// The model to quantize: a folder or a Hugging Face repo.
    #[arg(long)]
    pub model: String,
    /// The folder to write (created; its files are replaced).
    #[arg(long)]
    pub out: PathBuf,
}

pub fn quantize(a: QuantizeArgs) -> Result<()> {
    let files = model_dir::resolve(&a.model)?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    // On the CPU backend: the 8-bit values are computed on the host either way.
    let device = Device::flex();
    let t0 = std::time::Instant::now();
    let (lm, slots) = LmModel::load_with_slots(&files.lm, files.lm_config.clone(), &device, Precision::Q8)?;
    tracing::info!("quantized {} in {:.1} s", files.lm.display(), t0.elapsed().as_secs_f64());

    let mut tensors = Vec::new();
    let mut quantized = BTreeSet::new();
    for m in lm.matrices() {
        // A width that does not pack in words stays as stored.
        let Some((q, _)) = &m.q8 else { continue };
        let Some(slot) = slots.0.get(&m.weight.id) else { bail!("a matrix of {} has no name", files.lm.display()) };
        let name = if slot.parts > 1 { q8_part_name(&slot.name, slot.part) } else { slot.name.clone() };
        let [k, n] = q.dims();
        let values: Vec<u32> = q
            .values
            .clone()
            .into_data()
            .try_into_vec::<i32>()
            .map_err(|e| anyhow::anyhow!("reading {name} back: {e:?}"))?
            .into_iter()
            .map(|v| v as u32)
            .collect();
        let scale_dims = q.scales.dims().to_vec();
        let scales = q
            .scales
            .clone()
            .into_data()
            .try_into_vec::<f32>()
            .map_err(|e| anyhow::anyhow!("reading {name} back: {e:?}"))?;
        tensors.push((format!("{name}.q8"), vec![k, n / 4], OutTensor::U32(values)));
        tensors.push((format!("{name}.scale"), scale_dims, OutTensor::F32(scales)));
        quantized.insert(slot.name.clone());
    }
    drop(lm);
    // Everything else as stored.
    let src = WeightFile::open(&files.lm, &device, DType::F16)?;
    let names: Vec<String> = src.names().filter(|n| !quantized.contains(*n)).map(str::to_string).collect();
    for name in names {
        if let Some((dtype, shape, bytes)) = src.stored(&name) {
            tensors.push((name, shape, OutTensor::Raw(dtype, bytes.to_vec())));
        }
    }
    let lm_out = a.out.join(file_name(&files.lm)?);
    write_tensors(&lm_out, tensors)?;
    let mut copied = vec![files.mimi.clone()];
    copied.extend(files.tokenizer.clone());
    if let Some(dir) = files.lm.parent() {
        let config = dir.join("config.json");
        if config.is_file() {
            copied.push(config);
        }
    }
    for f in copied {
        let to = a.out.join(file_name(&f)?);
        std::fs::copy(&f, &to).with_context(|| format!("copying {} to {}", f.display(), to.display()))?;
    }
    let size = std::fs::metadata(&lm_out).map(|m| m.len()).unwrap_or(0);
    println!(
        "wrote {} ({:.2} GB) and the model's other files into {}",
        lm_out.display(),
        size as f64 / 1e9,
        a.out.display()
    );
    Ok(())
}

fn file_name(path: &Path) -> Result<&std::ffi::OsStr> {
    path.file_name().with_context(|| format!("{} has no file name", path.display()))
}
