"""Cost of programming and drifting a BERT-base-sized model, and the memory of the chip.

Times ``aimc.program`` and one ``aimc.drift`` call for a 12-layer, 768-wide BERT (random init,
``pcm_inference()``) against one digital forward pass of a batch of 8 x 384 tokens, and compares
the memory of the programmed chip state with the digital weights. Writes
benchmarks/results/pcm_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import aimc


def _bert():
    from transformers import BertConfig, BertModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.manual_seed(0)  # HF initialisation uses torch's default generator
    return BertModel(
        BertConfig(
            hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072
        )
    ).eval()


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = _bert()
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (8, 384), generator=gen)
    with torch.inference_mode():
        digital = [_timed(lambda: model(input_ids=ids)) for _ in range(args.repeats)]
    aimc.convert(model, aimc.presets.pcm_inference(), seed=0)
    layers = aimc.analog_layers(model)
    weight_bytes = sum(m.weight.numel() * m.weight.element_size() for _, m in layers)
    prog = [_timed(lambda s=s: aimc.program(model, seed=s)) for s in range(args.repeats)]
    drift = [_timed(lambda s=s: aimc.drift(model, 86400.0, seed=s)) for s in range(args.repeats)]
    chip_bytes = sum(
        b.numel() * b.element_size()
        for _, m in layers
        for k, b in m.named_buffers()
        if k.startswith("chip_")
    )
    cache_bytes = sum(m.chip_tiles().w.numel() * 4 for _, m in layers)
    with torch.inference_mode():
        analog = [_timed(lambda: model(input_ids=ids)) for _ in range(args.repeats)]
    d = statistics.median(digital)
    result = {
        "model": "BERT-base size (12 x 768, random init), pcm_inference()",
        "analog_layers": len(layers),
        "digital_forward_8x384_s": d,
        "analog_forward_8x384_s": statistics.median(analog),
        "program_s": statistics.median(prog),
        "drift_s": statistics.median(drift),
        "program_over_forward": statistics.median(prog) / d,
        "drift_over_forward": statistics.median(drift) / d,
        "digital_weight_bytes": weight_bytes,
        "chip_state_bytes": chip_bytes,
        "chip_over_weights": chip_bytes / weight_bytes,
        "eval_tile_cache_bytes": cache_bytes,
        "threads": args.threads,
        "torch": torch.__version__,
        "huge_pages": aimc.huge_pages_active(),
    }
    for k, v in result.items():
        print(f"{k:<28} {v:.4g}" if isinstance(v, float) else f"{k:<28} {v}")
    path = Path(__file__).parent / "results" / "pcm_cpu.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
