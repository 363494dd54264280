# bapose: every target installs what is missing first, into a venv in .venv, from the hashed locks in requirements/
# (README "Install"). TORCH picks the torch build: cu130 (default: PyPI's torch, CUDA 13 on Linux, CPU-only on macOS
# and Windows), cpu or cu126 (download.pytorch.org, Linux x86_64; their lock is made on first use). A venv keeps the
# build it was made with: later calls default to it, another one needs another VENV.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= $(shell cat $(VENV)/.bapose-torch 2>/dev/null || echo cu130)
TORCH_LOCK := requirements/torch-$(TORCH).txt
PIP := $(BIN)/python -m pip
PYTEST_ARGS ?=
# what a venv made from an earlier lock may hold and these locks no longer allow: hydra-optuna-sweeper (optuna<3) would
# break `pip check`, and its `hydra/sweeper/optuna` schema would clash with bapose's conf/hydra/sweeper/optuna.yaml
OBSOLETE := hydra-optuna-sweeper

.PHONY: install install-core train test test-fast bench profile lock lock-check clean

# $(1): the use lock (core | test); the torch lock of $(TORCH) goes with it. --require-hashes: only the files
# whose sha256 the locks name; bapose itself goes in editable, without dependencies (they are all in the locks).
# The stamps carry the build's name ($(VENV)/.bapose-test-cu130): a fresh stamp says the venv holds $(TORCH), and
# for any other TORCH there is none, so the build check below runs before anything is installed. A venv of the
# stamps without a build name (.bapose-core, .bapose-test) installs once more and loses them.
define install_lock
	@had=$$(cat $(VENV)/.bapose-torch 2>/dev/null || echo $(TORCH)); if [ "$$had" != "$(TORCH)" ]; then \
	  echo "Makefile: $(VENV) holds the torch build '$$had', not TORCH=$(TORCH); give this build its own venv" \
	       "(make $(MAKECMDGOALS) TORCH=$(TORCH) VENV=.venv-$(TORCH)) or remove $(VENV)" >&2; exit 2; fi
	@for pkg in $(OBSOLETE); do if $(PIP) show -q $$pkg 2>/dev/null; then $(PIP) uninstall -q -y $$pkg; fi; done
	$(PIP) install -q --require-hashes -r $(TORCH_LOCK) -r requirements/$(1).txt
	$(PIP) install -q --no-deps --no-build-isolation -e .
	$(PIP) check
	@echo $(TORCH) > $(VENV)/.bapose-torch
	@rm -f $(VENV)/.bapose-core $(VENV)/.bapose-test
	@touch $@
endef

# the venv with pip and uv (the lock tool) at their locked versions
$(VENV)/.bapose-tools: requirements/tools.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --require-hashes -r requirements/tools.txt
	@touch $@

$(VENV)/.bapose-core-$(TORCH): pyproject.toml requirements/core.txt $(TORCH_LOCK) $(VENV)/.bapose-tools
	$(call install_lock,core)

$(VENV)/.bapose-test-$(TORCH): pyproject.toml requirements/test.txt $(TORCH_LOCK) $(VENV)/.bapose-tools
	$(call install_lock,test)

# the download.pytorch.org builds: locked under the core lock's pins the first time they are asked for (needs
# https://download.pytorch.org; scripts/lock.py --torch <variant>)
requirements/torch-cpu.txt requirements/torch-cu126.txt: | $(VENV)/.bapose-tools
	$(BIN)/python scripts/lock.py --torch $(patsubst requirements/torch-%.txt,%,$@)

## everything `make test` needs (core + every extra); `install-core`: what `make train` needs
install: $(VENV)/.bapose-test-$(TORCH)

install-core: $(VENV)/.bapose-core-$(TORCH)

## the main job on the embedded default: train + evaluate on a generated crowd dataset on CPU, print the AP table
train: install-core
	$(BIN)/bapose-train experiment=demo

## the test suite (README's test command; .ci/run runs exactly this)
test: install
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

## regenerate the hashed locks from pyproject.toml with the pinned uv (lock-check: compare, change nothing)
lock: $(VENV)/.bapose-tools
	$(BIN)/python scripts/lock.py

lock-check: $(VENV)/.bapose-tools
	$(BIN)/python scripts/lock.py --check

## performance figures side by side, rewrites BENCHMARKS.md
bench: install
	$(BIN)/python scripts/run_benchmarks.py

profile: install-core
	$(BIN)/bapose-profile model=bapose_w32 data.input_size=512

clean:
	rm -rf outputs multirun .pytest_cache
