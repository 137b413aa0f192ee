#!/usr/bin/env python3
"""`make eval-tiny`: how well the shipped kokichi-tiny answers questions in voices it never
heard (the held-out eval split: festival, en-029 espeak, flite rms, RHVoice clb, MBROLA us3),
run through kokichi itself (examples/answer_many, the same streaming path as `kokichi run`).

Three figures:
  text   - the inner monologue says the right answer;
  audio  - the answer audio says it, judged by an independent recognizer (pocketsphinx,
           restricted to the domain's vocabulary; used only here, never in kokichi);
  quiet  - silence in gives silence out: no text and no recognized word.
With --pairs N, also N sessions of two questions, the second asked after the first answer
(a daemon session goes on): is the second answered as well as the first?

  eval_lm.py --model assets/kokichi-tiny --bin target/debug/examples/answer_many [--n 300] [--pairs 60]
"""
import argparse
import json
import os
import random
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import domain  # noqa: E402
from common import RATE, load_split, noise as coloured, read_wav  # noqa: E402
from eval_codec import resample  # noqa: E402


SILENT = 0.003  # peak amplitude (-50 dBFS) below which a window says nothing


def write_wav(path, pcm, rate=RATE):
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(pcm, -1, 1) * 32767).astype("<i2").tobytes())


