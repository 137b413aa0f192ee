//! `kokichi encode` and `kokichi decode` end to end, streaming and `--batch`, on the cpu backend:
//! the codes of a file are the reference `moshi` package's exactly, and its decode of the
//! reference codes is the reference audio within 1e-4 plus the 16-bit wav's rounding.
//! `mimi_parity` tests the same numbers through the library; this tests what the commands add
//! (reading and padding the file, the `[1, Q, T]` layout, writing the wav).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Expected, assert_close, fixture};
use kokichi::weights::{self, OutTensor};

fn tmp(name: &str) -> PathBuf {
    common::scratch("cli-codec", name)
}

/// Runs `kokichi --backend cpu <cmd> --mimi .. --config .. <args>` and panics with its stderr on failure.
fn kokichi(cmd: &str, args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_kokichi"))
        .args(["--backend", "cpu", cmd, "--mimi"])
        .arg(fixture("mimi_a/mimi.safetensors"))
        .arg("--config")
        .arg(fixture("mimi_a/config.json"))
        .args(args)
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    assert!(out.status.success(), "kokichi {cmd} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Row `r` of a `[B, N]` tensor of the expected file.
fn row<T: Clone>(values: &[T], rows: usize, r: usize) -> Vec<T> {
    let n = values.len() / rows;
    values[r * n..(r + 1) * n].to_vec()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn encode_gives_the_reference_codes_streaming_and_batch() {
    let exp = Expected::open(fixture("mimi_a/expected.safetensors"));
    let [rows, _] = exp.shape("input")[..] else { panic!("input rank") };
    let [_, q, t] = exp.shape("batch.codes")[..] else { panic!("codes rank") };
    for r in 0..rows {
        // A float wav holds the input samples exactly.
        let wav = tmp(&format!("input-{r}.wav"));
        kokichi::audio::write_wav_f32(&wav, &row(&exp.f32("input"), rows, r), 24000).unwrap();
        for (mode, flags) in [("stream", vec![]), ("batch", vec!["--batch"])] {
            let out = tmp(&format!("codes-{r}-{mode}.safetensors"));
            let mut args = vec!["--codebooks", "8", "--input", path(&wav), "--output", path(&out)];
            args.extend(&flags);
            kokichi("encode", &args);
            let (codes, shape) = weights::read_int_tensor(&out, "codes").unwrap();
            assert_eq!(shape, vec![1, q, t], "row {r} {mode}: codes shape");
            assert_eq!(codes, row(&exp.i64(&format!("{mode}.codes")), rows, r), "row {r} {mode}: codes");
        }
    }
}

#[test]
fn decode_gives_the_reference_audio_streaming_and_batch() {
    let exp = Expected::open(fixture("mimi_a/expected.safetensors"));
    let [rows, q, t] = exp.shape("batch.codes")[..] else { panic!("codes rank") };
    for r in 0..rows {
        for (mode, flags) in [("stream", vec![]), ("batch", vec!["--batch"])] {
            let codes = tmp(&format!("ref-codes-{r}-{mode}.safetensors"));
            let values = row(&exp.i64(&format!("{mode}.codes")), rows, r);
            weights::write_tensors(&codes, vec![("codes".into(), vec![1, q, t], OutTensor::I64(values))]).unwrap();
            let wav = tmp(&format!("out-{r}-{mode}.wav"));
            let mut args = vec!["--input", path(&codes), "--output", path(&wav)];
            args.extend(&flags);
            kokichi("decode", &args);
            let got = kokichi::audio::read_audio(&wav, 24000).unwrap();
            // The wav is 16-bit: the reference clamped and rounded to its grid, 1e-4 beyond that.
            let want: Vec<f32> = row(&exp.f32(&format!("{mode}.audio")), rows, r)
                .iter()
                .map(|x| (x.clamp(-1.0, 1.0) * 32767.0).round() / 32767.0)
                .collect();
            assert_close(&format!("row {r} {mode} audio"), &got, &want, 1e-4);
        }
    }
}
