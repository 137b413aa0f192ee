//! Token picking on the device (`kokichi::lm::pick`) against the host sampler it replaces, on
//! every test backend: greedy rows give the host's argmax, sampled rows stay inside their top_k
//! and follow the softmax, a seed fixes the tokens, forced rows keep theirs, and a whole LM run
//! picks the same greedy tokens either way.

mod common;

use burn::prelude::*;
use burn::tensor::DType;
use common::*;
use kokichi::backend::{self, BackendKind};
use kokichi::lm::pick::{self, Draw, Picking};
use kokichi::lm::sampling::{self, Sampling};
use kokichi::lm::{GenConfig, LmConfig, LmModel};
use rand::rngs::StdRng;

fn pick_ints(device: &Device, rows: &[Vec<f32>], params: &[Sampling], rngs: &mut [StdRng], how: Picking) -> Vec<i64> {
    pick_forced(device, rows, params, rngs, &[], how)
}

fn pick_forced(
    device: &Device,
    rows: &[Vec<f32>],
    params: &[Sampling],
    rngs: &mut [StdRng],
    forced: &[Option<i64>],
    how: Picking,
) -> Vec<i64> {
    let v = rows[0].len();
    let logits = backend::floats(rows.concat(), [rows.len(), v], device, DType::F32);
    let mut draws: Vec<Draw> = params.iter().zip(rngs.iter_mut()).map(|(&params, rng)| Draw { params, rng }).collect();
    let p = pick::pick(logits, &mut draws, forced, how, &mut Vec::new()).unwrap();
    let got = backend::read_ints(p.device).unwrap();
    if let Some(host) = p.host {
        assert_eq!(host, got, "host copy of the picked tokens");
    }
    got
}

fn wavy(n: usize, phase: f32) -> Vec<f32> {
    (0..n).map(|i| (i as f32 * 0.37 + phase).sin() * 3.0).collect()
}

fn rngs(seeds: impl IntoIterator<Item = u64>) -> Vec<StdRng> {
    seeds.into_iter().map(|s| sampling::rng(Some(s))).collect()
}

#[test]
fn greedy_rows_take_the_host_argmax() {
    let rows = vec![wavy(300, 0.0), wavy(300, 1.3), wavy(300, 2.1)];
    let want: Vec<i64> = rows.iter().map(|r| sampling::argmax(r) as i64).collect();
    for (kind, device) in devices() {
        for how in [Picking::Device, Picking::Host] {
            let got = pick_ints(&device, &rows, &[Sampling::GREEDY; 3], &mut rngs([1, 2, 3]), how);
            assert_eq!(got, want, "{kind} {how:?}");
        }
        // Greedy rows beside sampled ones are still their argmax.
        let params = [Sampling::AUDIO, Sampling::GREEDY, Sampling::TEXT];
        let got = pick_ints(&device, &rows, &params, &mut rngs([1, 2, 3]), Picking::Device);
        assert_eq!(got[1], want[1], "{kind}: the greedy row of a mixed batch");
    }
}

#[test]
fn sampled_rows_stay_in_their_top_k() {
    let rows = vec![wavy(50, 0.0), wavy(50, 0.7), wavy(50, 2.0)];
    let params = [
        Sampling { temperature: 1.0, top_k: 5 },
        Sampling { temperature: 2.0, top_k: 2 },
        Sampling { temperature: 1.0, top_k: 0 },
    ];
    let best = |r: &[f32], k: usize| {
        let mut order: Vec<usize> = (0..r.len()).collect();
        order.sort_by(|&a, &b| r[b].total_cmp(&r[a]));
        order.truncate(k);
        order
    };
    for (kind, device) in devices() {
        let mut g = rngs([3, 4, 5]);
        let mut seen = [std::collections::BTreeSet::new(), Default::default(), Default::default()];
        for _ in 0..150 {
            for (r, t) in pick_ints(&device, &rows, &params, &mut g, Picking::Device).into_iter().enumerate() {
                seen[r].insert(t as usize);
            }
        }
        for r in 0..2 {
            let allowed = best(&rows[r], params[r].top_k);
            assert!(seen[r].iter().all(|t| allowed.contains(t)), "{kind} row {r}: drew {:?}, top {allowed:?}", seen[r]);
            assert_eq!(seen[r].len(), params[r].top_k, "{kind} row {r}: not every one of the top_k was drawn");
        }
        // The unrestricted row reaches beyond the 5 best.
        let top5 = best(&rows[2], 5);
        assert!(seen[2].iter().any(|t| !top5.contains(t)), "{kind}: top_k = 0 never left the 5 best: {:?}", seen[2]);
    }
}

