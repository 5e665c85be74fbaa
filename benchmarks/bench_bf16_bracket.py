"""The bracketed bfloat16 variance of ``pcm_read`` noise against the float32 variance MVM.

An eager ``pcm_read`` forward on a CPU with native bfloat16 matmuls computes the variance MVM
``x'^2 @ |W|^T`` in bfloat16 and decides each output's ADC level from a proven bracket around
the float32 variance, computing the float32 variance only for the outputs the bracket cannot
decide (``aimc._bracket``). On the layers of ``bench_eval_forward.py`` (the three
``bench_linear.py`` shapes and three MiniLM layers on real SQuAD activations), programmed
(seed 0) and drifted to 1 hour (seed 0) under ``bert_squad:0.0175``, reported per row:

* the bfloat16 variance MVM's largest relative error against float64 on the first pass's
  operands, next to the bound the bracket assumes (``aimc._bracket.bracket_eps``);
* the share of the outputs bracketed in one forward that needed the float32 variance (all
  passes: the first, bound management's rounds, predicted saturation's undecided vectors);
* the layer's outputs that differ between ``AIMC_BF16_BRACKET=1`` and ``=0`` on the same seeds
  (ADC levels: only where an output's exact value lies within float rounding of a tie);
* the eval forward both ways against ``nn.Linear``, interleaved (A B C ...), medians and
  min-max, after a forward that leaves the saturation hint as in use.

    python benchmarks/bench_bf16_bracket.py [--threads 2] [--repeats 15] [--no-minilm]

Writes ``benchmarks/results/bf16_bracket_cpu.json`` (``--out`` to change). Where the bracket
does not apply (no native bfloat16 matmul, kernel not built) the script says so and measures
nothing (exit status 0, so that ``make bench`` goes on).
"""

from __future__ import annotations

import os
import statistics
from unittest import mock

import torch
from bench_eval_forward import analog_twin, interleaved, spying
from bench_linear import _stats
from bench_onednn_gemm import CONFIG, bench_layers, layer_args

import aimc
import aimc.mvm as mvm
from aimc import _bracket


def with_bracket(on: bool, fn):
    def run():
        os.environ[_bracket.ENV] = "1" if on else "0"
        return fn()

    return run


def bf16_error(analog: torch.nn.Module, x: torch.Tensor) -> tuple[float, float]:
    """The bfloat16 variance MVM's largest relative error against float64 on the first
    bracketed pass of one forward, and the bound the bracket takes for it."""
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def record(z, zeta, x2, tw, io) -> None:
        if not seen:
            seen.append((x2.clone(), tw.w_abs.clone()))

    with spying("_bracketed_noise_", record), torch.inference_mode():
        analog(x)
    x2, w = seen[0]
    exact = torch.bmm(x2.double(), w.double().transpose(1, 2))
    vb = torch.bmm(x2.bfloat16(), _bracket.abs_bf16(w)[0].transpose(1, 2)).double()
    rel = ((vb - exact).abs() / exact.clamp_min(1e-300)).max()
    return float(rel), _bracket.bracket_eps(x2.shape[2])


def exact_share(analog: torch.nn.Module, x: torch.Tensor) -> tuple[int, int]:
    """Outputs that needed the float32 variance in one forward, and outputs bracketed."""
    counts = [0, 0]
    original = mvm._bracketed_noise_

    def spy(z, *args):
        found = original(z, *args)
        counts[0] += found
        counts[1] += z.numel()
        return found

    with mock.patch.object(mvm, "_bracketed_noise_", spy), torch.inference_mode():
        analog(x)
    return counts[0], counts[1]


def bench_layer(name: str, lin: torch.nn.Linear, x: torch.Tensor, repeats: int) -> dict:
    analog = analog_twin(lin, CONFIG)
    os.environ[_bracket.ENV] = "1"
    with torch.inference_mode():
        analog(x)  # the saturation hint, as every later forward has it
    rel, eps = bf16_error(analog, x)
    exact, bracketed = exact_share(analog, x)
    ys = []
    for on in (True, False):
        os.environ[_bracket.ENV] = "1" if on else "0"
        aimc.manual_seed(analog, 1)
        with torch.inference_mode():
            ys.append(analog(x))
    apart = int((ys[0] != ys[1]).sum())
    with torch.inference_mode():
        times = interleaved(
            {
                "digital": lambda: lin(x),
                "analog bracket": with_bracket(True, lambda: analog(x)),
                "analog float32": with_bracket(False, lambda: analog(x)),
            },
            repeats,
            warmup=1,
        )
    os.environ[_bracket.ENV] = "1"
    med = {k: statistics.median(v) for k, v in times.items()}
    row = {
        "layer": name,
        "config": CONFIG,
        "bf16_max_rel_error": rel,
        "bound": eps,
        "outputs_float32_variance": exact,
        "outputs_bracketed": bracketed,
        "outputs_apart": apart,
        "outputs": ys[0].numel(),
        **{k: _stats(v) for k, v in times.items()},
        "ratio analog bracket": med["analog bracket"] / med["digital"],
        "ratio analog float32": med["analog float32"] / med["digital"],
    }
    print(
        f"{name:36s} bf16 error {rel:.2e} (bound {eps:.2e}); float32 variance for "
        f"{exact / max(bracketed, 1):.2%} of {bracketed:,}; forward vs nn.Linear "
        f"{row['ratio analog float32']:.2f}x -> {row['ratio analog bracket']:.2f}x; "
        f"outputs apart {apart} of {row['outputs']:,}",
        flush=True,
    )
    return row


def main() -> None:
    args = layer_args(__doc__, "bf16_bracket_cpu.json")
    os.environ.pop(_bracket.ENV, None)
    if mvm._native_bf16_cpu() is not True or not _bracket.BRACKET.ready():
        # (not an error: `make bench` goes on; the committed result stays that of its host)
        print(
            "bench_bf16_bracket: the bracket does not apply here (a CPU without native "
            f"bfloat16 matmuls, or the kernel not built: {_bracket.BRACKET.failed}); nothing "
            "measured"
        )
        return
    bench_layers(args, bench_layer)


if __name__ == "__main__":
    main()
