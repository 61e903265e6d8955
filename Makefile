# Set-up lives in the targets: the first run creates .venv and installs the pinned project into it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: compare test bench benchmarks clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

compare: $(VENV)/.installed
	$(PY) -m harness.compare burgers

test: $(VENV)/.installed
	$(PY) -m pytest --benchmark-disable -q

benchmarks: $(VENV)/.installed
	$(PY) -m pytest --benchmark-only -q

bench: $(VENV)/.installed
	$(PY) -m harness.bench burgers

clean:
	rm -rf $(VENV) .benchmarks reports/*/
