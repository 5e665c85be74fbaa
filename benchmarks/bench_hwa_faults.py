"""Page faults and phase times of an HWA training step, with glibc's defaults and with its heap
thresholds fixed (the opt-in of docs/howto/fast-simulation.md, "Threads and the allocator").

The four MLP blocks of ``bench_hwa_step.py`` (768 -> 3072 -> GELU -> 768), ``standard_hwa()``,
AdamW with aimc's post-step hook, against the digital stack, on 8 and 1,024 tokens per step.
glibc reads ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` only at process start, so
each measurement is a child process; children with and without the variables alternate
(``--processes`` each). In a child, digital and analog steps alternate (A B A B ...) after 3
warm-up steps each; it reports the median forward, backward and optimizer-step times and the
median minor page faults per step (``getrusage``). Writes benchmarks/results/hwa_faults_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

#: glibc's heap thresholds fixed at process start: below 32 MiB from the heap, which is not
#: trimmed until 1 GiB of its top is free
FIXED = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "1073741824"}


def child(tokens: int, steps: int, threads: int) -> dict:
    """Median phase times (ms) and faults per step of the digital and the analog stack."""
    import torch
    from bench_hwa_step import trainers  # benchmarks/ is the script's directory

    import aimc

    torch.set_num_threads(threads)
    x = torch.randn(tokens, 768, generator=torch.Generator().manual_seed(0))
    opts = trainers("mlp", aimc.presets.standard_hwa())

    def step(side: str) -> tuple[float, float, float, int]:
        model, opt = opts[side]
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t0 = time.perf_counter()
        opt.zero_grad()
        y = model(x)
        t1 = time.perf_counter()
        y.square().mean().backward()
        t2 = time.perf_counter()
        opt.step()
        t3 = time.perf_counter()
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
        return t1 - t0, t2 - t1, t3 - t2, faults

    for _ in range(3):
        step("digital"), step("analog")
    runs: dict[str, list] = {"digital": [], "analog": []}
    for _ in range(steps):
        for side in runs:
            runs[side].append(step(side))
    out = {}
    for side, r in runs.items():
        fwd, bwd, opt_s = (1e3 * statistics.median(s[k] for s in r) for k in range(3))
        total = [1e3 * sum(s[:3]) for s in r]
        out[side] = {
            "forward_ms": fwd,
            "backward_ms": bwd,
            "optimizer_ms": opt_s,
            "step_ms": statistics.median(total),
            "step_minmax_ms": [min(total), max(total)],
            "faults_per_step": statistics.median(s[3] for s in r),
        }
    out["ratio"] = out["analog"]["step_ms"] / out["digital"]["step_ms"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", default="8,1024", help="comma-separated tokens per step")
    parser.add_argument("--steps", type=int, default=9)
    parser.add_argument("--processes", type=int, default=2, help="children per setting")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "hwa_faults_cpu.json"
    )
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.steps, args.threads)))
        return
    from bench_linear import write_results

    rows = []
    for tokens in (int(t) for t in args.tokens.split(",")):
        for k in range(2 * args.processes):  # default, fixed, default, fixed, ...
            setting = "fixed" if k % 2 else "default"
            env = {key: v for key, v in os.environ.items() if key not in FIXED}
            if setting == "fixed":
                env.update(FIXED)
            cmd = [sys.executable, __file__, "--child", str(tokens), "--steps", str(args.steps)]
            cmd += ["--threads", str(args.threads)]
            res = json.loads(
                subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
                .stdout.strip()
                .splitlines()[-1]
            )
            rows.append({"tokens": tokens, "malloc": setting, **res})
            a, d = res["analog"], res["digital"]
            print(
                f"{tokens:>5} tokens  {setting:<7}  digital {d['step_ms']:7.1f} ms "
                f"({d['faults_per_step']:.0f} faults)  analog {a['step_ms']:7.1f} ms "
                f"({a['faults_per_step']:.0f} faults; fwd {a['forward_ms']:.1f}, bwd "
                f"{a['backward_ms']:.1f}, opt {a['optimizer_ms']:.1f})  ratio {res['ratio']:.2f}"
            )
    write_results(args.out, {"threads": args.threads, "fixed_env": FIXED, "rows": rows})


if __name__ == "__main__":
    main()
