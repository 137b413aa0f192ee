#!/usr/bin/env python3
"""Teacher-forced answer accuracy of a kokichi-tiny LM export: does the text stream predict the
answer words (and the first word, the one that depends on hearing the question) on training
and held-out token sequences? Separates "does not recognise" from "recognises but misspeaks".

  probe_lm.py [--export WORK/lm4/export] [--tokens WORK/lm/tokens.npz] [--n 160] [--by-voice] [--words-only]
  probe_lm.py --heard WORK/lm4/ckpt.pt

With --by-voice, the first-word figure per engine, voice, task and gap (frames from the end of the
question's speech to the answer; wrong for questions tokenized with --warp, which moves that end): on every held-out sequence, and
on the first --n training sequences (their records come from --data's train.jsonl, so a token
file needs the corpus it was made from).
With --words-only, the first answer word is the best word at its frame, padding set aside: the
plain figure also counts as wrong a model that would say the right word a frame later than the
dialogue has it (most misses at short gaps are that), which is timing, not hearing.
With --heard, how often the training-only CTC head of a checkpoint transcribes a held-out
question exactly: anywhere in the dialogue, and before the model's answer starts. Only the
second is hearing: later, the head can read the answer's words off the model's own answer
audio, which teacher forcing puts in the model stream.
"""
import argparse
import collections
import json
import sys
import wave
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from moshi.models.lm import LMModel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import FRAME, PAD, ctc_greedy, export_config, load_split  # noqa: E402
from train_lm import CtcHead, Questions, first_words, text_accuracy, train_forward, word_ids  # noqa: E402


def said(logits, words_only: bool):
    """The text token the model would write at each position; with `words_only`, the best word
    (padding set aside): what it would say once it speaks, whatever the frame."""
    if words_only:
        logits = logits.clone()
        logits[..., PAD] = float("-inf")
    return logits.argmax(-1)


@torch.no_grad()
def accuracy(lm, seqs, words_only=False):
    res = lm(seqs)
    return text_accuracy(said(res.text_logits[:, 0], words_only), seqs[:, 0], res.text_mask[:, 0])


def speech_end(path: Path) -> int:
    """The sample where a question's speech ends: the end of its last 20 ms window within 40 dB
    of its loudest. voices.py trims the files at a fixed floor (-50 dBFS) with 10 ms to spare, so
    this differs from the file's end only by a quiet question's faint tail."""
    with wave.open(str(path)) as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32)
    win = 480
    n = len(pcm) // win
    if n == 0:
        return len(pcm)
    rms = np.sqrt((pcm[: n * win].reshape(n, win) ** 2).mean(1) + 1e-9)
    loud = np.nonzero(rms > rms.max() * 0.01)[0]
    return int(loud[-1] + 1) * win


@torch.no_grad()
def by_voice(lm, seqs, meta, recs, data: Path, words_only=False):
    """First answer word right on each sequence, grouped by engine, by voice, by task, and by the
    frames between the end of the question's speech and the answer's first frame (the time the
    model has to finish hearing it)."""
    groups = collections.defaultdict(list)
    for i in range(0, len(seqs), 50):
        res = lm(seqs[i:i + 50])
        right = first_words(said(res.text_logits[:, 0], words_only), seqs[i:i + 50, 0], res.text_mask[:, 0])
        for b, ok in right.items():
            r = recs[meta[i + b][0]]
            groups["engine " + r["voice"].split(":")[0]].append(ok)
            groups["voice " + r["voice"]].append(ok)
            groups["task " + r["task"]].append(ok)
            _, lead, af = (int(x) for x in meta[i + b])
            gap = af - (lead + speech_end(data / r["file"])) / FRAME
            groups[f"gap {min(int(gap), 12):2d}{'+' if gap >= 12 else ''} frames"].append(ok)
    for k, v in sorted(groups.items()):
        print(f"  {k:38s} {100 * np.mean(v):5.1f}% (n={len(v)})")


