"""The MVM in 8-bit integers (``aimc._intmvm``) against the float32 GEMM: accuracy and time.

On the layers of ``bench_eval_forward.py`` (the three ``bench_linear.py`` shapes and three
MiniLM layers on real SQuAD activations), programmed (seed 0) and drifted to 1 hour (seed 0)
under ``pcm_inference`` (DAC levels up to 63) and ``bert_squad:0.0175`` (up to 128), the first
pass's DAC levels of one forward are captured and multiplied by the tile matrices three ways:
exactly (float64), by the float32 GEMM the forward ran before (``torch.bmm``, or one ``addmm``
per tile where aimc splits it), and by the int8 MVM. Reported per row:

* the error of each against the exact product, root mean square and maximum, relative to the
  exact product's root mean square (float32's own unit roundoff is 6e-8);
* the share of the layer's outputs that differ between ``AIMC_INT_MVM=1`` and ``=0`` on the
  same seeds (they are ADC levels: they move only where a pre-ADC value sat within float
  rounding of a rounding tie or of the saturation test's edge);
* the time of the MVM alone, int8 (limbs cached) against float32, and of the layer's eval
  forward with either against ``nn.Linear``, all interleaved (A B C ...), medians and min-max;
* the time to build the limbs once (per programmed and drifted chip; cached with its tiles).

    python benchmarks/bench_int_mvm.py [--threads 2] [--repeats 15]

Writes ``benchmarks/results/int_mvm_cpu.json`` (``--out`` to change). Needs a CPU with VNNI
(AVX512-VNNI or AMX): elsewhere the int8 MVM does not run and the script says so.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch
from bench_eval_forward import analog_twin, interleaved, minilm_layers, spying, synthetic_layers
from bench_linear import _stats, write_results

import aimc.mvm as mvm
from aimc import _intmvm

CONFIGS = ("pcm_inference", "bert_squad:0.0175")


def _capture(analog: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, tuple]:
    """The first pass's DAC levels ``(B, N, ci)`` and limbs of one forward of ``analog``."""
    seen: list[tuple[torch.Tensor, tuple]] = []

    def record(z, xq, limbs, beta) -> None:
        seen.append((xq.clone(), limbs))

    with spying("_int_mvm_", record), torch.inference_mode():
        analog(x)
    if not seen:
        raise RuntimeError("the int8 MVM did not run on this layer")
    return seen[0]


def _errors(got: torch.Tensor, exact: torch.Tensor) -> dict[str, float]:
    err = got.double() - exact
    scale = float(exact.pow(2).mean().sqrt())
    return {
        "rms_rel": float(err.pow(2).mean().sqrt()) / scale,
        "max_rel": float(err.abs().max()) / scale,
    }


def _with_int(flag: str, f):
    def run() -> object:
        os.environ["AIMC_INT_MVM"] = flag
        return f()

    return run


def bench(label: str, lin: torch.nn.Linear, x: torch.Tensor, config: str, repeats: int) -> dict:
    analog = analog_twin(lin.eval(), config)
    layer = analog[0]
    os.environ["AIMC_INT_MVM"] = "1"
    w = layer.chip_tiles().w
    start = time.perf_counter()
    _intmvm.INT_MVM.limbs(w, *(torch.empty_like(t) for t in _intmvm.cached_limbs(w)))
    limb_ms = 1e3 * (time.perf_counter() - start)
    xq, limbs = _capture(analog, x)
    exact = xq.double() @ w.double().transpose(1, 2)
    f32 = torch.empty(xq.shape[0], xq.shape[1], w.shape[1])
    mvm._bmm_(f32, xq, w.transpose(1, 2))
    z = torch.empty_like(f32)
    mvm._int_mvm_(z, xq, limbs, 0.0)
    outs = []
    for flag in ("1", "0"):
        os.environ["AIMC_INT_MVM"] = flag
        layer.manual_seed(7)
        with torch.inference_mode():
            outs.append(analog(x))
    differ = float((outs[0] != outs[1]).float().mean())

    def mvm_int() -> object:
        return mvm._int_mvm_(z, xq, limbs, 0.0)

    def mvm_f32() -> object:
        return mvm._bmm_(f32, xq, w.transpose(1, 2))

    def fwd(m):
        def f() -> object:
            with torch.inference_mode():
                return m(x)

        return f

    sides = {
        "mvm int8": mvm_int,
        "mvm float32": mvm_f32,
        "digital": fwd(lin),
        "analog int8": _with_int("1", fwd(analog)),
        "analog float32": _with_int("0", fwd(analog)),
    }
    times = interleaved(sides, repeats)
    os.environ["AIMC_INT_MVM"] = "1"
    med = {k: statistics.median(v) for k, v in times.items()}
    row = {
        "layer": label,
        "config": config,
        "tokens": x.shape[0],
        "tiles": list(w.shape),
        "max_level": float(xq.abs().max()),
        "error_int8": _errors(z, exact),
        "error_float32": _errors(f32, exact),
        "outputs_differing": differ,
        "limbs_ms": limb_ms,
        "ratio mvm int8 / float32": med["mvm int8"] / med["mvm float32"],
        "ratio analog int8": med["analog int8"] / med["digital"],
        "ratio analog float32": med["analog float32"] / med["digital"],
    }
    for k, ts in times.items():
        row[k] = _stats(ts)
    print(
        f"{config:<18} {label:<38} err rms {row['error_int8']['rms_rel']:.2e} "
        f"(f32 {row['error_float32']['rms_rel']:.2e}) max {row['error_int8']['max_rel']:.2e} "
        f"(f32 {row['error_float32']['max_rel']:.2e})  differ {differ:.1e}  "
        f"mvm {row['ratio mvm int8 / float32']:.2f}  layer {row['ratio analog int8']:.2f}x "
        f"vs {row['ratio analog float32']:.2f}x  limbs {limb_ms:.1f} ms",
        flush=True,
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "int_mvm_cpu.json"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not _intmvm.INT_MVM.usable():
        raise SystemExit(
            f"the int8 MVM does not run here ({_intmvm.INT_MVM.failed or 'no VNNI on this CPU'})"
        )
    layers = synthetic_layers() + minilm_layers()
    rows = [bench(lbl, lin, x, cfg, args.repeats) for cfg in CONFIGS for lbl, lin, x in layers]
    write_results(
        args.out,
        {"threads": args.threads, "repeats": args.repeats, "rows": rows},
    )


if __name__ == "__main__":
    main()
