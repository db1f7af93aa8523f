# Two commands for users:
#   make run    set up .venv from requirements.txt and run the main job
#   make test   set up .venv and run the tests
# Options: make run MIRROR=../shared/data/lfw STORAGE=s3://bucket/prefix ARGS="--train-minutes 10"
# Maintainers: make lock  (requirements.in -> pinned requirements.txt; UPGRADE=1 to move pins)

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
MIRROR ?=
STORAGE ?=
ARGS ?=
UPGRADE ?=

.PHONY: venv run test bench lock

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

run: venv
	$(PY) -m flows.main $(if $(MIRROR),--mirror $(MIRROR)) $(if $(STORAGE),--storage $(STORAGE)) $(ARGS)

test: venv
	$(PY) -m ruff check .
	$(PY) -m pytest -q

bench: venv
	$(PY) -m bench.data_prep

lock:
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install --quiet pip-tools==7.6.2
	.venv-lock/bin/pip-compile --quiet --no-emit-index-url --no-emit-find-links --allow-unsafe --strip-extras \
		$(if $(UPGRADE),--upgrade) --output-file requirements.txt requirements.in
