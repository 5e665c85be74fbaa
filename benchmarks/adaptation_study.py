"""Which hardware-aware adaptation keeps the shared MiniLM QA model's F1 for a year of PCM drift?

Issue 14's study. Every row starts from the shared MiniLM-L6 SQuAD model, is trained on SQuAD
v1.1 train with ``aimc finetune-squad`` (the same code, through ``aimc.experiments``) and is
evaluated with ``aimc squad-drift`` on the same dev questions, chips and drift times:

* ``digital`` — the model as it is (no training);
* ``hwa`` — today's recipe: the ``bert_squad`` periphery in the training forward plus additive
  Gaussian weight noise (``--hwa-noise``);
* ``chip`` — PCM-noise HWA: every training forward runs on a freshly programmed chip read at a
  log-uniform time in 1 h .. 10 years, drift-compensated (``--hwa-modifier chip``);
* ``chip_distill`` — ``chip`` plus distillation from the digital model (``--teacher self``);
* ``lora`` — analog LoRA: the base frozen, digital LoRA adapters trained with the chip modifier
  (``--lora``); evaluated on chips programmed with other seeds than any seen in training.

    python benchmarks/adaptation_study.py --rows chip --steps 300      # one row, resumable
    python benchmarks/adaptation_study.py                             # everything (many hours)
    python benchmarks/adaptation_study.py --collect                   # JSON from what ran
    python benchmarks/adaptation_study.py --rows chip --curve-only    # F1(1 y) per checkpoint
    python benchmarks/adaptation_study.py --rows lora --seeds 2 --seed-from 1   # a second seed

Runs live in ``runs/adaptation-study/`` and resume where they stopped (rerun the same command:
training continues from its last checkpoint, evaluation from its last finished row), so the
study may run in pieces. ``--collect`` (also done at the end of every run) writes
``benchmarks/results/adaptation_study.json`` from whatever has finished; the docs table and plot
(``docs/finetune.md``) are generated from it by ``benchmarks/report.py``. Rows of the existing JSON
whose run directories are no longer here (an earlier machine's runs) are kept as they were
measured, provided the study settings match; a row found on disk replaces its old record.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from aimc.experiments import finetune_squad, squad_drift
from aimc.experiments.report import aggregate

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "benchmarks" / "results" / "adaptation_study.json"
YEAR = 365 * 86400.0
#: t = 0, 1 h, 1 day, 1 month, 1 year, 10 years (s)
TIMES = [0.0, 3600.0, 86400.0, 30 * 86400.0, YEAR, 10 * YEAR]
ROWS = ("digital", "hwa", "chip", "chip_distill", "lora")


def row_spec(name: str, args: argparse.Namespace, seed: int) -> finetune_squad.FinetuneSpec | None:
    """The fine-tuning run of study row ``name`` (``None``: the model is used as it is)."""
    if name == "digital":
        return None
    common: dict[str, Any] = dict(
        preset=args.config,
        max_steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        max_length=256,
        stride=128,
        seed=seed,
    )
    if name == "hwa":
        return finetune_squad.FinetuneSpec(hwa_noise=args.hwa_noise, **common)
    chip = dict(common, hwa_modifier="chip", hwa_drift_range=(args.t_min, args.t_max))
    if name == "chip":
        return finetune_squad.FinetuneSpec(**chip)
    if name == "chip_distill":
        return finetune_squad.FinetuneSpec(teacher="self", distill_alpha=args.distill_alpha, **chip)
    if name == "lora":
        return finetune_squad.FinetuneSpec(**dict(chip, lr=args.lora_lr, lora=args.lora))
    raise ValueError(f"--rows: got {name!r}; allowed: one of {', '.join(ROWS)}")


def run_name(name: str, seed: int) -> str:
    return name if seed == 0 else f"{name}-seed{seed}"


def train(name: str, args: argparse.Namespace, seed: int) -> Path:
    """Fine-tune (or resume) row ``name``; returns the model directory to evaluate."""
    spec = row_spec(name, args, seed)
    if spec is None:
        return Path(finetune_squad.DEFAULT_MODEL)
    return finetune_squad.run(
        spec,
        Path(args.out) / run_name(name, seed),
        resume=True,
        save_every=args.save_every,
        keep=args.keep,
    )


def curve(name: str, args: argparse.Namespace, seed: int) -> None:
    """F1 at 1 year of every kept checkpoint of row ``name`` (``--curve-questions`` questions,
    ``--curve-chips`` chips): how F1 after a year grows with the training steps."""
    ckpts = sorted((Path(args.out) / run_name(name, seed) / "checkpoints").glob("step-*"))
    for ckpt in ckpts:
        if not (ckpt / "config.json").exists():
            continue
        sweep = squad_drift.SweepSpec(
            model=str(ckpt),
            configs=[args.config],
            times=[YEAR],
            chips=args.curve_chips,
            max_questions=args.curve_questions,
        )
        squad_drift.run(sweep, curve_dir(name, args, seed) / ckpt.name, resume=True)


def curve_dir(name: str, args: argparse.Namespace, seed: int) -> Path:
    q, c = args.curve_questions, args.curve_chips
    return Path(args.out) / f"curve-{run_name(name, seed)}-q{q}-c{c}"


def evaluate(name: str, model: Path, args: argparse.Namespace, seed: int, configs: list[str]):
    sweep = squad_drift.SweepSpec(
        model=str(model),
        configs=["digital", *configs],
        times=list(args.times),
        chips=args.chips,
        max_questions=args.questions,
    )
    squad_drift.run(sweep, eval_dir(name, args, seed), resume=True)


def eval_dir(name: str, args: argparse.Namespace, seed: int) -> Path:
    return Path(args.out) / f"eval-{run_name(name, seed)}-q{args.questions}-c{args.chips}"


def _train_cost(run_dir: Path, batch_size: int, max_length: int) -> dict[str, Any] | None:
    log = run_dir / "train_log.jsonl"
    if not log.exists():
        return None
    rows = [json.loads(x) for x in log.read_text().splitlines() if x.strip()]
    if not rows:
        return None
    steps = len({r["step"] for r in rows})  # steps are numbered from 0; a resume may re-log
    return {
        "steps": steps,
        "tokens": steps * batch_size * max_length,
        "wall_s": sum(r["step_s"] for r in rows),
        "median_step_s": statistics.median(r["step_s"] for r in rows),
        "finished": (run_dir / "model").exists(),
    }


def _results(path: Path) -> list[dict[str, Any]]:
    results = path / "results.jsonl"
    if not results.exists():
        return []
    return [json.loads(x) for x in results.read_text().splitlines() if x.strip()]


#: settings that must agree for rows of two invocations to share one table
SHARED_SETTINGS = (
    "steps", "batch_size", "lr", "lora_lr", "lora", "hwa_noise", "distill_alpha",
    "t_min", "t_max", "config", "questions", "chips", "times",
)  # fmt: skip


def _earlier_rows(args: argparse.Namespace, found: dict[str, Any]) -> dict[str, Any]:
    """Rows of the existing JSON not found under ``--out`` (runs made on another machine or in
    a directory since removed), when that JSON was made with the same study settings; an
    error names the first setting that differs (mixing them would put incomparable numbers
    in one table)."""
    if not RESULT.exists():
        return {}
    old = json.loads(RESULT.read_text())
    keep = {k: r for k, r in old.get("rows", {}).items() if k not in found}
    if not keep:
        return {}
    for key in SHARED_SETTINGS:
        mine, theirs = vars(args).get(key), old.get("args", {}).get(key)
        if mine != theirs:
            raise SystemExit(
                f"--{key.replace('_', '-')}: got {mine!r}, but {RESULT.name} holds rows "
                f"({', '.join(keep)}) measured with {theirs!r}; use the same setting, or move "
                "that file away to start a new study"
            )
    return keep


def collect(args: argparse.Namespace) -> dict[str, Any]:
    """The study's JSON from every run and evaluation found under ``--out``."""
    out: dict[str, Any] = {"args": {k: v for k, v in vars(args).items() if k != "func"}}
    out["torch"] = torch.__version__
    rows: dict[str, Any] = {}
    for name in ROWS:
        for seed in range(max(args.seeds, 2) if name != "digital" else 1):
            rows_ = _results(eval_dir(name, args, seed))
            cost = _train_cost(Path(args.out) / run_name(name, seed), args.batch_size, 256)
            if not rows_ and cost is None:
                continue
            table = aggregate(rows_)
            cells: dict[str, Any] = {}
            for config, by_t in table.items():
                for t, metrics in by_t.items():
                    key = "digital" if config == "digital" else f"{config}@{t:g}"
                    f1 = metrics["f1"]
                    cells[key] = {
                        "config": config,
                        "t": t,
                        "f1": f1,
                        "f1_mean": statistics.fmean(f1),
                        "f1_std": statistics.stdev(f1) if len(f1) > 1 else 0.0,
                        "exact_match_mean": statistics.fmean(metrics["exact_match"]),
                    }
            points = []
            for step_dir in sorted(curve_dir(name, args, seed).glob("step-*")):
                f1 = [r["f1"] for r in _results(step_dir) if r["config"] == args.config]
                if f1:
                    step = int(step_dir.name.split("-")[1]) + 1  # after that many steps
                    points.append({"steps": step, "f1": f1, "f1_mean": statistics.fmean(f1)})
            rows[run_name(name, seed)] = {
                "row": name,
                "seed": seed,
                "train": cost,
                "eval": cells,
                "curve_1y": points,
            }
    rows = {**_earlier_rows(args, rows), **rows}
    order = sorted(rows, key=lambda k: (ROWS.index(rows[k]["row"]), rows[k]["seed"]))
    out["rows"] = {k: rows[k] for k in order}
    base = rows.get("digital", {}).get("eval", {}).get("digital")
    out["digital_f1"] = None if base is None else base["f1_mean"]
    return out


