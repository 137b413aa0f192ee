#!/usr/bin/env python3
"""kokichi-tiny's recipe: every stage of training it from scratch (`make train-tiny`), and of
evaluating the shipped model (`make eval-tiny`), as data.

Each stage is one command (an argv, run without a shell from the repository root), the paths it
reads (inputs) and the paths it writes (outputs). Training is hours on 2 CPU cores, so a cut run
restarts where it stopped:

- A stage is done when its outputs exist and, for the training recipe, the marker this script
  writes when the command exits 0 (WORK/recipe/NAME.done.json) records the same arguments. Done
  stages are skipped, unless an input was rewritten by a stage that ran earlier in this call.
- Inside a stage the scripts resume too: training picks up its checkpoint, and a corpus append,
  a tokenizing or a decoder tune made before by the same call from the same inputs is kept
  (steps.py). So `--force`, which runs every stage's command again, redoes only what changed.

  recipe.py [train] [--list] [--dry-run] [--from STAGE] [--force] [--needs STAGE] [--work W] [--data D ...]
  recipe.py eval [--list] [--dry-run] [--data D]

The stages and which of their outputs a later stage needs: README.md (this folder).
Standard library only: it runs under any Python 3.8+, and runs each stage with --python
(default: the interpreter running it; `make train-tiny` uses the venv's).
"""
import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the repository root: stages run from here
SHIPPED = "assets/kokichi-tiny"  # the model folder kokichi embeds
# moshi's modules use torch.compile unless NO_TORCH_COMPILE is set: the stages run with it off.
NO_COMPILE = {"NO_TORCH_COMPILE": "1"}


@dataclass
class Stage:
    name: str
    argv: list
    inputs: list = field(default_factory=list)  # paths an earlier stage writes (or the repo holds)
    outputs: list = field(default_factory=list)  # paths this stage writes
    env: dict = field(default_factory=dict)  # added to the environment
    always: bool = False  # runs every time (measurements, the copy into assets/)
    keep: bool = False  # done when its outputs exist, and never run over them, even with --force:
    #                     running it again would destroy them (no marker of the recipe's own)
    note: str = ""  # printed before it runs


class Recipe:
    """Builds a list of stages; `py(script, ...)` is `PYTHON training/SCRIPT ...`."""

    def __init__(self, python: str):
        self.python = python
        self.stages = []

    def py(self, script, *args):
        return [self.python, f"training/{script}"] + [str(a) for a in args]

    def add(self, name, argv, inputs=(), outputs=(), env=NO_COMPILE, **kw):
        inputs = list(dict.fromkeys(str(p) for p in inputs))  # once each, in order
        self.stages.append(Stage(name, argv, inputs, [str(p) for p in outputs], dict(env), **kw))


def corpus_marker(data: Path, start=None) -> Path:
    """The marker make_data.py leaves when a call finished: the corpus's first call, or its append from START."""
    return data / ("init.done.json" if start is None else f"train-{start}.done.json")


