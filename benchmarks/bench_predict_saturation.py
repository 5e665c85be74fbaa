"""Predicted saturation on the layers that saturate often: the eval forward with and without it.

An eager ``pcm_read`` forward with iterative bound management leaves the variance MVM out for
the (tile, vector) pairs whose first-pass output surely saturates (``aimc.mvm``'s
``_predicted_variance``; the outputs are the same). This times the three ``bench_linear.py``
shapes of ``bench_eval_forward.py`` (programmed, drifted 1 h; ``nn.Linear``'s initialisation
under standard-normal inputs saturates 29-91 % of their first-pass pairs) three ways in one
run, interleaved (A B C A B C ...): ``nn.Linear``, the analog layer with prediction forced on
(``aimc.mvm.PREDICT_MIN_SATURATED`` 0 for that call) and with it forced off (above 1). A layer
predicts by default where its previous forward saturated at least ``PREDICT_MIN_SATURATED`` of
its pairs: the row's ``predicts_by_default``, and ``ratio default`` the side that then runs. It
also counts, on one forward, the share of the first pass's saturated pairs that the prediction
decided, and how many outputs of the two forwards from the same seed differ (none, or a few
moved by an ADC level on a rounding tie: the two sum in another order).

    python benchmarks/bench_predict_saturation.py [--repeats 21] [--out ...]

Writes ``benchmarks/results/predict_saturation_cpu.json`` (``--out`` to change).
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import time
from pathlib import Path

import torch
from bench_eval_forward import BF16, analog_twin, interleaved, synthetic_layers
from bench_linear import _stats, write_results  # benchmarks/ is the script's directory

import aimc
import aimc.mvm as mvm

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ("bert_squad:0.0175", "bert_squad:0.0175" + BF16)


def decided_share(analog: torch.nn.Module, x: torch.Tensor) -> dict[str, float]:
    """On one forward with prediction: the share of (tile, vector) pairs saturated in the first
    pass, the share of those the prediction decided before their variance, and how many outputs
    the forward without prediction, from the same seed, gives otherwise."""
    seen: dict[str, float] = {}
    original_predict, original_bm = mvm._predicted_variance, mvm._bound_management

    def predict(*args):
        sure = original_predict(*args)
        seen["decided"] = 0.0 if sure is None else float(sure.float().mean())
        return sure

    def bm(z, sat, *args):
        seen["saturated"] = float(sat.float().mean())
        return original_bm(z, sat, *args)

    limit = mvm.PREDICT_MIN_SATURATED
    mvm._predicted_variance, mvm._bound_management = predict, bm
    mvm.PREDICT_MIN_SATURATED = 0.0
    try:
        aimc.manual_seed(analog, 1)  # the same noise for both forwards
        with torch.inference_mode():
            y = analog(x)
        aimc.manual_seed(analog, 1)
        mvm._predicted_variance, mvm._bound_management = original_predict, original_bm
        mvm.PREDICT_MIN_SATURATED = math.inf
        with torch.inference_mode():
            y_full = analog(x)
    finally:
        mvm._predicted_variance, mvm._bound_management = original_predict, original_bm
        mvm.PREDICT_MIN_SATURATED = limit
    if "decided" not in seen:
        raise SystemExit("bench_predict_saturation: the layer did not predict; nothing to time")
    sat = seen.get("saturated", 0.0)
    return {
        "predicts_by_default": sat >= mvm.PREDICT_MIN_SATURATED,
        "saturated_fraction_first_pass": sat,
        "decided_fraction_of_saturated": seen["decided"] / sat if sat else 0.0,
        # the same up to float rounding: an output on an ADC rounding tie may move a level
        "outputs_apart": int((y != y_full).sum()),
        "outputs": y.numel(),
    }


def bench(label: str, lin: torch.nn.Linear, x: torch.Tensor, config: str, repeats: int) -> dict:
    lin = lin.eval()
    analog = analog_twin(lin, config)
    with torch.inference_mode():
        analog(x)  # its first forward: the share that saturated, remembered
    row: dict = {"layer": label, "config": config, "tokens": x.shape[0]}
    row.update(decided_share(analog, x))

    def run(model: torch.nn.Module, limit: float | None):
        def f() -> None:
            saved = mvm.PREDICT_MIN_SATURATED
            if limit is not None:
                mvm.PREDICT_MIN_SATURATED = limit
            try:
                with torch.inference_mode():
                    model(x)
            finally:
                mvm.PREDICT_MIN_SATURATED = saved

        return f

    sides = {
        "digital": run(lin, None),
        "predicted": run(analog, 0.0),
        "not predicted": run(analog, math.inf),
    }
    times = interleaved(sides, repeats, warmup=2)
    digital = statistics.median(times["digital"])
    for k, ts in times.items():
        row[k] = _stats(ts)
        if k != "digital":
            row[f"ratio {k}"] = statistics.median(ts) / digital
    row["ratio default"] = row[
        "ratio predicted" if row["predicts_by_default"] else "ratio not predicted"
    ]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks/results/predict_saturation_cpu.json"
    )
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats: got {args.repeats}; allowed: 1 or more")
    configs = args.configs.split(",")
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        parser.error(f"--configs: got {', '.join(unknown)}; allowed: {', '.join(CONFIGS)}")
    torch.set_num_threads(args.threads)
    rows = []
    for config in configs:
        for label, lin, x in synthetic_layers():
            row = bench(label, lin, x, config, args.repeats)
            rows.append(row)
            print(
                f"{config:<30} {label:<24} saturated "
                f"{100 * row['saturated_fraction_first_pass']:3.0f} % "
                f"(decided {100 * row['decided_fraction_of_saturated']:3.0f} %)  digital "
                f"{row['digital']['median_ms']:6.1f} ms  predicted "
                f"{row['ratio predicted']:.2f}x  not predicted {row['ratio not predicted']:.2f}x  "
                f"(default: {'predicted' if row['predicts_by_default'] else 'not predicted'})  "
                f"outputs apart {row['outputs_apart']} of {row['outputs']}",
                flush=True,
            )
    meta = {
        "aimc": aimc.__version__,
        "threads": args.threads,
        "repeats": args.repeats,
        "predict_min_saturated": mvm.PREDICT_MIN_SATURATED,
        "machine": platform.machine(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    write_results(args.out, {"meta": meta, "rows": rows})


if __name__ == "__main__":
    main()
