"""The ``pcm_read`` variance MVM through oneDNN against MKL's GEMM: accuracy and time.

PyTorch's float32 ``bmm`` runs MKL, whose single-precision GEMM is slow on AMD CPUs; aimc runs
the variance MVM ``x'^2 @ |W|^T`` of ``pcm_read`` weight noise through oneDNN's float32 matmul
instead (``aimc._onednn``). On the layers of ``bench_eval_forward.py`` (the three
``bench_linear.py`` shapes and three MiniLM layers on real SQuAD activations), programmed
(seed 0) and drifted to 1 hour (seed 0) under ``bert_squad:0.0175``, the first pass's
variance operands of one forward (without predicted saturation) are captured and the variance
computed three ways: exactly (float64), by MKL (``baddbmm``, as before) and by oneDNN. Reported
per row:

* the error of each against the exact variance, root mean square and maximum, relative to it
  (its terms have one sign; float32's unit roundoff is 6e-8);
* the share of the layer's outputs that differ between ``AIMC_ONEDNN_GEMM=1`` and ``=0`` on
  the same seeds (ADC levels: they move only where a pre-ADC value sat within float rounding
  of a rounding tie);
* the time of the variance MVM alone, both ways, and of the layer's eval forward either way
  against ``nn.Linear`` (MKL too), all interleaved (A B C ...), medians and min-max; and
  ``nn.Linear``'s product through oneDNN (``onednn_linear``): how much of the forward's gain is
  the GEMM's library rather than the simulation.

    python benchmarks/bench_onednn_gemm.py [--threads 2] [--repeats 15] [--no-minilm]

Writes ``benchmarks/results/onednn_gemm_cpu.json`` (``--out`` to change). Where oneDNN does not
apply (not x86-64, PyTorch without oneDNN, ``AIMC_ONEDNN_GEMM=0``) the script says so. The
forwards run the float32 variance MVM (``AIMC_BF16_BRACKET=0``: the bracketed bfloat16 variance,
``bench_bf16_bracket.py``, would replace it on CPUs with native bfloat16 matmuls).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
from collections.abc import Callable
from pathlib import Path

import torch
from bench_eval_forward import analog_twin, interleaved, minilm_layers, synthetic_layers
from bench_linear import _stats, write_results

import aimc
import aimc.mvm as mvm
from aimc import _bracket, _onednn

CONFIG = "bert_squad:0.0175"
ROOT = Path(__file__).resolve().parents[1]


def capture_variance(analog: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The first pass's variance operands of one forward: the squared levels ``(B, N, ci)``,
    ``|W|`` transposed ``(B, ci, O)`` (copies) and the IO config."""
    seen: list[tuple] = []
    original = mvm._variance_

    def spy(var, x2, w2, io):
        if not seen:
            seen.append((x2.clone(), w2.contiguous(), io))
        return original(var, x2, w2, io)

    limit = mvm.PREDICT_MIN_SATURATED
    mvm._variance_, mvm.PREDICT_MIN_SATURATED = spy, math.inf
    try:
        with torch.inference_mode():
            analog(x)
    finally:
        mvm._variance_, mvm.PREDICT_MIN_SATURATED = original, limit
    if not seen:
        raise SystemExit("bench_onednn_gemm: the layer ran no variance MVM")
    return seen[0]


def _errors(got: torch.Tensor, exact: torch.Tensor) -> dict[str, float]:
    rel = (got.double() - exact).abs() / exact.abs().clamp_min(1e-300)
    return {"rms": float(rel.square().mean().sqrt()), "max": float(rel.max())}


def with_env(value: str, fn):
    def run():
        os.environ[_onednn.ENV] = value
        return fn()

    return run


