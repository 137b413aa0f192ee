#!/usr/bin/env python3
"""A special token calling a tool, end to end through `kokichi run`: held-out time questions
(tool_tokens.py's eval split) answered by kokichi-tiny with a `<clock>` adapter, the token bound
to a command that prints a number word (`echo seven`); the command's answer is said by the model
(forced monologue). Prints how often the token fired and how often the answer audio says the
word, judged by the project's recognizer (eval_lm.Judge).

  eval_tools.py --bin target/debug/kokichi --adapter training/tool-tokens/clock --data DIR [--word seven]
"""
import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import read_wav  # noqa: E402
from eval_lm import Judge  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", required=True, help="the kokichi binary")
    ap.add_argument("--model", default="kokichi-tiny")
    ap.add_argument("--adapter", required=True)
    ap.add_argument("--data", required=True, help="tool_tokens.py's output folder (eval.jsonl, eval/)")
    ap.add_argument("--token", default="<clock>")
    ap.add_argument("--word", default="seven", help="what the bound command prints")
    ap.add_argument("--out", help="write the per-clip results here (JSON)")
    a = ap.parse_args()
    data = Path(a.data)
    clips = [json.loads(line) for line in (data / "eval.jsonl").read_text().splitlines() if line.strip()]
    clips = [c for c in clips if c["kind"] == "time"]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        judge = Judge(work)
        config = work / "tools.toml"
        config.write_text(f'[tools."{a.token}"]\ncommand = ["echo", "{a.word}"]\ntimeout_ms = 2000\n')
        for c in clips:
            out, text = work / "out.wav", work / "out.txt"
            cmd = [a.bin, "--backend", "cpu", "run", "--model", a.model, "--greedy", "--adapter", a.adapter,
                   "--config", str(config), "--input", str(data / c["file"]), "--output", str(out),
                   "--transcript", str(text)]
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
            transcript = text.read_text().strip()
            heard = judge.words(read_wav(out).astype(np.float32) / 32768)
            results.append({"file": c["file"], "transcript": transcript, "heard": heard,
                            "fired": a.token in transcript, "said": a.word in heard})
    n = len(results)
    fired = [r for r in results if r["fired"]]
    print(f"{a.token} fired on {len(fired)}/{n} held-out time questions")
    print(f"answer audio says '{a.word}': {sum(r['said'] for r in fired)}/{len(fired)} of those it fired on, "
          f"{sum(r['said'] for r in results)}/{n} of all")
    if a.out:
        Path(a.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
