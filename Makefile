# Fresh-machine entry points. Each target creates .venv and installs what it needs.
#   make showcase - analog MiniLM on SQuAD as PCM drifts (a reduced sweep, ~15 min on 2 cores)
#   make test     - lint + the test suite (what CI runs)
#   make demo     - convert small models with each preset and print the error table
# CPU machines get the light CPU build of PyTorch through constraints-cpu.txt. GPU users:
#   make demo CONSTRAINTS=   (no constraint: pip takes the default CUDA build of torch)

PYTHON ?= python3
VENV ?= .venv
CONSTRAINTS ?= constraints-cpu.txt
PY := $(VENV)/bin/python
PIP_C := $(if $(CONSTRAINTS),-c $(CONSTRAINTS),)
STAMP := $(VENV)/.installed

.PHONY: showcase demo test lint bench clean

$(STAMP): pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(PIP_C) torch
	$(PY) -m pip install -q $(PIP_C) -e '.[hf,experiments,dev]'
	touch $(STAMP)

SHOWCASE_OUT ?= runs/squad-drift/showcase

showcase: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m aimc squad-drift --out $(SHOWCASE_OUT) --resume \
		--max-questions 300 --chips 2 --times 0,3600,86400,31536000

demo: $(STAMP)
	$(PY) -m aimc demo

lint: $(STAMP)
	$(PY) -m ruff check aimc tests benchmarks

test: $(STAMP) lint
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/bench_linear.py
	$(PY) benchmarks/bench_linear.py --bound-management none
	$(PY) benchmarks/profile_linear.py
	$(PY) benchmarks/bench_pcm.py
	$(PY) benchmarks/drift_error_table.py
	$(PY) benchmarks/bench_squad_eval.py
	$(PY) benchmarks/bench_hwa_step.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
