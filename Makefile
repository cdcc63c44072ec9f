# Two commands do everything on a fresh clone: `make demo` and `make test`.
# TORCH_SPEC pins a CPU build here; on a GPU box use e.g. `make test TORCH_SPEC='torch==2.13.0'`
# with your CUDA index configured in pip.
PYTHON ?= python3
TORCH_SPEC ?= torch==2.13.0
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
B ?=

.PHONY: install demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m mlplat.demo

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check .
	$(VENV)/bin/lint-imports
	$(PY) -m mypy

bench: $(STAMP)
	$(PY) -m bench $(B)

clean:
	rm -rf $(VENV) .mlplat .pytest_cache
