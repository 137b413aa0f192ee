//! Reading and writing safetensors files in the reference checkpoint layout.
//!
//! Weights are taken by name with their expected shape. A missing tensor, a wrong shape, an
//! unsupported dtype or a truncated file is an error naming the file and the tensor; tensors
//! left over after a model has taken what it needs are reported as unexpected. bf16 and f16
//! on disk are converted on the host to the dtype the model computes in (wgpu has no bf16).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use burn::module::{Param, ParamId};
use burn::prelude::*;
use burn::tensor::DType;
use rayon::prelude::*;
use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Result};
use crate::kernels::q8::{self, Q8};
use crate::nn::matrix::Matrix;

struct Entry {
    dtype: Dtype,
    shape: Vec<usize>,
    start: usize,
    end: usize,
}

/// An open safetensors file whose tensors a model takes one by one.
pub struct WeightFile {
    path: PathBuf,
    data: memmap2::Mmap,
    entries: BTreeMap<String, Entry>,
    taken: BTreeSet<String>,
    device: Device,
    dtype: DType,
    slots: Slots,
    q8: bool,
    /// Tensors that replace the stored ones of the same name (a vocabulary adapter's extended
    /// tables, [`crate::adapter`]), host f32 with their shape.
    overlay: HashMap<String, (Vec<usize>, Vec<f32>)>,
}

