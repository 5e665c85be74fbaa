"""Cost of a pulsed in-situ update per batch vs a digital SGD step (aimc.pulsed).

784 -> 256 -> 10 MLP (plain nn.Linear forward, so only the update differs), batch 64 of MNIST-like
inputs in [0, 1], cross-entropy. Each repeat runs one training step (zero_grad, forward,
backward, optimizer.step) of the digital model with torch.optim.SGD and one of the pulsed
model, interleaved A B A B; medians and min-max of the whole step and of optimizer.step()
alone are reported. Writes benchmarks/results/pulsed_update_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import aimc
from aimc.pulsed import AnalogSGD, PulsedConfig, TikiTaka, UpdateConfig


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(784, 256), nn.Sigmoid(), nn.Linear(256, 10))


def _optimizers(lr: float) -> dict:
    soft = PulsedConfig(device="soft_bounds")
    return {
        "AnalogSGD SoftBounds (stochastic, BL 31)": lambda m: AnalogSGD(m, lr, soft, seed=0),
        "AnalogSGD SoftBounds (expected step)": lambda m: AnalogSGD(
            m, lr, soft.replace(update=UpdateConfig(mode="expected")), seed=0
        ),
        "TikiTaka SoftBounds (stochastic)": lambda m: TikiTaka(m, lr, soft, seed=0),
    }


def _step(model, opt, x, y) -> tuple[float, float]:
    start = time.perf_counter()
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    mid = time.perf_counter()
    opt.step()
    end = time.perf_counter()
    return end - start, end - mid


def _stats(values: list[float]) -> dict:
    return {
        "median_ms": 1e3 * statistics.median(values),
        "min_ms": 1e3 * min(values),
        "max_ms": 1e3 * max(values),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch, 784, generator=g)
    y = torch.randint(0, 10, (args.batch,), generator=g)
    rows = []
    for name, make in _optimizers(args.lr).items():
        digital = _mlp()
        d_opt = torch.optim.SGD(digital.parameters(), lr=args.lr)
        analog = _mlp()
        a_opt = make(analog)
        for _ in range(2):  # warm-up
            _step(digital, d_opt, x, y), _step(analog, a_opt, x, y)
        dig, ana = [], []
        for _ in range(args.repeats):
            dig.append(_step(digital, d_opt, x, y))
            ana.append(_step(analog, a_opt, x, y))
        row = {
            "optimizer": name,
            "digital_step": _stats([t for t, _ in dig]),
            "pulsed_step": _stats([t for t, _ in ana]),
            "digital_update_only": _stats([u for _, u in dig]),
            "pulsed_update_only": _stats([u for _, u in ana]),
        }
        row["ratio_step"] = row["pulsed_step"]["median_ms"] / row["digital_step"]["median_ms"]
        row["ratio_update_only"] = (
            row["pulsed_update_only"]["median_ms"] / row["digital_update_only"]["median_ms"]
        )
        rows.append(row)
        print(
            f"{name:<42} step: digital {row['digital_step']['median_ms']:6.2f} ms "
            f"({row['digital_step']['min_ms']:.2f}-{row['digital_step']['max_ms']:.2f}), "
            f"pulsed {row['pulsed_step']['median_ms']:7.2f} ms "
            f"({row['pulsed_step']['min_ms']:.1f}-{row['pulsed_step']['max_ms']:.1f}), "
            f"ratio {row['ratio_step']:.1f}; optimizer.step() alone: digital "
            f"{row['digital_update_only']['median_ms']:.3f} ms, pulsed "
            f"{row['pulsed_update_only']['median_ms']:.2f} ms"
        )
    path = Path(__file__).parent / "results" / "pulsed_update_cpu.json"
    meta = {
        "threads": args.threads,
        "torch": torch.__version__,
        "huge_pages": aimc.huge_pages_active(),
        "batch": args.batch,
    }
    meta.update({"lr": args.lr, "model": "784-256-10 MLP, plain nn.Linear forward", "rows": rows})
    path.write_text(json.dumps(meta, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
