//! Bad input gives one clear error line and a non-zero exit status.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::fixture;

fn tmp(name: &str) -> PathBuf {
    common::scratch("cli", name)
}

/// Runs kokichi on the CPU backend; returns (success, stderr's error line).
fn kokichi(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kokichi"))
        .arg("--backend")
        .arg("cpu")
        .args(args)
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert!(errors.len() <= 1, "more than one error line: {stderr}");
    (out.status.success(), errors.first().map(|s| s.to_string()).unwrap_or(stderr))
}

fn mimi_args() -> Vec<String> {
    vec![
        "--mimi".into(),
        fixture("mimi_a/mimi.safetensors").display().to_string(),
        "--config".into(),
        fixture("mimi_a/config.json").display().to_string(),
    ]
}

#[test]
fn corrupt_audio_is_named() {
    let bad = tmp("corrupt.wav");
    std::fs::write(&bad, b"RIFF\x10\x00\x00\x00WAVEfmt garbage garbage").unwrap();
    let out = tmp("codes.safetensors");
    let mut args = mimi_args();
    args.extend(["--input".into(), bad.display().to_string(), "--output".into(), out.display().to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut full = vec!["encode"];
    full.extend(args);
    let (ok, err) = kokichi(&full);
    assert!(!ok);
    assert!(err.contains("corrupt.wav"), "{err}");
}

#[test]
fn codes_of_the_wrong_shape_are_named() {
    let codes = tmp("flat.safetensors");
    kokichi::weights::write_tensors(
        &codes,
        vec![("codes".into(), vec![8, 4], kokichi::weights::OutTensor::I64(vec![0; 32]))],
    )
    .unwrap();
    let wav = tmp("out.wav");
    let mut full: Vec<String> = vec!["decode".into()];
    full.extend(mimi_args());
    full.extend(["--input".into(), codes.display().to_string(), "--output".into(), wav.display().to_string()]);
    let (ok, err) = kokichi(&full.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!ok);
    assert!(err.contains("flat.safetensors") && err.contains("codes") && err.contains("[8, 4]"), "{err}");
    // Codes outside the codebook are named too.
    kokichi::weights::write_tensors(
        &codes,
        vec![("codes".into(), vec![1, 2, 3], kokichi::weights::OutTensor::I64(vec![0, 1, 2, 3, 4, 999]))],
    )
    .unwrap();
    let (ok, err) = kokichi(&full.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!ok);
    assert!(err.contains("999"), "{err}");
}

#[test]
fn checkpoint_of_the_wrong_size_is_named() {
    // The tiny checkpoint with the real Mimi's configuration: the first tensor does not fit.
    let codes = tmp("c.safetensors");
    let wav = fixture("speech/question.wav");
    let (ok, err) = kokichi(&[
        "encode",
        "--mimi",
        fixture("mimi_a/mimi.safetensors").to_str().unwrap(),
        "--input",
        wav.to_str().unwrap(),
        "--output",
        codes.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(err.contains("mimi.safetensors") && err.contains("shape"), "{err}");
    // A truncated checkpoint.
    let cut = tmp("cut.safetensors");
    let bytes = std::fs::read(fixture("mimi_a/mimi.safetensors")).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let mut full: Vec<String> = vec!["encode".into(), "--mimi".into(), cut.display().to_string(), "--config".into()];
    full.push(fixture("mimi_a/config.json").display().to_string());
    full.extend(["--input".into(), wav.display().to_string(), "--output".into(), codes.display().to_string()]);
    let (ok, err) = kokichi(&full.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!ok);
    assert!(err.contains("cut.safetensors") && err.contains("truncated"), "{err}");
}

#[test]
fn missing_model_folder_is_named() {
    let (ok, err) = kokichi(&["run", "--model", "/nonexistent/model", "--input", "x.wav", "--output", "y.wav"]);
    assert!(!ok);
    assert!(err.contains("/nonexistent/model"), "{err}");
}

#[test]
fn mismatched_config_and_weights_are_named() {
    let dir = tmp("mismatch");
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["mimi.safetensors", "model.safetensors"] {
        std::fs::copy(fixture("tiny_model").join(f), dir.join(f)).unwrap();
    }
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("tiny_model/config.json")).unwrap()).unwrap();
    cfg["lm"]["num_layers"] = serde_json::json!(3);
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    let out = tmp("answer.wav");
    let (ok, err) = kokichi(&[
        "run",
        "--model",
        dir.to_str().unwrap(),
        "--input",
        fixture("speech/question.wav").to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(err.contains("model.safetensors") && err.contains("transformer.layers.2"), "{err}");
}

/// `kokichi serve` checks its settings before loading anything: a bad value, in the settings
/// file or on the command line, is one line naming the key, and a flag overrides the file.
#[test]
fn serve_settings_errors_name_the_key() {
    let file = |name: &str, text: &str| {
        let path = tmp(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let bad_type = file("bad_type.toml", "model = \"kokichi-tiny\"\nmax_sessions = \"many\"\n");
    let (ok, err) = kokichi(&["serve", "--config", &bad_type]);
    assert!(!ok);
    assert!(err.contains("bad_type.toml") && err.contains("max_sessions"), "{err}");
    let misspelt = file("misspelt.toml", "modle = \"kokichi-tiny\"\n");
    let (ok, err) = kokichi(&["serve", "--config", &misspelt]);
    assert!(!ok);
    assert!(err.contains("misspelt.toml") && err.contains("modle"), "{err}");
    let out_of_range = file("gain.toml", "input_gain = 55.0\n");
    let (ok, err) = kokichi(&["serve", "--config", &out_of_range]);
    assert!(!ok);
    assert!(err.contains("input_gain") && err.contains("dB"), "{err}");
    // The file's value is fine; the flag's, which wins, is not.
    let good = file("good.toml", "max_sessions = 2\ninput_gain = 3.0\n");
    let (ok, err) = kokichi(&["serve", "--config", &good, "--max-sessions", "0"]);
    assert!(!ok);
    assert!(err.contains("max_sessions"), "{err}");
    let (ok, err) = kokichi(&["serve", "--config", &good, "--input-gain", "-70"]);
    assert!(!ok);
    assert!(err.contains("input_gain"), "{err}");
    let (ok, err) = kokichi(&["serve", "--config", &good, "--bind", "nowhere"]);
    assert!(!ok);
    assert!(err.contains("bind"), "{err}");
}