def train_recipe(python: str, work: Path, d1: Path, d2: Path, d3: Path, d4: Path) -> list:
    r = Recipe(python)
    W = work

    def corpus(name, data, *args, start=None, after=None):
        """make_data.py --out DATA ARGS: the corpus's first call (start None) or an append from START."""
        append = [] if start is None else ["--append", "--start", start]
        inputs = [] if start is None else [corpus_marker(data, after)]
        r.add(name, r.py("make_data.py", "--out", data, *append, *args), inputs, [corpus_marker(data, start)])

    def tokenize(name, data, codec, out, *args, reads):
        """train_lm.py tokenize; `reads`: the corpus markers of the records it reads."""
        r.add(name, r.py("train_lm.py", "tokenize", "--data", data, "--codec", codec, "--out", out, *args),
              [codec] + reads, [out, f"{out}.done.json"])

    def train(name, data, tokens, *args, init=None, teacher=None, reads):
        """train_lm.py train into W/NAME; `reads`: the corpus markers whose transcripts it reads."""
        extra = ([] if init is None else ["--init", init]) + list(args)
        extra += [] if teacher is None else ["--audio-teacher", teacher]
        inputs = list(tokens) + [p for p in (init, teacher) if p is not None] + reads
        r.add(name, r.py("train_lm.py", "train", "--data", data, "--tokens", *tokens, "--work", W / name, *extra),
              inputs, [W / name / "ckpt.pt", W / name / "export"])

    def tune(name, data, codec, *args, reads):
        r.add(name, r.py("tune_decoder.py", "--codec", codec, "--data", data, "--out", W / name, *args),
              [codec] + reads, [W / name / "export", W / name / "done.json"])

    def assemble(name, data, codec, lm, reads):
        r.add(name, r.py("assemble.py", "--codec", codec, "--lm", lm, "--data", data, "--out", W / name),
              [codec, lm] + reads, [W / name], env={})

    # The first codec and LM (lm to lm8), on the first corpus.
    corpus("corpus1", d1)
    c1 = corpus_marker(d1)
    r.add("codec", r.py("train_codec.py", "--data", d1, "--work", W / "codec"), [c1],
          [W / "codec" / "ckpt.pt", W / "codec" / "export"])
    corpus("corpus1+16000", d1, "--train", 32000, "--balance", "--channel", start=16000)
    codec = W / "codec" / "export"
    tokenize("lm-tokens", d1, codec, W / "lm" / "tokens.npz", "--limit", 16000, reads=[c1])
    tokenize("lm-tokens-extra", d1, codec, W / "lm" / "tokens-extra.npz", "--first", 16000, "--splits", "train",
             "--seed", 4, reads=[corpus_marker(d1, 16000)])
    tune("codec-tuned", d1, codec, reads=[c1])
    tune("codec-tuned2", d1, W / "codec-tuned" / "export", "--steps", 3000, reads=[c1])
    tune("codec-tuned3", d1, W / "codec-tuned2" / "export", "--steps", 3000, "--wave", 0, reads=[c1])
    tune("codec-tuned4", d1, W / "codec-tuned3" / "export", "--steps", 3000, "--wave", 0, reads=[c1])
    for n in (5, 6, 7, 8):
        tune(f"codec-tuned{n}", d1, W / f"codec-tuned{n - 1}" / "export", "--steps", 4000, "--wave", 0, reads=[c1])
    lm_tokens = W / "lm" / "tokens.npz"
    train("lm", d1, [lm_tokens], "--steps", 2500, "--ctc-weight", 0, "--audio-rows", 0, "--user-levels", 0,
          reads=[c1])
    train("lm3", d1, [lm_tokens], "--steps", 7000, "--warmup", 100, init=W / "lm" / "ckpt.pt", reads=[c1])
    regular = ["--warmup", 100, "--user-mask", 0.05, "--dropout", 0.1]
    train("lm4", d1, [lm_tokens, W / "lm" / "tokens-extra.npz"], "--steps", 6000, *regular,
          init=W / "lm3" / "ckpt.pt", reads=[c1, corpus_marker(d1, 16000)])
    tuned8 = W / "codec-tuned8" / "export"
    corpus("corpus1+48000", d1, "--train", 24000, "--balance", "--channel", start=48000, after=16000)
    tokenize("lm5-tokens", d1, tuned8, W / "lm5" / "tokens-fresh.npz", "--first", 48000, "--seed", 6,
             reads=[corpus_marker(d1, 48000)])
    train("lm5", d1, [W / "lm5" / "tokens-fresh.npz"], "--steps", 10000, *regular, init=W / "lm4" / "export",
          reads=[corpus_marker(d1, 48000)])
    # lm6 to lm8: each on 24,000 fresh questions and the stage before's; (stage, corpus start, tokenize seed, steps).
    prev_start = 48000
    for n, start, seed, steps in ((6, 72000, 7, 10000), (7, 96000, 8, 8000), (8, 120000, 9, 10000)):
        fresh, before = W / f"lm{n}" / "tokens-fresh.npz", W / f"lm{n - 1}" / "tokens-fresh.npz"
        corpus(f"corpus1+{start}", d1, "--train", 24000, "--balance", "--channel", start=start, after=prev_start)
        tokenize(f"lm{n}-tokens", d1, tuned8, fresh, "--first", start, "--seed", seed,
                 reads=[corpus_marker(d1, start)])
        train(f"lm{n}", d1, [fresh, before], "--steps", steps, *regular, init=W / f"lm{n - 1}" / "export",
              reads=[corpus_marker(d1, start), corpus_marker(d1, prev_start)])
        prev_start = start
    assemble("tiny-lm8", d1, tuned8, W / "lm8" / "export", reads=[c1])

    # The distilled codec (its first codebook distilled from teacher.py's speech model) and lm10
    # to lm16 on its codes, on a second corpus.
    corpus("corpus2", d2, "--train", 0, "--eval", 600)
    corpus("corpus2+0", d2, "--train", 24000, "--balance", "--channel", "--seed", 20261201, start=0)
    r.add("codec-distill", r.py("train_codec.py", "--data", d2, "--work", W / "codec-distill", "--init", W / "tiny-lm8",
                                "--distill", 5, "--wave", 0, "--lr", "3e-4", "--seconds", "2.0", "--steps", 2000,
                                "--bf16", 0),
          [W / "tiny-lm8", corpus_marker(d2, 0)], [W / "codec-distill" / "ckpt.pt", W / "codec-distill" / "export"])
    c2 = corpus_marker(d2)
    tune("codec-distill-tuned", d2, W / "codec-distill" / "export", "--steps", 2500, "--wave", 0, reads=[c2])
    tune("codec-distill-tuned2", d2, W / "codec-distill-tuned" / "export", "--steps", 3000, "--wave", 0, reads=[c2])
    f16 = W / "codec-distill-f16"
    r.add("codec-distill-f16", r.py("assemble.py", "--halve-codec", W / "codec-distill-tuned2" / "export", f16),
          [W / "codec-distill-tuned2" / "export"], [f16], env={})
    tokenize("lm10-tokens", d2, f16, W / "lm10" / "tokens.npz", "--first", 0, "--seed", 11,
             reads=[corpus_marker(d2, 0)])
    train("lm10", d2, [W / "lm10" / "tokens.npz"], "--steps", 4500, *regular, init=W / "tiny-lm8",
          reads=[corpus_marker(d2, 0)])
    corpus("corpus2+24000", d2, "--train", 12000, "--balance", "--channel", "--seed", 20261202, start=24000, after=0)
    tokenize("lm11-tokens", d2, f16, W / "lm11" / "tokens.npz", "--first", 24000, "--seed", 12,
             reads=[corpus_marker(d2, 24000)])
    tokens = [W / "lm11" / "tokens.npz", W / "lm10" / "tokens.npz"]
    reads = [corpus_marker(d2, 0), corpus_marker(d2, 24000)]
    train("lm11", d2, tokens, "--steps", 4500, *regular, init=W / "lm10" / "ckpt.pt", reads=list(reads))
    # lm12 to lm16: 12,000 fresh questions each, trained on every stage's tokens so far, with a
    # second exchange spliced into 40% of the dialogues; (stage, corpus start, data seed,
    # tokenize seed, make_data's extra voices).
    prev_start = 24000
    for n, start, dseed, tseed, wide in ((12, 36000, 20261203, 13, []), (13, 48000, 20261204, 14, []),
                                         (14, 60000, 20261205, 15, []), (15, 72000, 20261206, 16, ["--wide"]),
                                         (16, 84000, 20261207, 17, ["--wide"])):
        corpus(f"corpus2+{start}", d2, "--train", 12000, "--balance", "--channel", "--seed", dseed, *wide,
               start=start, after=prev_start)
        tokenize(f"lm{n}-tokens", d2, f16, W / f"lm{n}" / "tokens.npz", "--first", start, "--seed", tseed,
                 reads=[corpus_marker(d2, start)])
        tokens = [W / f"lm{n}" / "tokens.npz"] + tokens
        reads = reads + [corpus_marker(d2, start)]
        train(f"lm{n}", d2, tokens, "--steps", 4000, *regular, "--multi", 0.4, init=W / f"lm{n - 1}" / "ckpt.pt",
              reads=list(reads))
        prev_start = start
    assemble("tiny-lm16", d2, f16, W / "lm16" / "export", reads=[c2])

    # lm22 to lm24 on a third corpus, each from the stage before with its audio distilled from
    # that stage's assembled model, so that the speech holds.
    gentle = ["--steps", 2400, "--lr", "2e-4", "--warmup", 100, "--user-mask", 0.05, "--dropout", 0.1,
              "--save-every", 800, "--multi", 0.4]
    corpus("corpus3", d3, "--train", 0, "--eval", 600)
    corpus("corpus3+0", d3, "--train", 12000, "--balance", "--channel", "--wide", "--seed", 20261210, start=0)
    tokenize("lm22-tokens", d3, f16, W / "lm22" / "tokens.npz", "--first", 0, "--seed", 19,
             reads=[corpus_marker(d3, 0)])
    tokenize("lm22-tokens-warp", d3, f16, W / "lm22" / "tokens-warp.npz", "--first", 0, "--seed", 19, "--warp", 3,
             reads=[corpus_marker(d3, 0)])
    tokens = [W / "lm22" / "tokens.npz", W / "lm22" / "tokens-warp.npz"]
    reads = [corpus_marker(d3, 0)]
    train("lm22", d3, tokens, *gentle, init=W / "tiny-lm16", teacher=W / "tiny-lm16", reads=list(reads))
    c3 = corpus_marker(d3)
    assemble("tiny-lm22", d3, f16, W / "lm22" / "export", reads=[c3])
    prev_start = 0
    for n, start, dseed in ((23, 12000, 20261211), (24, 24000, 20261212)):
        corpus(f"corpus3+{start}", d3, "--train", 12000, "--balance", "--channel", "--wide", "--seed", dseed,
               start=start, after=prev_start)
        tokenize(f"lm{n}-tokens", d3, f16, W / f"lm{n}" / "tokens.npz", "--first", start, "--seed", n,
                 "--splits", "train", reads=[corpus_marker(d3, start)])
        tokens = tokens + [W / f"lm{n}" / "tokens.npz"]
        reads = reads + [corpus_marker(d3, start)]
        train(f"lm{n}", d3, tokens, *gentle, init=W / f"lm{n - 1}" / "ckpt.pt", teacher=W / f"tiny-lm{n - 1}",
              reads=list(reads))
        assemble(f"tiny-lm{n}", d3, f16, W / f"lm{n}" / "export", reads=[c3])
        prev_start = start
    # The shipped decoder: four more mel-only tunes of the distilled codec's decoder on the
    # answer clips (the encoder and quantizer, so every LM token, unchanged).
    prev = f16
    for n in (3, 4, 5, 6):
        tune(f"codec-distill-tuned{n}", d3, prev, "--steps", 3000, "--wave", 0, "--threads", 2, reads=[c3])
        prev = W / f"codec-distill-tuned{n}" / "export"
    decoder = prev

    # lm27, lm29 and lm30 on a fourth corpus, every answer's model-stream codes replaced by those
    # the stage before says itself (canon_codes.py); what ships is the mean of lm29 and lm30.
    corpus("corpus4", d4, "--train", 0, "--eval", 600)
    c4 = corpus_marker(d4)
    tokenize("lm27-probe", d4, f16, W / "lm27" / "probe.npz", "--seed", 19, "--splits", "eval", reads=[c4])
    prev_start = None
    for start, dseed, seed in ((0, 20261213, 25), (12000, 20261214, 26), (24000, 20261215, 27)):
        corpus(f"corpus4+{start}", d4, "--train", 12000, "--balance", "--channel", "--wide", "--seed", dseed,
               start=start, after=prev_start)
        tokenize(f"lm27-tokens-{seed}", d4, f16, W / "lm27" / f"tokens-{seed}.npz", "--first", start,
                 "--seed", seed, "--splits", "train", reads=[corpus_marker(d4, start)])
        prev_start = start

    def extract(name, model, out):
        r.add(name, r.py("canon_codes.py", "extract", "--model", W / model, "--tokens", W / "lm27" / "tokens-25.npz",
                         "--data", d4, "--out", out),
              [W / model, W / "lm27" / "tokens-25.npz", corpus_marker(d4, 0)], [out])

    def canon_stage(stage, start, suffix, parts):
        """Rewrite each token file W/PART.npz to W/STAGE/answer-codes.npz (as W/PART-SUFFIX.npz), train
        STAGE from W/START with W/START's audio as teacher, assemble W/tiny-STAGE with the tuned decoder."""
        codes, rewritten = W / stage / "answer-codes.npz", []
        for part in parts:
            src, out = W / f"{part}.npz", W / f"{part}-{suffix}.npz"
            r.add(f"{stage}-rewrite-{part.replace('/', '-')}",
                  r.py("canon_codes.py", "rewrite", "--codes", codes, "--data", d4, "--tokens", src, "--out", out),
                  [codes, src, c4], [out])
            rewritten.append(out)
        train(stage, d4, rewritten, *gentle, init=W / start, teacher=W / start, reads=[c4])
        assemble(f"tiny-{stage}", d4, decoder, W / stage / "export", reads=[c4])

    extract("lm27-codes", "tiny-lm24", W / "lm27" / "answer-codes.npz")
    canon_stage("lm27", "tiny-lm24", "canon", ["lm27/probe", "lm27/tokens-25", "lm27/tokens-26", "lm27/tokens-27"])
    corpus("corpus4+36000", d4, "--train", 12000, "--balance", "--channel", "--wide", "--seed", 20261216,
           start=36000, after=24000)
    tokenize("lm29-tokens-28", d4, f16, W / "lm29" / "tokens-28.npz", "--first", 36000, "--seed", 28,
             "--splits", "train", reads=[corpus_marker(d4, 36000)])
    # Louder or quieter questions over a louder noise floor.
    tokenize("lm29-tokens-32", d4, f16, W / "lm29" / "tokens-32.npz", "--first", 0, "--limit", 12000, "--seed", 32,
             "--level", -30, "--noise", -40, "--splits", "train", reads=[corpus_marker(d4, 0)])
    extract("lm29-codes", "tiny-lm27", W / "lm29" / "answer-codes.npz")
    canon_stage("lm29", "tiny-lm27", "lm29",
                ["lm27/probe", "lm29/tokens-32", "lm27/tokens-26", "lm27/tokens-27", "lm29/tokens-28"])
    # The same over white, pink or brown noise, half the questions resynthesized by a vocoder
    # with the voice moved.
    tokenize("lm30-tokens-33", d4, f16, W / "lm30" / "tokens-33.npz", "--first", 12000, "--limit", 12000,
             "--seed", 33, "--vocode", 0.5, "--level", -30, "--noise", -40, "--colour", "--splits", "train",
             reads=[corpus_marker(d4, 12000)])
    r.add("lm30-codes", ["cp", str(W / "lm29" / "answer-codes.npz"), str(W / "lm30" / "answer-codes.npz")],
          [W / "lm29" / "answer-codes.npz", W / "lm30" / "tokens-33.npz"], [W / "lm30" / "answer-codes.npz"], env={})
    canon_stage("lm30", "tiny-lm29", "lm30",
                ["lm27/probe", "lm29/tokens-32", "lm30/tokens-33", "lm27/tokens-27", "lm29/tokens-28"])
    r.add("soup30", r.py("soup.py", "--out", W / "soup30" / "export", W / "lm29" / "export", W / "lm30" / "export"),
          [W / "lm29" / "export", W / "lm30" / "export"], [W / "soup30" / "export"], env={})
    assemble("tiny-soup30", d4, decoder, W / "soup30" / "export", reads=[c4])
    files = ["config.json", "mimi.safetensors", "model.safetensors", "tokenizer.model"]  # what assemble.py writes
    r.add("ship", ["cp"] + [str(W / "tiny-soup30" / f) for f in files] + [SHIPPED + "/"], [W / "tiny-soup30"],
          [f"{SHIPPED}/{f}" for f in files], env={}, always=True)
    return r.stages


