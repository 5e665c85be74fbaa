"""Does the eager output-noise draw lose time to OpenMP's spinning workers?

``aimc.random.normal_`` fills a large CPU tensor from Python pool threads (PyTorch's generator is
single-threaded). After a parallel region, libgomp's worker threads spin for a while before they
sleep, so a draw that follows an OpenMP op (as it does in the analog forward) may share the cores
with them. This script times the same draw (3.1 M values: the 768 x 768 layer's output noise
on 2,048 tokens) after an idle pause and right after a 2-thread matmul, interleaved, once with the
default wait policy and once in a subprocess with ``OMP_WAIT_POLICY=PASSIVE`` (no spinning).

    python benchmarks/bench_rng_contention.py [--repeats 60]

Writes ``benchmarks/results/rng_contention_cpu.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench_linear import _stats  # benchmarks/ is the script's directory

ROOT = Path(__file__).resolve().parents[1]


def measure(repeats: int) -> dict:
    """Medians (ms) of the draw after idle and right after a matmul, interleaved."""
    import torch

    import aimc
    from aimc.random import normal_

    torch.set_num_threads(2)
    z = torch.empty(2048 * 768 * 2)
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(2048, 768, generator=gen)
    w = torch.randn(768, 768, generator=gen)
    idle, after = [], []
    for _ in range(repeats):
        time.sleep(0.05)  # a pause: no parallel region just before the first draw
        start = time.perf_counter()
        normal_(z, gen)
        idle.append(time.perf_counter() - start)
        a @ w
        start = time.perf_counter()
        normal_(z, gen)
        after.append(time.perf_counter() - start)

    return {
        "values": z.numel(),
        "after_idle": _stats(idle),
        "after_matmul": _stats(after),
        "huge_pages": aimc.huge_pages_active(),
        "torch": torch.__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=60)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks/results/rng_contention_cpu.json"
    )
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.repeats)))
        return
    rows = []
    for policy in ("default", "PASSIVE"):
        env = dict(os.environ)
        env.pop("OMP_WAIT_POLICY", None)
        if policy != "default":
            env["OMP_WAIT_POLICY"] = policy
        cmd = [sys.executable, __file__, "--child", "--repeats", str(args.repeats)]
        out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
        row = {"omp_wait_policy": policy, **json.loads(out.strip().splitlines()[-1])}
        rows.append(row)
        print(
            f"OMP_WAIT_POLICY={policy:<8} draw of {row['values']:,} values: after idle "
            f"{row['after_idle']['median_ms']:.2f} ms, right after a matmul "
            f"{row['after_matmul']['median_ms']:.2f} ms"
        )
    args.out.write_text(
        json.dumps({"threads": 2, "repeats": args.repeats, "rows": rows}, indent=2) + "\n"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
