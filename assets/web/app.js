// kokichi web page, main thread: microphone → /api/pcm (f32 LE, 24 kHz) → speaker, push-to-talk,
// the inner-monologue transcript and live figures from /api/status. No build step.
'use strict';

const RATE = 24000;
const FRAME = 1920; // samples per model step (80 ms)
const FRAME_MS = (1000 * FRAME) / RATE;
const PASS = ['text_temperature', 'text_topk', 'audio_temperature', 'audio_topk', 'text_seed', 'audio_seed', 'greedy', 'token'];
const $ = (id) => document.getElementById(id);

// Everything the page measures; also read by tests/browser.
const stats = (window.kokichi = {
  state: 'closed', sent: 0, talkSent: 0, received: 0, text: '', pieces: 0, rtt: null, micLevel: 0, micMax: 0,
  playback: null, status: null, errors: [],
});

const query = new URLSearchParams();
for (const [k, v] of new URLSearchParams(location.search)) if (PASS.includes(k)) query.set(k, v);
const token = query.get('token');

let conn = null; // { ctx, ws, stream, capture, playback, sentAt }
let held = false;

function showError(msg) {
  const e = $('error');
  e.textContent = msg;
  e.hidden = !msg;
  if (msg) stats.errors.push(msg);
}

function setState(state, label) {
  stats.state = state;
  $('state').textContent = label;
  $('state').className = state;
  $('connect').textContent = state === 'closed' ? 'Connect' : 'Disconnect';
  $('connect').disabled = state === 'connecting';
  $('talk').disabled = state !== 'open' || $('open-mic').checked;
}

function talking() {
  return $('open-mic').checked || held;
}

function setHeld(on) {
  if (held === on) return;
  held = on && stats.state === 'open';
  $('talk').setAttribute('aria-pressed', String(held));
}

async function connect() {
  showError('');
  setState('connecting', 'connecting…');
  const c = (conn = { sentAt: [] });
  Object.assign(stats, { sent: 0, talkSent: 0, received: 0, rtt: null, micMax: 0, playback: null });
  if (stats.text && !stats.text.endsWith('\n')) stats.text += '\n';
  try {
    // Same-origin status first: a wrong token gets a clear message instead of a bare WebSocket failure.
    const probe = await fetch(`api/status${token ? `?token=${encodeURIComponent(token)}` : ''}`).catch(() => {
      throw new Error('Cannot reach the daemon: is kokichi serve running?');
    });
    if (!probe.ok) throw new Error(`daemon refused: ${(await probe.text()).trim() || probe.status}`);
    if (!window.isSecureContext || !navigator.mediaDevices || !window.AudioWorkletNode) {
      throw new Error('The microphone and audio worklets need a secure context: open the page on localhost (an SSH tunnel works) or over HTTPS.');
    }
    c.ctx = new AudioContext({ latencyHint: 'interactive' });
    await c.ctx.audioWorklet.addModule('worklet.js');
    c.stream = await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true, channelCount: 1 },
    });
    c.capture = new AudioWorkletNode(c.ctx, 'kokichi-capture', { numberOfOutputs: 1 });
    c.capture.port.onmessage = (e) => sendChunk(c, e.data);
    c.ctx.createMediaStreamSource(c.stream).connect(c.capture);
    c.capture.connect(c.ctx.destination); // silent; keeps the node pulled in every browser
    c.playback = new AudioWorkletNode(c.ctx, 'kokichi-playback', {
      numberOfInputs: 0, outputChannelCount: [1], processorOptions: { prebufferFrames: 2, maxFrames: 8 },
    });
    c.playback.port.onmessage = (e) => (stats.playback = e.data);
    c.playback.connect(c.ctx.destination);
    await c.ctx.resume();
    openSocket(c);
  } catch (err) {
    showError(err.name === 'NotAllowedError' ? 'Microphone access was denied.' : String(err.message || err));
    disconnect();
  }
}

