# bnlab: the two commands are `make book` and `make test`; each sets up .venv if needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NBVAL := --nbval-lax --nbval-current-env --nbval-cell-timeout=300
# One BLAS thread per process: on 2 cores, OpenBLAS's thread pool inside a Jupyter kernel made
# small matrix products 10-20x slower (measured while grading and building in parallel).
export OPENBLAS_NUM_THREADS := 1
export OMP_NUM_THREADS := 1

.PHONY: setup system-deps book test test-unit test-notebooks lab labs grade-bench bench clean

# Create the venv and install the pinned requirements and bnlab (editable), once per change
# of requirements.txt or pyproject.toml.
$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "bnlab needs Python 3.11+"'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

setup: $(STAMP)

# What pip cannot bring: Debian's chromium for the book's rendering test.
system-deps:
	bash .ci/install-system-deps.sh

# Every chapter is executed on every build (a failing cell fails the build).
book: setup
	rm -rf _build/.jupyter_cache _build/jupyter_execute
	$(VENV)/bin/jupyter-book build . --all -W --keep-going
	@echo "The book: $(CURDIR)/_build/html/index.html"

# The whole suite: unit and cross-checks, autograder, lab generator, the book build with its
# browser check, and every lab notebook (solutions and shipped labs) through nbval.
test: setup system-deps
	$(PY) -m pytest tests
	$(PY) -m pytest $(NBVAL) solutions labs

test-unit: setup
	$(PY) -m pytest tests --ignore=tests/test_book.py

test-notebooks: setup
	$(PY) -m pytest $(NBVAL) solutions labs

# Students: open the labs in JupyterLab.
lab: setup
	$(VENV)/bin/jupyter lab labs/

# Regenerate the student labs from the masters in solutions/.
labs: setup
	$(PY) -m bnlab.labs

# The autograder's throughput: a class of 100 lab-1 submissions graded on every core.
grade-bench: setup
	$(PY) tests/class_throughput.py 100

# BatchNorm speed (python -m bnlab.bench): every backend's forward, backward and both on
# ResNet-50's and an MLP's shapes, against torch's own batch norm timed in the same run; on
# the CPU at 1 thread, then on the GPU when torch sees one. Tables on stdout, reports in
# _build/bench/bench-cpu.json and bench-cuda.json. More options: BENCH_ARGS="--threads 2".
BENCH_ARGS ?=
bench: setup
	$(PY) -m bnlab.bench --device cpu --json _build/bench/bench-cpu.json $(BENCH_ARGS)
	@if $(PY) -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then \
		echo; $(PY) -m bnlab.bench --device cuda --json _build/bench/bench-cuda.json $(BENCH_ARGS); \
	else echo "No CUDA device: the GPU benchmark (and the triton backend) skipped."; fi

clean:
	rm -rf _build .pytest_cache .hypothesis
