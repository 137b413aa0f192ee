#!/usr/bin/env python3
"""Training and held-out data for a special token such as `<clock>` (docs/adapter.md): spoken
time questions with the token in the text stream where the answer would begin, and negatives
(kokichi-tiny's four skills and quiet windows) whose text streams are the model's usual targets.

  tool_tokens.py --out DIR [--train 400] [--eval 120] [--codec training/stages/codec-distill]
      [--model assets/kokichi-tiny] [--seed S] [--workers 2]

Writes DIR/tokens.safetensors (`train` [N, 1 + 2 * 6, 100] int16, for `kokichi tokens train
--data DIR`; the token's id is the model's text_card, the first id an adapter adds) and
DIR/eval/NNNN.wav with DIR/eval.jsonl (kind: time, other or quiet; question; answer, the right
answer to another question; voice), 8 s clips of a held-out voice (voices.eval_voices) asking at
a random lead, for the firing measurement (`cargo run --example token_fires`). Training
questions use voices.train_voices only.

Layout as train_lm.py tokenize: the question at a random lead in the user stream, the answer
frame after a natural gap (train_lm.layout); a time question's text stream is padding with the
token at the answer frame and its model stream silence; a negative's holds its answer words at
their onsets and its answer's codes in the model's voice.
"""
import argparse
import importlib.util
import json
import multiprocessing as mp
import random
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import domain  # noqa: E402
import voices  # noqa: E402

TIME_QUESTIONS = ["what time is it", "what's the time", "tell me the time", "do you know the time",
                  "what is the time", "what time is it now", "can you tell me the time",
                  "have you got the time", "could you tell me the time please", "what's the time now"]
# Shares of each kind of dialogue.
TIME_SHARE, QUIET_SHARE = 0.4, 0.15


def draw(rng: random.Random):
    """One (kind, question, answer): a time question, another skill's question, or quiet."""
    r = rng.random()
    if r < TIME_SHARE:
        return "time", rng.choice(TIME_QUESTIONS), ""
    if r < TIME_SHARE + QUIET_SHARE:
        return "quiet", "", ""
    while True:
        task, q, a = domain.sample(rng)
        if task != "silence":
            return "other", q, a


def text_stream(frames: int, pad: int, answer_frame: int, kind: str, token: int, onsets) -> np.ndarray:
    """The text stream of a dialogue: padding, the token at the answer frame of a time question,
    or the answer's words at their onsets (frames from the answer frame) for another question."""
    text = np.full(frames, pad, np.int16)
    if kind == "time" and 0 <= answer_frame < frames:
        text[answer_frame] = token
    elif kind == "other":
        for wid, f in onsets:
            if 0 <= answer_frame + f < frames:
                text[answer_frame + f] = wid
    return text


def installed(vlist):
    """The voices whose engine's program is installed (here often espeak-ng alone)."""
    program = {"espeak": "espeak-ng", "flite": "flite", "festival": "text2wave", "pico": "pico2wave",
               "rhvoice": "RHVoice-test"}
    ok = [v for v in vlist if v.engine in program and shutil.which(program[v.engine])]
    # Piper's voices are Python packages.
    ok += [v for v in vlist if v.engine == "piper" and importlib.util.find_spec(voices.PIPER_PACKAGES[v.name])]
    # espeak's mb-* voices need mbrola.
    return [v for v in ok if not v.name.startswith("mb-") or shutil.which("mbrola")]


