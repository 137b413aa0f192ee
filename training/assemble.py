#!/usr/bin/env python3
"""Assembles the shipped kokichi-tiny model folder (assets/kokichi-tiny) from the training
exports: config.json, mimi.safetensors and model.safetensors (stored as float16 to fit the
30 MB budget; kokichi computes in f32), tokenizer.model.

`--halve-codec EXPORT OUT` instead writes a float16 copy of a codec export folder (mimi.safetensors
and mimi_config.json): the LM is trained on the codes of the codec as it ships."""
import argparse
import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CODEBOOKS, MIMI, lm_config  # noqa: E402


def halve(src: Path, dst: Path):
    state = load_file(str(src))
    out = {k: (v.to(torch.float16) if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    save_file(out, str(dst))


def halve_codec(src: Path, dst: Path):
    if not (src / "mimi.safetensors").exists():
        sys.exit(f"{src}: no mimi.safetensors (not a codec export folder)")
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copy(src / "mimi_config.json", dst / "mimi_config.json")
    halve(src / "mimi.safetensors", dst / "mimi.safetensors")


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--halve-codec":
        if len(sys.argv) != 4:
            sys.exit("usage: assemble.py --halve-codec EXPORT OUT")
        halve_codec(Path(sys.argv[2]), Path(sys.argv[3]))
        return
    ap = argparse.ArgumentParser(epilog="or: assemble.py --halve-codec EXPORT OUT")
    ap.add_argument("--codec", type=Path, required=True, help="the codec export (make train-tiny: codec-tuned8/export)")
    ap.add_argument("--lm", type=Path, required=True, help="the LM export (make train-tiny: its last stage's)")
    ap.add_argument("--data", type=Path, default=Path("/var/tmp/kokichi-data"))
    ap.add_argument("--out", type=Path, default=Path("assets/kokichi-tiny"))
    ap.add_argument("--trial", action="store_true",
                    help="a folder to measure, not to ship: any LM size (grow_lm.py's), no 30 MB check")
    args = ap.parse_args()
    lm_cfg = json.loads((args.lm / "lm_config.json").read_text())
    shipped = lm_config(lm_cfg["text_card"])
    # What the codec, the tokenizer and the token layout fix; the rest is the LM's size.
    streams = ("text_card", "existing_text_padding_id", "n_q", "dep_q", "card", "delays")
    keys = streams if args.trial else sorted(set(shipped) | set(lm_cfg))
    differ = [k for k in keys if lm_cfg.get(k) != shipped.get(k)]
    if differ:
        sys.exit(f"{args.lm / 'lm_config.json'}: {', '.join(differ)} differ from kokichi-tiny's"
                 + ("" if args.trial else " (--trial assembles other LM sizes for measuring)"))
    args.out.mkdir(parents=True, exist_ok=True)
    # The sampling kokichi uses unless told otherwise: greedy, because measured with eval_lm.py
    # (lm16), Moshi's sampling got a session's second question right 28 times of 60, greedy 37.
    cfg = {"mimi": MIMI, "lm": lm_cfg, "mimi_codebooks": CODEBOOKS, "sampling": {"greedy": True}}
    (args.out / "config.json").write_text(json.dumps(cfg, indent=1) + "\n")
    halve(args.codec / "mimi.safetensors", args.out / "mimi.safetensors")
    halve(args.lm / "model.safetensors", args.out / "model.safetensors")
    shutil.copy(args.data / "tokenizer.model", args.out / "tokenizer.model")
    total = sum(f.stat().st_size for f in args.out.iterdir())
    print(f"{args.out}: {total / 1e6:.1f} MB", file=sys.stderr)
    if total > 30e6 and not args.trial:
        sys.exit(f"{args.out}: {total / 1e6:.1f} MB, over the 30 MB budget")


if __name__ == "__main__":
    main()
