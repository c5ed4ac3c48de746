# The two commands: `make demo` and `make test`. Both set up a local .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test bench corpus clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test,hf,corpus,eval]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/emomoe demo --out runs/demo

test: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2 tests

bench: $(STAMP)
	for b in bench/*.py; do $(BIN)/python $$b --quick || exit 1; done

# Rebuild the embedded corpus from pinned Debian/PyPI packages (needs apt-get and dpkg-deb).
corpus: $(STAMP)
	$(BIN)/python scripts/build_corpus

clean:
	rm -rf $(VENV) runs
