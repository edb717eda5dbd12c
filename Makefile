# Course Makefile. Every target sets itself up: a fresh machine with Python 3.10+ and pip is enough.
#   make lab    -> virtual environment + data (synthetic if no real data) + JupyterLab on notebooks/
#   make test   -> the same set-up, then every test and both notebooks under nbval (smoke profile)
#   make test-unit -> the quick loop: tests without the slow and browser ones
#   make hub    -> a JupyterHub for a workshop room on this machine (see README: Running a workshop)
# Variables you may override:  PYTHON, EXTRAS, LAB_IP, LAB_PORT, LAB_ARGS, HUB_ARGS, PROFILE, LABKIT_DATA,
#                              LABKIT_RUNS

PYTHON    ?= python3
VENV      ?= .venv
PY        := $(VENV)/bin/python
# A machine with an NVIDIA driver gets TensorFlow's CUDA build; everything else the CPU build.
HAS_GPU   := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1)
EXTRAS    ?= torch,$(if $(HAS_GPU),tf-gpu,tf),dev
LAB_IP    ?= 127.0.0.1
LAB_PORT  ?= 8888
LAB_ARGS  ?= --no-browser
# On 127.0.0.1 only this machine can connect: no token, so the printed address just works.
# Bound to another address, JupyterLab keeps its usual token (or set LAB_TOKEN).
LAB_TOKEN ?= $(if $(filter 127.0.0.1 localhost,$(LAB_IP)),,$(shell od -An -N16 -tx1 /dev/urandom | tr -d ' \n'))
ROOT_ARG  := $(if $(filter 0,$(shell id -u)),--allow-root)
PROFILE   ?= cpu
# Options of `deploy/hub.py` (--help lists them), e.g. HUB_ARGS="--accounts 25 --ip 0.0.0.0"
HUB_ARGS  ?=
# JupyterHub's proxy (npm package configurable-http-proxy), installed into the venv from deploy/proxy/
PROXY     := $(VENV)/proxy/node_modules/.bin/configurable-http-proxy
# JupyterLab settings for every lab this course starts: no news prompt (deploy/jupyterlab/overrides.json)
LAB_SETTINGS := --LabApp.app_settings_dir=$(CURDIR)/deploy/jupyterlab
export LABKIT_DATA ?= $(CURDIR)/data
export LABKIT_RUNS ?= $(CURDIR)/runs

comma     := ,
STAMP     := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d" " -f1)-$(subst $(comma),_,$(EXTRAS))
NOTEBOOKS := notebooks/01_vnet_prostate.ipynb notebooks/02_cfcm_lung.ipynb

.PHONY: help setup proxy data lab hub test test-unit test-notebooks test-browser test-gpu run student \
        bench refresh-checks export doctor fetch clean

help:
	@echo "make lab | hub | test | test-unit | run [PROFILE=cpu] | data | student | bench | refresh-checks | doctor | clean"

# ---- set-up: one virtual environment, reinstalled only when pyproject.toml or EXTRAS change ----
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	@rm -f $(VENV)/.installed-*
	@touch $@

setup: $(STAMP)

# npm missing or offline: say so and go on (only `make hub` and its test need the proxy).
$(PROXY): deploy/proxy/package.json deploy/proxy/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
	  mkdir -p $(VENV)/proxy && cp deploy/proxy/package.json deploy/proxy/package-lock.json $(VENV)/proxy/ && \
	  npm ci --prefix $(VENV)/proxy --omit=dev --no-audit --no-fund --loglevel=error && touch $@ \
	  || echo "warning: npm could not install configurable-http-proxy; make hub needs it"; \
	else echo "note: npm not found, so JupyterHub's proxy is not installed (only make hub needs it)"; fi

proxy: $(PROXY)

data: setup
	$(PY) data_scripts/make_phantoms.py --root "$(LABKIT_DATA)"

fetch: setup
	$(PY) data_scripts/fetch_prostate.py --root "$(LABKIT_DATA)"
	$(PY) data_scripts/fetch_montgomery.py --root "$(LABKIT_DATA)"

doctor: setup
	$(PY) -m labkit doctor

lab: data
	$(PY) -m labkit doctor --brief || true
	cd notebooks && ../$(VENV)/bin/jupyter lab --ip=$(LAB_IP) --port=$(LAB_PORT) $(LAB_SETTINGS) \
	  --IdentityProvider.token='$(LAB_TOKEN)' $(ROOT_ARG) $(LAB_ARGS)

# One JupyterHub for a room: an account and a private lab per student (root: system accounts).
hub: data student proxy
	$(PY) deploy/hub.py $(HUB_ARGS)

# ---- tests ----
# make test: everything (slow and browser tests included), then both notebooks under nbval.
# make test-unit: the quick loop while editing (slow and browser tests skipped).
test: data proxy
	LABKIT_HEADLESS=1 LABKIT_RUNS=$(CURDIR)/build/test-runs $(PY) -m pytest tests -q
	$(MAKE) --no-print-directory test-notebooks

test-unit: setup
	LABKIT_HEADLESS=1 LABKIT_RUNS=$(CURDIR)/build/test-runs $(PY) -m pytest tests -q -m "not slow and not browser"

test-browser: setup proxy
	LABKIT_HEADLESS=1 $(PY) -m pytest tests -m browser -q -rs

test-notebooks: data
	LABKIT_PROFILE=smoke LABKIT_HEADLESS=1 LABKIT_RUNS=$(CURDIR)/build/test-runs \
	  $(PY) -m pytest --nbval-lax --nbval-sanitize-with tests/nbval_sanitize.cfg -p no:cacheprovider \
	  --nbval-cell-timeout=600 -q $(NOTEBOOKS)

test-gpu: data
	$(PY) -m labkit doctor
	LABKIT_PROFILE=gpu LABKIT_HEADLESS=1 $(PY) -m pytest --nbval-lax \
	  --nbval-sanitize-with tests/nbval_sanitize.cfg --nbval-cell-timeout=36000 -q $(NOTEBOOKS)

# ---- headless runs, student notebooks, benchmarks ----
run: data
	$(PY) data_scripts/run_notebooks.py --profile $(PROFILE) --out build $(NOTEBOOKS)

student: setup
	$(PY) data_scripts/make_student_notebooks.py --out build/student $(NOTEBOOKS)

refresh-checks: data
	LABKIT_PROFILE=smoke LABKIT_HEADLESS=1 LABKIT_RUNS=$(CURDIR)/build/test-runs \
	  $(PY) data_scripts/refresh_checks.py $(NOTEBOOKS)

export: setup
	$(PY) data_scripts/export.py $(NOTEBOOKS)

bench: data
	$(PY) benchmarks/run_all.py --out benchmarks/results

clean:
	rm -rf build runs .pytest_cache
