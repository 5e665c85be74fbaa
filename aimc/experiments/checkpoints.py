"""Checkpoints and model exports of ``aimc finetune-squad``, safe against kills and full disks.

``<out>/checkpoints/step-NNNNNNN/`` holds the exported model (a digital HuggingFace directory:
safetensors, config, tokenizer, ``aimc_finetune.json``) and ``training_state.pt`` (model,
optimizer and scheduler state, to resume from). Each checkpoint and the final ``<out>/model/``
are written into ``<name>.tmp``, synced and renamed into place
(:func:`aimc.experiments.safeio.write_dir`): a kill or a failed write never touches the previous
checkpoint, and a damaged ``training_state.pt`` is an error naming it. An analog-LoRA model is
written as its frozen base plus ``adapter/`` (peft's ``save_pretrained``) inside the directory.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from ..convert import analog_layers, to_digital
from ..lora import ADAPTER_DIR, is_peft_model
from .safeio import load_state, load_torch, write_dir

_STEP_DIR = re.compile(r"^step-(\d+)$")


def latest_checkpoint(out: Path) -> Path | None:
    """The newest complete checkpoint directory in ``out`` (``None`` if there is none)."""
    found = []
    for d in (out / "checkpoints").glob("step-*"):
        m = _STEP_DIR.match(d.name)
        if m and (d / "training_state.pt").exists():
            found.append((int(m.group(1)), d))
    return max(found)[1] if found else None


def _exporter(model: torch.nn.Module, tokenizer, meta: dict[str, Any]):
    """``fill(dir)``: write ``model`` as a digital HuggingFace directory into ``dir``."""

    def fill(tmp: Path) -> None:
        twin = copy.deepcopy(model)
        if is_peft_model(twin):  # analog LoRA: the frozen base, plus the adapter in adapter/
            twin.save_pretrained(tmp / ADAPTER_DIR, safe_serialization=True)
            twin = twin.unload()
        ranges = {
            n: float(m.input_range.detach())
            for n, m in analog_layers(twin)
            if m.input_range is not None
        }
        if analog_layers(twin):
            to_digital(twin)
        twin.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        info = meta | {"learned_input_ranges": ranges}
        (tmp / "aimc_finetune.json").write_text(json.dumps(info, indent=2) + "\n")

    return fill


def export_model(model: torch.nn.Module, tokenizer, path: str | Path, meta: dict[str, Any]) -> Path:
    """Write ``model`` (analog or digital) and ``tokenizer`` to ``path`` as a digital HuggingFace
    directory that ``from_pretrained`` and ``aimc squad-drift --model`` load; ``meta`` goes to
    ``aimc_finetune.json`` with the learned input ranges. Atomic: a kill or a failed write (a
    full disk) leaves either the old directory or the new one."""
    path = Path(path)
    return write_dir(path, _exporter(model, tokenizer, meta), f"{path.name} is unchanged")


def save_checkpoint(out: Path, step: int, model, tokenizer, opt, sched, meta, keep: int) -> Path:
    """``checkpoints/step-NNNNNNN``: the exported model plus ``training_state.pt``; written
    beside and renamed into place, so a failed write never touches the previous checkpoint."""
    path = out / "checkpoints" / f"step-{step:07d}"
    path.parent.mkdir(parents=True, exist_ok=True)
    export = _exporter(model, tokenizer, meta | {"step": step})

    def fill(tmp: Path) -> None:
        export(tmp)
        state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step}
        torch.save(state | {"scheduler": sched.state_dict()}, tmp / "training_state.pt")

    prev = latest_checkpoint(out)
    intact = f"the previous checkpoint {prev} is intact" if prev else "no checkpoint was lost"
    write_dir(path, fill, intact)
    done = sorted(d for d in path.parent.glob("step-*") if _STEP_DIR.match(d.name))
    for old in done[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return path


def resume_from(out: Path, model, opt, sched, dev: torch.device) -> int:
    """Load the latest checkpoint of ``out`` (if any) into model, optimizer and scheduler; the
    first step still to run. Damage is an error naming the file."""
    ckpt = latest_checkpoint(out)
    if ckpt is None:
        return 0
    path = ckpt / "training_state.pt"
    hint = f"delete {ckpt} to resume from the checkpoint before it, or start a new --out"
    keys = ("model", "optimizer", "scheduler", "step")
    state = load_torch(path, keys, hint, map_location=dev)
    for module, key in ((model, "model"), (opt, "optimizer"), (sched, "scheduler")):
        load_state(module, state[key], path, hint)
    return int(state["step"]) + 1


__all__ = ["export_model", "latest_checkpoint", "resume_from", "save_checkpoint"]
