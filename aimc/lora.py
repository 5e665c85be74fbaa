"""Analog LoRA: trainable digital low-rank adapters beside analog layers that stay fixed.

The AHWA-LoRA setting (Li et al., 2024; LoRA: Hu et al., ICLR 2022): one chip holds the
programmed base model and serves many tasks; each task trains only a small digital adapter,
``y = analog(x) + B A x * alpha / r``, with hardware-aware training of the base's forward
(the HWA weight modifier) so that the adapter learns to absorb the hardware error.

This is peft's own machinery, not a fork of it: :class:`aimc.nn.AnalogLinear` is an
``nn.Linear`` subclass with a plain ``weight`` Parameter, so peft's ``LoraConfig`` /
``get_peft_model`` wrap a converted model's analog layers as their ``base_layer`` and
``save_pretrained`` / ``PeftModel.from_pretrained`` save and load the adapters. Two things make
the combination safe:

* :func:`aimc.convert` never converts peft's adapter Linears (``lora_A``, ``lora_B``), so a
  model may be converted before or after the adapter is attached; only the base is analog.
* :func:`aimc.program` and :func:`aimc.drift` touch only analog layers: programming a new chip
  changes the base, never the adapter.

peft is optional (``pip install 'aimc[lora]'``); it is imported when an adapter is attached
or loaded.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from .convert import _matches, analog_layers, is_peft_model

#: The subdirectory of an exported model directory that holds its LoRA adapter
#: (``adapter_config.json``, ``adapter_model.safetensors``).
ADAPTER_DIR = "adapter"

_KEYS = ("r", "alpha", "dropout", "targets")
_NAME = re.compile(r"^[A-Za-z0-9_.]+$")
_SYNTAX = "r=<int>,alpha=<number>,dropout=<number>,targets=<name>[,<name>...]"


@dataclass(frozen=True)
class LoraSpec:
    """A LoRA adapter's shape (Hu et al., 2022): rank, scale and the layers it sits beside."""

    r: int = 8  #: rank of ``B A`` (``A``: ``r x in``, Kaiming-uniform; ``B``: ``out x r``, zeros)
    alpha: float = 16.0  #: the adapter's output is scaled by ``alpha / r``
    targets: tuple[str, ...] = ("query", "value")  #: names or dotted suffixes of analog layers
    dropout: float = 0.0  #: dropout on the adapter's input (training only)

    def text(self) -> str:
        """The canonical ``--lora`` text (``targets`` last: it is comma-separated)."""
        return (
            f"r={self.r},alpha={_number(self.alpha)},dropout={_number(self.dropout)},"
            f"targets={','.join(self.targets)}"
        )

    def peft_config(self):
        """The equivalent ``peft.LoraConfig`` (no bias training, no task type: the base model's
        forward and outputs are kept as they are)."""
        from peft import LoraConfig

        return LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=list(self.targets),
            bias="none",
        )


def _bad(text: str, why: str) -> ValueError:
    return ValueError(f"--lora: {why} in {text!r}; allowed: {_SYNTAX} (each key optional)")


def parse_lora(text: str) -> LoraSpec:
    """Parse ``--lora`` text, e.g. ``"r=8,alpha=16,targets=query,value"`` (the defaults for keys
    left out are :class:`LoraSpec`'s; ``""`` gives all defaults). Strict: an unknown or repeated
    key, a bad value or a stray token is an error naming ``--lora``."""
    if not isinstance(text, str):
        raise ValueError(f"--lora: got {text!r}; allowed: a string like {_SYNTAX}")
    values: dict[str, list[str]] = {}
    key = None
    for token in (t.strip() for t in text.split(",")) if text.strip() else ():
        if "=" in token:
            key, _, value = (s.strip() for s in token.partition("="))
            if key not in _KEYS:
                raise _bad(text, f"unknown key {key!r}")
            if key in values:
                raise _bad(text, f"key {key!r} given twice")
            values[key] = [value]
        elif key == "targets":
            values["targets"].append(token)
        else:
            raise _bad(text, f"{token!r} is not key=value")
    spec = LoraSpec()
    if "r" in values:
        v = values["r"][0]
        if not v.isdigit() or int(v) < 1:
            raise _bad(text, f"r={v!r} is not an integer >= 1")
        spec = replace(spec, r=int(v))
    for name, ok, allowed in (
        ("alpha", lambda x: x > 0, "a number > 0"),
        ("dropout", lambda x: 0 <= x < 1, "a number in [0, 1)"),
    ):
        if name in values:
            v = values[name][0]
            try:
                x = float(v)
            except ValueError:
                x = math.nan
            if not math.isfinite(x) or not ok(x):
                raise _bad(text, f"{name}={v!r} is not {allowed}")
            spec = replace(spec, **{name: x})
    if "targets" in values:
        names = values["targets"]
        bad = [n for n in names if not _NAME.match(n)]
        if bad:
            raise _bad(text, f"targets has bad layer name(s) {bad!r}")
        if len(set(names)) != len(names):
            raise _bad(text, f"targets has duplicates {names!r}")
        spec = replace(spec, targets=tuple(names))
    return spec


