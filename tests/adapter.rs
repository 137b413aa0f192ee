//! Vocabulary adapters (docs/adapter.md): loading one extends the text vocabulary with the
//! adapter's rows laid out as documented, the tokenizer and `Engine::text_piece` name the new
//! ids, a model without an adapter is unchanged, each malformed adapter is one clear error, and
//! `tokens train` moves the 2N new rows only while its loss goes down.

mod common;

use std::path::{Path, PathBuf};

use burn::tensor::DType;
use common::*;
use kokichi::adapter::Adapter;
use kokichi::backend::Precision;
use kokichi::lm::{GenConfig, LmConfig, LmModel};
use kokichi::model_dir::{self, ModelFiles};
use kokichi::session::{Engine, Taps};
use kokichi::train::lm::TokenSet;
use kokichi::train::tokens::{self, TokenTrain};
use kokichi::weights::{self, OutTensor, WeightFile};

fn tiny_files() -> ModelFiles {
    model_dir::resolve(fixture("tiny_model").to_str().unwrap_or_default()).expect("fixture")
}

/// An adapter of `names` for a model of width `d`, rows drawn from `seed`.
fn adapter(names: &[&str], d: usize, seed: u32) -> Adapter {
    let n = names.len();
    let val = |i: usize, k: u32| {
        ((i as u32).wrapping_mul(2654435761).wrapping_add(seed * 977 + k) % 1000) as f32 / 500.0 - 1.0
    };
    Adapter {
        path: PathBuf::new(),
        tokens: names.iter().map(|s| s.to_string()).collect(),
        d_model: d,
        model: None,
        text_emb: (0..n * d).map(|i| val(i, 1)).collect(),
        text_linear: (0..n * d).map(|i| val(i, 2)).collect(),
        text_linear_bias: None,
        gist: None,
    }
}

fn written(a: &Adapter, tag: &str) -> PathBuf {
    let dir = scratch("adapter", tag);
    a.write(&dir).expect("write adapter");
    dir
}

/// Greedy text tokens and the top text logits of `frames` frames of the fixture question.
fn run(engine: &Engine, frames: usize) -> Vec<(Option<i64>, Vec<f32>)> {
    let frame = engine.frame_size();
    let mut pcm = kokichi::audio::read_audio(&fixture("speech/question.wav"), 24000).expect("question");
    pcm.resize(frames * frame, 0.0);
    let mut s = engine.init_session(GenConfig::greedy()).expect("session");
    s.taps = Taps { logits: 5, ..Taps::default() };
    pcm.chunks_exact(frame)
        .map(|c| {
            let out = engine.step(&mut [&mut s], c).expect("step").remove(0);
            (out.text, out.latents.logits.map(|l| l.values).unwrap_or_default())
        })
        .collect()
}

#[test]
fn without_an_adapter_the_model_is_unchanged() {
    let files = tiny_files();
    for (kind, device) in devices() {
        let plain = Engine::load_as(&files, &device, Precision::F32).expect("load");
        let none = Engine::load_with_adapter(&files, &device, Precision::F32, None).expect("load");
        assert_eq!(none.lm.config, files.lm_config, "{kind}: config (text_card) unchanged");
        assert_eq!(run(&plain, 12), run(&none, 12), "{kind}: greedy tokens and logits");
        // The text tables are the file's, bit for bit.
        let mut w = WeightFile::open(&files.lm, &device, DType::F32).expect("open");
        let c = &files.lm_config;
        let want = w.host("text_emb.weight", &[c.text_card + 1, c.dim]).expect("text_emb");
        assert_eq!(floats(none.lm.text_emb.val()), want, "{kind}: text_emb");
    }
}

