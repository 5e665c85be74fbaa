"""In-situ analog training of a 2-layer MLP on MNIST vs digital SGD (aimc.pulsed).

784 -> 256 (sigmoid) -> 10, cross-entropy, batch 64, a fixed subset of the training set, a fixed
number of epochs, the full 10k test set. Analog runs convert both layers to AnalogLinear (noisy
forward with the default AnalogConfig periphery) and train them with pulses; the biases get
digital SGD. Writes benchmarks/results/insitu_mnist.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import aimc
from aimc.pulsed import (
    AnalogSGD,
    MixedPrecision,
    PulsedConfig,
    TikiTaka,
    TikiTakaConfig,
    UpdateConfig,
)
from aimc.vision.idx import load_idx_split

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"


def _mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.Sigmoid(), nn.Linear(256, 10))


def _runs(lr: float, seed: int) -> dict[str, Callable[[nn.Module], torch.optim.Optimizer]]:
    soft = PulsedConfig(device="soft_bounds")
    const = PulsedConfig(device="constant_step")
    tt = TikiTakaConfig(transfer_every=1, columns_per_transfer=8, transfer_lr=1.0)
    return {
        "digital SGD": lambda m: torch.optim.SGD(m.parameters(), lr=lr),
        "analog SGD, SoftBounds": lambda m: AnalogSGD(m, lr=lr, config=soft, seed=seed),
        "analog SGD, ConstantStep": lambda m: AnalogSGD(m, lr=lr, config=const, seed=seed),
        "analog SGD, SoftBounds, expected step": lambda m: AnalogSGD(
            m, lr=lr, config=soft.replace(update=UpdateConfig(mode="expected")), seed=seed
        ),
        "Tiki-Taka, SoftBounds": lambda m: TikiTaka(m, lr=lr, config=soft, tiki_taka=tt, seed=seed),
        "mixed precision, ConstantStep": lambda m: MixedPrecision(
            m, lr=lr, config=const, seed=seed
        ),
    }


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        correct = sum(
            (model(x[i : i + 1000]).argmax(1) == y[i : i + 1000]).sum().item()
            for i in range(0, len(x), 1000)
        )
    model.train()
    return correct / len(x)


def _train(name, make, data, args, seed: int) -> dict:
    (x_tr, y_tr), (x_te, y_te) = data
    model = _mlp(seed)
    if name != "digital SGD":
        aimc.convert(model, aimc.AnalogConfig(), seed=seed)
    opt = make(model)
    gen = torch.Generator().manual_seed(seed)
    start, epochs = time.perf_counter(), []
    for epoch in range(args.epochs):
        order = torch.randperm(len(x_tr), generator=gen)
        for i in range(0, len(order), args.batch):
            idx = order[i : i + args.batch]
            opt.zero_grad()
            F.cross_entropy(model(x_tr[idx]), y_tr[idx]).backward()
            opt.step()
        epochs.append(_accuracy(model, x_te, y_te))
        print(
            f"  {name:<40} seed {seed} epoch {epoch + 1}: test accuracy {epochs[-1]:.4f}",
            flush=True,
        )
    return {"per_epoch": epochs, "seconds": time.perf_counter() - start}


def _row(name: str, runs: list[dict]) -> dict:
    """Mean over seeds (and the final accuracy of every seed)."""
    final = [r["per_epoch"][-1] for r in runs]
    return {
        "run": name,
        "test_accuracy": statistics.fmean(final),
        "test_accuracy_std": statistics.stdev(final) if len(final) > 1 else 0.0,
        "test_accuracy_seeds": final,
        "test_accuracy_per_epoch": [
            statistics.fmean(e) for e in zip(*[r["per_epoch"] for r in runs], strict=True)
        ],
        "train_seconds": statistics.fmean(r["seconds"] for r in runs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--train-samples", type=int, default=20000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.5)
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (model, devices)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", default="", help="semicolon-separated run names (default: all)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results/insitu_mnist.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    x_tr, y_tr = load_idx_split(args.data, "train")
    x_te, y_te = load_idx_split(args.data, "test")
    x_tr, y_tr = x_tr[: args.train_samples], y_tr[: args.train_samples]
    seeds = [int(v) for v in args.seeds.split(",") if v.strip()]
    only = [s.strip() for s in args.only.split(";") if s.strip()]
    data = ((x_tr, y_tr), (x_te, y_te))
    rows = []
    for name in _runs(args.lr, 0):
        if only and name not in only:
            continue
        runs = [_train(name, _runs(args.lr, seed)[name], data, args, seed) for seed in seeds]
        rows.append(_row(name, runs))
    result = {
        "command": "python benchmarks/insitu_mnist.py "
        + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k not in ("data",)
        ),
        "torch": torch.__version__,
        "threads": args.threads,
        "model": f"784-256(sigmoid)-10 MLP, batch {args.batch}, lr {args.lr:g}",
        "train_samples": len(x_tr),
        "test_samples": len(x_te),
        "epochs": args.epochs,
        "seeds": seeds,
        "rows": rows,
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    for r in rows:
        print(
            f"{r['run']:<40} {100 * r['test_accuracy']:.2f} ± {100 * r['test_accuracy_std']:.2f} %"
            f"  ({r['train_seconds']:.0f} s per run)"
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
