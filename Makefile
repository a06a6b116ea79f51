# Corral: `make run` serves it on http://127.0.0.1:8000, `make test` runs the whole suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cksum < pyproject.toml | cut -d' ' -f1)

.PHONY: install run test bench lint format clean

# pip keeps the llama-cpp-python wheel it builds (4-15 minutes) in its cache, so a new
# virtual environment reuses it instead of compiling llama.cpp again.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

run: install
	$(PY) manage.py corral_run

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

bench: install
	$(PY) bench/stream_bench.py $(BENCH_ARGS)
	$(PY) bench/load_bench.py $(LOAD_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
