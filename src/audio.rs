//! Audio in and out of the models. Mimi wants mono `f32` at its own sample rate, while users hand
//! us files in any common format and rate, and sound cards run at 44.1 or 48 kHz. This module
//! decodes files (symphonia), writes wav (hound) and converts sample rates (rubato), both for whole
//! clips and for the live stream, where chunks arrive in arbitrary sizes.

use std::fs::File;
use std::path::Path;

use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Async, Fft, FixedAsync, FixedSync, Resampler, SincInterpolationParameters};
use symphonia::core::codecs::audio::AudioDecoderOptions;
use symphonia::core::errors::Error as DecodeError;
use symphonia::core::formats::probe::Hint;
use symphonia::core::formats::{FormatOptions, TrackType};
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;

use crate::error::{Error, Result};

/// Input frames per resampler call. About 21 ms at 48 kHz: short enough for the live stream.
const CHUNK: usize = 1024;

/// Rate pairs whose FFT block (`rate / gcd`) would exceed this use the sinc resampler instead.
const MAX_FFT_BLOCK: u32 = 1024;

/// Decodes an audio file, mixes it down to mono and resamples it to `target_rate`.
///
/// Samples are in [-1, 1]. A file without any audio samples is an error.
pub fn read_audio(path: &Path, target_rate: u32) -> Result<Vec<f32>> {
    let (samples, rate) = decode_mono(path)?;
    let audio_err = |msg: String| Error::Audio { path: path.to_path_buf(), msg };
    if samples.is_empty() {
        return Err(audio_err("file contains no audio samples".into()));
    }
    let mut samples = if rate == target_rate {
        samples
    } else {
        tracing::debug!("resampling {} from {rate} Hz to {target_rate} Hz", path.display());
        resample(&samples, rate, target_rate).map_err(|e| audio_err(e.to_string()))?
    };
    for x in &mut samples {
        *x = if x.is_finite() { x.clamp(-1.0, 1.0) } else { 0.0 };
    }
    Ok(samples)
}

