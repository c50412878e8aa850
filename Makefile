# `make demo` runs the demo suite on embedded data; `make test` runs the tests.
# Both create (or reuse) a virtual environment in .venv and install what they need.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench gpu-check lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m lib demo

test: $(STAMP)
	$(PY) -m pytest -q -n 2

bench: $(STAMP)
	$(PY) benchmarks/throughput.py
	$(PY) benchmarks/widgets.py

# On a GPU machine, with the interpreter that has torch (no venv: it would fetch torch again):
#   make gpu-check CATS=/kaggle/input/cats-faces-64x64-for-generative-models [OUT=dir]
gpu-check:
	PYTHON=$(PYTHON) bash benchmarks/gpu_check.sh $(if $(CATS),--cats $(CATS)) \
		$(if $(OUT),--out $(OUT)) $(GPU_CHECK_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check lib tests benchmarks

clean:
	find outputs -mindepth 1 -maxdepth 1 ! -name README.md -exec rm -rf {} +
	rm -rf data/cache
