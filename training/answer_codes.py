#!/usr/bin/env python3
"""How well an LM knows the answer clips' codes of a token file, teacher-forced.

The model stream is always one of a closed set of answer clips in one voice, so an LM learns
their code sequences by heart; clips synthesized again (another machine, another sox dither)
change some codes. Prints, per model: the audio loss over all frames (train-mode loss without
dropout, as `train_lm.py` computes it) and, per codebook, the cross-entropy and the share of codes
predicted right at the answer frames (codes other than that codebook's most common, silent one),
on the first N held-out sequences.

  answer_codes.py --tokens W/lm19/tokens.npz --model assets/kokichi-tiny W/lm19a/export [--n 64]
"""
import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("NO_TORCH_COMPILE", "1")
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import lm_config  # noqa: E402
from train_lm import losses, train_forward  # noqa: E402
from moshi.models.loaders import get_moshi_lm  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=Path, required=True)
    ap.add_argument("--model", type=Path, nargs="+", required=True, help="LM exports or model folders")
    ap.add_argument("--n", type=int, default=64, help="held-out sequences")
    args = ap.parse_args()
    torch.set_num_threads(1)
    seqs = torch.from_numpy(np.load(args.tokens)["eval"][:args.n].astype(np.int64))
    for path in args.model:
        cfg_file = path / "lm_config.json"
        text_card = (json.loads(cfg_file.read_text()) if cfg_file.exists()
                     else json.loads((path / "config.json").read_text())["lm"])["text_card"]
        lm = get_moshi_lm(str(path / "model.safetensors"), lm_kwargs=dict(lm_config(text_card)),
                          device="cpu", dtype=torch.float32)
        lm.eval()
        q = lm.dep_q
        loss, right, seen, audio = np.zeros(q), np.zeros(q), np.zeros(q), []
        with torch.no_grad():
            for i in range(0, len(seqs), 16):
                codes = seqs[i:i + 16]
                out = train_forward(lm, codes)
                audio.append(losses(lm, codes, out)[1].item())
                _, _, _, logits, mask = out
                target = codes[:, 1:1 + q]
                for k in range(q):
                    silent = torch.mode(target[:, k].flatten()).values
                    m = mask[:, k] & (target[:, k] != silent)
                    lg, tg = logits[:, k][m].float(), target[:, k][m]
                    loss[k] += F.cross_entropy(lg, tg, reduction="sum").item()
                    right[k] += (lg.argmax(-1) == tg).sum().item()
                    seen[k] += m.sum().item()
        print(f"{path}: audio loss, all frames {np.mean(audio):.4f}; at the answer frames, per codebook: "
              f"cross-entropy {' '.join(f'{v:.4f}' for v in loss / seen)}, "
              f"right {' '.join(f'{100 * v:.1f}%' for v in right / seen)}", flush=True)


if __name__ == "__main__":
    main()
