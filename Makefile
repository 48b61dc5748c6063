# The two commands: `make demo` and `make test`. Each builds .venv when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) examples/pi.py

test: $(STAMP)
	$(VENV)/bin/ruff check mesh node client tests
	$(VENV)/bin/mypy
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) bench/core.py

lint: $(STAMP)
	$(VENV)/bin/ruff check mesh node client tests
	$(VENV)/bin/ruff format --check mesh node client tests
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV)
