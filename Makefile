# raymail: `make run` starts the product, `make test` runs the whole suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test unit lint bench clean

$(BIN)/python:
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "raymail needs Python 3.11+"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	@touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e ".[dev]"
	@touch $@ $(VENV)/.installed

run: $(VENV)/.installed
	$(BIN)/raymail up --config configs/default.toml

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest tests

unit: $(VENV)/.installed-dev
	$(BIN)/python -m pytest tests/unit

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .

bench: $(VENV)/.installed-dev
	$(BIN)/python bench/send_throughput.py
	$(BIN)/python bench/push_latency.py
	$(BIN)/python bench/ws_idle.py
	$(BIN)/python bench/attachments.py
	$(BIN)/python bench/search_live.py
	$(BIN)/python bench/search.py

clean:
	rm -rf $(VENV) var
