#!/usr/bin/env python3
"""How much of a spoken question kokichi-tiny's codes carry, and an attempt to make its first
(semantic) codebook carry the words, so the LM can hear. A measured diagnostic, not a stage of
`make train-tiny`: the attempt did not pay off (figures below).

Mimi's first codebook is distilled from WavLM, so its tokens are phonetic and largely speaker
independent; kokichi-tiny's codec was trained on reconstruction alone, so all its codebooks
are acoustic. The LM, given those tokens, transcribes few held-out questions before it has to
answer (probe_lm.py --heard). Here a small causal recognizer (LayerNorm, Linear 256, a 2-layer
GRU of 256, two CTC symbols per 80 ms frame; training only, never exported) learns to
transcribe each question from the codec's output:
  --read first   the quantized first codebook alone (what Mimi makes semantic);
  --read all     all six codebooks (what the LM sees of the user);
  --read latent  the unquantized encoder latent (all the encoder knows);
  --read teacher teacher.py's pretrained speech features (what a model trained on real
                 speech hears; no codec involved).
`--units phones` spells each word with espeak-ng's phonemes (`-x --sep=_`, stress marks
dropped: 54 units); `--units words` uses the 319 words of the domain.

With `--freeze` the recognizer trains alone on the unchanged codec. Without it the codec is
fine-tuned too: mel loss + CTC from the quantized first codebook (its gradient reaches the
encoder through the quantizer's straight-through path; the first quantizer is never bypassed,
the others half of the time) + 0.1 x commitment.

  hear_codec.py --codec WORK/codec-tuned4/export --data D --out WORK/hear-first --freeze --read first
  hear_codec.py --codec WORK/codec-tuned4/export --data D --out WORK/codec-hear --steps 2000

Every 250 steps it prints the questions transcribed exactly and the unit error rate, in
held-out voices and in training voices (--eval-n each). Resumable from OUT/ckpt.pt; writes
OUT/export (unless --freeze).

Measured on the shipped codec (codec-tuned4's encoder; the decoder tunes do not touch it),
phones, 2,000 steps of batch 8 with `--lr 1e-3 --eval-n 100`, phone error rate on 100
held-out questions (training voices about the same):
  first codebook 79.5%, all six codebooks 67.6%, unquantized latent 63.9%.
So the six codebooks the LM sees keep most of what the encoder knows, and the first alone
loses some. Fine-tuning the codec with the phone CTC (1.4 s a step) made no difference: 85.4%
against the frozen recognizer's 85.3% at step 750, CTC loss 2.97 against 2.93 at step 850.
Word-level CTC stayed at about 5.1 for 500 steps, frozen or fine-tuned. Every recognizer
learns slowly on this data; a phonetic first codebook would not by itself make the LM hear.
That would take a teacher (a pretrained speech model's features to distil, as Mimi did) or
much longer recognizer and LM training.

The teacher (same protocol, against codec-tuned8, whose encoder is codec-tuned4's): its
features give 25.1% (training voices 21.2%) where this codec's unquantized latent gives 66.8%
and its six codebooks 69.2%, so a pretrained model hears these synthetic voices far better.
Distilling it into the first codebook (train_codec.py --distill, figures there) brought the
codec's first codebook to 51.8% and its six codebooks to 48.7%.
"""
import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("NO_TORCH_COMPILE", "1")
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from moshi.models.loaders import get_mimi  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))  # gen_mimi_fixtures
from common import CODEBOOKS, FRAME, MIMI, MelLoss, cosine_lr, ctc_greedy, load_split, read_wav, bf16_fast  # noqa: E402
from teacher import DIM as TEACHER_DIM, Teacher  # noqa: E402
from train_codec import decode_latent, encode_latent, export  # noqa: E402


class Recognizer(torch.nn.Module):
    """Causal recognizer over the first codebook's embeddings (CTC; 0 is the blank). It may emit
    `per_frame` symbols per 80 ms frame: phones come faster than frames."""

    def __init__(self, dim: int, vocab: int, per_frame: int, hidden: int = 256):
        super().__init__()
        self.per_frame = per_frame
        self.norm = torch.nn.LayerNorm(dim)
        self.inp = torch.nn.Linear(dim, hidden)
        self.gru = torch.nn.GRU(hidden, hidden, num_layers=2, batch_first=True)
        self.out = torch.nn.Linear(hidden, per_frame * (vocab + 1))

    def forward(self, emb):  # [B, C, T] -> [B, T * per_frame, V+1]
        h, _ = self.gru(F.gelu(self.inp(self.norm(emb.transpose(1, 2)))))
        y = self.out(h)
        return y.reshape(y.shape[0], y.shape[1] * self.per_frame, -1)


def phones(word: str) -> list:
    out = subprocess.run(["espeak-ng", "-q", "-x", "--sep=_", word], capture_output=True, text=True,
                         check=True).stdout
    return [p.strip("',") for p in out.strip().replace(" ", "_").split("_") if p.strip("',")]


