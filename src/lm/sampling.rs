//! Token sampling on the host, as the reference `sample_token`: `softmax(logits / temp)`, keep
//! the `top_k` most likely, then draw with the exponential race `argmax(p / Exp(1))`, which is
//! a categorical draw. Temperature 0 (or `greedy`) is argmax, first index on ties.

use rand::{Rng, RngCore, SeedableRng, rngs::StdRng};

/// Sampling settings of a session.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GenConfig {
    pub text: Sampling,
    pub audio: Sampling,
    /// Seeds of the text and audio generators; `None` draws from the OS.
    pub text_seed: Option<u64>,
    pub audio_seed: Option<u64>,
}

impl GenConfig {
    pub fn greedy() -> Self {
        Self { text: Sampling::GREEDY, audio: Sampling::GREEDY, text_seed: Some(0), audio_seed: Some(0) }
    }
}

impl Default for GenConfig {
    fn default() -> Self {
        Self { text: Sampling::TEXT, audio: Sampling::AUDIO, text_seed: None, audio_seed: None }
    }
}

/// Sampling parameters of one stream (text or audio).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Sampling {
    pub temperature: f32,
    pub top_k: usize,
}

impl Sampling {
    pub const GREEDY: Sampling = Sampling { temperature: 0.0, top_k: 0 };
    /// Moshi's defaults for text (0.7, 25) and audio (0.8, 250).
    pub const TEXT: Sampling = Sampling { temperature: 0.7, top_k: 25 };
    pub const AUDIO: Sampling = Sampling { temperature: 0.8, top_k: 250 };

    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0
    }
}

/// One layer of sampling settings, as a model folder, the daemon's TOML file or the command line
/// gives them (the same keys in all three): every key optional, applied with [`Self::over`] on
/// what the layers before it made, starting from Moshi's defaults.
#[derive(Clone, Debug, Default, PartialEq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SamplingOverrides {
    /// `true`: argmax for text and audio (the other keys of a later layer still apply);
    /// `false`: sample, from Moshi's defaults, even where the model recommends greedy.
    pub greedy: Option<bool>,
    pub text_temperature: Option<f32>,
    pub text_topk: Option<usize>,
    pub audio_temperature: Option<f32>,
    pub audio_topk: Option<usize>,
    /// Seed of the text sampler; the audio sampler takes `seed + 1`.
    pub seed: Option<u64>,
}

impl SamplingOverrides {
    pub fn greedy() -> Self {
        Self { greedy: Some(true), ..Self::default() }
    }

    /// `base` with these settings applied.
    pub fn over(&self, base: GenConfig) -> GenConfig {
        let mut g = match self.greedy {
            Some(true) => GenConfig { text: Sampling::GREEDY, audio: Sampling::GREEDY, ..base },
            Some(false) if base.text.is_greedy() || base.audio.is_greedy() => {
                GenConfig { text: Sampling::TEXT, audio: Sampling::AUDIO, ..base }
            }
            _ => base,
        };
        if let Some(v) = self.text_temperature {
            g.text.temperature = v;
        }
        if let Some(v) = self.text_topk {
            g.text.top_k = v;
        }
        if let Some(v) = self.audio_temperature {
            g.audio.temperature = v;
        }
        if let Some(v) = self.audio_topk {
            g.audio.top_k = v;
        }
        if let Some(v) = self.seed {
            g.text_seed = Some(v);
            g.audio_seed = Some(v.wrapping_add(1));
        }
        g
    }

    /// The first temperature that is not a finite value >= 0, as (key, value).
    pub fn bad_temperature(&self) -> Option<(&'static str, f32)> {
        [("text_temperature", self.text_temperature), ("audio_temperature", self.audio_temperature)]
            .into_iter()
            .find_map(|(k, t)| t.filter(|t| !t.is_finite() || *t < 0.0).map(|t| (k, t)))
    }
}

/// Index of the largest value (first one on ties; NaN never wins).
pub fn argmax(logits: &[f32]) -> usize {
    let mut best = 0;
    let mut best_v = f32::NEG_INFINITY;
    for (i, &v) in logits.iter().enumerate() {
        if v > best_v {
            best = i;
            best_v = v;
        }
    }
    best
}

/// Draws one token from `logits` with `params`, using `rng`. `scratch` avoids allocation.
pub fn sample(logits: &[f32], params: Sampling, rng: &mut StdRng, scratch: &mut Vec<(f32, usize)>) -> usize {
    if params.is_greedy() || logits.is_empty() {
        return argmax(logits);
    }
    let inv_t = 1.0 / params.temperature;
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    scratch.clear();
    scratch.extend(logits.iter().enumerate().map(|(i, &l)| (((l - max) * inv_t).exp(), i)));
    let k = if params.top_k == 0 { scratch.len() } else { params.top_k.min(scratch.len()) };
    if k < scratch.len() {
        scratch.select_nth_unstable_by(k - 1, |a, b| b.0.total_cmp(&a.0));
        scratch.truncate(k);
    }
    // Normalisation does not change the argmax of p / E, so it is skipped.
    let mut best = scratch[0].1;
    let mut best_v = f32::NEG_INFINITY;
    for &(p, i) in scratch.iter() {
        let e = exp1(rng);
        let v = p / e;
        if v > best_v {
            best_v = v;
            best = i;
        }
    }
    best
}

