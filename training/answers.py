"""The answer clips and per-answer code sets that decoder tuning and the canonical answer codes share.

tune_decoder.py trains the codec's decoder on the answer clips (optionally on an LM's own codes
for them); canon_codes.py makes those codes and judges them. Both lay each clip out the same way
(LEAD frames of silence first) and judge the decodes with the eval's recognizer, so the layout,
the judge and the code files live here, imported by both.
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import FRAME, read_wav  # noqa: E402

LEAD = 4  # frames of silence before each answer, as the tokenizer lays them out


def answer_clips(data: Path):
    """Every answer clip after LEAD frames of silence, zero-padded to one common length, and
    each one's length in frames (LEAD + clip + 1)."""
    answers = json.loads((data / "answers.json").read_text())
    pcms = {t: read_wav(data / a["file"]).astype(np.float32) / 32768 for t, a in sorted(answers.items())}
    frames = LEAD + max(-(-len(p) // FRAME) for p in pcms.values()) + 2
    texts, rows, lens = [], [], []
    for t, p in pcms.items():
        x = np.zeros(frames * FRAME, np.float32)
        x[LEAD * FRAME:LEAD * FRAME + len(p)] = p
        texts.append(t)
        rows.append(x)
        lens.append(LEAD + -(-len(p) // FRAME) + 1)
    return texts, torch.from_numpy(np.stack(rows))[:, None], torch.tensor(lens)


def judge_all(texts, audio, work: Path):
    """Share of the answers whose audio the eval's judge (pocketsphinx) hears word for word."""
    from eval_lm import Judge
    judge = Judge(work)
    ok = [judge.words(a[0].numpy()) == t.split() for t, a in zip(texts, audio)]
    return float(np.mean(ok))


def load_codes(path: Path) -> dict:
    """An answer-codes file (canon_codes.py extract): answer text -> int16 codes [codebooks, frames]."""
    z = np.load(path)
    return {str(t): z[f"codes_{i}"] for i, t in enumerate(z["texts"])}


def place(said: dict, texts, base: torch.Tensor, start: int, path: Path):
    """`base` (codes [answers, codebooks, frames], one row per answer of `texts`) with each
    row's answer frames from `start` on replaced by that answer's codes in `said` (read from
    `path`); returns them and a mask of the frames replaced."""
    missing = [t for t in texts if t not in said]
    if missing:
        sys.exit(f"{path}: no codes for {', '.join(missing)}")
    out = base.clone()
    mask = torch.zeros(base.shape[0], base.shape[-1], dtype=torch.bool)
    for r, t in enumerate(texts):
        c = torch.from_numpy(said[t].astype(np.int64))
        n = min(c.shape[1], base.shape[-1] - start)
        out[r, :, start:start + n] = c[:, :n]
        mask[r, start:start + n] = True
    return out, mask
