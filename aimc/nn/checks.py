"""Input and weight checks of the analog layers: an analog layer fails wherever its digital twin
fails, with the digital twin's exception type and a message that names the layer.

The analog forward pads, views and tiles its input, so without these checks an input one
feature short would be zero-padded and one feature long would be cut: a plausible number from a
wrong input. The checks cost a few Python comparisons per forward (no tensor work).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def layer_label(layer: Any) -> str:
    """``AnalogLinear 'encoder.0.fc1'`` (the name :func:`aimc.convert` gave the layer), or the
    class name alone for a layer built by hand."""
    name = getattr(layer, "analog_name", "")
    return f"{type(layer).__name__} {name!r}" if name else type(layer).__name__


def _fail(layer: Any, what: str, digital: str, error: type = RuntimeError) -> None:
    raise error(f"{layer_label(layer)}: {what} (the digital {digital} raises here too)")


def check_common(layer: Any, x: Tensor, digital: str) -> None:
    """Type, dtype and device of the input against the layer's weight, as the digital op
    checks them (under autocast: the dtypes autocast casts them to, :func:`compute_dtype`)."""
    if not isinstance(x, Tensor):
        raise TypeError(
            f"{layer_label(layer)}: input must be a torch.Tensor, got {type(x).__name__}"
        )
    w = layer.weight
    if x.device != w.device and w.device.type != "meta":
        _fail(
            layer,
            f"input is on {x.device} but the weight is on {w.device}; move the input "
            "(or the model) so both are on the same device",
            digital,
        )
    x_dtype, w_dtype = compute_dtype(x), compute_dtype(w, x.device.type)
    if x_dtype != w_dtype:
        cast = "" if (x_dtype, w_dtype) == (x.dtype, w.dtype) else " (after autocast)"
        _fail(
            layer,
            f"input dtype {x_dtype} does not match the weight dtype {w_dtype}{cast}; cast the "
            "input (or the model) so both have the same dtype",
            digital,
        )


def compute_dtype(t: Tensor, device_type: str | None = None) -> torch.dtype:
    """The dtype the digital op computes ``t`` in: under autocast on ``device_type`` (default:
    ``t``'s) autocast's dtype for a floating-point tensor other than float64 (the tensors
    autocast casts), else ``t.dtype``. The analog layer returns its output in this dtype of
    its input."""
    device_type = device_type or t.device.type
    if (
        torch.is_autocast_enabled(device_type)
        and t.is_floating_point()
        and t.dtype != torch.float64
    ):
        return torch.get_autocast_dtype(device_type)
    return t.dtype


def check_linear_input(
    layer: Any, x: Tensor, digital: str = "nn.Linear", scalar_error: type = RuntimeError
) -> None:
    """``x`` must be at least 1-D with ``in_features`` in its last dimension. ``scalar_error``
    is what the digital twin raises for a 0-d input (HF ``Conv1D``: ``IndexError``)."""
    k = layer.in_features
    if isinstance(x, Tensor) and x.dim() == 0:
        what = f"expected an input of shape (..., {k}), got shape () (a 0-d tensor)"
        _fail(layer, what, digital, scalar_error)
    check_common(layer, x, digital)
    if x.shape[-1] != k:
        _fail(
            layer,
            f"expected an input of shape (..., {k}) (in_features={k}), got shape "
            f"{tuple(x.shape)} with {x.shape[-1]} features",
            digital,
        )


def check_conv_input(layer: Any, x: Tensor) -> None:
    """Dimensions, dtype, device and channels (with groups), as ``nn.Conv{n}d`` checks them
    (the spatial size is checked after padding, :func:`check_conv_spatial`)."""
    n = layer._ndim
    digital = f"nn.Conv{n}d"
    c = layer.in_channels
    if isinstance(x, Tensor) and x.dim() not in (n + 1, n + 2):
        # the digital layer pads first where padding_mode != 'zeros', and F.pad raises this
        error = RuntimeError if layer.padding_mode == "zeros" else NotImplementedError
        _fail(
            layer,
            f"expected a {n + 1}-D (unbatched) or {n + 2}-D (batched) input of shape "
            f"([batch,] {c}, {', '.join('*' * n)}), got shape {tuple(x.shape)}",
            digital,
            error,
        )
    check_common(layer, x, digital)
    empty_batch = x.dim() == n + 2 and x.shape[0] == 0
    if 0 in x.shape[-n:] and not empty_batch:  # refused even where padding covers the kernel
        _fail(layer, f"input of shape {tuple(x.shape)} has an empty spatial dimension", digital)
    channels = x.shape[-n - 1]
    if channels != c:
        groups = f" over groups={layer.groups}" if layer.groups > 1 else ""
        _fail(
            layer,
            f"expected {c} input channels{groups} (in_channels={c}), got shape "
            f"{tuple(x.shape)} with {channels} channels",
            digital,
        )


def check_conv_spatial(layer: Any, padded: Tensor, shape: tuple[int, ...]) -> None:
    """The padded input (``padded``; the input had ``shape``) must cover the dilated kernel."""
    n = layer._ndim
    size = tuple(padded.shape[-n:])
    kernel = tuple(d * (k - 1) + 1 for k, d in zip(layer.kernel_size, layer.dilation, strict=True))
    if any(p < k for p, k in zip(size, kernel, strict=True)):
        _fail(
            layer,
            f"input of shape {shape} has padded spatial size {size}, smaller than the "
            f"(dilated) kernel {kernel}",
            f"nn.Conv{n}d",
        )


def check_finite_weights(layer: Any, verb: str, label: str | None = None) -> None:
    """Refuse NaN/inf in the weight and bias: a crossbar cannot hold them, and the periphery
    (scaling, clipping) would turn them into finite, wrong outputs. ``label`` names the layer
    in the message (default :func:`layer_label`)."""
    for pname in ("weight", "bias"):
        p = getattr(layer, pname, None)
        if p is None or p.device.type == "meta":
            continue
        bad = int((~torch.isfinite(p.detach())).sum())
        if bad:
            nan = int(torch.isnan(p.detach()).sum())
            raise ValueError(
                f"{verb}: {label or layer_label(layer)} {pname} has {bad} non-finite value(s) "
                f"({nan} NaN, {bad - nan} inf) of {p.numel()}; analog tiles hold finite "
                "weights only — fix the weights (e.g. a diverged training run) before "
                "converting or programming"
            )


def check_input_range(layer: Any, r: Tensor) -> None:
    """Refuse a learned input range that is not positive and finite: the clip ``[-r, r]`` of a
    negative range maps every input to ``|r|`` (an output that no longer depends on the input),
    an infinite one scales every input to DAC level 0, and a zero one divides by zero. A
    learned range gets there when training pushes it through zero (its decay alone, on a
    stretch of zero inputs) or diverges. AIHWKIT keeps clipping at ``|r|`` but divides by the
    signed ``r``, negating the layer's input: no behaviour to copy."""
    v = r.detach()
    tiny = torch.finfo(torch.float32).tiny  # (a subnormal range: 1 / r overflows)
    if v.device.type == "meta" or bool(((v >= tiny) & torch.isfinite(v)).all()):
        return
    values = ", ".join(f"{float(a):.6g}" for a in v.reshape(-1)[:4])
    raise ValueError(
        f"forward: {layer_label(layer)} input_range is {values}; allowed: positive and finite "
        "— the learned input range crossed zero or diverged in training (lower the learning "
        "rate or hwa.input_range_decay, or reset it with layer.input_range.fill_(...))"
    )


#: Weight dtypes an analog layer accepts: the periphery computes in float32 and returns the
#: model's dtype, which must therefore be a floating-point type that float32 covers (or float64).
WEIGHT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_weight_dtype(module: Any, label: str) -> None:
    """Refuse a weight dtype the periphery cannot honour (integer, quantized, float8, complex)."""
    for pname in ("weight", "bias"):
        p = getattr(module, pname, None)
        if p is not None and p.dtype not in WEIGHT_DTYPES:
            raise ValueError(
                f"convert: {label} {pname} has dtype {p.dtype}; allowed: torch.float16, "
                "torch.bfloat16, torch.float32 or torch.float64 (the periphery computes in "
                "float32 and returns the model's dtype) — dequantize the model first (e.g. load "
                "it with torch_dtype=torch.bfloat16)"
            )


def check_materialized(layer: Any, verb: str) -> None:
    """Refuse weights on the meta device (a model loaded without its weights)."""
    if layer.weight.device.type == "meta":
        raise RuntimeError(
            f"{verb}: {layer_label(layer)} weight is on the meta device (not loaded); load the "
            "weights (e.g. from_pretrained without device_map='meta', or model.to_empty() and "
            "load_state_dict) before programming"
        )