#[test]
fn an_adapter_extends_the_vocabulary_as_documented() {
    let files = tiny_files();
    let c = files.lm_config.clone();
    let (v, d, dd, pad) = (c.text_card, c.dim, c.depformer_dim, c.existing_text_padding_id);
    let a = adapter(&["<clock>", "<lamp>"], d, 1);
    let dir = written(&a, "extend");
    for (kind, device) in devices() {
        let read = Adapter::read(&dir).expect("read");
        assert_eq!(read.tokens, a.tokens);
        let plain = Engine::load_as(&files, &device, Precision::F32).expect("load");
        let engine = Engine::load_with_adapter(&files, &device, Precision::F32, Some(read)).expect("load adapted");
        assert_eq!(engine.lm.config.text_card, v + 2, "{kind}: text_card grows by N");
        assert_eq!(engine.base_text_card(), v);
        // Embedding: old rows, the new rows, the initial token's row last.
        let old = floats(plain.lm.text_emb.val());
        let emb = floats(engine.lm.text_emb.val());
        assert_eq!(emb.len(), (v + 3) * d);
        assert_eq!(emb[..v * d], old[..v * d], "{kind}: old rows");
        assert_eq!(emb[v * d..(v + 2) * d], a.text_emb[..], "{kind}: new rows");
        assert_eq!(emb[(v + 2) * d..], old[v * d..], "{kind}: initial token's row moved last");
        // Head, held [d, v + N]: the new columns are the adapter's rows.
        let head = floats(engine.lm.text_linear.val());
        let old_head = floats(plain.lm.text_linear.val());
        for i in 0..d {
            assert_eq!(head[i * (v + 2)..i * (v + 2) + v], old_head[i * v..(i + 1) * v], "{kind}: head input {i}");
            for j in 0..2 {
                assert_eq!(head[i * (v + 2) + v + j], a.text_linear[j * d + i], "{kind}: head row {j}");
            }
        }
        // Depth text table: a copy of the padding row per new token.
        let dep = floats(engine.lm.depformer_text_emb.val());
        let old_dep = floats(plain.lm.depformer_text_emb.val());
        for j in 0..2 {
            assert_eq!(dep[(v + j) * dd..(v + j + 1) * dd], old_dep[pad * dd..(pad + 1) * dd], "{kind}: dep row {j}");
        }
        assert_eq!(dep[(v + 2) * dd..], old_dep[v * dd..], "{kind}: dep initial row");
        // Names: the tokenizer, text_piece and the ids.
        assert_eq!(engine.text_piece(v as i64), Some("<clock>".to_string()));
        assert_eq!(engine.text_piece(v as i64 + 1), Some("<lamp>".to_string()));
        assert_eq!(engine.text_piece(v as i64 + 2), None, "{kind}: the initial token is no piece");
        assert_eq!(engine.special_id("<lamp>"), Some(v as i64 + 1));
        let tok = engine.tokenizer.as_ref().expect("tokenizer");
        assert_eq!(tok.decode_piece(v as u32).as_deref(), Some("<clock>"));
        // Old tokens still score as before (the head only gained rows), and the model runs.
        let (a_out, p_out) = (run(&engine, 12), run(&plain, 12));
        assert_eq!(a_out.len(), p_out.len());
    }
}

#[test]
fn new_tokens_fire_when_their_head_row_wins() {
    // A head row far along the output direction wins every frame: the token is sampled, named,
    // and fed back through its embedding and the depth transformer's padding copy.
    let files = tiny_files();
    let d = files.lm_config.dim;
    let mut a = adapter(&["<always>"], d, 2);
    for (kind, device) in devices() {
        let plain = Engine::load_as(&files, &device, Precision::F32).expect("load");
        let mut s = plain.init_session(GenConfig::greedy()).expect("session");
        s.taps = Taps { lm: true, ..Taps::default() };
        let silence = vec![0f32; plain.frame_size()];
        let h = plain.step(&mut [&mut s], &silence).expect("step").remove(0).latents.lm.expect("lm tap");
        a.text_linear = h.iter().map(|x| x * 1e4).collect();
        let engine = Engine::load_with_adapter(&files, &device, Precision::F32, Some(a.clone())).expect("load");
        let out = run(&engine, 6);
        let v = files.lm_config.text_card as i64;
        let fired = out.iter().filter(|(t, _)| *t == Some(v)).count();
        assert!(fired >= 1, "{kind}: <always> never fired: {:?}", out.iter().map(|o| o.0).collect::<Vec<_>>());
    }
}

