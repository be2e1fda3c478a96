# Everything a newcomer needs: `make run` starts the service, `make test` runs every test.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

CHROMIUM := /usr/bin/chromium

.PHONY: run test bench lint format clean chromium

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/agentruns serve

test: $(STAMP) chromium
	$(BIN)/ruff check .
	$(BIN)/mypy src
	$(BIN)/pytest

# The dashboard's browser tests drive Debian's chromium through Playwright (which cannot
# download a browser of its own here). Installed when missing and we are root with apt-get;
# otherwise those tests skip and say why. CI (.ci/run) requires it.
chromium:
	@if [ ! -x $(CHROMIUM) ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing chromium for the browser tests"; \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
	      || echo "could not install chromium: the browser tests will skip"; \
	  else \
	    echo "no $(CHROMIUM) (apt-get install chromium): the browser tests will skip"; \
	  fi; \
	fi

bench: $(STAMP)
	$(BIN)/python bench/bench.py --quick

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy src

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) agentruns.db* .pytest_cache
