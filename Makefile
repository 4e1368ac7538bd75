# `make demo` and `make test` are the whole set-up: each creates .venv if missing and installs what it needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

.PHONY: install demo test clean-demo

$(INSTALLED): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	touch $(INSTALLED)

install: $(INSTALLED)

demo: install
	$(PY) demo.py

test: install
	$(PY) -m pytest -q tests

clean-demo:
	rm -rf data/toy_sop demo_output
