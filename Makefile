# Two commands do all the set-up on a fresh machine:
#   make demo   virtual environment, install, find and verify the data, train the default LSTM
#               briefly and print its table
#   make test   the same install, then ruff and the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_EPOCHS ?= 3

.PHONY: setup demo test lint bench reproduce clean

$(BIN)/cnnrnn: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e '.[dev]'
	touch $@

setup: $(BIN)/cnnrnn

demo: setup
	$(BIN)/cnnrnn data check || $(BIN)/cnnrnn data download
	$(BIN)/cnnrnn train --task single-label --model lstm --epochs $(DEMO_EPOCHS) \
		--out runs/demo-lstm-$$(date +%Y%m%d-%H%M%S)

lint: setup
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest -q

# Every run behind docs/results.md and README.md, then their generated tables (resumable).
# QUICK=1: the same steps at tiny sizes into runs/reproduce-quick/ (minutes; CI runs it).
JOBS ?= 1
reproduce: setup
	$(BIN)/python scripts/reproduce.py --jobs $(JOBS) $(if $(QUICK),--quick --check,)

bench: setup
	scripts/bench_single_label.sh runs/bench

clean:
	rm -rf runs .pytest_cache .ruff_cache