#[test]
fn frequencies_follow_the_softmax() {
    let l = vec![0.0f32, 1.0, 2.0, -1.0];
    let temp = 0.5f32;
    let z: f32 = l.iter().map(|x| (x / temp).exp()).sum();
    let want: Vec<f32> = l.iter().map(|x| (x / temp).exp() / z).collect();
    let rows = vec![l.clone(); 100];
    let params = vec![Sampling { temperature: temp, top_k: 0 }; 100];
    for (kind, device) in devices() {
        // 100 rows with a generator each, 100 calls: 10,000 draws.
        let mut g = rngs(100..200);
        let mut counts = [0usize; 4];
        for _ in 0..100 {
            for t in pick_ints(&device, &rows, &params, &mut g, Picking::Device) {
                counts[t as usize] += 1;
            }
        }
        for i in 0..4 {
            let got = counts[i] as f32 / 10_000.0;
            assert!((got - want[i]).abs() < 0.02, "{kind} token {i}: {got} vs {}", want[i]);
        }
    }
}

#[test]
fn a_seed_fixes_the_tokens_on_every_backend() {
    let rows = vec![wavy(100, 0.5), wavy(100, 1.5)];
    let params = [Sampling::AUDIO, Sampling { temperature: 0.7, top_k: 25 }];
    let run = |device: &Device, seed: u64| {
        let mut g = rngs([seed, seed + 10]);
        (0..20).flat_map(|_| pick_ints(device, &rows, &params, &mut g, Picking::Device)).collect::<Vec<_>>()
    };
    let mut first: Option<Vec<i64>> = None;
    for (kind, device) in devices() {
        let a = run(&device, 3);
        assert_eq!(a, run(&device, 3), "{kind}: same seed");
        assert_ne!(a, run(&device, 4), "{kind}: another seed");
        // The noise comes from the host generator, so the backends agree.
        match &first {
            None => first = Some(a),
            Some(f) => assert_eq!(&a, f, "{kind}: tokens differ from the first backend's"),
        }
    }
}

#[test]
fn f16_logits_pick_like_their_f32_values() {
    // Logits that f16 holds exactly, so the host's f32 argmax and top-k are the reference.
    let rows: Vec<Vec<f32>> =
        (0..2).map(|r| wavy(64, r as f32).iter().map(|v| half::f16::from_f32(*v).to_f32()).collect()).collect();
    let want: Vec<i64> = rows.iter().map(|r| sampling::argmax(r) as i64).collect();
    for (kind, device) in devices() {
        if !device.supports_dtype(DType::F16) {
            continue;
        }
        let logits = |rows: &[Vec<f32>]| backend::floats(rows.concat(), [rows.len(), 64], &device, DType::F16);
        let mut g = rngs([1, 2]);
        let mut draws: Vec<Draw> = g.iter_mut().map(|rng| Draw { params: Sampling::GREEDY, rng }).collect();
        let p = pick::pick(logits(&rows), &mut draws, &[], Picking::Device, &mut Vec::new()).unwrap();
        assert_eq!(backend::read_ints(p.device).unwrap(), want, "{kind}: f16 greedy");
        let k = 3;
        let mut top: Vec<usize> = (0..64).collect();
        top.sort_by(|&a, &b| rows[0][b].total_cmp(&rows[0][a]));
        top.truncate(k);
        let mut g = rngs([5]);
        for _ in 0..50 {
            let mut draws: Vec<Draw> =
                g.iter_mut().map(|rng| Draw { params: Sampling { temperature: 1.0, top_k: k }, rng }).collect();
            let p = pick::pick(logits(&rows[..1]), &mut draws, &[], Picking::Device, &mut Vec::new()).unwrap();
            let t = backend::read_ints(p.device).unwrap()[0] as usize;
            assert!(top.contains(&t), "{kind}: f16 draw {t} outside the top {k} {top:?}");
        }
    }
}

