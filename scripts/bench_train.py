#!/usr/bin/env python3
"""`make bench-train`: Burn's training speed (kokichi train-codec / train-lm on the flex CPU
backend) against PyTorch with the reference `moshi` classes, same model, batch and loss, in the
same run. This is the measurement behind training kokichi-tiny's shipped weights with PyTorch.

  bench_train.py --bin target/debug/kokichi [--data /var/tmp/kokichi-data] [--tokens T.safetensors]

Each side runs one warm-up step, then --steps timed steps (Burn: resumed from the warm-up run,
so compilation and allocation warm-up are excluded from its figure too).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "training"))
from common import CODEBOOKS, MIMI, MelLoss, lm_config  # noqa: E402
from moshi.models.loaders import get_mimi  # noqa: E402


def burn(bin_path, sub, args_list, out: Path, steps: int) -> float:
    env = dict(os.environ, RUST_LOG="warn")
    for n in (1, 1 + steps):
        subprocess.run([bin_path, "--backend", "cpu", sub, *args_list, "--out", str(out), "--steps", str(n)],
                       check=True, env=env)
        if n == 1:
            first = json.loads((out / "progress.json").read_text())["seconds"]
    total = json.loads((out / "progress.json").read_text())["seconds"]
    return total / steps, first


def torch_codec(batch, seconds, steps, bf16):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "training"))
    from train_codec import forward
    mimi = get_mimi(None, MIMI, num_codebooks=CODEBOOKS)
    mimi.train()
    mel = MelLoss()
    opt = torch.optim.AdamW(mimi.parameters(), lr=1e-4, betas=(0.8, 0.99))
    n = int(round(seconds * 24000 / 1920)) * 1920
    times = []
    for i in range(steps + 1):
        x = torch.randn(batch, 1, n) * 0.1
        t = time.perf_counter()
        y, penalty = forward(mimi, x, bf16)
        loss = mel(y[:, 0], x[:, 0]) + 5 * ((y - x) ** 2).mean() / (x ** 2).mean() + 0.1 * penalty
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(mimi.parameters(), 5.0)
        opt.step()
        if i:
            times.append(time.perf_counter() - t)
    return sum(times) / len(times)


def torch_lm(tokens: Path, batch, steps, bf16):
    from safetensors.torch import load_file
    from moshi.models.lm import LMModel
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "training"))
    from train_lm import lm_loss
    data = load_file(str(tokens))["train"].long()
    cfg = json.loads((tokens.parent / "lm_config.json").read_text()) if (tokens.parent / "lm_config.json").exists() \
        else lm_config(int(data[:, 0].max()) + 1)
    lm = LMModel(**cfg)
    lm.train()
    opt = torch.optim.AdamW(lm.parameters(), lr=1e-4)
    times = []
    for i in range(steps + 1):
        codes = data[torch.randint(0, len(data), (batch,))]
        t = time.perf_counter()
        lt, la, _, _ = lm_loss(lm, codes, bf16=bf16)
        opt.zero_grad(set_to_none=True)
        (lt + la).backward()
        opt.step()
        if i:
            times.append(time.perf_counter() - t)
    return sum(times) / len(times), cfg


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--data", type=Path, default=Path("/var/tmp/kokichi-data"))
    ap.add_argument("--tokens", type=Path, default=Path("/var/tmp/kokichi-train/lm/tokens.safetensors"))
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if (args.data / "train.jsonl").exists():
            cfg = tmp / "mimi.json"
            cfg.write_text(json.dumps(MIMI))
            b, first = burn(args.bin, "train-codec", ["--data", str(args.data), "--config", str(cfg),
                                                      "--codebooks", str(CODEBOOKS), "--batch", "8",
                                                      "--seconds", "1.2", "--max-files", "64"],
                            tmp / "codec", args.steps)
            t32 = torch_codec(8, 1.2, args.steps, False)
            t16 = torch_codec(8, 1.2, args.steps, True)
            rows.append(("codec (kokichi-tiny, 8 x 1.2 s)", b, first, t32, t16))
        else:
            print(f"no corpus at {args.data}: skipping the codec (training/make_data.py)", file=sys.stderr)
        if args.tokens.exists():
            t32, cfg = torch_lm(args.tokens, 16, args.steps, False)
            t16, _ = torch_lm(args.tokens, 16, args.steps, True)
            lmcfg = tmp / "lm.json"
            lmcfg.write_text(json.dumps(cfg))
            b, first = burn(args.bin, "train-lm", ["--tokens", str(args.tokens), "--config", str(lmcfg),
                                                   "--batch", "16"], tmp / "lm", args.steps)
            rows.append(("LM (kokichi-tiny, 16 x 8 s)", b, first, t32, t16))
        else:
            print(f"no tokens at {args.tokens}: skipping the LM (training/train_lm.py tokenize)", file=sys.stderr)
    print(f"training step, {args.threads} threads, mean of {args.steps} steps after one warm-up")
    print(f"{'model':34} {'burn flex':>10} {'(1st step)':>10} {'torch f32':>10} {'torch bf16':>10} {'burn/f32':>9} {'burn/bf16':>9}")
    for name, b, first, t32, t16 in rows:
        print(f"{name:34} {b:9.2f}s {first:9.2f}s {t32:9.2f}s {t16:9.2f}s {b / t32:8.1f}x {b / t16:8.1f}x")


if __name__ == "__main__":
    main()
