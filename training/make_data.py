#!/usr/bin/env python3
"""Synthesizes kokichi-tiny's corpus with Debian's synthesizers (see voices.py for the voices
and their licences). Generated data stays out of git: this script regenerates it.

  make_data.py --out /var/tmp/kokichi-data --train 16000 --eval 600
  make_data.py --out /var/tmp/kokichi-data --append --start 16000 --train 32000 --balance --channel

The second form adds training questions 16000..47999 to train.jsonl, with voices drawn by
engine first (`--balance`) and a random formant and channel change (`--channel`). A third call,
`--append --start 48000 --train 24000 --balance --channel`, adds the fresh questions of the
lm5 stage; further calls with `--start 72000`, `96000` and `120000` add those of the lm6 to
lm8 stages (recipe.py). Each question is drawn from `--seed` and its index, so
an append with another seed gives other questions at the same indices. `--wide` adds 32 more
espeak variants to the training voices (voices.ESPEAK_WIDE); the stages from lm15 on use it.
`--neural` adds Piper's neural voices; `--engines E...` keeps only the training voices of engines
E (for example Piper's joe alone: `--append --start 8600 --train 2000 --balance --channel --neural
--engines piper`).

Writes OUT/questions/{train,eval}/NNNNNN.wav (24 kHz, 16-bit) with OUT/{train,eval}.jsonl
(task, question, answer, voice), OUT/answers/*.wav spoken by the model's own voice word by
word (so every word's onset is known exactly) with OUT/answers.json, and OUT/tokenizer.model,
a word-level SentencePiece model of the answer vocabulary.
"""
import argparse
import json
import multiprocessing as mp
import random
import sys
import time
import wave
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import domain  # noqa: E402
import voices  # noqa: E402
from steps import clear_done, done_before, mark_done, step_key, unfinished_append  # noqa: E402

WORD_GAP = 0.08  # seconds of silence between the words of an answer