def eval_recipe(python: str, data: Path) -> list:
    """`make eval-tiny`: the shipped model's codec and end-to-end figures on the held-out questions."""
    r = Recipe(python)
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    binary = target / "debug" / "examples" / "answer_many"
    r.add("build", ["cargo", "build", "--example", "answer_many"], [], [binary], env={}, always=True)
    # The held-out questions and the answer clips come from make_data.py: on a machine without the
    # training corpus, `--train 0` makes just them (about a minute, the same questions bit for bit
    # as a full corpus's). Never over a corpus that has them: it would drop its training questions.
    r.add("eval-corpus", r.py("make_data.py", "--out", data, "--train", 0), [],
          [data / "eval.jsonl", data / "answers.json"], keep=True)
    inputs = [SHIPPED, data / "eval.jsonl", data / "answers.json"]
    r.add("eval-codec", r.py("eval_codec.py", "--codec", SHIPPED, "--data", data), inputs, always=True)
    lm = r.py("eval_lm.py", "--model", SHIPPED, "--bin", binary, "--data", data)
    r.add("eval-lm", lm + ["--n", "200", "--silences", "60", "--pairs", "60"], inputs + [binary], env={}, always=True)
    white = ["--n", "100", "--silences", "30", "--noise", "-50", "--out", "out/eval-tiny-white50"]
    r.add("eval-lm-white50", lm + white, inputs + [binary], env={}, always=True,
          note="== the same voices in a noisy room (-50 dBFS RMS of white, then pink noise, in the silent windows "
               "too) and quiet (peaks at -26 dBFS)")
    r.add("eval-lm-pink50", lm + ["--n", "100", "--silences", "30", "--noise", "-50", "--colour", "1",
                                  "--out", "out/eval-tiny-pink50"], inputs + [binary], env={}, always=True)
    r.add("eval-lm-quiet", lm + ["--n", "100", "--silences", "0", "--peak", "-26", "--out", "out/eval-tiny-quiet"],
          inputs + [binary], env={}, always=True)
    return r.stages


