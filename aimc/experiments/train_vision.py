"""``aimc train-vision``: train LeNet-5 on (Fashion-)MNIST, digitally or hardware-aware, then sweep
its accuracy as PCM drifts with the same machinery as ``squad-drift``.

Training is resumable from the last epoch checkpoint and deterministic: the data order of epoch
``e`` and the analog noise streams of that epoch are seeded from ``(seed, e)``, so a resumed run
ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import AnalogConfig, WeightClip, WeightModifier
from ..convert import analog_layers, convert, manual_seed, to_digital
from ..hwa import register_post_step_hook
from ..random import derive_seed
from ..vision import LeNet5, load_idx_split
from .report import Logger, finish
from .rundir import barrier, dist_info, fail_if_busy, open_run_dir
from .safeio import append_row, keep_rows, load_state, load_torch, write_file, write_text
from .sweep import (
    DAY,
    resolve_config,
    run_units,
    validate_sweep,
    with_output_bound_mask,
    work_units,
)

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
DEFAULT_DATA = SHARED / "data" / "fashion-mnist"
METRICS = (("accuracy", "test accuracy (%)"),)


@dataclass
class VisionSpec:
    """Everything that determines the numbers of a train-vision run."""

    data: str = str(DEFAULT_DATA)
    train_config: str = "digital"
    hwa_noise: float = 0.0
    hwa_clip_sigma: float = 0.0
    #: the training config's ``hwa.output_bound_mask`` ("" keeps the config's own)
    hwa_output_bound_mask: str = ""
    epochs: int = 5
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    max_train: int | None = None
    max_test: int | None = None
    seed: int = 0
    configs: list[str] = field(default_factory=lambda: ["digital", "pcm_inference"])
    times: list[float] = field(default_factory=lambda: [0.0, DAY, 365 * DAY])
    chips: int = 5

    def validate(self) -> None:
        resolve_config(self.train_config)
        validate_sweep(self.configs, self.times, self.chips)
        for name in ("epochs", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"--{name.replace('_', '-')}: got {v!r}; allowed: an integer >= 1")
        for name in ("max_train", "max_test"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"--{name.replace('_', '-')}: got {v!r}; allowed: >= 1")
        if not self.lr > 0:
            raise ValueError(f"--lr: got {self.lr!r}; allowed: a number > 0")
        if not 0 <= self.hwa_noise < float("inf"):
            raise ValueError(f"--hwa-noise: got {self.hwa_noise!r}; allowed: a number >= 0")
        if not 0 <= self.hwa_clip_sigma < float("inf"):
            raise ValueError(
                f"--hwa-clip-sigma: got {self.hwa_clip_sigma!r}; allowed: a number >= 0"
            )
        self.training_config()  # (--hwa-output-bound-mask: refused before the run starts)

    def training_config(self) -> AnalogConfig | None:
        """The analog config used while training (None = digital), with ``--hwa-noise`` as an
        additive Gaussian weight modifier (relative to max|W| per tile), ``--hwa-clip-sigma``
        as layer-Gaussian weight clipping after each step and ``--hwa-output-bound-mask`` as
        ``hwa.output_bound_mask``."""
        cfg = resolve_config(self.train_config)
        if self.hwa_noise > 0 or self.hwa_clip_sigma > 0:
            base = cfg if cfg is not None else resolve_config("pcm_inference")
            hwa = base.hwa
            if self.hwa_noise > 0:
                hwa = hwa.replace(modifier=WeightModifier.ADD_NORMAL, modifier_std=self.hwa_noise)
            if self.hwa_clip_sigma > 0:
                hwa = hwa.replace(clip=WeightClip.LAYER_GAUSSIAN, clip_sigma=self.hwa_clip_sigma)
            cfg = base.replace(hwa=hwa)
        return with_output_bound_mask(cfg, self.hwa_output_bound_mask, self.train_config)


def _subset(x: torch.Tensor, y: torch.Tensor, n: int | None, seed: int):
    if n is None or n >= len(x):
        return x, y
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return x[idx], y[idx]


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> float:
    """Top-1 accuracy in percent."""
    correct = 0
    for i in range(0, len(x), batch):
        correct += int((model(x[i : i + batch]).argmax(dim=1) == y[i : i + batch]).sum())
    return 100.0 * correct / len(x)


def _digital_accuracy(model: nn.Module, x, y) -> float:
    twin = copy.deepcopy(model)
    if analog_layers(twin):
        to_digital(twin)
    return accuracy(twin.eval(), x, y)


def train(spec: VisionSpec, out: Path, resume: bool, progress: bool = True) -> nn.Module:
    """Train (or resume training) and return the trained model as a digital LeNet-5."""
    x_train, y_train = _subset(*load_idx_split(spec.data, "train"), spec.max_train, spec.seed)
    x_test, y_test = _subset(*load_idx_split(spec.data, "test"), spec.max_test, spec.seed + 1)
    with torch.random.fork_rng():  # nn init draws from torch's default generator: seed it locally
        torch.manual_seed(spec.seed)
        model = LeNet5()
    cfg = spec.training_config()
    if cfg is not None:
        convert(model, cfg, seed=spec.seed)
    opt = torch.optim.SGD(model.parameters(), lr=spec.lr, momentum=spec.momentum)
    if cfg is not None:
        register_post_step_hook(opt, model)
    ckpt, log = out / "checkpoint.pt", out / "train_log.jsonl"
    if ckpt.exists() and not resume:
        raise ValueError(f"--out: {out} holds a training checkpoint; pass --resume")
    start = _resume_from(ckpt, model, opt) if ckpt.exists() else 0
    keep_rows(log, lambda row: row.get("epoch", -1) < start)  # redone epochs: new log rows
    for epoch in range(start, spec.epochs):
        model.train()
        if cfg is not None:
            manual_seed(model, derive_seed(spec.seed, f"epoch{epoch}"))
        order = torch.randperm(
            len(x_train),
            generator=torch.Generator().manual_seed(derive_seed(spec.seed, f"order{epoch}")),
        )
        total = 0.0
        for i in range(0, len(order), spec.batch_size):
            idx = order[i : i + spec.batch_size]
            opt.zero_grad()
            loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        row = {
            "epoch": epoch,
            "train_loss": total / len(order),
            "test_accuracy_digital": _digital_accuracy(model, x_test, y_test),
        }
        append_row(log, row)
        if progress:
            print(
                f"train-vision: epoch {epoch + 1}/{spec.epochs} loss {row['train_loss']:.4f} "
                f"digital test accuracy {row['test_accuracy_digital']:.2f} %"
            )
        state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch}
        # atomic: a kill or a full disk leaves the previous checkpoint intact
        write_file(ckpt, lambda tmp, s=state: torch.save(s, tmp), _intact(ckpt))
    if analog_layers(model):
        to_digital(model)
    return model.eval()


def _intact(ckpt: Path) -> str:
    return "the previous checkpoint is intact" if ckpt.exists() else "no checkpoint was lost"


def _resume_from(ckpt: Path, model: nn.Module, opt: torch.optim.Optimizer) -> int:
    """Load ``checkpoint.pt`` into model and optimizer; the first epoch still to train. Damage
    is an error naming the file."""
    hint = "delete it to train again from the start with --resume, or start a new --out"
    state = load_torch(ckpt, ("model", "optimizer", "epoch"), hint)
    load_state(model, state["model"], ckpt, hint)
    load_state(opt, state["optimizer"], ckpt, hint)
    return int(state["epoch"]) + 1


def run(
    spec: VisionSpec,
    out: str | Path,
    *,
    resume: bool = False,
    use_wandb: bool = False,
    wandb_mode: str = "offline",
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Train, then sweep the trained model's test accuracy over configs x chips x times."""
    spec.validate()
    out = Path(out)
    rank, world = dist_info()
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("gloo")
    fail_if_busy(out)
    load_idx_split(spec.data, "test")  # validate the data before touching --out
    with open_run_dir(out, _determines(spec), resume, {"spec": asdict(spec)}):
        return _train_and_sweep(spec, out, resume, use_wandb, wandb_mode, progress)


