"""Where the time of an HWA training step goes: torch.profiler over 3 steps of the
``bench_hwa_step.py`` MLP stack (4 x (768 -> 3072 -> GELU -> 768), 8 x 128 tokens, AdamW).

    python benchmarks/profile_hwa_step.py                 # standard_hwa, io.w_noise_bf16=True
    python benchmarks/profile_hwa_step.py --config digital
    python benchmarks/profile_hwa_step.py --no-bf16       # standard_hwa as the preset has it
    python benchmarks/profile_hwa_step.py --no-bf16 --calls --steps 5   # ms per step by part

Prints the profiler's table (self CPU time per op). The Gaussian draws of aimc.random.normal_ run
on worker threads, so the profiler books them as the self time of ``_AnalogMVM``. ``--calls``
instead times aimc's own entry points around their calls (the hand-written kernels, the tile
build, the clip, the output scales' gradient, the post-step, the variance and int8 MVMs, the
backward's matmuls; a part is counted in its callers too) and prints milliseconds per step;
with an ``AIMC_*_NATIVE=0`` variable set it shows what a kernel replaced.
"""

from __future__ import annotations

import argparse
import collections
import functools
import time

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

import aimc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="standard_hwa", choices=["standard_hwa", "digital"])
    parser.add_argument("--no-bf16", action="store_true", help="float32 pcm_read variance MVM")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--calls", action="store_true", help="ms per step of aimc's parts")
    args = parser.parse_args()
    spent = _time_calls() if args.calls else None
    torch.set_num_threads(args.threads)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = nn.Sequential(
            *[
                nn.Sequential(nn.Linear(768, 3072), nn.GELU(), nn.Linear(3072, 768))
                for _ in range(4)
            ]
        )
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    if args.config == "standard_hwa":
        cfg = aimc.presets.standard_hwa()
        cfg = cfg.replace(io=cfg.io.replace(w_noise_bf16=not args.no_bf16))
        aimc.convert(model, cfg, seed=0)
        aimc.register_post_step_hook(opt, model)
    model.train()
    x = torch.randn(8 * 128, 768, generator=torch.Generator().manual_seed(0))

    def step() -> None:
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()

    for _ in range(2):
        step()
    if spent is not None:
        spent.clear()
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        total = (time.perf_counter() - start) / args.steps * 1e3
        print(f"{args.config}, {args.steps} steps: {total:.1f} ms per step")
        for name, (secs, calls) in sorted(spent.items(), key=lambda kv: -kv[1][0]):
            print(f"  {name:40s} {secs / args.steps * 1e3:8.1f} ms  ({calls // args.steps} calls)")
        return
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step()
    print(f"{args.config}, {args.steps} steps:")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


def _time_calls() -> dict[str, list]:
    """Wrap aimc's entry points so that each call adds its wall time to the returned dict
    (name -> [seconds, calls])."""
    from aimc import _intmvm, _native, _rangeclip, _tiles, hwa, mvm
    from aimc.nn import base

    spent: dict[str, list] = collections.defaultdict(lambda: [0.0, 0])

    def wrap(owner: object, name: str, label: str) -> None:
        fn = getattr(owner, name)

        @functools.wraps(fn)
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[label][0] += time.perf_counter() - start
                spent[label][1] += 1

        setattr(owner, name, timed)

    for owner, name, label in [
        (_native.NativeNoiseKernel, "fill", "noise kernel"),
        (_native.NativeDacKernel, "levels", "DAC kernel"),
        (_native.NativeAdcKernel, "finish", "ADC kernel"),
        (_intmvm.NativeIntMvmKernel, "pack", "int8 pack"),
        (_intmvm.NativeIntMvmKernel, "combine", "int8 combination"),
        (_intmvm.NativeIntMvmKernel, "limbs", "int8 limbs (apart)"),
        (_tiles.NativeTileKernel, "build", "tile kernel (tiles, |W|, limbs)"),
        (_rangeclip.NativeClipKernel, "clip_into", "input-range clip"),
        (_rangeclip.NativeClipKernel, "range_sums", "input-range gradient sums"),
        (mvm.TileOutputs, "scale_grad", "output scales' gradient"),
        (mvm, "int_bmm_", "int8 MVM (GEMMs, pack, combination)"),
        (mvm, "_bmm_", "float32 GEMMs of the forward (variance)"),
        (base, "batched_matmul", "backward matmuls"),
        (base, "update_input_range", "input range initialisation"),
        (base.AnalogLayerMixin, "_make_tile_weights", "tiles built"),
        (base, "_run_mvm", "analog forward (all of it)"),
        (hwa, "post_step", "post-step (clip, remap)"),
    ]:
        wrap(owner, name, label)
    return spent


if __name__ == "__main__":
    main()
