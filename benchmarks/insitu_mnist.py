"""In-situ analog training of a 2-layer MLP on MNIST vs digital SGD (aimc.pulsed).

784 -> 256 (sigmoid) -> 10, cross-entropy, batch 64, a fixed subset of the training set, a fixed
number of epochs, the full 10k test set. Analog runs convert both layers to AnalogLinear (noisy
forward with the default AnalogConfig periphery) and train them with pulses; the biases get
digital SGD. Writes benchmarks/results/insitu_mnist.json.
"""

from __future__ import annotations

import argparse
import json
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


def _runs(lr: float) -> dict[str, Callable[[nn.Module], torch.optim.Optimizer]]:
    soft = PulsedConfig(device="soft_bounds")
    const = PulsedConfig(device="constant_step")
    tt = TikiTakaConfig(transfer_every=1, columns_per_transfer=8, transfer_lr=1.0)
    return {
        "digital SGD": lambda m: torch.optim.SGD(m.parameters(), lr=lr),
        "analog SGD, SoftBounds": lambda m: AnalogSGD(m, lr=lr, config=soft, seed=0),
        "analog SGD, ConstantStep": lambda m: AnalogSGD(m, lr=lr, config=const, seed=0),
        "analog SGD, SoftBounds, expected step": lambda m: AnalogSGD(
            m, lr=lr, config=soft.replace(update=UpdateConfig(mode="expected")), seed=0
        ),
        "Tiki-Taka, SoftBounds": lambda m: TikiTaka(m, lr=lr, config=soft, tiki_taka=tt, seed=0),
        "mixed precision, ConstantStep": lambda m: MixedPrecision(m, lr=lr, config=const, seed=0),
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


def _train(name, make, data, args) -> dict:
    (x_tr, y_tr), (x_te, y_te) = data
    model = _mlp(args.seed)
    if name != "digital SGD":
        aimc.convert(model, aimc.AnalogConfig(), seed=args.seed)
    opt = make(model)
    gen = torch.Generator().manual_seed(args.seed)
    start, epochs = time.perf_counter(), []
    for epoch in range(args.epochs):
        order = torch.randperm(len(x_tr), generator=gen)
        for i in range(0, len(order), args.batch):
            idx = order[i : i + args.batch]
            opt.zero_grad()
            F.cross_entropy(model(x_tr[idx]), y_tr[idx]).backward()
            opt.step()
        epochs.append(_accuracy(model, x_te, y_te))
        print(f"  {name:<40} epoch {epoch + 1}: test accuracy {epochs[-1]:.4f}", flush=True)
    return {
        "run": name,
        "test_accuracy": epochs[-1],
        "test_accuracy_per_epoch": epochs,
        "train_seconds": time.perf_counter() - start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--train-samples", type=int, default=20000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", default="", help="semicolon-separated run names (default: all)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results/insitu_mnist.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    x_tr, y_tr = load_idx_split(args.data, "train")
    x_te, y_te = load_idx_split(args.data, "test")
    x_tr, y_tr = x_tr[: args.train_samples], y_tr[: args.train_samples]
    runs = _runs(args.lr)
    only = [s.strip() for s in args.only.split(";") if s.strip()]
    rows = [
        _train(name, make, ((x_tr, y_tr), (x_te, y_te)), args)
        for name, make in runs.items()
        if not only or name in only
    ]
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
        "rows": rows,
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    for r in rows:
        print(f"{r['run']:<40} {100 * r['test_accuracy']:.2f} %  ({r['train_seconds']:.0f} s)")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
