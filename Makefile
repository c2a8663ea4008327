# `make demo` and `make test` each create .venv and install everything from scratch when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

.PHONY: demo demo-train test lint venv clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first and exactly, so pip takes the local CPU wheel and never the CUDA build
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -e ".[dev,fl]"
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	OMP_NUM_THREADS=2 $(PY) -m pytest -q

# every bundle's shipped weights on data the demo generates (a few minutes)
demo: $(STAMP)
	OMP_NUM_THREADS=2 $(PY) scripts/demo.py --out demo_output

# every bundle trained from scratch on demo-scale synthetic data, then evaluated and exported (about 30 minutes)
demo-train: $(STAMP)
	OMP_NUM_THREADS=2 $(PY) scripts/demo.py --train --out demo_output/train

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) demo_output
