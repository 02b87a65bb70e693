# Each target sets itself up on a fresh machine: it creates .venv and installs the project into it.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DOCS_STAMP := $(VENV)/.installed-docs

.PHONY: demo test test-slow lint docs bench bench-env

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

$(DOCS_STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[docs]'
	touch $(DOCS_STAMP)

# The main demo: linear scalarization against CAME-Grad on the reference report-generation
# setup (synthetic chest radiographs), two seeds, tables and figures in runs/demo (< 10 min).
# Checkpoints are selected by CE F1 without No Finding: on the v2 data the paper's CE F1 keeps
# the first epoch, whose decoder writes one normal-looking report for every study.
demo: $(STAMP)
	$(VENV)/bin/camegrad-rrg compare --quick --select-by ce_example_no_nf_f1 --out runs/demo

# Two workers, one test file each at a time (module fixtures such as the tiny comparison run once).
# A crashed worker is not replaced: pytest-xdist 3.8 can hang at the end of a loadfile run after
# a replacement, so a crash fails the run at once instead. The 30 slowest tests are listed, so
# that the time budget (docs/contributing.md) can be kept from what CI measured.
test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile --max-worker-restart=0 --durations=30

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

lint: $(STAMP)
	$(VENV)/bin/ruff check camegrad_jax tests examples benchmarks

# The documentation site, warnings as errors, in docs/_build/html (-E: every page read again).
docs: $(DOCS_STAMP)
	$(PY) -m sphinx -W --keep-going -E -b html docs docs/_build/html

bench: $(STAMP)
	$(PY) benchmarks/run_benchmarks.py --cvxpy --json benchmarks/results-cpu.json

# The optional PyTorch side of the benchmark (torchjd's CAGrad), in a separate environment.
bench-env:
	test -x .venv-torch/bin/python || python3 -m venv .venv-torch
	.venv-torch/bin/python -m pip install -q torch==2.13.0 'torchjd[cagrad]==0.18.0' numpy
