# Two commands for users:
#   make run    set up .venv from requirements.txt and run the main job
#   make test   set up .venv and run the tests
# Options: make run MIRROR=../shared/data/lfw STORAGE=s3://bucket/prefix

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
MIRROR ?=
STORAGE ?=
ARGS ?=

# Offline-friendly Prefect defaults; values already in the environment win.
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 120
export TF_ENABLE_ONEDNN_OPTS ?= 1

.PHONY: venv run test bench

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

run: venv
	$(PY) -m flows.main $(if $(MIRROR),--mirror $(MIRROR)) $(if $(STORAGE),--storage $(STORAGE)) $(ARGS)

test: venv
	$(PY) -m pytest -q

bench: venv
	$(PY) -m bench.data_prep