def marker(work: Path, stage: Stage) -> Path:
    return work / "recipe" / f"{stage.name}.done.json"


def resolve(p) -> Path:
    p = Path(p)
    return p if p.is_absolute() else ROOT / p


def done(stage: Stage, work: Path) -> bool:
    """Whether a stage's outputs are there and (unless `keep`) its last run finished with these arguments."""
    if stage.always or not stage.outputs or not all(resolve(p).exists() for p in stage.outputs):
        return False
    if stage.keep:
        return True
    try:
        return json.loads(marker(work, stage).read_text())["args"] == stage.argv[1:]
    except (OSError, ValueError, KeyError):
        return False


def show(stage: Stage) -> str:
    env = "".join(f"{k}={v} " for k, v in stage.env.items())
    return env + shlex.join(stage.argv)


def needs(stages, start: str) -> list:
    """What resuming at START needs: the paths that START and the stages after it read and that
    earlier stages write, in the order the stages read them."""
    names = [s.name for s in stages]
    if start not in names:
        sys.exit(f"no stage {start!r} (--list lists them)")
    first = names.index(start)
    made_before = {p for s in stages[:first] for p in s.outputs}
    out = []
    for i, s in enumerate(stages[first:], first):
        made_since = {p for t in stages[first:i] for p in t.outputs}
        for p in s.inputs:
            if p in made_before and p not in made_since and p not in out:
                out.append(p)
    return out


