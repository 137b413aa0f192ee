//! A whole LM through the matrix-vector kernel: a random tiny LM (every weight far below the
//! kernel's size threshold) stepped greedily with the threshold lowered to 1, so each of its
//! one-position products takes the kernel on wgpu, gives the tokens it gives on Burn's own
//! products. Its own binary: the kernel's switches are process-wide.

mod common;

use burn::tensor::DType;
use common::*;
use kokichi::backend::{self, BackendKind};
use kokichi::kernels::matvec;
use kokichi::lm::{LmConfig, LmModel};

/// 16 greedy steps of two streams: the text and audio tokens of each step.
#[test]
fn an_lm_through_the_kernel_picks_burns_tokens() {
    for (kind, device) in devices() {
        let lm = LmModel::random(LmConfig::tiny(), &device, 9).unwrap().0;
        // The text head, as one step's two rows see it.
        let x = backend::floats(vec![0.5; 2 * lm.config.dim], [2, 1, lm.config.dim], &device, DType::F32);
        let head = lm.text_linear.val();

        matvec::set_enabled(false);
        assert!(!matvec::uses_kernel(&x, &head), "{kind}: switched off");
        let plain = greedy_tokens(&lm, 16);
        matvec::set_enabled(true);
        matvec::set_min_weights(1);
        assert_eq!(matvec::uses_kernel(&x, &head), kind == BackendKind::Wgpu, "{kind}: threshold 1");
        let through = greedy_tokens(&lm, 16);
        matvec::set_min_weights(matvec::MIN_WEIGHTS);

        assert_eq!(through.len(), plain.len(), "{kind}");
        assert!(through.len() >= 8, "{kind}: {} steps gave tokens", through.len());
        assert_eq!(through, plain, "{kind}: tokens through the kernel");
    }
}