@torch.no_grad()
def heard(ckpt: Path, cfg: dict, data: Path, tokens, by_voice: bool = False):
    """Held-out questions transcribed exactly by a checkpoint's CTC head: in the whole dialogue,
    and in the frames before the answer (`train_lm.py --ctc-until 2`'s window); and where the
    head's last word comes, counted from the answer's first frame. `by_voice`: the first two
    figures per held-out voice too."""
    st = torch.load(ckpt, map_location="cpu", weights_only=False)
    if "head" not in st:
        sys.exit(f"{ckpt}: no CTC head in this checkpoint")
    lm = LMModel(**cfg)
    lm.load_state_dict(st["model"])
    lm.eval()
    if "eval" not in tokens:
        sys.exit("the token file has no held-out split (tokenize it with --splits eval)")
    # The head's vocabulary is every training question's words in `data`; no training sequence is read.
    train_meta = tokens["train_meta"][:1] if "train_meta" in tokens else np.zeros((0, 3), np.int32)
    questions = Questions(data, {"train": train_meta, "eval": tokens["eval_meta"]}, ends=True)
    recs = load_split(data, "eval")
    voices = collections.defaultdict(lambda: [0, 0, 0])
    text_ids, card = word_ids(data / "tokenizer.model")
    head = CtcHead(cfg["dim"], questions.words, text_ids, card)
    head.load_state_dict(st["head"])
    seqs = torch.from_numpy(tokens["eval"].astype(np.int64))
    early = questions.steps("eval", torch.arange(len(seqs)), 2)
    ok_all, ok_early, n, last = 0, 0, 0, []
    for i in range(0, len(seqs), 50):
        out = train_forward(lm, seqs[i:i + 50], audio_rows=1)
        logits = head(out[0], out[1])
        for b in range(len(logits)):
            k = i + b
            want = questions.seqs["eval"][k]
            if not want:
                continue
            n += 1
            all_ok = ctc_greedy(logits[b]) == want
            ok_all += all_ok
            early_ok = ctc_greedy(logits[b, :int(early[k])]) == want
            ok_early += early_ok
            v = voices[recs[int(tokens["eval_meta"][k][0])]["voice"]]
            v[0] += all_ok
            v[1] += early_ok
            v[2] += 1
            best = logits[b].argmax(-1)
            spikes = torch.nonzero((best != 0) & (best != torch.cat([best.new_zeros(1), best[:-1]]))).flatten()
            if len(spikes):
                last.append(int(spikes[-1]) - int(tokens["eval_meta"][k][2]))
    print(f"held-out questions transcribed exactly by the CTC head: in the whole dialogue {100 * ok_all / n:.1f}%, "
          f"before the answer starts {100 * ok_early / n:.1f}% (n={n})")
    print(f"its last word, frames after the answer's first: median {np.median(last):.0f}, "
          f"4-8 for {np.mean([4 <= d <= 8 for d in last]) * 100:.1f}% (n={len(last)})")
    if by_voice:
        print("held-out, transcribed exactly in the whole dialogue / before the answer starts:")
        for voice, (ok, early_ok, total) in sorted(voices.items()):
            print(f"  voice {voice:<34} {100 * ok / total:5.1f}% / {100 * early_ok / total:5.1f}% (n={total})")


def lm_config(folder: Path) -> dict:
    """The LM's configuration: an export's lm_config.json, or a shipped model folder's
    config.json (its "lm" part), so the shipped LM can be probed without its run."""
    cfg = export_config(folder)
    if cfg is not None:
        return cfg
    sys.exit(f"{folder}: no lm_config.json (an LM export) or config.json (a model folder)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--export", type=Path, default=Path("/var/tmp/kokichi-train/lm4/export"),
                    help="an LM export, or a shipped model folder such as assets/kokichi-tiny")
    ap.add_argument("--tokens", type=Path, default=Path("/var/tmp/kokichi-train/lm/tokens.npz"))
    ap.add_argument("--data", type=Path, default=Path("/var/tmp/kokichi-data"))
    ap.add_argument("--n", type=int, default=160)
    ap.add_argument("--by-voice", action="store_true")
    ap.add_argument("--words-only", action="store_true",
                    help="score the best word at the answer's frame, padding set aside: hearing apart from timing")
    ap.add_argument("--heard", type=Path, default=None, help="a training checkpoint (ckpt.pt) with its CTC head")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = lm_config(args.export)
    if args.heard is not None:
        heard(args.heard, cfg, args.data, np.load(args.tokens), args.by_voice)
        return
    lm = LMModel(**cfg)
    lm.load_state_dict(load_file(str(args.export / "model.safetensors")), strict=False)
    lm.eval()
    data = np.load(args.tokens)
    for split in [s for s in ["train", "eval"] if s in data]:
        words, first, n = accuracy(lm, torch.from_numpy(data[split][: args.n].astype(np.int64)), args.words_only)
        print(f"{split}: answer words right {100 * words:.1f}%, first word right {100 * first:.1f}% (n={n})")
    if args.by_voice:
        for split in [s for s in ["train", "eval"] if s in data]:
            print(f"{'held-out' if split == 'eval' else 'training'} questions, first answer word right:")
            n = len(data[split]) if split == "eval" else args.n
            by_voice(lm, torch.from_numpy(data[split][:n].astype(np.int64)), data[f"{split}_meta"],
                     load_split(args.data, split), args.data, args.words_only)


if __name__ == "__main__":
    main()