/// Decodes the default audio track of `path` into mono samples and returns them with their rate.
fn decode_mono(path: &Path) -> Result<(Vec<f32>, u32)> {
    let fail = |msg: String| Error::Audio { path: path.to_path_buf(), msg };
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    if file.metadata().map_err(|e| Error::io(path, e))?.len() == 0 {
        return Err(fail("file is empty".into()));
    }
    let stream = MediaSourceStream::new(Box::new(file), Default::default());
    let mut hint = Hint::new();
    if let Some(ext) = path.extension().and_then(|e| e.to_str()) {
        hint.with_extension(ext);
    }
    let mut format = symphonia::default::get_probe()
        .probe(&hint, stream, FormatOptions::default(), MetadataOptions::default())
        .map_err(|e| fail(format!("not a readable audio file: {e}")))?;
    let track = format.default_track(TrackType::Audio).ok_or_else(|| fail("no audio track".into()))?;
    let params = track.codec_params.as_ref().and_then(|p| p.audio()).ok_or_else(|| fail("no audio track".into()))?;
    let mut decoder = symphonia::default::get_codecs()
        .make_audio_decoder(params, &AudioDecoderOptions::default())
        .map_err(|e| fail(format!("unsupported codec: {e}")))?;
    let track_id = track.id;
    let mut rate = params.sample_rate;

    let mut mono = Vec::new();
    let mut frame = Vec::<f32>::new();
    let mut last_error = None;
    loop {
        let packet = match format.next_packet() {
            Ok(Some(packet)) => packet,
            Ok(None) => break,
            Err(DecodeError::ResetRequired) => {
                tracing::warn!("{}: stream changes mid-file; reading only the first part", path.display());
                break;
            }
            Err(DecodeError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof && !mono.is_empty() => {
                tracing::warn!("{}: file is truncated; keeping what was decoded", path.display());
                break;
            }
            Err(e) => return Err(fail(format!("read error: {e}"))),
        };
        if packet.track_id != track_id {
            continue;
        }
        match decoder.decode(&packet) {
            Ok(buf) => {
                let channels = buf.spec().channels().count().max(1);
                rate = Some(buf.spec().rate());
                buf.copy_to_vec_interleaved(&mut frame);
                let mix = frame.chunks_exact(channels);
                mono.extend(mix.map(|c| c.iter().sum::<f32>() / channels as f32));
            }
            Err(DecodeError::DecodeError(e)) => {
                tracing::warn!("{}: skipping a damaged packet: {e}", path.display());
                last_error = Some(e);
            }
            Err(e) => return Err(fail(format!("decode error: {e}"))),
        }
    }
    if let (true, Some(e)) = (mono.is_empty(), last_error) {
        return Err(fail(format!("decode error: {e}")));
    }
    let rate = rate.filter(|&r| r > 0).ok_or_else(|| fail("unknown sample rate".into()))?;
    Ok((mono, rate))
}

/// Resamples a whole mono clip from `from` Hz to `to` Hz. The output has
/// `round(len * to / from)` samples and is aligned with the input (the filter delay is removed).
pub fn resample(samples: &[f32], from: u32, to: u32) -> Result<Vec<f32>> {
    let mut resampler = StreamResampler::new(from, to)?;
    let expected = samples.len() as u64 * u64::from(to) / u64::from(from);
    let mut out = Vec::with_capacity(expected as usize + 2);
    resampler.process(samples, &mut out)?;
    resampler.flush(&mut out);
    Ok(out)
}

/// The largest input gain the daemon and `kokichi run` accept, either way, in dB.
pub const MAX_GAIN_DB: f32 = 40.0;

/// Whether `db` is a gain the daemon and `kokichi run` accept (finite, within ±[`MAX_GAIN_DB`]).
pub fn gain_db_ok(db: f32) -> bool {
    db.abs() <= MAX_GAIN_DB
}

/// The amplitude factor of a gain of `db` decibels.
pub fn gain_factor(db: f32) -> f32 {
    10f32.powf(db / 20.0)
}

/// Scales `samples` by `factor` (see [`gain_factor`]), clamped to [-1, 1] as a sound card would.
///
/// kokichi-tiny hears quiet speech far worse than speech peaking near full scale (see
/// `docs/kokichi-tiny.md`), and a laptop microphone often peaks 20-30 dB below it.
pub fn apply_gain(samples: &mut [f32], factor: f32) {
    if factor == 1.0 {
        return;
    }
    for x in samples {
        *x = (*x * factor).clamp(-1.0, 1.0);
    }
}

/// Writes mono samples as a 16-bit PCM wav file. Samples are clamped to [-1, 1].
pub fn write_wav(path: &Path, samples: &[f32], rate: u32) -> Result<()> {
    let spec = wav_spec(rate, 16, hound::SampleFormat::Int);
    write_samples(path, spec, |w| {
        for &x in samples {
            w.write_sample((x.clamp(-1.0, 1.0) * 32767.0).round() as i16)?;
        }
        Ok(())
    })
}

/// Writes mono samples as a 32-bit float wav file, unchanged (for exact round trips).
pub fn write_wav_f32(path: &Path, samples: &[f32], rate: u32) -> Result<()> {
    let spec = wav_spec(rate, 32, hound::SampleFormat::Float);
    write_samples(path, spec, |w| samples.iter().try_for_each(|&x| w.write_sample(x)))
}

fn wav_spec(rate: u32, bits: u16, sample_format: hound::SampleFormat) -> hound::WavSpec {
    hound::WavSpec { channels: 1, sample_rate: rate, bits_per_sample: bits, sample_format }
}

type WavWriter = hound::WavWriter<std::io::BufWriter<File>>;

fn write_samples(
    path: &Path,
    spec: hound::WavSpec,
    write: impl FnOnce(&mut WavWriter) -> hound::Result<()>,
) -> Result<()> {
    let wav_err = |e: hound::Error| match e {
        hound::Error::IoError(e) => Error::io(path, e),
        e => Error::Audio { path: path.to_path_buf(), msg: format!("cannot write wav: {e}") },
    };
    let mut writer = hound::WavWriter::create(path, spec).map_err(wav_err)?;
    write(&mut writer).map_err(wav_err)?;
    writer.finalize().map_err(wav_err)
}

/// Converts a mono stream between two sample rates, chunk by chunk.
///
/// Input may come in any chunk size; samples that do not fill a resampler block yet are kept
/// for the next call. The filter delay is dropped at the start, so the output lines up with the
/// input (exactly for the usual rate pairs, within one output sample for odd pairs that need
/// the sinc resampler), and [`flush`](Self::flush) emits the tail, so that the total output is
/// `round(total_input * to / from)` samples. Buffers are allocated once in [`new`](Self::new).
/// Output is produced in blocks of [`CHUNK`] input samples, so it lags the input by up to one
/// block plus the filter delay.
pub struct StreamResampler {
    /// `None` when both rates match: samples pass through untouched.
    resampler: Option<Box<dyn Resampler<f32>>>,
    from: u32,
    to: u32,
    /// Input samples waiting for a full resampler block.
    pending: Vec<f32>,
    /// Output of one resampler call.
    scratch: Vec<f32>,
    /// Output frames of the filter delay still to drop.
    skip: usize,
    /// Input samples received and output samples emitted since the last flush.
    consumed: u64,
    produced: u64,
}

impl StreamResampler {
    /// A resampler from `from` Hz to `to` Hz. Both rates must be above zero.
    pub fn new(from: u32, to: u32) -> Result<Self> {
        if from == 0 || to == 0 {
            return Err(Error::config("sample rate", format!("{from} Hz -> {to} Hz: rates must be above zero")));
        }
        let resampler = if from == to { None } else { Some(make_resampler(from, to)?) };
        let (pending, scratch, skip) = match &resampler {
            Some(r) => (Vec::with_capacity(r.input_frames_max()), vec![0.0; r.output_frames_max()], r.output_delay()),
            None => (Vec::new(), Vec::new(), 0),
        };
        Ok(Self { resampler, from, to, pending, scratch, skip, consumed: 0, produced: 0 })
    }

    /// Input and output rates, in Hz.
    pub fn rates(&self) -> (u32, u32) {
        (self.from, self.to)
    }

    /// Resamples `input` and appends every output sample that is ready to `out`.
    pub fn process(&mut self, input: &[f32], out: &mut Vec<f32>) -> Result<()> {
        let Some(resampler) = &self.resampler else {
            out.extend_from_slice(input);
            return Ok(());
        };
        self.consumed += input.len() as u64;
        let need = resampler.input_frames_next();
        let mut rest = input;
        while !rest.is_empty() {
            let take = need.saturating_sub(self.pending.len()).min(rest.len());
            self.pending.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.pending.len() >= need {
                self.run_block(out, u64::MAX)?;
            }
        }
        Ok(())
    }

    /// Emits the remaining output (the held-back input and the filter tail) and resets the
    /// resampler, so it can start a new stream.
    pub fn flush(&mut self, out: &mut Vec<f32>) {
        let Some(resampler) = &self.resampler else {
            return;
        };
        let target = (self.consumed * u64::from(self.to) + u64::from(self.from) / 2) / u64::from(self.from);
        let need = resampler.input_frames_next();
        let mut idle = 0;
        while self.produced < target && idle < 16 {
            self.pending.resize(need, 0.0);
            let before = self.produced;
            if let Err(e) = self.run_block(out, target) {
                tracing::error!("resampler flush {} -> {} Hz failed: {e}", self.from, self.to);
                break;
            }
            idle = if self.produced == before { idle + 1 } else { 0 };
        }
        if self.produced < target {
            // Only reachable if the resampler misbehaves; keep the promised length anyway.
            out.resize(out.len() + (target - self.produced) as usize, 0.0);
        }
        self.reset();
    }

    /// Drops all buffered samples and filter state.
    pub fn reset(&mut self) {
        if let Some(resampler) = &mut self.resampler {
            resampler.reset();
            self.skip = resampler.output_delay();
        }
        self.pending.clear();
        self.consumed = 0;
        self.produced = 0;
    }

    /// Runs one full block of `pending` through the resampler and appends at most
    /// `limit - produced` output samples after dropping the filter delay.
    fn run_block(&mut self, out: &mut Vec<f32>, limit: u64) -> Result<()> {
        let Some(resampler) = &mut self.resampler else {
            return Ok(());
        };
        let rates = (self.from, self.to);
        let fail = |e: String| Error::input(format!("resampling {} -> {} Hz: {e}", rates.0, rates.1));
        let frames_in = self.pending.len();
        let frames_out = self.scratch.len();
        let input = InterleavedSlice::new(&self.pending[..], 1, frames_in).map_err(|e| fail(e.to_string()))?;
        let mut output =
            InterleavedSlice::new_mut(&mut self.scratch[..], 1, frames_out).map_err(|e| fail(e.to_string()))?;
        let (_, written) = resampler.process_into_buffer(&input, &mut output, None).map_err(|e| fail(e.to_string()))?;
        self.pending.clear();
        let dropped = self.skip.min(written);
        self.skip -= dropped;
        let room = usize::try_from(limit.saturating_sub(self.produced)).unwrap_or(usize::MAX);
        let ready = self.scratch.get(dropped..written).unwrap_or_default();
        let ready = &ready[..ready.len().min(room)];
        out.extend_from_slice(ready);
        self.produced += ready.len() as u64;
        Ok(())
    }
}

/// An FFT resampler for the usual rate pairs, a sinc one when the rates share no large divisor.
fn make_resampler(from: u32, to: u32) -> Result<Box<dyn Resampler<f32>>> {
    let fail = |e: rubato::ResamplerConstructionError| {
        Error::config("sample rate", format!("cannot resample {from} -> {to} Hz: {e}"))
    };
    let gcd = gcd(from, to);
    if from / gcd <= MAX_FFT_BLOCK && to / gcd <= MAX_FFT_BLOCK {
        let fft = Fft::<f32>::new(from as usize, to as usize, CHUNK, 1, FixedSync::Input).map_err(fail)?;
        Ok(Box::new(fft))
    } else {
        let ratio = f64::from(to) / f64::from(from);
        let params = SincInterpolationParameters::default();
        let sinc = Async::<f32>::new_sinc(ratio, 1.0, &params, CHUNK, 1, FixedAsync::Input).map_err(fail)?;
        Ok(Box::new(sinc))
    }
}

fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn temp_file(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("kokichi-audio-{}-{name}", std::process::id()))
    }

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/audio").join(name)
    }

    fn sine(freq: f32, rate: u32, len: usize, amp: f32) -> Vec<f32> {
        let w = 2.0 * std::f32::consts::PI * freq / rate as f32;
        (0..len).map(|i| amp * (w * i as f32).sin()).collect()
    }

    /// Sign changes, skipping `edge` samples at both ends.
    fn zero_crossings(x: &[f32], edge: usize) -> usize {
        let x = &x[edge..x.len() - edge];
        x.windows(2).filter(|w| (w[0] < 0.0) != (w[1] < 0.0)).count()
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
    }

    #[test]
    fn gain_scales_by_decibels_and_clamps() {
        let mut x = vec![0.05, -0.05, 0.4, -0.9];
        apply_gain(&mut x, gain_factor(0.0));
        assert_eq!(x, vec![0.05, -0.05, 0.4, -0.9]);
        apply_gain(&mut x, gain_factor(20.0));
        let want = [0.5, -0.5, 1.0, -1.0];
        assert!(max_diff(&x, &want) < 1e-6, "{x:?}");
        apply_gain(&mut x, gain_factor(-6.0206));
        assert!(max_diff(&x, &[0.25, -0.25, 0.5, -0.5]) < 1e-5, "{x:?}");
        assert!(gain_db_ok(-40.0) && gain_db_ok(12.5));
        assert!(!gain_db_ok(40.5) && !gain_db_ok(f32::NAN) && !gain_db_ok(f32::NEG_INFINITY));
    }

    #[test]
    fn wav_16bit_round_trip() {
        let path = temp_file("rt16.wav");
        let x = sine(440.0, 24000, 2400, 0.8);
        write_wav(&path, &x, 24000).unwrap();
        let y = read_audio(&path, 24000).unwrap();
        assert_eq!(y.len(), x.len());
        assert!(max_diff(&x, &y) < 2.0 / 32768.0);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn wav_f32_round_trip_is_exact() {
        let path = temp_file("rtf32.wav");
        let x = sine(440.0, 16000, 1600, 0.9);
        write_wav_f32(&path, &x, 16000).unwrap();
        assert_eq!(read_audio(&path, 16000).unwrap(), x);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn write_wav_clamps() {
        let path = temp_file("clamp.wav");
        write_wav(&path, &[2.0, -3.0, 0.5], 8000).unwrap();
        let y = read_audio(&path, 8000).unwrap();
        assert!((y[0] - 1.0).abs() < 1e-3 && (y[1] + 1.0).abs() < 1e-3);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn reads_8_24_32_bit_int_wav() {
        let x = sine(300.0, 8000, 800, 0.7);
        for bits in [8u16, 24, 32] {
            let path = temp_file(&format!("int{bits}.wav"));
            let spec = wav_spec(8000, bits, hound::SampleFormat::Int);
            let scale = (1i64 << (bits - 1)) as f32 - 1.0;
            let mut w = hound::WavWriter::create(&path, spec).unwrap();
            for &s in &x {
                if bits == 8 {
                    w.write_sample((s * scale).round() as i8).unwrap();
                } else {
                    w.write_sample((s as f64 * scale as f64).round() as i32).unwrap();
                }
            }
            w.finalize().unwrap();
            let y = read_audio(&path, 8000).unwrap();
            assert_eq!(y.len(), x.len(), "{bits} bit");
            assert!(max_diff(&x, &y) < 2.0 / scale, "{bits} bit: {}", max_diff(&x, &y));
            std::fs::remove_file(&path).unwrap();
        }
    }

    #[test]
    fn stereo_is_mixed_to_mono() {
        let path = temp_file("stereo.wav");
        let spec = hound::WavSpec { channels: 2, ..wav_spec(8000, 32, hound::SampleFormat::Float) };
        let mut w = hound::WavWriter::create(&path, spec).unwrap();
        for i in 0..100 {
            w.write_sample(0.5f32).unwrap();
            w.write_sample(if i % 2 == 0 { -0.25f32 } else { 0.25 }).unwrap();
        }
        w.finalize().unwrap();
        let y = read_audio(&path, 8000).unwrap();
        assert_eq!(y.len(), 100);
        assert_eq!((y[0], y[1]), (0.125, 0.375));
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn resampling_keeps_length_and_pitch() {
        for from in [8000u32, 16000, 44100, 48000, 44101] {
            let n = from as usize / 2;
            let x = sine(1000.0, from, n, 0.5);
            let y = resample(&x, from, 24000).unwrap();
            let expected = n * 24000 / from as usize;
            assert!(y.len().abs_diff(expected) <= 1, "{from}: {} vs {expected}", y.len());
            // 0.5 s of 1 kHz has 1000 crossings; the edges lose a few.
            let zc = zero_crossings(&y, 240);
            assert!(zc.abs_diff(1000 - 40) <= 3, "{from}: {zc} crossings");
            // Aligned with the input: the resampled sine matches an ideal one in the middle,
            // exactly on the FFT path, within a fraction of a sample on the sinc path (44101).
            let ideal = sine(1000.0, 24000, y.len(), 0.5);
            let mid = y.len() / 4..3 * y.len() / 4;
            let tolerance = if from == 44101 { 0.06 } else { 0.001 };
            let diff = max_diff(&y[mid.clone()], &ideal[mid]);
            assert!(diff < tolerance, "{from}: not aligned, off by {diff}");
        }
    }

    #[test]
    fn read_audio_resamples_files() {
        let path = temp_file("r44.wav");
        write_wav_f32(&path, &sine(1000.0, 44100, 44100, 0.5), 44100).unwrap();
        let y = read_audio(&path, 24000).unwrap();
        assert!(y.len().abs_diff(24000) <= 1);
        assert!(zero_crossings(&y, 240).abs_diff(2000 - 40) <= 3);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn stream_matches_one_shot() {
        for (from, to) in [(48000u32, 24000u32), (44100, 24000), (24000, 48000), (16000, 24000), (44101, 24000)] {
            let x = sine(1000.0, from, from as usize * 3 / 10, 0.5);
            let whole = resample(&x, from, to).unwrap();
            let mut stream = StreamResampler::new(from, to).unwrap();
            let mut out = Vec::new();
            let mut seed = 12345u32;
            let mut rest = &x[..];
            while !rest.is_empty() {
                seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
                let size = ((seed >> 16) as usize % 700).min(rest.len());
                stream.process(&rest[..size], &mut out).unwrap();
                rest = &rest[size..];
            }
            stream.flush(&mut out);
            assert!(out.len().abs_diff(whole.len()) <= 2, "{from}->{to}");
            let n = out.len().min(whole.len());
            assert!(max_diff(&out[..n], &whole[..n]) < 1e-3, "{from}->{to}");
            // After a flush the resampler starts over.
            let mut again = Vec::new();
            stream.process(&x, &mut again).unwrap();
            stream.flush(&mut again);
            assert_eq!(again.len(), whole.len());
        }
    }

    #[test]
    fn stream_passes_through_equal_rates() {
        fn is_send<T: Send>() {}
        is_send::<StreamResampler>();
        let mut stream = StreamResampler::new(24000, 24000).unwrap();
        let mut out = Vec::new();
        stream.process(&[0.1, 0.2], &mut out).unwrap();
        stream.process(&[0.3], &mut out).unwrap();
        stream.flush(&mut out);
        assert_eq!(out, [0.1, 0.2, 0.3]);
        assert!(StreamResampler::new(0, 24000).is_err());
    }

    #[test]
    fn reads_flac_and_ogg_stereo() {
        for name in ["sine_1k_22050_stereo.flac", "sine_1k_22050_stereo.ogg"] {
            let y = read_audio(&fixture(name), 24000).unwrap();
            // 0.25 s at 22.05 kHz (5512 samples) -> about 6000 samples at 24 kHz.
            assert!(y.len().abs_diff(5999) <= 30, "{name}: {} samples", y.len());
            assert!(zero_crossings(&y, 240).abs_diff(500 - 40) <= 4, "{name}");
            let peak = y.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            assert!((peak - 0.5).abs() < 0.05, "{name}: peak {peak}");
        }
    }

    #[test]
    fn bad_files_are_errors_naming_the_file() {
        let valid = temp_file("valid.wav");
        write_wav(&valid, &sine(440.0, 8000, 800, 0.5), 8000).unwrap();
        let header = std::fs::read(&valid).unwrap();
        let mut noise = Vec::new();
        let mut seed = 7u32;
        for _ in 0..4096 {
            seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
            noise.push((seed >> 24) as u8);
        }
        let cases: [(&str, &[u8]); 4] =
            [("noise.wav", &noise), ("empty.wav", &[]), ("header.wav", &header[..20]), ("nodata.wav", &header[..44])];
        for (name, bytes) in cases {
            let path = temp_file(name);
            std::fs::write(&path, bytes).unwrap();
            let err = read_audio(&path, 24000).unwrap_err().to_string();
            assert!(err.contains(name), "{name}: {err}");
            std::fs::remove_file(&path).unwrap();
        }
        let missing = temp_file("missing.wav");
        assert!(read_audio(&missing, 24000).unwrap_err().to_string().contains("missing.wav"));
        std::fs::remove_file(&valid).unwrap();
    }
}
