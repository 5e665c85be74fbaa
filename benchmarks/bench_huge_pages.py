"""Fresh large CPU tensors with and without huge pages for PyTorch's allocator.

PyTorch's CPU allocator asks for transparent huge pages (``madvise(MADV_HUGEPAGE)`` on 2 MiB
aligned blocks of 2 MiB or more) when ``THP_MEM_ALLOC_ENABLE=1`` is set before its first
allocation. This script times ops that write a fresh result (the pattern of every eager layer's
output and of a compiled graph's buffers) in child processes, alternately with the variable at 0
and at 1 (A B A B ...), and counts the minor page faults per call:

* ``neg`` of 1 M, 3 M, 12 M and 24 M float32 values (4, 12, 48, 96 MiB), on 1 and 2 threads;
* ``gelu(x @ W.T + b)`` of a 384 -> 1536 ``nn.Linear`` on 12,288 tokens (a 32-feature SQuAD batch
  of the shared MiniLM: a 72 MiB result), 2 threads.

    python benchmarks/bench_huge_pages.py [--rounds 3] [--repeats 21]

Writes ``benchmarks/results/huge_pages_cpu.json``; ``report.py`` renders it in
docs/benchmarks.md#huge-pages.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench_eval_forward import page_faults_per_call
from bench_linear import _stats, cpu_host  # benchmarks/ is the script's directory

ROOT = Path(__file__).resolve().parents[1]
ENV = "THP_MEM_ALLOC_ENABLE"
NEG_MIB = (4, 12, 48, 96)


def _time(fn, repeats: int) -> tuple[float, float]:
    """(median seconds, minor page faults per call) of ``repeats`` calls after one warm-up; the
    faults counted over ``repeats`` more calls."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), page_faults_per_call(fn, repeats)


def child(repeats: int) -> dict:
    """Every case's median ms and faults per call, in this process's allocator setting."""
    import torch

    import aimc

    gen = torch.Generator().manual_seed(0)
    rows = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for mib in NEG_MIB:
            x = torch.randn(mib << 18, generator=gen)
            sec, faults = _time(lambda x=x: torch.neg(x), repeats)
            rows.append({"case": f"neg, {mib} MiB", "threads": threads, "s": sec, "faults": faults})
            del x
    torch.set_num_threads(2)
    lin = torch.nn.Linear(384, 1536)
    x = torch.randn(12288, 384, generator=gen)
    with torch.inference_mode():
        sec, faults = _time(lambda: torch.nn.functional.gelu(lin(x)), repeats)
    rows.append(
        {"case": "gelu(Linear 384->1536), 12,288 tokens", "threads": 2, "s": sec, "faults": faults}
    )
    return {"huge_pages": aimc.huge_pages_active(), "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="child processes per setting")
    parser.add_argument("--repeats", type=int, default=21, help="timed calls per case")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/huge_pages_cpu.json")
    args = parser.parse_args()
    if args.rounds < 1 or args.repeats < 1:
        parser.error(f"--rounds and --repeats: got {args.rounds}, {args.repeats}; allowed: >= 1")
    if args.child:
        print(json.dumps(child(args.repeats)))
        return
    runs: dict[str, list[dict]] = {"0": [], "1": []}
    for _ in range(args.rounds):
        for setting in ("0", "1"):
            env = {**os.environ, ENV: setting}
            cmd = [sys.executable, __file__, "--child", "--repeats", str(args.repeats)]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            data = json.loads(out.stdout.strip().splitlines()[-1])
            if data["huge_pages"] != (setting == "1"):
                raise SystemExit(
                    f"{ENV}={setting}: the child's huge_pages_active() is {data['huge_pages']}"
                )
            runs[setting].append(data)
    rows = []
    for i, first in enumerate(runs["0"][0]["rows"]):
        row = {"case": first["case"], "threads": first["threads"]}
        for setting, key in (("0", "4k"), ("1", "huge")):
            faults = [r["rows"][i]["faults"] for r in runs[setting]]
            row[key] = {
                **_stats([r["rows"][i]["s"] for r in runs[setting]]),
                "faults_per_call": statistics.median(faults),
            }
        row["ratio"] = row["huge"]["median_ms"] / row["4k"]["median_ms"]
        rows.append(row)
        small, huge = row["4k"], row["huge"]
        print(
            f"{row['case']:<40} {row['threads']} threads  "
            f"4 KiB {small['median_ms']:7.2f} ms ({small['faults_per_call']:6.0f} faults)  "
            f"huge {huge['median_ms']:7.2f} ms ({huge['faults_per_call']:6.0f} faults)  "
            f"ratio {row['ratio']:.2f}"
        )
    import torch

    data = {
        "rounds": args.rounds,
        "repeats": args.repeats,
        "rows": rows,
        "torch": torch.__version__,
        "host": cpu_host(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