impl WeightFile {
    /// Opens and validates `path`; tensors will be created on `device` in `dtype`.
    pub fn open(path: &Path, device: &Device, dtype: DType) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        // Safety: the file is opened read-only and is not expected to change while loading.
        let data = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let (header, meta) = SafeTensors::read_metadata(&data).map_err(|e| Error::File {
            path: path.to_path_buf(),
            msg: format!("not a valid safetensors file ({e:?}); truncated or corrupt?"),
        })?;
        let base = 8 + header;
        let mut entries = BTreeMap::new();
        for (name, info) in meta.tensors() {
            entries.insert(
                name.clone(),
                Entry {
                    dtype: info.dtype,
                    shape: info.shape.clone(),
                    start: base + info.data_offsets.0,
                    end: base + info.data_offsets.1,
                },
            );
        }
        Ok(Self {
            path: path.to_path_buf(),
            data,
            entries,
            taken: BTreeSet::new(),
            device: device.clone(),
            dtype,
            slots: Slots::default(),
            q8: false,
            overlay: HashMap::new(),
        })
    }

    /// Replaces tensor `name` by `values` of `shape`, whatever the file stores under that name.
    pub fn overlay(&mut self, name: &str, shape: Vec<usize>, values: Vec<f32>) {
        self.overlay.insert(name.to_string(), (shape, values));
    }

    /// Holds products' weights and embedding tables in 8 bits ([`crate::kernels::q8`]): those
    /// the file has in 8 bits (`kokichi quantize`) as they are, the others quantized at load.
    pub fn quantized(mut self, on: bool) -> Self {
        self.q8 = on;
        self
    }

    /// Tensor `name` as stored (dtype, shape, bytes), untouched and not marked as taken.
    pub fn stored(&self, name: &str) -> Option<(Dtype, Vec<usize>, &[u8])> {
        self.entries.get(name).map(|e| (e.dtype, e.shape.clone(), &self.data[e.start..e.end]))
    }

    /// Whether the file holds 8-bit weights (`kokichi quantize` wrote it).
    pub fn has_q8(&self) -> bool {
        self.entries.keys().any(|k| k.ends_with(".q8"))
    }

    /// The raw bytes of `name`, checking its dtype and shape.
    fn raw(&mut self, name: &str, dtype: Dtype, shape: &[usize]) -> Result<&[u8]> {
        let entry = self.entries.get(name).ok_or_else(|| self.err(name, "missing from the file"))?;
        if entry.dtype != dtype || entry.shape != shape {
            return Err(self.err(name, format!("is {:?} {:?}, expected {dtype:?} {shape:?}", entry.dtype, entry.shape)));
        }
        let (start, end) = (entry.start, entry.end);
        let size = if dtype == Dtype::U32 || dtype == Dtype::F32 { 4 } else { 1 };
        if end - start != shape.iter().product::<usize>() * size {
            return Err(self.err(name, "data size does not match its shape and dtype"));
        }
        self.taken.insert(name.to_string());
        Ok(&self.data[start..end])
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Whether the file holds a tensor of that name (taken or not).
    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// Names of all tensors in the file.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// Shape of a tensor in the file, if present.
    pub fn shape_of(&self, name: &str) -> Option<&[usize]> {
        self.entries.get(name).map(|e| e.shape.as_slice())
    }

    fn err(&self, name: &str, msg: impl Into<String>) -> Error {
        Error::Tensor { path: self.path.clone(), name: name.to_string(), msg: msg.into() }
    }

    /// A weight that is NaN or infinite (or, cast to f16, beyond its range) would make the model
    /// silently produce garbage; it is an error naming the tensor and a bad element.
    fn check_finite(&self, name: &str, bad: Option<(usize, f32)>) -> Result<()> {
        match bad {
            None => Ok(()),
            Some((i, v)) if v.is_nan() => Err(self.err(name, format!("holds NaN (element {i})"))),
            Some((i, _)) => Err(self.err(name, format!("holds an infinite value (element {i}, in {:?})", self.dtype))),
        }
    }

    /// Takes tensor `name` as host f32 values, checking its shape.
    pub fn host(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        if let Some((stored, values)) = self.overlay.remove(name) {
            if stored != shape {
                return Err(self.err(name, format!("has shape {stored:?} (adapted), expected {shape:?}")));
            }
            self.taken.insert(name.to_string());
            return Ok(values);
        }
        let entry = self.entries.get(name).ok_or_else(|| self.err(name, "missing from the file"))?;
        if entry.shape != shape {
            return Err(self.err(name, format!("has shape {:?}, expected {:?}", entry.shape, shape)));
        }
        let bytes = &self.data[entry.start..entry.end];
        let n: usize = shape.iter().product();
        let (values, all_finite) = match entry.dtype {
            Dtype::F32 => decode(bytes, n, 4, |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]), f32::is_finite),
            Dtype::F16 => decode(bytes, n, 2, |b| half::f16::from_le_bytes([b[0], b[1]]).to_f32(), f32::is_finite),
            Dtype::BF16 => decode(bytes, n, 2, |b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32(), f32::is_finite),
            Dtype::F64 => {
                let f = |b: &[u8]| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32;
                decode(bytes, n, 8, f, f32::is_finite)
            }
            other => None.ok_or_else(|| self.err(name, format!("unsupported dtype {other:?}")))?,
        }
        .ok_or_else(|| self.err(name, "data size does not match its shape and dtype"))?;
        if !all_finite {
            self.check_finite(name, first_non_finite(&values, f32::is_finite))?;
        }
        self.taken.insert(name.to_string());
        Ok(values)
    }

    /// The values of `name` in the target dtype: 16-bit sources go straight to f16 when the
    /// model computes in f16, without an f32 copy of the whole tensor.
    fn data(&mut self, name: &str, shape: &[usize]) -> Result<HostData> {
        if self.dtype == DType::F16
            && !self.overlay.contains_key(name)
            && let Some(e) = self.entries.get(name)
            && e.shape == shape
            && matches!(e.dtype, Dtype::F16 | Dtype::BF16)
        {
            let bytes = &self.data[e.start..e.end];
            let n: usize = shape.iter().product();
            let bf16 = e.dtype == Dtype::BF16;
            let f = |b: &[u8]| {
                if bf16 {
                    half::f16::from_f32(half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                } else {
                    half::f16::from_le_bytes([b[0], b[1]])
                }
            };
            let (values, all_finite) = decode(bytes, n, 2, f, half::f16::is_finite)
                .ok_or_else(|| self.err(name, "data size does not match its shape and dtype"))?;
            if !all_finite {
                self.check_finite(name, first_non_finite(&values, half::f16::is_finite))?;
            }
            self.taken.insert(name.to_string());
            return Ok(HostData::F16(values));
        }
        Ok(HostData::F32(self.host(name, shape)?))
    }

    /// Marks a tensor as known but unused (e.g. `_initialized` flags of codebooks).
    pub fn skip(&mut self, name: &str) {
        if self.entries.contains_key(name) {
            self.taken.insert(name.to_string());
        }
    }

    /// Fails if tensors remain that the model did not take; returns the parameter slots.
    pub fn finish(self) -> Result<Slots> {
        let left: Vec<&String> = self.entries.keys().filter(|k| !self.taken.contains(*k)).collect();
        match left.first() {
            None => Ok(self.slots),
            Some(first) => Err(Error::Tensor {
                path: self.path.clone(),
                name: (*first).clone(),
                msg: format!(
                    "unexpected tensor ({} unexpected in all); does the config match the weights?",
                    left.len()
                ),
            }),
        }
    }
}

