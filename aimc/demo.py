"""The README's demo: convert small models with each preset and print the output error table."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import nn

from . import presets
from .config import AnalogConfig
from .convert import analog_layers, convert, manual_seed, to_digital
from .lifecycle import drift, program
from .vision import LeNet5

PRESETS: dict[str, Callable[[], AnalogConfig]] = {
    "ideal": presets.ideal,
    "pcm_inference": presets.pcm_inference,
    "pcm_weights_only": presets.pcm_weights_only,
    "standard_hwa": presets.standard_hwa,
    "bert_squad(0.0175)": lambda: presets.bert_squad(0.0175),
    "bert_squad(0.035)": lambda: presets.bert_squad(0.035),
    "bert_squad(0.07)": lambda: presets.bert_squad(0.07),
}


Forward = Callable[[nn.Module], torch.Tensor]


def _models(gen: torch.Generator) -> list[tuple[str, nn.Module, Forward]]:
    torch.manual_seed(0)  # demo-only: module initialisation uses torch's default generator
    out = []
    cnn = LeNet5().eval()
    images = torch.randn(64, 1, 28, 28, generator=gen)
    out.append(("LeNet-5 (28x28)", cnn, lambda m: m(images)))
    try:
        from transformers import BertConfig, BertModel
        from transformers.utils import logging as hf_logging
    except ImportError:
        return out
    hf_logging.set_verbosity_error()
    bert = BertModel(
        BertConfig(
            vocab_size=1000,
            hidden_size=256,
            num_hidden_layers=4,
            num_attention_heads=4,
            intermediate_size=1024,
        )
    ).eval()
    ids = torch.randint(0, 1000, (8, 128), generator=gen)
    out.append(("BERT 4x256 (random init)", bert, lambda m: m(input_ids=ids).last_hidden_state))
    return out


def _errors(
    model: nn.Module, forward: Forward, reference: torch.Tensor, seeds: int, t: float | None
) -> tuple[list[float], list[float]]:
    errs, times = [], []
    has_device = any(layer.has_device() for _, layer in analog_layers(model))
    for seed in range(seeds):
        manual_seed(model, seed)
        if has_device:
            program(model, seed=seed)
            if t is not None:
                drift(model, t, seed=seed)
        start = time.perf_counter()
        y = forward(model)
        times.append(time.perf_counter() - start)
        errs.append(float((y - reference).norm() / reference.norm()))
    return errs, times


def _fmt(errs: list[float]) -> str:
    e = torch.tensor(errs)
    std = float(e.std()) if len(errs) > 1 else 0.0
    return f"{float(e.mean()):.4f} ± {std:.4f}"


def run(seeds: int = 3) -> str:
    """Build the table (also returned as text)."""
    gen = torch.Generator().manual_seed(0)
    head = (
        f"{'model':<26} {'preset':<20} {'layers':>6} {'programmed (t=0)':>18} "
        f"{'1 day':>18} {'1 year':>18} {'ms/fwd':>7}"
    )
    lines = [head, "-" * len(head)]
    for label, model, forward in _models(gen):
        model.eval()
        with torch.inference_mode():
            reference = forward(model)
        for name, make in PRESETS.items():
            convert(model, make())
            cells, times = [], []
            with torch.inference_mode():
                for t in (None, 86400.0, 365 * 86400.0):
                    errs, ts = _errors(model, forward, reference, seeds, t)
                    cells.append(_fmt(errs))
                    times += ts
            n_layers = len(analog_layers(model))
            to_digital(model)
            ms = 1e3 * sorted(times)[len(times) // 2]
            lines.append(
                f"{label:<26} {name:<20} {n_layers:>6} {cells[0]:>18} {cells[1]:>18} "
                f"{cells[2]:>18} {ms:>7.1f}"
            )
    lines.append("")
    lines.append(
        "Relative error ||y_analog - y_digital|| / ||y_digital|| of the model output, mean ± std "
        f"over {seeds} chips (program seeds). PCM presets: programming noise, drift to the given "
        "time after programming, read noise, global drift compensation, and the periphery "
        "(DAC/ADC, IO noise, bound management)."
    )
    return "\n".join(lines)
