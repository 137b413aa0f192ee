#!/usr/bin/env python3
"""kokichi-tiny's language model, trained with the reference `moshi` PyTorch classes (Burn's
CPU training was measured too slow here, see README), exported in the checkpoint layout.

  train_lm.py tokenize --data D --codec WORK/codec/export --out WORK/lm/tokens.npz
  train_lm.py train --tokens WORK/lm/tokens.npz --work WORK/lm --steps 15000

Dialogues follow Moshi's two-stream layout: the user stream holds the spoken question at a
random position; the model stream is silence, then the answer in the model's own voice after a
natural gap; the text stream is padding with each answer word at the frame its audio starts.
Loss: text and the model's audio streams, with Moshi's acoustic delays (LMModel.forward).
"""
import argparse
import json
import multiprocessing as mp
import os
import random
import sys
import time
import wave
from pathlib import Path

os.environ.setdefault("NO_TORCH_COMPILE", "1")
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from moshi.models.loaders import get_mimi, get_moshi_lm  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import (CODEBOOKS, FRAME, MIMI, PAD, SEQ_FRAMES, cosine_lr, lm_config, load_split,  # noqa: E402
                    read_wav)
from gen_mimi_fixtures import checkpoint_state  # noqa: E402

RATE = 24000


def word_ids(tokenizer_path: Path) -> dict:
    from sentencepiece import SentencePieceProcessor
    sp = SentencePieceProcessor(model_file=str(tokenizer_path))
    return {sp.id_to_piece(i).lstrip("\u2581"): i for i in range(4, sp.get_piece_size())}, sp.get_piece_size()


def load_codec(codec: Path):
    mimi = get_mimi(str(codec / "mimi.safetensors"), MIMI, num_codebooks=CODEBOOKS)
    mimi.eval()
    return mimi


