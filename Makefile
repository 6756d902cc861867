# ddo_lightning — two commands do everything on a fresh machine:
#   make demo   install, then DDO rounds with a per-round search and the MLE control from the shipped
#               converged 2-D reference (CPU, < 5 min); again: resumes the finished run, rewrites nothing
#   make test   install, then the fast tier of the test suite: every test not marked `slow` (< 8 min)
#   make test-slow  install, then the end-to-end tier: `slow` tests, and the Inception (`fid`) tests in .venv-fid
#   make test-all   both tiers, as CI runs them (.ci/run); which test is `slow`: docs/testing.md
#   make bench  install, then the CPU benchmarks (benchmarks/, < 15 min; not part of `make test`)
#   make lint   install, then `ruff format --check` and `ruff check` (settings in pyproject.toml)
# Everything lives in a local virtual environment, .venv/.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# torch for machines without CUDA. pip finds a CPU build of this version on the project's machines;
# elsewhere set TORCH_SPEC (e.g. `make test TORCH_SPEC=torch`) or install torch first (docs/install.md).
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=
# Inception FID goes through torch-fidelity, which needs a torchvision matching torch exactly. PyPI has no
# torchvision for the CPU-only torch above, so on such machines the `fid` tests run in a second venv with
# a consistent pair (CUDA builds that also run on CPU, ~5.8 GB from the local wheel cache). Only
# `make test-slow` (and `make test-fid`) build it: `make test` skips the `fid` tests when .venv lacks torch-fidelity.
FID_VENV ?= .venv-fid
FID_TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
FID_PY := $(FID_VENV)/bin/python
# The `bench` extra of pyproject.toml, installed WITHOUT dependencies: k-diffusion requires torchvision,
# and resolving it would replace a CPU-only torch. BENCH_ARGS go to `python -m benchmarks` (e.g. --quick).
BENCH_SPEC ?= k-diffusion==0.1.1.post1 torchdiffeq==0.2.5 torchsde==0.2.6 trampoline==0.1.2
BENCH_ARGS ?=

.PHONY: install install-fid demo references demo-digits demo-digitmix demo-tokens test test-slow test-all test-fid lint bench clean help

help:
	@echo "make demo | make references | make demo-digits | make demo-digitmix | make demo-tokens | make test | make test-slow | make test-all | make test-fid | make lint | make bench | make clean"
	@echo "  test: fast tier (not slow); test-slow: end-to-end tier (slow, then fid in .venv-fid); test-all: both (CI)"

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
	  echo "[install] CUDA machine: pip install torch torchvision"; $(PIP) install -q torch torchvision; \
	else \
	  echo "[install] no CUDA: pip install $(TORCH_SPEC)"; $(PIP) install -q "$(TORCH_SPEC)"; fi
	@if $(PY) -c "import torchvision" >/dev/null 2>&1; then \
	  echo "[install] torchvision present: with torch-fidelity (Inception FID)"; $(PIP) install -q -e ".[test,fid,latent]"; \
	else \
	  echo "[install] no torchvision for this torch: without torch-fidelity (Inception FID: make install-fid)"; \
	  $(PIP) install -q -e ".[test,latent]"; fi
	@touch $@

# A second environment for Inception FID on CPU-only machines (see FID_TORCH_SPEC).
$(FID_VENV)/.installed: pyproject.toml Makefile
	@[ -x $(FID_PY) ] || $(PYTHON) -m venv $(FID_VENV)
	$(FID_PY) -m pip install -q $(FID_TORCH_SPEC)
	$(FID_PY) -m pip install -q -e ".[test,fid,latent]"
	@touch $@

install-fid: $(FID_VENV)/.installed

install: $(VENV)/.installed

demo: install
	@start=$$(date +%s); \
	$(VENV)/bin/ddo fit --config configs/toy2d.yaml && \
	echo "[demo] results in outputs/toy2d (summary.json, samples.png) in $$(( $$(date +%s) - start )) s; its MLE reference: references/toy2d_ring8.pt (make references)"

