# Fresh-machine entry points. Each target creates .venv and installs what it needs.
#   make demo   - convert a small model and print the error table of the presets
#   make test   - lint + the test suite (what CI runs)
# CPU machines get the light CPU build of PyTorch through constraints-cpu.txt. GPU users:
#   make demo CONSTRAINTS=   (no constraint: pip takes the default CUDA build of torch)

PYTHON ?= python3
VENV ?= .venv
CONSTRAINTS ?= constraints-cpu.txt
PY := $(VENV)/bin/python
PIP_C := $(if $(CONSTRAINTS),-c $(CONSTRAINTS),)
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(PIP_C) torch
	$(PY) -m pip install -q $(PIP_C) -e '.[hf,experiments,dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m aimc demo

lint: $(STAMP)
	$(PY) -m ruff check aimc tests benchmarks

test: $(STAMP) lint
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/bench_linear.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
