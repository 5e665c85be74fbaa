"""Does HWA fine-tuning make the shared MiniLM QA model more robust to PCM drift?

Continues fine-tuning the shared MiniLM-L6 SQuAD model for ``--steps`` steps on SQuAD v1.1 train,
once digitally (the control: same data, same steps) and twice hardware-aware (the training
forward runs on the ``bert_squad:<w>`` periphery with its weight read noise, plus additive weight
noise; once with AIHWKIT's output-bound mask in the backward, the preset's default, once with
``hwa.output_bound_mask="saturated"``), then evaluates the original, the digital-continued and the
two HWA models with ``squad-drift`` on the same dev questions and chips. Also records the median
step time of each fine-tune.

    python benchmarks/finetune_study.py            # writes benchmarks/results/finetune_study.json

Everything runs through ``aimc.experiments`` (the same code as ``aimc finetune-squad`` and
``aimc squad-drift``); runs go to ``runs/finetune-study/`` and are resumable (rerun to continue).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from aimc.experiments import finetune_squad, squad_drift
from aimc.experiments.report import aggregate

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-5)
    p.add_argument("--w-noise", type=float, default=0.035)
    p.add_argument("--hwa-noise", type=float, default=0.02)
    p.add_argument("--questions", type=int, default=500)
    p.add_argument("--chips", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "runs" / "finetune-study"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    common = dict(
        max_steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        max_length=256,
        stride=128,
        max_questions=20 * args.steps * args.batch_size // 16,
        seed=0,
    )
    runs = {
        "digital-continued": finetune_squad.FinetuneSpec(**common),
        # AIHWKIT's output-bound mask (the preset's default) and the saturated-only one: under
        # abs-max noise management AIHWKIT's rule drops the input gradient of most of the QA
        # head's outputs (docs/finetune.md), none of which the ADC clips
        "hwa": finetune_squad.FinetuneSpec(
            preset=f"bert_squad:{args.w_noise}", hwa_noise=args.hwa_noise, **common
        ),
        "hwa-saturated": finetune_squad.FinetuneSpec(
            preset=f"bert_squad:{args.w_noise}",
            hwa_noise=args.hwa_noise,
            hwa_output_bound_mask="saturated",
            **common,
        ),
    }
    models = {"original": str(finetune_squad.DEFAULT_MODEL)}
    step_s = {}
    for name, spec in runs.items():
        run_dir = out / name
        models[name] = str(finetune_squad.run(spec, run_dir, resume=True, save_every=20))
        log = [json.loads(x) for x in (run_dir / "train_log.jsonl").read_text().splitlines()]
        step_s[name] = statistics.median(r["step_s"] for r in log[1:])
    table = {}
    config = f"bert_squad:{args.w_noise}"
    times = [0.0, 86400.0, 365 * 86400.0]
    for name, model in models.items():
        sweep = squad_drift.SweepSpec(
            model=model,
            configs=["digital", config],
            times=times,
            chips=args.chips,
            max_questions=args.questions,
        )
        rows = squad_drift.run(
            sweep, out / f"eval-{name}-q{args.questions}-c{args.chips}", resume=True
        )
        agg = aggregate(rows)
        table[name] = {
            "digital_f1": statistics.mean(agg["digital"][None]["f1"]),
            **{f"analog_f1_t{int(t)}": statistics.mean(agg[config][t]["f1"]) for t in times},
            **{f"analog_f1_t{int(t)}_chips": agg[config][t]["f1"] for t in times},
        }
    result = {
        "args": vars(args),
        "torch": torch.__version__,
        # the two fine-tunes ran one after the other, not interleaved: on a shared machine these
        # are not a speed comparison (benchmarks/bench_hwa_step.py is)
        "median_step_s_not_interleaved": step_s,
        "f1": table,
    }
    path = ROOT / "benchmarks" / "results" / "finetune_study.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
