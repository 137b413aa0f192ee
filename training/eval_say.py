#!/usr/bin/env python3
"""How well kokichi-tiny says text it is made to say (`kokichi run --say TEXT`: the text's pieces
forced into its inner monologue, no TTS stage), judged by the project's recognizer
(eval_lm.Judge: pocketsphinx restricted to kokichi-tiny's answers).

Each of the domain's one-word answers is said in answer to a question in a held-out voice
(assets/examples, in turn): the forced word replaces the model's own answer. The share whose
answer audio the judge hears as that word is printed, with the numbers 0-20 (the arithmetic
answers) apart, to set beside `make eval-tiny`'s audio figure for answers the model finds on
its own; and, as a check of the judge, the share for the model's own answers to the same
questions.

  eval_say.py --bin target/debug/kokichi [--n 60] [--seed 0]
"""
import argparse
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np


sys.path.insert(0, str(Path(__file__).resolve().parent))
import domain  # noqa: E402
from common import read_wav  # noqa: E402
from eval_lm import Judge  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", required=True, help="the kokichi binary")
    ap.add_argument("--model", default="kokichi-tiny")
    ap.add_argument("--n", type=int, default=60, help="words to say (numbers 0-20 first, then others)")
    ap.add_argument("--questions", default="assets/examples", help="folder of question wavs with expected.json")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="write the per-word results here (JSON)")
    a = ap.parse_args()
    rng = random.Random(a.seed)
    numbers = [domain.number(n) for n in range(21)]
    one_word = sorted({x for x in domain.answers() if " " not in x} - set(numbers))
    rng.shuffle(one_word)
    words = (numbers + one_word)[: a.n]
    folder = Path(a.questions)
    expected = json.loads((folder / "expected.json").read_text())
    questions = [(folder / f"{k}.wav", v["answer"]) for k, v in sorted(expected.items()) if v.get("answer")]
    results = []
    own = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        judge = Judge(work)

        def answer(question, say=None):
            out = work / "out.wav"
            cmd = [a.bin, "--backend", "cpu", "run", "--model", a.model, "--greedy", "--input", str(question),
                   "--output", str(out)] + (["--say", say] if say else [])
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
            return judge.words(read_wav(out).astype(np.float32) / 32768)

        for question, right in questions:
            heard = answer(question)
            own.append({"question": question.name, "answer": right, "heard": heard, "hit": " ".join(heard) == right})
        for i, w in enumerate(words):
            question, _ = questions[i % len(questions)]
            heard = answer(question, w)
            results.append({"word": w, "question": question.name, "number": w in numbers, "heard": heard,
                            "hit": w in heard})
    for label, keep in [("numbers 0-20", True), ("other words", False)]:
        rows = [r for r in results if r["number"] == keep]
        if rows:
            hits = sum(r["hit"] for r in rows)
            print(f"{label}: {hits}/{len(rows)} = {100 * hits / len(rows):.1f}% heard as said")
    hits = sum(r["hit"] for r in results)
    print(f"all: {hits}/{len(results)} = {100 * hits / len(results):.1f}%")
    hits = sum(r["hit"] for r in own)
    print(f"the model's own answers to the same questions: {hits}/{len(own)} heard right")
    if a.out:
        Path(a.out).write_text(json.dumps({"said": results, "own": own}, indent=1))


if __name__ == "__main__":
    main()