def bench_layer(name: str, lin: torch.nn.Linear, x: torch.Tensor, repeats: int) -> dict:
    analog = analog_twin(lin, CONFIG)
    before = os.environ.get(_onednn.ENV)
    try:
        os.environ[_onednn.ENV] = "1"
        x2, w2, io = capture_variance(analog, x)
        in_unit, out_unit = mvm.units(io)
        gain = (io.w_noise * in_unit) ** 2 / out_unit**2
        offset = (io.out_noise / out_unit) ** 2
        exact = (x2.double() @ w2.double()).mul_(gain).add_(offset)
        var = torch.empty(exact.shape)

        def mkl():
            os.environ[_onednn.ENV] = "0"
            return mvm._variance_(var, x2, w2, io)

        def onednn():
            os.environ[_onednn.ENV] = "1"
            return mvm._variance_(var, x2, w2, io)

        errors = {"mkl": _errors(mkl().clone(), exact), "onednn": _errors(onednn().clone(), exact)}
        # the layer's outputs either way, on the same seeds
        ys = []
        for v in ("1", "0"):
            os.environ[_onednn.ENV] = v
            with torch.inference_mode():
                analog(x)  # the saturation hint of the previous forward, as in the timing
                aimc.manual_seed(analog, 1)
                ys.append(analog(x))
        apart = int((ys[0] != ys[1]).sum())
        w = lin.weight.detach()
        with torch.inference_mode():
            times = interleaved(
                {
                    "variance mkl": mkl,
                    "variance onednn": onednn,
                    "digital": lambda: lin(x),
                    "onednn_linear": lambda: torch.ops.mkldnn._linear_pointwise(
                        x, w, lin.bias.detach(), "none", [], ""
                    ),
                    "analog onednn": with_env("1", lambda: analog(x)),
                    "analog mkl": with_env("0", lambda: analog(x)),
                },
                repeats,
                warmup=1,
            )
    finally:
        if before is None:
            os.environ.pop(_onednn.ENV, None)
        else:
            os.environ[_onednn.ENV] = before
    med = {k: statistics.median(v) for k, v in times.items()}
    row = {
        "layer": name,
        "config": CONFIG,
        "variance_shape": [*x2.shape, w2.shape[2]],
        "error_vs_float64": errors,
        "outputs_apart": apart,
        "outputs": ys[0].numel(),
        **{k: _stats(v) for k, v in times.items()},
        "variance ratio onednn/mkl": med["variance onednn"] / med["variance mkl"],
        "ratio analog onednn": med["analog onednn"] / med["digital"],
        "ratio analog mkl": med["analog mkl"] / med["digital"],
        "onednn_linear / digital": med["onednn_linear"] / med["digital"],
    }
    print(
        f"{name:34s} variance {1e3 * med['variance mkl']:7.1f} -> "
        f"{1e3 * med['variance onednn']:6.1f} ms ({row['variance ratio onednn/mkl']:.2f}), "
        f"error max {errors['mkl']['max']:.1e} / {errors['onednn']['max']:.1e}; forward vs "
        f"nn.Linear {row['ratio analog mkl']:.2f}x -> {row['ratio analog onednn']:.2f}x; "
        f"nn.Linear through oneDNN {row['onednn_linear / digital']:.2f}; "
        f"outputs apart {apart} of {row['outputs']}"
    )
    return row


def layer_args(doc: str, out: str) -> argparse.Namespace:
    """The command line of a layer benchmark (this script's, ``bench_bf16_bracket.py``'s):
    ``--threads`` (set here), ``--repeats``, ``--no-minilm``, ``--out`` (default
    ``benchmarks/results/<out>``)."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--no-minilm", action="store_true", help="only the three synthetic layers")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results" / out)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    return args


def main() -> None:
    args = layer_args(__doc__, "onednn_gemm_cpu.json")
    os.environ.pop(_onednn.ENV, None)
    # the float32 variance MVM, which the bracketed bfloat16 one (aimc._bracket,
    # bench_bf16_bracket.py) replaces in forwards on CPUs with native bfloat16 matmuls
    os.environ[_bracket.ENV] = "0"
    probe = torch.ones(1, 1, 1)
    if not _onednn.ONEDNN_GEMM.applies(probe):
        raise SystemExit(
            "bench_onednn_gemm: oneDNN's GEMM does not apply here "
            f"({_onednn.ONEDNN_GEMM.failed or 'not an x86-64 CPU with oneDNN, or switched off'})"
        )
    bench_layers(args, bench_layer)


def bench_layers(args: argparse.Namespace, bench: Callable[..., dict]) -> None:
    """``bench(name, lin, x, repeats)`` on the synthetic layers and (unless ``--no-minilm``)
    the MiniLM ones, the rows written to ``args.out`` with the run's settings (this script's
    and ``bench_bf16_bracket.py``'s)."""
    layers = synthetic_layers() + ([] if args.no_minilm else minilm_layers())
    rows = [bench(name, lin, x, args.repeats) for name, lin, x in layers]
    meta = {"aimc": aimc.__version__, "threads": args.threads, "repeats": args.repeats}
    write_results(args.out, {"meta": {**meta, "config": CONFIG}, "rows": rows})


if __name__ == "__main__":
    main()