def run(stages, work: Path, start=None, force=False, dry_run=False, what="the recipe"):
    names = [s.name for s in stages]
    first = 0
    if start is not None:
        if start not in names:
            sys.exit(f"no stage {start!r} (--list lists them)")
        first = names.index(start)
    rewritten = set()  # outputs rewritten in this call: their readers run again
    t0 = time.time()
    for stage in stages[first:]:
        stale = any(p in rewritten for p in stage.inputs)
        if stage.keep and done(stage, work) or not force and start != stage.name and not stale and done(stage, work):
            print(f"== {stage.name}: done, skipped", file=sys.stderr)
            continue
        if stage.note:
            print(stage.note, file=sys.stderr)
        print(f"== {stage.name}: {show(stage)}", file=sys.stderr, flush=True)
        if dry_run:
            rewritten.update(stage.outputs)
            continue
        mark = marker(work, stage)
        sealed = not (stage.always or stage.keep)
        if sealed:
            mark.unlink(missing_ok=True)  # a cut run is not taken for done
        rc = subprocess.run(stage.argv, cwd=ROOT, env={**os.environ, **stage.env}).returncode
        if rc != 0:
            sys.exit(f"stage {stage.name} failed (exit status {rc}); run again to resume from it")
        if sealed:
            mark.parent.mkdir(parents=True, exist_ok=True)
            tmp = mark.with_name(mark.name + ".tmp")
            tmp.write_text(json.dumps({"args": stage.argv[1:]}, indent=1) + "\n")
            os.replace(tmp, mark)
        rewritten.update(stage.outputs)
    if not dry_run:
        print(f"{what} took {(time.time() - t0) / 60:.0f} minutes", file=sys.stderr)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipe", nargs="?", choices=["train", "eval"], default="train")
    ap.add_argument("--list", action="store_true", help="list the stages (done or not) and exit")
    ap.add_argument("--dry-run", action="store_true", help="print the commands that would run; run nothing")
    ap.add_argument("--from", dest="start", metavar="STAGE",
                    help="start at STAGE (it runs even if done); the stages before it are not run")
    ap.add_argument("--force", action="store_true", help="run every stage's command, done or not")
    ap.add_argument("--needs", metavar="STAGE",
                    help="list what earlier stages wrote that STAGE and the stages after it read (what resuming "
                         "there needs), and whether each is there")
    ap.add_argument("--python", default=sys.executable, help="the interpreter the stages run in")
    ap.add_argument("--work", type=Path, default=Path("/var/tmp/kokichi-train"), help="checkpoints and exports")
    ap.add_argument("--data", type=Path, default=Path("/var/tmp/kokichi-data"), help="the first corpus (and eval's)")
    ap.add_argument("--data2", type=Path, default=Path("/var/tmp/kokichi-data2"), help="the second corpus (lm10-lm16)")
    ap.add_argument("--data3", type=Path, default=Path("/var/tmp/kokichi-data3"), help="the third corpus (lm22-lm24)")
    ap.add_argument("--data4", type=Path, default=Path("/var/tmp/kokichi-data4"), help="the fourth corpus (lm27-lm30)")
    args = ap.parse_args(argv)
    if args.recipe == "train":
        stages = train_recipe(args.python, args.work, args.data, args.data2, args.data3, args.data4)
    else:
        stages = eval_recipe(args.python, args.data)
    if args.needs:
        for p in needs(stages, args.needs):
            print(f"{'there  ' if resolve(p).exists() else 'missing'} {p}")
        return
    if args.list:
        for i, s in enumerate(stages, 1):
            state = "always" if s.always else ("done" if done(s, args.work) else "to run")
            print(f"{i:3} {s.name:28} {state:7} -> {', '.join(s.outputs)}")
        return
    run(stages, args.work, args.start, args.force, args.dry_run, f"{args.recipe}-tiny")


if __name__ == "__main__":
    main()
