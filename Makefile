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
	$(BIN)/ruff check nodeproxy tests bench setup.py
	$(BIN)/ruff format --check nodeproxy tests bench setup.py

typecheck: install-test
	$(BIN)/mypy

# The whole suite under each HTTP/1.1 codec: h11 (the reference) and h11-mypyc (compiled).
# The fuzz replays one known seed here, so CI's verdict never depends on luck; new seeds
# are explored by `make fuzz` (a new one per run unless FUZZ_SEED is given).
CI_FUZZ_SEED ?= 20261202
unit: install-test
	NODEPROXY_CODEC=h11 NODEPROXY_FUZZ_SEED=$${NODEPROXY_FUZZ_SEED:-$(CI_FUZZ_SEED)} $(BIN)/pytest -q
	NODEPROXY_CODEC=h11-mypyc NODEPROXY_FUZZ_SEED=$${NODEPROXY_FUZZ_SEED:-$(CI_FUZZ_SEED)} $(BIN)/pytest -q

# The compiled build: the wheel `pip install 'nodeproxy[fast]'` builds (setup.py), here with
# NODEPROXY_COMPILE=1 so that a machine that cannot compile fails instead of quietly testing
# the interpreted fallback. Built from a clean copy of the sources (setuptools' in-tree
# build/ keeps stale files), with pip's build isolation (what users get), then installed
# with the test dependencies into a venv of its own.
WHEEL_SRC := build/wheel-src
WHEEL_DIR := build/wheel
COMPILED_VENV := build/venv-compiled
compiled: $(BIN)/python
	rm -rf $(WHEEL_SRC) $(WHEEL_DIR) $(COMPILED_VENV) && mkdir -p $(WHEEL_SRC)
	tar --exclude=__pycache__ --exclude='*.so' -cf - pyproject.toml setup.py README.md nodeproxy \
		| tar -xf - -C $(WHEEL_SRC)
	NODEPROXY_COMPILE=1 $(BIN)/pip wheel -q --no-deps -w $(WHEEL_DIR) ./$(WHEEL_SRC)
	$(PYTHON) -m venv $(COMPILED_VENV)
	$(COMPILED_VENV)/bin/pip install -q "$$(echo $(WHEEL_DIR)/nodeproxy-*.whl)[test]"

# The whole suite once more against that install (h11-mypyc, as the image ships), from a
# copy of what the tests read without nodeproxy/, so that every test imports the installed
# package; tests/test_wheel.py also builds the interpreted wheel from $(WHEEL_SRC).
COMPILED_SUITE := build/suite-compiled
unit-compiled: compiled
	rm -rf $(COMPILED_SUITE) && mkdir -p $(COMPILED_SUITE)
	tar --exclude=__pycache__ --exclude=bench/out -cf - tests bench deploy docs examples \
		README.md Makefile Dockerfile pyproject.toml setup.py | tar -xf - -C $(COMPILED_SUITE)
	cd $(COMPILED_SUITE) && NODEPROXY_CODEC=h11-mypyc NODEPROXY_EXPECT_BUILD=compiled \
		NODEPROXY_WHEEL="$$(echo $(CURDIR)/$(WHEEL_DIR)/nodeproxy-*.whl)" \
		NODEPROXY_WHEEL_SRC=$(CURDIR)/$(WHEEL_SRC) \
		NODEPROXY_FUZZ_SEED=$${NODEPROXY_FUZZ_SEED:-$(CI_FUZZ_SEED)} \
		$(CURDIR)/$(COMPILED_VENV)/bin/pytest -q

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
