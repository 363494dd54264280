# bapose: every target installs what is missing first (a venv in .venv, pinned by requirements.lock).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.bapose-installed
PYTEST_ARGS ?=

.PHONY: install train test test-fast bench profile clean

$(STAMP): pyproject.toml requirements.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip==25.3"
	$(BIN)/python -m pip install -q -r requirements.lock
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	@touch $(STAMP)

install: $(STAMP)

## the main job on the embedded default: train + evaluate on a generated crowd dataset on CPU, print the AP table
train: install
	$(BIN)/bapose-train experiment=demo

## the test suite (README's test command; .ci/run runs exactly this)
test: install
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

## performance figures side by side, rewrites BENCHMARKS.md
bench: install
	$(BIN)/python scripts/run_benchmarks.py

profile: install
	$(BIN)/bapose-profile model=bapose_w32 data.input_size=512

clean:
	rm -rf outputs multirun .pytest_cache