#[test]
fn forced_rows_keep_their_token() {
    let rows = vec![wavy(40, 0.0), wavy(40, 1.0)];
    for (kind, device) in devices() {
        for how in [Picking::Device, Picking::Host] {
            let got = pick_forced(&device, &rows, &[Sampling::GREEDY; 2], &mut rngs([1, 2]), &[None, Some(7)], how);
            assert_eq!(got, vec![sampling::argmax(&rows[0]) as i64, 7], "{kind} {how:?}");
        }
    }
}

#[test]
fn a_row_count_mismatch_is_an_error() {
    let device = Device::flex();
    let logits = backend::floats(vec![0.0; 16], [2, 8], &device, DType::F32);
    let mut g = rngs([1]);
    let mut draws: Vec<Draw> = g.iter_mut().map(|rng| Draw { params: Sampling::GREEDY, rng }).collect();
    let err = pick::pick(logits, &mut draws, &[], Picking::Device, &mut Vec::new()).unwrap_err();
    assert!(err.to_string().contains("1 sampling rows for 2 rows"), "{err}");
}

/// A random tiny LM run for 12 steps on two streams, picking where told: the tokens.
fn lm_tokens(lm: &LmModel, configs: &[GenConfig], how: Picking) -> Vec<(Vec<i64>, Vec<i64>)> {
    let mut state = lm.init_state(configs).unwrap();
    state.set_picking(how);
    let user = lm.config.user_streams();
    let b = configs.len();
    let mut out = Vec::new();
    for i in 0..12 {
        let codes: Vec<i64> = (0..b * user).map(|k| ((i * 7 + k * 13) % lm.config.card) as i64).collect();
        if let Some(o) = lm.step(&mut state, &codes, user).unwrap() {
            out.push((o.text, o.audio));
        }
    }
    assert!(!out.is_empty());
    out
}

#[test]
fn the_cpu_backend_picks_on_the_host_and_wgpu_on_the_device() {
    for (kind, device) in devices() {
        let want = if kind == BackendKind::Cpu { Picking::Host } else { Picking::Device };
        assert_eq!(Picking::for_device(&device), want, "{kind}");
    }
}

#[test]
fn a_greedy_lm_picks_the_same_tokens_on_the_device_and_the_host() {
    for (kind, device) in devices() {
        let lm = LmModel::random(LmConfig::tiny(), &device, 5).unwrap().0;
        let configs = [GenConfig::greedy(), GenConfig::greedy()];
        let host = lm_tokens(&lm, &configs, Picking::Host);
        assert_eq!(lm_tokens(&lm, &configs, Picking::Device), host, "{kind}");
        // Sampled streams differ from greedy ones but repeat under their seeds.
        let sampled = [GenConfig { text_seed: Some(1), audio_seed: Some(2), ..GenConfig::default() }; 2];
        let a = lm_tokens(&lm, &sampled, Picking::Device);
        assert_eq!(a, lm_tokens(&lm, &sampled, Picking::Device), "{kind}: sampled, same seeds");
        assert_ne!(a, host, "{kind}: sampling gave the greedy tokens");
    }
}
