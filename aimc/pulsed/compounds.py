"""Training algorithms on pulsed arrays: plain analog SGD, Tiki-Taka and mixed precision.

Each is an ``nn.Module`` (attached to the trained layer, so its arrays and counters are in the
model's ``state_dict``) with ``weight()`` — the weight the layer's forward uses — and
``step(x, delta, lr, gen)``, one optimizer step from the captured inputs and output errors.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..random import derive_seed, normal_
from .array import PulsedArray
from .config import MixedPrecisionConfig, PulsedConfig, TikiTakaConfig
from .update import check_batch


class PlainSGD(nn.Module):
    """Analog SGD (Gokmen & Vlasov, Front. Neurosci. 2016): the gradient goes straight to the
    array as a pulsed update, ``Delta W ~ -lr delta^T x``."""

    def __init__(self, weight: Tensor, config: PulsedConfig, seed: int) -> None:
        super().__init__()
        out, inp = weight.shape
        self.array = PulsedArray(out, inp, config, derive_seed(seed, "array"))
        self.array.write(weight)

    def weight(self) -> Tensor:
        return self.array.weight()

    def step(self, x: Tensor, d: Tensor, lr: float, gen: torch.Generator) -> None:
        self.array.update(x, d, lr, gen)


class TikiTakaArrays(nn.Module):
    """Tiki-Taka (Gokmen & Haensch, Front. Neurosci. 14, 103 (2020)): fast array ``A`` (starts
    at 0) takes the gradient pulses; every ``transfer_every`` steps the next
    ``columns_per_transfer`` columns of ``A`` are read and written into ``C`` (starts at the
    layer's weight) with a pulsed update of learning rate ``transfer_lr``. Weight:
    ``gamma A + C``."""

    def __init__(
        self,
        weight: Tensor,
        config: PulsedConfig,
        seed: int,
        tiki_taka: TikiTakaConfig,
        config_slow: PulsedConfig | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(tiki_taka, TikiTakaConfig):
            raise ValueError(
                f"tiki_taka: got {type(tiki_taka).__name__}; allowed: aimc.pulsed.TikiTakaConfig"
            )
        out, inp = weight.shape
        if tiki_taka.columns_per_transfer > inp:
            # (a transfer would read a column twice but write it once: half the transfer lost)
            raise ValueError(
                f"tiki_taka.columns_per_transfer: got {tiki_taka.columns_per_transfer} for a "
                f"layer of {inp} inputs; allowed: at most the layer's inputs ({inp})"
            )
        self.tt = tiki_taka
        self.fast = PulsedArray(out, inp, config, derive_seed(seed, "fast"))
        self.slow = PulsedArray(out, inp, config_slow or config, derive_seed(seed, "slow"))
        self.fast.write(torch.zeros_like(weight))
        self.slow.write(weight)
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))
        self.register_buffer("next_column", torch.zeros((), dtype=torch.int64))

    def weight(self) -> Tensor:
        if self.tt.gamma == 0:
            return self.slow.weight()
        return self.tt.gamma * self.fast.weight() + self.slow.weight()

    def step(self, x: Tensor, d: Tensor, lr: float, gen: torch.Generator) -> None:
        self.fast.update(x, d, lr * self.tt.fast_lr, gen)
        self.steps += 1
        if int(self.steps) % self.tt.transfer_every == 0:
            lr_t = self.tt.transfer_lr * (lr if self.tt.scale_transfer_lr else 1.0)
            self.transfer(lr_t, gen)

    @torch.no_grad()
    def transfer(self, lr: float, gen: torch.Generator) -> list[int]:
        """Read the next columns of ``A`` and add them (times ``lr``) to ``C`` with a pulsed
        update (one-hot inputs, errors ``-A[:, k]``); returns the column indices."""
        out, inp = self.fast.shape
        start = int(self.next_column)
        cols = [(start + k) % inp for k in range(self.tt.columns_per_transfer)]
        self.next_column.fill_((start + len(cols)) % inp)
        read = self.fast.weight()[:, cols].t()  # (n_cols, out)
        if self.tt.read_noise > 0:
            read = read + self.tt.read_noise * normal_(torch.empty_like(read), gen)
        # one-hot inputs on the transferred columns only: the other columns get no pulses
        x = torch.eye(len(cols), device=read.device)
        index = torch.tensor(cols, device=read.device)
        self.slow.update(x, -read, lr, gen, cols=index)
        return cols


class MixedPrecisionArray(nn.Module):
    """Mixed precision (Nandakumar et al., Front. Neurosci. 14, 406 (2020)): the gradient
    ``-lr delta^T x`` accumulates in a digital matrix ``chi`` (a buffer); devices where
    ``|chi|`` reaches the threshold ``granularity * dw`` (``dw``: the device's weight
    granularity) get ``trunc(chi / threshold)`` pulses and ``chi`` keeps the remainder."""

    def __init__(
        self, weight: Tensor, config: PulsedConfig, seed: int, mixed: MixedPrecisionConfig
    ) -> None:
        super().__init__()
        if not isinstance(mixed, MixedPrecisionConfig):
            raise ValueError(
                f"mixed_precision: got {type(mixed).__name__}; allowed: "
                "aimc.pulsed.MixedPrecisionConfig"
            )
        out, inp = weight.shape
        self.mp = mixed
        self.array = PulsedArray(out, inp, config, derive_seed(seed, "array"))
        self.array.write(weight)
        self.register_buffer("chi", torch.zeros(out, inp))

    def weight(self) -> Tensor:
        return self.array.weight()

    @torch.no_grad()
    def step(self, x: Tensor, d: Tensor, lr: float, gen: torch.Generator) -> None:
        check_batch(x, d, self.array.shape)
        self.chi.add_(d.float().t() @ x.float(), alpha=-lr)
        threshold = self.mp.granularity * self.array.granularity()
        n = torch.trunc(self.chi / threshold)
        if self.mp.max_pulses > 0:
            n = n.clamp(-self.mp.max_pulses, self.mp.max_pulses)
        if bool(n.any()):
            self.chi.sub_(n * threshold)
            self.array.apply_counts(n.clamp_min(0), (-n).clamp_min(0), gen)
        self.array.finish_update(gen)
