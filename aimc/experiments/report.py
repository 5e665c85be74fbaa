"""Outputs of a drift sweep: TensorBoard / W&B logging, summary table, plot."""

from __future__ import annotations

import math
import statistics
import sys
from pathlib import Path
from typing import Any

Metrics = tuple[tuple[str, str], ...]  #: (row key, axis label) of each metric
SQUAD_METRICS: Metrics = (("exact_match", "exact match"), ("f1", "F1"))
LM_METRICS: Metrics = (("perplexity", "perplexity"), ("accuracy", "next-token accuracy (%)"))
#: metrics plotted on a log axis
LOG_SCALE = frozenset({"perplexity"})


def _tb_writer(log_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(log_dir=str(log_dir))


class Logger:
    """Per-unit logging to TensorBoard (``<out>/tensorboard/<config>/chip<k>``; step = t in s)
    and, with ``--wandb``, to Weights & Biases (offline mode needs no network)."""

    def __init__(
        self,
        out: Path,
        rank: int,
        use_wandb: bool,
        wandb_mode: str,
        spec: dict[str, Any],
        metrics: Metrics,
    ) -> None:
        self.out, self.metrics = out, metrics
        self.writers: dict[tuple[str, int], Any] = {}
        self.tb_ok = True
        self.wandb = None
        if use_wandb:
            self.wandb = _wandb_init(out, wandb_mode, spec, f"rank{rank}")

    def log_unit(self, row: dict[str, Any]) -> None:
        key = (row["config"], row["chip"])
        if self.tb_ok and key not in self.writers:
            writer = _tb_writer(self.out / "tensorboard" / row["config"] / f"chip{row['chip']}")
            if writer is None:
                print(
                    "aimc: tensorboard is not installed; TensorBoard logging is off "
                    "(pip install 'aimc[experiments]')",
                    file=sys.stderr,
                )
                self.tb_ok = False
            self.writers[key] = writer
        writer = self.writers.get(key)
        step = int(round(row["t"] or 0.0))
        if writer is not None:
            for name, _ in self.metrics:
                writer.add_scalar(f"val/{name}", row[name], global_step=step)
            writer.flush()
        if self.wandb is not None:
            self.wandb.log(
                {
                    f"{row['config']}/chip{row['chip']}/val/{name}": row[name]
                    for name, _ in self.metrics
                }
                | {"t_seconds": row["t"] or 0.0}
            )

    def close(self) -> None:
        for w in self.writers.values():
            if w is not None:
                w.close()
        if self.wandb is not None:
            self.wandb.finish()


def _wandb_init(
    out: Path, mode: str, spec: dict[str, Any], name: str, project: str = "aimc-squad-drift"
):
    if mode not in ("offline", "online"):
        raise ValueError(f"--wandb-mode: got {mode!r}; allowed: 'offline' or 'online'")
    try:
        import wandb
    except ImportError:
        raise ValueError(
            "--wandb: the wandb package is not installed (pip install 'aimc[experiments]')"
        ) from None
    return wandb.init(
        project=project,
        dir=str(out),
        mode=mode,
        config=spec,
        name=f"{out.name}-{name}",
        reinit=True,
    )


def aggregate(
    rows: list[dict[str, Any]], metrics: Metrics | None = None
) -> dict[str, dict[float | None, dict[str, list[float]]]]:
    """``{config: {t: {metric: [value per chip]}}}``."""
    metrics = metrics or SQUAD_METRICS
    table: dict[str, dict[float | None, dict[str, list[float]]]] = {}
    for row in rows:
        cell = table.setdefault(row["config"], {}).setdefault(row["t"], {})
        for name, _ in metrics:
            cell.setdefault(name, []).append(row[name])
    return table


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation over the chips; a non-finite value (a chip whose
    perplexity overflowed or went NaN) makes both non-finite instead of raising, as
    ``statistics.stdev`` does on inf/NaN."""
    if not all(math.isfinite(v) for v in values):
        n = len(values)
        mean = sum(values) / n
        return mean, (math.nan if n > 1 else 0.0)
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def fmt_time(t: float | None) -> str:
    """Human-readable drift time."""
    if t is None:
        return "-"
    for unit, sec in (
        ("y", 365 * 86400.0),
        ("mo", 30 * 86400.0),
        ("d", 86400.0),
        ("h", 3600.0),
        ("min", 60.0),
    ):
        if t >= sec:
            return f"{t / sec:.3g} {unit}"
    return f"{t:.3g} s"


def fmt_value(v: float) -> str:
    """A metric value: two decimals, or 3 significant digits from 10,000 on (a perplexity of a
    broken model can be 1e9)."""
    return f"{v:.3g}" if math.isfinite(v) and abs(v) >= 1e4 else f"{v:.2f}"


def summary_table(rows: list[dict[str, Any]], metrics: Metrics | None = None) -> str:
    """Markdown table: mean ± std over chips of each metric, per config and t."""
    metrics = metrics or SQUAD_METRICS
    header = "| config | t | chips | " + " | ".join(label for _, label in metrics) + " |"
    lines = [header, "|---|---|---:|" + "---:|" * len(metrics)]
    for config, by_t in aggregate(rows, metrics).items():
        for t, cell in by_t.items():
            vals = [_mean_std(cell[name]) for name, _ in metrics]
            cells = " | ".join(f"{fmt_value(m)} ± {fmt_value(sd)}" for m, sd in vals)
            lines.append(f"| {config} | {fmt_time(t)} | {len(cell[metrics[0][0]])} | {cells} |")
    return "\n".join(lines)


def plot(
    rows: list[dict[str, Any]],
    path_stem: Path,
    metrics: Metrics | None = None,
    title: str = "SQuAD v1.1 dev as PCM drifts",
) -> list[Path]:
    """Each metric against drift time (log x; t = 0 drawn at the left edge), one line per config
    with a min-max band over chips, digital as a horizontal reference. PNG and SVG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = metrics or SQUAD_METRICS
    table = aggregate(rows, metrics)
    times = sorted({t for by_t in table.values() for t in by_t if t is not None})
    positive = [t for t in times if t > 0]
    zero_at = (min(positive) / 10) if positive else 1.0
    fig, axes = plt.subplots(1, len(metrics), figsize=(6 * len(metrics), 4.5), squeeze=False)
    axes = axes[0]
    for ax, (metric, label) in zip(axes, metrics, strict=True):
        for config, by_t in table.items():
            if None in by_t:  # digital: no drift
                ax.axhline(
                    statistics.fmean(by_t[None][metric]),
                    color="black",
                    ls="--",
                    lw=1.2,
                    label=config,
                )
                continue
            ts = sorted(by_t)
            x = [t if t > 0 else zero_at for t in ts]
            vals = [by_t[t][metric] for t in ts]
            mean = [statistics.fmean(v) for v in vals]
            (line,) = ax.plot(x, mean, marker="o", ms=3, label=config)
            ax.fill_between(
                x,
                [min(v) for v in vals],
                [max(v) for v in vals],
                color=line.get_color(),
                alpha=0.2,
                lw=0,
            )
        ax.set_xscale("log")
        ticks = ([zero_at] if 0.0 in times else []) + positive
        ax.set_xticks(
            ticks,
            ["0"] * (0.0 in times) + [fmt_time(t) for t in positive],
            rotation=45,
            ha="right",
            fontsize=7,
        )
        ax.minorticks_off()
        if metric in LOG_SCALE:
            ax.set_yscale("log")
        ax.set_xlabel("time after programming")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{title} (band: min-max over chips)")
    fig.tight_layout()
    paths = [path_stem.with_suffix(".png"), path_stem.with_suffix(".svg")]
    for p in paths:
        fig.savefig(p, dpi=130)
    plt.close(fig)
    return paths


def finish(
    out: Path,
    rows: list[dict[str, Any]],
    spec: dict[str, Any],
    use_wandb: bool,
    wandb_mode: str,
    metrics: Metrics,
    title: str,
) -> None:
    """Rank 0, after all units: summary (printed and ``summary.md``), plot, mean curves."""
    from .safeio import RunWriteError, reason, write_file

    table = summary_table(rows, metrics)
    wall = sum(r["wall_s"] for r in rows)
    text = table + f"\n\nsum of unit wall times: {wall:.0f} s\n"
    done = "every unit's result is saved (only the summary is redone)"
    write_file(out / "summary.md", lambda tmp: tmp.write_text(text), done)
    print(table)
    try:
        paths = plot(rows, out / "plot", metrics, title)
        print("plot: " + ", ".join(str(p) for p in paths))
    except OSError as err:
        raise RunWriteError(
            f"could not write {out / 'plot'}.png/.svg: {reason(err, out)}; {done}; free space "
            "and rerun with --resume"
        ) from err
    except ImportError:
        print(
            "aimc: matplotlib is not installed; no plot (pip install 'aimc[experiments]')",
            file=sys.stderr,
        )
    for config, by_t in aggregate(rows, metrics).items():
        writer = _tb_writer(out / "tensorboard" / config / "mean")
        if writer is None:
            break
        for t, cell in by_t.items():
            for name, _ in metrics:
                writer.add_scalar(
                    f"val/{name}", statistics.fmean(cell[name]), global_step=int(round(t or 0.0))
                )
        writer.close()
    if use_wandb:
        run = _wandb_init(out, wandb_mode, spec, "summary")
        import wandb

        run.log(
            {
                "summary": wandb.Table(
                    columns=["config", "t", "chip", *[name for name, _ in metrics]],
                    data=[
                        [
                            r["config"],
                            r["t"] if r["t"] is not None else math.nan,
                            r["chip"],
                            *[r[name] for name, _ in metrics],
                        ]
                        for r in rows
                    ],
                )
            }
        )
        run.finish()
