"""Peak memory and time of a billion-parameter decoder on a simulated PCM chip (issue 13).

A Llama-architecture causal LM (TinyLlama-1.1B shape by default: hidden 2048, 22 layers, 32
heads, 4 KV heads, intermediate 5632, vocab 32000; random init — no such weights are reachable
offline) in bfloat16 is evaluated digitally on 1 x 512 tokens, then converted with a preset,
programmed (``storage="lean"`` by default) and drifted to one day — in one pass per layer, as
``aimc.drift`` does for an unprogrammed model (``--separate``: ``aimc.program`` then
``aimc.drift``) — and evaluated again. Digital and
analog forwards are interleaved (A B A B ...: the analog layers are swapped out for their
digital twins, which share the parameters, and back). Memory is the peak resident set size of
the process over the baseline measured before the model is built (``ru_maxrss``; on CUDA
``torch.cuda.max_memory_allocated``). Writes ``benchmarks/results/llm_memory_<device>.json``.

    python benchmarks/bench_llm_memory.py                       # the 1.1 B shape, lean chip
    python benchmarks/bench_llm_memory.py --shape tiny --storage full
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import time
from pathlib import Path

import torch
from bench_linear import cpu_host  # benchmarks/ is the script's directory
from torch import nn

import aimc
from aimc.convert import _set_submodule

SHAPES = {
    # TinyLlama-1.1B (Zhang et al., 2024)
    "tinyllama": dict(
        hidden_size=2048,
        num_hidden_layers=22,
        num_attention_heads=32,
        num_key_value_heads=4,
        intermediate_size=5632,
        vocab_size=32000,
    ),
    # Llama-2-7B (Touvron et al., 2023), for a GPU machine
    "llama7b": dict(
        hidden_size=4096,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        intermediate_size=11008,
        vocab_size=32000,
    ),
    "tiny": dict(
        hidden_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=704,
        vocab_size=1000,
    ),
}
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def _rss_peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _peak(device: torch.device) -> int:
    if device.type == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated(device)
    return _rss_peak_bytes()


def _timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def _swap(model: nn.Module, modules: dict[str, nn.Module]) -> None:
    for name, module in modules.items():
        _set_submodule(model, name, module)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=sorted(SHAPES), default="tinyllama")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16")
    p.add_argument("--config", default="pcm_inference", help="a preset name (aimc.presets)")
    p.add_argument("--storage", choices=["lean", "full"], default="lean")
    p.add_argument("--analog-lm-head", action="store_true", help="also convert lm_head")
    p.add_argument("--tokens", type=int, default=512)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--separate",
        action="store_true",
        help="time aimc.program and aimc.drift separately (default: aimc.drift of the "
        "unprogrammed model, which programs and drifts each layer in one pass)",
    )
    p.add_argument("--out", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    dtype = DTYPES[args.dtype]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    base = 0 if device.type == "cuda" else _rss_peak_bytes()

    t = time.perf_counter()
    torch.manual_seed(0)
    cfg = LlamaConfig(**SHAPES[args.shape], max_position_embeddings=max(2048, args.tokens))
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built in its dtype: no float32 copy at any moment
    try:
        with torch.device(device):
            model = LlamaForCausalLM(cfg).eval()
    finally:
        torch.set_default_dtype(default)
    load_s = time.perf_counter() - t
    params = sum(p.numel() for p in model.parameters())
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    ids = torch.randint(
        0, cfg.vocab_size, (1, args.tokens), generator=torch.Generator().manual_seed(1)
    )
    ids = ids.to(device)

    def forward() -> None:
        with torch.inference_mode():
            model(input_ids=ids)

    digital = [_timed(forward, device)]
    peak_digital = _peak(device) - base

    setup = {}
    exclude = None if args.analog_lm_head else ["lm_head"]
    preset = getattr(aimc.presets, args.config)()
    setup["convert_s"] = _timed(lambda: aimc.convert(model, preset, exclude=exclude), device)
    layers = dict(aimc.analog_layers(model))
    twins = {n: aimc.digital_module(m) for n, m in layers.items()}
    if args.separate:  # program, then drift: a lean chip is generated twice
        setup["program_s"] = _timed(
            lambda: aimc.program(model, seed=0, storage=args.storage), device
        )
        setup["drift_s"] = _timed(lambda: aimc.drift(model, 86400.0, seed=1), device)
    else:  # drift of the unprogrammed model: programmed and drifted in one pass per layer
        setup["program_drift_s"] = _timed(
            lambda: aimc.drift(model, 86400.0, seed=1, storage=args.storage), device
        )
    analog = []
    for _ in range(args.repeats):
        analog.append(_timed(forward, device))
        _swap(model, twins)
        digital.append(_timed(forward, device))
        _swap(model, layers)
    peak_analog = _peak(device) - base
    chip_bytes = sum(
        b.numel() * b.element_size()
        for m in layers.values()
        for k, b in m.named_buffers()
        if k.startswith("chip_")
    )
    d, a = statistics.median(digital), statistics.median(analog)
    result = {
        "machine": platform.processor() or platform.machine(),
        "host": cpu_host(),
        "device": str(device),
        "torch": torch.__version__,
        "huge_pages": aimc.huge_pages_active(),
        "aimc": aimc.__version__,
        "threads": args.threads,
        "shape": args.shape,
        "params": params,
        "dtype": args.dtype,
        "config": args.config,
        "storage": args.storage,
        "analog_lm_head": args.analog_lm_head,
        "analog_layers": len(layers),
        "tokens": args.tokens,
        "model_bytes": model_bytes,
        "chip_bytes": chip_bytes,
        "peak_digital_bytes": peak_digital,
        "peak_analog_bytes": peak_analog,
        "memory_ratio": peak_analog / peak_digital,
        "load_s": load_s,
        **setup,
        "setup_s": sum(setup.values()),
        "digital_s": digital,
        "analog_s": analog,
        "digital_ms_per_token": 1000 * d / args.tokens,
        "analog_ms_per_token": 1000 * a / args.tokens,
        "time_ratio": a / d,
    }
    gib = 2**30
    print(
        f"{args.shape} ({params / 1e9:.2f} B params, {args.dtype}, {args.config}, "
        f"{args.storage} chip, {len(layers)} analog layers): peak memory digital "
        f"{peak_digital / gib:.2f} GiB, analog {peak_analog / gib:.2f} GiB, ratio "
        f"{result['memory_ratio']:.2f}; chip state {chip_bytes / 2**20:.1f} MiB; set-up "
        f"{result['setup_s']:.0f} s ("
        + ", ".join(f"{k[:-2]} {v:.1f}" for k, v in setup.items())
        + f"); forward of {args.tokens} "
        f"tokens digital {d:.1f} s [{min(digital):.1f}-{max(digital):.1f}], analog {a:.1f} s "
        f"[{min(analog):.1f}-{max(analog):.1f}], ratio {result['time_ratio']:.2f}"
    )
    out = Path(args.out or f"benchmarks/results/llm_memory_{device.type}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
