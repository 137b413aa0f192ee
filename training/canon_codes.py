#!/usr/bin/env python3
"""One fixed set of codes per answer clip: those an LM itself says for it.

The model stream is always one of a closed set of answer clips, so an LM learns their code
sequences by heart. Clips synthesized again (another machine, another sox dither) encode to
partly other codes (lm24, teacher-forced, predicted 91-96% of one machine's answer codes on
average and 39-78% for some answers), so a stage trained on them learns its text timing against audio it
never says itself, and a distilled audio loss pulls the other way. Two steps:

  canon_codes.py extract --model M --tokens T.npz --data D --out W/answer-codes.npz
      For each answer, one training dialogue of T that holds it whole; its answer frames are
      replaced by M's own greedy codes, teacher-forced, until they stop changing (the fixed
      point is what M says there given the text stream, as in generation).
  canon_codes.py rewrite --codes W/answer-codes.npz --data D --tokens IN.npz --out OUT.npz
      A token file with every dialogue's answer frames replaced by those codes (text, user
      stream, layout and silence unchanged).
  canon_codes.py judge --codes W/answer-codes.npz --codec CODEC --data D --work W/judge
      The eval's judge (pocketsphinx) on those codes decoded, against the answer clips' own
      codes decoded by the same codec: how well what the LM says can be heard.
"""
import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("NO_TORCH_COMPILE", "1")
import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CODEBOOKS, FRAME, SEQ_FRAMES, lm_config, load_split  # noqa: E402
from answers import LEAD, answer_clips, judge_all, load_codes, place  # noqa: E402
from train_lm import train_forward, wav_frames  # noqa: E402
from moshi.models.loaders import get_moshi_lm  # noqa: E402


