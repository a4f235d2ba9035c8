# Quick start: `make demo` (main job) and `make test` (the test suite). Each sets up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCK := requirements/lock-py311-cpu.txt
EXTRAS := requirements/app.txt requirements/lmms.txt
PYTEST_ARGS ?=
# Debian's chromium drives the web page's browser test (playwright downloads no browser here).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup browser demo demo-model test clean
# Where `make demo-model` trains (a finished run there is resumed, never overwritten).
DEMO_RUNS ?= runs/demo

setup: $(STAMP)

$(STAMP): setup.cfg pyproject.toml $(LOCK) $(EXTRAS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first and pinned: an unpinned resolve would pull a multi-GB CUDA build.
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -c $(LOCK) -e '.[torch,dev]'
	# The web page, plots and lmms-eval, at exact pins without resolution (each file says why).
	$(BIN)/python -m pip install --quiet --no-deps $(addprefix -r ,$(EXTRAS))
	touch $(STAMP)

browser:
	@command -v chromium >/dev/null || { \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends chromium; }

demo: $(STAMP)
	$(BIN)/python -m vidlada_jax.launch.demo

# Retrains the bundled demo model (about an hour on 2 CPU cores) and packages it into assets/.
demo-model: $(STAMP)
	$(BIN)/python -m vidlada_jax.launch.train --config configs/demo.py:stage=tower --workdir $(DEMO_RUNS)/tower
	$(BIN)/python -m vidlada_jax.launch.train --config configs/demo.py:init=$(DEMO_RUNS)/tower --workdir $(DEMO_RUNS)/qa
	$(BIN)/python -m vidlada_jax.launch.evaluate --checkpoint $(DEMO_RUNS)/qa --split test \
	  --output-dir $(DEMO_RUNS)/evaluate --resume --json > $(DEMO_RUNS)/evaluation.json
	$(BIN)/python -m vidlada_jax.launch.package_demo --tower-workdir $(DEMO_RUNS)/tower \
	  --workdir $(DEMO_RUNS)/qa --evaluation $(DEMO_RUNS)/evaluation.json

test: $(STAMP) browser
	$(BIN)/python -m pytest -q -n 2 --dist loadfile $(PYTEST_ARGS) tests

clean:
	rm -rf $(VENV) *.egg-info