fn err_of(dir: &Path, files: &ModelFiles) -> String {
    let device = burn::prelude::Device::flex();
    match Adapter::read(dir).and_then(|a| Engine::load_with_adapter(files, &device, Precision::F32, Some(a))) {
        Ok(_) => panic!("{}: accepted", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_adapters_are_one_clear_line() {
    let files = tiny_files();
    let d = files.lm_config.dim;
    let check = |tag: &str, msg: String, want: &[&str]| {
        assert!(!msg.contains('\n'), "{tag}: several lines: {msg}");
        for w in want {
            assert!(msg.contains(w), "{tag}: `{w}` missing from: {msg}");
        }
    };
    // Wrong d_model.
    let dir = written(&adapter(&["<x>"], d + 4, 1), "width");
    check("width", err_of(&dir, &files), &["adapter.json", "d_model", &format!("{}", d + 4)]);
    // A name that is already a piece of the tokenizer.
    let tok = kokichi::tokenizer::Tokenizer::load(files.tokenizer.as_ref().expect("tokenizer")).expect("tok");
    let piece = tok.piece(10).expect("piece 10").to_string();
    let dir = written(&adapter(&[piece.as_str()], d, 1), "clash");
    check("clash", err_of(&dir, &files), &["adapter.json", "tokens", "already piece 10"]);
    // A name given twice (write refuses it, so the JSON is edited).
    let dir = written(&adapter(&["<a>", "<b>"], d, 1), "twice");
    let json = dir.join("adapter.json");
    std::fs::write(&json, std::fs::read_to_string(&json).unwrap().replace("<b>", "<a>")).unwrap();
    check("twice", err_of(&dir, &files), &["adapter.json", "tokens", "twice"]);
    // Bad JSON.
    let dir = written(&adapter(&["<a>"], d, 1), "json");
    std::fs::write(dir.join("adapter.json"), "{\"format\": \"kokichi-adapter\",").unwrap();
    check("json", err_of(&dir, &files), &["adapter.json", "invalid JSON"]);
    // Wrong format and version.
    let dir = written(&adapter(&["<a>"], d, 1), "format");
    let json = dir.join("adapter.json");
    std::fs::write(&json, std::fs::read_to_string(&json).unwrap().replace("\"version\": 1", "\"version\": 2")).unwrap();
    check("version", err_of(&dir, &files), &["adapter.json", "version"]);
    // Truncated tensors file.
    let dir = written(&adapter(&["<a>"], d, 1), "truncated");
    let st = dir.join("adapter.safetensors");
    let bytes = std::fs::read(&st).unwrap();
    std::fs::write(&st, &bytes[..bytes.len() - 7]).unwrap();
    check("truncated", err_of(&dir, &files), &["adapter.safetensors", "truncated or corrupt"]);
    // Missing tensor, wrong shape, bias, unexpected tensor.
    // (case, the tensors written, what the error must name)
    type Case<'a> = (&'a str, Vec<(String, Vec<usize>, OutTensor)>, &'a [&'a str]);
    let cases: Vec<Case> = vec![
        ("missing", vec![("text_emb".into(), vec![1, d], OutTensor::F32(vec![0.0; d]))], &["`text_linear`", "missing"]),
        (
            "shape",
            vec![
                ("text_emb".into(), vec![1, d], OutTensor::F32(vec![0.0; d])),
                ("text_linear".into(), vec![2, d], OutTensor::F32(vec![0.0; 2 * d])),
            ],
            &["`text_linear`", "[2, 32]", "expected [1, 32]"],
        ),
        (
            "bias",
            vec![
                ("text_emb".into(), vec![1, d], OutTensor::F32(vec![0.0; d])),
                ("text_linear".into(), vec![1, d], OutTensor::F32(vec![0.0; d])),
                ("text_linear_bias".into(), vec![1], OutTensor::F32(vec![0.0])),
            ],
            &["`text_linear_bias`", "no bias"],
        ),
        (
            "extra",
            vec![
                ("text_emb".into(), vec![1, d], OutTensor::F32(vec![0.0; d])),
                ("text_linear".into(), vec![1, d], OutTensor::F32(vec![0.0; d])),
                ("emb.0".into(), vec![1], OutTensor::F32(vec![0.0])),
            ],
            &["`emb.0`", "unexpected"],
        ),
    ];
    for (tag, tensors, want) in cases {
        let dir = written(&adapter(&["<a>"], d, 1), tag);
        weights::write_tensors(&dir.join("adapter.safetensors"), tensors).unwrap();
        let mut all = vec!["adapter.safetensors"];
        all.extend_from_slice(want);
        check(tag, err_of(&dir, &files), &all);
    }
    // A model whose text head is wider than its vocabulary.
    let dir = written(&adapter(&["<a>"], d, 1), "card-out");
    let mut wide = files.clone();
    wide.lm_config.text_card_out = Some(wide.lm_config.text_card + 1);
    check("card-out", err_of(&dir, &wide), &["adapter.json", "text_card_out"]);
}

#[test]
fn adapters_refuse_8_bit_text_tables() {
    // `kokichi quantize` stores tables as `NAME.q8` and `NAME.scale`.
    let files = tiny_files();
    let dir = scratch("adapter", "q8");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("model.safetensors");
    weights::write_tensors(
        &path,
        vec![
            ("text_emb.weight.q8".into(), vec![1, 1], OutTensor::U32(vec![0])),
            ("text_emb.weight.scale".into(), vec![1, 1], OutTensor::F32(vec![1.0])),
        ],
    )
    .unwrap();
    let device = burn::prelude::Device::flex();
    let mut w = WeightFile::open(&path, &device, DType::F16).unwrap().quantized(true);
    let err = adapter(&["<a>"], files.lm_config.dim, 1).apply(&mut w, &files.lm_config).unwrap_err().to_string();
    assert!(err.contains("8 bits") && err.contains("model.safetensors") && err.contains("text_emb.weight"), "{err}");
}

/// Random token sequences for `config` whose text stream is padding with token `new` at a frame
/// where audio stream 1 shows a marker code, and word tokens elsewhere.
fn marker_data(config: &LmConfig, n: usize, t: usize, new: i64) -> TokenSet {
    let k = config.n_q + 1;
    let mut values = vec![0i64; n * k * t];
    let mut state = 12345u64;
    let mut next = |m: u64| {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 33) % m
    };
    for r in 0..n {
        let at = 2 + next(t as u64 - 4) as usize;
        for s in 0..k {
            for i in 0..t {
                values[(r * k + s) * t + i] = if s == 0 {
                    if i == at { new } else { config.existing_text_padding_id as i64 }
                } else if s == 1 && i + 1 == at {
                    0
                } else {
                    1 + next(config.card as u64 - 1) as i64
                };
            }
        }
    }
    TokenSet { values, n, k, t }
}

