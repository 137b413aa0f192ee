# kokichi — see README.md. `make run` runs the main job on the embedded default model,
# `make test` runs the test suite (both backends: flex CPU and wgpu).

CARGO_TARGET_DIR ?= $(CURDIR)/target
export CARGO_TARGET_DIR
# Reference Python environment (moshi, rustymimi) for fixtures and benchmarks.
VENV ?= /var/tmp/kokichi-venv
PY := $(VENV)/bin/python
BIN := $(CARGO_TARGET_DIR)/debug/kokichi
OUT ?= out

.PHONY: run test build bench bench-codec fixtures venv clean

build:
	cargo build --bin kokichi

run: build
	@mkdir -p $(OUT)
	$(BIN) --backend $${KOKICHI_BACKEND:-cpu} run --model $${KOKICHI_MODEL:-tests/fixtures/tiny_model} \
		--input assets/examples/question.wav --output $(OUT)/answer.wav --transcript $(OUT)/answer.txt
	@echo "wrote $(OUT)/answer.wav and $(OUT)/answer.txt"

test:
	cargo test --no-fail-fast -- --test-threads=2

$(PY):
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q moshi==0.2.13 rustymimi==0.4.1

venv: $(PY)

fixtures: $(PY)
	NO_TORCH_COMPILE=1 $(PY) scripts/gen_mimi_fixtures.py
	NO_TORCH_COMPILE=1 $(PY) scripts/gen_lm_fixtures.py
	NO_TORCH_COMPILE=1 $(PY) scripts/gen_e2e_fixture.py
	$(PY) scripts/make_spm_fixture.py

bench-codec: $(PY)
	cargo build --example bench_codec
	NO_TORCH_COMPILE=1 $(PY) scripts/bench_codec.py --bin $(CARGO_TARGET_DIR)/debug/examples/bench_codec

bench: bench-codec

clean:
	rm -rf $(OUT)