impl Weights for WeightFile {
    fn device(&self) -> &Device {
        &self.device
    }
    fn dtype(&self) -> DType {
        self.dtype
    }
    fn take(&mut self, name: &str, shape: &[usize]) -> Result<HostData> {
        self.data(name, shape)
    }
    fn skip(&mut self, name: &str) {
        WeightFile::skip(self, name)
    }
    fn slots(&mut self) -> &mut Slots {
        &mut self.slots
    }
    fn q8(&self) -> bool {
        self.q8
    }
    fn take_q8(&mut self, name: &str, k: usize, n: usize) -> Result<Option<(Vec<u32>, Vec<f32>)>> {
        let (qname, sname) = (format!("{name}.q8"), format!("{name}.scale"));
        if !self.entries.contains_key(&qname) {
            return Ok(None);
        }
        let values = self
            .raw(&qname, Dtype::U32, &[k, n / 4])?
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let scales: Vec<f32> = self
            .raw(&sname, Dtype::F32, &[k.div_ceil(q8::BLOCK), n])?
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        self.check_finite(&sname, first_non_finite(&scales, f32::is_finite))?;
        Ok(Some((values, scales)))
    }
}

/// Host values in the dtype they will be uploaded from.
pub enum HostData {
    F32(Vec<f32>),
    F16(Vec<half::f16>),
}

trait NewLike {
    fn new_like<const D: usize>(data: HostData, shape: [usize; D]) -> TensorData;
}

impl NewLike for TensorData {
    fn new_like<const D: usize>(data: HostData, shape: [usize; D]) -> TensorData {
        match data {
            HostData::F32(v) => TensorData::new(v, shape),
            HostData::F16(v) => TensorData::new(v, shape),
        }
    }
}

impl HostData {
    fn into_f32(self) -> Vec<f32> {
        match self {
            HostData::F32(v) => v,
            HostData::F16(v) => v.par_iter().map(|x| x.to_f32()).collect(),
        }
    }
}

/// Where a parameter lives in the checkpoint layout.
#[derive(Clone, Debug)]
pub struct Slot {
    pub name: String,
    /// Index of this parameter among those stacked along dim 0 of one stored tensor.
    pub part: usize,
    pub parts: usize,
    /// The stored tensor's shape.
    pub stored: Vec<usize>,
    /// Codebook centroids, stored as `embedding_sum` with unit `cluster_usage`.
    pub codebook: bool,
    /// Held transposed (`[in, out]`) for the matmul; stored `[out, in]`.
    pub transposed: bool,
}

impl Slot {
    /// Part `part` of `parts` stacked in the stored tensor `name` (not a codebook).
    fn part(name: &str, stored: &[usize], part: usize, parts: usize, transposed: bool) -> Self {
        Slot { name: name.into(), part, parts, stored: stored.to_vec(), codebook: false, transposed }
    }
}

/// Parameter id -> checkpoint slot, filled while a model is built.
#[derive(Clone, Debug, Default)]
pub struct Slots(pub HashMap<ParamId, Slot>);

/// A source of model weights: a checkpoint ([`WeightFile`]) or fresh random values
/// ([`RandomWeights`], for training). Models are built through this trait so that a trained
/// model can be written back in the same layout ([`export`]).
pub trait Weights {
    fn device(&self) -> &Device;
    fn dtype(&self) -> DType;
    /// The values of `name`, stored with `shape`.
    fn take(&mut self, name: &str, shape: &[usize]) -> Result<HostData>;
    /// Marks a known tensor as used without reading it.
    fn skip(&mut self, name: &str);
    fn slots(&mut self) -> &mut Slots;
    /// Whether products' weights and embedding tables are held in 8 bits (`--dtype q8`).
    fn q8(&self) -> bool {
        false
    }
    /// The 8-bit form of `name` written by `kokichi quantize` (`name.q8`, `name.scale`), in the
    /// held layout `[k, n]`, where the source has it.
    fn take_q8(&mut self, _name: &str, _k: usize, _n: usize) -> Result<Option<(Vec<u32>, Vec<f32>)>> {
        Ok(None)
    }
}

