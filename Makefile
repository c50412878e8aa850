# `make demo` runs the demo suite on embedded data; `make test` runs the tests.
# Both create (or reuse) a virtual environment in .venv and install what they need.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m lib demo

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/throughput.py
	$(PY) benchmarks/widgets.py

lint: $(STAMP)
	$(VENV)/bin/ruff check lib tests benchmarks

clean:
	rm -rf outputs/* data/cache
