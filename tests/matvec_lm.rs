//! A whole LM through the matrix-vector kernel: a random tiny LM (every weight far below the
//! kernel's size threshold) stepped greedily with the threshold lowered to 1, so each of its
//! one-position products takes the kernel on wgpu, gives the tokens it gives on Burn's own
//! products. Its own binary: the kernel's switches are process-wide.

mod common;

use burn::tensor::DType;
use common::*;
use kokichi::backend::{self, BackendKind};
use kokichi::kernels::matvec;
use kokichi::lm::{GenConfig, LmConfig, LmModel};

/// 16 greedy steps of two streams: the text and audio tokens of each step.
fn tokens(lm: &LmModel) -> Vec<(Vec<i64>, Vec<i64>)> {
    let configs = [GenConfig::greedy(), GenConfig::greedy()];
    let mut state = lm.init_state(&configs).unwrap();
    let user = lm.config.user_streams();
    let mut out = Vec::new();
    for i in 0..16 {
        let codes: Vec<i64> = (0..2 * user).map(|k| ((i * 5 + k * 11) % lm.config.card) as i64).collect();
        if let Some(o) = lm.step(&mut state, &codes, user).unwrap() {
            out.push((o.text, o.audio));
        }
    }
    out
}

#[test]
fn an_lm_through_the_kernel_picks_burns_tokens() {
    for (kind, device) in devices() {
        let lm = LmModel::random(LmConfig::tiny(), &device, 9).unwrap().0;
        // The text head, as one step's two rows see it.
        let x = backend::floats(vec![0.5; 2 * lm.config.dim], [2, 1, lm.config.dim], &device, DType::F32);
        let head = lm.text_linear.val();

        matvec::set_enabled(false);
        assert!(!matvec::uses_kernel(&x, &head), "{kind}: switched off");
        let plain = tokens(&lm);
        matvec::set_enabled(true);
        matvec::set_min_weights(1);
        assert_eq!(matvec::uses_kernel(&x, &head), kind == BackendKind::Wgpu, "{kind}: threshold 1");
        let through = tokens(&lm);
        matvec::set_min_weights(matvec::MIN_WEIGHTS);

        assert_eq!(through.len(), plain.len(), "{kind}");
        assert!(through.len() >= 8, "{kind}: {} steps gave tokens", through.len());
        assert_eq!(through, plain, "{kind}: tokens through the kernel");
    }
}