impl dyn Weights + '_ {
    fn upload<const D: usize>(&self, name: &str, data: HostData, shape: [usize; D]) -> Result<Tensor<D>> {
        crate::backend::check_fits(self.device(), name, shape.iter().product(), self.dtype())?;
        // Converted here, in parallel, so that Burn receives the dtype it stores.
        let data = match (data, self.dtype()) {
            (HostData::F32(v), DType::F16) => HostData::F16(v.par_iter().map(|&x| half::f16::from_f32(x)).collect()),
            (HostData::F16(v), DType::F32) => HostData::F32(v.par_iter().map(|x| x.to_f32()).collect()),
            (data, _) => data,
        };
        Ok(Tensor::from_data(TensorData::new_like(data, shape), (self.device(), self.dtype())))
    }

    fn register<const D: usize>(&mut self, t: Tensor<D>, slot: Slot) -> Param<Tensor<D>> {
        let p = Param::from_tensor(t);
        self.slots().0.insert(p.id, slot);
        p
    }

    /// A parameter stored as `name` with exactly `shape`.
    pub fn param<const D: usize>(&mut self, name: &str, shape: [usize; D]) -> Result<Param<Tensor<D>>> {
        self.param_as(name, &shape, shape)
    }

    /// A parameter stored as `stored` (same element count), used as `shape`.
    pub fn param_as<const D: usize>(
        &mut self,
        name: &str,
        stored: &[usize],
        shape: [usize; D],
    ) -> Result<Param<Tensor<D>>> {
        let data = self.take(name, stored)?;
        let t = self.upload(name, data, shape)?;
        Ok(self.register(t, Slot::part(name, stored, 0, 1, false)))
    }

    /// A linear layer's weight, stored `[out, inp]` (any trailing 1s in `stored`), held as a
    /// contiguous `[inp, out]` so every call multiplies without copying the weight.
    pub fn linear(&mut self, name: &str, stored: &[usize], out: usize, inp: usize) -> Result<Param<Tensor<2>>> {
        let data = self.take(name, stored)?.into_f32();
        let t = self.upload(name, HostData::F32(transpose(&data, out, inp)), [inp, out])?;
        Ok(self.register(t, Slot::part(name, stored, 0, 1, true)))
    }

    /// `sets` linear weights `[rows, cols]` stacked in one stored tensor, each held `[cols, rows]`.
    pub fn linear_parts(&mut self, name: &str, sets: usize, rows: usize, cols: usize) -> Result<Vec<Param<Tensor<2>>>> {
        let stored = [sets * rows, cols];
        let data = self.take(name, &stored)?.into_f32();
        (0..sets)
            .map(|i| {
                let part = &data[i * rows * cols..(i + 1) * rows * cols];
                let t = self.upload(name, HostData::F32(transpose(part, rows, cols)), [cols, rows])?;
                Ok(self.register(t, Slot::part(name, &stored, i, sets, true)))
            })
            .collect()
    }

    /// A product's weight stored `[out, inp]` ([`Self::linear`]), held in 8 bits where the source
    /// says so ([`Weights::q8`]) and `out` is a multiple of 4 (four values pack a word).
    pub fn product(&mut self, name: &str, stored: &[usize], out: usize, inp: usize) -> Result<Matrix> {
        // Four columns pack one word: a width that does not divide stays float.
        if !self.q8() || !out.is_multiple_of(4) {
            return Ok(Matrix::new(self.linear(name, stored, out, inp)?));
        }
        let (values, scales) = match self.take_q8(name, inp, out)? {
            Some(q) => q,
            None => {
                let data = self.take(name, stored)?.into_f32();
                q8::quantize(&transpose(&data, out, inp), inp, out).map_err(|e| self.named(name, e))?
            }
        };
        self.q8_matrix(name, stored, 0, 1, values, scales, inp, out, true)
    }

    /// `sets` products' weights `[rows, cols]` stacked in one stored tensor ([`Self::linear_parts`]),
    /// held in 8 bits where the source says so.
    pub fn product_parts(&mut self, name: &str, sets: usize, rows: usize, cols: usize) -> Result<Vec<Matrix>> {
        if !self.q8() || !rows.is_multiple_of(4) {
            return Ok(self.linear_parts(name, sets, rows, cols)?.into_iter().map(Matrix::new).collect());
        }
        let stored = [sets * rows, cols];
        // Written by `kokichi quantize` part by part, as `{name}.part{i}`.
        let mut parts = Vec::with_capacity(sets);
        for i in 0..sets {
            let part_name = if sets == 1 { name.to_string() } else { q8_part_name(name, i) };
            match self.take_q8(&part_name, cols, rows)? {
                Some(q) => parts.push(q),
                None => break,
            }
        }
        if parts.len() != sets {
            let data = self.take(name, &stored)?.into_f32();
            parts = (0..sets)
                .map(|i| {
                    let part = transpose(&data[i * rows * cols..(i + 1) * rows * cols], rows, cols);
                    q8::quantize(&part, cols, rows).map_err(|e| self.named(name, e))
                })
                .collect::<Result<Vec<_>>>()?;
        }
        parts
            .into_iter()
            .enumerate()
            .map(|(i, (values, scales))| self.q8_matrix(name, &stored, i, sets, values, scales, cols, rows, true))
            .collect()
    }

    /// A table `[rows, width]` stored as `name`, held in 8 bits where the source says so.
    pub fn table(&mut self, name: &str, rows: usize, width: usize) -> Result<Matrix> {
        if !self.q8() || !width.is_multiple_of(4) {
            return Ok(Matrix::new(self.param(name, [rows, width])?));
        }
        let (values, scales) = match self.take_q8(name, rows, width)? {
            Some(q) => q,
            None => {
                let data = self.take(name, &[rows, width])?.into_f32();
                q8::quantize(&data, rows, width).map_err(|e| self.named(name, e))?
            }
        };
        self.q8_matrix(name, &[rows, width], 0, 1, values, scales, rows, width, false)
    }

    /// The 8-bit form of table `name` `[rows, width]` on the host: as the file has it, or
    /// quantized now ([`q8::quantize`]).
    pub fn table_q8_host(&mut self, name: &str, rows: usize, width: usize) -> Result<(Vec<u32>, Vec<f32>)> {
        match self.take_q8(name, rows, width)? {
            Some(q) => Ok(q),
            None => {
                let data = self.take(name, &[rows, width])?.into_f32();
                q8::quantize(&data, rows, width).map_err(|e| self.named(name, e))
            }
        }
    }

    /// The one-value float stand-in parameter of a matrix held in 8 bits, stored as `name`.
    pub fn stand_in(&mut self, name: &str, stored: &[usize]) -> Param<Tensor<2>> {
        let t = Tensor::zeros([1, 1], (self.device(), self.dtype()));
        self.register(t, Slot::part(name, stored, 0, 1, false))
    }

    /// A matrix held as its 8-bit form, with a one-value float stand-in as its parameter.
    #[allow(clippy::too_many_arguments)]
    fn q8_matrix(
        &mut self,
        name: &str,
        stored: &[usize],
        part: usize,
        parts: usize,
        values: Vec<u32>,
        scales: Vec<f32>,
        k: usize,
        n: usize,
        transposed: bool,
    ) -> Result<Matrix> {
        crate::backend::check_fits(self.device(), name, k * n / 4, DType::I32)?;
        let q = Q8::upload(values, scales, k, n, self.device()).map_err(|e| self.named(name, e))?;
        let stand_in = Tensor::zeros([1, 1], (self.device(), self.dtype()));
        let weight = self.register(stand_in, Slot::part(name, stored, part, parts, transposed));
        Ok(Matrix { weight, q8: Some((q, self.dtype())) })
    }

    /// `e` with the tensor's name in front.
    fn named(&self, name: &str, e: Error) -> Error {
        Error::input(format!("tensor `{name}`: {e}"))
    }

    /// `sets` parameters `[rows, cols]` stacked in one stored tensor `[sets * rows, cols]`.
    pub fn param_parts(&mut self, name: &str, sets: usize, rows: usize, cols: usize) -> Result<Vec<Param<Tensor<2>>>> {
        let stored = [sets * rows, cols];
        let data = self.take(name, &stored)?;
        let t: Tensor<2> = self.upload(name, data, stored)?;
        Ok((0..sets)
            .map(|i| {
                let part = t.clone().narrow(0, i * rows, rows);
                self.register(part, Slot::part(name, &stored, i, sets, false))
            })
            .collect())
    }

    /// Host f32 values of `name` (not a parameter).
    pub fn host(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        Ok(self.take(name, shape)?.into_f32())
    }

    /// Codebook centroids `embedding_sum / clamp(cluster_usage, 1e-5)` of `{prefix}`.
    pub fn codebook(&mut self, prefix: &str, bins: usize, dim: usize) -> Result<Param<Tensor<2>>> {
        let usage = self.host(&format!("{prefix}.cluster_usage"), &[bins])?;
        let mut sum = self.host(&format!("{prefix}.embedding_sum"), &[bins, dim])?;
        self.skip(&format!("{prefix}._initialized"));
        for (row, u) in sum.chunks_exact_mut(dim).zip(usage) {
            let u = u.max(1e-5);
            row.iter_mut().for_each(|v| *v /= u);
        }
        let t = self.upload(&format!("{prefix}.embedding_sum"), HostData::F32(sum), [bins, dim])?;
        Ok(self.register(
            t,
            Slot { name: prefix.into(), part: 0, parts: 1, stored: vec![bins, dim], codebook: true, transposed: false },
        ))
    }
}

