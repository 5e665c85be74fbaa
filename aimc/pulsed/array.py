"""A crossbar array of pulsed devices as an ``nn.Module``: weights and d2d parameters are buffers.

:class:`PulsedArray` holds one ``(out, in)`` array (or two, for a one-sided pair
``w = g_plus - g_minus``), its device model and update config, and applies pulsed updates.
Everything that defines the devices is a buffer, so a ``state_dict`` checkpoint is the array.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..random import derive_seed
from .config import PulsedConfig, UpdateMode
from .devices import apply_pulses, get
from .update import check_batch, check_lr, expected_counts, slot_counts

#: Most write iterations of a refresh (each halves the remaining distance to the target).
REFRESH_ITERATIONS = 64


class _Devices(nn.Module):
    """One array of devices: the weight ``w`` and the d2d draws, all buffers."""

    def __init__(self, shape: tuple[int, int], config: PulsedConfig, seed: int) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        d2d = get(config.device).sample_d2d(shape, config.params, gen)
        self.keys = sorted(d2d)
        for key in self.keys:
            self.register_buffer(f"d2d_{key}", d2d[key])
        self.register_buffer("w", torch.zeros(shape))

    def d2d(self) -> dict[str, Tensor]:
        return {k: getattr(self, f"d2d_{k}") for k in self.keys}

    def clip(self, w: Tensor) -> Tensor:
        return torch.minimum(torch.maximum(w, self.d2d_w_min), self.d2d_w_max)


class PulsedArray(nn.Module):
    """An ``(out, in)`` array of pulsed devices (REFERENCE.md §6).

    ``seed`` draws the device-to-device parameters (once); the update noise comes from the
    generator passed to :meth:`update`. ``weight()`` is the effective weight (``w``, or
    ``g_plus - g_minus`` for ``config.one_sided_pair``).
    """

    def __init__(self, out_features: int, in_features: int, config: PulsedConfig, seed: int = 0):
        super().__init__()
        if not isinstance(config, PulsedConfig):
            raise ValueError(
                f"config: got {type(config).__name__}; allowed: aimc.pulsed.PulsedConfig"
            )
        self.config = config
        self.model = get(config.device)
        self.shape = (int(out_features), int(in_features))
        names = ["plus", "minus"] if config.one_sided_pair else ["single"]
        self.devices = nn.ModuleList(
            _Devices(self.shape, config, derive_seed(seed, f"d2d:{n}")) for n in names
        )
        self.register_buffer("updates", torch.zeros((), dtype=torch.int64))

    @property
    def pair(self) -> bool:
        return self.config.one_sided_pair

    def granularity(self) -> float:
        """The weight granularity the update is computed for (AIHWKIT
        ``getWeightGranularity``): ``dw_min`` or the model's own (e.g. ``pow_step``: the step at
        mid-range)."""
        return self.model.granularity(self.config.params)

    def weight(self) -> Tensor:
        """The effective weight ``(out, in)``."""
        if self.pair:
            return self.devices[0].w - self.devices[1].w
        return self.devices[0].w

    @torch.no_grad()
    def write(self, target: Tensor) -> None:
        """Set the weight to ``target`` exactly (clipped to each device's bounds), as an ideal
        write-verify programming step: used to initialise an array from a digital weight."""
        target = target.detach().to(self.devices[0].w)
        if self.pair:
            self.devices[0].w.copy_(self.devices[0].clip(target.clamp_min(0)))
            self.devices[1].w.copy_(self.devices[1].clip((-target).clamp_min(0)))
        else:
            self.devices[0].w.copy_(self.devices[0].clip(target))

    @torch.no_grad()
    def apply_counts(
        self,
        n_up: Tensor,
        n_down: Tensor,
        gen: torch.Generator | None,
        cols: Tensor | None = None,
    ) -> None:
        """Apply ``n_up`` up and ``n_down`` down pulses per device at the current state;
        ``gen=None`` means no cycle-to-cycle noise. In a one-sided pair, down pulses are up
        pulses of the minus device. ``cols`` (an index tensor) restricts the pulses to those
        columns (inputs); the counts are then ``(out, len(cols))``."""
        params = self.config.params
        pulses = [(self.devices[0], n_up, n_down)]
        if self.pair:
            zero = torch.zeros_like(n_up)
            pulses = [(self.devices[0], n_up, zero), (self.devices[1], n_down, zero)]
        for dev, up, down in pulses:
            if cols is None:
                dev.w.copy_(apply_pulses(self.model, dev.w, up, down, dev.d2d(), params, gen))
            else:
                d2d = {k: v[:, cols] for k, v in dev.d2d().items()}
                new = apply_pulses(self.model, dev.w[:, cols], up, down, d2d, params, gen)
                dev.w[:, cols] = new

    @torch.no_grad()
    def update(
        self, x: Tensor, d: Tensor, lr: float, gen: torch.Generator, cols: Tensor | None = None
    ) -> None:
        """Pulsed update ``Delta W ~ -lr d^T x`` from a batch of inputs ``x`` ``(B, in)`` and
        errors ``d`` ``(B, out)`` (see :mod:`aimc.pulsed.update`), then the pair refresh.
        With ``cols``, ``x`` holds only those input columns and only they are updated."""
        shape = self.shape if cols is None else (self.shape[0], len(cols))
        check_batch(x, d, shape)
        lr = check_lr(lr)
        if lr > 0:
            cfg = self.config.update
            dw_min = self.granularity()
            x, d = x.float(), d.float()
            if cfg.mode == UpdateMode.EXPECTED:
                self.apply_counts(*expected_counts(x, d, lr, dw_min, cfg), None, cols)
            else:
                for n_up, n_down in slot_counts(x, d, lr, dw_min, cfg, gen):
                    self.apply_counts(n_up, n_down, gen, cols)
        self.finish_update(gen)

    @torch.no_grad()
    def finish_update(self, gen: torch.Generator | None) -> None:
        """Count one update and refresh one-sided pairs every ``refresh_every`` updates."""
        self.updates += 1
        every = self.config.refresh_every
        if self.pair and every > 0 and int(self.updates) % every == 0:
            self.refresh(gen)

    @torch.no_grad()
    def refresh(self, gen: torch.Generator | None) -> int:
        """Refresh saturated one-sided pairs; returns how many were refreshed.

        Where a device of a pair exceeds ``refresh_upper_thres`` of its ``w_max``, the weight
        ``g_plus - g_minus`` is read, both devices are reset to their ``w_min`` and the weight is
        re-written onto one device with up pulses (write-verify: each iteration applies about half
        the pulses still missing, at most :data:`REFRESH_ITERATIONS` iterations). AIHWKIT's
        ``OneSidedUnitCell`` re-writes with an open-loop pulsed update instead.
        """
        if not self.pair:
            return 0
        plus, minus = self.devices
        thres = self.config.refresh_upper_thres
        mask = (plus.w > thres * plus.d2d_w_max) | (minus.w > thres * minus.d2d_w_max)
        count = int(mask.sum())
        if count == 0:
            return 0
        target = plus.w - minus.w
        plus.w.copy_(torch.where(mask, plus.d2d_w_min, plus.w))
        minus.w.copy_(torch.where(mask, minus.d2d_w_min, minus.w))
        for dev, goal in ((plus, target.clamp_min(0)), (minus, (-target).clamp_min(0))):
            self._write_up(dev, torch.where(mask, goal, dev.w), mask, gen)
        return count

    def _write_up(self, dev: _Devices, goal: Tensor, mask: Tensor, gen) -> None:
        params, zero = self.config.params, torch.zeros_like(dev.w)
        for _ in range(REFRESH_ITERATIONS):
            step, _ = self.model.step_sizes(dev.w, dev.d2d(), params)
            missing = (goal - dev.w) / step.clamp_min(1e-12)
            n = torch.where(mask & (missing > 0.5), (0.5 * missing).floor().clamp_min(1), zero)
            if not bool(n.any()):
                break
            dev.w.copy_(apply_pulses(self.model, dev.w, n, zero, dev.d2d(), params, gen))

    def get_extra_state(self) -> dict:
        return {"config": self.config.to_dict()}

    def set_extra_state(self, state: dict) -> None:
        loaded = PulsedConfig.from_dict(state["config"])
        if loaded != self.config:
            raise ValueError(
                "checkpoint pulsed config differs from the array's config: "
                f"checkpoint={loaded.to_dict()}, array={self.config.to_dict()}"
            )

    def extra_repr(self) -> str:
        kind = "one-sided pair" if self.pair else "single"
        return f"{self.shape[0]}x{self.shape[1]}, device={self.config.device}, {kind}"
