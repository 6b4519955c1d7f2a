# raymail: `make run` starts the product, `make test` runs the whole suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test unit lint bench clean system-deps

# Real SMTP and DNS peers the tests and benchmarks run against (Debian packages).
SYSTEM_TOOLS := /usr/bin/swaks /usr/sbin/postfix /usr/sbin/smtp-source /usr/sbin/smtp-sink /usr/sbin/nsd
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

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

system-deps:
	@for t in $(SYSTEM_TOOLS); do [ -x $$t ] || missing=1; done; \
	perl -MNet::SSLeay -e 1 2>/dev/null || missing=1; \
	if [ -n "$$missing" ]; then \
		echo "installing swaks (with TLS), postfix and nsd (Debian packages) for the SMTP and DNS tests"; \
		echo "postfix postfix/main_mailer_type select No configuration" | $(SUDO) debconf-set-selections; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends swaks libnet-ssleay-perl postfix nsd >/dev/null; \
	fi

test: $(VENV)/.installed-dev system-deps
	$(BIN)/python -m pytest tests

unit: $(VENV)/.installed-dev
	$(BIN)/python -m pytest tests/unit

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .

bench: $(VENV)/.installed-dev system-deps
	$(BIN)/python bench/send_throughput.py
	$(BIN)/python bench/push_latency.py
	$(BIN)/python bench/ws_idle.py
	$(BIN)/python bench/attachments.py
	$(BIN)/python bench/search_live.py
	$(BIN)/python bench/search.py
	$(BIN)/python bench/mailauth.py
	$(BIN)/python bench/smtp_intake.py
	$(BIN)/python bench/outbound.py

clean:
	rm -rf $(VENV) var
