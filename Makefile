# Two commands do everything on a fresh machine with Python 3.10+:
#   make demo   creates .venv, installs anomalib-wsi and runs the synthetic demo (CPU, minutes)
#   make test   creates .venv if needed and runs the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# torch and torchvision must be a matching pair (torch 2.13 with PyPI's torchvision fails to import)
TORCH_PAIR ?= torch==2.14.1 torchvision==0.29.1

.PHONY: install demo test lint typecheck check clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_PAIR)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/anomalib-wsi demo --output demo_output

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check anomalib_wsi tests benchmarks examples
	$(BIN)/ruff format --check anomalib_wsi tests benchmarks examples

typecheck: $(STAMP)
	$(BIN)/mypy

check: lint typecheck test

clean:
	rm -rf $(VENV) demo_output .pytest_cache .mypy_cache .ruff_cache
