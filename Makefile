# Two entry points that work on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint typecheck unit unit-compiled compiled install install-test bench fuzz clean

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

# The compiled build (nodeproxy/compiled.py): a copy of the tree with the data path compiled
# by mypyc, and the whole suite once more against it (h11-mypyc, as the image ships).
COMPILED := build/compiled
compiled: install-test
	rm -rf $(COMPILED) && mkdir -p $(COMPILED)
	tar --exclude=__pycache__ -cf - nodeproxy | tar -xf - -C $(COMPILED)
	$(BIN)/python -m nodeproxy.compiled $(COMPILED)
	tar --exclude=__pycache__ --exclude=bench/out -cf - tests bench deploy docs examples \
		README.md Makefile Dockerfile pyproject.toml | tar -xf - -C $(COMPILED)

unit-compiled: compiled
	cd $(COMPILED) && PYTHONPATH=$(CURDIR)/$(COMPILED) NODEPROXY_CODEC=h11-mypyc \
		NODEPROXY_EXPECT_BUILD=compiled \
		NODEPROXY_FUZZ_SEED=$${NODEPROXY_FUZZ_SEED:-$(CI_FUZZ_SEED)} $(CURDIR)/$(BIN)/pytest -q

test: lint typecheck unit unit-compiled

# The data-path fuzz for longer than make test's 12 s: make fuzz FUZZ_SECONDS=600 [FUZZ_SEED=N]
FUZZ_SECONDS ?= 300
fuzz: install-test
	$(BIN)/pytest -q -rxX tests/test_fuzz_dataplane.py --fuzz-seconds $(FUZZ_SECONDS) \
		$(if $(FUZZ_SEED),--fuzz-seed $(FUZZ_SEED))

bench: install-test compiled
	$(BIN)/python bench/throughput.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache build
