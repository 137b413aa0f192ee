#!/usr/bin/env python3
"""Move every answer of a token file K frames later: a longer gap between the question and the
answer, without synthesizing or encoding anything again.

  later.py IN.npz OUT.npz --frames K

Why: probe_lm.py --by-voice shows the first answer word right far less often when the answer
is due 3-4 frames after the question's speech ends than when it is due 7-9. Moving the answers
is the controlled test of whether that is time to hear. It was not (3 frames later gave
nothing; the short-gap misses are padding written at the answer's frame, see --words-only).

The user stream is left as it is (it holds the question and then its own silence). On the model
stream and the text stream, frames from the answer's first on move K later; the K frames opened
take the model stream's silence (the frame before the answer) and text padding; the last K
frames fall off the end, which can cut a long answer's tail, never its first word. The metadata's
answer frame moves with it, so --multi's splicing finds the answer where it now is.
"""
import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CODEBOOKS, PAD  # noqa: E402


def later(seqs: np.ndarray, meta: np.ndarray, k: int):
    """Copies of `seqs` (N, 1 + 2 * CODEBOOKS, T) and `meta` (N, 3: record, lead, answer frame)
    with each answer moved `k` frames later. Silent sequences (answer frame -1) stay."""
    seqs, meta = seqs.copy(), meta.copy()
    rows = slice(0, 1 + CODEBOOKS)  # text, then the model's audio codebooks
    T = seqs.shape[-1]
    for n, (_, lead, af) in enumerate(meta):
        if lead < 0 or af < 1:
            continue
        if af + k >= T:
            sys.exit(f"sequence {n}: its answer starts at frame {af}; {k} frames later is past the end ({T})")
        old = seqs[n, rows].copy()
        seqs[n, rows, af + k:] = old[:, af:T - k]
        seqs[n, 1:1 + CODEBOOKS, af:af + k] = old[1:, af - 1:af]
        seqs[n, 0, af:af + k] = PAD
        meta[n, 2] = af + k
    return seqs, meta


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("src", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--frames", type=int, required=True, help="frames to move each answer (1 frame = 80 ms)")
    args = ap.parse_args()
    if not 1 <= args.frames <= 20:
        sys.exit(f"--frames {args.frames}: must be 1 to 20")
    try:
        data = np.load(args.src)
    except (OSError, ValueError) as e:
        sys.exit(f"{args.src}: not a token file ({e})")
    out = {"text_card": data["text_card"]}
    for split in ("train", "eval"):
        if split not in data.files:
            continue
        if data[split].shape[1] != 1 + 2 * CODEBOOKS:
            sys.exit(f"{args.src}: {split} has {data[split].shape[1]} streams, expected {1 + 2 * CODEBOOKS}")
        out[split], out[split + "_meta"] = later(data[split], data[split + "_meta"], args.frames)
    if len(out) == 1:
        sys.exit(f"{args.src}: no train or eval split")
    np.savez(args.out, **out)
    print(f"wrote {args.out}: answers {args.frames} frames later", file=sys.stderr)


if __name__ == "__main__":
    main()
