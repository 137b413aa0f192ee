// kokichi web page, audio thread: `kokichi-capture` resamples the microphone from the context
// rate to 24 kHz and posts 80 ms chunks; `kokichi-playback` plays the model's 24 kHz frames
// through a small jitter buffer, resampled to the context rate, and reports its figures.

const RATE = 24000;
const FRAME = 1920; // 80 ms at 24 kHz

// Biquad low-pass (RBJ cookbook), run before decimating so that the mic does not alias.
class LowPass {
  constructor(fc, q, fs) {
    const w = (2 * Math.PI * fc) / fs, a = Math.sin(w) / (2 * q), c = Math.cos(w), n = 1 + a;
    this.b0 = (1 - c) / 2 / n; this.b1 = (1 - c) / n; this.b2 = this.b0;
    this.a1 = (-2 * c) / n; this.a2 = (1 - a) / n;
    this.x1 = this.x2 = this.y1 = this.y2 = 0;
  }
  run(x) {
    const y = this.b0 * x + this.b1 * this.x1 + this.b2 * this.x2 - this.a1 * this.y1 - this.a2 * this.y2;
    this.x2 = this.x1; this.x1 = x; this.y2 = this.y1; this.y1 = y;
    return y;
  }
}

class Capture extends AudioWorkletProcessor {
  constructor() {
    super();
    this.step = sampleRate / RATE; // input samples per output sample
    // 4th-order Butterworth at 0.45 × 24 kHz, only when downsampling.
    this.filters = sampleRate > RATE ? [0.5412, 1.3066].map((q) => new LowPass(0.45 * RATE, q, sampleRate)) : [];
    this.pos = 0; // next output position, in input samples from the block start (≥ -1)
    this.last = 0; // the previous block's last sample
    this.chunk = new Float32Array(FRAME);
    this.fill = 0;
  }

  process(inputs) {
    const x = inputs[0] && inputs[0][0];
    if (!x) return true;
    for (const f of this.filters) for (let i = 0; i < x.length; i++) x[i] = f.run(x[i]);
    const n = x.length;
    let p = this.pos;
    for (; p < n - 1; p += this.step) {
      const i = Math.floor(p), a = i < 0 ? this.last : x[i];
      this.chunk[this.fill++] = a + (x[i + 1] - a) * (p - i);
      if (this.fill === FRAME) {
        this.port.postMessage(this.chunk, [this.chunk.buffer]);
        this.chunk = new Float32Array(FRAME);
        this.fill = 0;
      }
    }
    this.pos = p - n;
    this.last = x[n - 1];
    return true;
  }
}

class Playback extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const o = options.processorOptions || {};
    this.prebuffer = (o.prebufferFrames || 2) * FRAME; // start (and restart) once this is queued
    this.max = (o.maxFrames || 8) * FRAME; // beyond this, skip ahead: latency stays bounded
    this.ring = new Float32Array(1 << 16);
    this.mask = this.ring.length - 1;
    this.w = 0; // samples written (absolute)
    this.r = 0; // read position (absolute, fractional)
    this.step = RATE / sampleRate;
    this.playing = false;
    this.stats = { frames: 0, played: 0, underruns: 0, skipped: 0, buffered: 0, peak: 0 };
    this.sinceReport = 0;
    this.port.onmessage = (e) => (e.data === 'reset' ? this.reset() : this.push(e.data));
  }

  reset() {
    this.w = this.r = 0;
    this.playing = false;
  }

  push(pcm) {
    for (let i = 0; i < pcm.length; i++) this.ring[(this.w + i) & this.mask] = pcm[i];
    this.w += pcm.length;
    this.stats.frames++;
    if (this.w - this.r > this.max) {
      this.r = this.w - this.prebuffer;
      this.stats.skipped++;
    }
  }

  process(_inputs, outputs) {
    const out = outputs[0][0];
    if (!this.playing && this.w - this.r >= this.prebuffer) this.playing = true;
    let k = 0;
    if (this.playing) {
      const start = this.r;
      for (; k < out.length; k++) {
        const i = Math.floor(this.r);
        if (this.w - i < 2) {
          this.playing = false;
          this.stats.underruns++;
          break;
        }
        const a = this.ring[i & this.mask], b = this.ring[(i + 1) & this.mask];
        const v = a + (b - a) * (this.r - i);
        out[k] = v;
        if (Math.abs(v) > this.stats.peak) this.stats.peak = Math.abs(v);
        this.r += this.step;
      }
      this.stats.played += this.r - start;
    }
    out.fill(0, k);
    for (let c = 1; c < outputs[0].length; c++) outputs[0][c].set(out);
    this.sinceReport += out.length;
    if (this.sinceReport >= sampleRate / 10) {
      this.sinceReport = 0;
      this.stats.buffered = Math.max(0, this.w - this.r);
      this.port.postMessage(this.stats);
      this.stats.peak = 0;
    }
    return true;
  }
}

registerProcessor('kokichi-capture', Capture);
registerProcessor('kokichi-playback', Playback);
