#!/usr/bin/env python3
"""`make bench-codec`: streaming Mimi encode + decode of the same 10 s input, full-size random
Mimi built with the reference package, timed in one run through kokichi (cpu and wgpu) and
rustymimi (Kyutai's candle Mimi), one thread each. Prints ms per 80 ms frame, the ratio to
rustymimi, and whether the codes agree.
"""
import argparse
import json
import os
import subprocess
import sys
import time
import wave
from pathlib import Path

os.environ.setdefault("NO_TORCH_COMPILE", "1")
for var in ("RAYON_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"
import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import save_file, load_file  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gen_mimi_fixtures import checkpoint_state, set_codebooks, test_audio  # noqa: E402

torch.set_num_threads(1)
WORK = Path(os.environ.get("KOKICHI_BENCH_DIR", "/var/tmp/kokichi-bench"))


def build_weights() -> Path:
    path = WORK / "mimi_full_random.safetensors"
    if path.exists():
        return path
    from moshi.models.loaders import get_mimi
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    mimi = get_mimi(None, num_codebooks=8)
    mimi.eval()
    set_codebooks(mimi, test_audio(1, 1920 * 40, gen), gen)
    WORK.mkdir(parents=True, exist_ok=True)
    save_file(checkpoint_state(mimi), str(path))
    return path


def build_input(seconds: float = 10.0) -> Path:
    path = WORK / "input_10s.wav"
    gen = torch.Generator().manual_seed(2)
    n = int(24000 * seconds) // 1920 * 1920
    x = test_audio(1, n, gen)[0, 0].numpy()
    pcm = (np.clip(x, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(24000)
        w.writeframes(pcm.tobytes())
    return path


def read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path)) as w:
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768.0


def bench_rustymimi(weights: Path, pcm: np.ndarray, warmup: int = 2):
    import rustymimi
    tok = rustymimi.Tokenizer(str(weights))
    frames = len(pcm) // 1920
    enc, dec, codes = [], [], []
    for i in range(frames):
        chunk = pcm[i * 1920:(i + 1) * 1920].reshape(1, 1, -1)
        t0 = time.perf_counter()
        c = tok.encode_step(chunk)
        enc.append(time.perf_counter() - t0)
        codes.append(np.asarray(c))
    for c in codes:
        t0 = time.perf_counter()
        tok.decode_step(c)
        dec.append(time.perf_counter() - t0)
    codes = np.concatenate(codes, -1)[:, :8]
    return 1000 * np.mean(enc[warmup:]), 1000 * np.mean(dec[warmup:]), codes


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True, help="the bench_codec example binary")
    ap.add_argument("--backends", default="cpu,wgpu")
    args = ap.parse_args()
    weights = build_weights()
    wav = build_input()
    pcm = read_wav(wav)
    r_enc, r_dec, r_codes = bench_rustymimi(weights, pcm)
    rows = [("rustymimi (candle)", r_enc, r_dec, "-", "reference")]
    for backend in args.backends.split(","):
        out = WORK / f"codes_{backend}.safetensors"
        res = subprocess.run([args.bin, "--mimi", str(weights), "--input", str(wav), "--backend", backend,
                              "--codes-out", str(out)], capture_output=True, text=True)
        if res.returncode != 0:
            print(f"kokichi {backend} failed:\n{res.stderr[-2000:]}", file=sys.stderr)
            continue
        info = json.loads(res.stdout.strip().splitlines()[-1])
        codes = load_file(str(out))["codes"][0].numpy()
        agree = float((codes == r_codes[0]).mean())
        rows.append((f"kokichi {backend} ({info['adapter']})", info["encode_ms"], info["decode_ms"],
                     f"{agree:.4f}", f"first frame {info['first_encode_ms']:.0f}/{info['first_decode_ms']:.0f} ms"))
    frames = len(pcm) // 1920
    print(f"\nStreaming Mimi, full size, random weights, {frames} frames of 80 ms, 1 thread each")
    print(f"{'implementation':<44} {'enc ms':>8} {'dec ms':>8} {'enc x':>7} {'dec x':>7}  codes==rustymimi")
    for name, e, d, agree, note in rows:
        print(f"{name:<44} {e:8.2f} {d:8.2f} {e / r_enc:7.2f} {d / r_dec:7.2f}  {agree}  {note}")


if __name__ == "__main__":
    main()
