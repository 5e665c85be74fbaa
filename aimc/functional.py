"""Pure tensor math of an analog tile: quantizers, DAC/ADC, noise and bound management, tiled MVM.

Nothing here holds state. Every random draw takes an explicit ``torch.Generator``.

Conventions of the tiled MVM (see REFERENCE.md §1):

* a (grouped) weight ``W`` of shape ``(G, O, K)`` maps inputs of size ``K`` to outputs of size
  ``O``; ``G`` independent groups (grouped convolution) are simulated side by side;
* the ``K`` inputs are split into ``ti`` near-equal tiles of ``ci`` rows, the ``O`` outputs into
  ``to`` tiles of ``ro`` columns (zero padding makes the split regular; zero rows/columns change
  neither the MVM nor any of its noise terms, and padded outputs are discarded);
* a physical tile is one (group, input split, output split) triple. The MVM runs as one batched
  matmul over ``B = G * ti`` input splits against all output columns at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .config import MappingConfig
from .random import uniform_


def split_size(n: int, max_size: int) -> tuple[int, int]:
    """Split ``n`` rows into near-equal tiles of at most ``max_size`` (0 = no split).

    Returns ``(number_of_tiles, rows_per_tile)``; the last tile may be shorter (768 -> 2 x 384,
    3072 -> 6 x 512, 1025 -> 3 x 342 with the last one 341).
    """
    if n <= 0:
        raise ValueError(f"split_size: n must be > 0, got {n}")
    if max_size <= 0 or n <= max_size:
        return 1, n
    parts = math.ceil(n / max_size)
    size = math.ceil(n / parts)
    return math.ceil(n / size), size


@dataclass(frozen=True)
class TileLayout:
    """Shape bookkeeping of a tiled weight ``(G, O, K)``."""

    groups: int
    out_size: int
    in_size: int
    n_in: int  #: ``ti``, tiles along the inputs
    rows: int  #: ``ci``, input rows per tile
    n_out: int  #: ``to``, tiles along the outputs
    cols: int  #: ``ro``, output columns per tile

    @classmethod
    def build(cls, groups: int, out_size: int, in_size: int, mapping: MappingConfig) -> TileLayout:
        n_in, rows = split_size(in_size, mapping.max_input_size)
        n_out, cols = split_size(out_size, mapping.max_output_size)
        return cls(groups, out_size, in_size, n_in, rows, n_out, cols)

    @property
    def batch(self) -> int:
        """Number of input splits over all groups, ``G * ti``."""
        return self.groups * self.n_in

    @property
    def padded_in(self) -> int:
        return self.n_in * self.rows

    @property
    def padded_out(self) -> int:
        return self.n_out * self.cols


class _QuantizeSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, step: float, bound: float) -> Tensor:  # type: ignore[override]
        y = x if step <= 0 else torch.round(x / step) * step
        return y.clamp(-bound, bound) if bound > 0 else y

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        return grad, None, None


def quantize(x: Tensor, step: float, bound: float = 0.0) -> Tensor:
    """``clip(round(x / step) * step, -bound, bound)`` with a straight-through gradient.

    ``step <= 0`` skips rounding, ``bound <= 0`` skips clipping. Rounding is half-to-even
    (``torch.round``). NaN stays NaN; ``+-inf`` clips to ``+-bound``.
    """
    return _QuantizeSTE.apply(x, float(step), float(bound))


def stochastic_round(x: Tensor, generator: torch.Generator) -> Tensor:
    """``floor(x + u)``, ``u ~ U[0, 1)``: unbiased rounding to integers."""
    u = torch.empty_like(x)
    uniform_(u, generator)
    return torch.floor(u.add_(x))


# --------------------------------------------------------------------------------------------
# Tile weights


def tile_weights(
    weight: Tensor, layout: TileLayout, mapping: MappingConfig
) -> tuple[Tensor, Tensor | None]:
    """Lay a ``(G, O, K)`` weight out as ``(B, O_pad, ci)`` tile matrices, float32.

    Returns ``(w_tiles, w_scale)``: with weight scaling (``weight_scaling_omega > 0``) the tile
    matrices are normalised so that ``max|W| = omega`` per tile (or per tile column) and
    ``w_scale`` holds the digital factor that undoes it, of shape ``(B, to)`` (per tile) or
    ``(B, O_pad)`` (columnwise); else ``w_scale`` is ``None``.
    """
    g, o, k = weight.shape
    lo = layout
    w = weight.detach().float()
    if lo.padded_in != k or lo.padded_out != o:
        w = torch.nn.functional.pad(w, (0, lo.padded_in - k, 0, lo.padded_out - o))
    # (G, O_pad, ti, ci) -> (G, ti, O_pad, ci) -> (B, O_pad, ci)
    w = w.reshape(g, lo.padded_out, lo.n_in, lo.rows).transpose(1, 2)
    w = w.reshape(lo.batch, lo.padded_out, lo.rows)
    omega = mapping.weight_scaling_omega
    if omega <= 0:
        return w.contiguous(), None
    w_max = w.abs().amax(dim=2)  # (B, O_pad)
    if not mapping.weight_scaling_columnwise:
        w_max = w_max.view(lo.batch, lo.n_out, lo.cols).amax(dim=-1)  # (B, to)
    scale = torch.where(w_max > 0, w_max / omega, torch.ones_like(w_max))
    per_col = scale if scale.shape[1] == lo.padded_out else scale.repeat_interleave(lo.cols, 1)
    return (w / per_col.unsqueeze(2)).contiguous(), scale
