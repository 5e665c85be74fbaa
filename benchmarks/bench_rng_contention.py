"""The eager noise draw: PyTorch's MT19937 in pool threads against aimc's counter kernel.

``aimc.random.normal_`` (chip state) fills a large CPU tensor from Python pool threads
(PyTorch's generator is single-threaded), as the forward's noise draw did up to aimc 0.2. After
a parallel region, libgomp's worker threads spin for a while before they sleep, so a draw that
follows an OpenMP op (as it does in the analog forward) shares the cores with them.
``aimc.random.noise_normal_`` (the forward's noise since aimc 0.3) draws large float32 tensors
with a compiled counter-based kernel (SplitMix64 + Box-Muller) that runs inside the OpenMP team:
on an AVX2 or AVX-512 CPU the hand-written one (``aimc._native``), timed there beside the
kernel that inductor generates (``AIMC_RNG_NATIVE=0``), elsewhere the inductor kernel.
This script times both methods on the same tensors (3.1 M values: the 768 x 768 layer's output
noise on 2,048 tokens; 786 k: the MiniLM query layer's), after an idle pause and right after a
2-thread matmul, interleaved, once with the default wait policy and once in a subprocess with
``OMP_WAIT_POLICY=PASSIVE``.

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

from bench_linear import _stats, cpu_host  # benchmarks/ is the script's directory

ROOT = Path(__file__).resolve().parents[1]


SIZES = {"768x768 layer, 2048 tokens": 2048 * 768 * 2, "minilm query, 2048 tokens": 2048 * 384}


def measure(repeats: int) -> dict:
    """Medians (ms) of each method's draw after idle and right after a matmul, interleaved."""
    import torch

    import aimc
    from aimc.random import noise_normal_, normal_

    torch.set_num_threads(2)
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(2048, 768, generator=gen)
    w = torch.randn(768, 768, generator=gen)

    def with_native(value: str):
        def fill(z):
            os.environ["AIMC_RNG_NATIVE"] = value
            return noise_normal_(z, gen)

        return fill

    methods = {
        "mt19937 pool threads": lambda z: normal_(z, gen),
        "counter kernel": with_native("1"),
    }
    if aimc.random._NATIVE.usable():  # AVX2 / AVX-512: the hand-written kernel, and inductor's
        methods["counter kernel, inductor (AIMC_RNG_NATIVE=0)"] = with_native("0")
    out = []
    for label, numel in SIZES.items():
        z = torch.empty(numel)
        for fill in methods.values():
            fill(z)  # build (or load) the kernels outside the timings
        times = {(m, when): [] for m in methods for when in ("after_idle", "after_matmul")}
        for _ in range(repeats):
            for m, fill in methods.items():
                time.sleep(0.05)  # a pause: no parallel region just before the first draw
                start = time.perf_counter()
                fill(z)
                times[m, "after_idle"].append(time.perf_counter() - start)
                a @ w
                start = time.perf_counter()
                fill(z)
                times[m, "after_matmul"].append(time.perf_counter() - start)
        for m in methods:
            out.append(
                {
                    "draw": label,
                    "method": m,
                    "values": numel,
                    "after_idle": _stats(times[m, "after_idle"]),
                    "after_matmul": _stats(times[m, "after_matmul"]),
                }
            )
    return {"rows": out, "huge_pages": aimc.huge_pages_active(), "torch": torch.__version__}


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
        child = json.loads(out.strip().splitlines()[-1])
        for r in child["rows"]:
            row = {"omp_wait_policy": policy, **r, "huge_pages": child["huge_pages"]}
            row["torch"] = child["torch"]
            rows.append(row)
            print(
                f"OMP_WAIT_POLICY={policy:<8} {r['draw']:<28} {r['method']:<21} "
                f"after idle {r['after_idle']['median_ms']:6.2f} ms, right after a matmul "
                f"{r['after_matmul']['median_ms']:6.2f} ms"
            )
    args.out.write_text(
        json.dumps(
            {"threads": 2, "repeats": args.repeats, "host": cpu_host(), "rows": rows}, indent=2
        )
        + "\n"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
