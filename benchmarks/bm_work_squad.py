"""How much of the MVM iterative bound management recomputes on the SQuAD model (no timing).

Issue 15 asks whether predicting saturation could save the bound-management recompute. This
counts, on the shared MiniLM SQuAD model evaluated on real dev questions (every analog layer,
programmed with seed 0 and drifted with seed 0), for each kind of layer: the (tile, vector)
pairs of the first pass, the share of them whose ADC output saturated, and the tile outputs that
the bound-management rounds recomputed as a share of the first pass's (the extra MVM work,
the weight-noise MVM of ``pcm_read`` included, which runs again with each round). The counts
do not depend on the machine's speed, only (through float rounding at the bound) on its
arithmetic.

    python benchmarks/bm_work_squad.py [--questions 64] [--configs bert_squad:0.0175,pcm_inference]

Writes ``benchmarks/results/bm_work_squad.json``.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from bench_linear import write_results  # benchmarks/ is the script's directory

import aimc
import aimc.mvm as mvm
from aimc.experiments.squad_drift import DEFAULT_DATA, DEFAULT_MODEL, load_qa_model, resolve_config
from aimc.squad.data import load_squad, select_questions
from aimc.squad.features import make_features, qa_logits

#: Drift times evaluated (seconds): 1 hour, 1 day (the SQuAD timing point), 1 year
TIMES = (3600.0, 86400.0, 365.25 * 86400.0)


def layer_kind(name: str) -> str:
    """A layer's name without its encoder index (``bert.encoder.layer.3.output.dense`` ->
    ``output.dense``), so that the counts are summed over the encoder layers."""
    return re.sub(r"^.*\.layer\.\d+\.", "", name)


@contextmanager
def counting(model: torch.nn.Module) -> Iterator[dict[str, Counter]]:
    """Counts of every analog layer's eager MVM passes while the context is open, per
    :func:`layer_kind`: ``pairs`` and ``saturated`` (first pass), ``first_outputs`` and
    ``round_outputs`` (tile outputs computed by the first pass and by the rounds)."""
    counts: dict[str, Counter] = {}
    current = [""]
    in_rounds = [False]

    def enter(kind: str):
        return lambda module, args: current.__setitem__(0, kind)

    hooks = [
        layer.register_forward_pre_hook(enter(layer_kind(name)))
        for name, layer in aimc.analog_layers(model)
    ]
    adc, rounds = mvm._mvm_adc, mvm._bound_management

    def counted_adc(xq, tw, io, gen, z, n_out=None, *rest, **kwargs):
        sat = adc(xq, tw, io, gen, z, n_out, *rest, **kwargs)
        c = counts.setdefault(current[0], Counter())
        if in_rounds[0]:
            c["round_outputs"] += z.numel()
        else:
            c["first_outputs"] += z.numel()
            c["pairs"] += z.shape[0] * z.shape[1] * (n_out or 1)
            c["saturated"] += 0 if sat is None else int(sat.sum())
        return sat

    def counted_rounds(*args, **kwargs):
        in_rounds[0] = True
        try:
            return rounds(*args, **kwargs)
        finally:
            in_rounds[0] = False

    mvm._mvm_adc, mvm._bound_management = counted_adc, counted_rounds
    try:
        with mvm.unfused_adc():  # every first pass's saturation mask, from the tensor code
            yield counts
    finally:
        mvm._mvm_adc, mvm._bound_management = adc, rounds
        for h in hooks:
            h.remove()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--configs", default="bert_squad:0.0175,pcm_inference")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "bm_work_squad.json"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    examples = select_questions(load_squad(DEFAULT_DATA), args.questions, 0)
    model, tokenizer = load_qa_model(str(DEFAULT_MODEL), torch.device("cpu"))
    features = make_features(examples, tokenizer)
    rows = []
    for name in args.configs.split(","):
        aimc.convert(model, resolve_config(name), seed=0).eval()
        aimc.program(model, seed=0)
        for t in TIMES:
            aimc.drift(model, t, seed=0)
            with counting(model) as counts, torch.inference_mode():
                qa_logits(model, features, 32)
            total = sum(counts.values(), Counter())
            for kind, c in [*sorted(counts.items()), ("all layers", total)]:
                row = {
                    "config": name,
                    "drift_s": t,
                    "layer": kind,
                    "pairs": c["pairs"],
                    "saturated_fraction": c["saturated"] / max(c["pairs"], 1),
                    "recomputed_fraction": c["round_outputs"] / max(c["first_outputs"], 1),
                }
                rows.append(row)
                print(
                    f"{name:<20} t={t:>10.0f} s  {kind:<32} pairs {row['pairs']:>9}  "
                    f"saturated {100 * row['saturated_fraction']:6.2f} %  "
                    f"recomputed {100 * row['recomputed_fraction']:6.3f} %"
                )
        aimc.to_digital(model)
    write_results(
        args.out,
        {"questions": args.questions, "features": len(features), "rows": rows},
    )


if __name__ == "__main__":
    main()
