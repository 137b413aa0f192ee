#!/usr/bin/env python3
"""Teacher-forced answer accuracy of a kokichi-tiny LM export: does the text stream predict the
answer words (and the first word, the one that depends on hearing the question) on training
and held-out token sequences? Separates "does not recognise" from "recognises but misspeaks".

  probe_lm.py [--export WORK/lm/export] [--tokens WORK/lm/tokens.safetensors] [--n 160]
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from moshi.models.lm import LMModel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PAD  # noqa: E402


@torch.no_grad()
def accuracy(lm, seqs):
    res = lm(seqs)
    tgt = seqs[:, 0]
    mask = (tgt != PAD) & res.text_mask[:, 0]
    pred = res.text_logits[:, 0].argmax(-1)
    first = []
    for b in range(len(seqs)):
        idx = torch.nonzero(mask[b]).flatten()
        if len(idx):
            first.append(bool(pred[b, idx[0]] == tgt[b, idx[0]]))
    return (pred[mask] == tgt[mask]).float().mean().item(), float(np.mean(first)), len(first)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--export", type=Path, default=Path("/var/tmp/kokichi-train/lm/export"))
    ap.add_argument("--tokens", type=Path, default=Path("/var/tmp/kokichi-train/lm/tokens.safetensors"))
    ap.add_argument("--n", type=int, default=160)
    args = ap.parse_args()
    torch.set_num_threads(1)
    lm = LMModel(**json.loads((args.export / "lm_config.json").read_text()))
    lm.load_state_dict(load_file(str(args.export / "model.safetensors")), strict=False)
    lm.eval()
    data = load_file(str(args.tokens))
    for split in ["train", "eval"]:
        words, first, n = accuracy(lm, data[split].long()[: args.n])
        print(f"{split}: answer words right {100 * words:.1f}%, first word right {100 * first:.1f}% (n={n})")


if __name__ == "__main__":
    main()