def _save(fig, ax, path: Path) -> None:
    """Legend, grid, and ``path`` as .png and .svg; closes the figure."""
    import matplotlib.pyplot as plt

    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    for ext in ("png", "svg"):
        fig.savefig(path.with_suffix("." + ext), dpi=120)
    plt.close(fig)


def plot(result: dict[str, Any], path: Path) -> None:
    """F1 against drift time, one line per evaluated row (mean ± std over chips), the digital
    F1 dashed: ``path`` .png and .svg."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    config = result["args"]["config"]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for key, run in result["rows"].items():
        pts = sorted(
            (c["t"], c["f1_mean"], c["f1_std"])
            for c in run["eval"].values()
            if c["config"] == config
        )
        if not pts:
            continue
        t = [max(p[0], 1.0) for p in pts]  # t = 0 drawn at 1 s on the log axis
        label = "untrained" if key == "digital" else key
        ax.errorbar(t, [p[1] for p in pts], [p[2] for p in pts], marker="o", capsize=3, label=label)
    if result.get("digital_f1"):
        ax.axhline(result["digital_f1"], ls="--", c="k", lw=1, label="digital")
        ax.axhline(0.95 * result["digital_f1"], ls=":", c="k", lw=1, label="95 % of digital")
    ax.set_xscale("log")
    ax.set_xlabel("time after programming (s; t = 0 drawn at 1 s)")
    ax.set_ylabel("SQuAD v1.1 F1")
    ax.set_title(f"MiniLM-L6 on {config}: adaptations against drift")
    _save(fig, ax, path)


def plot_curve(result: dict[str, Any], path: Path) -> bool:
    """F1 at one year against training steps (the rows with ``--curve`` points): ``path``
    .png/.svg; False (nothing written) if there are none."""
    curves = {k: r["curve_1y"] for k, r in result["rows"].items() if r.get("curve_1y")}
    if not curves:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for key, pts in curves.items():
        ax.plot([p["steps"] for p in pts], [p["f1_mean"] for p in pts], marker="o", label=key)
    if result.get("digital_f1"):
        ax.axhline(0.95 * result["digital_f1"], ls=":", c="k", lw=1, label="95 % of digital")
    a = result["args"]
    ax.set_xlabel("training steps (batch 16)")
    ax.set_ylabel("F1 after 1 year")
    ax.set_title(
        f"F1 at 1 year per checkpoint ({a['curve_questions']} questions, {a['curve_chips']} chips)"
    )
    _save(fig, ax, path)
    return True


def write(args: argparse.Namespace) -> None:
    result = collect(args)
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    plot(result, ROOT / "docs" / "img" / "adaptation_study")
    plot_curve(result, ROOT / "docs" / "img" / "adaptation_study_curve")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, of {', '.join(ROWS)}")
    p.add_argument("--steps", type=int, default=300, help="optimizer steps per trained row")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-5, help="full fine-tuning rows")
    p.add_argument("--lora-lr", type=float, default=5e-4)
    p.add_argument("--lora", default="r=8,alpha=16,targets=query,key,value,dense")
    p.add_argument("--hwa-noise", type=float, default=0.02, help="the hwa row's add_normal std")
    p.add_argument("--distill-alpha", type=float, default=0.5)
    p.add_argument("--t-min", type=float, default=3600.0, help="chip modifier drift range (s)")
    p.add_argument("--t-max", type=float, default=10 * YEAR)
    p.add_argument("--config", default="bert_squad:0.0175", help="training and evaluation")
    p.add_argument("--also", default="", help="extra evaluation configs (the best row: 0.035)")
    p.add_argument("--questions", type=int, default=1000)
    p.add_argument("--chips", type=int, default=3)
    p.add_argument("--times", type=lambda s: [float(x) for x in s.split(",")], default=TIMES)
    p.add_argument("--seeds", type=int, default=1, help="training seeds per row")
    p.add_argument("--seed-from", type=int, default=0, help="first training seed to run")
    p.add_argument("--save-every", type=int, default=25)
    p.add_argument("--keep", type=int, default=1000, help="checkpoints kept (for --curve)")
    p.add_argument("--curve", action="store_true", help="F1 at 1 y of every checkpoint")
    p.add_argument("--curve-only", action="store_true", help="only the curves of --rows")
    p.add_argument("--curve-questions", type=int, default=300)
    p.add_argument("--curve-chips", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--train-only", action="store_true")
    p.add_argument("--collect", action="store_true", help="only write the JSON")
    p.add_argument("--out", default=str(ROOT / "runs" / "adaptation-study"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if not 0 <= args.seed_from < args.seeds:
        raise SystemExit(
            f"--seed-from: got {args.seed_from}; allowed: 0 .. --seeds - 1 ({args.seeds - 1})"
        )
    if not args.collect:
        names = [r.strip() for r in args.rows.split(",") if r.strip()]
        for name in names:
            if name not in ROWS:
                raise SystemExit(f"--rows: got {name!r}; allowed: one of {', '.join(ROWS)}")
        configs = [args.config] + [c for c in args.also.split(",") if c]
        for name in names:
            for seed in [0] if name == "digital" else range(args.seed_from, args.seeds):
                if args.curve_only:
                    if name != "digital":
                        curve(name, args, seed)
                    continue
                t0 = time.perf_counter()
                model = train(name, args, seed)
                print(f"[study] {run_name(name, seed)}: trained ({time.perf_counter() - t0:.0f} s)")
                if args.curve and name != "digital":
                    curve(name, args, seed)
                if not args.train_only:
                    evaluate(name, model, args, seed, configs)
                write(args)
    write(args)
    print(f"wrote {RESULT}")


if __name__ == "__main__":
    main()