/// A standard exponential variate (never 0).
pub(super) fn exp1(rng: &mut StdRng) -> f32 {
    // 1 - u is in (0, 1]: never ln(0).
    let u: f64 = rng.random::<f64>();
    (-(1.0 - u).ln()).max(f64::MIN_POSITIVE) as f32
}

/// A seeded generator; `None` draws a seed from the OS.
pub fn rng(seed: Option<u64>) -> StdRng {
    match seed {
        Some(s) => StdRng::seed_from_u64(s),
        None => StdRng::seed_from_u64(rand::rng().next_u64()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_is_first_argmax() {
        assert_eq!(argmax(&[0.0, 3.0, 3.0, 1.0]), 1);
        let mut s = Vec::new();
        assert_eq!(sample(&[0.0, 3.0, 1.0], Sampling::GREEDY, &mut rng(Some(1)), &mut s), 1);
    }

    #[test]
    fn top_k_never_leaves_the_k_best() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let mut order: Vec<usize> = (0..50).collect();
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
        let allowed = &order[..5];
        let mut r = rng(Some(7));
        let mut s = Vec::new();
        for _ in 0..2000 {
            let t = sample(&logits, Sampling { temperature: 1.0, top_k: 5 }, &mut r, &mut s);
            assert!(allowed.contains(&t), "{t} not in top 5");
        }
    }

    #[test]
    fn frequencies_follow_the_softmax() {
        let logits = [0.0f32, 1.0, 2.0];
        let temp = 0.5f32;
        let z: f32 = logits.iter().map(|l| (l / temp).exp()).sum();
        let want: Vec<f32> = logits.iter().map(|l| (l / temp).exp() / z).collect();
        let mut counts = [0usize; 3];
        let mut r = rng(Some(42));
        let mut s = Vec::new();
        let n = 20000;
        for _ in 0..n {
            counts[sample(&logits, Sampling { temperature: temp, top_k: 0 }, &mut r, &mut s)] += 1;
        }
        for i in 0..3 {
            let got = counts[i] as f32 / n as f32;
            assert!((got - want[i]).abs() < 0.015, "token {i}: {got} vs {}", want[i]);
        }
    }

    #[test]
    fn same_seed_same_tokens() {
        let logits: Vec<f32> = (0..100).map(|i| ((i * 7) % 13) as f32 * 0.1).collect();
        let draw = |seed| {
            let mut r = rng(Some(seed));
            let mut s = Vec::new();
            (0..20).map(|_| sample(&logits, Sampling::AUDIO, &mut r, &mut s)).collect::<Vec<_>>()
        };
        assert_eq!(draw(3), draw(3));
        assert_ne!(draw(3), draw(4));
    }

    #[test]
    fn overrides_apply_in_layers() {
        let moshi = GenConfig::default();
        // A model that recommends greedy decoding, then a file that asks for sampled text.
        let model = SamplingOverrides::greedy().over(moshi);
        assert_eq!((model.text, model.audio), (Sampling::GREEDY, Sampling::GREEDY));
        let file = SamplingOverrides { text_temperature: Some(0.5), text_topk: Some(10), ..Default::default() };
        let g = file.over(model);
        assert_eq!(g.text, Sampling { temperature: 0.5, top_k: 10 });
        assert_eq!(g.audio, Sampling::GREEDY);
        // `greedy = false` samples with Moshi's defaults even over a greedy model.
        let g = SamplingOverrides { greedy: Some(false), ..Default::default() }.over(model);
        assert_eq!((g.text, g.audio), (Sampling::TEXT, Sampling::AUDIO));
        // Nothing set: the base unchanged.
        assert_eq!(SamplingOverrides::default().over(model), model);
        // The seed sets both samplers.
        let g = SamplingOverrides { seed: Some(7), ..Default::default() }.over(moshi);
        assert_eq!((g.text_seed, g.audio_seed), (Some(7), Some(8)));
    }

    #[test]
    fn a_greedy_layer_then_a_text_temperature_samples_the_text_only() {
        // A file that says greedy, then a text temperature on the command line.
        let layers =
            [SamplingOverrides::greedy(), SamplingOverrides { text_temperature: Some(0.7), ..Default::default() }];
        let g = layers.iter().fold(GenConfig::default(), |g, l| l.over(g));
        assert_eq!((g.text.temperature, g.audio), (0.7, Sampling::GREEDY));
        // And the other way round: greedy last drops the earlier temperature.
        let g = layers.iter().rev().fold(GenConfig::default(), |g, l| l.over(g));
        assert_eq!((g.text, g.audio), (Sampling::GREEDY, Sampling::GREEDY));
    }

    #[test]
    fn bad_temperatures_are_named() {
        assert_eq!(SamplingOverrides::default().bad_temperature(), None);
        let s = SamplingOverrides { audio_temperature: Some(-1.0), ..Default::default() };
        assert_eq!(s.bad_temperature(), Some(("audio_temperature", -1.0)));
        let s = SamplingOverrides { text_temperature: Some(f32::NAN), ..Default::default() };
        assert_eq!(s.bad_temperature().map(|(k, _)| k), Some("text_temperature"));
    }
}