def edits(a: list, b: list) -> int:
    """Levenshtein distance."""
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


class Clips:
    """Whole clips with their words: questions (many voices), answers (the model's voice), silence."""

    def __init__(self, data: Path, seed: int, units: str):
        self.rng = random.Random(seed)
        train = [r for r in load_split(data, "train") if r.get("file")]
        answers = json.loads((data / "answers.json").read_text())
        words = {w for r in train for w in r["question"].split()}
        words |= {w for a in answers.values() for w, _ in a["words"]}
        # Targets: the words, or their phones as espeak-ng spells them (stress marks dropped).
        self.spell = {w: [w] for w in words} if units == "words" else {w: phones(w) for w in words}
        self.units = sorted({u for v in self.spell.values() for u in v})
        self.ids = {u: i + 1 for i, u in enumerate(self.units)}
        self.data = data
        self.questions = [(r["file"], r["question"]) for r in train]
        self.answers = [(a["file"], " ".join(w for w, _ in a["words"])) for a in answers.values()]

    def target(self, text: str) -> list:
        return [self.ids[u] for w in text.split() if w in self.spell for u in self.spell[w]]

    def pack(self, items, lead_max: float, rng):
        """Clips placed after a random lead in low noise, padded to whole frames."""
        pcms = [read_wav(self.data / f).astype(np.float32) / 32768 if f else np.zeros(0, np.float32)
                for f, _ in items]
        leads = [int(rng.uniform(0, lead_max) * 24000) for _ in items]
        n = max(l + len(p) for l, p in zip(leads, pcms)) + FRAME
        n = -(-n // FRAME) * FRAME
        x = np.zeros((len(items), n), np.float32)
        for i, (l, p) in enumerate(zip(leads, pcms)):
            x[i, l:l + len(p)] = p
            x[i] += np.random.default_rng(rng.randrange(1 << 30)).standard_normal(n).astype(np.float32) \
                * 10 ** rng.uniform(-5, -3)
        return torch.from_numpy(x)[:, None], [self.target(t) for _, t in items]

    def batch(self, n):
        items = []
        for _ in range(n):
            r = self.rng.random()
            if r < 0.6:
                items.append(self.rng.choice(self.questions))
            elif r < 0.92:
                items.append(self.rng.choice(self.answers))
            else:
                items.append((None, ""))
        return self.pack(items, 0.3, self.rng)


READS = {"first": "the first codebook", "all": "all six codebooks", "latent": "the unquantized latent",
         "teacher": "the teacher's features"}


def features(mimi, x, read: str, bf16: bool, teacher=None):
    """What the recognizer reads (eval mode): the first codebook's embedding, all six codebooks'
    (what the LM's user stream holds), the unquantized latent (what the encoder knows), or the
    pretrained teacher's features (teacher.py; what a speech model trained on real data hears)."""
    if read == "teacher":
        return torch.from_numpy(teacher(x[:, 0].numpy())).transpose(1, 2).contiguous()
    emb = encode_latent(mimi, x, bf16)
    q = mimi.quantizer
    if read == "first":
        return q.rvq_first.decode(q.rvq_first.encode(emb))
    if read == "all":
        return q.decode(q.encode(emb))
    return emb


def ctc_loss(logits, targets):
    lp = F.log_softmax(logits.float(), -1).transpose(0, 1)
    flat = torch.tensor([w for t in targets for w in t], dtype=torch.long)
    return F.ctc_loss(lp, flat, torch.full((len(targets),), lp.shape[0], dtype=torch.long),
                      torch.tensor([len(t) for t in targets], dtype=torch.long), zero_infinity=True)


@torch.no_grad()
def heard(mimi, head, clips, recs, bf16, read, teacher=None) -> str:
    """Questions transcribed exactly from what `read` names (eval-mode codec), and the unit
    error rate (edits over reference length)."""
    was = mimi.training, head.training
    mimi.eval()
    head.eval()
    ok, n, err, ref = 0, 0, 0, 0
    rng = random.Random(0)
    for i in range(0, len(recs), 25):
        items = [(r["file"], r["question"]) for r in recs[i:i + 25]]
        x, targets = clips.pack(items, 0.3, rng)
        logits = head(features(mimi, x, read, bf16, teacher))
        for b, t in enumerate(targets):
            got = ctc_greedy(logits[b])
            n += 1
            ok += got == t
            err += edits(got, t)
            ref += len(t)
    mimi.train(was[0])
    head.train(was[1])
    return f"exact {100 * ok / n:.1f}%, error rate {100 * err / max(ref, 1):.1f}% (n={n})"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--codec", type=Path, default=Path("/var/tmp/kokichi-train/codec/export"))
    ap.add_argument("--data", type=Path, default=Path("/var/tmp/kokichi-data"))
    ap.add_argument("--out", type=Path, default=Path("/var/tmp/kokichi-train/codec-hear"))
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-4, help="codec learning rate (the recognizer's is 3x)")
    ap.add_argument("--ctc", type=float, default=1.0, help="weight of the recognizer's loss")
    ap.add_argument("--no-quant", type=float, default=0.5, help="acoustic levels bypassed this often")
    ap.add_argument("--units", choices=["phones", "words"], default="phones")
    ap.add_argument("--read", choices=list(READS), default="first",
                    help="with --freeze: what the recognizer reads")
    ap.add_argument("--freeze", action="store_true", help="train the recognizer alone (baseline)")
    ap.add_argument("--eval-n", type=int, default=200, help="questions per transcription figure")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--bf16", type=int, default=-1,
                    help="bf16 autocast: 1 on, 0 off, -1 (default) on where the CPU has AMX or AVX512-BF16")
    args = ap.parse_args()
    if args.bf16 < 0:
        args.bf16 = int(bf16_fast())
    if args.read != "first" and not args.freeze:
        sys.exit("--read is for --freeze runs: the fine-tune trains the first codebook")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    mimi = get_mimi(str(args.codec / "mimi.safetensors"), MIMI, num_codebooks=CODEBOOKS)
    mimi.quantizer.rvq_first.no_quantization_rate = 0.0  # the recognizer always reads codes
    mimi.quantizer.rvq_rest.no_quantization_rate = args.no_quant
    clips = Clips(args.data, args.seed, args.units)
    teacher = Teacher() if args.read == "teacher" else None
    dim = TEACHER_DIM if teacher else MIMI["quantizer"]["output_dimension"]
    head = Recognizer(dim, len(clips.units), 1 if args.units == "words" else 2)
    if args.freeze:
        mimi.eval()
        mimi.requires_grad_(False)
        groups = [{"params": list(head.parameters()), "lr": 3 * args.lr, "base": 3 * args.lr}]
    else:
        mimi.train()
        groups = [{"params": list(mimi.parameters()), "lr": args.lr, "base": args.lr},
                  {"params": list(head.parameters()), "lr": 3 * args.lr, "base": 3 * args.lr}]
    params = [p for g in groups for p in g["params"]]
    opt = torch.optim.AdamW(groups, betas=(0.8, 0.99), weight_decay=1e-4)
    mel = MelLoss()
    step = 0
    ckpt = args.out / "ckpt.pt"
    if ckpt.exists():
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        mimi.load_state_dict(state["model"])
        head.load_state_dict(state["head"])
        opt.load_state_dict(state["opt"])
        step = state["step"]
        clips.rng = random.Random(args.seed + step)
        print(f"resumed at step {step}", file=sys.stderr)
    evals = [r for r in load_split(args.data, "eval") if r.get("file")][: args.eval_n]
    trains = [r for r in load_split(args.data, "train") if r.get("file")][-args.eval_n:]
    print(f"recognizer over {len(clips.units)} {args.units}; {'frozen codec' if args.freeze else 'codec fine-tuned'}",
          file=sys.stderr)
    t0, log = time.time(), []
    while step < args.steps:
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, args.steps, g["base"], warmup=100)
        x, targets = clips.batch(args.batch)
        bf16 = bool(args.bf16)
        if args.freeze:
            with torch.no_grad():
                feats = features(mimi, x, args.read, bf16, teacher)
            l_ctc = ctc_loss(head(feats), targets)
            l_mel = penalty = torch.zeros(())
            loss = l_ctc
        else:
            emb = encode_latent(mimi, x, bf16)
            sem = mimi.quantizer.rvq_first(emb, mimi.frame_rate)
            ac = mimi.quantizer.rvq_rest(emb, mimi.frame_rate)
            l_ctc = ctc_loss(head(sem.x), targets)
            y = decode_latent(mimi, sem.x + ac.x, x.shape[-1], bf16)
            l_mel = mel(y[:, 0], x[:, 0])
            penalty = sem.penalty + ac.penalty
            loss = l_mel + args.ctc * l_ctc + 0.1 * penalty
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        opt.step()
        step += 1
        log.append((l_mel.item(), l_ctc.item(), penalty.item()))
        if step % 50 == 0:
            m = np.mean(log, 0)
            log.clear()
            print(f"step {step} mel {m[0]:.4f} ctc {m[1]:.4f} commit {m[2]:.4f} "
                  f"{(time.time() - t0) / 50:.2f} s/step", file=sys.stderr, flush=True)
            t0 = time.time()
        if step % 250 == 0 or step == args.steps:
            print(f"step {step} transcribed from {READS[args.read]}: held-out voices "
                  f"{heard(mimi, head, clips, evals, bf16, args.read, teacher)}, "
                  f"training voices {heard(mimi, head, clips, trains, bf16, args.read, teacher)}",
                  file=sys.stderr, flush=True)
            torch.save({"model": mimi.state_dict(), "head": head.state_dict(), "opt": opt.state_dict(),
                        "step": step}, str(ckpt) + ".tmp")
            os.replace(str(ckpt) + ".tmp", ckpt)
            if not args.freeze:
                mimi.eval()
                export(mimi, args.out / "export")
                mimi.train()
    print("done", file=sys.stderr)


if __name__ == "__main__":
    main()