/// Trains `<tick>` on marker data of a random tiny model with a gist of `gist` vectors; checks
/// that the loss went down, that every exported weight is the file's bit for bit but the new rows,
/// and that the adapter round-trips. Returns the trained adapter and model, and the data.
fn train_and_check(name: &str, gist: usize) -> (tokens::Trained, TokenSet) {
    let config = LmConfig::tiny();
    let device = burn::prelude::Device::flex();
    let dir = scratch("adapter", name);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("model.safetensors");
    let (lm, slots) = LmModel::random(config.clone(), &device, 3).expect("random model");
    weights::export(&lm, &slots, &path, false).expect("export");
    let v = config.text_card;
    let data = marker_data(&config, 16, 12, v as i64);
    let settings = TokenTrain { steps: 40, batch: 4, lr: 3e-2, gist, ..plain_training() };
    let trained = tokens::train(&path, &config, vec!["<tick>".into()], &data, &settings, &device.clone().autodiff())
        .expect("train");
    let l = &trained.losses;
    let (first, last) = (l[..5].iter().sum::<f32>() / 5.0, l[l.len() - 5..].iter().sum::<f32>() / 5.0);
    // Padding dominates the loss of a random model; only the new token's frames can improve.
    assert!(last < first - 0.2, "loss did not go down: {first} -> {last} ({l:?})");
    // Every weight of the trained model, exported, is the file's bit for bit but the new rows.
    let out = dir.join("trained.safetensors");
    weights::export(&trained.lm, &trained.slots, &out, false).expect("export trained");
    let (a, b) = (std::fs::read(&path).unwrap(), std::fs::read(&out).unwrap());
    let (before, after) =
        (safetensors::SafeTensors::deserialize(&a).unwrap(), safetensors::SafeTensors::deserialize(&b).unwrap());
    let mut names = before.names();
    names.sort();
    let mut after_names = after.names();
    after_names.sort();
    assert_eq!(names, after_names);
    let (d, dd, pad) = (config.dim, config.depformer_dim, config.existing_text_padding_id);
    let row = |t: &safetensors::tensor::TensorView, r: usize, w: usize| t.data()[r * w * 4..(r + 1) * w * 4].to_vec();
    let mut checked = 0;
    for name in names {
        let (x, y) = (before.tensor(name).unwrap(), after.tensor(name).unwrap());
        let (old_rows, width) = match name {
            "text_emb.weight" => (v + 1, d),
            "text_linear.weight" => (v, d),
            "depformer_text_emb.weight" => (v + 1, dd),
            _ => {
                assert_eq!(x.data(), y.data(), "{name} changed");
                checked += 1;
                continue;
            }
        };
        for r in 0..v {
            assert_eq!(row(&x, r, width), row(&y, r, width), "{name} row {r} changed");
        }
        if old_rows == v + 1 {
            assert_eq!(row(&x, v, width), row(&y, v + 1, width), "{name}: initial row");
        }
        let new_row: Vec<f32> =
            row(&y, v, width).chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
        match name {
            "text_emb.weight" => assert_eq!(new_row, trained.adapter.text_emb),
            "text_linear.weight" => assert_eq!(new_row, trained.adapter.text_linear),
            _ => assert_eq!(row(&y, v, width), row(&x, pad, width), "depth row of the new token: padding's"),
        }
    }
    assert!(checked > 20, "only {checked} tensors compared");
    // The trained rows moved from their start, and the adapter round-trips through its files.
    assert!(trained.adapter.text_linear.iter().any(|&x| x != 0.0));
    let adir = dir.join("adapter");
    trained.adapter.write(&adir).unwrap();
    let back = Adapter::read(&adir).unwrap();
    assert_eq!(
        (back.tokens.clone(), back.text_emb.clone(), back.gist.clone()),
        (trained.adapter.tokens.clone(), trained.adapter.text_emb.clone(), trained.adapter.gist.clone())
    );
    (trained, data)
}

