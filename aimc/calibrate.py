"""Static DAC input ranges from data: :func:`calibrate_input_ranges`.

A layer whose config has ``hwa.learn_input_range`` (e.g. :func:`aimc.presets.analog_foundation`)
clips its inputs to ``[-r, r]`` and divides them by one range ``r`` per layer instead of by each
input vector's abs-max (dynamic noise management). Hardware-aware training learns ``r``; a model
that was not trained that way needs ``r`` set from data before it is evaluated, which is what
this module does.

The statistics are recorded on the *noise-free digital function* of every analog layer (the
weights, biases and output scales, without DAC, ADC, noise, drift or the current ranges), so the
ranges do not depend on noise draws, on a programmed chip, or on each other, and a calibration
repeated on the same batches gives the same ranges.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from .convert import analog_layers

METHODS = ("max", "quantile", "std")


def _statistic(x: Tensor, method: str, quantile: float, std_factor: float) -> Tensor:
    """One batch's range estimate of ``x`` (any shape) as a 0-d float32 tensor."""
    a = x.detach().float().reshape(-1)
    if method == "max":
        return a.abs().amax()
    if method == "std":
        return std_factor * a.std() if a.numel() > 1 else a.abs().amax()
    k = max(1, min(a.numel(), math.ceil(quantile * a.numel())))
    return a.abs().kthvalue(k).values  # torch.quantile has an input-size limit


def _digital_matmul(layer: Any, record: Callable[[Tensor], None], x: Tensor) -> Tensor:
    """What ``layer.analog_matmul`` computes without any analog effect, recording ``x``."""
    record(x)
    w = layer.weight_matrix().float()  # (G, O, K)
    xf = x.float()
    bias = None if layer.bias is None else layer.bias.float().view(w.shape[0], -1)
    if bias is not None and layer.analog_bias():  # a bias row of the (last) tile
        w = torch.cat([w, bias.unsqueeze(2)], dim=2)
        xf = torch.cat([xf, xf.new_ones(*xf.shape[:-1], 1)], dim=-1)
        bias = None
    if layer.out_scale is not None:  # each input tile's output times its own scale
        w = w * layer.tile_layout().per_weight(layer.out_scale_columns().detach())
    y = torch.bmm(xf, w.transpose(1, 2))
    if bias is not None:
        y = y + bias.unsqueeze(1)
    return y.to(x.dtype)


@torch.no_grad()
def calibrate_input_ranges(
    model: nn.Module,
    batches: Iterable[Any],
    *,
    forward: Callable[[nn.Module, Any], Any] | None = None,
    method: str = "max",
    quantile: float = 0.9999,
    std_factor: float = 3.0,
) -> dict[str, float]:
    """Set the static input range ``r`` of every analog layer that has one from its inputs on
    ``batches``; returns ``{layer name: r}``.

    Args:
        model: a converted model; its layers with a static input range (config
            ``hwa.learn_input_range``) are calibrated, the other analog layers only run.
        batches: model inputs, e.g. a few tensors of token ids; each is passed to ``forward``.
        forward: ``forward(model, batch)``; default ``model(**batch)`` for a dict, else
            ``model(batch)``.
        method: the range of a layer from its inputs ``x``: ``"max"`` (``max |x|`` over all
            batches: nothing is clipped on the calibration data), ``"quantile"`` (the mean over
            batches of the ``quantile`` of ``|x|``: a few outliers are clipped, the rest gets a
            finer DAC step) or ``"std"`` (the mean over batches of ``std_factor * std(x)``, the
            data estimate hardware-aware training starts from). A batch whose estimate is 0
            (no spread: all zeros, say) is left out of the mean, as the HWA initialisation
            skips it.
        quantile: the quantile of ``"quantile"``, in ``(0, 1]``.
        std_factor: the factor of ``"std"``, ``> 0``.

    The forward runs in eval mode under ``torch.no_grad`` on the noise-free digital function of
    every analog layer (module docstring), so it draws no random numbers; the model's mode is
    restored afterwards. A calibrated layer's ``input_range_batches`` is set to
    ``hwa.input_range_init_batches``, so a later HWA training keeps the range as its start
    value instead of re-estimating it.

    Raises:
        ValueError: no analog layer has a static input range, a bad ``method``, ``quantile``
            or ``std_factor``, no batch, or a layer that saw no (finite) input.
    """
    if method not in METHODS:
        raise ValueError(f"method: got {method!r}; allowed: {', '.join(METHODS)}")
    if not (isinstance(quantile, (int, float)) and 0 < quantile <= 1):
        raise ValueError(f"quantile: got {quantile!r}; allowed: a number in (0, 1]")
    if not (isinstance(std_factor, (int, float)) and math.isfinite(std_factor) and std_factor > 0):
        raise ValueError(f"std_factor: got {std_factor!r}; allowed: a finite number > 0")
    layers = analog_layers(model)
    targets = [(n, m) for n, m in layers if getattr(m, "input_range", None) is not None]
    if not targets:
        raise ValueError(
            "model: no analog layer has a static input range; allowed: a model converted with a "
            "config that has hwa.learn_input_range=True (e.g. presets.analog_foundation())"
        )
    stats: dict[str, list[Tensor]] = {n: [] for n, _ in targets}

    def recorder(name: str) -> Callable[[Tensor], None]:
        if name not in stats:
            return lambda x: None
        return lambda x: stats[name].append(_statistic(x, method, quantile, std_factor))

    call = forward or (lambda m, b: m(**b) if isinstance(b, dict) else m(b))
    was_training = model.training
    model.eval()
    n_batches = 0
    try:
        for name, layer in layers:
            layer.analog_matmul = _bind(layer, recorder(name))
        for batch in batches:
            call(model, batch)
            n_batches += 1
    finally:
        for _, layer in layers:
            layer.__dict__.pop("analog_matmul", None)
        model.train(was_training)
    if n_batches == 0:
        raise ValueError("batches: got no batch; allowed: at least one batch of model inputs")
    ranges = {}
    for name, layer in targets:
        values = torch.stack(stats[name]) if stats[name] else torch.empty(0)
        # a batch without spread (all zeros, say) says nothing of the range: skipped, as the
        # HWA initialisation from data skips it (AIHWKIT's std > 0 test)
        values = values[torch.isfinite(values) & (values > 0)]
        if values.numel() == 0:
            raise ValueError(
                f"layer {name!r}: no finite, non-zero input was seen in {n_batches} batch(es); "
                "the calibration batches must reach every calibrated layer with finite values "
                "that are not all zero"
            )
        r = values.amax() if method == "max" else values.mean()
        r = float(r.clamp_min(1e-6))
        layer.input_range.data.fill_(r)
        layer.input_range_batches.fill_(layer.analog_config.hwa.input_range_init_batches)
        ranges[name] = r
    return ranges


def _bind(layer: Any, record: Callable[[Tensor], None]) -> Callable[[Tensor], Tensor]:
    return lambda x: _digital_matmul(layer, record, x)


__all__ = ["calibrate_input_ranges"]
