#!/usr/bin/env python3
"""kokichi-tiny's language model: `tokenize` lays a corpus (make_data.py) out as token sequences
through a codec, `train` trains the LM on them with the reference `moshi` PyTorch classes (Burn's
CPU training is several times slower on these CPUs; see ../README.md) and exports it in the
checkpoint layout kokichi loads. recipe.py holds every stage's exact arguments; the shapes are:

  train_lm.py tokenize --data D --codec CODEC --out W/lmN/tokens.npz [--first K] [--limit N] [--seed S]
      [--splits train] [--warp W] [--vocode P] [--level DB --noise DB [--colour]]
  train_lm.py train --data D --tokens T.npz [MORE.npz ...] --work W/lmN [--init W/lmM/ckpt.pt | MODEL_DIR]
      [--steps N --lr LR --warmup N --user-mask P --dropout P --multi P --audio-teacher MODEL_DIR]

Both steps are resumable: a finished tokenizing with the same inputs and arguments is kept
(steps.py), and `train` picks up the latest checkpoint in --work.

`--init` takes a run's ckpt.pt, or an exported or shipped model folder (f16 or f32), so a
stage can continue from the shipped weights when the runs' checkpoints are gone. A folder's
lm_config.json (or config.json) sets the architecture, so grow_lm.py's deeper LM trains too.

Dialogues follow Moshi's two-stream layout: the user stream holds the spoken question at a
random position; the model stream is silence, then the answer in the model's own voice after a
natural gap; the text stream is padding with each answer word at the frame its audio starts.
Loss: text and the model's audio streams, with Moshi's acoustic delays (LMModel.forward).

Recognition help (training only): the answer text supervises hearing at one frame per dialogue,
too sparse for a small model to learn to recognise unseen voices in a CPU budget. An auxiliary
head on the temporal transformer's output is trained with CTC to transcribe the user's
question word by word (`--ctc-weight`), so every frame of the question teaches hearing. For
words that are also answer words, the head *is* the text head's output row (tied), so a word
heard is already the text token that would say it: repeating it, or a number next to it, is
then a copy through attention rather than a mapping learned word by word. The rest of the head
is not part of the exported model: kokichi-tiny stays a plain Moshi-architecture LM.

Without `--ctc-until` the head may emit the question anywhere in the dialogue, and it can learn
to emit the last words a few frames after the answer starts, reading them off the model's own
answer audio, which teacher forcing puts in the model stream (for "say banana" the answer audio
*is* the word; probe_lm.py --heard shows it). `--ctc-until 2` makes the transcript due 2 frames
after the whole question has been heard, always before the answer.

`--multi P` splices a second question/answer exchange into a share P of the dialogues
(Exchanges): a model trained on single questions only rarely answers the second question of a
two-question session. `--audio-teacher` pulls the audio predictions towards an earlier stage's
model, so that a warm start on new data keeps its speech. The later stages use both. What each
option measured, and why the stages are as they are: ../docs/kokichi-tiny.md.
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
from moshi.models.lm_utils import _delay_sequence, _undelay_sequence  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))  # gen_mimi_fixtures
from common import (CODEBOOKS, FRAME, MIMI, PAD, SEQ_FRAMES, cosine_lr, ctc_greedy, export_config,  # noqa: E402
                    lm_config, load_split, read_wav)
from common import noise as coloured  # noqa: E402
from steps import clear_done, mark_done, records_digest, step_key  # noqa: E402
import vocode  # noqa: E402
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
            if job.get("vocode"):
                q = vocode.vocode(q, RATE, job["vocode"])
            if job["warp"] != WARP_BASE:
                q = warp(q, job["warp"])
            if job.get("level") is not None and np.abs(q).max() > 0:
                q = q * np.float32(10 ** (job["level"] / 20) / np.abs(q).max())
            lead = job["lead"]
            pcm[lead:lead + len(q)] = q[: total - lead]
        pcm += coloured(np.random.default_rng(job["seed"]), total, job.get("colour", 0)).astype(np.float32) * job["noise"]
        out.append((job["k"], encode(_WORKER["mimi"], pcm)))
    return out


WARP_BASE = 20
# The noise spectra `tokenize --colour` draws from: white, pink, brown (power as f^-slope).
COLOURS = (0, 1, 2)
# The quietest noise floor `tokenize --noise` draws (dBFS RMS); without it, -100 to -60.
NOISE_FLOOR = -75.0


def warp(pcm: np.ndarray, p: int) -> np.ndarray:
    """The clip played back p/20 times as fast: every frequency, pitch and formants alike,
    scales by p/20 and the duration by 20/p, as if a smaller (p > 20) or larger speaker said it."""
    from scipy.signal import resample_poly
    return resample_poly(pcm, WARP_BASE, p).astype(np.float32)


def warped_len(n: int, p: int) -> int:
    return -(-n * WARP_BASE // p)


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


def selected(args, split, n=None):
    """The records of `split` that tokenize reads: training ones from --first on, up to --limit (or n)."""
    first = args.first if split == "train" else 0
    recs = load_split(args.data, split)[first:]
    return recs[: n if n is not None else (args.limit or None)]


def tokenize(args):
    if not 0 <= args.warp < WARP_BASE:
        sys.exit(f"--warp {args.warp}: must be 0 (off) to {WARP_BASE - 1}")
    if not -60.0 <= args.level <= -1.0 and args.level != 0:
        sys.exit(f"--level {args.level}: must be 0 (off) or a peak level from -60 to -1 dB")
    if args.noise and not -90.0 <= args.noise <= -20.0:
        sys.exit(f"--noise {args.noise}: must be 0 (off) or the loudest noise floor, -90 to -20 dBFS")
    if not 0.0 <= args.vocode <= 1.0:
        sys.exit(f"--vocode {args.vocode}: must be a fraction from 0 (off) to 1")
    # Done before with the same arguments, codec and records (a restarted `make train-tiny`): kept.
    marker = args.out.with_name(args.out.name + ".done.json")
    key = step_key(args, [args.codec, args.data / "answers.json", args.data / "tokenizer.model"])
    for opt in ("vocode", "level", "noise", "colour"):
        if not key[opt]:
            del key[opt]  # off: the key of tokenizings done before the option existed
    try:
        old = json.loads(marker.read_text())
        kept = {k: v for k, v in old.items() if k != "records"} == key and all(
            records_digest(selected(args, s, old["records"][s][0])) == old["records"][s] for s in args.splits)
    except (OSError, ValueError, KeyError, TypeError):
        kept = False
    if kept:
        print(f"{args.out}: tokenized before from the same records and codec, kept ({marker})", file=sys.stderr)
        return
    clear_done(marker)
    read = {}
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
    for split in args.splits:
        # Training records from --first on (meta holds their index in train.jsonl).
        first = args.first if split == "train" else 0
        recs = selected(args, split)
        read[split] = records_digest(recs)
        reps = args.layouts if split == "train" else 1
        seqs = np.zeros((len(recs) * reps, 1 + 2 * CODEBOOKS, SEQ_FRAMES), np.int16)
        meta = []
        jobs = []
        # Speaker-size augmentation of the training questions (--warp): its own generator, so
        # the layouts and noise levels stay those of the same seed without it.
        wrng = random.Random(args.seed * 1_000_003 + 7)
        vrng = random.Random(args.seed * 1_000_003 + 11)  # --vocode's, likewise
        lrng = random.Random(args.seed * 1_000_003 + 13)  # --level's, likewise
        nrng = random.Random(args.seed * 1_000_003 + 17)  # --noise's, likewise
        crng = random.Random(args.seed * 1_000_003 + 19)  # --colour's, likewise
        # Layouts and noise levels are drawn here, in order, so the result does not depend on
        # how the encoding is spread over worker processes.
        for rep in range(reps):
            for i, r in enumerate(recs):
                k = len(jobs)
                text = np.full(SEQ_FRAMES, PAD, np.int16)
                model = silence.copy()
                job = {"k": k, "file": None, "lead": 0, "noise": 10 ** rng.uniform(-5, -3), "seed": args.seed * 10_000_000 + k,
                       "warp": WARP_BASE}
                if r["task"] != "silence":
                    if split == "train" and args.warp:
                        job["warp"] = wrng.randint(WARP_BASE - args.warp, WARP_BASE + args.warp)
                    if split == "train" and args.vocode and vrng.random() < args.vocode:
                        job["vocode"] = vocode.params(vrng)
                    if split == "train" and args.level:
                        job["level"] = lrng.uniform(args.level, -1.0)
                    q_len = warped_len(wav_frames(args.data / r["file"]), job["warp"])
                    codes, onsets = ans_codes[r["answer"]]
                    lead, af = layout(rng, q_len, codes.shape[1] * FRAME, total)
                    job.update(file=str(args.data / r["file"]), lead=lead)
                    n = min(codes.shape[1], SEQ_FRAMES - af)
                    model[:, af:af + n] = codes[:, :n]
                    for wid, f in onsets:
                        if af + f < SEQ_FRAMES:
                            text[af + f] = wid
                    meta.append((first + i, lead, af))
                else:
                    meta.append((first + i, -1, -1))
                if split == "train" and args.noise:
                    # A louder noise floor, at least 20 dB under the question's (new) peak.
                    db = nrng.uniform(NOISE_FLOOR, args.noise)
                    if job.get("level") is not None:
                        db = min(db, job["level"] - 20)
                    job["noise"] = 10 ** (db / 20)
                if split == "train" and args.colour:
                    job["colour"] = crng.choice(COLOURS)
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
    save_file({s: torch.from_numpy(out[s]) for s in args.splits}, str(args.out.with_suffix(".safetensors")))
    mark_done(marker, {**key, "records": read})
    print(f"wrote {args.out}", file=sys.stderr)


def train_forward(lm, codes, audio_rows=None):
    """LMModel.forward, also returning the temporal transformer's output, with the depth
    transformer run on the first `audio_rows` dialogues only (its loss converges long before
    the text's; this halves the step time)."""
    B = codes.shape[0]
    a = B if audio_rows is None else max(1, min(B, audio_rows))
    initial = lm._get_initial_token().expand(B, -1, -1)
    delayed = torch.cat([initial, _delay_sequence(lm.delays, codes, initial)], dim=2)
    hidden, text_logits = lm.forward_text(delayed[:, :, :-1])
    logits = lm.forward_depformer_training(delayed[:a, :, 1:], hidden[:a])
    audio_delays = lm.delays[lm.audio_offset:lm.audio_offset + lm.dep_q]
    logits, amask = _undelay_sequence(audio_delays, logits, fill_value=float("NaN"))
    amask &= codes[:a, lm.audio_offset:lm.audio_offset + lm.dep_q] != lm.zero_token_id
    text_logits, tmask = _undelay_sequence(lm.delays[:1], text_logits, fill_value=float("NaN"))
    tmask &= codes[:, :1] != lm.zero_token_id
    return hidden, text_logits[:, 0], tmask[:, 0], logits, amask


def lm_loss(lm, codes, pad_weight=0.5, bf16=False, audio_rows=None, head=None, ctc=None):
    """(text, audio, ctc) losses, and train_forward's output they came from (for a loss on
    the logits themselves, such as --audio-teacher's); ctc is 0 without an auxiliary head and
    targets."""
    with torch.autocast(codes.device.type, dtype=torch.bfloat16, enabled=bf16):
        out = train_forward(lm, codes, audio_rows)
    return losses(lm, codes, out, pad_weight, head, ctc) + (out,)


def losses(lm, codes, out, pad_weight=0.5, head=None, ctc=None):
    hidden, tl, tm, al, am = out
    tgt = codes[:, 0]
    w = torch.where(tgt == PAD, pad_weight, 1.0) * tm
    text = (F.cross_entropy(tl[tm].float(), tgt[tm], reduction="none") * w[tm]).sum() / w.sum()
    atgt = codes[:al.shape[0], 1:1 + lm.dep_q]
    audio = F.cross_entropy(al[am].float(), atgt[am])
    aux = torch.zeros((), device=codes.device)
    if head is not None and ctc is not None:
        targets, lengths, steps = ctc
        logp = F.log_softmax(head(hidden.float(), tl.float()), -1).transpose(0, 1)  # [T, B, C]
        if steps is None:
            steps = torch.full((codes.shape[0],), logp.shape[0], dtype=torch.long, device=codes.device)
        aux = F.ctc_loss(logp, targets, steps, lengths, blank=0, zero_infinity=True)
    return text, audio, aux


def audio_kd(logits, t_logits, mask):
    """KL(teacher || student) of the audio codes' distributions, averaged over the positions
    the audio loss counts: it keeps a warm start saying its answers the way the teacher does,
    whatever codes a fresh synthesis gave the answer clips."""
    s = F.log_softmax(logits[mask].float(), -1)
    t = F.log_softmax(t_logits[mask].float(), -1)
    return F.kl_div(s, t, log_target=True, reduction="batchmean")


def first_words(pred, tgt, mask):
    """{dialogue: its first answer word predicted right}, for dialogues with an answer. The
    first word is the one that depends on hearing the question."""
    answer = (tgt != PAD) & mask
    out = {}
    for b in range(len(tgt)):
        pos = torch.nonzero(answer[b]).flatten()
        if len(pos):
            out[b] = bool(pred[b, pos[0]] == tgt[b, pos[0]])
    return out


def text_accuracy(pred, tgt, mask):
    """Teacher-forced text accuracy: (answer words right, first answer word right, dialogues
    with an answer)."""
    answer = (tgt != PAD) & mask
    first = list(first_words(pred, tgt, mask).values())
    return (pred[answer] == tgt[answer]).float().mean().item(), float(np.mean(first)), len(first)


def drop_user_levels(codes, p, g):
    """RVQ dropout on the user stream: with probability p a dialogue keeps only its first
    1-5 user codebooks (the rest become Moshi's zero token, an all-zero embedding). The coarse
    levels carry what was said and the fine ones the voice; held-out voices were measured far
    behind training voices (first answer word 33% against 4%), so this makes hearing lean on
    what voices share."""
    codes = codes.clone()
    B = codes.shape[0]
    drop = torch.rand(B, generator=g) < p
    keep = torch.randint(1, CODEBOOKS, (B,), generator=g)
    for b in torch.nonzero(drop).flatten().tolist():
        codes[b, 1 + CODEBOOKS + keep[b]:] = -1
    return codes


def mask_user_frames(codes, frac, g, span=2):
    """Time masking on the user stream (SpecAugment's, on tokens): about `frac` of the frames of
    every dialogue, in spans of 1-`span` frames, become Moshi's zero token. Measured before
    this: the LM got 80% of its training utterances' first answer word right but 8% of new
    utterances *in the same voices*, so it had learned utterances by heart, not words;
    hiding a little of every utterance makes such keys unreliable."""
    codes = codes.clone()
    B, _, T = codes.shape
    n = max(1, round(frac * T / ((1 + span) / 2)))
    starts = torch.randint(0, T, (B, n), generator=g)
    lens = torch.randint(1, span + 1, (B, n), generator=g)
    for b in range(B):
        for s, n_ in zip(starts[b].tolist(), lens[b].tolist()):
            codes[b, 1 + CODEBOOKS:, s:s + n_] = -1
    return codes


# Top-level modules of moshi's LMModel on the depth transformer's side: they map the temporal
# transformer's output to the audio codes and see nothing else of it.
DEPTH_MODULES = ("depformer", "depformer_in", "depformer_emb", "depformer_text_emb", "linears")


def add_branch_dropout(lm, p):
    """Dropout on the output of every attention and feed-forward branch of the temporal
    transformer (moshi's layers have none); active in train() mode only, nothing exported."""
    def hook(module, _inputs, output):
        return F.dropout(output, p, module.training)
    for layer in lm.transformer.layers:
        layer.self_attn.register_forward_hook(hook)
        layer.gating.register_forward_hook(hook)


class CtcHead(torch.nn.Module):
    """CTC logits over blank + question words: the text head's logits for words it can say,
    an own linear layer for blank and the other words (what, plus, comes, ...)."""

    def __init__(self, dim: int, words: list, text_ids: dict, text_card: int):
        super().__init__()
        own = [w for w in words if w not in text_ids]
        self.linear = torch.nn.Linear(dim, 1 + len(own))
        pos = {w: 1 + i for i, w in enumerate(own)}
        # Column of [own logits | text logits] for blank, then each question word in order.
        index = [0] + [pos[w] if w in pos else 1 + len(own) + text_ids[w] for w in words]
        self.register_buffer("index", torch.tensor(index, dtype=torch.long), persistent=False)
        self.tied = len(words) - len(own)

    def forward(self, hidden, text_logits):
        return torch.cat([self.linear(hidden), text_logits], -1).index_select(-1, self.index)


class Exchanges:
    """Sessions, not single questions: a share of each batch's dialogues get a second
    question/answer exchange spliced in after their answer. Without it the model never hears a
    question after one it has answered, and in two-question sessions it answered the second
    right 5% of the time (lm11; the first 48%). The first dialogue is kept from a few frames
    before its question to 2-40 frames after its answer (the gap a user leaves before asking
    again), then another dialogue follows from a few frames before its question; the rest of
    the 100 frames is that one's own silence. Both cuts fall in silence, on every stream."""

    def __init__(self, data: Path, meta):
        answers = json.loads((data / "answers.json").read_text())
        # The tokenizer lays each answer out as ceil(samples / FRAME) + 1 frames from its onset.
        frames = {t: -(-wav_frames(data / a["file"]) // FRAME) + 1 for t, a in answers.items()}
        recs = load_split(data, "train")
        self.start = torch.tensor([lead // FRAME if lead >= 0 else -1 for _, lead, _ in meta])
        self.end = torch.tensor([af + frames[recs[i]["answer"]] if lead >= 0 else -1 for i, lead, af in meta])

    def splice(self, train_set, idx, words, p, g, tries=6):
        """The batch `train_set[idx]` with a share `p` of its dialogues given a second exchange
        where one fits; returns it and each row's question words (the CTC targets) in order."""
        codes = train_set[idx].clone()
        T = codes.shape[-1]
        rows = [list(words[i]) for i in idx.tolist()]
        use = torch.rand(len(idx), generator=g) < p
        for b in torch.nonzero(use).flatten().tolist():
            i = idx[b].item()
            if self.end[i] < 0:
                continue
            for _ in range(tries):
                j = int(torch.randint(0, len(train_set), (1,), generator=g))
                s = max(0, int(self.start[i]) - int(torch.randint(0, 9, (1,), generator=g)))
                cut = int(self.end[i]) + int(torch.randint(2, 41, (1,), generator=g))
                if self.start[j] < 0 or cut > T:
                    continue
                src = max(0, int(self.start[j]) - int(torch.randint(1, 9, (1,), generator=g)))
                first = cut - s
                # j supplies frames src .. src + T - first: they must exist and hold its answer.
                if src > first or src + T - first < int(self.end[j]) + 2:
                    continue
                codes[b, :, :first] = train_set[i, :, s:cut]
                codes[b, :, first:] = train_set[j, :, src:src + T - first]
                rows[b] += words[j]
                break
        return codes, rows


class Questions:
    """The user's question as word ids (1..V; 0 is CTC's blank) for every token sequence."""

    def __init__(self, data: Path, metas: dict, ends: bool = False):
        recs = {s: load_split(data, s) for s in metas}
        self.words = sorted({w for r in recs["train"] for w in r["question"].split()})
        ids = {w: i + 1 for i, w in enumerate(self.words)}
        self.seqs = {}
        self.gap_from = {}
        for split, meta in metas.items():
            self.seqs[split] = [[ids.get(w, 0) for w in recs[split][i]["question"].split()] if lead >= 0 else []
                                for i, lead, _ in meta]
            # First position whose input holds the whole question: position t sees the user's
            # semantic level up to frame t-1 and the delayed acoustic ones up to t-2. -1: none.
            self.gap_from[split] = torch.tensor(
                [(lead + wav_frames(data / recs[split][i]["file"]) - 1) // FRAME + 2 if lead >= 0 else -1
                 for i, lead, _ in meta], dtype=torch.long) if ends else None

    def batch(self, split, idx, until=None):
        """CTC targets, their lengths, and the frames each transcript must be complete in:
        with `until`, up to `until` frames after the whole question has been heard (needs
        `ends`); else all (None)."""
        seqs = [self.seqs[split][i] for i in idx.tolist()]
        return self.targets(seqs) + (self.steps(split, idx, until),)

    @staticmethod
    def targets(seqs):
        """Word lists as CTC's flat targets and their lengths."""
        return (torch.tensor([w for q in seqs for w in q], dtype=torch.long),
                torch.tensor([len(q) for q in seqs], dtype=torch.long))

    def steps(self, split, idx, until):
        if until is None:
            return None
        g = self.gap_from[split][idx]
        return torch.where(g >= 0, (g + until).clamp(max=SEQ_FRAMES), SEQ_FRAMES)


@torch.no_grad()
def evaluate(lm, head, questions, eval_set, n=64, until=None):
    """Eval losses, and on held-out voices: first answer word right (teacher-forced), question
    transcribed exactly by the auxiliary head (in the frames it is given), and words said where
    padding is due."""
    dev = next(lm.parameters()).device
    idx = torch.arange(min(n, len(eval_set)))
    codes = eval_set[idx].to(dev)
    out = train_forward(lm, codes)
    ctc = to_device(questions.batch("eval", idx, until), dev) if head is not None else None
    et, ea, ec = losses(lm, codes, out, head=head, ctc=ctc)
    hidden, tl, tm, _, _ = out
    tgt = codes[:, 0]
    pred = tl.argmax(-1)
    _, first, _ = text_accuracy(pred, tgt, tm)
    heard = float("nan")
    if head is not None:
        ctc_logits = head(hidden, tl)
        steps = ctc[2] if ctc[2] is not None else torch.full((len(codes),), codes.shape[-1], device=dev)
        # Over dialogues with a question: a silent one is "transcribed" by any blank output.
        heard = float(np.mean([ctc_greedy(ctc_logits[b, :steps[b]]) == questions.seqs["eval"][b]
                               for b in range(len(codes)) if questions.seqs["eval"][b]]))
    quiet = (tgt == PAD) & tm
    blurts = (pred[quiet] != PAD).float().mean().item()
    return et.item(), ea.item(), ec.item(), first, heard, blurts


def to_device(tensors, dev):
    """A tuple of tensors (or Nones) moved to `dev`."""
    return tuple(t.to(dev) if t is not None else None for t in tensors)


def export(lm, cfg, work: Path, name: str = "export"):
    out = work / name
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.cpu() for k, v in checkpoint_state(lm).items()}, str(out / "model.safetensors"))
    (out / "lm_config.json").write_text(json.dumps(cfg, indent=1))


CODE_TABLES = ("emb.", "depformer_emb.", "linears.")


def fresh_code_tables(lm, cfg, seed):
    """--new-codes: the tokens come from another codec, so every table indexed by an audio code
    (the audio input embeddings, the depth transformer's code embeddings, the audio output heads)
    starts as a run from scratch would, while the transformers and the text side keep what they
    learned."""
    torch.manual_seed(seed)
    fresh = get_moshi_lm(None, lm_kwargs=dict(cfg), device="cpu", dtype=torch.float32).state_dict()
    own = lm.state_dict()
    keys = [k for k in own if k.startswith(CODE_TABLES)]
    if not keys:
        sys.exit("--new-codes: the LM has no audio code tables (emb.*, depformer_emb.*, linears.*)")
    lm.load_state_dict({**own, **{k: fresh[k] for k in keys}})
    print(f"--new-codes: {len(keys)} audio code tables start afresh", file=sys.stderr)


def train(args):
    torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit(f"--device {args.device}: torch sees no CUDA device")
    dev = torch.device(args.device)
    torch.manual_seed(args.seed)
    if args.new_codes and args.init is None:
        sys.exit("--new-codes: needs --init (a run starting from scratch has fresh tables already)")
    if args.new_codes and args.audio_teacher is not None:
        sys.exit("--new-codes with --audio-teacher: the teacher's audio predictions are in the old codes")
    files = [np.load(t) for t in args.tokens]
    data = files[0]
    text_card = int(data["text_card"])
    for t, f in zip(args.tokens, files):
        if int(f["text_card"]) != text_card:
            sys.exit(f"{t}: text vocabulary of {int(f['text_card'])}, {args.tokens[0]} has {text_card}")
    cfg = lm_config(text_card)
    # A model folder given to --init brings its own architecture (grow_lm.py's deeper LM, say).
    own = export_config(args.init) if args.init is not None and args.init.is_dir() else None
    if own is not None:
        if own["text_card"] != text_card:
            sys.exit(f"{args.init}: text vocabulary of {own['text_card']}, the tokens' is {text_card}")
        cfg = own
    # Training sequences from every file that has them; the held-out ones from the first.
    if "eval" not in data:
        sys.exit(f"{args.tokens[0]}: no held-out split (tokenize it with --splits train eval, or name a file "
                 "that has one first)")
    if not any("train" in f for f in files):
        sys.exit(f"{' '.join(map(str, args.tokens))}: no training split in any of them")
    train_set = torch.from_numpy(np.concatenate([f["train"] for f in files if "train" in f]).astype(np.int64))
    train_meta = np.concatenate([f["train_meta"] for f in files if "train" in f])
    eval_set = torch.from_numpy(data["eval"].astype(np.int64))
    until = args.ctc_until if args.ctc_until > 0 else None
    questions = Questions(args.data, {"train": train_meta, "eval": data["eval_meta"]},
                          ends=until is not None)
    if args.multi > 0 and until is not None:
        sys.exit("--multi with --ctc-until: the latter knows one question per dialogue")
    exchanges = Exchanges(args.data, train_meta) if args.multi > 0 else None
    lm = get_moshi_lm(None, lm_kwargs=dict(cfg), device="cpu", dtype=torch.float32)
    text_ids, _ = word_ids(args.data / "tokenizer.model")
    head = CtcHead(cfg["dim"], questions.words, text_ids, text_card) if args.ctc_weight > 0 else None
    if args.dropout > 0:
        add_branch_dropout(lm, args.dropout)
    # The depth transformer's side (it writes the audio codes) may learn slower than the rest,
    # or not at all (scale 0: frozen, left out of the optimizer and of gradient clipping).
    depth = [p for k, p in lm.named_parameters() if k.split(".")[0] in DEPTH_MODULES]
    rest = [p for k, p in lm.named_parameters() if k.split(".")[0] not in DEPTH_MODULES]
    rest += list(head.parameters()) if head is not None else []
    groups = [{"params": rest, "scale": 1.0}]
    if args.depformer_lr_scale > 0:
        groups.append({"params": depth, "scale": args.depformer_lr_scale})
    else:
        for p in depth:
            p.requires_grad_(False)
    lm.to(dev)
    if head is not None:
        head.to(dev)
    params = [p for g in groups for p in g["params"]]
    lm.train()
    opt = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.95), weight_decay=0.05)
    step = 0
    ckpt = args.work / "ckpt.pt"
    args.work.mkdir(parents=True, exist_ok=True)
    def load_weights(path):
        """The LM's weights from a checkpoint, and its CTC head's if both have one; or from an
        exported or shipped model (a model.safetensors, or the folder holding it: f16 or f32,
        checkpoint layout), whose run's checkpoints may be gone."""
        if path.is_dir():
            path = path / "model.safetensors"
        if not path.exists():
            sys.exit(f"{path}: no such checkpoint or model file")
        if path.suffix == ".safetensors":
            lm.load_state_dict(get_moshi_lm(str(path), lm_kwargs=dict(cfg), device="cpu",
                                            dtype=torch.float32).state_dict())
            return {}
        st = torch.load(path, map_location="cpu", weights_only=False)
        lm.load_state_dict(st["model"])
        if head is not None and "head" in st:
            head.load_state_dict(st["head"])
        return st

    if ckpt.exists():
        st = load_weights(ckpt)
        if (head is not None) == ("head" in st):
            opt.load_state_dict(st["opt"])
        step = st["step"]
        print(f"resumed at step {step}", file=sys.stderr)
    elif args.init:
        # Warm start from another run's weights (optimizer and schedule start afresh).
        st = load_weights(args.init)
        print(f"initialised from {args.init}" + (" (with its CTC head)" if head is not None and "head" in st else ""),
              file=sys.stderr)
        if args.new_codes:
            fresh_code_tables(lm, cfg, args.seed)
    teacher = None
    if not 0 <= args.audio_kd <= 1:
        sys.exit(f"--audio-kd {args.audio_kd}: must be in 0..1")
    if args.audio_teacher is not None:
        # A frozen copy of a model whose audio the run should keep (its own start, usually).
        path = args.audio_teacher / "model.safetensors" if args.audio_teacher.is_dir() else args.audio_teacher
        if not path.exists():
            sys.exit(f"{path}: no such model file (--audio-teacher)")
        tcfg = export_config(args.audio_teacher) if args.audio_teacher.is_dir() else None
        teacher = get_moshi_lm(str(path), lm_kwargs=dict(tcfg or cfg), device="cpu", dtype=torch.float32).to(dev)
        teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
    n = sum(p.numel() for p in lm.parameters())
    print(f"lm: {n / 1e6:.2f} M parameters, {len(train_set)} training sequences, "
          f"{len(questions.words)} question words ({head.tied if head else 0} tied to the text head)", file=sys.stderr)
    g = torch.Generator().manual_seed(args.seed + step)
    best = -1.0
    if args.keep_best:
        # The starting point's score: a checkpoint is kept as the best only if it beats it.
        lm.eval()
        best = evaluate(lm, head, questions, eval_set, n=args.eval_n, until=until)[3]
        lm.train()
        print(f"step {step} eval first word right {100 * best:.1f}% (the start; --keep-best needs more)",
              file=sys.stderr, flush=True)
    t0, log = time.time(), []
    start, started = step, time.time()
    while step < args.steps:
        if args.minutes > 0 and step == start + 20:
            # A wall-clock budget (a lent GPU's minutes): the run's length from its first 20 steps'
            # pace, with a minute kept for the last evaluation and export. The schedule follows.
            pace = (time.time() - started) / 20
            fit = start + 20 + int(max(0.0, args.minutes * 60 - 60 - (time.time() - started)) / pace)
            args.steps = max(step + 1, min(args.steps, fit))
            if args.evals > 0:
                args.save_every = max(1, (args.steps - start) // args.evals)
            print(f"{pace:.3f} s a step: {args.steps} steps fit in {args.minutes} minutes", file=sys.stderr, flush=True)
        for grp in opt.param_groups:
            grp["lr"] = grp["scale"] * cosine_lr(step, args.steps, args.lr, warmup=args.warmup)
        idx = torch.randint(0, len(train_set), (args.batch,), generator=g)
        if exchanges is not None:
            codes, qwords = exchanges.splice(train_set, idx, questions.seqs["train"], args.multi, g)
            ctc = questions.targets(qwords) + (None,) if head is not None else None
        else:
            codes = train_set[idx]
            ctc = questions.batch("train", idx, until) if head is not None else None
        if args.user_levels > 0:
            codes = drop_user_levels(codes, args.user_levels, g)
        if args.user_mask > 0:
            codes = mask_user_frames(codes, args.user_mask, g)
        codes = codes.to(dev)
        if ctc is not None:
            ctc = to_device(ctc, dev)
        rows = args.audio_rows or None
        lt, la, lc, out = lm_loss(lm, codes, pad_weight=args.pad_weight, bf16=bool(args.bf16),
                                  audio_rows=rows, head=head, ctc=ctc)
        audio, kd = la, torch.zeros(())
        if teacher is not None:
            with torch.no_grad():
                t_logits = train_forward(teacher, codes, rows)[3]
            kd = audio_kd(out[3], t_logits, out[4])
            audio = (1 - args.audio_kd) * la + args.audio_kd * kd
        loss = lt + audio + args.ctc_weight * lc
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        log.append((lt.item(), la.item(), lc.item(), kd.item()))
        if step % 50 == 0:
            m = np.mean(log, 0)
            log.clear()
            print(f"step {step} text {m[0]:.4f} audio {m[1]:.4f} ctc {m[2]:.4f}"
                  + (f" kd {m[3]:.4f}" if teacher is not None else "") + f" {(time.time() - t0) / 50:.2f} s/step",
                  file=sys.stderr, flush=True)
            t0 = time.time()
        if step % args.save_every == 0 or step == args.steps:
            lm.eval()
            et, ea, ec, first, heard, blurts = evaluate(lm, head, questions, eval_set, n=args.eval_n, until=until)
            print(f"step {step} eval text {et:.4f} audio {ea:.4f} ctc {ec:.4f} first word right {100 * first:.1f}% "
                  f"question heard {100 * heard:.1f}% words where padding is due {100 * blurts:.2f}%",
                  file=sys.stderr, flush=True)
            st = {"model": lm.state_dict(), "opt": opt.state_dict(), "step": step}
            if head is not None:
                st["head"] = head.state_dict()
            torch.save(st, str(ckpt) + ".tmp")
            os.replace(str(ckpt) + ".tmp", ckpt)
            export(lm, cfg, args.work)
            if args.keep_best and first > best:
                best = first
                export(lm, cfg, args.work, "best")
                (args.work / "best" / "step").write_text(f"{step} {first:.4f}\n")
                print(f"step {step} kept as the best", file=sys.stderr, flush=True)
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
    t.add_argument("--first", type=int, default=0, help="first training record to tokenize")
    t.add_argument("--warp", type=int, default=0,
                   help="resample each training question by p/20, p uniform in 20-W..20+W (speaker size; 0: off)")
    t.add_argument("--vocode", type=float, default=0.0,
                   help="fraction of training questions resynthesized by a vocoder with F0, formants and excitation "
                        "varied apart (vocode.py; 0: off)")
    t.add_argument("--level", type=float, default=0.0,
                   help="rescale each training question to a peak drawn uniformly from LEVEL to -1 dB "
                        "(the corpus peaks at -9 to 0 dB; quieter speech is heard far worse without it; 0: off)")
    t.add_argument("--noise", type=float, default=0.0,
                   help="noise (white unless --colour) under each training sequence at an RMS level drawn uniformly from -75 dBFS to NOISE "
                        "(kept 20 dB under a --level question's peak), in place of -100..-60 dBFS; 0: off")
    t.add_argument("--colour", action="store_true",
                   help="each training sequence's noise white, pink or brown at random (power as f^0, f^-1, f^-2: "
                        "hiss, fans and rooms, rumble) instead of always white")
    t.add_argument("--splits", nargs="+", default=["train", "eval"], choices=["train", "eval"])
    r = sub.add_parser("train")
    r.add_argument("--tokens", type=Path, nargs="+", default=[Path("/var/tmp/kokichi-train/lm/tokens.npz")],
                   help="token files; training sequences from all, held-out ones from the first")
    r.add_argument("--work", type=Path, default=Path("/var/tmp/kokichi-train/lm"))
    r.add_argument("--steps", type=int, default=4000)
    r.add_argument("--batch", type=int, default=16)
    r.add_argument("--lr", type=float, default=1e-3)
    r.add_argument("--threads", type=int, default=2)
    r.add_argument("--device", default="cpu", help="torch device to train on (cpu, cuda)")
    r.add_argument("--minutes", type=float, default=0.0,
                   help="wall-clock budget: --steps shrinks to what fits, from the first 20 steps' pace (0: off)")
    r.add_argument("--seed", type=int, default=5)
    r.add_argument("--pad-weight", type=float, default=0.1,
                   help="weight of padding positions in the text loss: the answer words are 1-3 of 100 positions")
    r.add_argument("--bf16", type=int, default=0, help="bf16 autocast (pays off with AMX; slower than f32 on AVX-512 alone)")
    r.add_argument("--data", type=Path, default=Path("/var/tmp/kokichi-data"), help="for the question transcripts")
    r.add_argument("--ctc-weight", type=float, default=0.5,
                   help="weight of the auxiliary question-transcription loss (0: off)")
    r.add_argument("--ctc-until", type=int, default=0,
                   help="the transcript must be complete this many frames after the whole question has been "
                        "heard, before the model's own answer starts (0: anywhere in the dialogue)")
    r.add_argument("--audio-rows", type=int, default=4,
                   help="dialogues per batch that train the depth transformer (0: all)")
    r.add_argument("--warmup", type=int, default=500)
    r.add_argument("--user-levels", type=float, default=0.5,
                   help="probability of RVQ dropout on a dialogue's user stream (0: off)")
    r.add_argument("--user-mask", type=float, default=0.0,
                   help="fraction of user-stream frames hidden per dialogue, in 1-2 frame spans (0: off)")
    r.add_argument("--multi", type=float, default=0.0,
                   help="share of dialogues given a second exchange spliced in after their answer (0: off)")
    r.add_argument("--dropout", type=float, default=0.0, help="temporal transformer branch dropout (0: off)")
    r.add_argument("--save-every", type=int, default=250)
    r.add_argument("--evals", type=int, default=0,
                   help="with --minutes: evaluate and save this many times over the run (sets --save-every; 0: off)")
    r.add_argument("--eval-n", type=int, default=64, help="held-out sequences each evaluation scores")
    r.add_argument("--keep-best", action="store_true",
                   help="also export the evaluation with the most first answer words right, if it beats the start, "
                        "to WORK/best")
    r.add_argument("--depformer-lr-scale", type=float, default=1.0,
                   help="learning rate of the depth transformer's side (depformer*, linears) relative to --lr (0: frozen)")
    r.add_argument("--audio-teacher", type=Path, default=None,
                   help="a model folder or model.safetensors whose audio predictions the run is pulled towards")
    r.add_argument("--audio-kd", type=float, default=1.0,
                   help="with --audio-teacher: the audio loss is (1 - w) * cross-entropy + w * KL to the teacher")
    r.add_argument("--init", type=Path, default=None, help="start from another run's ckpt.pt, or an exported/shipped model folder (weights only)")
    r.add_argument("--new-codes", action="store_true",
                   help="with --init: the tokens come from a different codec; the audio code tables start afresh")
    args = ap.parse_args()
    torch.set_num_threads(getattr(args, "threads", 2))
    tokenize(args) if args.cmd == "tokenize" else train(args)


if __name__ == "__main__":
    main()
