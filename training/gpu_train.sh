#!/usr/bin/env bash
# kokichi-tiny's LM trained on a lent GPU (the device tool's machine), from token files made here.
#
# The GPU machine reaches no network and has no speech synthesizers, but its Python has torch,
# numpy, safetensors and sentencepiece: of what training/train_lm.py imports it lacks only the
# `moshi` package. So the corpus is synthesized and tokenized here, and the tokens travel,
# xz-compressed (about 0.6 KB a sequence), with the moshi wheel and the few data files the trainer
# reads (compressed, and of the answer clips only their headers: about 1 MB for 60,000 questions). The tree that travels is limited to 64 MiB: run `scripts/gpu_check.sh lighten training/stages
# tests assets/kokichi-tiny/mimi.safetensors` first (about 26 MB stay), which leaves room for about
# 60,000 sequences.
#
#   here:  training/gpu_train.sh pack DIR DATA TOKENS.npz...
#          DIR: a folder inside the checkout that .git/info/exclude ignores (name it in `carry`);
#          DATA: the corpus folder the tokens came from (train.jsonl, eval.jsonl, answers.json, the
#          answer clips, tokenizer.model). The first token file must hold the eval split.
#   there: training/gpu_train.sh run DIR MINUTES [train_lm.py train options...]
#          trains on cuda for about MINUTES (train_lm.py --minutes), then leaves the exported LM
#          (and with --keep-best the best evaluated one) in $OUT as float16, in 15 MB parts (the
#          device tool brings back files of at most 16 MiB), with the log.
#   here:  training/gpu_train.sh fetch FILES_AT WORK
#          joins the parts into WORK/export (model.safetensors, lm_config.json), the layout
#          assemble.py --lm reads, and WORK/best the same way where the run kept one
#          (--keep-best); the log goes to WORK/gpu.log.
#
# SMOKE=0 skips the two-step trial run that goes first.
# PY (default python3) picks the interpreter; DEVICE (default cuda) the torch device, so that
# `DEVICE=cpu PY=/var/tmp/kokichi-venv/bin/python training/gpu_train.sh run ...` tries the
# whole path here first.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}