function openSocket(c) {
  const url = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/api/pcm?${query}`;
  const ws = (c.ws = new WebSocket(url));
  ws.binaryType = 'arraybuffer';
  ws.onopen = () => setState('open', 'connected');
  ws.onmessage = (e) => {
    if (typeof e.data === 'string') {
      if (e.data.startsWith('error:')) return showError(`daemon: ${e.data.slice(6).trim()}`);
      const fresh = stats.text === '' || stats.text.endsWith('\n'); // no leading space on a new line
      stats.text = (stats.text + (fresh ? e.data.trimStart() : e.data)).slice(-20000);
      stats.pieces++;
      $('transcript').textContent = stats.text;
      $('transcript').scrollTop = $('transcript').scrollHeight;
      return;
    }
    stats.received++;
    const sent = c.sentAt.shift();
    if (sent !== undefined) stats.rtt = stats.rtt === null ? performance.now() - sent : 0.9 * stats.rtt + 0.1 * (performance.now() - sent);
    // Every platform browsers run on is little-endian, so the bytes are Float32Array's own.
    const pcm = new Float32Array(e.data);
    c.playback.port.postMessage(pcm, [pcm.buffer]);
  };
  ws.onclose = (e) => {
    if (stats.state === 'connecting') {
      showError('Could not open /api/pcm: the daemon refused it (check the sampling parameters in the address, or its log).');
    } else if (e.code !== 1000 && e.code !== 1005 && !$('error').textContent) {
      showError(`Connection closed (${e.code}${e.reason ? `: ${e.reason}` : ''}).`);
    }
    disconnect();
  };
}

function sendChunk(c, chunk) {
  let sum = 0;
  for (let i = 0; i < chunk.length; i++) sum += chunk[i] * chunk[i];
  stats.micLevel = Math.sqrt(sum / chunk.length);
  stats.micMax = Math.max(stats.micMax, stats.micLevel);
  $('mic-level').value = Math.min(1, stats.micLevel * 4);
  const ws = c.ws;
  if (!ws || ws.readyState !== WebSocket.OPEN || ws.bufferedAmount > 1 << 20) return;
  // Not talking: zeros keep the model stepping so it can finish its answer without hearing us.
  const data = talking() ? chunk : new Float32Array(FRAME);
  ws.send(data.buffer);
  stats.sent++;
  if (data === chunk) stats.talkSent++;
  c.sentAt.push(performance.now());
  if (c.sentAt.length > 250) c.sentAt.shift();
}

function disconnect() {
  const c = conn;
  conn = null;
  setHeld(false);
  if (c) {
    if (c.ws && c.ws.readyState <= WebSocket.OPEN) c.ws.close(1000);
    if (c.stream) c.stream.getTracks().forEach((t) => t.stop());
    if (c.ctx) c.ctx.close();
  }
  $('mic-level').value = 0;
  setState('closed', 'disconnected');
}

const fmt = (v, digits, unit = '') => (v === null || v === undefined || Number.isNaN(v) ? '–' : `${v.toFixed(digits)}${unit}`);

async function pollStatus() {
  try {
    const r = await fetch(`api/status${token ? `?token=${encodeURIComponent(token)}` : ''}`, { cache: 'no-store' });
    if (!r.ok) throw new Error(`${r.status}`);
    const s = (stats.status = await r.json());
    $('step-ms').textContent = fmt(s.step_ms_avg, 1, ' ms');
    $('rtf').textContent = fmt(s.rtf, 2);
    $('backend').textContent = `${s.backend} · ${s.sessions.length} session${s.sessions.length === 1 ? '' : 's'}`;
    // The daemon does not tell a client its session id: take the pcm session whose frame count is nearest ours.
    const mine = conn && stats.state === 'open' && s.sessions
      .filter((x) => x.kind.startsWith('pcm'))
      .sort((a, b) => Math.abs(a.frames - stats.received) - Math.abs(b.frames - stats.received))[0];
    $('in-backlog').textContent = mine ? `${mine.input_backlog} frames` : '–';
    $('out-backlog').textContent = mine ? `${mine.output_backlog} msgs` : '–';
    $('drops').textContent = mine ? `${mine.dropped_in} / ${mine.dropped_out}` : '–';
  } catch (err) {
    $('step-ms').textContent = $('rtf').textContent = '–';
    $('backend').textContent = `status unavailable (${err.message})`;
  }
}

function render() {
  const p = stats.playback;
  const buffered = p ? (1000 * p.buffered) / RATE : null;
  $('rtt').textContent = fmt(stats.rtt, 0, ' ms');
  $('buffer').textContent = fmt(buffered, 0, ' ms');
  const out = conn && conn.ctx ? 1000 * ((conn.ctx.outputLatency || 0) + (conn.ctx.baseLatency || 0)) : 0;
  $('mouth-ear').textContent = stats.rtt === null || !p ? '–' : fmt(FRAME_MS + stats.rtt + buffered + out, 0, ' ms');
  $('frames').textContent = `${stats.sent} / ${stats.received}`;
  $('underruns').textContent = p ? `${p.underruns}${p.skipped ? ` (+${p.skipped} skips)` : ''}` : '–';
}

$('connect').onclick = () => (conn ? disconnect() : connect());
$('open-mic').onchange = () => setState(stats.state, $('state').textContent);
const talkButton = $('talk');
talkButton.addEventListener('pointerdown', (e) => { talkButton.setPointerCapture(e.pointerId); setHeld(true); });
for (const ev of ['pointerup', 'pointercancel', 'lostpointercapture']) talkButton.addEventListener(ev, () => setHeld(false));
// Space is push-to-talk everywhere except in form fields (the checkbox keeps its own Space).
const isTyping = (t) => t instanceof HTMLInputElement || t instanceof HTMLTextAreaElement || t instanceof HTMLSelectElement;
addEventListener('keydown', (e) => {
  if (e.code !== 'Space' || isTyping(e.target)) return;
  e.preventDefault(); // no scrolling, no button click
  if (!e.repeat) setHeld(true);
});
addEventListener('keyup', (e) => {
  if (e.code !== 'Space' || isTyping(e.target)) return;
  e.preventDefault();
  setHeld(false);
});
addEventListener('blur', () => setHeld(false));
setInterval(pollStatus, 1000);
setInterval(render, 250);
pollStatus();
