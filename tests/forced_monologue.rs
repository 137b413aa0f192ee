//! Forced inner monologue (`Engine::say`): the pieces of the text come out of the session's
//! text stream in order, each once, with padding between them as the pacing rules say, then
//! the model is free again; on every backend, and beside a session that is not made to say
//! anything, which is left as it was.

mod common;

use burn::tensor::DType;
use common::*;
use kokichi::lm::GenConfig;
use kokichi::monologue::{MAX_FIRST_WAIT, MAX_GAP, MIN_GAP};
use kokichi::session::Engine;

const FRAMES: usize = 48;

#[test]
fn said_text_comes_out_of_the_text_stream_paced() {
    let files = kokichi::model_dir::resolve(fixture("tiny_model").to_str().unwrap_or_default()).expect("fixture");
    for (kind, device) in devices() {
        let engine = Engine::load(&files, &device, DType::F32).expect("load");
        let tokenizer = engine.tokenizer.as_ref().expect("the fixture has a tokenizer");
        let want: Vec<i64> = tokenizer.encode("six plus nine").expect("encode").into_iter().map(i64::from).collect();
        assert_eq!(want.len(), 3);
        let pad = engine.lm.config.existing_text_padding_id as i64;
        let silence = vec![0f32; engine.frame_size()];

        let mut alone = engine.init_session(GenConfig::greedy()).expect("session");
        let free: Vec<Option<i64>> =
            (0..FRAMES).map(|_| engine.step(&mut [&mut alone], &silence).expect("step").remove(0).text).collect();

        let mut saying = engine.init_session(GenConfig::greedy()).expect("session");
        let mut beside = engine.init_session(GenConfig::greedy()).expect("session");
        // Two frames in, then the text.
        let mut texts = Vec::new();
        let mut beside_texts = Vec::new();
        for f in 0..FRAMES {
            if f == 2 {
                assert_eq!(engine.say(&mut saying, "six  plus nine").expect("say"), 3);
            }
            let both: Vec<f32> = silence.iter().chain(&silence).copied().collect();
            let outs = engine.step(&mut [&mut saying, &mut beside], &both).expect("step");
            texts.push(outs[0].text);
            beside_texts.push(outs[1].text);
        }
        assert_eq!(beside_texts, free, "{kind}: the session beside it changed");
        // The generated stream: where each said piece came out.
        let generated: Vec<i64> = texts.iter().flatten().copied().collect();
        let at: Vec<usize> = want
            .iter()
            .scan(0, |from, w| {
                let i = generated[*from..].iter().position(|t| t == w).map(|p| p + *from);
                *from = i.map_or(usize::MAX / 2, |i| i + 1);
                Some(i)
            })
            .map(|i| i.unwrap_or_else(|| panic!("{kind}: {want:?} not all in {generated:?}")))
            .collect();
        for pair in at.windows(2) {
            let gap = pair[1] - pair[0];
            assert!((MIN_GAP..=MAX_GAP).contains(&gap), "{kind}: pieces {gap} frames apart in {generated:?}");
            assert!(generated[pair[0] + 1..pair[1]].iter().all(|&t| t == pad), "{kind}: padding between pieces");
        }
        assert!(at[0] <= MAX_FIRST_WAIT + 2, "{kind}: the first piece waited too long: {generated:?}");
        assert_eq!(engine.say(&mut saying, "").expect("nothing to say"), 0);
        let long = "six ".repeat(kokichi::monologue::MAX_QUEUED + 1);
        let e = engine.say(&mut saying, &long).expect_err("more than the queue holds").to_string();
        assert!(e.contains("room for"), "{kind}: {e}");
    }
}
