#!/usr/bin/env python3
"""A special token calling a tool, end to end through `kokichi run` or, with `--serve`, through
the daemon (`kokichi serve`, a WebSocket client on `/api/pcm` streaming each clip at real time):
held-out time questions (tool_tokens.py's eval split) answered by kokichi-tiny with a `<clock>`
adapter, the token bound to a command that prints a number word (`echo seven`); the command's
answer is said by the model (forced monologue). Prints how often the token fired and how often
the answer audio says the word, judged by the project's recognizer (eval_lm.Judge).

  eval_tools.py --bin target/debug/kokichi --adapter training/tool-tokens/clock --data DIR [--word seven] [--serve]
"""
import argparse
import asyncio
import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import read_wav  # noqa: E402
from eval_lm import Judge  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", required=True, help="the kokichi binary")
    ap.add_argument("--model", default="kokichi-tiny")
    ap.add_argument("--adapter", required=True)
    ap.add_argument("--data", required=True, help="tool_tokens.py's output folder (eval.jsonl, eval/)")
    ap.add_argument("--token", default="<clock>")
    ap.add_argument("--word", default="seven", help="what the bound command prints")
    ap.add_argument("--out", help="write the per-clip results here (JSON)")
    ap.add_argument("--serve", action="store_true", help="through the daemon instead of `kokichi run`")
    a = ap.parse_args()
    data = Path(a.data)
    clips = [json.loads(line) for line in (data / "eval.jsonl").read_text().splitlines() if line.strip()]
    clips = [c for c in clips if c["kind"] == "time"]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        judge = Judge(work)
        config = work / "tools.toml"
        config.write_text(f'[tools."{a.token}"]\ncommand = ["echo", "{a.word}"]\ntimeout_ms = 2000\n')
        results = (served if a.serve else ran)(a, config, data, clips, judge, work)
    n = len(results)
    fired = [r for r in results if r["fired"]]
    print(f"{a.token} fired on {len(fired)}/{n} held-out time questions")
    print(f"answer audio says '{a.word}': {sum(r['said'] for r in fired)}/{len(fired)} of those it fired on, "
          f"{sum(r['said'] for r in results)}/{n} of all")
    if a.out:
        Path(a.out).write_text(json.dumps(results, indent=1))


def ran(a, config, data, clips, judge, work):
    """Each clip through its own `kokichi run`."""
    results = []
    for c in clips:
        out, text = work / "out.wav", work / "out.txt"
        cmd = [a.bin, "--backend", "cpu", "run", "--model", a.model, "--greedy", "--adapter", a.adapter,
               "--config", str(config), "--input", str(data / c["file"]), "--output", str(out),
               "--transcript", str(text)]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
        transcript = text.read_text().strip()
        heard = judge.words(read_wav(out).astype(np.float32) / 32768)
        results.append({"file": c["file"], "transcript": transcript, "heard": heard,
                        "fired": a.token in transcript, "said": a.word in heard})
    return results


FRAME = 1920  # samples of one 80 ms frame at 24 kHz


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def served(a, config, data, clips, judge, _work):
    """Each clip through one `/api/pcm` session of a daemon started for them all: the clip's
    frames sent at real time, the audio frames and text messages received until as many frames
    came back as were sent."""
    port = free_port()
    cmd = [a.bin, "--backend", "cpu", "serve", "--model", a.model, "--greedy", "--adapter", a.adapter,
           "--config", str(config), "--no-audio", "--bind", f"127.0.0.1:{port}"]
    daemon = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status", timeout=2).read()
                break
            except OSError:
                if daemon.poll() is not None or time.monotonic() > deadline:
                    sys.exit(f"the daemon did not start: {' '.join(cmd)}")
                time.sleep(0.5)
        results = []
        for c in clips:
            pcm = read_wav(data / c["file"]).astype(np.float32) / 32768
            audio, events = asyncio.run(one_session(port, pcm))
            heard = judge.words(audio)
            fired = any(e.get("event") == "token" and e.get("token") == a.token for e in events)
            results.append({"file": c["file"], "events": events, "heard": heard, "fired": fired,
                            "said": a.word in heard})
        return results
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)


async def one_session(port, pcm):
    import aiohttp
    frames = len(pcm) // FRAME
    audio, events = [], []
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(f"ws://127.0.0.1:{port}/api/pcm", max_msg_size=1 << 20) as ws:
            async def send():
                start = time.monotonic()
                for f in range(frames):
                    await ws.send_bytes(pcm[f * FRAME:(f + 1) * FRAME].astype("<f4").tobytes())
                    await asyncio.sleep(max(0.0, start + (f + 1) * 0.08 - time.monotonic()))

            sender = asyncio.create_task(send())
            while len(audio) < frames:
                msg = await asyncio.wait_for(ws.receive(), timeout=10)
                if msg.type == aiohttp.WSMsgType.BINARY:
                    audio.append(np.frombuffer(msg.data, "<f4"))
                elif msg.type == aiohttp.WSMsgType.TEXT and msg.data.startswith("{"):
                    events.append(json.loads(msg.data))
                elif msg.type != aiohttp.WSMsgType.TEXT:
                    break
            await sender
    return np.concatenate(audio) if audio else np.zeros(0, np.float32), events


if __name__ == "__main__":
    main()