class Judge:
    """pocketsphinx restricted to the domain: one of kokichi-tiny's possible answers, or
    nothing. (A free loop over the domain's words took about 1 s per 2 s of audio; its accuracy
    on the clean answer clips is printed by tune_decoder.py.)"""

    def __init__(self, work: Path):
        from pocketsphinx import Decoder, get_model_path
        root = Path(get_model_path())
        # pocketsphinx 5 keeps the model under en-us/, older releases beside it.
        model = root / "en-us" if (root / "en-us" / "cmudict-en-us.dict").exists() else root
        words = domain.vocabulary()
        prons = {}
        for line in (model / "cmudict-en-us.dict").read_text().splitlines():
            w, _, p = line.partition(" ")
            base = w.split("(")[0]
            if base in words:
                prons.setdefault(w, p)
        known = {w.split("(")[0] for w in prons}
        self.phrases = [a for a in domain.answers() if all(w in known for w in a.split())]
        (work / "domain.dict").write_text("".join(f"{w} {p}\n" for w, p in prons.items()))
        grammar = ("#JSGF V1.0;\ngrammar domain;\npublic <s> = [<a>];\n<a> = "
                   + " | ".join(self.phrases) + ";\n")
        (work / "domain.gram").write_text(grammar)
        self.decoder = Decoder(hmm=str(model / "en-us"), dict=str(work / "domain.dict"),
                               jsgf=str(work / "domain.gram"), logfn=os.devnull)

    def words(self, pcm24: np.ndarray):
        # Below the level at which make_data.py trims a synthesizer's output as silence, nothing
        # is said. pocketsphinx, forced through the grammar, otherwise "hears" a word in a
        # constant 1-LSB signal (measured: a decoder whose silence is that heard "fish" in all
        # 60 quiet windows).
        if len(pcm24) < 1600 or np.abs(pcm24).max() < SILENT:
            return []
        x = resample(pcm24, 24000, 16000)
        data = (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()
        self.decoder.start_utt()
        self.decoder.process_raw(data, full_utt=True)
        self.decoder.end_utt()
        hyp = self.decoder.hyp()
        return hyp.hypstr.split() if hyp else []


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="assets/kokichi-tiny")
    ap.add_argument("--bin", required=True)
    ap.add_argument("--data", type=Path, default=Path("/var/tmp/kokichi-data"))
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--silences", type=int, default=100)
    ap.add_argument("--pairs", type=int, default=0, help="sessions of two questions, one after the other's answer")
    ap.add_argument("--reuse", action="store_true", help="judge the answers already in OUT (same --n/--silences)")
    ap.add_argument("--sample", action="store_true", help="sample (Moshi defaults) instead of greedy")
    ap.add_argument("--text-temp", type=float, help="the text stream's temperature (0: greedy), over --sample's")
    ap.add_argument("--text-top-k", type=int)
    ap.add_argument("--audio-temp", type=float, help="the audio streams' temperature (0: greedy), over --sample's")
    ap.add_argument("--audio-top-k", type=int)
    ap.add_argument("--seed", type=int, default=0, help="sampling seed of the first file (file i: seed + i)")
    ap.add_argument("--peak", type=float, help="every question rescaled to this peak level (dBFS) instead of its own")
    ap.add_argument("--noise", type=float, help="RMS level (dBFS) of the noise under the questions and in the silent windows "
                    "(default: -70.5 under the questions, -90 to -60 in the silent windows)")
    ap.add_argument("--colour", type=float, default=0.0,
                    help="that noise's spectral slope: power as f^-COLOUR (0 white, 1 pink, 2 brown)")
    ap.add_argument("--input-gain", type=float, help="answer_many's --input-gain (dB), as the daemon's input_gain")
    ap.add_argument("--out", type=Path, default=Path("out/eval-tiny"))
    args = ap.parse_args()
    rng = random.Random(7)
    work = args.out
    (work / "in").mkdir(parents=True, exist_ok=True)
    recs = [r for r in load_split(args.data, "eval") if r["task"] != "silence" and r.get("file")]
    picked = rng.sample(range(len(recs)), min(args.n, len(recs)))  # the same draw as sampling recs
    taken = set(picked)
    pool = [r for k, r in enumerate(recs) if k not in taken] or recs
    recs = [recs[k] for k in picked]
    noise = 3e-4 if args.noise is None else 10 ** (args.noise / 20)

    def floor(seed, n):
        """The noise under a question, a pair or a silent window (white: the samples drawn before)."""
        return (coloured(np.random.default_rng(seed), n, args.colour) * noise).astype(np.float32)

    def question(r):
        q = read_wav(args.data / r["file"]).astype(np.float32) / 32768
        if args.peak is not None and np.abs(q).max() > 0:
            q *= np.float32(10 ** (args.peak / 20) / np.abs(q).max())
        return q

    items = []
    for r in recs:
        q = question(r)
        lead = int(rng.uniform(0.3, 1.0) * RATE)
        pcm = np.zeros(lead + len(q) + 4 * RATE, np.float32)
        pcm[lead:lead + len(q)] = q
        pcm += floor(r["id"], len(pcm))
        name = f"q{r['id']:06d}"
        write_wav(work / "in" / f"{name}.wav", pcm)
        items.append({"name": name, "task": r["task"], "question": r["question"], "answer": r["answer"],
                      "voice": r["voice"], "answer_from": lead + len(q)})
    for i in range(args.silences):
        name = f"s{i:04d}"
        level = 10 ** rng.uniform(-4.5, -3)  # drawn either way, so the pairs after stay the same
        if args.noise is None:
            pcm = np.random.default_rng(10_000 + i).normal(0, level, 6 * RATE).astype(np.float32)
        else:  # nobody speaking in the same noisy room
            pcm = floor(10_000 + i, 6 * RATE)
        write_wav(work / "in" / f"{name}.wav", pcm)
        items.append({"name": name, "task": "silence", "answer": "", "answer_from": 0})
    pairs = []
    for i in range(args.pairs):
        # Questions not among the single ones: a fresh draw from the same held-out split.
        a, b = rng.sample(pool, 2)
        qa, qb = (question(r) for r in (a, b))
        lead = int(rng.uniform(0.3, 1.0) * RATE)
        second = lead + len(qa) + 4 * RATE
        pcm = np.zeros(second + len(qb) + 4 * RATE, np.float32)
        pcm[lead:lead + len(qa)] = qa
        pcm[second:second + len(qb)] = qb
        pcm += floor(20_000 + i, len(pcm))
        name = f"p{i:04d}"
        write_wav(work / "in" / f"{name}.wav", pcm)
        pairs.append({"name": name, "questions": [a["question"], b["question"]], "answers": [a["answer"], b["answer"]],
                      "answer_from": [lead + len(qa), second + len(qb)]})
    (work / "list.txt").write_text("".join(str((work / "in" / f"{it['name']}.wav").resolve()) + "\n"
                                           for it in items + pairs))
    cmd = [args.bin, "--model", args.model, "--list", str(work / "list.txt"), "--out", str(work / "answers"), "--backend", "cpu"]
    if not args.sample:
        cmd.append("--greedy")
    for flag in ("text_temp", "text_top_k", "audio_temp", "audio_top_k", "seed", "input_gain"):
        if getattr(args, flag) is not None:
            cmd += ["--" + flag.replace("_", "-"), str(getattr(args, flag))]
    if not args.reuse:
        subprocess.run(cmd, check=True)
    judge = Judge(work)
    by_task = {}
    for n, it in enumerate(items, 1):
        if n % 20 == 0:
            print(f"judged {n}/{len(items)}", file=sys.stderr, flush=True)
        text = (work / "answers" / f"{it['name']}.txt").read_text().split()
        audio = read_wav(work / "answers" / f"{it['name']}.wav").astype(np.float32) / 32768
        # Answers last under 3 s: judging only that window keeps the recognizer fast.
        heard = judge.words(audio[it["answer_from"]:it["answer_from"] + 3 * RATE])
        want = it["answer"].split()
        if it["task"] == "silence":
            ok_text, ok_audio = not text, not heard
        else:
            ok_text, ok_audio = text == want, heard == want
        it.update(text=" ".join(text), heard=" ".join(heard), ok_text=ok_text, ok_audio=ok_audio)
        t = by_task.setdefault(it["task"], [0, 0, 0])
        t[0] += 1
        t[1] += ok_text
        t[2] += ok_audio
    for it in pairs:
        # The text has no timing: the first answer must open it and the second close it.
        text = (work / "answers" / f"{it['name']}.txt").read_text().split()
        audio = read_wav(work / "answers" / f"{it['name']}.wav").astype(np.float32) / 32768
        a1, a2 = (a.split() for a in it["answers"])
        heard = [judge.words(audio[f:f + 3 * RATE]) for f in it["answer_from"]]
        it.update(text=" ".join(text), heard=[" ".join(h) for h in heard], ok_text=[text[:len(a1)] == a1, text[-len(a2):] == a2],
                  ok_audio=[heard[0] == a1, heard[1] == a2], exact=text == a1 + a2)
    (work / "results.jsonl").write_text("".join(json.dumps(it) + "\n" for it in items + pairs))
    qs = [it for it in items if it["task"] != "silence"]
    sil = [it for it in items if it["task"] == "silence"]
    base = "Moshi's sampling" if args.sample else "greedy"
    over = ", ".join(f"{f.replace('_', ' ')} {getattr(args, f)}" for f in ("text_temp", "text_top_k", "audio_temp", "audio_top_k")
                     if getattr(args, f) is not None)
    level = "".join([f"; questions peak {args.peak:g} dBFS" if args.peak is not None else "",
                     f"; noise {args.noise:g} dBFS" if args.noise is not None else "",
                     f", spectral slope {args.colour:g}" if args.colour else "",
                     f"; input gain {args.input_gain:g} dB" if args.input_gain is not None else ""])
    print(f"kokichi-tiny on held-out voices ({base}{'; ' + over if over else ''}{level}), {len(qs)} questions, "
          f"{len(sil)} silent windows")
    for task, (n, t, a) in sorted(by_task.items()):
        print(f"  {task:9s} n={n:3d}  text {100 * t / n:5.1f}%  audio {100 * a / n:5.1f}%")
    print(f"TEXT right answer:  {100 * np.mean([it['ok_text'] for it in qs]):.1f}%")
    print(f"AUDIO says it:      {100 * np.mean([it['ok_audio'] for it in qs]):.1f}%")
    if sil:
        print(f"SILENCE stays quiet: {100 * np.mean([it['ok_text'] and it['ok_audio'] for it in sil]):.1f}%")
    if pairs:
        for k, which in enumerate(["first", "second"]):
            print(f"{len(pairs)} sessions of two questions, {which}: text {100 * np.mean([p['ok_text'][k] for p in pairs]):.1f}%"
                  f"  audio {100 * np.mean([p['ok_audio'][k] for p in pairs]):.1f}%")
        print(f"  text exactly both answers: {100 * np.mean([p['exact'] for p in pairs]):.1f}%")


if __name__ == "__main__":
    main()
