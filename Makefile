# Two commands for a newcomer: `make run` (daemon on embedded defaults) and `make test` (the suite).
# Both create .venv and install what they need; `make test` also installs dcmtk, Orthanc and
# PostgreSQL 15 from Debian when they are missing and we are root.

VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.cxrd-installed
PYTEST_ARGS ?=

.PHONY: run test venv system-deps bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

system-deps:
	sh deploy/system-deps.sh

run: $(STAMP)
	$(VENV)/bin/cxrd serve

test: $(STAMP) system-deps
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP) system-deps
	for b in benchmarks/*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) var .pytest_cache
