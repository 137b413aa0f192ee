"""Shared pieces of kokichi-tiny's training scripts: configs, data access, mel features."""
import json
import math
import wave
from pathlib import Path

import numpy as np
import torch

RATE = 24000
FRAME = 1920

# The codec: Mimi's architecture at small width (25 Hz transformer, 12.5 Hz codes).
MIMI = {
    "sample_rate": 24000, "channels": 1, "frame_rate": 12.5,
    "seanet": {"dimension": 128, "n_filters": 16, "ratios": [8, 6, 5, 4], "kernel_size": 7,
               "residual_kernel_size": 3, "last_kernel_size": 3, "n_residual_layers": 1,
               "compress": 2, "dilation_base": 2, "causal": True, "activation": "ELU",
               "norm": "none", "pad_mode": "constant", "true_skip": True, "channels": 1,
               "disable_norm_outer_blocks": 0},
    "quantizer": {"dimension": 64, "n_q": 6, "n_q_semantic": 1, "bins": 1024,
                  "input_dimension": 128, "output_dimension": 128},
    "transformer": {"d_model": 128, "num_heads": 4, "num_layers": 2, "dim_feedforward": 512,
                    "context": 125, "causal": True, "layer_scale": 0.01, "conv_layout": True,
                    "max_period": 10000, "gating": "none", "norm": "layer_norm",
                    "positional_embedding": "rope", "input_dimension": 128,
                    "output_dimensions": [128]},
}
CODEBOOKS = 6  # active codebooks per stream (LM dep_q)


def bf16_fast() -> bool:
    """Whether this CPU computes bf16 natively (AMX or AVX512-BF16). Without it, bf16 autocast
    is emulated: the distillation's steps 51-100 took 4.9 s each, against 1.5 s in f32, on a
    2-core AVX2 AMD EPYC."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def read_wav(path, rate=RATE) -> np.ndarray:
    with wave.open(str(path)) as w:
        assert w.getframerate() == rate and w.getsampwidth() == 2 and w.getnchannels() == 1, path
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")


def noise(rng: np.random.Generator, n: int, slope: float = 0.0) -> np.ndarray:
    """Unit-RMS Gaussian noise (float64) whose power falls as f^-slope: 0 white (hiss), 1 pink
    (fans, rooms), 2 brown (rumble). Slope 0 is rng.standard_normal(n) itself, so a caller that
    scales and casts as it did before draws the same white samples as before."""
    w = rng.standard_normal(n)
    if not slope:
        return w
    spec = np.fft.rfft(w)
    f = np.arange(len(spec), dtype=np.float64)
    f[0] = 1.0
    spec *= f ** (-slope / 2)
    spec[0] = 0.0
    c = np.fft.irfft(spec, n)
    rms = np.sqrt(np.mean(c ** 2))
    return c / rms if rms > 0 else w


def load_split(data: Path, split: str):
    return [json.loads(l) for l in (data / f"{split}.jsonl").read_text().splitlines()]


class MelLoss(torch.nn.Module):
    """Multi-scale mel-spectrogram L1 loss (linear and log magnitudes)."""

    def __init__(self, scales=(256, 512, 1024, 2048), n_mels=64):
        super().__init__()
        self.scales = scales
        for n in scales:
            self.register_buffer(f"fb{n}", torch.from_numpy(mel_filterbank(n, n_mels)).float())
            self.register_buffer(f"win{n}", torch.hann_window(n))

    def forward(self, x, y):
        loss = 0.0
        for n in self.scales:
            fb = getattr(self, f"fb{n}")
            win = getattr(self, f"win{n}")
            spec = lambda s: torch.stft(s, n, hop_length=n // 4, window=win, return_complex=True).abs()
            mx = torch.matmul(fb, spec(x))
            my = torch.matmul(fb, spec(y))
            loss = loss + (mx - my).abs().mean() + (torch.log(mx + 1e-5) - torch.log(my + 1e-5)).abs().mean()
        return loss / len(self.scales)


def mel_filterbank(n_fft: int, n_mels: int, fmin=0.0, fmax=RATE / 2) -> np.ndarray:
    def hz_to_mel(f):
        return 2595.0 * np.log10(1.0 + f / 700.0)

    def mel_to_hz(m):
        return 700.0 * (10 ** (m / 2595.0) - 1.0)

    mels = np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2)
    hz = mel_to_hz(mels)
    bins = np.fft.rfftfreq(n_fft, 1.0 / RATE)
    fb = np.zeros((n_mels, len(bins)))
    for i in range(n_mels):
        lo, c, hi = hz[i], hz[i + 1], hz[i + 2]
        up = (bins - lo) / max(c - lo, 1e-9)
        down = (hi - bins) / max(hi - c, 1e-9)
        fb[i] = np.maximum(0, np.minimum(up, down))
    return fb


def ctc_greedy(logits) -> list:
    """Best-path CTC decoding of logits [T, C] (0 is the blank): ids, repeats merged."""
    out, prev = [], 0
    for k in logits.argmax(-1).tolist():
        if k != prev and k != 0:
            out.append(k)
        prev = k
    return out


def cosine_lr(step, total, base, warmup=300):
    if step < warmup:
        return base * (step + 1) / warmup
    p = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))

# The language model: Moshi's architecture, small. 6 codebooks per stream: the model's own
# (generated by the depth transformer) and the user's.
def lm_config(text_card: int) -> dict:
    return {
        "dim": 256, "text_card": text_card, "existing_text_padding_id": 3, "n_q": 2 * CODEBOOKS,
        "dep_q": CODEBOOKS, "card": MIMI["quantizer"]["bins"], "num_heads": 4, "num_layers": 6,
        "hidden_scale": 4.125, "causal": True, "layer_scale": None, "context": 100,
        "max_period": 10000, "gating": "silu", "norm": "rms_norm_f32",
        "positional_embedding": "rope", "depformer_dim": 128, "depformer_dim_feedforward": 256,
        "depformer_num_heads": 4, "depformer_num_layers": 2, "depformer_layer_scale": None,
        "depformer_multi_linear": True, "depformer_context": CODEBOOKS, "depformer_max_period": 10000,
        "depformer_gating": "silu", "depformer_pos_emb": "none", "depformer_weights_per_step": True,
        "delays": [0] + [0] + [1] * (CODEBOOKS - 1) + [0] + [1] * (CODEBOOKS - 1),
    }


def export_config(folder: Path):
    """The LM configuration stored with a model: an LM export's lm_config.json, or a model
    folder's config.json (its "lm" part); None for a folder with neither."""
    if (folder / "lm_config.json").exists():
        return json.loads((folder / "lm_config.json").read_text())
    if (folder / "config.json").exists():
        return json.loads((folder / "config.json").read_text())["lm"]
    return None


PAD = 3
SEQ_FRAMES = 100  # 8 s training sequences