#[test]
fn training_moves_only_the_new_rows_and_lowers_the_loss() {
    let (trained, data) = train_and_check("train", 0);
    assert!(trained.adapter.gist.is_none());
    // Teacher-forced, the trained token is the greedy choice more often where the marker says
    // than elsewhere (a random model's other logits are flat, so it still wins often elsewhere).
    let rows: Vec<usize> = (0..data.n).collect();
    let v = LmConfig::tiny().text_card;
    let f = tokens::teacher_forced_firing(&trained.lm, None, &data, &rows, v, 1).unwrap();
    assert!(f.hits > 0.5 && f.hits > f.false_frames + 0.2, "{f:?}");
}

/// With `gist` K, a prefix of K vectors learns with the rows (from K copies of the first frame's
/// input vector) and goes into the adapter; the model's weights stay as loaded all the same.
#[test]
fn training_with_a_gist_learns_the_prefix_and_no_weight() {
    let (trained, data) = train_and_check("train-gist", 2);
    let lm = &trained.lm;
    let gist = trained.adapter.gist.clone().expect("the adapter holds the gist");
    assert_eq!((gist.k, gist.dim), (2, lm.config.dim));
    let start = kokichi::train::gist::init_from_prompt(lm, &vec![0; lm.config.n_q + 1], 1, 2).unwrap();
    let moved = gist.values.iter().zip(&start).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(moved > 1e-3, "the gist did not move from its start ({moved})");
    let rows: Vec<usize> = (0..data.n).collect();
    let v = LmConfig::tiny().text_card;
    let f = tokens::teacher_forced_firing(lm, Some(&gist), &data, &rows, v, 1).unwrap();
    assert!(f.hits > 0.5 && f.hits > f.false_frames + 0.2, "{f:?}");
}

/// One step of batch 1 whose loss is the plain text cross-entropy (padding weighted 0.5).
fn plain_training() -> TokenTrain {
    TokenTrain {
        steps: 1,
        batch: 1,
        lr: 1e-2,
        pad_weight: 0.5,
        token_weight: 1.0,
        window: 1,
        negative_weight: 1.0,
        gist: 0,
        seed: 1,
        log_every: 0,
    }
}

