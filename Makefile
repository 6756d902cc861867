# ddo_lightning — two commands do everything on a fresh machine:
#   make demo   install, then pretrain the 2-D reference by MLE and run 3 DDO rounds (CPU, < 5 min)
#   make test   install, then run the whole test suite (slow end-to-end tests included)
# Everything lives in a local virtual environment, .venv/.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# torch for machines without CUDA. pip finds a CPU build of this version on the project's machines;
# elsewhere set TORCH_SPEC (e.g. `make test TORCH_SPEC=torch`) or install torch first (see README).
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: install demo demo-digits test test-fast clean help

help:
	@echo "make demo | make demo-digits | make test | make test-fast | make clean"

# An existing torch is never replaced: if the interpreter already imports torch, the venv sees it
# (--system-site-packages); otherwise a CUDA machine gets pip's default torch and a CPU machine TORCH_SPEC.
$(VENV)/.installed: pyproject.toml Makefile
	@if [ ! -x $(PY) ]; then \
	  if $(PYTHON) -c "import torch" >/dev/null 2>&1; then \
	    echo "[install] torch found in $(PYTHON): reusing it"; $(PYTHON) -m venv --system-site-packages $(VENV); \
	  else $(PYTHON) -m venv $(VENV); fi; fi
	@if $(PY) -c "import torch" >/dev/null 2>&1; then \
	  echo "[install] torch $$($(PY) -c 'import torch; print(torch.__version__)') already installed: left alone"; \
	elif command -v nvidia-smi >/dev/null 2>&1; then \
	  echo "[install] CUDA machine: pip install torch"; $(PIP) install -q torch; \
	else \
	  echo "[install] no CUDA: pip install $(TORCH_SPEC)"; $(PIP) install -q "$(TORCH_SPEC)"; fi
	$(PIP) install -q -e ".[test]"
	@touch $@

install: $(VENV)/.installed

demo: install
	@start=$$(date +%s); \
	$(VENV)/bin/ddo fit --config configs/toy2d_pretrain.yaml && \
	$(VENV)/bin/ddo fit --config configs/toy2d.yaml && \
	echo "[demo] wrote outputs/demo/summary.json and outputs/demo/samples.png in $$(( $$(date +%s) - start )) s"

# Digits: a small EDM UNet pretrained by MLE on the embedded 8x8 digits, then 3 DDO rounds (~20 min CPU).
demo-digits: install
	@start=$$(date +%s); \
	$(VENV)/bin/ddo fit --config configs/digits_pretrain.yaml && \
	$(VENV)/bin/ddo fit --config configs/digits.yaml && \
	echo "[demo-digits] wrote outputs/digits/summary.json and outputs/digits/samples.png in $$(( $$(date +%s) - start )) s"

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf outputs .pytest_cache
