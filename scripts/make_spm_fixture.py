#!/usr/bin/env python3
"""Trains a tiny real SentencePiece model and records how the reference library decodes it.

Writes `tests/fixtures/spm/`:
  tiny.model  a unigram model with byte fallback and the identity normalizer (keeps it small)
  tiny.json   {"pieces": [[piece, kind], ...], "cases": [{"ids": [...], "text": "..."}, ...]}
              where kind is one of normal/unknown/control/user_defined/unused/byte, and the text
              is what `decode_ids` returns. `tests/tokenizer.rs` checks our decoder against it.

Run: /var/tmp/kokichi-venv/bin/python scripts/make_spm_fixture.py
"""
import io
import json
from pathlib import Path

import sentencepiece as spm

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "spm"

TEXT = """\
hello world, the quick brown fox jumps over the lazy dog.
speech to speech models listen and answer at the same time.
the codec turns sound into tokens and tokens back into sound.
a small model for tests, trained on a few short lines of text.
hello again, world! the dog sleeps while the fox runs away.
"""

SENTENCES = [
    "hello world",
    "the quick brown fox",
    "tokens into sound, and back.",
    "café über naïve",  # accented letters are not in the vocabulary: byte fallback
    "日本語 ok",
    "  two  spaces ",
    "<ctl> and <user> pieces",
]


def kind(sp, i):
    if sp.is_control(i):
        return "control"
    if sp.is_unknown(i):
        return "unknown"
    if sp.is_unused(i):
        return "unused"
    if sp.is_byte(i):
        return "byte"
    return "user_defined" if sp.id_to_piece(i) == "<user>" else "normal"


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(TEXT.splitlines()),
        model_writer=model,
        model_type="unigram",
        vocab_size=330,
        hard_vocab_limit=False,
        byte_fallback=True,
        normalization_rule_name="identity",
        character_coverage=1.0,
        pad_id=3,
        control_symbols=["<ctl>"],
        user_defined_symbols=["<user>"],
        minloglevel=2,
    )
    data = model.getvalue()
    (OUT / "tiny.model").write_bytes(data)
    sp = spm.SentencePieceProcessor(model_proto=data)

    pieces = [[sp.id_to_piece(i), kind(sp, i)] for i in range(sp.get_piece_size())]
    ids = [sp.encode(s) for s in SENTENCES]
    # Control pieces around and inside, and a lone leading byte of a multi-byte character.
    ids.append([sp.bos_id()] + ids[0] + [sp.eos_id(), sp.pad_id()] + ids[1] + [sp.eos_id()])
    ids.append([sp.piece_to_id("<0xC3>")] + ids[0])
    ids.append([sp.piece_to_id("<0x41>"), sp.piece_to_id("▁")] + ids[2])
    cases = [{"ids": x, "text": sp.decode_ids(x)} for x in ids]
    with open(OUT / "tiny.json", "w", encoding="utf-8") as f:
        json.dump({"pieces": pieces, "cases": cases}, f, ensure_ascii=False, indent=0)
        f.write("\n")
    print(f"{len(pieces)} pieces, model {len(data)} bytes, {len(cases)} cases -> {OUT}")


if __name__ == "__main__":
    main()
