# petrel: the two quick-start commands are `make serve` and `make test`.
# Each one creates .venv and installs what it needs on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: test lint typecheck bench-engine clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check petrel tests bench
	$(VENV)/bin/ruff format --check petrel tests bench

typecheck: $(STAMP)
	$(VENV)/bin/mypy

bench-engine: $(STAMP)
	$(PY) -m bench.engine

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