def write_wav(path, pcm):
    pcm = (np.clip(pcm, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(voices.RATE)
        w.writeframes(pcm.tobytes())


def make_question(job):
    split, idx, seed, vlist, balance, channel = job
    rng = random.Random(seed)
    task, q, a = domain.sample(rng)
    rec = {"id": idx, "task": task, "question": q, "answer": a}
    if task == "silence":
        return rec
    for attempt in range(3):
        voice = voices.pick(rng, vlist, balance)
        try:
            pcm = voices.synth(voice, q, rng, channel=channel)
        except Exception as e:  # a voice refusing a text: try another
            print(f"{voice}: {e}", file=sys.stderr)
            continue
        if len(pcm) < voices.RATE * 0.2 or len(pcm) > voices.RATE * 4.0:
            continue
        out = OUT / "questions" / split / f"{idx:06d}.wav"
        write_wav(out, pcm)
        rec.update(voice=voice.id, file=str(out.relative_to(OUT)), seconds=len(pcm) / voices.RATE)
        return rec
    rec["task"] = "silence"
    rec["question"] = rec["answer"] = ""
    return rec


def make_answer(text):
    parts, words, t = [], [], 0.0
    for w in text.split():
        pcm = voices.synth(voices.MODEL_VOICE, w, vary=False)
        if parts:
            gap = np.zeros(int(WORD_GAP * voices.RATE), np.float32)
            parts.append(gap)
            t += len(gap) / voices.RATE
        words.append([w, round(t, 4)])
        parts.append(pcm)
        t += len(pcm) / voices.RATE
    pcm = np.concatenate(parts)
    name = text.replace(" ", "_")
    write_wav(OUT / "answers" / f"{name}.wav", pcm)
    return text, {"file": f"answers/{name}.wav", "words": words, "seconds": len(pcm) / voices.RATE}


def write_tokenizer(path, words):
    """A word-level SentencePiece model: <unk> <s> </s> <pad>, then one piece per word."""
    from sentencepiece import sentencepiece_model_pb2 as pb
    m = pb.ModelProto()
    for piece, kind in [("<unk>", 2), ("<s>", 3), ("</s>", 3), ("<pad>", 3)]:
        p = m.pieces.add()
        p.piece, p.score, p.type = piece, 0.0, kind
    for w in words:
        p = m.pieces.add()
        p.piece, p.score, p.type = "\u2581" + w, 0.0, 1
    m.trainer_spec.model_type = pb.TrainerSpec.WORD
    m.trainer_spec.unk_id, m.trainer_spec.bos_id, m.trainer_spec.eos_id, m.trainer_spec.pad_id = 0, 1, 2, 3
    path.write_bytes(m.SerializeToString())


def init(out):
    global OUT
    OUT = out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("/var/tmp/kokichi-data"))
    ap.add_argument("--train", type=int, default=16000)
    ap.add_argument("--eval", type=int, default=600)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=20261128)
    ap.add_argument("--start", type=int, default=0, help="index of the first training question")
    ap.add_argument("--append", action="store_true",
                    help="add training questions to train.jsonl; answers, tokenizer and eval stay")
    ap.add_argument("--balance", action="store_true", help="draw voices by engine first")
    ap.add_argument("--channel", action="store_true", help="random formant shift and bass/treble tilt")
    ap.add_argument("--wide", action="store_true", help="more espeak variants (voices.ESPEAK_WIDE)")
    ap.add_argument("--neural", action="store_true", help="Piper's neural voices too (voices.PIPER_PACKAGES)")
    ap.add_argument("--engines", nargs="+", default=None,
                    choices=sorted({v.engine for v in voices.train_voices(True, True)}),
                    help="only the training voices of these engines (piper needs --neural)")
    args = ap.parse_args()
    train_voices = [v for v in voices.train_voices(args.wide, args.neural) if not args.engines or v.engine in args.engines]
    if not train_voices:
        sys.exit(f"--engines {' '.join(args.engines)}: no training voice is of these engines (piper needs --neural)")
    out = args.out
    for d in ["questions/train", "questions/eval", "answers"]:
        (out / d).mkdir(parents=True, exist_ok=True)
    init(out)
    t0 = time.time()
    splits = [("train", args.train, train_voices)]
    # Each call that finished leaves a marker (steps.py): the same call again keeps what it wrote,
    # so a cut `make train-tiny` restarts where it stopped.
    key = step_key(args)
    if not args.neural:
        del key["neural"]  # so the markers of calls made before --neural existed still match
    if args.engines is None:
        del key["engines"]  # likewise for --engines
    marker = out / (f"train-{args.start}.done.json" if args.append else "init.done.json")
    lines = lambda split: len((out / f"{split}.jsonl").read_text().splitlines()) if (out / f"{split}.jsonl").exists() else 0
    if done_before(marker, key) and lines("train") >= args.start + args.train and (args.append or lines("eval") == args.eval):
        print(f"{out}: made before by the same call, kept ({marker})", file=sys.stderr)
        return
    if args.append:
        have = lines("train")
        if have > args.start and unfinished_append(out, args.start):
            # An append cut before its end (no later one is recorded): its questions are drawn again.
            keep = (out / "train.jsonl").read_text().splitlines(keepends=True)[: args.start]
            (out / "train.jsonl").write_text("".join(keep))
            print(f"{out / 'train.jsonl'}: {have - args.start} questions of an unfinished append dropped", file=sys.stderr)
            have = args.start
        if have != args.start:
            sys.exit(f"{out / 'train.jsonl'}: has {have} questions, --start is {args.start} (appends go at the end; "
                     "one that finished is kept only when called again the same way)")
    else:
        if args.start:
            sys.exit("--start needs --append")
        # The whole corpus is drawn again: no append's questions stay.
        for m in out.glob("train-*.done.json"):
            clear_done(m)
        write_tokenizer(out / "tokenizer.model", domain.vocabulary())
        splits.append(("eval", args.eval, voices.eval_voices()))
    clear_done(marker)
    with mp.Pool(args.workers, initializer=init, initargs=(out,)) as pool:
        if not args.append:
            answers = dict(pool.map(make_answer, domain.answers()))
            (out / "answers.json").write_text(json.dumps(answers, indent=0))
            print(f"{len(answers)} answers in the model's voice ({time.time() - t0:.0f} s)", file=sys.stderr)
        for split, n, vlist in splits:
            first = args.start if split == "train" else 0
            jobs = [(split, i, args.seed * 1000003 + i * 7919 + (split == "eval"), vlist, args.balance, args.channel)
                    for i in range(first, first + n)]
            with open(out / f"{split}.jsonl", "a" if args.append else "w") as f:
                for k, rec in enumerate(pool.imap(make_question, jobs, chunksize=16)):
                    f.write(json.dumps(rec) + "\n")
                    if k % 2000 == 0:
                        print(f"{split}: {k}/{n} ({time.time() - t0:.0f} s)", file=sys.stderr)
    mark_done(marker, key)
    print(f"done in {time.time() - t0:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