def answer_frames(data: Path) -> dict:
    """Frames each answer takes in the model stream, as the tokenizer lays it out."""
    answers = json.loads((data / "answers.json").read_text())
    return {t: -(-wav_frames(data / a["file"]) // FRAME) + 1 for t, a in answers.items()}


def dialogues(data: Path, npz, split: str):
    """(row, answer text, answer frame) of every answered dialogue of a split."""
    recs = load_split(data, split)
    out = []
    for k, (i, lead, af) in enumerate(npz[split + "_meta"].tolist()):
        if lead >= 0:
            if i >= len(recs):
                sys.exit(f"{data / (split + '.jsonl')}: no record {i} (the token file was made from another corpus?)")
            out.append((k, recs[i]["answer"], af))
    return out


def load_lm(path: Path, text_card: int):
    from probe_lm import lm_config as saved_config
    card = saved_config(path)["text_card"]
    if card != text_card:
        sys.exit(f"{path}: text vocabulary of {card}, the token file has {text_card}")
    lm = get_moshi_lm(str(path / "model.safetensors"), lm_kwargs=dict(lm_config(card)), device="cpu",
                      dtype=torch.float32)
    lm.eval()
    return lm


@torch.no_grad()
def extract(args):
    torch.set_num_threads(args.threads)
    npz = np.load(args.tokens)
    frames = answer_frames(args.data)
    picked = {}
    for k, text, af in dialogues(args.data, npz, "train"):
        if text not in picked and af + frames[text] <= SEQ_FRAMES:
            picked[text] = (k, af)
    missing = sorted(set(frames) - set(picked))
    if missing:
        sys.exit(f"{args.tokens}: no dialogue holds these answers whole: {', '.join(missing)}")
    lm = load_lm(args.model, int(npz["text_card"]))
    texts = sorted(picked)
    seqs = torch.from_numpy(npz["train"][[picked[t][0] for t in texts]].astype(np.int64))
    spans = [(picked[t][1], frames[t]) for t in texts]
    orig = seqs.clone()
    live = list(range(len(texts)))
    for it in range(1, args.iters + 1):
        still = []
        for j in range(0, len(live), args.batch):
            rows = live[j:j + args.batch]
            codes = seqs[rows]
            _, _, _, logits, mask = train_forward(lm, codes)
            pred = logits.argmax(-1)
            for b, r in enumerate(rows):
                af, n = spans[r]
                old = seqs[r, 1:1 + CODEBOOKS, af:af + n]
                m = mask[b, :, af:af + n]
                new = torch.where(m, pred[b, :, af:af + n], old)
                if not torch.equal(new, old):
                    seqs[r, 1:1 + CODEBOOKS, af:af + n] = new
                    still.append(r)
        print(f"pass {it}: {len(still)} of {len(texts)} answers still changing", file=sys.stderr, flush=True)
        live = still
        if not live:
            break
    if live:
        sys.exit(f"no fixed point after {args.iters} passes for: {', '.join(texts[r] for r in live)}")
    out, kept = {}, []
    for r, t in enumerate(texts):
        af, n = spans[r]
        out[t] = seqs[r, 1:1 + CODEBOOKS, af:af + n].numpy().astype(np.int16)
        kept.append((orig[r, 1:1 + CODEBOOKS, af:af + n].numpy() == out[t]).mean())
    kept = np.array(kept)
    worst = np.argsort(kept)[:8]
    print(f"{len(texts)} answers; codes the same as the token file's: {100 * kept.mean():.1f}% on average; "
          f"least: {', '.join(f'{texts[i]} {100 * kept[i]:.0f}%' for i in worst)}", file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(args.out, texts=np.array(texts), **{f"codes_{i}": out[t] for i, t in enumerate(texts)})
    print(f"wrote {args.out}", file=sys.stderr)


def rewrite(args):
    codes = load_codes(args.codes)
    npz = np.load(args.tokens)
    out = {k: npz[k] for k in npz.files}
    for split in ("train", "eval"):
        if split not in out:
            continue
        seqs = out[split].copy()
        same = total = 0
        for k, text, af in dialogues(args.data, npz, split):
            if text not in codes:
                sys.exit(f"{args.codes}: no codes for the answer {text!r} ({args.tokens}, {split} row {k})")
            c = codes[text]
            n = min(c.shape[1], SEQ_FRAMES - af)
            same += int((seqs[k, 1:1 + CODEBOOKS, af:af + n] == c[:, :n]).sum())
            total += c[:, :n].size
            seqs[k, 1:1 + CODEBOOKS, af:af + n] = c[:, :n]
        out[split] = seqs
        print(f"{split}: {len(seqs)} dialogues, answer codes unchanged {100 * same / max(total, 1):.1f}%", file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(args.out, **out)
    print(f"wrote {args.out}", file=sys.stderr)


@torch.no_grad()
def judge(args):
    from train_lm import load_codec
    torch.set_num_threads(args.threads)
    mimi = load_codec(args.codec)
    texts, x, _ = answer_clips(args.data)
    clip = torch.cat([mimi.encode(x[i:i + 16]) for i in range(0, len(x), 16)])
    silent = mimi.encode(torch.zeros(1, 1, x.shape[-1]))[0]
    canon, mask = place(load_codes(args.codes), texts, silent.expand(len(texts), -1, -1), LEAD, args.codes)
    same = (canon == clip).permute(0, 2, 1)[mask].float().mean().item()
    for name, k in (("the clips' own codes", clip), ("the canonical codes", canon)):
        audio = torch.cat([mimi.decode(k[i:i + 16]) for i in range(0, len(k), 16)])
        print(f"judge on {name}, decoded: {100 * judge_all(texts, audio, args.work):.1f}%", file=sys.stderr, flush=True)
    print(f"({100 * same:.1f}% of the answer frames' codes are the same)", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("extract")
    e.add_argument("--model", type=Path, required=True, help="LM export or model folder")
    e.add_argument("--tokens", type=Path, required=True, help="a token file with a training split")
    e.add_argument("--data", type=Path, required=True)
    e.add_argument("--out", type=Path, required=True)
    e.add_argument("--iters", type=int, default=200)
    e.add_argument("--batch", type=int, default=16)
    e.add_argument("--threads", type=int, default=2)
    r = sub.add_parser("rewrite")
    r.add_argument("--codes", type=Path, required=True)
    r.add_argument("--data", type=Path, required=True)
    r.add_argument("--tokens", type=Path, required=True)
    r.add_argument("--out", type=Path, required=True)
    j = sub.add_parser("judge")
    j.add_argument("--codes", type=Path, required=True)
    j.add_argument("--codec", type=Path, required=True)
    j.add_argument("--data", type=Path, required=True)
    j.add_argument("--work", type=Path, required=True, help="a folder for the judge's files")
    j.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    {"extract": extract, "rewrite": rewrite, "judge": judge}[args.cmd](args)


if __name__ == "__main__":
    main()
