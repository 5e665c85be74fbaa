"""Torch optimizers for in-situ analog training of converted models.

``AnalogSGD(model, lr, config)`` (or ``TikiTaka`` / ``MixedPrecision``) finds every
``aimc.nn.AnalogLinear`` (and plain ``nn.Linear``) of ``model``, attaches the pulsed arrays to it
as the child module ``pulsed`` (so ``model.state_dict()`` holds the devices), initialises them
from the current weight, and captures each layer's input ``x`` and output error ``delta`` with
a forward hook and a tensor hook. ``step()`` then updates the arrays with pulses and copies their
effective weight into the layer's ``weight`` Parameter, which stays an ordinary Parameter.
Every other trainable parameter (biases, norms, excluded layers) gets a plain digital SGD step
with the same learning rate.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

from ..nn import AnalogConv1D
from ..random import check_seed, derive_seed
from .compounds import MixedPrecisionArray, PlainSGD, TikiTakaArrays
from .config import MixedPrecisionConfig, PulsedConfig, TikiTakaConfig
from .update import check_batch, check_lr

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d, AnalogConv1D)


class _Capture:
    """Inputs and output gradients of one layer since the last step."""

    def __init__(self, layer: nn.Module) -> None:
        self.xs: list[Tensor] = []
        self.ds: list[tuple[int, Tensor]] = []
        self.handle = layer.register_forward_hook(self._forward)

    def _forward(self, module: nn.Module, inputs: tuple, output: Tensor) -> None:
        if not (module.training and torch.is_grad_enabled() and output.requires_grad):
            return
        x = inputs[0].detach()
        i = len(self.xs)
        self.xs.append(x.reshape(-1, x.shape[-1]))
        # each error with the index of its forward: backwards between forwards (gradient
        # accumulation) deliver them in forward order, one backward of several forwards in
        # reverse order
        output.register_hook(
            lambda g, i=i: self.ds.append((i, g.detach().reshape(-1, g.shape[-1])))
        )

    def pop(self, name: str) -> tuple[Tensor, Tensor] | None:
        xs, ds = self.xs, self.ds
        self.xs, self.ds = [], []
        if not xs and not ds:
            return None
        if len(xs) != len(ds):
            raise ValueError(
                f"{name}: {len(xs)} training forward(s) but {len(ds)} backward(s) since the last "
                "step; allowed: call loss.backward() once per forward before optimizer.step()"
            )
        if sorted(i for i, _ in ds) != list(range(len(xs))):
            raise ValueError(
                f"{name}: the backward(s) since the last step reached its forwards "
                f"{sorted(i for i, _ in ds)} of 0..{len(xs) - 1}; allowed: one backward "
                "through each training forward before optimizer.step()"
            )
        return torch.cat(xs), torch.cat([d for _, d in sorted(ds, key=lambda t: t[0])])


def trainable_layers(model: nn.Module, exclude: Iterable[str] = ()) -> list[tuple[str, nn.Linear]]:
    """The ``(name, layer)`` pairs the pulsed optimizers train: every ``nn.Linear`` (including
    ``aimc.nn.AnalogLinear``) whose name is not in ``exclude``. Convolutions are not supported
    and raise ``ValueError`` naming the layer unless excluded."""
    skip = set(exclude)
    layers = []
    for name, module in model.named_modules():
        if name in skip:
            continue
        if isinstance(module, _CONV):
            raise ValueError(
                f"layer {name!r} ({type(module).__name__}): pulsed training supports only "
                "nn.Linear / aimc.nn.AnalogLinear; allowed: exclude=[...] it to train it digitally"
            )
        if isinstance(module, nn.Linear):
            layers.append((name, module))
    if not layers:
        raise ValueError("model: has no nn.Linear / AnalogLinear layer to train with pulses")
    return layers


class _PulsedOptimizer(torch.optim.Optimizer):
    """Shared machinery: layer discovery, hooks, arrays, the digital SGD of the rest."""

    def __init__(self, model: nn.Module, lr: float, seed: int, exclude: Iterable[str]) -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(f"model: got {type(model).__name__}; allowed: an nn.Module")
        lr = check_lr(lr)
        self.seed = check_seed(seed)
        self._layers = trainable_layers(model, exclude)
        analog_ids = {id(m.weight) for _, m in self._layers}
        digital = [p for p in model.parameters() if p.requires_grad and id(p) not in analog_ids]
        groups = [{"params": [m.weight for _, m in self._layers], "analog": True}]
        if digital:
            groups.append({"params": digital, "analog": False})
        super().__init__(groups, {"lr": lr})
        self._captures = []
        self._generators = []
        for name, layer in self._layers:
            if hasattr(layer, "pulsed"):
                raise ValueError(f"layer {name!r}: already has pulsed arrays (one optimizer only)")
            with torch.no_grad():
                layer.pulsed = self._make(layer.weight.detach().float().cpu(), name).to(
                    layer.weight.device
                )
                self._sync(layer)
            self._captures.append(_Capture(layer))
            gen = torch.Generator(device=layer.weight.device)
            self._generators.append(gen.manual_seed(derive_seed(self.seed, f"{name}:update")))

    def _make(self, weight: Tensor, name: str) -> nn.Module:  # pragma: no cover - abstract
        raise NotImplementedError

    @staticmethod
    def _sync(layer: nn.Module) -> None:
        layer.weight.copy_(layer.pulsed.weight().to(layer.weight.dtype))

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Pulsed update of every analog layer from the captured ``x``/``delta``, then digital
        SGD (``p -= lr * grad``) of the other parameters."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr = check_lr(group["lr"])
            if group["analog"]:
                self._analog_step(lr)
            else:
                for p in group["params"]:
                    if p.grad is not None:
                        p.add_(p.grad, alpha=-lr)
        return loss

    def _analog_step(self, lr: float) -> None:
        pairs = zip(self._layers, self._captures, strict=True)
        batches = [capture.pop(name) for (name, _), capture in pairs]
        # every layer's batch checked before any is updated: a NaN error (a diverged loss)
        # names its layer and leaves the whole model as it was
        for (name, layer), batch in zip(self._layers, batches, strict=True):
            if batch is not None:
                check_batch(*batch, tuple(layer.weight.shape), f"layer {name!r}")
        entries = zip(self._layers, batches, self._generators, strict=True)
        for (_, layer), batch, gen in entries:
            if batch is None:
                continue
            x, d = batch
            layer.pulsed.step(x, d, lr, gen)
            self._sync(layer)

    def remove_hooks(self) -> None:
        """Stop capturing (the arrays stay attached to the layers)."""
        for capture in self._captures:
            capture.handle.remove()


class AnalogSGD(_PulsedOptimizer):
    """Plain in-situ analog SGD: each step is one stochastic pulsed update per layer
    (Gokmen & Vlasov, Front. Neurosci. 10, 333 (2016)).

    ``config`` (a :class:`PulsedConfig`) gives the device and update; ``seed`` draws the
    device-to-device parameters and the pulse noise; ``exclude`` names layers to train digitally.
    """

    def __init__(
        self,
        model: nn.Module,
        lr: float,
        config: PulsedConfig | None = None,
        seed: int = 0,
        exclude: Iterable[str] = (),
    ) -> None:
        self.config = _check_config(config)
        super().__init__(model, lr, seed, exclude)

    def _make(self, weight: Tensor, name: str) -> nn.Module:
        return PlainSGD(weight, self.config, derive_seed(self.seed, name))


class TikiTaka(_PulsedOptimizer):
    """Tiki-Taka (Gokmen & Haensch, Front. Neurosci. 14, 103 (2020)): gradient pulses on a fast
    array ``A``, periodic column transfer into the slow array ``C`` (see
    :class:`TikiTakaConfig`). ``config_slow`` optionally gives ``C`` another device."""

    def __init__(
        self,
        model: nn.Module,
        lr: float,
        config: PulsedConfig | None = None,
        tiki_taka: TikiTakaConfig | None = None,
        config_slow: PulsedConfig | None = None,
        seed: int = 0,
        exclude: Iterable[str] = (),
    ) -> None:
        self.config = _check_config(config)
        self.config_slow = None if config_slow is None else _check_config(config_slow)
        self.tiki_taka = TikiTakaConfig() if tiki_taka is None else tiki_taka
        super().__init__(model, lr, seed, exclude)

    def _make(self, weight: Tensor, name: str) -> nn.Module:
        seed = derive_seed(self.seed, name)
        return TikiTakaArrays(weight, self.config, seed, self.tiki_taka, self.config_slow)


class MixedPrecision(_PulsedOptimizer):
    """Mixed-precision in-situ training (Nandakumar et al., Front. Neurosci. 14, 406 (2020)):
    digital gradient accumulation, pulses where it exceeds ``dw_min`` (see
    :class:`MixedPrecisionConfig`)."""

    def __init__(
        self,
        model: nn.Module,
        lr: float,
        config: PulsedConfig | None = None,
        mixed_precision: MixedPrecisionConfig | None = None,
        seed: int = 0,
        exclude: Iterable[str] = (),
    ) -> None:
        self.config = _check_config(config)
        self.mixed = MixedPrecisionConfig() if mixed_precision is None else mixed_precision
        super().__init__(model, lr, seed, exclude)

    def _make(self, weight: Tensor, name: str) -> nn.Module:
        return MixedPrecisionArray(weight, self.config, derive_seed(self.seed, name), self.mixed)


def _check_config(config: PulsedConfig | None) -> PulsedConfig:
    if config is None:
        return PulsedConfig()
    if not isinstance(config, PulsedConfig):
        raise ValueError(f"config: got {type(config).__name__}; allowed: aimc.pulsed.PulsedConfig")
    return config
