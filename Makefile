# Two entry points for a fresh machine: `make demo` (explain real queries with the shipped
# bundle) and `make test` (the test suite). Both create .venv on first use.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: demo test lint bench bundles figures peers clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU build of torch first, so that the trainer extra does not pull a CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[trainer,dev,plot]'
	touch $@

demo: $(BIN)/.installed
	$(BIN)/gmcf-batch sample queries.parquet --rows 10000
	$(BIN)/gmcf-batch explain queries.parquet --id-column id --force

test: $(BIN)/.installed
	$(BIN)/pytest -q

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: $(BIN)/.installed
	$(BIN)/python scripts/benchmark.py --rows 1000000 --workers 2

bundles: $(BIN)/.installed
	$(BIN)/gmcf-batch train adult -o exported/adult --force
	$(BIN)/gmcf-batch train lending-club -o exported/lending-club --force
	$(BIN)/gmcf-batch train mnist-1-to-7 -o exported/mnist-1-to-7 --force

figures: $(BIN)/.installed
	$(BIN)/gmcf-batch plot mnist-1-to-7 --out docs/figures

# Optional environment of the peer methods of `gmcf-batch evaluate` (DiCE, alibi): .venv-peers
peers:
	bash bench/peers/setup.sh

clean:
	rm -rf $(VENV) queries.parquet queries.explained.parquet