/// A random tiny model (seed `seed`, written under the scratch folder `name`) extended by `a`.
fn adapted_random_model(config: &LmConfig, name: &str, seed: u64, a: &Adapter) -> LmModel {
    let device = burn::prelude::Device::flex();
    let dir = scratch("adapter", name);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("model.safetensors");
    let (lm, slots) = LmModel::random(config.clone(), &device, seed).expect("random model");
    weights::export(&lm, &slots, &path, false).expect("export");
    let mut w = WeightFile::open(&path, &device, DType::F32).unwrap();
    let extended = a.apply(&mut w, config).expect("apply");
    LmModel::build(&mut w, extended).expect("build")
}

/// The teacher-forcing input the loss builds from `values` `[n, k, t]` with new token `v`: in
/// each token's window of `window` frames, padding but the token at its last frame; and each
/// row's window, if it has a token.
fn window_inputs(
    values: &[i64],
    n: usize,
    k: usize,
    t: usize,
    v: i64,
    pad: i64,
    window: usize,
) -> (Vec<i64>, Vec<Option<(usize, usize)>>) {
    let mut input = values.to_vec();
    let mut spans = vec![None; n];
    for (r, span) in spans.iter_mut().enumerate() {
        if let Some(p) = (0..t).find(|&i| values[r * k * t + i] == v) {
            let end = (p + window).min(t);
            input[r * k * t + p] = pad;
            input[r * k * t + end - 1] = v;
            *span = Some((p, end));
        }
    }
    (input, spans)
}

/// The training loss against its definition computed on the host from the model's
/// teacher-forced logits: ordinary frames' cross-entropy (padding weighted 0.5) and, for each new
/// token, `weight * log Σ_i p_i Π_{j<i} q_j` over its window (the token said first, padding
/// before it), with the token read at the window's last frame, and the frames of rows without a
/// new token weighted `negative_weight`; a window of 1 and weights of 1 is the plain text
/// cross-entropy.
#[test]
fn the_token_loss_is_the_chance_of_firing_first_in_the_window() {
    let config = LmConfig::tiny();
    let lm = adapted_random_model(&config, "loss", 7, &adapter(&["<tick>"], config.dim, 4));
    let (v, pad) = (config.text_card, config.existing_text_padding_id as i64);
    let (b, t) = (6, 12);
    let mut data = marker_data(&config, b, t, v as i64);
    let (k, vocab) = (data.k, lm.config.text_out());
    // The last two rows are negatives: no new token, padding where it was.
    for r in b - 2..b {
        data.values[r * k * t..r * k * t + t].iter_mut().for_each(|x| *x = pad);
    }
    let plain = floats(kokichi::train::lm::text_nll(
        &lm,
        lm.forward_teacher_text(&data.values, b, t).unwrap(),
        &data.values,
        b,
        t,
        0.5,
    ))[0];
    for (window, weight, negative) in [(1, 1.0, 1.0), (1, 10.0, 1.0), (3, 1.0, 1.0), (5, 20.0, 1.0), (3, 2.0, 4.0)] {
        let settings = TokenTrain {
            batch: b,
            lr: 0.0,
            token_weight: weight,
            window,
            negative_weight: negative,
            ..plain_training()
        };
        let got = floats(tokens::token_loss(&lm, None, &data.values, b, t, v, &settings).unwrap())[0];
        let (input, spans) = window_inputs(&data.values, b, k, t, v as i64, pad, window);
        assert_eq!(spans.iter().filter(|s| s.is_none()).count(), 2);
        let logits = floats(lm.forward_teacher_text(&input, b, t).unwrap());
        let logp = |r: usize, i: usize, tok: usize| {
            let row = &logits[(r * t + i) * vocab..(r * t + i + 1) * vocab];
            let max = row.iter().cloned().fold(f32::MIN, f32::max) as f64;
            let z: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
            row[tok] as f64 - max - z.ln()
        };
        let (mut sum, mut total) = (0f64, 0f64);
        for (r, span) in spans.iter().enumerate() {
            let (p, end) = span.unwrap_or((t, t));
            if span.is_some() {
                // The token said first: at frame i after padding at every frame before it.
                let first: f64 = (p..end)
                    .map(|i| (logp(r, i, v) + (p..i).map(|j| logp(r, j, pad as usize)).sum::<f64>()).exp())
                    .sum();
                sum += weight as f64 * first.ln();
                total += weight as f64;
            }
            let row_weight = if span.is_some() { 1.0 } else { negative as f64 };
            for i in (0..t).filter(|i| !(p..end).contains(i)) {
                let tok = data.values[r * k * t + i];
                let wi = row_weight * if tok == pad { 0.5 } else { 1.0 };
                sum += wi * logp(r, i, tok as usize);
                total += wi;
            }
        }
        let want = (-sum / total) as f32;
        assert!((got - want).abs() < 1e-4 * want.abs().max(1.0), "window {window}, weight {weight}: {got} vs {want}");
        if (window, weight, negative) == (1, 1.0, 1.0) {
            assert!((got - plain).abs() < 1e-5, "the plain cross-entropy: {got} vs {plain}");
        } else {
            assert!((got - plain).abs() > 1e-3, "window {window}, weight {weight} changed nothing");
        }
    }
}

