# `make demo` and `make test` each create .venv and install everything from scratch when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

.PHONY: demo demo-train test lint venv clean system-deps

# Debian packages the tests use: dicom3tools (dciodvfy validates every DICOM SEG and SR the bundles write) and
# Orthanc with its DICOMweb plugin (the PACS round trip). Installed when missing, as root or with password-less
# sudo; otherwise a note says which are missing, and the tests that need them are skipped with that reason.
DEBIAN_PKGS := dicom3tools orthanc orthanc-dicomweb

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first and exactly, so pip takes the local CPU wheel and never the CUDA build
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -e ".[dev,fl]"
	touch $(STAMP)

venv: $(STAMP)

system-deps:
	@missing=$$(for p in $(DEBIAN_PKGS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" -eq 0 ]; then SUDO=; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; \
	else echo "note: Debian packages missing ($$missing); install them with apt-get (root) for the DICOM checks"; exit 0; fi; \
	$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing

test: $(STAMP) system-deps
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