/// The name under which `kokichi quantize` writes part `i` of a stored tensor holding several
/// products' weights (one holding a single weight keeps its name).
pub fn q8_part_name(name: &str, i: usize) -> String {
    format!("{name}.part{i}")
}

/// `[rows, cols]` row-major to `[cols, rows]`.
///
/// In tiles, so that reads and writes both stay in cache, and in parallel over bands of output
/// rows: moshiko's 7 B linear weights all pass through here at load.
fn transpose(data: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    const TILE: usize = 32;
    let mut out = vec![0f32; data.len()];
    if rows == 0 || cols == 0 {
        return out;
    }
    out.par_chunks_mut(TILE * rows).enumerate().for_each(|(band, dst)| {
        let c0 = band * TILE;
        let width = dst.len() / rows;
        for r0 in (0..rows).step_by(TILE) {
            for r in r0..(r0 + TILE).min(rows) {
                let src = &data[r * cols + c0..r * cols + c0 + width];
                for (dc, &v) in src.iter().enumerate() {
                    dst[dc * rows + r] = v;
                }
            }
        }
    });
    out
}

/// An element that is not finite, with its value as f32.
fn first_non_finite<T: Copy + Into<f32> + Send + Sync>(
    values: &[T],
    finite: impl Fn(T) -> bool + Sync,
) -> Option<(usize, f32)> {
    values.par_iter().position_any(|&v| !finite(v)).map(|i| (i, values[i].into()))
}

