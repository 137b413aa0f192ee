#!/usr/bin/env python3
"""Averages the f32 exports of several LM stages of one lineage (a "model soup"): each tensor
of OUT/model.safetensors is the mean of that tensor in every IN/model.safetensors, and
OUT/lm_config.json is the first input's. Every stage after lm24 starts from the one before it,
so their weights stay close enough for a mean to be a model too. The shipped LM is the mean of
lm29 and lm30 (recipe.py, stage soup30); what the other means measured: ../docs/kokichi-tiny.md.

  soup.py --out W/soup/export W/lm27/export W/lm28/export
"""
import argparse
import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def read(folder: Path):
    weights, config = folder / "model.safetensors", folder / "lm_config.json"
    for f in (weights, config):
        if not f.is_file():
            sys.exit(f"{f}: missing (not an LM export folder)")
    return load_file(str(weights)), json.loads(config.read_text())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("exports", type=Path, nargs="+", help="LM export folders (model.safetensors, lm_config.json)")
    args = ap.parse_args()
    if len(args.exports) < 2:
        sys.exit("name at least two export folders to average")
    first, config = read(args.exports[0])
    total = {k: v.double() if v.is_floating_point() else v for k, v in first.items()}
    for folder in args.exports[1:]:
        state, other = read(folder)
        if other != config:
            sys.exit(f"{folder / 'lm_config.json'}: differs from {args.exports[0] / 'lm_config.json'}")
        if state.keys() != first.keys():
            diff = sorted(state.keys() ^ first.keys())
            sys.exit(f"{folder / 'model.safetensors'}: tensors differ from {args.exports[0]}'s: {', '.join(diff[:5])}")
        for k, v in state.items():
            if v.shape != first[k].shape or v.dtype != first[k].dtype:
                sys.exit(f"{folder / 'model.safetensors'}: {k} is {v.dtype} {tuple(v.shape)}, "
                         f"{args.exports[0]}'s is {first[k].dtype} {tuple(first[k].shape)}")
            if v.is_floating_point():
                total[k] += v.double()
            elif not torch.equal(v, first[k]):
                sys.exit(f"{folder / 'model.safetensors'}: {k} (not floating point) differs from {args.exports[0]}'s")
    n = len(args.exports)
    out = {k: (v / n).to(first[k].dtype).contiguous() if v.is_floating_point() else v for k, v in total.items()}
    args.out.mkdir(parents=True, exist_ok=True)
    save_file(out, str(args.out / "model.safetensors"))
    shutil.copy(args.exports[0] / "lm_config.json", args.out / "lm_config.json")
    print(f"{args.out}: the mean of {n} exports, {len(out)} tensors", file=sys.stderr)


if __name__ == "__main__":
    main()