#[test]
fn forward_teacher_text_matches_forward_teacher() {
    let config = LmConfig::tiny();
    let device = burn::prelude::Device::flex();
    let (lm, _) = LmModel::random(config.clone(), &device, 5).expect("random");
    let data = marker_data(&config, 2, 7, 5);
    let (text, _) = lm.forward_teacher(&data.values, 2, 7).expect("teacher");
    let alone = lm.forward_teacher_text(&data.values, 2, 7).expect("text");
    assert_close("text logits", &floats(alone), &floats(text), 1e-5);
    // After a gist prefix too.
    let values: Vec<f32> = (0..3 * config.dim).map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0).collect();
    let prefix = || kokichi::backend::floats(values.clone(), [3, config.dim], &device, burn::tensor::DType::F32);
    let full = lm.forward_teacher_prefixed(Some(prefix()), &data.values, 2, 7).expect("teacher prefixed");
    let alone = lm.forward_teacher_text_prefixed(Some(prefix()), &data.values, 2, 7).expect("text prefixed");
    assert_close("text logits after a gist", &floats(alone.clone()), &floats(full.text), 1e-5);
    let plain = floats(lm.forward_teacher_text(&data.values, 2, 7).expect("text"));
    let diff = floats(alone).iter().zip(&plain).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(diff > 1e-3, "the gist changed nothing ({diff})");
}

/// `tokens train --data A --data B` trains on the rows of both: appended in order; a file whose
/// rows have another shape is refused, naming it.
#[test]
fn token_sets_append_and_refuse_other_shapes() {
    let dir = scratch("adapter", "append");
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, shape: [usize; 3], first: i64| {
        let path = dir.join(name);
        let n = shape.iter().product::<usize>();
        let values: Vec<i64> = (0..n as i64).map(|i| first + i).collect();
        weights::write_tensors(&path, vec![("train".into(), shape.to_vec(), OutTensor::I64(values))]).unwrap();
        path
    };
    let (a, b, c) = (
        write("a.safetensors", [2, 3, 4], 0),
        write("b.safetensors", [1, 3, 4], 100),
        write("c.safetensors", [1, 3, 5], 0),
    );
    let mut set = TokenSet::read(&a, "train").unwrap();
    set.append(&b, "train").unwrap();
    assert_eq!((set.n, set.k, set.t), (3, 3, 4));
    let expected: Vec<i64> = (0..24).chain(100..112).collect();
    assert_eq!(set.values, expected);
    let err = set.append(&c, "train").unwrap_err().to_string();
    assert!(err.contains("c.safetensors") && err.contains("[3, 5]"), "{err}");
    assert_eq!(set.n, 3, "a refused file adds nothing");
}

