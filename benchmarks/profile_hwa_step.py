"""Where the time of an HWA training step goes: torch.profiler over 3 steps of the
``bench_hwa_step.py`` MLP stack (4 x (768 -> 3072 -> GELU -> 768), 8 x 128 tokens, AdamW).

    python benchmarks/profile_hwa_step.py                 # standard_hwa, io.w_noise_bf16=True
    python benchmarks/profile_hwa_step.py --config digital
    python benchmarks/profile_hwa_step.py --no-bf16       # standard_hwa as the preset has it

Prints the profiler's table (self CPU time per op). The Gaussian draws of aimc.random.normal_ run
on worker threads, so the profiler books them as the self time of ``_AnalogMVM``.
"""

from __future__ import annotations

import argparse

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
    args = parser.parse_args()
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
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step()
    print(f"{args.config}, {args.steps} steps:")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


if __name__ == "__main__":
    main()