# The demos' shipped MLE references, remade from their pretraining presets (fixed seeds), each checked to be
# on a plateau before it is written (scripts/make_reference.py; about 10 min on 2 CPU cores for the toys, about
# two hours for digitmix's 110,000 steps).
references: install
	$(PY) scripts/make_reference.py --config configs/toy2d_pretrain.yaml --out references/toy2d_ring8.pt --monitor mmd --mode min --figure docs/reference_toy2d_ring8.png
	$(PY) scripts/make_reference.py --config configs/toy2d_grid25_pretrain.yaml --out references/toy2d_grid25.pt --monitor mmd --mode min --figure docs/reference_toy2d_grid25.png
	$(PY) scripts/make_reference.py --config configs/digitmix_pretrain.yaml --out references/digitmix.pt --monitor logp_w1 --mode min --figure docs/reference_digitmix.png

# Digits: a small EDM UNet pretrained by MLE on the embedded 8x8 digits, then 3 DDO rounds and the MLE control
# (19.5 min on 2 idle CPU cores).
demo-digits: install
	@start=$$(date +%s); \
	$(VENV)/bin/ddo fit --config configs/digits_pretrain.yaml && \
	$(VENV)/bin/ddo fit --config configs/digits.yaml && \
	echo "[demo-digits] results in outputs/digits (summary.json, samples.png; MLE reference: outputs/digits_pretrain) in $$(( $$(date +%s) - start )) s"

# Image demo: a small EDM UNet on 8x8 images of a known Gaussian mixture fitted to the digits, from its shipped
# MLE reference: 2 DDO rounds with a per-round search, the MLE control; exact density metrics (docs/demos.md).
demo-digitmix: install
	@start=$$(date +%s); \
	$(VENV)/bin/ddo fit --config configs/digitmix.yaml && \
	echo "[demo-digitmix] results in outputs/digitmix (summary.json, samples.png) in $$(( $$(date +%s) - start )) s; its MLE reference: references/digitmix.pt (make references)"

# Tokens: a tiny GPT pretrained by MLE on a known Markov source, then 3 DDO rounds; exact KL (~5 min CPU).
demo-tokens: install
	@start=$$(date +%s); \
	$(VENV)/bin/ddo fit --config configs/tokens_pretrain.yaml && \
	$(VENV)/bin/ddo fit --config configs/tokens.yaml && \
	echo "[demo-tokens] results in outputs/tokens (summary.json, samples.png; MLE reference: outputs/tokens_pretrain) in $$(( $$(date +%s) - start )) s"

# Two tiers (docs/testing.md says which test is `slow` and why). The fast tier: every test not marked `slow`,
# at least one of every subsystem. Its `fid` tests (Inception through torch-fidelity) skip when .venv has no
# torch-fidelity (CPU-only torch): they run in `make test-slow`, which builds .venv-fid for them.
test: install
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

# The end-to-end tier: the `slow` tests (whole demos, the notebook, presets as shipped, multi-process
# kill/signal/resume runs, a real SLURM cluster), then every `fid` test in .venv-fid unless .venv has torch-fidelity.
test-slow: install
	$(PY) -m pytest -m slow $(PYTEST_ARGS)
	@if $(PY) -c "import torch_fidelity" >/dev/null 2>&1; then echo "[test-slow] torch-fidelity in $(VENV): its fid tests ran in make test and above"; \
	else $(MAKE) --no-print-directory test-fid; fi

# Both tiers: everything CI runs (.ci/run also runs make lint first).
test-all: test test-slow

test-fid: install-fid
	$(FID_PY) -m pytest -m fid $(PYTEST_ARGS)

# Formatting and lint (ruff, from the `test` extra); `ruff format . && ruff check --fix .` repairs most findings.
lint: install
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

# CPU benchmarks: tables on stdout, JSON per benchmark and benchmarks/results/summary.md (docs/performance.md).
bench: install
	$(PIP) install -q --no-deps $(BENCH_SPEC)
	$(PY) -m benchmarks $(BENCH_ARGS)

clean:
	rm -rf outputs .pytest_cache