def check_targets(model: nn.Module, spec: LoraSpec) -> list[str]:
    """The analog layers ``spec.targets`` select in ``model`` (converted already). A target that
    matches no analog layer, or that matches a module which is not analog, is an error."""
    analog = {n for n, _ in analog_layers(model)}
    if not analog:
        raise ValueError(
            f"--lora: targets={','.join(spec.targets)}: the model has no analog layer; allowed: "
            "a converted model (LoRA here sits beside analog layers)"
        )
    chosen: list[str] = []
    for target in spec.targets:
        hits = [n for n, _ in model.named_modules() if n and _matches(target, n)]
        digital = [n for n in hits if n not in analog]
        if not hits or digital:
            found = f"it matches {digital[:3]!r}, which are not analog" if digital else "none"
            raise ValueError(
                f"--lora: targets={target!r} matches no analog layer ({found}); allowed: names "
                f"or dotted suffixes of analog layers (e.g. {sorted(analog)[:3]!r})"
            )
        chosen += hits
    return sorted(set(chosen))


def attach_lora(model: nn.Module, spec: LoraSpec, seed: int = 0) -> nn.Module:
    """Wrap the analog layers ``spec.targets`` of ``model`` with trainable LoRA adapters (peft's
    ``get_peft_model``) and return the ``PeftModel``. Every base parameter is frozen (weights,
    biases, embeddings, LayerNorms, learned input ranges and output scales): the adapters are
    the only trained part. ``A`` is initialised from ``seed`` (torch's global generator is left
    as it was)."""
    from peft import get_peft_model

    check_targets(model, spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return get_peft_model(model, spec.peft_config())


def _number(v: float) -> str:
    """``v`` as the shortest text that reads back as the same float (``repr``), without a
    trailing ``.0`` for whole numbers (``16``, not ``16.0``)."""
    v = float(v)
    return str(int(v)) if v.is_integer() and abs(v) < 2**53 else repr(v)


def adapter_dir(model_dir: str | Path) -> Path | None:
    """``<model_dir>/adapter`` if it holds a peft adapter (``adapter_config.json``), else None."""
    path = Path(model_dir) / ADAPTER_DIR
    return path if (path / "adapter_config.json").is_file() else None


def load_adapter(model: nn.Module, path: str | Path, trainable: bool = False) -> nn.Module:
    """``PeftModel.from_pretrained(model, path)``: the adapter saved in ``path`` attached to
    ``model`` (digital or converted; convert it afterwards or before, the adapter stays
    digital). Frozen unless ``trainable``."""
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(path), is_trainable=trainable)


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts (shared tensors counted once)."""
    seen: dict[int, nn.Parameter] = {id(p): p for p in model.parameters()}
    total = sum(p.numel() for p in seen.values())
    return sum(p.numel() for p in seen.values() if p.requires_grad), total


__all__ = [
    "ADAPTER_DIR",
    "LoraSpec",
    "adapter_dir",
    "attach_lora",
    "check_targets",
    "is_peft_model",
    "load_adapter",
    "parameter_counts",
    "parse_lora",
]
