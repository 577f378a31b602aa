# Two commands do all the set-up on a fresh machine:
#   make demo   virtual environment, install, find and verify the data, then the whole story in
#               minutes (scripts/demo.py): an LSTM, a CNN-RNN on mosaics, its label-embedding
#               map, and mistake severity by the hierarchy and by the embeddings
#   make test   the same install, then ruff and the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_EPOCHS ?= 2

.PHONY: setup demo test test-fast lint bench reproduce clean

$(BIN)/cnnrnn: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e '.[dev]'
	touch $@

setup: $(BIN)/cnnrnn

demo: setup
	$(BIN)/cnnrnn data check || $(BIN)/cnnrnn data download
	$(BIN)/python scripts/demo.py --epochs $(DEMO_EPOCHS)

lint: setup
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest -q

# the inner loop: the tests not marked slow (every test that reads Fashion-MNIST is: conftest.py)
test-fast: lint
	$(BIN)/python -m pytest -q -m "not slow"

# Every run behind docs/results.md and README.md, then their generated tables (resumable).
# QUICK=1: the same steps at tiny sizes into runs/reproduce-quick/ (minutes; CI runs it).
JOBS ?= 1
reproduce: setup
	$(BIN)/python scripts/reproduce.py --jobs $(JOBS) $(if $(QUICK),--quick --check,)

bench: setup
	scripts/bench_single_label.sh runs/bench

clean:
	rm -rf runs .pytest_cache .ruff_cache
