# The two commands: `make demo` and `make test`. Each builds .venv when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# pytest processes for `make test`: its tests mostly wait on real nodes and timers,
# so two processes share this 2-core machine well; each module stays on one process.
TEST_PROCS ?= 2

.PHONY: demo test bench lint clean chromium typecheck

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) examples/pi.py

test: $(STAMP) chromium
	$(VENV)/bin/ruff check mesh node client tests
	$(MAKE) --no-print-directory typecheck
	$(PY) -m pytest -q -n $(TEST_PROCS) --dist loadscope

# mypy sees the package as it installs: node/ and client/ as mesh.node and
# mesh.client. A tree of symlinks gives it that layout without copying a file.
TYPECHECK := build/typecheck
typecheck: $(STAMP)
	rm -rf $(TYPECHECK) && mkdir -p $(TYPECHECK)/mesh
	for f in mesh/*.py mesh/py.typed; do ln -s ../../../$$f $(TYPECHECK)/mesh/; done
	ln -s ../../../node $(TYPECHECK)/mesh/node
	ln -s ../../../client $(TYPECHECK)/mesh/client
	cd $(TYPECHECK) && ../../$(VENV)/bin/mypy --config-file ../../pyproject.toml -p mesh

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
	$(MAKE) --no-print-directory typecheck

clean:
	rm -rf $(VENV)
