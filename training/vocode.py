"""Vocoder resynthesis of a question clip, for kokichi-tiny's training data (`train_lm.py tokenize --vocode`).

The held-out voices the LM hears worst (festival's HTS and diphone voices, RHVoice clb) differ from
the training voices in how they are synthesized, not in who speaks. Resampling (`--warp`) moves
pitch, formants and tempo together; a vocoder can move each apart and change the excitation:
the clip is analysed with WORLD (pyworld: F0, spectral envelope, aperiodicity) and resynthesized
with the F0 scaled, the envelope warped along frequency, and the aperiodicity kept, zeroed (a
buzzy pulse train, as in HTS's simple vocoders) or raised (breathy), and the F0 contour kept,
flattened towards its mean (a monotone diphone-like voice) or widened. The duration is kept.
"""
import numpy as np

FRAME_MS = 5.0


def params(rng) -> dict:
    """One random draw of the resynthesis settings (`rng`: random.Random)."""
    return {
        "cents": rng.uniform(-500.0, 500.0),  # F0, apart from the formants
        "alpha": 2 ** rng.uniform(-0.25, 0.25),  # formants, apart from the F0 (x0.84..x1.19)
        "excite": rng.choice(["keep", "buzzy", "breathy"]),
        "contour": rng.uniform(0.2, 1.6),  # 0 = monotone, 1 = as synthesized
    }


def warp_envelope(sp: np.ndarray, alpha: float) -> np.ndarray:
    """The spectral envelope with every frequency scaled by `alpha` (formants up for alpha > 1)."""
    bins = np.arange(sp.shape[1], dtype=np.float64)
    src = np.clip(bins / alpha, 0, sp.shape[1] - 1)
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, sp.shape[1] - 1)
    w = src - lo
    out = sp[:, lo] * (1 - w) + sp[:, hi] * w
    return np.maximum(out, 1e-16)


def vocode(pcm: np.ndarray, rate: int, p: dict) -> np.ndarray:
    """`pcm` (float32, mono) resynthesized with the settings `p` (see params), same length and peak."""
    import pyworld as pw

    x = pcm.astype(np.float64)
    f0, t = pw.dio(x, rate, frame_period=FRAME_MS)
    f0 = pw.stonemask(x, f0, t, rate)
    sp = pw.cheaptrick(x, f0, t, rate)
    ap = pw.d4c(x, f0, t, rate)
    voiced = f0 > 0
    if voiced.any():
        logf = np.log(f0[voiced])
        mean = logf.mean()
        f0[voiced] = np.exp(mean + (logf - mean) * p["contour"]) * 2 ** (p["cents"] / 1200)
    sp = warp_envelope(sp, p["alpha"])
    if p["excite"] == "buzzy":
        ap = np.where(voiced[:, None], 1e-3, ap)
    elif p["excite"] == "breathy":
        ap = np.clip(ap + 0.25, 0, 1)
    y = pw.synthesize(f0, np.ascontiguousarray(sp), np.ascontiguousarray(ap), rate, FRAME_MS)
    y = y[: len(x)]
    if len(y) < len(x):
        y = np.pad(y, (0, len(x) - len(y)))
    peak = np.abs(y).max()
    if peak > 0:
        y *= np.abs(x).max() / peak
    return y.astype(np.float32)
