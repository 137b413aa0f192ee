// Headless-Chromium test of the page `kokichi serve` serves at `/`: starts the daemon (tiny model,
// CPU, no audio device), talks to it through the page with Chromium's fake microphone playing
// tests/fixtures/speech/question.wav, and checks that answer audio is played, the transcript
// fills and the figures appear. Run with `make test-browser`.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const BIN = process.env.KOKICHI_BIN || join(process.env.CARGO_TARGET_DIR || join(ROOT, 'target'), 'debug/kokichi');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const MIC_WAV = join(ROOT, 'tests/fixtures/speech/question.wav');
const SHOT = join(ROOT, 'out/browser/screenshot.png');
const FRAME = 1920;

let tmp, daemon, daemonLog = '', context, page, base;
const pageErrors = [];

function freePort() {
  return new Promise((ok, fail) => {
    const s = createServer().once('error', fail).listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => ok(port));
    });
  });
}

async function startDaemon() {
  const port = await freePort();
  writeFileSync(join(tmp, 'config.toml'), ''); // defaults only, whatever ~/.config holds
  const args = ['--backend', 'cpu', 'serve', '--config', join(tmp, 'config.toml'), '--no-audio',
    '--model', join(ROOT, 'tests/fixtures/tiny_model'), '--bind', `127.0.0.1:${port}`,
    '--control-socket', join(tmp, 'control.sock')];
  daemon = spawn(BIN, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, NO_COLOR: '1' } });
  for (const s of [daemon.stdout, daemon.stderr]) s.on('data', (d) => (daemonLog += d));
  const exited = new Promise((r) => daemon.once('exit', (code) => r(code)));
  const deadline = Date.now() + 60_000;
  while (Date.now() < deadline) {
    const code = await Promise.race([exited, new Promise((r) => setTimeout(() => r(undefined), 100))]);
    if (code !== undefined) throw new Error(`kokichi serve exited (${code}) before listening:\n${daemonLog}`);
    try {
      if ((await fetch(`http://127.0.0.1:${port}/api/status`)).ok) return `http://127.0.0.1:${port}`;
    } catch { /* not listening yet */ }
  }
  throw new Error(`kokichi serve did not answer /api/status within 60 s:\n${daemonLog}`);
}

/** Waits for `fn` (run in the page) to be truthy; on timeout, says what and shows the page's figures. */
async function waitFor(what, fn, arg, timeout = 20_000) {
  try {
    await page.waitForFunction(fn, arg, { timeout, polling: 50 });
  } catch (e) {
    const state = await page.evaluate(() => JSON.stringify({ ...window.kokichi, status: undefined })).catch(() => '?');
    throw new Error(`timed out after ${timeout} ms waiting for ${what}\npage: ${state}\npage errors: ${pageErrors.join('\n')}`);
  }
}

const k = () => page.evaluate(() => window.kokichi);
const text = (id) => page.locator(`#${id}`).textContent();

before(async () => {
  for (const [what, path] of [['kokichi binary (cargo build --bin kokichi)', BIN], ['Chromium (apt-get install chromium)', CHROMIUM], ['fake mic wav', MIC_WAV]]) {
    if (!existsSync(path)) throw new Error(`missing ${what}: ${path}`);
  }
  tmp = mkdtempSync(join(tmpdir(), 'kokichi-browser-'));
  base = await startDaemon();
  context = await chromium.launchPersistentContext(join(tmp, 'profile'), {
    executablePath: CHROMIUM,
    headless: true,
    viewport: { width: 900, height: 860 },
    timeout: 30_000,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      '--use-fake-ui-for-media-stream', '--use-fake-device-for-media-stream',
      `--use-file-for-fake-audio-capture=${MIC_WAV}`],
  });
  page = context.pages()[0] || (await context.newPage());
  page.on('pageerror', (e) => pageErrors.push(String(e)));
  page.on('console', (m) => m.type() === 'error' && pageErrors.push(m.text()));
}, { timeout: 90_000 });

after(async () => {
  await context?.close().catch(() => {});
  if (daemon && daemon.exitCode === null) {
    daemon.kill('SIGTERM');
    await new Promise((r) => { daemon.once('exit', r); setTimeout(() => { daemon.kill('SIGKILL'); r(); }, 5000).unref(); });
  }
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});

