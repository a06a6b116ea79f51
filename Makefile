# Corral: `make run` serves it on http://127.0.0.1:8000, `make test` runs the whole suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cksum < pyproject.toml | cut -d' ' -f1)

.PHONY: install run test bench lint format clean

# llama.cpp is built for this CPU (-march=native) but without its AMX kernels: on machines
# whose CPU advertises AMX to a VM that cannot run it, they crash every model load with
# SIGSEGV in ggml_backend_amx_mul_mat. GCC's -mno-* wins over -march=native, so AVX-512
# stays. A GPU worker sets its own, e.g. CMAKE_ARGS="-DGGML_CUDA=on" make install.
NO_AMX := -mno-amx-tile -mno-amx-int8 -mno-amx-bf16
CMAKE_ARGS ?= -DCMAKE_C_FLAGS="$(NO_AMX)" -DCMAKE_CXX_FLAGS="$(NO_AMX)"

# pip keeps the llama-cpp-python wheel it builds (4-15 minutes) in its cache, so a new
# virtual environment reuses it instead of compiling llama.cpp again.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "Installing Corral's Python packages into $(VENV)."
	@echo "The first time, pip compiles llama-cpp-python (llama.cpp) from source: about 5 to 15"
	@echo "minutes on 2 cores, with no output meanwhile. Later installs reuse pip's cached wheel."
	@$(PY) -m pip install --quiet --upgrade pip
	@CMAKE_ARGS='$(CMAKE_ARGS)' $(PY) -m pip install --quiet -e '.[dev]'
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)
	@echo "Installed."

install: $(STAMP)

run: install
	@$(PY) manage.py corral_run

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

bench: install
	$(PY) bench/stream_bench.py $(BENCH_ARGS)
	$(PY) bench/load_bench.py --raw $(LOAD_ARGS)
	$(PY) bench/load_bench.py --rounds 1,8 --users 8 --tokens 128 --raw
	$(PY) bench/engine_bench.py --model data/models/gemma-3-270m-q4_k_m.gguf --batches 1,8 --join 1500
	$(PY) bench/send_bench.py --rounds 8,32 --users 8 --repeats 5

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
