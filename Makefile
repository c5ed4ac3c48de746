# The two commands: `make demo` and `make test`. Both set up a local .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
GGUF_STAMP := $(VENV)/.installed-gguf
# constraints.txt pins the CPU torch for the demo and CI; the package itself takes any torch >= 2.6.
PIP := $(BIN)/pip install -q -c constraints.txt

.PHONY: setup demo test bench wheel corpus clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	# torch first, from the constraints: resolving it with the rest could pick a CUDA build.
	$(PIP) torch
	$(PIP) -e '.[all,test,corpus]'
	# The fused CPU kernels now, not in the first forward. Without a compiler the model runs on
	# PyTorch ops, so a failed build (its one-line reason is printed) does not stop the setup.
	$(BIN)/emomoe kernels build || true
	touch $(STAMP)

# `make test` also runs llama.cpp on exported GGUF files (the gguf extra); the demo does not need it.
# llama-cpp-python builds llama.cpp from source (no Linux wheel on PyPI): only the library the
# binding loads, about 4 min on two idle cores, once: pip caches the wheel (constraints.txt pins the
# version, so the cached wheel is the one asked for). For AVX2, not -march=native: the cached wheel
# must run on any x86-64 CPU with AVX2, and the AMX kernels a native build turns on for an AMX Xeon
# crashed on q8_0 files in our VM (llama-cpp-python 0.3.36).
$(GGUF_STAMP): $(STAMP)
	CMAKE_ARGS="-DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON $${CMAKE_ARGS:-}" \
		CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(PIP) -e '.[gguf]'
	touch $(GGUF_STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/emomoe demo --out runs/demo

test: $(GGUF_STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2 tests

bench: $(STAMP)
	for b in bench/*.py; do $(BIN)/python $$b --quick || exit 1; done

# A normal (not editable) wheel in dist/.
wheel: $(STAMP)
	rm -rf dist build
	$(BIN)/pip wheel -q --no-deps --no-build-isolation -w dist .

# Rebuild the embedded corpus from pinned Debian/PyPI packages (needs apt-get and dpkg-deb).
corpus: $(STAMP)
	$(BIN)/python scripts/build_corpus

clean:
	rm -rf $(VENV) runs dist build
