# clipasso-pl: every verb installs into .venv first when needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARGS ?=
EXPERIMENT ?=

EXP := $(or $(EXPERIMENT),default)
SWEEP_DIR = multirun/$(EXP)/$(shell date +%Y-%m-%d_%H-%M-%S)

.PHONY: install app-install app sketch test test-full bench bench-render gpu-check sweep clean

install: $(STAMP)

# Reinstall only when the pinned requirements or the package metadata change.
$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

# The web app's extra (gradio, playwright for the browser tests) beside the pinned requirements.txt.
APP_STAMP := $(VENV)/.installed-app
app-install: $(APP_STAMP)

$(APP_STAMP): $(STAMP) requirements-app.txt requirements-gradio.txt
	$(PY) -m pip install -q --disable-pip-version-check -c requirements.txt -r requirements-app.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -r requirements-gradio.txt
	touch $(APP_STAMP)

# The web app on http://127.0.0.1:7860, e.g. ARGS="preset=smoke" (README "Web app").
app: app-install
	$(VENV)/bin/clipasso-pl app $(ARGS)

sketch: install
	$(VENV)/bin/clipasso-pl sketch $(ARGS)

# The fast loop (unit tests + one end-to-end smoke per command, a few minutes on 2 cores): every test not
# marked slow. test-full: everything (CI). Markers: pyproject.toml [tool.pytest.ini_options].
test: install
	HF_HUB_OFFLINE=1 WANDB_MODE=offline $(PY) -m pytest -m "not slow" $(ARGS)

test-full: install
	HF_HUB_OFFLINE=1 WANDB_MODE=offline $(PY) -m pytest $(ARGS)

# Hydra multirun over configs/experiment/$(EXPERIMENT).yaml, then the report of that sweep.
sweep: install
	@dir=$(SWEEP_DIR); \
	$(VENV)/bin/clipasso-pl sketch experiment=$(EXP) hydra.sweep.dir=$$dir $(ARGS) && \
	$(VENV)/bin/clipasso-pl report $$dir

# The full training step per phase, bare loop vs Trainer (configs/bench.yaml), e.g. ARGS="preset=smoke".
bench: install
	$(VENV)/bin/clipasso-pl bench $(ARGS)

# The renderer alone (forward, forward+backward), e.g. ARGS="--threads 1".
bench-render: install
	$(VENV)/bin/clipasso-pl bench bench=render $(ARGS)

# On a CUDA machine, under 8 minutes: the CUDA tests, bench RN101 (fp32, bf16, tf32), a timed 2001-step sketch,
# 2-GPU DDP where there are two; writes gpu-check.md (scripts/gpu_check.py). Stops at once without CUDA.
gpu-check: install
	$(PY) scripts/gpu_check.py $(ARGS)

clean:
	rm -rf outputs multirun .pytest_cache
