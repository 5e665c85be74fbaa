"""Analog fully connected layers."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import AnalogConfig
from .base import AnalogLayerMixin
from .checks import check_linear_input


class AnalogLinear(AnalogLayerMixin, nn.Linear):
    """``nn.Linear`` whose matrix-vector products run on simulated analog crossbar tiles.

    ``weight`` and ``bias`` stay ordinary parameters of shape ``(out, in)`` and ``(out,)``, so
    any optimizer, ``state_dict`` and DDP work unchanged. ``config`` (default
    :class:`aimc.AnalogConfig`) selects the periphery and mapping; ``seed`` starts the layer's
    own noise stream (see :meth:`manual_seed`).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        config: AnalogConfig | None = None,
        seed: int = 0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self._init_analog(config, seed)

    @classmethod
    def from_digital(
        cls, module: nn.Linear, config: AnalogConfig | None = None, seed: int = 0
    ) -> AnalogLinear:
        """An analog layer that shares ``module``'s parameters (no copy)."""
        with torch.device("meta"):
            new = cls(
                module.in_features,
                module.out_features,
                bias=module.bias is not None,
                config=AnalogConfig(),
                seed=seed,
            )
        new.weight = module.weight
        new.bias = module.bias
        new._init_analog(config, seed)
        new.train(module.training)
        return new

    def weight_matrix(self) -> Tensor:
        return self.weight.unsqueeze(0)

    def forward(self, x: Tensor) -> Tensor:
        check_linear_input(self, x)
        if self.exact_shortcut(x):
            return F.linear(x, self.weight, self.bias)
        return self._analog_forward(x)

    def _analog_forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        y = self.analog_matmul(x.reshape(1, -1, x.shape[-1]))
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return super().extra_repr() + ", " + self.analog_extra_repr()


class AnalogConv1D(AnalogLinear):
    """Analog version of HuggingFace's ``Conv1D`` (GPT-2): ``y = x @ W + b`` with ``W`` stored
    as ``(in, out)``. The weight keeps that layout so the original Parameter is reused."""

    def __init__(
        self,
        nf: int,
        nx: int,
        config: AnalogConfig | None = None,
        seed: int = 0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = nx, nf
        self.nf, self.nx = nf, nx
        self.weight = nn.Parameter(torch.empty(nx, nf, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(nf, device=device, dtype=dtype))
        nn.init.normal_(self.weight, std=0.02)
        self._init_analog(config, seed)

    @classmethod
    def from_digital(
        cls, module: nn.Module, config: AnalogConfig | None = None, seed: int = 0
    ) -> AnalogConv1D:
        """An analog layer sharing the parameters of a HuggingFace ``Conv1D``."""
        with torch.device("meta"):
            new = cls(module.nf, module.weight.shape[0], config=AnalogConfig(), seed=seed)
        new.weight = module.weight
        new.bias = module.bias
        new._init_analog(config, seed)
        new.train(module.training)
        return new

    def weight_matrix(self) -> Tensor:
        return self.weight.t().unsqueeze(0)

    def forward(self, x: Tensor) -> Tensor:
        check_linear_input(self, x, "transformers Conv1D", IndexError)
        if self.exact_shortcut(x):
            lead = x.shape[:-1]
            y = torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight)
            return y.reshape(*lead, self.nf)
        return self._analog_forward(x)

    def extra_repr(self) -> str:
        return f"nf={self.nf}, nx={self.nx}, " + self.analog_extra_repr()
