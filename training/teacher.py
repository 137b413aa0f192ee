"""A pretrained speech teacher for kokichi-tiny's semantic codebook: Google's `speech_embedding`
(Lin et al. 2020, arXiv:2002.01322; Apache-2.0), trained on a large keyword-spotting corpus
to give speaker-independent features of what was said. Mimi distils WavLM into its first
codebook; WavLM cannot be fetched here, this model can: the `openwakeword` 0.5.1 wheel on PyPI
carries it as two ONNX files (a 32-bin log-mel front end and the embedding network; the
package's wake-word heads, CC-BY-NC-SA, are not used). Training only, never in kokichi's path.

The embedding network reads 76 mel frames (10 ms hop, 512-sample window at 16 kHz: 0.78 s) and
gives 96 numbers; sliding it by 8 frames gives one vector per 80 ms, kokichi's frame rate.
Clips get LEAD = 11,232 zero samples in front, so vector t is computed from the 0.78 s that
end with codec frame t: a causal teacher, aligned with the causal codec.
"""
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
from scipy.signal import resample_poly

from common import FRAME

WHEEL = "openwakeword-0.5.1-py3-none-any.whl"
FILES = {"mel": "melspectrogram.onnx", "emb": "embedding_model.onnx"}
DIM = 96
WINDOW, STEP, HOP, FFT = 76, 8, 160, 512
# Zeros in front: window t then ends at 16 kHz sample STEP*HOP*t + HOP*(WINDOW-1) + FFT - LEAD,
# the end of codec frame t, 1280 * (t + 1).
LEAD = HOP * (WINDOW - 1) + FFT - STEP * HOP


def fetch(cache: Path) -> Path:
    """The two ONNX files, unpacked from the wheel (downloaded from PyPI once) into `cache`."""
    cache.mkdir(parents=True, exist_ok=True)
    if all((cache / f).exists() for f in FILES.values()):
        return cache
    wheel = cache / WHEEL
    if not wheel.exists():
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(cache),
                        "openwakeword==0.5.1"], check=True)
    with zipfile.ZipFile(wheel) as z:
        for f in FILES.values():
            (cache / f).write_bytes(z.read(f"openwakeword/resources/models/{f}"))
    return cache


class Teacher:
    def __init__(self, cache: Path = Path(os.environ.get("KOKICHI_TEACHER", "/var/tmp/kokichi-teacher"))):
        import onnxruntime as ort
        d = fetch(cache)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self.mel = ort.InferenceSession(str(d / FILES["mel"]), opts, providers=["CPUExecutionProvider"])
        self.emb = ort.InferenceSession(str(d / FILES["emb"]), opts, providers=["CPUExecutionProvider"])

    def __call__(self, pcm24: np.ndarray) -> np.ndarray:
        """[B, N] float audio at 24 kHz in [-1, 1], N a whole number of codec frames ->
        [B, N / FRAME, 96]: one teacher vector per codec frame."""
        b, n = pcm24.shape
        frames = n // FRAME
        x = resample_poly(pcm24, 2, 3, axis=1).astype(np.float32) * 32767.0
        x = np.concatenate([np.zeros((b, LEAD), np.float32), x], axis=1)
        spec = self.mel.run(None, {"input": x})[0][:, 0] / 10.0 + 2.0  # [B, F, 32]
        idx = np.arange(frames)[:, None] * STEP + np.arange(WINDOW)[None]  # [T, 76]
        if idx[-1, -1] >= spec.shape[1]:
            spec = np.concatenate([spec, np.repeat(spec[:, -1:], idx[-1, -1] + 1 - spec.shape[1], 1)], 1)
        win = spec[:, idx]  # [B, T, 76, 32]
        out = self.emb.run(None, {"input_1": win.reshape(b * frames, WINDOW, 32, 1)})[0]
        return out.reshape(b, frames, DIM)