/// Decodes `n` values of `size` bytes each with `f`, and says whether all of them are `finite`.
/// The check rides along in the same pass, where it costs next to nothing; a second pass over
/// the values would cost a fifth of the decoding (`cargo run --example bench_weight_scan`).
/// `None` if `bytes` is not `n` values long.
pub fn decode<T: Copy + Send>(
    bytes: &[u8],
    n: usize,
    size: usize,
    f: impl Fn(&[u8]) -> T + Send + Sync,
    finite: impl Fn(T) -> bool + Send + Sync,
) -> Option<(Vec<T>, bool)> {
    if bytes.len() != n * size {
        return None;
    }
    let non_finite = AtomicBool::new(false);
    let values = bytes
        .par_chunks_exact(size)
        .map(|b| {
            let v = f(b);
            if !finite(v) {
                non_finite.store(true, Ordering::Relaxed);
            }
            v
        })
        .collect();
    Some((values, !non_finite.into_inner()))
}

/// Reads an integer tensor (i64, i32, u32, i16, u16, u8) from a safetensors file.
/// Returns the values and their shape.
pub fn read_int_tensor(path: &Path, name: &str) -> Result<(Vec<i64>, Vec<usize>)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::File { path: path.to_path_buf(), msg: format!("not a valid safetensors file ({e:?})") })?;
    let err = |msg: String| Error::Tensor { path: path.to_path_buf(), name: name.to_string(), msg };
    let view = st.tensor(name).map_err(|_| err(format!("missing (file holds: {})", st.names().join(", "))))?;
    let data = view.data();
    let values: Vec<i64> = match view.dtype() {
        Dtype::I64 => {
            data.chunks_exact(8).map(|b| i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])).collect()
        }
        Dtype::I32 => data.chunks_exact(4).map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64).collect(),
        Dtype::U32 => data.chunks_exact(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64).collect(),
        Dtype::I16 => data.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]]) as i64).collect(),
        Dtype::U16 => data.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]]) as i64).collect(),
        Dtype::U8 => data.iter().map(|&b| b as i64).collect(),
        other => return Err(err(format!("has dtype {other:?}, expected an integer type"))),
    };
    Ok((values, view.shape().to_vec()))
}

/// A tensor to write with [`write_tensors`].
pub enum OutTensor {
    F32(Vec<f32>),
    F16(Vec<half::f16>),
    I64(Vec<i64>),
    U32(Vec<u32>),
    /// Bytes of a tensor of that dtype, copied as they are.
    Raw(Dtype, Vec<u8>),
}