pack() {
    local dir=$1 data=$2
    shift 2
    [ $# -gt 0 ] || { echo "pack: name at least one token file" >&2; exit 2; }
    mkdir -p "$dir/data" "$dir/tokens" "$dir/whl"
    local i=0 t
    for t in "$@"; do
        xz -9 -T2 -c "$t" >"$dir/tokens/$(printf %02d $i)-$(basename "$t").xz"
        i=$((i + 1))
    done
    xz -9 -T2 -c "$data/train.jsonl" >"$dir/data/train.jsonl.xz"
    cp "$data/eval.jsonl" "$data/answers.json" "$data/tokenizer.model" "$dir/data/"
    # The trainer reads only the answer clips' lengths (their WAV headers): the headers travel,
    # through the data chunk's size, not the samples (15 KB instead of 9 MB).
    mkdir -p "$dir/data/answers"
    "$PY" - "$data/answers" "$dir/data/answers" <<'PY'
import sys
from pathlib import Path
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
for f in sorted(src.glob("*.wav")):
    b = f.read_bytes()
    at = b.find(b"data", 12)
    if at < 0:
        sys.exit(f"{f}: no data chunk")
    (dst / f.name).write_bytes(b[:at + 8])
PY
    local version
    version=$("$PY" -c 'import importlib.metadata as m; print(m.version("moshi"))')
    "$PY" -m pip download -q --no-deps --only-binary=:all: -d "$dir/whl" "moshi==$version"
    du -sh "$dir"
}

run() {
    local dir=$1 minutes=$2
    shift 2
    local out=${OUT:-/tmp/kokichi-gpu-out} work=/tmp/kokichi-gpu-work site=/tmp/kokichi-site
    # A machine kept warm between calls still holds the last call's run: a checkpoint there
    # would make this call resume it rather than start as told.
    rm -rf "$work"
    mkdir -p "$out" "$work/tokens" "$work/data"
    cp -r "$dir"/data/* "$work/data/"
    xz -dc "$dir/data/train.jsonl.xz" >"$work/data/train.jsonl" 2>/dev/null ||
        "$PY" -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
            "$dir/data/train.jsonl.xz" "$work/data/train.jsonl"
    if ! "$PY" -c 'import moshi' 2>/dev/null; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$site" "$dir"/whl/*.whl
        export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
    fi
    local f tokens=()
    for f in "$dir"/tokens/*.xz; do
        local name
        name=$(basename "$f" .xz)
        xz -dc "$f" >"$work/tokens/$name" 2>/dev/null ||
            "$PY" -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$f" "$work/tokens/$name"
        tokens+=("$work/tokens/$name")
    done
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
    # A lent machine's minutes are few: two steps, an evaluation and an export on the first token
    # file go first, so that a failure on this device shows in seconds, not after the whole run.
    if [ "${SMOKE:-1}" = 1 ]; then
        NO_TORCH_COMPILE=1 PYTHONUNBUFFERED=1 "$PY" training/train_lm.py train --device "${DEVICE:-cuda}" --threads 8 \
            --data "$work/data" --work "$work/smoke" "$@" --tokens "${tokens[0]}" --steps 2 --save-every 2 --minutes 0 \
            2>&1 | tee "$out/smoke.log"
        [ "${PIPESTATUS[0]}" = 0 ] || { echo "smoke run failed" >&2; return 1; }
    fi
    set +e
    NO_TORCH_COMPILE=1 PYTHONUNBUFFERED=1 "$PY" training/train_lm.py train --device "${DEVICE:-cuda}" --threads 8 \
        --data "$work/data" --tokens "${tokens[@]}" --work "$work/run" --minutes "$minutes" "$@" 2>&1 | tee "$out/gpu.log"
    local rc=${PIPESTATUS[0]}
    set -e
    # Exports come back as float16 (what assemble.py ships anyway): the last one and, with
    # --keep-best, the best evaluated one, each in 15 MB parts.
    local name
    for name in export best; do
        [ -f "$work/run/$name/model.safetensors" ] || continue
        "$PY" -c 'import sys; from pathlib import Path; sys.path.insert(0, "training"); from assemble import halve
halve(Path(sys.argv[1]), Path(sys.argv[2]))' "$work/run/$name/model.safetensors" "$work/$name.f16.safetensors"
        split -b 15M -d "$work/$name.f16.safetensors" "$out/$name.safetensors.part"
        cp "$work/run/$name/lm_config.json" "$out/$name.lm_config.json"
        [ -f "$work/run/$name/step" ] && cp "$work/run/$name/step" "$out/$name.step"
    done
    ls -l "$out"
    return "$rc"
}

fetch() {
    local from=$1 work=$2 name
    for name in export best; do
        [ -f "$from/$name.lm_config.json" ] || continue
        mkdir -p "$work/$name"
        cat "$from/$name".safetensors.part* >"$work/$name/model.safetensors"
        cp "$from/$name.lm_config.json" "$work/$name/lm_config.json"
        [ -f "$from/$name.step" ] && cp "$from/$name.step" "$work/$name/step"
        ls -l "$work/$name"
    done
    [ -f "$from/gpu.log" ] && cp "$from/gpu.log" "$work/gpu.log"
    [ -d "$work/export" ] || { echo "fetch: $from holds no export" >&2; exit 1; }
}

case "${1:-}" in
pack) pack "${2:?pack DIR DATA TOKENS...}" "${3:?pack DIR DATA TOKENS...}" "${@:4}" ;;
run) run "${2:?run DIR MINUTES [options]}" "${3:?run DIR MINUTES [options]}" "${@:4}" ;;
fetch) fetch "${2:?fetch FILES_AT WORK}" "${3:?fetch FILES_AT WORK}" ;;
*)
    echo "usage: $0 pack DIR DATA TOKENS.npz... | run DIR MINUTES [train options] | fetch FILES_AT WORK" >&2
    exit 2
    ;;
esac
