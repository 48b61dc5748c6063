# The two commands: `make demo` and `make test`. Each builds .venv when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench lint clean chromium

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) examples/pi.py

test: $(STAMP) chromium
	$(VENV)/bin/ruff check mesh node client tests
	$(VENV)/bin/mypy
	$(PY) -m pytest -q

# The dashboard's browser tests use Debian's chromium (Playwright cannot download
# browsers here); installed only as root and only when missing, else they skip.
chromium:
	@if [ ! -x /usr/bin/chromium ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing chromium for the dashboard's browser tests"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium \
			>/dev/null) || echo "chromium could not be installed: browser tests will skip"; \
	fi

bench: $(STAMP)
	$(PY) bench/core.py

lint: $(STAMP)
	$(VENV)/bin/ruff check mesh node client tests
	$(VENV)/bin/ruff format --check mesh node client tests
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV)