/// Writes named tensors to a safetensors file.
pub fn write_tensors(path: &Path, tensors: Vec<(String, Vec<usize>, OutTensor)>) -> Result<()> {
    let mut owned: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, shape, t) in tensors {
        let (dtype, bytes) = match t {
            OutTensor::F32(v) => (Dtype::F32, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            OutTensor::F16(v) => (Dtype::F16, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            OutTensor::I64(v) => (Dtype::I64, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            OutTensor::U32(v) => (Dtype::U32, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            OutTensor::Raw(dtype, bytes) => (dtype, bytes),
        };
        owned.push((name, dtype, shape, bytes));
    }
    let mut views = Vec::new();
    for (name, dtype, shape, bytes) in &owned {
        let view = safetensors::tensor::TensorView::new(*dtype, shape.clone(), bytes).map_err(|e| Error::Tensor {
            path: path.to_path_buf(),
            name: name.clone(),
            msg: format!("cannot serialize: {e:?}"),
        })?;
        views.push((name.clone(), view));
    }
    // Streamed to the file: a quantized 7 B model is 8 GB, not to be held twice in memory.
    safetensors::serialize_to_file(views, None, path)
        .map_err(|e| Error::File { path: path.to_path_buf(), msg: format!("cannot write: {e:?}") })
}

/// Fresh weights for training, chosen by tensor name as PyTorch would initialise them:
/// uniform(±1/√fan_in) for weights, zeros for biases, ones for norms, small normal embeddings
/// and codebooks, LayerScale at `layer_scale`.
pub struct RandomWeights {
    device: Device,
    dtype: DType,
    rng: rand::rngs::StdRng,
    pub layer_scale: f32,
    slots: Slots,
    /// Products' weights and embedding tables held in 8 bits.
    pub q8: bool,
}

impl RandomWeights {
    pub fn new(device: &Device, dtype: DType, seed: u64) -> Self {
        use rand::SeedableRng;
        Self {
            device: device.clone(),
            dtype,
            rng: rand::rngs::StdRng::seed_from_u64(seed),
            layer_scale: 0.01,
            slots: Slots::default(),
            q8: false,
        }
    }

    pub fn into_slots(self) -> Slots {
        self.slots
    }

    /// `n` values of `draw`, in parallel chunks: each chunk has its own generator, seeded from
    /// one draw of the main generator and the chunk's index, so the values depend on the seed
    /// alone, not on the number of threads.
    fn values(&mut self, n: usize, draw: impl Fn(&mut rand::rngs::StdRng) -> f32 + Sync) -> HostData {
        use rand::{RngCore, SeedableRng};
        const CHUNK: usize = 1 << 16;
        let seed = self.rng.next_u64();
        let mut out = vec![0f32; n];
        out.par_chunks_mut(CHUNK).enumerate().for_each(|(i, chunk)| {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            chunk.iter_mut().for_each(|v| *v = draw(&mut rng));
        });
        HostData::F32(out)
    }
}

/// A normal variate of standard deviation `std` (Box-Muller).
fn normal(rng: &mut rand::rngs::StdRng, std: f32) -> f32 {
    use rand::Rng;
    let u1: f32 = rng.random::<f32>().max(1e-7);
    let u2: f32 = rng.random::<f32>();
    std * (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}

impl Weights for RandomWeights {
    fn device(&self) -> &Device {
        &self.device
    }
    fn dtype(&self) -> DType {
        self.dtype
    }
    fn take(&mut self, name: &str, shape: &[usize]) -> Result<HostData> {
        use rand::Rng;
        let n: usize = shape.iter().product();
        let leaf = name.rsplit('.').next().unwrap_or(name);
        let fill = |v: f32| HostData::F32(vec![v; n]);
        Ok(match leaf {
            "cluster_usage" | "alpha" => fill(1.0),
            "bias" => fill(0.0),
            "scale" => fill(self.layer_scale),
            "embedding_sum" => self.values(n, |r| normal(r, 0.1)),
            "weight" if shape.len() == 1 => fill(1.0),
            _ if name.contains("emb") && shape.len() == 2 => {
                let std = 1.0 / (shape[1] as f32).sqrt();
                self.values(n, move |r| normal(r, std))
            }
            _ => {
                let fan_in: usize = shape[1..].iter().product::<usize>().max(1);
                let b = 1.0 / (fan_in as f32).sqrt();
                self.values(n, move |r| r.random_range(-b..b))
            }
        })
    }
    fn skip(&mut self, _name: &str) {}
    fn slots(&mut self) -> &mut Slots {
        &mut self.slots
    }
    fn q8(&self) -> bool {
        self.q8
    }
}

struct Collect {
    values: HashMap<ParamId, (Vec<usize>, Vec<f32>)>,
    error: Option<String>,
}

impl burn::module::ModuleVisitor for Collect {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let t = param.val();
        let dims = t.dims().to_vec();
        match t.try_into_vec_as::<f32>() {
            Ok(v) => {
                self.values.insert(param.id, (dims, v));
            }
            Err(e) => self.error = Some(format!("{e:?}")),
        }
    }
}

/// Writes `module`'s parameters in the checkpoint layout recorded in `slots` (f32, or f16 to
/// halve the file).
pub fn export<M: burn::module::Module>(module: &M, slots: &Slots, path: &Path, half: bool) -> Result<()> {
    let mut c = Collect { values: HashMap::new(), error: None };
    module.visit(&mut c);
    if let Some(e) = c.error {
        return Err(Error::Backend(format!("reading parameters: {e}")));
    }
    let mut groups: BTreeMap<String, Vec<(usize, &Slot, Vec<f32>)>> = BTreeMap::new();
    for (id, (dims, values)) in c.values {
        if let Some(slot) = slots.0.get(&id) {
            let values = if slot.transposed && dims.len() == 2 { transpose(&values, dims[0], dims[1]) } else { values };
            groups.entry(slot.name.clone()).or_default().push((slot.part, slot, values));
        }
    }
    let out = |v: Vec<f32>| {
        if half { OutTensor::F16(v.iter().map(|x| half::f16::from_f32(*x)).collect()) } else { OutTensor::F32(v) }
    };
    let mut tensors = Vec::new();
    for (name, mut parts) in groups {
        parts.sort_by_key(|p| p.0);
        let slot = parts[0].1.clone();
        if parts.len() != slot.parts {
            return Err(Error::Tensor {
                path: path.to_path_buf(),
                name,
                msg: format!("{} of {} parts found", parts.len(), slot.parts),
            });
        }
        let data: Vec<f32> = parts.into_iter().flat_map(|p| p.2).collect();
        if slot.codebook {
            let bins = slot.stored[0];
            tensors.push((format!("{name}.embedding_sum"), slot.stored.clone(), out(data)));
            tensors.push((format!("{name}.cluster_usage"), vec![bins], out(vec![1.0; bins])));
            tensors.push((format!("{name}._initialized"), vec![1], out(vec![1.0])));
        } else {
            tensors.push((name, slot.stored.clone(), out(data)));
        }
    }
    write_tensors(path, tensors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_finite_weights_are_named() {
        let dir = std::env::temp_dir().join(format!("kokichi-nonfinite-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string()).unwrap();
        let path = dir.join("w.safetensors");
        let bf16 = |v: f32| half::bf16::from_f32(v).to_le_bytes().to_vec();
        write_tensors(
            &path,
            vec![
                ("ok".into(), vec![2], OutTensor::F32(vec![1.0, -2.0])),
                ("has_nan".into(), vec![3], OutTensor::F32(vec![0.0, f32::NAN, 1.0])),
                ("has_inf".into(), vec![2], OutTensor::F16(vec![half::f16::ONE, half::f16::NEG_INFINITY])),
                ("beyond_f16".into(), vec![1], OutTensor::Raw(Dtype::BF16, bf16(1e6))),
            ],
        )
        .unwrap();
        let device = Device::flex();
        let mut f32_file = WeightFile::open(&path, &device, DType::F32).unwrap();
        assert_eq!(f32_file.host("ok", &[2]).unwrap(), vec![1.0, -2.0]);
        let nan = f32_file.host("has_nan", &[3]).unwrap_err().to_string();
        assert!(nan.contains("has_nan") && nan.contains("NaN") && nan.contains("element 1"), "{nan}");
        let inf = f32_file.host("has_inf", &[2]).unwrap_err().to_string();
        assert!(inf.contains("has_inf") && inf.contains("infinite"), "{inf}");
        // 1e6 is a fine bf16 and f32 value, but beyond f16's range.
        assert_eq!(f32_file.host("beyond_f16", &[1]).unwrap(), vec![999424.0]);
        let mut f16_file = WeightFile::open(&path, &device, DType::F16).unwrap();
        let big = f16_file.data("beyond_f16", &[1]).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(big.contains("beyond_f16") && big.contains("infinite") && big.contains("F16"), "{big}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn transpose_matches_the_plain_loop() {
        // Shapes around and across the tile size, and degenerate ones.
        for (rows, cols) in [(1, 1), (3, 70), (70, 3), (32, 32), (33, 65), (100, 1), (1, 100), (0, 5)] {
            let data: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
            let mut want = vec![0f32; data.len()];
            for r in 0..rows {
                for c in 0..cols {
                    want[c * rows + r] = data[r * cols + c];
                }
            }
            assert_eq!(transpose(&data, rows, cols), want, "[{rows}, {cols}]");
        }
    }

    #[test]
    fn random_values_depend_on_the_seed_not_the_threads() {
        let draw = |threads: usize, seed: u64| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().map_err(|e| e.to_string());
            pool.map(|p| {
                p.install(|| {
                    let mut w = RandomWeights::new(&Device::flex(), DType::F32, seed);
                    // Two tensors, the second over several chunks, from one generator.
                    let a = w.take("a.weight", &[3, 5]).map(HostData::into_f32);
                    let b = w.take("b.weight", &[300, 700]).map(HostData::into_f32);
                    (a.map_err(|e| e.to_string()), b.map_err(|e| e.to_string()))
                })
            })
        };
        let one = draw(1, 7);
        let four = draw(4, 7);
        assert_eq!(one, four);
        assert_ne!(one, draw(1, 8));
        let Ok((Ok(a), Ok(b))) = one else { panic!("drawing failed: {one:?}") };
        // Uniform in +-1/sqrt(fan_in), not constant.
        let bound = 1.0 / 700f32.sqrt();
        assert!(b.iter().all(|v| v.abs() <= bound), "values beyond the bound");
        let mean = b.iter().sum::<f32>() / b.len() as f32;
        assert!(mean.abs() < bound / 50.0, "mean {mean}");
        assert!(a.iter().any(|&v| v != a[0]));
        // Every chunk of 65,536 values has a generator of its own: no chunk repeats the first.
        for c in 1..b.len() / 65_536 {
            assert_ne!(b[..1000], b[c * 65_536..c * 65_536 + 1000], "chunk {c} repeats chunk 0");
        }
    }
}