test('talk through the page and hear an answer', { timeout: 90_000 }, async () => {
  const sockets = [];
  page.on('websocket', (ws) => sockets.push(ws.url()));
  await page.goto(`${base}/?text_temperature=0.8&audio_topk=100&audio_seed=7&unrelated=1`);
  await waitFor('the backend name from /api/status', () => /cpu|flex/i.test(document.getElementById('backend').textContent));

  await page.getByRole('button', { name: 'Connect' }).click();
  await waitFor('the connection', () => window.kokichi.state === 'open');
  assert.equal(await page.getByRole('button', { name: 'Disconnect' }).count(), 1);
  assert.equal(sockets.length, 1);
  const q = new URL(sockets[0]).searchParams;
  assert.deepEqual([q.get('text_temperature'), q.get('audio_topk'), q.get('audio_seed'), q.get('unrelated')], ['0.8', '100', '7', null]);

  // Hold the talk button (about 1.5 s of microphone), then the space bar (about 0.5 s).
  const talk = page.getByRole('button', { name: /hold to talk/i });
  const box = await talk.boundingBox();
  await page.mouse.move(box.x + box.width / 2, box.y + box.height / 2);
  await page.mouse.down();
  await waitFor('the talk button to be pressed', () => document.getElementById('talk').getAttribute('aria-pressed') === 'true');
  await waitFor('18 microphone frames sent while talking', () => window.kokichi.talkSent >= 18);
  await page.mouse.up();
  assert.equal(await talk.getAttribute('aria-pressed'), 'false');
  // Space on a focused button is talk, not a click: the connection stays up.
  await page.getByRole('button', { name: 'Disconnect' }).focus();
  await page.keyboard.down('Space');
  assert.equal(await talk.getAttribute('aria-pressed'), 'true', 'space holds talk');
  await waitFor('6 more frames while space is held', () => window.kokichi.talkSent >= 24);
  await page.keyboard.up('Space');
  assert.equal(await talk.getAttribute('aria-pressed'), 'false', 'releasing space releases talk');
  assert.equal((await k()).state, 'open', 'space did not click Disconnect');
  const released = await k();
  assert.ok(released.micMax > 0.005, `the fake microphone is heard (peak chunk RMS ${released.micMax})`);

  // Released: zeros keep going (the model keeps answering), the microphone does not.
  await waitFor('frames sent after release', (n) => window.kokichi.sent >= n + 6, released.sent);
  assert.equal((await k()).talkSent, released.talkSent, 'no microphone audio is sent once talk is released');

  await waitFor('30 answer frames received', () => window.kokichi.received >= 30);
  await waitFor('20 frames played by the playback worklet',
    (n) => (window.kokichi.playback?.played ?? 0) >= n && window.kokichi.playback.frames >= 20, 20 * FRAME);
  await waitFor('non-silent playback', () => window.kokichi.playback?.peak > 0);
  await waitFor('transcript text', () => document.getElementById('transcript').textContent.trim().length > 0);
  await waitFor('step time and session figures', () => window.kokichi.status?.step_ms_avg > 0
    && /^\d+ frames$/.test(document.getElementById('in-backlog').textContent), undefined, 5_000);
  await waitFor('round trip and buffer figures', () => /^\d+ ms$/.test(document.getElementById('rtt').textContent)
    && /^\d+ ms$/.test(document.getElementById('buffer').textContent), undefined, 5_000);

  assert.match(await text('step-ms'), /^\d+\.\d ms$/);
  assert.match(await text('rtf'), /^\d+\.\d\d$/);
  assert.match(await text('drops'), /^\d+ \/ \d+$/);
  const [end, shown] = await page.evaluate(() => [window.kokichi, document.getElementById('transcript').textContent]);
  assert.equal(shown, end.text, 'the transcript shows every text piece');
  assert.ok(end.pieces > 0 && end.errors.length === 0, `pieces ${end.pieces}, errors ${end.errors}`);
  console.log(`sent ${end.sent} (talk ${end.talkSent}), received ${end.received}, played ${(end.playback.played / FRAME).toFixed(1)} frames, ` +
    `underruns ${end.playback.underruns}, rtt ${end.rtt.toFixed(0)} ms, step ${end.status.step_ms_avg.toFixed(1)} ms, ` +
    `rtf ${end.status.rtf.toFixed(2)}, ${end.pieces} text pieces, mic peak RMS ${end.micMax.toFixed(3)}`);

  mkdirSync(join(ROOT, 'out/browser'), { recursive: true });
  await page.screenshot({ path: SHOT, fullPage: true });

  // Open mic: talk is not needed (and disabled), the microphone goes out.
  await page.getByLabel(/open mic/i).check();
  assert.equal(await talk.isDisabled(), true);
  await waitFor('microphone frames in open-mic mode', (n) => window.kokichi.talkSent >= n + 4, end.talkSent);
  await page.getByLabel(/open mic/i).uncheck();

  await page.getByRole('button', { name: 'Disconnect' }).click();
  await waitFor('the disconnected state', () => window.kokichi.state === 'closed');
  await waitFor('the daemon to drop the session', () => window.kokichi.status?.sessions.every((s) => !s.kind.startsWith('pcm')), undefined, 5_000);
  assert.deepEqual(pageErrors, []);
});

test('a bad sampling parameter shows an error', { timeout: 30_000 }, async () => {
  await page.goto(`${base}/?text_temperature=hot`);
  await page.getByRole('button', { name: 'Connect' }).click();
  await waitFor('the error message', () => !document.getElementById('error').hidden && window.kokichi.state === 'closed');
  assert.match(await page.getByRole('alert').textContent(), /Could not open \/api\/pcm/);
  assert.equal(await page.getByRole('button', { name: 'Hold to talk (Space)' }).isDisabled(), true);
});
