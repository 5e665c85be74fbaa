"""Lifecycle verbs over a whole model: program the chip, let it drift.

Training mode always uses the digital weights; eval mode uses the programmed (and drifted)
conductances of every layer whose config has a device model.
"""

from __future__ import annotations

from torch import nn

from ._malloc import trim_if_grown
from .convert import analog_layers, is_peft_model, seed_name
from .nn.chip import check_storage, check_time
from .random import check_seed, derive_seed


def _device_layers(model: nn.Module, verb: str):
    if not isinstance(model, nn.Module):
        raise ValueError(f"model: got {type(model).__name__}; allowed: a torch.nn.Module")
    peft = is_peft_model(model)
    layers = [(seed_name(n, peft), m) for n, m in analog_layers(model) if m.has_device()]
    if not layers:
        raise ValueError(
            f"{verb}: the model has no analog layer with a device model; convert it with a "
            "config whose device.model is not 'none' (e.g. aimc.presets.pcm_inference())"
        )
    return layers


def program(model: nn.Module, seed: int = 0, storage: str = "full") -> nn.Module:
    """Program every analog layer with a device model: programming noise and per-device state
    (e.g. drift exponents) drawn from ``seed`` (layer ``name`` uses ``derive_seed(seed, name)``),
    plus the drift-compensation baseline. The chip stays fixed until the next ``program``.
    Returns ``model``.

    ``storage="full"`` keeps every device's programmed state (float16; PCM: 8 bytes per weight,
    plus a float32 copy of the read tiles while evaluating); later changes of the digital
    weights do not reach the chip. ``storage="lean"`` keeps only seeds and per-tile numbers and
    regenerates the chip from the weights, layer by layer, whenever it is read: the same numbers
    bit for bit, a model in evaluation at little more than its digital memory (the LLM setting,
    see ``docs/lm.md``), at the cost of recomputing programming and drift at every forward; the
    weights must then not change (an error says so). Layers are processed one at a time. On
    Linux, ``lean`` also makes glibc return large freed blocks to the system at once
    (``aimc._malloc``): otherwise the resident set grows by the allocator's retained heap.
    """
    check_seed(seed)
    check_storage(storage)
    for name, layer in _device_layers(model, "program"):
        layer.program_chip(derive_seed(seed, "program:" + name), storage)
        trim_if_grown()
    return model


def drift(model: nn.Module, t_seconds: float, seed: int = 0, storage: str = "full") -> nn.Module:
    """Let the programmed conductances drift to ``t_seconds`` after programming and read them
    with fresh read noise drawn from ``seed``; update the drift compensation.

    Drift always starts from the programmed state (it is not cumulative): ``drift(m, 3600)``
    then ``drift(m, 60)`` gives the chip one minute after programming. ``t_seconds`` must be a
    finite number >= 0 (at 0 the read noise of a read at ``t0`` after programming still applies).

    A layer that has not been programmed yet is programmed first, with ``seed`` as the
    programming seed (as :func:`program` would with the same seed) — call :func:`program`
    yourself to choose the chip independently of the read seed. ``storage`` is the storage of
    such a first programming (see :func:`program`); programming and drift then run in one pass
    over the layer (a lean chip is generated once, not twice). Returns ``model``.
    """
    t = check_time(t_seconds)
    check_seed(seed)
    check_storage(storage)
    for name, layer in _device_layers(model, "drift"):
        read_seed = derive_seed(seed, "drift:" + name)
        if layer.is_programmed():
            layer.drift_chip(t, read_seed)
        else:
            layer.program_chip(derive_seed(seed, "program:" + name), storage, (t, read_seed))
        trim_if_grown()
    return model
