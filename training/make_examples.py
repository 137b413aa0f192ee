#!/usr/bin/env python3
"""Writes assets/examples/: a few held-out questions (voices kokichi-tiny never trained on, no
MBROLA voice since those are non-commercial) padded with room for the answer, one quiet
recording, and expected.json with the answer each should get. `make run` answers them when
there is no sound card, and tests/tiny_default.rs checks the shipped model against them.

Picked once by a fixed seed, one per task, before looking at what the model answers."""
import argparse
import json
import random
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RATE, load_split, read_wav  # noqa: E402
from eval_lm import write_wav  # noqa: E402

TASKS = ["plus", "minus", "after", "before", "repeat", "greeting"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=Path("/var/tmp/kokichi-data"))
    ap.add_argument("--out", type=Path, default=Path("assets/examples"))
    ap.add_argument("--seed", type=int, default=11)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    recs = [r for r in load_split(args.data, "eval") if r.get("file") and not r["voice"].startswith("espeak:mb-")]
    args.out.mkdir(parents=True, exist_ok=True)
    expected = {}
    for i, task in enumerate(TASKS):
        r = rng.choice([x for x in recs if x["task"] == task])
        q = read_wav(args.data / r["file"]).astype(np.float32) / 32768
        lead = RATE // 2
        pcm = np.zeros(lead + len(q) + 4 * RATE, np.float32)
        pcm[lead:lead + len(q)] = q
        name = f"{i + 1}-{task}"
        write_wav(args.out / f"{name}.wav", pcm)
        expected[name] = {"question": r["question"], "answer": r["answer"], "voice": r["voice"]}
    quiet = np.random.default_rng(args.seed).normal(0, 3e-4, 5 * RATE).astype(np.float32)
    write_wav(args.out / f"{len(TASKS) + 1}-silence.wav", quiet)
    expected[f"{len(TASKS) + 1}-silence"] = {"question": "", "answer": "", "voice": "room noise"}
    (args.out / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")
    for k, v in expected.items():
        print(f"{k}: {v['voice']}: {v['question']!r} -> {v['answer']!r}", file=sys.stderr)


if __name__ == "__main__":
    main()
