# Two entry points: `make demo` and `make test`. Each creates .venv from the declared
# dependencies in pyproject.toml, pinned by constraints.txt, when it is missing or out of date.
PYTHON ?= python3
VENV := .venv
PIP := $(VENV)/bin/python -m pip
STAMP := $(VENV)/.installed
CORE := .venv-core

.PHONY: demo test lint docs core-check bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c constraints.txt -e '.[experiments,minari,docs,test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/tdntk toy --preset quick --out runs/toy

test: lint $(STAMP) core-check docs
	$(VENV)/bin/python -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks docs

# The documentation site, warnings as errors (a broken reference fails).
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet --site-dir build/site

# `pip install .` alone (the closed-form core) runs a prediction without the extras.
core-check:
	test -x $(CORE)/bin/python || $(PYTHON) -m venv $(CORE)
	$(CORE)/bin/python -m pip install --quiet --upgrade pip
	$(CORE)/bin/python -m pip install --quiet -c constraints.txt .
	$(CORE)/bin/python tests/core_install.py

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do $(VENV)/bin/python $$b || exit 1; done

clean:
	rm -rf $(VENV) $(CORE) build src/*.egg-info .pytest_cache