def answer_onsets(text: str, frames: int, words: dict):
    """Word onsets (frames from the answer frame) of an answer whose codes last `frames`: the
    answer-codes files hold the codes the model says, not its word timings, so the words are
    spread evenly over them (the text rows of these words are frozen; only the new token's
    rows learn from where they are)."""
    ws = text.split()
    return [(words[w], j * frames // len(ws)) for j, w in enumerate(ws)]


def synth_job(job):
    """Synthesizes one question (a few voices tried); returns (index, pcm or None, voice id)."""
    i, seed, q, vlist = job
    rng = random.Random(seed)
    for _ in range(3):
        voice = voices.pick(rng, vlist, balance=True)
        try:
            pcm = voices.synth(voice, q, rng, channel=True)
        except Exception as e:  # a voice refusing a text: try another
            print(f"{voice}: {e}", file=sys.stderr)
            continue
        if voices.RATE * 0.2 <= len(pcm) <= voices.RATE * 4.0:
            return i, pcm.astype(np.float32), voice.id
    return i, None, ""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--train", type=int, default=400)
    ap.add_argument("--eval", type=int, default=120)
    ap.add_argument("--codec", type=Path, default=Path("training/stages/codec-distill"))
    ap.add_argument("--model", type=Path, default=Path("assets/kokichi-tiny"))
    ap.add_argument("--answer-codes", type=Path, default=Path("training/stages/answer-codes/lm24.npz"))
    ap.add_argument("--seed", type=int, default=53)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--wide", action="store_true", help="more espeak-ng variants in training (voices.ESPEAK_WIDE)")
    ap.add_argument("--neural", action="store_true", help="Piper's neural voice in training too (make venv-tiny)")
    ap.add_argument("--eval-voices", choices=["held-out", "train"], default="held-out",
                    help="`train`: the held-out clips in training voices (new dialogues), to measure what "
                         "held-out voices cost")
    args = ap.parse_args()
    import torch
    torch.set_num_threads(1)
    import train_lm  # the codec, the layout and the answer clips' tokenization
    from common import FRAME, PAD, SEQ_FRAMES
    import answers
    import make_data

    cfg = json.loads((args.model / "config.json").read_text())
    token = cfg["lm"]["text_card"]
    words, _ = train_lm.word_ids(args.model / "tokenizer.model")
    out = args.out
    (out / "eval").mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    items = [draw(rng) for _ in range(args.train + args.eval)]
    tv = installed(voices.train_voices(wide=args.wide, neural=args.neural))
    ev = tv if args.eval_voices == "train" else installed(voices.eval_voices())
    if not tv or not ev:
        sys.exit("no installed synthesizer has training and held-out voices (voices.py)")
    jobs = [(i, args.seed * 1_000_003 + i, q, tv if i < args.train else ev)
            for i, (kind, q, _) in enumerate(items) if kind != "quiet"]
    with mp.Pool(args.workers) as pool:
        speech = {i: (pcm, v) for i, pcm, v in pool.imap_unordered(synth_job, jobs, chunksize=8)}
    mimi = train_lm.load_codec(args.codec)
    total = SEQ_FRAMES * FRAME
    said = answers.load_codes(args.answer_codes)
    ans = {t: (c, answer_onsets(t, c.shape[1], words)) for t, c in said.items()}
    silence = train_lm.encode(mimi, np.zeros(total, np.float32))
    k = silence.shape[0]
    seqs, evals = [], []
    for i, (kind, q, a) in enumerate(items):
        pcm, voice = speech.get(i, (None, ""))
        if kind != "quiet" and pcm is None:
            continue
        lrng = random.Random(args.seed * 7 + i)
        q_len = 0 if pcm is None else len(pcm)
        a_len = ans[a][0].shape[1] * FRAME if (kind == "other" and i < args.train) else FRAME
        lead, af = train_lm.layout(lrng, q_len, a_len, total)
        user = np.zeros(total, np.float32)
        if pcm is not None:
            user[lead:lead + q_len] = pcm[: total - lead]
        user += np.random.default_rng(i).standard_normal(total).astype(np.float32) * 10 ** lrng.uniform(-5, -3)
        if i >= args.train:
            name = f"eval/{i - args.train:04d}.wav"
            make_data.write_wav(out / name, user)
            evals.append({"file": name, "kind": kind, "question": q, "answer": a, "voice": voice,
                          "question_end_frame": (lead + q_len) // FRAME, "answer_frame": af})
            continue
        model = silence.copy()
        onsets = []
        if kind == "other":
            codes, onsets = ans[a]
            n = min(codes.shape[1], SEQ_FRAMES - af)
            model[:, af:af + n] = codes[:, :n]
        seq = np.zeros((1 + 2 * k, SEQ_FRAMES), np.int16)
        seq[0] = text_stream(SEQ_FRAMES, PAD, af, kind, token, onsets)
        seq[1:1 + k] = model
        seq[1 + k:] = train_lm.encode(mimi, user)
        seqs.append(seq)
    from safetensors.numpy import save_file
    if seqs:
        save_file({"train": np.stack(seqs)}, str(out / "tokens.safetensors"))
    (out / "eval.jsonl").write_text("".join(json.dumps(e) + "\n" for e in evals))
    kinds = {kd: sum(1 for e in evals if e["kind"] == kd) for kd in ("time", "other", "quiet")}
    print(f"{len(seqs)} training dialogues (token id {token}), held-out clips {kinds}", file=sys.stderr)


if __name__ == "__main__":
    main()