/// The teacher-forced firing figures against their definitions computed on the host from the
/// model's greedy picks: windows whose first pick other than padding is the token, frames
/// outside the windows whose pick is a new token, and rows without a token that pick one at
/// some frame. Half the rows are negatives (the token's frame is padding there).
#[test]
fn teacher_forced_firing_counts_as_defined() {
    let config = LmConfig::tiny();
    let mut a = adapter(&["<tick>"], config.dim, 5);
    // Scaled so that the token wins some frames but not all.
    a.text_linear.iter_mut().for_each(|x| *x *= 0.6);
    let lm = adapted_random_model(&config, "firing", 11, &a);
    let (v, pad) = (config.text_card as i64, config.existing_text_padding_id as i64);
    let (n, t, window) = (16, 12, 3);
    let mut data = marker_data(&config, n, t, v);
    let k = data.k;
    for r in (0..n).step_by(2) {
        data.values[r * k * t..r * k * t + t].iter_mut().filter(|x| **x == v).for_each(|x| *x = pad);
    }
    let rows: Vec<usize> = (0..n).collect();
    let got = tokens::teacher_forced_firing(&lm, None, &data, &rows, v as usize, window).unwrap();
    // The loss's inputs: in a window, padding but the token at its last frame.
    let (input, spans) = window_inputs(&data.values, n, k, t, v, pad, window);
    assert!(spans.iter().enumerate().all(|(r, s)| s.is_some() == (r % 2 == 1)));
    let vocab = lm.config.text_out();
    let logits = floats(lm.forward_teacher_text(&input, n, t).unwrap());
    let pick = |r: usize, i: usize| {
        let row = &logits[(r * t + i) * vocab..(r * t + i + 1) * vocab];
        (0..vocab).fold(0, |best, j| if row[j] > row[best] { j } else { best }) as i64
    };
    let valid = (0..t).take_while(|&i| lm.valid_mask(0, i, t)).count();
    let (mut hits, mut windows, mut false_frames, mut outside, mut false_rows) = (0, 0, 0, 0, 0);
    for (r, span) in spans.iter().enumerate().take(n) {
        let inside = |i: usize| span.is_some_and(|(p, e)| (p..e).contains(&i));
        if let Some((p, end)) = *span {
            windows += 1;
            hits += usize::from((p..end).map(|i| pick(r, i)).find(|&x| x != pad) == Some(v));
        }
        let fired: Vec<bool> = (0..valid).filter(|&i| !inside(i)).map(|i| pick(r, i) >= v).collect();
        outside += fired.len();
        false_frames += fired.iter().filter(|&&f| f).count();
        false_rows += usize::from(span.is_none() && fired.contains(&true));
    }
    let want = tokens::Firing {
        hits: hits as f64 / windows as f64,
        false_frames: false_frames as f64 / outside as f64,
        false_rows: false_rows as f64 / (n / 2) as f64,
    };
    assert_eq!(got, want);
    // Neither all nor nothing, so that each count is put to the test.
    for (name, x) in [("hits", want.hits), ("false frames", want.false_frames), ("false rows", want.false_rows)] {
        assert!(x > 0.0 && x < 1.0, "{name}: {x} ({want:?})");
    }
}

/// Training settings that make no sense are refused before anything is read.
#[test]
fn training_refuses_settings_that_are_not_positive() {
    let config = LmConfig::tiny();
    let device = burn::prelude::Device::flex().autodiff();
    let data = marker_data(&config, 2, 8, config.text_card as i64);
    let good = plain_training();
    let bad = [
        TokenTrain { window: 0, ..good.clone() },
        TokenTrain { token_weight: 0.0, ..good.clone() },
        TokenTrain { negative_weight: 0.0, ..good.clone() },
        TokenTrain { negative_weight: f32::NAN, ..good.clone() },
        TokenTrain { negative_weight: -1.0, ..good.clone() },
    ];
    let missing = std::path::Path::new("/nonexistent/model.safetensors");
    for settings in bad {
        let err = match tokens::train(missing, &config, vec!["<tick>".into()], &data, &settings, &device) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("{settings:?} was accepted"),
        };
        assert!(err.contains("must be positive"), "{settings:?}: {err}");
    }
    // The same settings made positive get past the check, to the missing file.
    let err = match tokens::train(missing, &config, vec!["<tick>".into()], &data, &good, &device) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("a missing model file was accepted"),
    };
    assert!(err.contains("nonexistent"), "{err}");
}
