#!/usr/bin/env python3
"""Two `eval_lm.py` runs on the same evaluation set, question by question: is one model's
lead more than chance? A gain of a few points on 200 questions is within one standard error,
so the stage notes quote the paired counts (right for one model only) and the exact McNemar
test on them, and how many right-text answers the answer audio also says.

  compare_evals.py W/lm14/eval/results.jsonl W/lm16/eval/results.jsonl
"""
import argparse
import json
import sys
from math import comb
from pathlib import Path


def singles(path):
    """The single questions of one run (not the silent windows, not the two-question sessions)."""
    out = {}
    for i, line in enumerate(Path(path).read_text().splitlines(), 1):
        try:
            it = json.loads(line)
        except json.JSONDecodeError as e:
            sys.exit(f"{path}:{i}: not JSON ({e}); give eval_lm.py's results.jsonl")
        if it.get("task") != "silence" and isinstance(it.get("ok_text"), bool):
            out[it["name"]] = it
    if not out:
        sys.exit(f"{path}: no single questions (is it eval_lm.py's results.jsonl?)")
    return out


def mcnemar(only_a, only_b):
    """Exact two-sided McNemar p: the discordant pairs as a fair coin."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    return min(1.0, 2 * sum(comb(n, i) for i in range(min(only_a, only_b) + 1)) / 2 ** n)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a", help="the first run's results.jsonl")
    ap.add_argument("b", help="the second run's results.jsonl")
    args = ap.parse_args()
    a, b = singles(args.a), singles(args.b)
    if a.keys() != b.keys() or any(a[k]["question"] != b[k]["question"] for k in a):
        sys.exit(f"{args.a} and {args.b} are not on the same questions")
    for name, run in (("a", a), ("b", b)):
        right = [it for it in run.values() if it["ok_text"]]
        rep = [it for it in right if it["task"] == "repeat"]
        print(f"{name}: text {len(right)}/{len(run)}, audio {sum(it['ok_audio'] for it in run.values())}; "
              f"the audio says {sum(it['ok_audio'] for it in right)} of the right-text answers "
              f"(and {sum(it['ok_audio'] and not it['ok_text'] for it in run.values())} other), "
              f"repeated words {sum(it['ok_audio'] for it in rep)} of {len(rep)}")
    for key in ("ok_text", "ok_audio"):
        only_a = sum(a[k][key] and not b[k][key] for k in a)
        only_b = sum(b[k][key] and not a[k][key] for k in a)
        print(f"{key[3:]}: right for a only {only_a}, b only {only_b}; exact McNemar p = {mcnemar(only_a, only_b):.2f}")


if __name__ == "__main__":
    main()
