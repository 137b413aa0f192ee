#!/usr/bin/env python3
"""Codec quality of kokichi-tiny on speech it never trained on: held-out synthetic voices
(eval split) and real recordings (Debian's asterisk-core-sounds-en-wav, CC-BY-SA, 8 kHz);
and on the model's own voice (its answer clips), the only audio kokichi ever decodes, for
which the decoder is fine-tuned (tune_decoder.py).
Reports wide-band PESQ (at 16 kHz) and STOI, streaming the audio through the codec frame by
frame with the reference classes.

  eval_codec.py --codec WORK/codec/export [--data D] [--n 60]
"""
import argparse
import glob
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("NO_TORCH_COMPILE", "1")
import numpy as np  # noqa: E402
import torch  # noqa: E402
from pesq import pesq  # noqa: E402
from pystoi import stoi  # noqa: E402
from moshi.models.loaders import get_mimi  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CODEBOOKS, FRAME, MIMI, load_split, read_wav  # noqa: E402


def resample(x: np.ndarray, src: int, dst: int) -> np.ndarray:
    with tempfile.TemporaryDirectory() as d:
        a, b = os.path.join(d, "a.raw"), os.path.join(d, "b.raw")
        x.astype("<f4").tofile(a)
        subprocess.run(["sox", "-t", "f32", "-r", str(src), "-c", "1", a, "-t", "f32", "-r", str(dst), b], check=True)
        return np.fromfile(b, dtype="<f4")


@torch.no_grad()
def roundtrip(mimi, x: np.ndarray) -> np.ndarray:
    n = -(-len(x) // FRAME)
    buf = np.zeros(n * FRAME, np.float32)
    buf[:len(x)] = x
    out = []
    with mimi.streaming(1):
        for i in range(n):
            codes = mimi.encode(torch.from_numpy(buf[i * FRAME:(i + 1) * FRAME])[None, None])
            out.append(mimi.decode(codes)[0, 0].numpy())
    return np.concatenate(out)[:len(x)]


def score(ref24: np.ndarray, deg24: np.ndarray):
    r = resample(ref24, 24000, 16000)
    d = resample(deg24, 24000, 16000)
    n = min(len(r), len(d))
    return pesq(16000, r[:n], d[:n], "wb"), stoi(r[:n], d[:n], 16000, extended=False)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--codec", type=Path, default=Path("/var/tmp/kokichi-train/codec/export"))
    ap.add_argument("--data", type=Path, default=Path("/var/tmp/kokichi-data"))
    ap.add_argument("--n", type=int, default=60)
    args = ap.parse_args()
    torch.set_num_threads(1)
    mimi = get_mimi(str(args.codec / "mimi.safetensors"), MIMI, num_codebooks=CODEBOOKS)
    mimi.eval()
    rng = random.Random(0)
    sets = {}
    recs = [r for r in load_split(args.data, "eval") if r.get("file")]
    sets["held-out synthetic voices"] = [read_wav(args.data / r["file"]).astype(np.float32) / 32768 for r in rng.sample(recs, min(args.n, len(recs)))]
    # The package installs en_US_f_Allison/; `en` is a link to it where asterisk's own packages
    # (or an admin) made one.
    for folder in ["/usr/share/asterisk/sounds/en", "/usr/share/asterisk/sounds/en_US_f_Allison"]:
        real = sorted(glob.glob(f"{folder}/*.wav"))
        if real:
            break
    else:
        sys.exit("no asterisk prompts in /usr/share/asterisk/sounds/en{,_US_f_Allison}: "
                 "apt install asterisk-core-sounds-en-wav")
    picks = rng.sample(real, min(args.n, len(real)))
    sets["real recordings (asterisk, 8 kHz)"] = [resample(read_wav(p, 8000).astype(np.float32) / 32768, 8000, 24000) for p in picks]
    answers = json.loads((args.data / "answers.json").read_text())
    picks = rng.sample(sorted(answers), min(args.n, len(answers)))
    sets["the model's voice (answer clips)"] = [read_wav(args.data / answers[t]["file"]).astype(np.float32) / 32768 for t in picks]
    for name, clips in sets.items():
        ps, ss = [], []
        for x in clips:
            if len(x) < 24000 * 0.5:
                continue
            y = roundtrip(mimi, x)
            p, s = score(x, y)
            ps.append(p)
            ss.append(s)
        print(f"{name}: PESQ-WB {np.mean(ps):.2f} (median {np.median(ps):.2f}), STOI {np.mean(ss):.3f}, n={len(ps)}")


if __name__ == "__main__":
    main()
