"""Time of one SQuAD evaluation point, analog vs digital (500 dev questions, shared MiniLM).

Features are tokenized once; each configuration is programmed and drifted (1 day) once, then
the evaluation of the same questions is timed on the digital and the analog model, interleaved
batch by batch: every batch of 32 features runs on the digital model, then on the analog one
(A B A B ... within one evaluation), so that a slower or faster spell of the shared machine,
which lasts seconds to minutes, falls on both sides alike (interleaving whole evaluations of
15-35 s left the ratio 1.8-2.2x from run to run). A side's time is its forwards plus the batch's
collation, the span search and the scoring; ``--repeats`` such evaluations give medians, min-max
and the per-repeat ratios, after one untimed forward of the largest batch on each side.
With ``--compile`` a copy of the same chip compiled with ``aimc.compile_layers`` is a third side
(A B C per batch), timed after one untimed evaluation that compiles it (``compile_s``); its
noise comes from the layers' counter streams, so its F1 is another draw of the same chip's
noise. Writes benchmarks/results/squad_eval_cpu.json.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch
from bench_linear import write_results  # benchmarks/ is the script's directory

import aimc
from aimc.experiments.squad_drift import DEFAULT_DATA, DEFAULT_MODEL, load_qa_model, resolve_config
from aimc.squad.data import load_squad, select_questions
from aimc.squad.features import (
    best_spans,
    feature_batches,
    make_features,
    store_logits,
)
from aimc.squad.metrics import squad_scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--configs", default="ideal,pcm_inference,bert_squad:0.0175")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also time the chip compiled with aimc.compile_layers (minutes to compile per config)",
    )
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "squad_eval_cpu.json"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    examples = select_questions(load_squad(DEFAULT_DATA), args.questions, 0)
    digital, tokenizer = load_qa_model(str(DEFAULT_MODEL), torch.device("cpu"))
    analog, _ = load_qa_model(str(DEFAULT_MODEL), torch.device("cpu"))
    features = make_features(examples, tokenizer)

    def interleaved(models: dict[str, torch.nn.Module]) -> dict[str, tuple[float, dict]]:
        """One evaluation of every model, batch by batch (each batch on every model in turn):
        each model's seconds (forwards, collation, span search, scoring) and scores."""
        seconds = dict.fromkeys(models, 0.0)
        starts = {n: [torch.empty(0)] * len(features) for n in models}
        ends = {n: [torch.empty(0)] * len(features) for n in models}
        with torch.inference_mode():
            batches = feature_batches(features, 32)
            while True:
                start = time.perf_counter()
                item = next(batches, None)
                collate = time.perf_counter() - start
                if item is None:
                    break
                idx, batch = item
                for n, model in models.items():
                    start = time.perf_counter()
                    store_logits(model(**batch), idx, features, starts[n], ends[n])
                    seconds[n] += time.perf_counter() - start + collate
        out = {}
        for n in models:
            start = time.perf_counter()
            scores = squad_scores(best_spans(examples, features, starts[n], ends[n]), examples)
            out[n] = (seconds[n] + time.perf_counter() - start, scores)
        return out

    rows = []
    for name in args.configs.split(","):
        aimc.convert(analog, resolve_config(name), seed=0).eval()
        aimc.program(analog, seed=0)
        aimc.drift(analog, 86400.0, seed=0)
        compiled, compile_s = None, None
        if args.compile:
            compiled = aimc.compile_layers(copy.deepcopy(analog))
            # one evaluation of its own compiles every layer shape and batch size
            compile_s = interleaved({"compiled": compiled})["compiled"][0]
        td, ta, tc = [], [], []
        sides = {"digital": digital, "analog": analog}
        if compiled is not None:
            sides["compiled"] = compiled
        with torch.inference_mode():  # untimed: each side's first call on the largest batch
            _, batch = next(feature_batches(features, 32))
            for model in sides.values():
                model(**batch)
        for _ in range(args.repeats):
            res = interleaved(sides)
            (t, d_scores), (t2, a_scores) = res["digital"], res["analog"]
            td.append(t)
            ta.append(t2)
            if compiled is not None:
                t, c_scores = res["compiled"]
                tc.append(t)
        aimc.to_digital(analog)
        row = {
            "config": name,
            "questions": len(examples),
            "features": len(features),
            "digital_s": statistics.median(td),
            "analog_s": statistics.median(ta),
            "ratio": statistics.median(ta) / statistics.median(td),
            "digital_minmax": [min(td), max(td)],
            "analog_minmax": [min(ta), max(ta)],
            "ratio_per_repeat": [a / d for a, d in zip(ta, td, strict=True)],
            "digital_f1": d_scores["f1"],
            "analog_f1_1day": a_scores["f1"],
        }
        line = (
            f"{name:<20} digital {row['digital_s']:.1f} s  analog {row['analog_s']:.1f} s  "
            f"ratio {row['ratio']:.2f}  (digital {min(td):.1f}-{max(td):.1f}, analog "
            f"{min(ta):.1f}-{max(ta):.1f}; per repeat "
            f"{min(row['ratio_per_repeat']):.2f}-{max(row['ratio_per_repeat']):.2f})"
        )
        if compiled is not None:
            row["compile_s"] = compile_s
            row["analog_compiled_s"] = statistics.median(tc)
            row["ratio_compiled"] = statistics.median(tc) / statistics.median(td)
            row["analog_compiled_minmax"] = [min(tc), max(tc)]
            row["ratio_compiled_per_repeat"] = [c / d for c, d in zip(tc, td, strict=True)]
            row["analog_compiled_f1_1day"] = c_scores["f1"]
            line += (
                f"  compiled {row['analog_compiled_s']:.1f} s  ratio {row['ratio_compiled']:.2f}"
                f"  ({min(tc):.1f}-{max(tc):.1f}; per repeat "
                f"{min(row['ratio_compiled_per_repeat']):.2f}-"
                f"{max(row['ratio_compiled_per_repeat']):.2f}; compiling {compile_s:.0f} s)"
            )
        rows.append(row)
        print(line)
    write_results(
        args.out, {"threads": args.threads, "interleave": "per batch of 32 features", "rows": rows}
    )


if __name__ == "__main__":
    main()
