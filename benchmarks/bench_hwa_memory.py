"""Peak memory of HWA training against digital training: a BERT-base encoder (12 layers by
default, HF ``BertLayer``, random init), AdamW, 8 x 384 tokens.

Each side runs in its own process (peak memory is per process): the digital model, then each
HWA config of ``bench_hwa_step.py``. A process reads its resident set size after imports; after
one training step of a one-layer model on 128 tokens (``base``: aimc builds its compiled
kernels there, reported apart as ``kernels``, the same whatever the model); after building (and
converting) the model and its optimizer; then runs one warm-up step (AdamW's state), resets the
kernel's peak-RSS counter (``/proc/self/clear_refs``), runs ``--steps`` training steps
(forward, backward, AdamW, the HWA post-step hook) and reads the peak (``VmHWM``). Reported per
side, in MiB over ``base``: ``model`` (weights, the analog layers' buffers) and ``peak`` (the
steady training step's peak: model, gradients, AdamW's state, the activations saved for the
backward, temporaries, allocator slack), and their ratios to the digital side. Times per step
are printed but not interleaved: ``bench_hwa_step.py`` measures time.

    python benchmarks/bench_hwa_memory.py                       # 12 layers, 8 x 384 tokens
    python benchmarks/bench_hwa_memory.py --layers 2 --batch 2  # a quick look

Writes ``benchmarks/results/hwa_memory_cpu.json`` (``--out``: another file).
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

MiB = 1 << 20


def _status(field: str) -> int:
    """A size field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``) in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> bool:
    """Reset the peak resident set size (``VmHWM``) to the current one (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _child(args: argparse.Namespace) -> dict:
    """One side, in this process: the numbers of the module docstring."""
    from bench_hwa_step import _BertStack, _configs  # benchmarks/ is the script's directory

    import aimc

    torch.set_num_threads(args.threads)
    imported = _status("VmRSS")
    # one step of a one-layer model on 128 tokens first (each side, the same): aimc builds its
    # compiled kernels there, whose memory does not grow with the model (reported apart)
    small = _BertStack(1)
    if args.child != "digital":
        aimc.convert(small, _configs()[args.child], seed=1)
    small_opt = torch.optim.AdamW(small.parameters(), lr=1e-4)
    x_small = torch.randn(1, 128, 768, generator=torch.Generator().manual_seed(1))
    small.train()(x_small).square().mean().backward()
    small_opt.step()
    del small, small_opt, x_small
    gc.collect()
    base = _status("VmRSS")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = _BertStack(args.layers)
    if args.child != "digital":
        aimc.convert(model, _configs()[args.child], seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    if args.child != "digital":
        aimc.register_post_step_hook(opt, model)
    model.train()
    x = torch.randn(args.batch, args.seq, 768, generator=torch.Generator().manual_seed(0))
    built = _status("VmRSS")

    def step() -> float:
        start = time.perf_counter()
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
        return time.perf_counter() - start

    warmup = step()
    after_warmup = _status("VmRSS")
    reset = _reset_peak()
    times = [step() for _ in range(args.steps)]
    peak = _status("VmHWM")
    return {
        "side": args.child,
        "kernels_mib": (base - imported) / MiB,
        "model_mib": (built - base) / MiB,
        "after_warmup_mib": (after_warmup - base) / MiB,
        "peak_mib": (peak - base) / MiB,
        "peak_reset": reset,  # False: the peak includes the warm-up step
        "warmup_s": warmup,
        "step_s": times,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=384)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--configs", default=None, help="comma-separated HWA config names")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "hwa_memory_cpu.json"
    )
    args = parser.parse_args()
    if args.steps < 1:
        parser.error(f"--steps: got {args.steps}; allowed: 1 or more")
    if args.child is not None:
        print(json.dumps(_child(args)))
        return
    from bench_hwa_step import _configs
    from bench_linear import write_results

    names = list(_configs()) if args.configs is None else args.configs.split(",")
    unknown = [n for n in names if n not in _configs()]
    if unknown:
        parser.error(f"--configs: unknown {unknown}; allowed: {sorted(_configs())}")
    rows = []
    for side in ["digital", *names]:
        cmd = [sys.executable, __file__, "--child", side]
        for flag in ("layers", "batch", "seq", "steps", "threads"):
            cmd += [f"--{flag}", str(getattr(args, flag))]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            sys.exit(f"bench_hwa_memory: the {side!r} process failed:\n{done.stderr[-3000:]}")
        row = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(
            f"{side:<62} kernels {row['kernels_mib']:5.0f} MiB  model {row['model_mib']:7.0f} MiB  "
            f"peak {row['peak_mib']:7.0f} MiB  "
            f"steps {', '.join(f'{t:.1f}' for t in row['step_s'])} s"
        )
    digital = rows[0]
    for row in rows[1:]:
        row["model_ratio"] = row["model_mib"] / digital["model_mib"]
        row["peak_ratio"] = row["peak_mib"] / digital["peak_mib"]
        print(
            f"{row['side']:<62} model {row['model_ratio']:.2f}x  peak {row['peak_ratio']:.2f}x "
            "digital"
        )
    write_results(
        args.out,
        {
            "layers": args.layers,
            "tokens": args.batch * args.seq,
            "batch": args.batch,
            "seq": args.seq,
            "steps": args.steps,
            "threads": args.threads,
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
