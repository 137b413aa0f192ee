#!/usr/bin/env python3
"""Train a gist (K prefix latents) remotely through a running kokichi daemon's POST /api/grad.

The daemon holds the weights and does the backward pass; this script only holds the K vectors
and runs Adam on them with numpy. The objective is the teacher-forced cross-entropy of the
continuations of dialogues written by `kokichi gist train --dump-dialogues FILE` (the frames
after the prompt), so a gist trained here should make a fresh session continue as after the
prompt. Only numpy and the standard library.

    kokichi gist train --prompt prompt.wav --k 8 --out cli.safetensors --dump-dialogues d.safetensors
    kokichi serve --no-audio &   # or any running daemon; pass --token if it has one
    python3 examples/gist_remote.py --dialogues d.safetensors --init cli.safetensors --out remote.safetensors

It prints the held-out cross-entropy after [nothing-like zeros], [the initial gist] and
[the trained gist]; with --compare GIST it also scores another gist file (e.g. the CLI's).
"""
import argparse
import json
import struct
import time
import urllib.error
import urllib.request

import numpy as np

DTYPES = {"F32": np.float32, "I64": np.int64, "F16": np.float16}


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + n])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        out[name] = np.frombuffer(data[8 + n + a : 8 + n + b], dtype=DTYPES[info["dtype"]]).reshape(info["shape"])
    return out, header.get("__metadata__", {})


def write_gist(path, gist, meta):
    raw = gist.astype("<f4").tobytes()
    header = {"gist": {"dtype": "F32", "shape": list(gist.shape), "data_offsets": [0, len(raw)]}}
    header["__metadata__"] = {k: str(v) for k, v in meta.items()}
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + raw)


def grad(url, token, latents, codes):
    body = json.dumps({"latents": latents.tolist(), "codes": codes.tolist(), "target": "tokens"}).encode()
    req = urllib.request.Request(url + "/api/grad", data=body, headers={"Content-Type": "application/json"})
    if token:
        req.add_header("Authorization", "Bearer " + token)
    while True:
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                j = json.loads(r.read())
            return j["loss"], np.asarray(j["grad"], dtype=np.float32)
        except urllib.error.HTTPError as e:
            if e.code == 503:  # busy: one gradient at a time
                time.sleep(float(e.headers.get("Retry-After", "1")))
                continue
            raise SystemExit(f"/api/grad: {e.code} {e.read().decode()}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default="http://127.0.0.1:8998")
    p.add_argument("--token", default=None)
    p.add_argument("--dialogues", required=True)
    p.add_argument("--init", required=True, help="a gist file to start from (its K and width)")
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--compare", default=None, help="another gist file to score on the held-out set")
    a = p.parse_args()

    t, _ = read_safetensors(a.dialogues)
    d, held, tp = t["dialogues"], [int(r) for r in t["held_out"]], int(t["prompt_frames"][0])
    train = [r for r in range(d.shape[0]) if r not in held]
    conts = d[:, :, tp:]
    x = read_safetensors(a.init)[0]["gist"].astype(np.float32).copy()

    def held_ce(g):
        return float(np.mean([grad(a.url, a.token, g, conts[r])[0] for r in held]))

    print(f"held-out CE: zeros {held_ce(np.zeros_like(x)):.4f}  init {held_ce(x):.4f}")
    m, v = np.zeros_like(x), np.zeros_like(x)
    for step in range(1, a.steps + 1):
        lr = a.lr * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * step / a.steps)))
        losses, gsum = [], np.zeros_like(x)
        for r in train:
            loss, g = grad(a.url, a.token, x, conts[r])
            losses.append(loss)
            gsum += g / len(train)
        m = 0.9 * m + 0.1 * gsum
        v = 0.999 * v + 0.001 * gsum**2
        x -= lr * (m / (1 - 0.9**step)) / (np.sqrt(v / (1 - 0.999**step)) + 1e-8)
        if step % 10 == 0:
            print(f"step {step}: train CE {np.mean(losses):.4f}")
    final = held_ce(x)
    print(f"held-out CE: trained {final:.4f}")
    if a.compare:
        print(f"held-out CE: {a.compare} {held_ce(read_safetensors(a.compare)[0]['gist']):.4f}")
    write_gist(a.out, x, {"k": x.shape[0], "held_out_ce": final, "trained_by": "examples/gist_remote.py"})


if __name__ == "__main__":
    main()
