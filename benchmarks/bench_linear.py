"""AnalogLinear (pcm_inference, 512x512 tiles) against nn.Linear: forward and forward+backward.

The two sides are interleaved (A B A B ...) in one run so that a busy neighbour slows both alike;
the script reports medians, their ratio and the min-max spread, and writes JSON.

    python benchmarks/bench_linear.py [--threads 2] [--device cpu] [--repeats 15]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

import aimc
from aimc.nn import AnalogLinear

SHAPES = [(768, 768, 2048), (768, 3072, 2048), (4096, 4096, 256)]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time(fn, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def _interleaved(fa, fb, repeats: int, device: torch.device) -> tuple[list[float], list[float]]:
    fa(), fb(), fa(), fb()  # warm-up (allocations, caches, tile layout)
    ta, tb = [], []
    for _ in range(repeats):
        ta.append(_time(fa, device))
        tb.append(_time(fb, device))
    return ta, tb


def cpu_host() -> dict[str, object]:
    """The CPU the numbers were taken on: model name, PyTorch's kernel capability (``AVX2``,
    ``AVX512``, ...) and whether bfloat16 matmuls are native (AVX512-BF16, AMX). The shared
    machines differ from day to day (an AVX-512 Zen 4 host one day, an AVX2-only one the next),
    and the ratios depend on it: the counter noise kernel's 64-bit multiplies and bfloat16
    matmuls are native on the first and emulated on the second."""
    model = platform.processor() or platform.machine()
    ids: dict[str, int] = {}  # x86 "cpu family" and "model": the generation ("AMD EPYC" is
    # Zen 4 at family 25 and Zen 5 at family 26: AVX-512 at half and at full width)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name":
                    model = value.strip()
                elif key in ("cpu family", "model") and value.strip().isdigit():
                    ids.setdefault("family" if key == "cpu family" else "model", int(value))
                elif not line.strip():  # the first processor's block is enough
                    break
    except OSError:
        pass
    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return {
        "cpu": model,
        "cpu_family": ids.get("family"),
        "cpu_model": ids.get("model"),
        "capability": torch.backends.cpu.get_cpu_capability(),
        "avx512_bf16": None if probe is None else bool(probe()),
        "amx": None if amx is None else bool(amx()),
    }


def write_results(path: Path, fields: dict[str, object]) -> None:
    """Write a benchmark's JSON to ``path``: ``fields`` plus what every result records of its
    run (PyTorch's version, whether huge pages were on, :func:`cpu_host`)."""
    data = {
        **fields,
        "torch": torch.__version__,
        "huge_pages": aimc.huge_pages_active(),
        "host": cpu_host(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote {path}")


def _stats(ts: list[float]) -> dict[str, float]:
    return {
        "median_ms": 1e3 * statistics.median(ts),
        "min_ms": 1e3 * min(ts),
        "max_ms": 1e3 * max(ts),
    }


def make_config(preset: str, bound_management: str | None) -> aimc.AnalogConfig:
    cfg = getattr(aimc.presets, preset)()
    if bound_management is not None:
        cfg = cfg.replace(io=cfg.io.replace(bound_management=bound_management))
    return cfg


def bench_shape(
    n_in: int,
    n_out: int,
    tokens: int,
    config: aimc.AnalogConfig,
    repeats: int,
    device: torch.device,
) -> dict:
    gen = torch.Generator(device="cpu").manual_seed(0)
    digital = torch.nn.Linear(n_in, n_out).to(device)
    with torch.no_grad():
        w = torch.empty(n_out, n_in)
        bound = 1 / n_in**0.5  # nn.Linear's default init range, drawn from an explicit seed
        digital.weight.copy_(w.uniform_(-bound, bound, generator=gen))
        digital.bias.copy_(torch.empty(n_out).uniform_(-bound, bound, generator=gen))
    analog = AnalogLinear(n_in, n_out, config=config, seed=0).to(device)
    analog.load_state_dict({**digital.state_dict(), "_extra_state": analog.get_extra_state()})
    x = torch.randn(tokens, n_in, generator=gen).to(device)
    grad = torch.randn(tokens, n_out, generator=gen).to(device)
    out = {"in": n_in, "out": n_out, "tokens": tokens}

    def fwd(m):
        def run():
            with torch.no_grad():
                m(x)

        return run

    def fwd_bwd(m):
        xg = x.clone().requires_grad_(True)

        def run():
            with torch.no_grad():  # a training step changes the weight: re-tile every step
                m.weight.mul_(1.0)
            m.weight.grad = None
            xg.grad = None
            m(xg).backward(grad)

        return run

    for label, make in (("forward", fwd), ("forward_backward", fwd_bwd)):
        ta, td = _interleaved(make(analog), make(digital), repeats, device)
        out[label] = {
            "analog": _stats(ta),
            "digital": _stats(td),
            "ratio": statistics.median(ta) / statistics.median(td),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--preset", default="pcm_inference")
    parser.add_argument(
        "--bound-management",
        choices=["none", "iterative"],
        default=None,
        help="override the preset's bound management",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON path (default benchmarks/results/linear_<device>.json)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    results = []
    config = make_config(args.preset, args.bound_management)
    bm = config.io.bound_management.value
    print(
        f"AnalogLinear({args.preset}, bound management {bm}) vs nn.Linear on {device}, "
        f"{args.threads} threads, median of {args.repeats} interleaved runs"
    )
    print(
        f"{'in':>5} {'out':>5} {'tokens':>6} | {'pass':<16} {'analog ms':>10} "
        f"{'digital ms':>10} {'ratio':>6} | analog min-max, digital min-max"
    )
    for n_in, n_out, tokens in SHAPES:
        r = bench_shape(n_in, n_out, tokens, config, args.repeats, device)
        results.append(r)
        for label in ("forward", "forward_backward"):
            a, d = r[label]["analog"], r[label]["digital"]
            print(
                f"{n_in:>5} {n_out:>5} {tokens:>6} | {label:<16} {a['median_ms']:>10.1f} "
                f"{d['median_ms']:>10.1f} {r[label]['ratio']:>6.2f} | "
                f"{a['min_ms']:.1f}-{a['max_ms']:.1f}, {d['min_ms']:.1f}-{d['max_ms']:.1f}"
            )
    suffix = "" if args.bound_management is None else f"_bm-{args.bound_management}"
    path = args.out or Path(__file__).parent / "results" / f"linear_{device.type}{suffix}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "torch": torch.__version__,
        "huge_pages": aimc.huge_pages_active(),
        "aimc": aimc.__version__,
        "threads": args.threads,
        "device": str(device),
        "preset": args.preset,
        "config": config.to_dict(),
        "repeats": args.repeats,
        "machine": platform.machine(),
        "host": cpu_host(),
        "processor": platform.processor(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    path.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
