#!/usr/bin/env python3
"""Deepens an LM export by inserting temporal-transformer layers that start as the identity,
so the deeper model says exactly what the export said and training goes on from there. A
measurement tool (is the LM's depth what limits kokichi-tiny's hearing?), not a stage of
`make train-tiny`: a deeper LM would not fit the 30 MB budget in float16.

  grow_lm.py --from assets/kokichi-tiny --after 1 2 3 4 --out W/grow10/init
  train_lm.py train --init W/grow10/init --audio-teacher assets/kokichi-tiny ...

Each new layer is a copy of the layer before it with its two output projections (attention's
out_proj, the feed-forward's linear_out) zeroed: both residual branches then add nothing.
Training moves those projections off zero first, so the copy's attention and feed-forward
weights give the new layer a useful start. OUT gets model.safetensors and lm_config.json
(train_lm.py --init takes the architecture from it).
"""
import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import export_config  # noqa: E402

PREFIX = "transformer.layers."
ZEROED = ("self_attn.out_proj.weight", "gating.linear_out.weight")


def grow(state: dict, layers: int, after: list) -> dict:
    """`state` with a new layer after each layer index in `after` (indices of the original)."""
    bad = [a for a in after if not 0 <= a < layers]
    if bad:
        sys.exit(f"--after {bad}: the model has layers 0..{layers - 1}")
    out = {k: v for k, v in state.items() if not k.startswith(PREFIX)}
    new = 0
    for i in range(layers):
        own = {k[len(f"{PREFIX}{i}."):]: v for k, v in state.items() if k.startswith(f"{PREFIX}{i}.")}
        if not own:
            sys.exit(f"no tensors for {PREFIX}{i}")
        for name, v in own.items():
            out[f"{PREFIX}{new}.{name}"] = v.clone()
        new += 1
        for _ in range(after.count(i)):
            for name, v in own.items():
                out[f"{PREFIX}{new}.{name}"] = torch.zeros_like(v) if name in ZEROED else v.clone()
            new += 1
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--from", dest="src", type=Path, required=True, help="an LM export or model folder")
    ap.add_argument("--after", type=int, nargs="+", required=True, help="original layers to put a new one after")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    cfg = export_config(args.src)
    if cfg is None:
        sys.exit(f"{args.src}: no lm_config.json or config.json")
    state = load_file(str(args.src / "model.safetensors"))
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    grown = grow(state, cfg["num_layers"], args.after)
    cfg = dict(cfg, num_layers=cfg["num_layers"] + len(args.after))
    for name in ZEROED:
        if not any(k.endswith(name) for k in grown):
            sys.exit(f"no {name} in {args.src}: not a Moshi LM in the checkpoint layout")
    args.out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in grown.items()}, str(args.out / "model.safetensors"))
    (args.out / "lm_config.json").write_text(json.dumps(cfg, indent=1))
    n = sum(v.numel() for v in grown.values())
    print(f"{args.out}: {cfg['num_layers']} layers, {n / 1e6:.2f} M parameters", file=sys.stderr)


if __name__ == "__main__":
    main()