@torch.no_grad()
def encode(mimi, pcm: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(pcm.astype(np.float32))[None, None]
    return mimi.encode(x)[0].numpy()


def wav_frames(path) -> int:
    with wave.open(str(path)) as w:
        return w.getnframes()


_WORKER = {}


def _init_worker(codec: str, total: int):
    torch.set_num_threads(1)
    _WORKER["mimi"] = load_codec(Path(codec))
    _WORKER["total"] = total


def _encode_users(jobs):
    """The user stream of each job: the question at its lead in low noise, encoded whole."""
    out = []
    for job in jobs:
        total = _WORKER["total"]
        pcm = np.zeros(total, np.float32)
        if job["file"]:
            q = read_wav(job["file"]).astype(np.float32) / 32768
            lead = job["lead"]
            pcm[lead:lead + len(q)] = q[: total - lead]
        pcm += np.random.default_rng(job["seed"]).standard_normal(total).astype(np.float32) * job["noise"]
        out.append((job["k"], encode(_WORKER["mimi"], pcm)))
    return out


def layout(rng, q_len, a_len, total):
    """Frame-aligned answer placement after a random lead and gap (samples)."""
    lead = int(rng.uniform(0.1, 1.5) * RATE)
    gap = int(rng.uniform(0.25, 0.7) * RATE)
    start = lead + q_len + gap
    a_frame = -(-start // FRAME)
    if a_frame * FRAME + a_len > total:
        shift = a_frame * FRAME + a_len - total
        lead = max(0, lead - shift)
        a_frame = -(-(lead + q_len + gap) // FRAME)
    return lead, a_frame


def tokenize(args):
    rng = random.Random(args.seed)
    words, vocab = word_ids(args.data / "tokenizer.model")
    mimi = load_codec(args.codec)
    total = SEQ_FRAMES * FRAME
    answers = json.loads((args.data / "answers.json").read_text())
    # The model's answers always start on a frame boundary after silence: precompute their codes.
    ans_codes = {}
    for text, a in answers.items():
        pcm = read_wav(args.data / a["file"]).astype(np.float32) / 32768
        lead = np.zeros(4 * FRAME, np.float32)
        n = -(-(len(pcm)) // FRAME)
        buf = np.concatenate([lead, pcm, np.zeros(n * FRAME - len(pcm) + FRAME, np.float32)])
        codes = encode(mimi, buf)[:, 4:]
        onsets = [(words[w], int(round(t * RATE / FRAME))) for w, t in a["words"]]
        ans_codes[text] = (codes, onsets)
    silence = encode(mimi, np.zeros(total, np.float32))
    out = {}
    for split in ["train", "eval"]:
        recs = load_split(args.data, split)[: args.limit or None]
        reps = args.layouts if split == "train" else 1
        seqs = np.zeros((len(recs) * reps, 1 + 2 * CODEBOOKS, SEQ_FRAMES), np.int16)
        meta = []
        jobs = []
        # Layouts and noise levels are drawn here, in order, so the result does not depend on
        # how the encoding is spread over worker processes.
        for rep in range(reps):
            for i, r in enumerate(recs):
                k = len(jobs)
                text = np.full(SEQ_FRAMES, PAD, np.int16)
                model = silence.copy()
                job = {"k": k, "file": None, "lead": 0, "noise": 10 ** rng.uniform(-5, -3), "seed": args.seed * 10_000_000 + k}
                if r["task"] != "silence":
                    q_len = wav_frames(args.data / r["file"])
                    codes, onsets = ans_codes[r["answer"]]
                    lead, af = layout(rng, q_len, codes.shape[1] * FRAME, total)
                    job.update(file=str(args.data / r["file"]), lead=lead)
                    n = min(codes.shape[1], SEQ_FRAMES - af)
                    model[:, af:af + n] = codes[:, :n]
                    for wid, f in onsets:
                        if af + f < SEQ_FRAMES:
                            text[af + f] = wid
                    meta.append((i, lead, af))
                else:
                    meta.append((i, -1, -1))
                seqs[k, 0] = text
                seqs[k, 1:1 + CODEBOOKS] = model
                jobs.append(job)
        t0 = time.time()
        chunks = [jobs[j:j + 50] for j in range(0, len(jobs), 50)]
        with mp.get_context("fork").Pool(args.workers, initializer=_init_worker, initargs=(str(args.codec), total)) as pool:
            for done, results in enumerate(pool.imap_unordered(_encode_users, chunks), 1):
                for k, user in results:
                    seqs[k, 1 + CODEBOOKS:] = user
                if done % 20 == 0:
                    print(f"{split}: {done * 50}/{len(seqs)} ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
        out[split] = seqs
        out[split + "_meta"] = np.array(meta, np.int32)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(args.out, text_card=vocab, **out)
    # The same sequences for kokichi's own trainer (`kokichi train-lm --tokens`).
    save_file({"train": torch.from_numpy(out["train"]), "eval": torch.from_numpy(out["eval"])},
              str(args.out.with_suffix(".safetensors")))
    print(f"wrote {args.out}", file=sys.stderr)


def lm_loss(lm, codes, pad_weight=0.5, bf16=False):
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        res = lm(codes)
    tl = res.text_logits[:, 0]
    tm = res.text_mask[:, 0]
    tgt = codes[:, 0]
    w = torch.where(tgt == PAD, pad_weight, 1.0) * tm
    text = (F.cross_entropy(tl[tm].float(), tgt[tm], reduction="none") * w[tm]).sum() / w.sum()
    al, am = res.logits, res.mask
    atgt = codes[:, 1:1 + lm.dep_q]
    audio = F.cross_entropy(al[am].float(), atgt[am])
    return text, audio


def export(lm, cfg, work: Path):
    out = work / "export"
    out.mkdir(parents=True, exist_ok=True)
    save_file(checkpoint_state(lm), str(out / "model.safetensors"))
    (out / "lm_config.json").write_text(json.dumps(cfg, indent=1))


def train(args):
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    data = np.load(args.tokens)
    text_card = int(data["text_card"])
    cfg = lm_config(text_card)
    train_set = torch.from_numpy(data["train"].astype(np.int64))
    eval_set = torch.from_numpy(data["eval"].astype(np.int64))
    lm = get_moshi_lm(None, lm_kwargs=dict(cfg), device="cpu", dtype=torch.float32)
    lm.train()
    opt = torch.optim.AdamW(lm.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.05)
    step = 0
    ckpt = args.work / "ckpt.pt"
    args.work.mkdir(parents=True, exist_ok=True)
    if ckpt.exists():
        st = torch.load(ckpt, map_location="cpu", weights_only=False)
        lm.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        step = st["step"]
        print(f"resumed at step {step}", file=sys.stderr)
    n = sum(p.numel() for p in lm.parameters())
    print(f"lm: {n / 1e6:.2f} M parameters, {len(train_set)} training sequences", file=sys.stderr)
    g = torch.Generator().manual_seed(args.seed + step)
    t0, log = time.time(), []
    while step < args.steps:
        for grp in opt.param_groups:
            grp["lr"] = cosine_lr(step, args.steps, args.lr, warmup=500)
        idx = torch.randint(0, len(train_set), (args.batch,), generator=g)
        codes = train_set[idx]
        lt, la = lm_loss(lm, codes, pad_weight=args.pad_weight, bf16=bool(args.bf16))
        loss = lt + la
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
        opt.step()
        step += 1
        log.append((lt.item(), la.item()))
        if step % 50 == 0:
            m = np.mean(log, 0)
            log.clear()
            print(f"step {step} text {m[0]:.4f} audio {m[1]:.4f} {(time.time() - t0) / 50:.2f} s/step",
                  file=sys.stderr, flush=True)
            t0 = time.time()
        if step % 500 == 0 or step == args.steps:
            lm.eval()
            with torch.no_grad():
                et, ea = lm_loss(lm, eval_set[:64])
            print(f"step {step} eval text {et.item():.4f} audio {ea.item():.4f}", file=sys.stderr, flush=True)
            torch.save({"model": lm.state_dict(), "opt": opt.state_dict(), "step": step}, str(ckpt) + ".tmp")
            os.replace(str(ckpt) + ".tmp", ckpt)
            export(lm, cfg, args.work)
            lm.train()
    print("done", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("tokenize")
    t.add_argument("--data", type=Path, default=Path("/var/tmp/kokichi-data"))
    t.add_argument("--codec", type=Path, default=Path("/var/tmp/kokichi-train/codec/export"))
    t.add_argument("--out", type=Path, default=Path("/var/tmp/kokichi-train/lm/tokens.npz"))
    t.add_argument("--layouts", type=int, default=1, help="random placements of each training question")
    t.add_argument("--workers", type=int, default=2, help="encoding processes (one thread each)")
    t.add_argument("--seed", type=int, default=3)
    t.add_argument("--limit", type=int, default=0, help="tokenize only the first N records (smoke tests)")
    r = sub.add_parser("train")
    r.add_argument("--tokens", type=Path, default=Path("/var/tmp/kokichi-train/lm/tokens.npz"))
    r.add_argument("--work", type=Path, default=Path("/var/tmp/kokichi-train/lm"))
    r.add_argument("--steps", type=int, default=4000)
    r.add_argument("--batch", type=int, default=16)
    r.add_argument("--lr", type=float, default=1e-3)
    r.add_argument("--threads", type=int, default=2)
    r.add_argument("--seed", type=int, default=5)
    r.add_argument("--pad-weight", type=float, default=0.1,
                   help="weight of padding positions in the text loss: the answer words are 1-3 of 100 positions")
    r.add_argument("--bf16", type=int, default=0, help="bf16 autocast (pays off with AMX; slower than f32 on AVX-512 alone)")
    args = ap.parse_args()
    torch.set_num_threads(getattr(args, "threads", 2))
    tokenize(args) if args.cmd == "tokenize" else train(args)


if __name__ == "__main__":
    main()
