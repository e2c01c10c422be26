# Two commands matter: `make demo` (offline tiny GRPO run) and `make test` (the suite).
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check -q
# Every install is constrained so that no package can replace the torch installed first.
CPIP := $(PIP) install -c constraints.txt

.PHONY: install test lint demo smoke lab bench clean system-deps

# Debian packages the tests use for real speech (espeak-ng, sox) and audio I/O (libsndfile).
system-deps:
	@if ! command -v espeak-ng >/dev/null || ! command -v sox >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq espeak-ng sox libsndfile1 >/dev/null; \
	  else echo "[make] please install espeak-ng, sox and libsndfile1 (apt-get install espeak-ng sox libsndfile1)"; exit 1; fi; \
	fi

$(BIN)/python:
	$(PY) -m venv $(VENV)

# The stamp depends on the files that declare dependencies: edit them and `make` reinstalls.
$(VENV)/.installed: $(BIN)/python setup.cfg constraints.txt Makefile
	$(PIP) install --upgrade pip
	$(PIP) install torch==2.13.0
	$(CPIP) -e '.[dev]'
	# speaker similarity: resemblyzer's metadata is old; its code needs only these.
	$(CPIP) --no-deps resemblyzer==0.1.4
	$(CPIP) librosa webrtcvad-wheels
	# Reference implementation for the decoder-equivalence test only (pins torch 2.5: --no-deps).
	$(CPIP) --no-deps xcodec2==0.1.5 torchtune==0.6.1 torchao==0.16.0
	$(CPIP) omegaconf sentencepiece tiktoken datasets
	touch $@

install: system-deps $(VENV)/.installed

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# GRPO on the speaking lab (lab-llasa + lab-xcodec2 + the real Whisper base), offline: prints start vs end.
demo: install
	$(BIN)/python train.py --config lab.toml --overwrite

# The fast smoke run: random tiny Llasa-layout model + tiny X-Codec2 (built on first use), ~2 min.
smoke: install
	$(BIN)/python train.py --config tiny.toml --overwrite

# Rebuild the speaking lab's models from espeak-ng speech (long: see the README), then copy them into the repo:
# the LM packed is the SFT's snapshot that the committed one is (the final model has no spread for GRPO).
lab: install
	$(BIN)/python -m lab build --out runs/lab-build
	$(BIN)/python -m lab pack runs/lab-build snapshots/sft2/step-600

clean:
	rm -rf $(VENV) runs .pytest_cache
