"""bfloat16 against float32 ``bmm`` on this CPU: is ``io.w_noise_bf16`` a speed-up here?

Times ``torch.bmm`` of a (1, 2048, 384) by (1, 384, 384) product (the MiniLM query layer's
``pcm_read`` variance MVM on 2,048 tokens) in float32 and in bfloat16, interleaved, and prints
the medians, their ratio and the host (``bench_linear.cpu_host``); writes
``benchmarks/results/bf16_matmul_cpu.json`` (``--out`` to change). On a CPU without AVX512-BF16
or AMX PyTorch emulates bfloat16 matmuls and aimc warns when the option is used.

    python benchmarks/bench_bf16_matmul.py [--repeats 10] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from bench_linear import cpu_host  # benchmarks/ is the script's directory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "bf16_matmul_cpu.json"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(1, 2048, 384, generator=gen), torch.randn(1, 384, 384, generator=gen)
    sides = {"float32": (a, b), "bfloat16": (a.bfloat16(), b.bfloat16())}
    times: dict[str, list[float]] = {k: [] for k in sides}
    for x, y in sides.values():
        torch.bmm(x, y)  # warm-up
    for _ in range(args.repeats):
        for k, (x, y) in sides.items():
            start = time.perf_counter()
            torch.bmm(x, y)
            times[k].append(time.perf_counter() - start)
    med = {k: 1e3 * statistics.median(v) for k, v in times.items()}
    for k, v in times.items():
        print(f"{k:<9} {med[k]:8.2f} ms  ({1e3 * min(v):.2f}-{1e3 * max(v):.2f})")
    ratio = med["bfloat16"] / med["float32"]
    host = cpu_host()
    print(f"bfloat16 / float32: {ratio:.1f}x on {host}")
    result = {
        "torch": torch.__version__,
        "threads": args.threads,
        "repeats": args.repeats,
        "host": host,
        "shape": [1, 2048, 384, 384],
        "median_ms": med,
        "minmax_ms": {k: [1e3 * min(v), 1e3 * max(v)] for k, v in times.items()},
        "ratio_bf16_over_fp32": ratio,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
