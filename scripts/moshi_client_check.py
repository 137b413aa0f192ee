#!/usr/bin/env python3
"""Drives `kokichi serve`'s /api/chat with the real `moshi` Python client pieces, headless:
moshi.client.Connection's protocol handling (its receive loop, its send path) and its sphn
Opus/Ogg writer and reader, with the sound devices replaced by a wav file and a buffer.

Streams the wav in real time, then checks that the handshake, audio and text arrive and
decode. Exit status 0 on success; prints a JSON summary.

  moshi_client_check.py --url ws://127.0.0.1:8998 --wav tests/fixtures/speech/question.wav
"""
import argparse
import asyncio
import json
import queue
import sys
import wave

import aiohttp
import numpy as np
import sphn
from moshi.client import Connection
from moshi.client_utils import RawPrinter


class Recorder(RawPrinter):
    def __init__(self):
        super().__init__()
        self.tokens = []
        self.warnings = []

    def print_token(self, token: str):
        self.tokens.append(token)

    def log(self, level, msg):
        self.warnings.append(f"{level}: {msg}")

    def print_lag(self):
        pass

    def print_pending(self):
        pass


class Headless(Connection):
    """moshi.client.Connection without sounddevice: same protocol code, no audio devices."""

    def __init__(self, printer, websocket, event_loop):
        self.printer = printer
        self.websocket = websocket
        self.sample_rate = 24000
        self.frame_size = 1920
        self.channels = 1
        self._done = False
        self._opus_writer = sphn.OpusStreamWriter(self.sample_rate)
        self._opus_reader = sphn.OpusStreamReader(self.sample_rate)
        self._output_queue = queue.Queue()
        self._all_pcm_data = None
        self._event_loop = event_loop


class FirstMessage:
    """Wraps the websocket to remember the first message (the handshake) before the client
    loop sees it."""

    def __init__(self, ws):
        self.ws = ws
        self.first = None

    def __getattr__(self, name):
        return getattr(self.ws, name)

    def __aiter__(self):
        return self

    async def __anext__(self):
        msg = await self.ws.__anext__()
        if self.first is None:
            self.first = msg.data
        return msg


def read_wav(path):
    with wave.open(path) as w:
        assert w.getframerate() == 24000 and w.getsampwidth() == 2
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768


async def main(args):
    pcm = read_wav(args.wav)
    frames = len(pcm) // 1920
    printer = Recorder()
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(args.url.rstrip("/") + "/api/chat?text_seed=1&audio_seed=2") as ws:
            wrapped = FirstMessage(ws)
            conn = Headless(printer, wrapped, asyncio.get_event_loop())
            recv = asyncio.create_task(conn._recv_loop())
            for i in range(frames):
                # As sounddevice would call it: one (frame, channels) block per 80 ms.
                conn._on_audio_input(pcm[i * 1920:(i + 1) * 1920, None], 1920, None, None)
                await asyncio.sleep(0.08)
            # Let the answer for the last frames arrive.
            for _ in range(100):
                if conn._output_queue.qsize() >= frames - 3:
                    break
                await asyncio.sleep(0.05)
            await ws.close()
            await recv
    out = []
    while not conn._output_queue.empty():
        out.append(conn._output_queue.get())
    audio = np.concatenate(out) if out else np.zeros(0)
    summary = {
        "handshake": list(wrapped.first or b""),
        "frames_sent": frames,
        "frames_received": len(out),
        "text": "".join(printer.tokens),
        "audio_rms": float(np.sqrt(np.mean(audio ** 2))) if len(audio) else 0.0,
        "client_messages": printer.warnings,
    }
    print(json.dumps(summary))
    ok = (
        summary["handshake"][:1] == [0] and len(summary["handshake"]) == 9
        and summary["frames_received"] >= frames - 3
        and len(summary["text"]) > 0
        and summary["audio_rms"] > 1e-5
    )
    return 0 if ok else 1


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--wav", required=True)
    sys.exit(asyncio.run(main(ap.parse_args())))