def _determines(spec: VisionSpec) -> dict[str, Any]:
    """What a resume must not change: the spec and the configs it resolves to."""
    cfg = spec.training_config()
    configs = {n: (c.to_dict() if (c := resolve_config(n)) else None) for n in spec.configs}
    training = cfg.to_dict() if cfg is not None else None
    return asdict(spec) | {"training_config": training, "configs_resolved": configs}


def _train_and_sweep(
    spec: VisionSpec, out: Path, resume: bool, use_wandb: bool, wandb_mode: str, progress: bool
) -> list[dict[str, Any]]:
    """:func:`run` in the locked run directory."""
    rank, world = dist_info()
    model_pt = out / "model.pt"
    if rank == 0:
        model = train(spec, out, resume, progress)
        state = model.state_dict()
        write_file(model_pt, lambda tmp: torch.save(state, tmp), "model.pt is unchanged")
    barrier(world)
    model = LeNet5()
    hint = "delete it and rerun with --resume (it is rebuilt from checkpoint.pt)"
    load_state(model, load_torch(model_pt, (), hint, weights_only=True), model_pt, hint)
    model.eval()
    x_test, y_test = _subset(*load_idx_split(spec.data, "test"), spec.max_test, spec.seed + 1)

    def evaluate(m: nn.Module) -> dict[str, float]:
        return {"accuracy": accuracy(m, x_test, y_test)}

    logger = Logger(out, rank, use_wandb, wandb_mode, asdict(spec), METRICS)
    units = work_units(spec.configs, spec.chips, spec.times)
    rows = run_units(
        model,
        units,
        evaluate,
        out,
        spec.seed,
        logger,
        progress,
        {"test_images": len(x_test)},
        main_metric="accuracy",
    )
    if rank == 0:
        title = f"LeNet-5 ({Path(spec.data).name}, trained: {spec.train_config}"
        title += f", hwa-noise {spec.hwa_noise})" if spec.hwa_noise else ")"
        finish(out, rows, asdict(spec), use_wandb, wandb_mode, METRICS, title)
        summary = {"final_digital_accuracy": accuracy(model, x_test, y_test)}
        write_text(out / "train_summary.json", json.dumps(summary, indent=2) + "\n")
    barrier(world)
    return rows


__all__ = ["VisionSpec", "accuracy", "run", "train"]
