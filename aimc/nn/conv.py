"""Analog convolutions: im2col onto the same tiled analog MVM as :class:`AnalogLinear`."""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import AnalogConfig
from .base import AnalogLayerMixin
from .checks import check_conv_input, check_conv_spatial, layer_label


def im2col(
    x: Tensor, kernel: tuple[int, ...], stride: tuple[int, ...], dilation: tuple[int, ...]
) -> tuple[Tensor, tuple[int, ...]]:
    """``(B, C, *S)`` (already padded) -> ``(B * L, C * prod(kernel))`` patches, ``L`` outputs.

    The patch layout is ``(C, k_1, ..., k_n)``, matching ``weight.reshape(out, -1)``.
    """
    n = len(kernel)
    for d in range(n):
        span = dilation[d] * (kernel[d] - 1) + 1
        x = x.unfold(2 + d, span, stride[d])
    if any(dl > 1 for dl in dilation):
        x = x[(Ellipsis, *[slice(None, None, dl) for dl in dilation])]
    out_shape = tuple(x.shape[2 : 2 + n])
    b, c = x.shape[0], x.shape[1]
    # (B, C, O_1..O_n, k_1..k_n) -> (B, O_1..O_n, C, k_1..k_n)
    perm = (0, *range(2, 2 + n), 1, *range(2 + n, 2 + 2 * n))
    cols = x.permute(perm).reshape(b * math.prod(out_shape), c * math.prod(kernel))
    return cols, out_shape


@contextlib.contextmanager
def _named_errors(layer: nn.Module, shape: tuple[int, ...]):
    """Re-raise the errors of the digital ops (padding, exact conv) with the layer's name."""
    try:
        yield
    except (RuntimeError, NotImplementedError) as e:
        raise type(e)(f"{layer_label(layer)}: input of shape {shape}: {e}") from e


class _AnalogConvMixin(AnalogLayerMixin):
    """Forward of an analog ``nn.ConvNd`` (every option of the digital module is honoured)."""

    _ndim = 0

    def _setup(self, config: AnalogConfig | None, seed: int) -> None:
        self.groups_ = self.groups
        self._init_analog(config, seed)

    @classmethod
    def from_digital(
        cls, module: nn.Module, config: AnalogConfig | None = None, seed: int = 0
    ) -> nn.Module:
        """An analog convolution that shares ``module``'s parameters (no copy)."""
        with torch.device("meta"):
            new = cls(
                module.in_channels,
                module.out_channels,
                module.kernel_size,
                stride=module.stride,
                padding=module.padding,
                dilation=module.dilation,
                groups=module.groups,
                bias=module.bias is not None,
                padding_mode=module.padding_mode,
            )
        new.weight = module.weight
        new.bias = module.bias
        new._setup(config, seed)
        new.train(module.training)
        return new

    def weight_matrix(self) -> Tensor:
        g = self.groups
        return self.weight.reshape(g, self.out_channels // g, -1)

    def forward(self, x: Tensor) -> Tensor:
        check_conv_input(self, x)
        shape = tuple(x.shape)
        if self.exact_shortcut(x):
            with _named_errors(self, shape):
                return self._conv_forward(x, self.weight, self.bias)
        unbatched = x.dim() == self._ndim + 1
        if unbatched:
            x = x.unsqueeze(0)
        mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
        pad = self._reversed_padding_repeated_twice
        if any(pad) or mode != "constant":  # the digital layer pads in every other mode too
            with _named_errors(self, shape):  # e.g. reflect padding wider than the input
                x = F.pad(x, pad, mode=mode)
        check_conv_spatial(self, x, shape)
        b, g = x.shape[0], self.groups
        cols, out_shape = im2col(x, self.kernel_size, self.stride, self.dilation)
        cols = cols.reshape(cols.shape[0], g, cols.shape[1] // g).transpose(0, 1)  # (G, N, Cg*K)
        y = self.analog_matmul(cols)  # (G, N, O/G)
        y = y.reshape(g, b, math.prod(out_shape), y.shape[-1])  # (G, B, L, O/G)
        y = y.permute(1, 0, 3, 2)  # (B, G, O/G, L)
        y = y.reshape(b, self.out_channels, *out_shape)
        return y.squeeze(0) if unbatched else y

    def extra_repr(self) -> str:
        return super().extra_repr() + ", " + self.analog_extra_repr()


def _conv_init(
    self,
    base: type,
    in_channels: int,
    out_channels: int,
    kernel_size,
    stride,
    padding,
    dilation,
    groups,
    bias,
    padding_mode,
    config,
    seed,
    device,
    dtype,
):
    base.__init__(
        self,
        in_channels,
        out_channels,
        kernel_size,
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        bias=bias,
        padding_mode=padding_mode,
        device=device,
        dtype=dtype,
    )
    self._setup(config, seed)


class AnalogConv1d(_AnalogConvMixin, nn.Conv1d):
    """``nn.Conv1d`` on analog tiles (same arguments plus ``config`` and ``seed``)."""

    _ndim = 1

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        config: AnalogConfig | None = None,
        seed: int = 0,
        device=None,
        dtype=None,
    ):
        _conv_init(
            self,
            nn.Conv1d,
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            bias,
            padding_mode,
            config,
            seed,
            device,
            dtype,
        )


class AnalogConv2d(_AnalogConvMixin, nn.Conv2d):
    """``nn.Conv2d`` on analog tiles (same arguments plus ``config`` and ``seed``)."""

    _ndim = 2

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        config: AnalogConfig | None = None,
        seed: int = 0,
        device=None,
        dtype=None,
    ):
        _conv_init(
            self,
            nn.Conv2d,
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            bias,
            padding_mode,
            config,
            seed,
            device,
            dtype,
        )


class AnalogConv3d(_AnalogConvMixin, nn.Conv3d):
    """``nn.Conv3d`` on analog tiles (same arguments plus ``config`` and ``seed``)."""

    _ndim = 3

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        config: AnalogConfig | None = None,
        seed: int = 0,
        device=None,
        dtype=None,
    ):
        _conv_init(
            self,
            nn.Conv3d,
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            bias,
            padding_mode,
            config,
            seed,
            device,
            dtype,
        )
