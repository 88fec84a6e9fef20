# The README's two commands: `make demo` and `make test`. Each creates .venv when it is missing.
# The newest of python3.12, python3.11, python3.10 that runs (a pyenv shim of a version not selected does not).
PYTHON ?= $(or $(shell for p in python3.12 python3.11 python3.10; do $$p -c "" >/dev/null 2>&1 && command -v $$p && break; done),python3)
VENV ?= .venv
BIN := $(VENV)/bin
READY := $(VENV)/.ready

.PHONY: demo test lint bench env

env: $(READY)

$(READY): pyproject.toml requirements-nodeps.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[test]"
	$(BIN)/python -m pip install -q --no-deps -r requirements-nodeps.txt
	@touch $@

demo: $(READY)
	$(BIN)/affectstream demo --output demo_output

# The suite on TEST_WORKERS pytest-xdist processes (the CI box has 2 cores), each test module on one of them: its
# fixtures (conversions, trained models) are built once. TEST_WORKERS=0 runs it in this process.
TEST_WORKERS ?= 2
test: $(READY)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

lint: $(READY)
	$(BIN)/ruff check .

bench: $(READY)
	$(BIN)/python bench/convert.py --quick
	$(BIN)/python bench/input.py
	$(BIN)/python bench/train_step.py
