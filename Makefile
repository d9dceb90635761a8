# make quickstart: create .venv, install, run the offline quickstart.
# make test:       create .venv, install, run the test suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install quickstart test lint clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

quickstart: install
	$(PY) -m lightning_dsl fit --config configs/quickstart.yaml

test: install
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check lightning_dsl tests examples benchmarks
	$(VENV)/bin/ruff format --check lightning_dsl tests examples benchmarks
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache
