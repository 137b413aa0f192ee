#!/usr/bin/env python3
"""End-to-end fixture: a tiny Mimi + Moshi-layout LM model folder answering a spoken wav,
run by the reference `moshi` package exactly as `kokichi run --greedy` runs it.

Writes tests/fixtures/tiny_model/ (config.json, mimi.safetensors, model.safetensors,
tokenizer.model) from the mimi_a and lm_real fixtures, tests/fixtures/speech/question.wav
(espeak-ng, resampled to 24 kHz with sox), and tests/fixtures/e2e_expected.safetensors:
  input [T] (the wav's samples), tokens [1, 1 + dep_q, S] (as --dump-tokens), output [T'].

Run after gen_mimi_fixtures.py and gen_lm_fixtures.py:
  NO_TORCH_COMPILE=1 venv/bin/python scripts/gen_e2e_fixture.py
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import wave
from pathlib import Path

os.environ.setdefault("NO_TORCH_COMPILE", "1")
import numpy as np  # noqa: E402
import sentencepiece as spm  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from moshi.models.loaders import get_mimi, get_moshi_lm  # noqa: E402
from moshi.models.lm import LMGen  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gen_mimi_fixtures import MIN_MARGIN, quantizer_margin  # noqa: E402
from gen_lm_fixtures import MIN_LOGIT_GAP, greedy_margin, greedy_margin_reset  # noqa: E402

torch.set_num_threads(1)
FIX = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
TEXT = "hello there. what is three plus four?"


def make_tokenizer(path: Path, vocab: int) -> None:
    """A real SentencePiece model of `vocab` pieces (the tiny LM's text_card)."""
    words = ("zero one two three four five six seven eight nine ten eleven twelve thirteen "
             "fourteen fifteen sixteen seventeen eighteen nineteen twenty hello there what is "
             "plus minus good morning evening night say banana apple orange comes after before "
             "thanks you welcome please the a of and to in that it with as for was on are by "
             "this be from at or have an they which one you were her all she there would their "
             "we him been has when who will more no if out so said what up its about into than "
             "them can only other new some could time these two may then do first any my now "
             "such like our over man me even most made after also did many before must through "
             "back years where much your way well down should because each just those people").split()
    lines = [" ".join(words[(i * 7 + j * 3) % len(words)] for j in range(8)) for i in range(400)]
    corpus = " ".join(lines)
    with tempfile.TemporaryDirectory() as d:
        txt = Path(d) / "corpus.txt"
        txt.write_text("\n".join(lines))
        spm.SentencePieceTrainer.train(
            input=str(txt), model_prefix=str(Path(d) / "m"), vocab_size=vocab,
            model_type="unigram", character_coverage=1.0, pad_id=3, unk_id=0, bos_id=1, eos_id=2,
            minloglevel=2)
        shutil.copy(Path(d) / "m.model", path)


def speech(path: Path, speed: int = 150) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as d:
        raw = Path(d) / "raw.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", str(speed), "-w", str(raw), TEXT], check=True)
        subprocess.run(["sox", str(raw), "-r", "24000", "-c", "1", "-b", "16", str(path)], check=True)
    with wave.open(str(path)) as w:
        assert w.getframerate() == 24000 and w.getsampwidth() == 2
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    return data.astype(np.float32) / 32768.0


def main() -> None:
    model = FIX / "tiny_model"
    model.mkdir(parents=True, exist_ok=True)
    mimi_cfg = json.loads((FIX / "mimi_a" / "config.json").read_text())["mimi"]
    lm_cfg = json.loads((FIX / "lm_real" / "config.json").read_text())["lm"]
    shutil.copy(FIX / "mimi_a" / "mimi.safetensors", model / "mimi.safetensors")
    shutil.copy(FIX / "lm_real" / "model.safetensors", model / "model.safetensors")
    make_tokenizer(model / "tokenizer.model", lm_cfg["text_card"])
    (model / "config.json").write_text(json.dumps(
        {"mimi": mimi_cfg, "lm": lm_cfg, "mimi_codebooks": lm_cfg["dep_q"]}, indent=1) + "\n")

    mimi = get_mimi(str(model / "mimi.safetensors"), mimi_cfg, num_codebooks=lm_cfg["dep_q"])
    lm = get_moshi_lm(str(model / "model.safetensors"), lm_kwargs=dict(lm_cfg), dtype=torch.float32)
    # The speaking rate is the free parameter: pick one without numerically ambiguous decisions.
    for speed in range(150, 200, 2):
        pcm = speech(FIX / "speech" / "question.wav", speed)
        if run(mimi, lm, pcm, speed):
            return
    raise SystemExit("no speaking rate without near-ties")


def run(mimi, lm, pcm, speed) -> bool:
    gen = LMGen(lm, use_sampling=False)
    frame = mimi.frame_size
    n = -(-len(pcm) // frame)
    x = torch.zeros(1, 1, n * frame)
    x[0, 0, :len(pcm)] = torch.from_numpy(pcm)
    tokens, out, latents = [], [], []
    greedy_margin_reset()
    with torch.no_grad(), mimi.streaming(1), gen.streaming(1):
        for i in range(n):
            emb = mimi._encode_to_unquantized_latent(x[:, :, i * frame:(i + 1) * frame])
            latents.append(emb)
            codes = mimi.quantizer.encode(emb)
            t = gen.step(codes)
            if t is None:
                out.append(torch.zeros(1, 1, frame))
                continue
            tokens.append(t[:, :, 0])
            out.append(mimi.decode(t[:, 1:]))
    tokens = torch.stack(tokens, -1)
    out = torch.cat(out, -1)[0, 0]
    q_margin = quantizer_margin(mimi, torch.cat(latents, -1))
    if q_margin <= MIN_MARGIN or greedy_margin() <= MIN_LOGIT_GAP:
        print(f"speed {speed}: near-tie (quantizer {q_margin:.1e}, logits {greedy_margin():.1e})", file=sys.stderr)
        return False
    save_file({"input": torch.from_numpy(pcm).contiguous(), "tokens": tokens.contiguous(),
               "output": out.contiguous()}, str(FIX / "e2e_expected.safetensors"))
    print(f"e2e: {n} frames, tokens {tuple(tokens.shape)}, quantizer margin {q_margin:.1e}, "
          f"logit gap {greedy_margin():.1e}, speed {speed}", file=sys.stderr)
    return True


if __name__ == "__main__":
    main()
