# The README's two commands: `make demo` and `make test`. Each creates .venv when it is missing.
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
READY := $(VENV)/.ready

.PHONY: demo test bench env

env: $(READY)

$(READY): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[test]"
	@touch $@

demo: $(READY)
	$(BIN)/affectstream demo --output demo_output

test: $(READY)
	$(BIN)/python -m pytest -q

bench: $(READY)
	$(BIN)/python bench/convert.py
	$(BIN)/python bench/input.py
	$(BIN)/python bench/train_step.py
