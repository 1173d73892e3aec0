# Two entry points that work on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint typecheck unit install install-test bench fuzz clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e '.[fast]'
	touch $@

$(VENV)/.installed-test: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e '.[test]'
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

demo: install
	$(BIN)/nodeproxy demo

lint: install-test
	$(BIN)/ruff check nodeproxy tests bench
	$(BIN)/ruff format --check nodeproxy tests bench

typecheck: install-test
	$(BIN)/mypy

# The whole suite under each HTTP/1.1 codec: h11 (the reference) and h11-mypyc (compiled).
# The fuzz replays one known seed here, so CI's verdict never depends on luck; new seeds
# are explored by `make fuzz` (a new one per run unless FUZZ_SEED is given).
CI_FUZZ_SEED ?= 20261202
unit: install-test
	NODEPROXY_CODEC=h11 NODEPROXY_FUZZ_SEED=$${NODEPROXY_FUZZ_SEED:-$(CI_FUZZ_SEED)} $(BIN)/pytest -q
	NODEPROXY_CODEC=h11-mypyc NODEPROXY_FUZZ_SEED=$${NODEPROXY_FUZZ_SEED:-$(CI_FUZZ_SEED)} $(BIN)/pytest -q

test: lint typecheck unit

# The data-path fuzz for longer than make test's 12 s: make fuzz FUZZ_SECONDS=600 [FUZZ_SEED=N]
FUZZ_SECONDS ?= 300
fuzz: install-test
	$(BIN)/pytest -q -rxX tests/test_fuzz_dataplane.py --fuzz-seconds $(FUZZ_SECONDS) \
		$(if $(FUZZ_SEED),--fuzz-seed $(FUZZ_SEED))

bench: install-test
	$(BIN)/python bench/throughput.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
