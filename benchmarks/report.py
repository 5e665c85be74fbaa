"""Rewrite the benchmark and study tables of the docs from the measured JSON.

Every table lives between marker comments in a docs page::

    <!-- report:bench_linear -->
    | ... generated ... |
    <!-- /report -->

and is regenerated from ``benchmarks/results/*.json`` (and the showcase's ``results.jsonl``). Run
after the benchmarks (``make bench`` does; ``make report`` runs only this). Running it twice
changes nothing the second time. A missing or malformed input, an unknown or unclosed marker is an
error that names the file.

    python benchmarks/report.py [--check] [--results DIR] [--docs DIR]

``--check`` writes nothing and exits 1 when a page is out of date.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import statistics
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from aimc.experiments.report import fmt_time, fmt_value

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DOCS = ROOT / "docs"

MARKER = re.compile(r"<!-- report:([a-z0-9_]+) -->\n(.*?)<!-- /report -->", re.S)
OPEN = re.compile(r"<!-- report:([a-z0-9_]+) -->")


class ReportError(Exception):
    """A missing or malformed input, or a bad marker."""


class Inputs:
    """Loads the input files once; every error names the file and what was wrong."""

    def __init__(self, results: Path, docs: Path) -> None:
        self.results, self.docs = results, docs
        self._cache: dict[Path, Any] = {}

    def json(self, name: str) -> Any:
        return self._load(self.results / name, lambda text: json.loads(text))

    def jsonl(self, path: Path) -> list[dict[str, Any]]:
        return self._load(
            path, lambda text: [json.loads(line) for line in text.splitlines() if line.strip()]
        )

    def _load(self, path: Path, parse: Callable[[str], Any]) -> Any:
        if path not in self._cache:
            if not path.is_file():
                raise ReportError(f"{path}: missing (run `make bench` to measure it)")
            try:
                self._cache[path] = parse(path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise ReportError(f"{path}: not valid JSON: {err}") from None
        return self._cache[path]


def _get(data: Any, *keys: Any, source: str) -> Any:
    """``data[k0][k1]...`` or a ReportError naming the file and the missing key."""
    cur = data
    for k in keys:
        try:
            cur = cur[k]
        except (KeyError, IndexError, TypeError):
            path = "".join(f"[{k!r}]" for k in keys)
            raise ReportError(f"{source}: malformed: no {path}") from None
    return cur


def _num(data: Any, *keys: Any, source: str) -> float:
    v = _get(data, *keys, source=source)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        path = "".join(f"[{k!r}]" for k in keys)
        raise ReportError(f"{source}: malformed: {path} is {v!r}, not a number")
    return float(v)


def _nums(data: Any, *keys: Any, source: str) -> list[float]:
    """``data[k0][k1]...`` as a non-empty list of numbers, or a ReportError naming the file."""
    vals = _get(data, *keys, source=source)
    if not isinstance(vals, list) or not vals:
        path = "".join(f"[{k!r}]" for k in keys)
        raise ReportError(f"{source}: malformed: {path} is {vals!r}, not a non-empty list")
    return [_num(data, *keys, j, source=source) for j in range(len(vals))]


def _rows(data: Any, key: str, source: str) -> list[Any]:
    rows = _get(data, key, source=source)
    if not isinstance(rows, list) or not rows:
        raise ReportError(f"{source}: malformed: [{key!r}] is not a non-empty list")
    return rows


def _row_numbers(data: Any, source: str) -> Iterator[tuple[int, Callable[..., float]]]:
    """``(i, num)`` for each row of ``data["rows"]`` (:func:`_rows`): ``num(*keys)`` is
    :func:`_num` of row ``i``."""
    for i, _ in enumerate(_rows(data, "rows", source)):
        yield i, functools.partial(_num, data, "rows", i, source=source)


def _table(header: list[str], align: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


# --- one function per marker -------------------------------------------------------------------

PASSES = (("forward", "forward"), ("forward_backward", "forward+backward"))


def bench_linear(inp: Inputs) -> str:
    src = "linear_cpu.json"
    data = inp.json(src)
    rows = []
    for i, _ in enumerate(_rows(data, "results", src)):
        for key, label in PASSES:

            def n(*k, i=i, key=key):
                return _num(data, "results", i, key, *k, source=src)

            rows.append(
                [
                    str(int(_num(data, "results", i, "in", source=src))),
                    str(int(_num(data, "results", i, "out", source=src))),
                    str(int(_num(data, "results", i, "tokens", source=src))),
                    label,
                    f"{n('analog', 'median_ms'):.1f}",
                    f"{n('digital', 'median_ms'):.1f}",
                    f"**{n('ratio'):.2f}**",
                    f"{n('analog', 'min_ms'):.1f}–{n('analog', 'max_ms'):.1f}",
                    f"{n('digital', 'min_ms'):.1f}–{n('digital', 'max_ms'):.1f}",
                ]
            )
    header = ["in", "out", "tokens", "pass", "analog ms", "nn.Linear ms", "ratio"]
    header += ["analog min–max", "digital min–max"]
    return _table(header, ["---:"] * 3 + ["---"] + ["---:"] * 3 + ["---"] * 2, rows)


def eval_forward(inp: Inputs) -> str:
    """bench_eval_forward.py (issue 15): programmed, drifted layers, eager and compiled."""
    src = "eval_forward_cpu.json"
    data = inp.json(src)
    targets = _get(data, "meta", "targets", source=src)
    rows = []
    for i, _ in enumerate(_rows(data, "rows", src)):

        def n(*k, i=i):
            return _num(data, "rows", i, *k, source=src)

        config = _get(data, "rows", i, "config", source=src)
        compiled = "analog compiled" in data["rows"][i]
        rows.append(
            [
                f"`{config}`",
                str(_get(data, "rows", i, "layer", source=src)),
                f"{n('digital', 'median_ms'):.1f}",
                f"{n('analog', 'median_ms'):.1f}",
                f"**{n('ratio analog'):.2f}**",
                f"{n('ratio analog compiled'):.2f}" if compiled else "—",
                f"{targets[config]:.1f}" if config in targets else "—",
                f"{n('digital', 'min_ms'):.1f}–{n('digital', 'max_ms'):.1f}",
                f"{n('analog', 'min_ms'):.1f}–{n('analog', 'max_ms'):.1f}",
                f"{100 * n('saturated_fraction_first_pass'):.0f} %",
            ]
        )
    header = ["config", "layer", "nn.Linear ms", "analog ms", "ratio eager", "ratio compiled"]
    header += ["target", "digital min–max", "analog min–max", "saturated pairs, 1st pass"]
    return _table(header, ["---", "---"] + ["---:"] * 5 + ["---"] * 2 + ["---:"], rows)


def huge_pages(inp: Inputs) -> str:
    """bench_eval_forward.py's rows with 4 KiB pages (the default run) and with huge pages
    (``THP_MEM_ALLOC_ENABLE=1``): minor page faults per call and the compiled forward's time."""
    src, srch = "eval_forward_cpu.json", "eval_forward_cpu_huge_pages.json"
    small, huge = inp.json(src), inp.json(srch)
    if _get(small, "meta", "huge_pages", source=src) or not _get(
        huge, "meta", "huge_pages", source=srch
    ):
        raise ReportError(f"{src} must be a 4 KiB-page run and {srch} a huge-page run")
    by_key = {(r["layer"], r["config"]): r for r in _rows(huge, "rows", srch)}
    rows = []
    for r in _rows(small, "rows", src):
        h = by_key.get((r["layer"], r["config"]))
        if h is None:
            raise ReportError(f"{srch}: no row for {r['layer']!r} under {r['config']!r} of {src}")
        f4, fh = (_get(x, "page_faults_per_call", source=s) for x, s in ((r, src), (h, srch)))
        cells = [f"`{r['config']}`", str(r["layer"])]
        for side in ("digital", "analog", "analog compiled"):
            a, b = (f.get(side) for f in (f4, fh))
            cells.append("—" if a is None or b is None else f"{a:,.0f} → {b:,.0f}")
        for side in ("analog", "analog compiled"):
            a, b = (
                _num(x, side, "median_ms", source=s) / _num(x, "digital", "median_ms", source=s)
                for x, s in ((r, src), (h, srch))
            )
            cells.append(f"{a:.2f} → {b:.2f}")
        rows.append(cells)
    header = ["config", "layer", "faults: nn.Linear", "faults: eager", "faults: compiled"]
    header += ["ratio eager", "ratio compiled"]
    return _table(header, ["---", "---"] + ["---:"] * 5, rows)


def huge_pages_alloc(inp: Inputs) -> str:
    """bench_huge_pages.py: ops writing a fresh result, 4 KiB pages against huge pages."""
    src = "huge_pages_cpu.json"
    data = inp.json(src)
    rows = []
    for i, _ in enumerate(_rows(data, "rows", src)):
        r = data["rows"][i]

        def side(key: str, r=r) -> list[str]:
            med, lo, hi, faults = (
                _num(r, key, k, source=src)
                for k in ("median_ms", "min_ms", "max_ms", "faults_per_call")
            )
            return [f"{med:.2f} ({lo:.2f}–{hi:.2f})", f"{faults:,.0f}"]

        rows.append(
            [
                str(_get(r, "case", source=src)),
                str(int(_num(r, "threads", source=src))),
                *side("4k"),
                *side("huge"),
                f"**{_num(r, 'ratio', source=src):.2f}**",
            ]
        )
    header = ["fresh result", "threads", "4 KiB pages: ms (min–max)", "faults per call"]
    header += ["huge pages: ms (min–max)", "faults per call", "huge / 4 KiB"]
    return _table(header, ["---", "---:"] + ["---:"] * 5, rows)


def bench_linear_bm_none(inp: Inputs) -> str:
    src = "linear_cpu_bm-none.json"
    data = inp.json(src)
    rows = []
    for i, _ in enumerate(_rows(data, "results", src)):
        for key, label in PASSES:
            rows.append(
                [
                    *(str(int(_num(data, "results", i, k, source=src))) for k in ("in", "out")),
                    str(int(_num(data, "results", i, "tokens", source=src))),
                    label,
                    f"{_num(data, 'results', i, key, 'analog', 'median_ms', source=src):.1f}",
                    f"{_num(data, 'results', i, key, 'digital', 'median_ms', source=src):.1f}",
                    f"{_num(data, 'results', i, key, 'ratio', source=src):.2f}",
                ]
            )
    header = ["in", "out", "tokens", "pass", "analog ms", "nn.Linear ms", "ratio"]
    return _table(header, ["---:"] * 3 + ["---"] + ["---:"] * 3, rows)


def profile_linear(inp: Inputs) -> str:
    src = "profile_linear_cpu.json"
    data = inp.json(src)
    rows = []
    for i, _ in enumerate(_rows(data, "rows", src)):

        def ms(name, i=i):
            return _num(data, "rows", i, "ms", name, source=src)

        base = ms("nn.Linear")
        shape = (
            f"{int(_num(data, 'rows', i, 'in', source=src))} × "
            f"{int(_num(data, 'rows', i, 'out', source=src))}, "
            f"{int(_num(data, 'rows', i, 'tokens', source=src))} tok."
        )
        cells = [shape, f"{base:.1f} ms"]
        int8 = data["rows"][i].get("int8_mvm")  # absent in runs before the int8 MVM
        for name in (
            "batched MVM only",
            "MVM float32",
            "MVM as one bmm",
            "MVM as per-tile addmm",
            "output-noise draw only",
            "other periphery (no BM)",
            "bound-management recompute",
        ):
            if name == "MVM float32" and int8 is None:
                cells.append("—")
                continue
            cells.append(f"{ms(name):.1f} ms ({ms(name) / base:.2f}×)")
        if int8:
            cells[2] += ", int8"
        sat = _num(data, "rows", i, "saturated_fraction_first_pass", source=src)
        cells.append(f"{100 * sat:.0f} %")
        rows.append(cells)
    header = ["shape", "nn.Linear", "MVM (as run)", "MVM: float32", "MVM: one bmm"]
    header += ["MVM: addmm per tile", "output-noise draw", "other periphery"]
    header += ["bound-management recompute", "saturated pairs, 1st pass"]
    return _table(header, ["---"] + ["---:"] * 9, rows)


def drift_error_table(inp: Inputs) -> str:
    src = "drift_error_table.json"
    data = inp.json(src)
    presets = ("pcm_inference", "pcm_weights_only")
    labels = {"0 (programmed)": "0 (programmed only)"}
    times = list(_get(data, "errors", presets[0], source=src))
    rows = []
    for t in times:
        cells = [labels.get(t, t)]
        for p in presets:
            errs = _get(data, "errors", p, t, source=src)
            if not isinstance(errs, list) or len(errs) < 2:
                raise ReportError(f"{src}: malformed: errors[{p!r}][{t!r}] is not a list of >= 2")
            cells.append(f"{statistics.mean(errs):.4f} ± {statistics.stdev(errs):.4f}")
        rows.append(cells)
    return _table(["t", *(f"`{p}()`" for p in presets)], ["---", "---:", "---:"], rows)


def pcm_cost(inp: Inputs) -> str:
    src = "pcm_cpu.json"
    data = inp.json(src)
    fwd = _num(data, "digital_forward_8x384_s", source=src)
    items = [
        ("`aimc.program(model, seed)`", "program_s"),
        (
            "`aimc.drift(model, 1 day, seed)` (drift, read noise, compensation readout)",
            "drift_s",
        ),
        ("analog forward, 8 × 384 tokens, after drift", "analog_forward_8x384_s"),
    ]
    rows = [
        [what, f"{_num(data, k, source=src):.2f} s", f"{_num(data, k, source=src) / fwd:.2f}×"]
        for what, k in items
    ]
    header = ["what", "time", f"vs one digital forward of 8 × 384 tokens ({fwd:.2f} s)"]
    return _table(header, ["---", "---:", "---:"], rows)


def pcm_memory(inp: Inputs) -> str:
    src = "pcm_cpu.json"
    data = inp.json(src)
    w = _num(data, "digital_weight_bytes", source=src)
    n = int(_num(data, "analog_layers", source=src))
    items = [
        (f"digital weights of the {n} layers", "digital_weight_bytes", False),
        (
            "persistent chip state (`state_dict`: 4 float16 tensors per weight + per-tile scalars)",
            "chip_state_bytes",
            True,
        ),
        ("eval-time cache of the drifted tile weights (not saved)", "eval_tile_cache_bytes", False),
    ]
    rows = []
    for what, k, bold in items:
        v = _num(data, k, source=src)
        ratio = f"{v / w:.2f}×" if k != "digital_weight_bytes" else "1×"
        ratio = ratio.replace(".00×", "×") if not bold else f"**{ratio}**"
        rows.append([what, f"{int(v):,}", ratio])
    return _table(["memory", "bytes", "vs float32 weights"], ["---", "---:", "---:"], rows)


#: How the tables name the HWA configs of ``bench_hwa_step.py`` / ``bench_hwa_memory.py``.
HWA_NAMES = {
    "standard_hwa": "`standard_hwa()`",
    "standard_hwa, w_noise_bf16": "`standard_hwa()`, `io.w_noise_bf16=True`",
    "pcm_inference + noise 0.1 + 3 sigma clip": (
        "`pcm_inference()` + 0.1 additive weight noise + 3σ clipping"
    ),
    "noise injection: pcm_weights_only + noise 0.1 + 3 sigma clip": (
        "noise injection: `pcm_weights_only()` + 0.1 additive weight noise + 3σ clipping"
    ),
}


def hwa_memory(inp: Inputs) -> str:
    src = "hwa_memory_cpu.json"
    data = inp.json(src)
    rows = []
    for i, _ in enumerate(_rows(data, "rows", src)):
        side = str(_get(data, "rows", i, "side", source=src))
        digital = side == "digital"

        def ratio(key: str, i: int = i, digital: bool = digital) -> str:
            return "1×" if digital else f"{_num(data, 'rows', i, key, source=src):.2f}×"

        rows.append(
            [
                "digital (`nn.Linear`)" if digital else HWA_NAMES.get(side, f"`{side}`"),
                f"{_num(data, 'rows', i, 'kernels_mib', source=src):,.0f}",
                f"{_num(data, 'rows', i, 'model_mib', source=src):,.0f}",
                ratio("model_ratio"),
                f"{_num(data, 'rows', i, 'peak_mib', source=src):,.0f}",
                ratio("peak_ratio") if digital else f"**{ratio('peak_ratio')}**",
            ]
        )
    header = [
        "model",
        "kernels MiB",
        "model MiB",
        "vs digital",
        "training peak MiB",
        "vs digital",
    ]
    return _table(header, ["---"] + ["---:"] * 5, rows)


def hwa_step(inp: Inputs) -> str:
    src = "hwa_step_cpu.json"
    data = inp.json(src)
    names = HWA_NAMES
    stacks = {"mlp": "4 MLP blocks", "bert": "4 BERT-base layers"}
    rows = []
    for i, _ in enumerate(_rows(data, "rows", src)):
        name = str(_get(data, "rows", i, "config", source=src))
        stack = str(_get(data, "rows", i, "stack", source=src))
        spread = [
            f"{_num(data, 'rows', i, key, k, source=src):.0f}"
            for key in ("digital_minmax_ms", "analog_minmax_ms")
            for k in (0, 1)
        ]
        rows.append(
            [
                stacks.get(stack, stack),
                names.get(name, f"`{name}`"),
                f"{_num(data, 'rows', i, 'digital_ms', source=src):.1f} ms",
                f"{_num(data, 'rows', i, 'analog_ms', source=src):.1f} ms",
                f"**{_num(data, 'rows', i, 'ratio', source=src):.2f}**",
                f"{spread[0]}–{spread[1]} / {spread[2]}–{spread[3]} ms",
            ]
        )
    header = ["stack", "HWA config", "digital step", "HWA step", "ratio", "min–max (d / HWA)"]
    return _table(header, ["---", "---"] + ["---:"] * 4, rows)


def insitu_mnist(inp: Inputs) -> str:
    src = "insitu_mnist.json"
    data = inp.json(src)
    epochs = int(_num(data, "epochs", source=src))
    seeds = _get(data, "seeds", source=src)
    if not isinstance(seeds, list) or not seeds:
        raise ReportError(f"{src}: malformed: 'seeds' must be a non-empty list")
    rows = []
    for i, _ in enumerate(_rows(data, "rows", src)):
        accs = _get(data, "rows", i, "test_accuracy_per_epoch", source=src)
        if not isinstance(accs, list) or len(accs) != epochs:
            raise ReportError(f"{src}: malformed: rows[{i}] needs {epochs} per-epoch accuracies")
        cells = [str(_get(data, "rows", i, "run", source=src))]
        cells += [f"{100 * _num(accs, e, source=src):.2f} %" for e in range(epochs - 1)]
        std = _num(data, "rows", i, "test_accuracy_std", source=src)
        cells.append(f"**{100 * _num(accs, epochs - 1, source=src):.2f} ± {100 * std:.2f} %**")
        cells.append(f"{_num(data, 'rows', i, 'train_seconds', source=src):.0f} s")
        rows.append(cells)
    header = ["training"] + [f"test accuracy, epoch {e + 1}" for e in range(epochs)]
    header[-1] += f" (± std over {len(seeds)} seeds)"
    return _table(header + ["time per run"], ["---"] + ["---:"] * (epochs + 1), rows)


def _ms(v: float) -> str:
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}" if v >= 10 else f"{v:.2f}"


def _timing(data: Any, src: str, *keys: Any) -> str:
    """``median ms (min–max)`` of the ``_stats`` dict at ``keys`` (``bench_linear._stats``)."""
    med, lo, hi = (_num(data, *keys, k, source=src) for k in ("median_ms", "min_ms", "max_ms"))
    return f"{_ms(med)} ms ({_ms(lo)}–{_ms(hi)})"


def pulsed_update(inp: Inputs) -> str:
    src = "pulsed_update_cpu.json"
    data = inp.json(src)

    def cell(i: int, key: str) -> str:
        return _timing(data, src, "rows", i, key)

    rows = []
    for i, _ in enumerate(_rows(data, "rows", src)):
        rows.append(
            [
                str(_get(data, "rows", i, "optimizer", source=src)),
                cell(i, "digital_step"),
                cell(i, "pulsed_step"),
                f"**{_num(data, 'rows', i, 'ratio_step', source=src):.1f}**",
                " / ".join(
                    _ms(_num(data, "rows", i, key, "median_ms", source=src)) + " ms"
                    for key in ("digital_update_only", "pulsed_update_only")
                ),
            ]
        )
    header = [
        "optimizer",
        "digital step",
        "pulsed step",
        "ratio",
        "`step()` alone: digital / pulsed",
    ]
    return _table(header, ["---"] + ["---:"] * 4, rows)


def finetune_study(inp: Inputs) -> str:
    src = "finetune_study.json"
    data = inp.json(src)
    f1 = _get(data, "f1", source=src)
    labels = {
        "original": "shared MiniLM QA model (no further training)",
        "digital-continued": "+ digital fine-tuning (control)",
        "hwa": "+ HWA fine-tuning (AIHWKIT's output-bound mask, the default)",
        "hwa-saturated": '+ HWA fine-tuning, `hwa.output_bound_mask="saturated"`',
    }
    rows = []
    for name in ("original", "digital-continued", "hwa", "hwa-saturated"):
        cells = [labels[name], f"{_num(f1, name, 'digital_f1', source=src):.2f}"]
        for t in ("0", "86400", "31536000"):
            chips = _get(f1, name, f"analog_f1_t{t}_chips", source=src)
            mean = _num(f1, name, f"analog_f1_t{t}", source=src)
            std = statistics.stdev(chips) if isinstance(chips, list) and len(chips) > 1 else 0.0
            cells.append(f"{mean:.2f} ± {std:.2f}")
        rows.append(cells)
    header = ["model", "digital F1", "analog F1, t = 0", "1 day", "1 year"]
    return _table(header, ["---"] + ["---:"] * 4, rows)


def hwa_study(inp: Inputs) -> str:
    src = "hwa_study.json"
    data = inp.json(src)
    table = _get(data, "table", source=src)
    if not isinstance(table, dict) or len(table) != 6:
        raise ReportError(f"{src}: malformed: ['table'] must hold the six trained models")
    labels = [
        "digitally",
        r"HWA: `pcm_inference` IO + 0.1·max\|W\| additive weight noise + 3σ clipping",
        'the same, `hwa.output_bound_mask="saturated"`',
        r"HWA, noise injection only: exact IO + 0.1·max\|W\| weight noise + 3σ clipping",
        'the same, `hwa.output_bound_mask="saturated"` (exact IO: no mask)',
        "HWA: `standard_hwa()` (AIHWKIT's `StandardHWATrainingPreset`: learned input ranges and "
        "output scales, clip 1.0 + column-wise remap, its `pcm_read` noise; AIHWKIT's mask)",
    ]
    times = ("0.0", "86400.0", "31536000.0")
    seeds = _get(data, "seeds", source=src)
    chips = int(_num(data, "chips", source=src))
    if not isinstance(seeds, list) or not seeds:
        raise ReportError(f"{src}: malformed: 'seeds' must be a non-empty list")
    rows = []
    for label, name in zip(labels, table, strict=True):
        digital = [_num(table, name, "digital_seeds", k, source=src) for k in range(len(seeds))]
        spread = f" ± {statistics.stdev(digital):.2f}" if len(digital) > 1 else ""
        cells = [label, f"{_num(table, name, 'digital', source=src):.2f}{spread}"]
        for j, t in enumerate(times):
            cell = (
                f"{_num(table, name, t, 'mean', source=src):.2f} ± "
                f"{_num(table, name, t, 'std', source=src):.2f}"
            )
            cells.append(f"**{cell}**" if j == len(times) - 1 else cell)
        rows.append(cells)
    over = f"{len(seeds)} seeds × {chips} chips"
    header = [
        "trained",
        f"digital accuracy (± over {len(seeds)} seeds)",
        f"t = 0 (± over {over})",
        "1 day",
        "1 year",
    ]
    return _table(header, ["---"] + ["---:"] * 4, rows)


def _of_digital(f1: float | None, digital: float | None) -> str:
    """The "1 y / digital" cell: ``f1`` as a bold percentage of the digital F1, or "—"."""
    return "—" if f1 is None or not digital else f"**{100 * f1 / digital:.0f} %**"


def _seed_means(
    runs: dict[str, Any],
    labels: dict[str, str],
    config: str,
    times: list[float],
    digital: float | None,
    src: str,
) -> list[list[str]]:
    """One row per study row trained with two or more seeds: per cell, the mean over the seeds
    of their chip means ± the standard deviation of those means (seed to seed), where every
    seed has the cell with all its chips."""
    by_row: dict[str, list[dict[str, Any]]] = {}
    for run in runs.values():
        by_row.setdefault(_get(run, "row", source=src), []).append(run)
    out = []
    for name, seeds in by_row.items():
        if len(seeds) < 2:
            continue
        configs = sorted({c["config"] for r in seeds for c in r["eval"].values()} - {"digital"})
        for cfg in [config] + [c for c in configs if c != config]:
            cells, year = [], None
            for t in times:
                got = [r["eval"].get(f"{cfg}@{t:g}") for r in seeds]
                complete = [c for c in got if c is not None]
                if len(complete) < len(seeds) or len({len(c["f1"]) for c in complete}) > 1:
                    cells.append("not run")
                    continue
                means = [c["f1_mean"] for c in complete]
                m = statistics.fmean(means)
                cells.append(f"{m:.1f} ± {statistics.stdev(means):.1f} ({len(means)} seeds)")
                if t == 365 * 86400.0:
                    year = m
            if all(c == "not run" for c in cells):
                continue
            label = f"{labels.get(name, name)}: mean of {len(seeds)} training seeds"
            if cfg != config:
                label += f", under `{cfg}`"
            out.append([label, "—", *cells, _of_digital(year, digital)])
    return out


def adaptation_study(inp: Inputs) -> str:
    """adaptation_study.py (issue 14): F1 against drift time of each adaptation, as measured so
    far (cells not evaluated yet are "not run")."""
    src = "adaptation_study.json"
    data = inp.json(src)
    args = _get(data, "args", source=src)
    config = _get(args, "config", source=src)
    times = [float(t) for t in _get(args, "times", source=src)]
    runs = _get(data, "rows", source=src)
    if not isinstance(runs, dict):
        raise ReportError(f"{src}: malformed: 'rows' must be an object")
    digital = data.get("digital_f1")
    labels = {
        "digital": "digital model, no training",
        "hwa": "today's HWA: periphery + additive weight noise",
        "chip": "PCM-noise HWA (`--hwa-modifier chip`)",
        "chip_distill": "PCM-noise HWA + distillation (`--teacher self`)",
        "lora": "analog LoRA (chip modifier, frozen base)",
    }
    rows = []
    for key, run in runs.items():
        cells = _get(run, "eval", source=src)
        train = run.get("train")
        name = labels.get(_get(run, "row", source=src), key)
        if _get(run, "seed", source=src):
            name += f" (training seed {run['seed']})"
        if train is None:
            cost = "—"
        else:
            done = "" if train.get("finished") else ", unfinished"
            cost = f"{int(train['steps'])} steps, {train['wall_s'] / 60:.0f} min{done}"
        # the study's config first, then any --also config this row was evaluated under
        others = sorted({c["config"] for c in cells.values()} - {"digital", config})
        for cfg in [config, *others]:
            row = [name if cfg == config else f"{name}, evaluated under `{cfg}`", cost]
            for t in times:
                cell = cells.get(f"{cfg}@{t:g}")
                row.append(
                    "not run"
                    if cell is None
                    else f"{cell['f1_mean']:.1f} ± {cell['f1_std']:.1f} ({len(cell['f1'])})"
                )
            year = cells.get(f"{cfg}@{365 * 86400.0:g}")
            row.append(_of_digital(None if year is None else year["f1_mean"], digital))
            rows.append(row)
    rows += _seed_means(runs, labels, config, times, digital, src)
    header = ["row", "training"] + [f"t = {fmt_time(t) if t else '0'}" for t in times]
    header.append("1 y / digital")
    return _table(header, ["---", "---"] + ["---:"] * (len(times) + 1), rows)


def squad_eval(inp: Inputs) -> str:
    src = "squad_eval_cpu.json"
    data = inp.json(src)
    rows = []
    compiled = any("ratio_compiled" in r for r in _rows(data, "rows", src))
    per_repeat = any("ratio_per_repeat" in r for r in _rows(data, "rows", src))
    for i, r in enumerate(_rows(data, "rows", src)):
        row = [
            f"`{_get(data, 'rows', i, 'config', source=src)}`",
            f"{_num(data, 'rows', i, 'digital_s', source=src):.1f} s",
            f"{_num(data, 'rows', i, 'analog_s', source=src):.1f} s",
            f"**{_num(data, 'rows', i, 'ratio', source=src):.2f}**",
        ]
        if compiled:  # bench_squad_eval.py --compile
            row += (
                [
                    f"{_num(data, 'rows', i, 'analog_compiled_s', source=src):.1f} s",
                    f"**{_num(data, 'rows', i, 'ratio_compiled', source=src):.2f}**",
                ]
                if "ratio_compiled" in r
                else ["—", "—"]
            )
        if per_repeat:  # interleaved batch by batch (since 2026-12-06): each repeat's ratios
            spans = []
            for key in ("ratio_per_repeat", "ratio_compiled_per_repeat"):
                if key in r:
                    v = _nums(data, "rows", i, key, source=src)
                    spans.append(f"{min(v):.2f}–{max(v):.2f}")
            row.append(" / ".join(spans) if spans else "—")
        rows.append(row)
    header = ["config", "digital", "analog", "ratio"]
    if compiled:
        header += ["analog compiled", "ratio compiled"]
    if per_repeat:
        header.append("ratio per repeat, min–max" + (" (eager / compiled)" if compiled else ""))
    return _table(header, ["---"] + ["---:"] * (len(header) - 1), rows)


def bm_work(inp: Inputs) -> str:
    """bm_work_squad.py: per config and drift time, the first-pass saturated pairs and the
    recomputed tile outputs of the whole model, the encoder layers' worst, the QA head."""
    src = "bm_work_squad.json"
    data = inp.json(src)
    groups: dict[tuple[str, float], dict[str, int]] = {}
    for i, _ in enumerate(_rows(data, "rows", src)):
        key = (
            str(_get(data, "rows", i, "config", source=src)),
            _num(data, "rows", i, "drift_s", source=src),
        )
        groups.setdefault(key, {})[str(_get(data, "rows", i, "layer", source=src))] = i

    def pct(i: int, field: str) -> str:
        return f"{100 * _num(data, 'rows', i, field, source=src):.3f} %"

    rows = []
    for (config, drift), layers in groups.items():
        if "all layers" not in layers:
            raise ReportError(f"{src}: {config} at {drift} s has no 'all layers' row")
        encoder = [i for name, i in layers.items() if name not in ("all layers", "qa_outputs")]
        worst = max(encoder, key=lambda i: _num(data, "rows", i, "recomputed_fraction", source=src))
        head = layers.get("qa_outputs")
        worst_cell = pct(worst, "recomputed_fraction")
        if _num(data, "rows", worst, "recomputed_fraction", source=src):  # name it if not 0
            worst_cell += f" (`{_get(data, 'rows', worst, 'layer', source=src)}`)"
        rows.append(
            [
                f"`{config}`",
                fmt_time(drift),
                pct(layers["all layers"], "saturated_fraction"),
                f"**{pct(layers['all layers'], 'recomputed_fraction')}**",
                worst_cell,
                "—" if head is None else pct(head, "saturated_fraction"),
                "—" if head is None else pct(head, "recomputed_fraction"),
            ]
        )
    header = [
        "config",
        "drift",
        "saturated pairs, 1st pass",
        "recomputed MVM work",
        "encoder layers: most recomputed",
        "QA head (384 → 2): saturated",
        "QA head: recomputed",
    ]
    return _table(header, ["---", "---"] + ["---:"] * 5, rows)


def _ns_per_value(data: Any, src: str, i: int) -> float:
    """Nanoseconds per drawn value of row ``i`` of bench_rng_contention.py, right after a
    matmul."""
    after = _num(data, "rows", i, "after_matmul", "median_ms", source=src)
    return after * 1e6 / _num(data, "rows", i, "values", source=src)


def predict_saturation(inp: Inputs) -> str:
    """bench_predict_saturation.py: the saturating layers' eval forward with and without
    predicted saturation, the share of saturated pairs decided, and how many outputs differ."""
    src = "predict_saturation_cpu.json"
    data = inp.json(src)
    rows = []
    for i, num in _row_numbers(data, src):
        rows.append(
            [
                f"`{_get(data, 'rows', i, 'config', source=src)}`",
                _get(data, "rows", i, "layer", source=src),
                f"{100 * num('saturated_fraction_first_pass'):.0f} %",
                f"{100 * num('decided_fraction_of_saturated'):.0f} %",
                _timing(data, src, "rows", i, "digital"),
                _timing(data, src, "rows", i, "not predicted"),
                _timing(data, src, "rows", i, "predicted"),
                f"{num('ratio not predicted'):.2f}",
                f"{num('ratio predicted'):.2f}",
                f"**{num('ratio default'):.2f}** ("
                + (
                    "predicted"
                    if _get(data, "rows", i, "predicts_by_default", source=src)
                    else "not"
                )
                + ")",
                f"{int(num('outputs_apart')):,} of {int(num('outputs')):,}",
            ]
        )
    header = [
        "config",
        "layer",
        "saturated pairs, 1st pass",
        "of them decided before the variance",
        "`nn.Linear`",
        "analog, not predicted",
        "analog, predicted",
        "ratio, not predicted",
        "ratio, predicted",
        "ratio as aimc runs it",
        "outputs apart, predicted / not",
    ]
    note = f"\n\n({_host(data)}; {_get(data, 'meta', 'date', source=src)})"
    return _table(header, ["---", "---"] + ["---:"] * 9, rows) + note


def onednn_gemm(inp: Inputs) -> str:
    """bench_onednn_gemm.py: the pcm_read variance MVM through oneDNN against MKL's GEMM."""
    src = "onednn_gemm_cpu.json"
    data = inp.json(src)
    rows = []
    for i, num in _row_numbers(data, src):

        def err(side, num=num):
            return f"{num('error_vs_float64', side, 'max'):.1e}"

        rows.append(
            [
                _get(data, "rows", i, "layer", source=src),
                _timing(data, src, "rows", i, "variance mkl"),
                _timing(data, src, "rows", i, "variance onednn"),
                f"{num('variance ratio onednn/mkl'):.2f}",
                f"{err('mkl')} / {err('onednn')}",
                _timing(data, src, "rows", i, "digital"),
                f"{num('ratio analog mkl'):.2f}",
                f"**{num('ratio analog onednn'):.2f}**",
                f"{num('onednn_linear / digital'):.2f}",
                f"{int(num('outputs_apart')):,} of {int(num('outputs')):,}",
            ]
        )
    header = [
        "layer",
        "variance MVM, MKL",
        "variance MVM, oneDNN",
        "oneDNN / MKL",
        "max rel. error vs float64, MKL / oneDNN",
        "`nn.Linear`",
        "forward / `nn.Linear`, MKL variance",
        "forward / `nn.Linear`, oneDNN variance",
        "`nn.Linear`'s product through oneDNN / `nn.Linear`",
        "outputs apart",
    ]
    note = (
        f"\n\n(`{_get(data, 'meta', 'config', source=src)}`, programmed, drifted 1 h; "
        f"{_host(data)})"
    )
    return _table(header, ["---"] + ["---:"] * 9, rows) + note


def bf16_bracket(inp: Inputs) -> str:
    """bench_bf16_bracket.py: the bracketed bfloat16 variance against the float32 one."""
    src = "bf16_bracket_cpu.json"
    data = inp.json(src)
    rows = []
    for i, num in _row_numbers(data, src):
        share = num("outputs_float32_variance") / max(num("outputs_bracketed"), 1)
        rows.append(
            [
                _get(data, "rows", i, "layer", source=src),
                f"{num('bf16_max_rel_error'):.2e} / {num('bound'):.2e}",
                f"{share:.2%} of {int(num('outputs_bracketed')):,}",
                _timing(data, src, "rows", i, "digital"),
                _timing(data, src, "rows", i, "analog float32"),
                _timing(data, src, "rows", i, "analog bracket"),
                f"{num('ratio analog float32'):.2f}",
                f"**{num('ratio analog bracket'):.2f}**",
                f"{int(num('outputs_apart')):,} of {int(num('outputs')):,}",
            ]
        )
    header = [
        "layer",
        "bf16 variance: max rel. error vs float64 / bound",
        "outputs that needed the float32 variance",
        "`nn.Linear`",
        "analog, float32 variance",
        "analog, bracketed bf16 variance",
        "ratio, float32 variance",
        "ratio, bracketed",
        "outputs apart",
    ]
    note = (
        f"\n\n(`{_get(data, 'meta', 'config', source=src)}`, programmed, drifted 1 h; "
        f"{_host(data)})"
    )
    return _table(header, ["---"] + ["---:"] * 8, rows) + note


def int_mvm(inp: Inputs) -> str:
    """bench_int_mvm.py: the int8 MVM against the float32 GEMM, accuracy and time."""
    src = "int_mvm_cpu.json"
    data = inp.json(src)
    rows = []
    for i, num in _row_numbers(data, src):
        rows.append(
            [
                f"`{_get(data, 'rows', i, 'config', source=src)}`",
                _get(data, "rows", i, "layer", source=src),
                f"{int(num('max_level'))}",
                f"{num('error_int8', 'rms_rel'):.1e} / {num('error_float32', 'rms_rel'):.1e}",
                f"{num('error_int8', 'max_rel'):.1e} / {num('error_float32', 'max_rel'):.1e}",
                f"{num('outputs_differing'):.1e}",
                f"{_timing(data, src, 'rows', i, 'mvm int8')} / "
                f"{_timing(data, src, 'rows', i, 'mvm float32')}",
                f"**{num('ratio mvm int8 / float32'):.2f}**",
                f"**{num('ratio analog int8'):.2f}** / {num('ratio analog float32'):.2f}",
                f"{num('limbs_ms'):.1f}",
            ]
        )
    header = [
        "config",
        "layer",
        "largest level",
        "error rms, int8 / float32",
        "error max, int8 / float32",
        "outputs that differ",
        "MVM ms, int8 / float32 (min–max)",
        "MVM int8 / float32",
        "layer / nn.Linear, int8 / float32",
        "limbs ms (once)",
    ]
    return _table(header, ["---", "---"] + ["---:"] * 8, rows)


def rng_draw(inp: Inputs) -> str:
    src = "rng_contention_cpu.json"
    data = inp.json(src)
    rows = []
    for i, _ in enumerate(_rows(data, "rows", src)):
        rows.append(
            [
                _get(data, "rows", i, "draw", source=src),
                _get(data, "rows", i, "method", source=src),
                f"`{_get(data, 'rows', i, 'omp_wait_policy', source=src)}`",
                _timing(data, src, "rows", i, "after_idle"),
                _timing(data, src, "rows", i, "after_matmul"),
                f"{_ns_per_value(data, src, i):.2f}",
            ]
        )
    header = [
        "draw",
        "method",
        "OMP_WAIT_POLICY",
        "after idle (min–max)",
        "right after a matmul (min–max)",
        "ns per value, after a matmul",
    ]
    return _table(header, ["---"] * 3 + ["---:"] * 3, rows)


def _host(data: Any) -> str:
    """The CPU a result was measured on (``host`` of bench_linear.cpu_host), or a note that the
    file predates that record."""
    host = data.get("host") if isinstance(data, dict) else None
    if not isinstance(host, dict):
        host = data.get("meta", {}).get("host") if isinstance(data, dict) else None
    if not isinstance(host, dict):
        return "host not recorded"
    bf16 = "native bf16" if host.get("avx512_bf16") or host.get("amx") else "no native bf16"
    family = host.get("cpu_family")
    gen = "" if family is None else f", {host.get('cpu')} family {family}"
    return f"{host.get('capability')}, {bf16}{gen}"


#: The hosts of the side-by-side tables: (file-name suffix, column name). The main tables are
#: of the AVX-512 host of most sessions; ``_zen5`` an AMD Zen 5 host (CPU family 26: AVX-512 at
#: full width) lent on 2026-12-06 evening; ``_avx2`` a host with AVX2 only. A host without a
#: file for a benchmark shows "—".
HOSTS = (("", "main tables"), ("_zen5", "`*_zen5.json`"), ("_avx2", "`*_avx2.json`"))


def _host_json(inp: Inputs, side: int, name: str) -> Any | None:
    """``inp.json(name)`` of host ``side`` of :data:`HOSTS`: the main tables' (side 0) must
    exist; another host's is None where the file does not (a host without that run)."""
    return inp.json(name) if side == 0 or (inp.results / name).is_file() else None


def two_hosts(inp: Inputs) -> str:
    """The same benchmarks on the AVX-512 host (the main tables) and on an AVX2-only host
    (``*_avx2.json``): eval-forward ratios (eager, and compiled where measured), the SQuAD
    point, the HWA step, the noise draw."""

    def eval_rows(d: Any, i: int, src: str) -> list[tuple[str, float]]:
        config, layer = (_get(d, "rows", i, k, source=src) for k in ("config", "layer"))
        out = [
            (
                f"eval forward, eager: `{config}`, {layer}",
                _num(d, "rows", i, "ratio analog", source=src),
            )
        ]
        if "ratio analog compiled" in d["rows"][i]:
            ratio = _num(d, "rows", i, "ratio analog compiled", source=src)
            out.append((f"eval forward, compiled: `{config}`, {layer}", ratio))
        return out

    def squad_rows(d: Any, i: int, src: str) -> list[tuple[str, float]]:
        config = _get(d, "rows", i, "config", source=src)
        label = f"SQuAD point, 500 questions: `{config}`"
        out = [(label, _num(d, "rows", i, "ratio", source=src))]
        if "ratio_compiled" in _get(d, "rows", i, source=src):  # bench_squad_eval.py --compile
            out.append((f"{label}, compiled", _num(d, "rows", i, "ratio_compiled", source=src)))
        return out

    def hwa_rows(d: Any, i: int, src: str) -> list[tuple[str, float]]:
        stack, config = (_get(d, "rows", i, k, source=src) for k in ("stack", "config"))
        return [(f"HWA training step: {stack}, {config}", _num(d, "rows", i, "ratio", source=src))]

    def rng_rows(d: Any, i: int, src: str) -> list[tuple[str, float]]:
        if _get(d, "rows", i, "omp_wait_policy", source=src) != "default":
            return []
        draw, method = (_get(d, "rows", i, k, source=src) for k in ("draw", "method"))
        label = f"noise draw right after a matmul, ns per value: {method}, {draw}"
        return [(label, _ns_per_value(d, src, i))]

    benches = [
        ("eval_forward_cpu", eval_rows),
        ("squad_eval_cpu", squad_rows),
        ("hwa_step_cpu", hwa_rows),
        ("rng_contention_cpu", rng_rows),
    ]
    hosts: list[set[str]] = [set() for _ in HOSTS]
    rows = []
    for stem, rows_of in benches:
        values: list[dict[str, float]] = []
        for side, (suffix, _) in enumerate(HOSTS):
            src = f"{stem}{suffix}.json"
            d = _host_json(inp, side, src)
            if d is None:
                values.append({})
                continue
            hosts[side].add(_host(d))
            n = len(_rows(d, "rows", src))
            values.append(dict(r for i in range(n) for r in rows_of(d, i, src)))
        labels: dict[str, None] = {}  # the main host's rows first, then the others'
        for v in values:
            labels.update(dict.fromkeys(v))
        for label in labels:
            cells = [v.get(label) for v in values]
            rows.append([label, *("—" if c is None else f"{c:.2f}" for c in cells)])
    header = ["measurement"] + [
        f"{name} ({'; '.join(sorted(h))})" for (_, name), h in zip(HOSTS, hosts, strict=True)
    ]
    return _table(header, ["---"] + ["---:"] * len(HOSTS), rows)


#: issue 15's goals besides the eval forward's (whose goals its JSON records, ``meta.targets``)
SQUAD_TARGET = ("bert_squad:0.0175", 2.0)  #: one SQuAD point under this config, vs digital
HWA_TARGET = ("standard_hwa", 1.5)  #: the HWA training step (bench_hwa_step.py), vs digital


def _verdict(ratios: list[float], goal: float) -> str:
    """``lo–hi (k of n within goal)``, or ``r (met)`` / ``r (not met)`` for one ratio."""
    if not ratios:
        return "—"
    met = sum(r <= goal for r in ratios)
    if len(ratios) == 1:
        return f"{ratios[0]:.2f} ({'**met**' if met else 'not met'})"
    lo, hi = f"{min(ratios):.2f}", f"{max(ratios):.2f}"
    span = lo if lo == hi else f"{lo}–{hi}"
    count = f"{met} of {len(ratios)}"
    return f"{span} ({f'**{count}**' if met == len(ratios) else count} within)"


def targets(inp: Inputs) -> str:
    """Issue 15's speed targets at a glance, on every host of :data:`HOSTS`: per target the
    range of measured ratios to the digital twin and how many meet the goal (from the same JSON
    as the tables below: ``eval_forward_cpu*.json``, ``squad_eval_cpu*.json``,
    ``hwa_step_cpu*.json``)."""
    hosts: list[str] = []
    cells: dict[tuple[str, float], list[str]] = {}  # (target, goal) -> one cell per host

    def add(side: int, label: str, goal: float, ratios: list[float]) -> None:
        cells.setdefault((label, goal), ["—"] * len(HOSTS))[side] = _verdict(ratios, goal)

    def ratios_of(d: Any, src: str, field: str, config: str) -> list[float]:
        return [
            _num(r, field, source=src)
            for r in _rows(d, "rows", src)
            if r.get("config") == config and field in r
        ]

    for side, (suffix, _) in enumerate(HOSTS):
        src = f"eval_forward_cpu{suffix}.json"
        d = _host_json(inp, side, src)
        hosts.append("not measured" if d is None else _host(d))
        for config, goal in {} if d is None else _get(d, "meta", "targets", source=src).items():
            for kind, field in (("eager", "ratio analog"), ("compiled", "ratio analog compiled")):
                label = f"eval forward, `{config}`, {kind}"
                add(side, label, float(goal), ratios_of(d, src, field, config))
        src = f"squad_eval_cpu{suffix}.json"
        config, goal = SQUAD_TARGET
        if (d := _host_json(inp, side, src)) is not None:
            for kind, field in (("eager", "ratio"), ("compiled", "ratio_compiled")):
                ratios = ratios_of(d, src, field, config)
                add(side, f"SQuAD point, 500 questions, `{config}`, {kind}", goal, ratios)
        src = f"hwa_step_cpu{suffix}.json"
        config, goal = HWA_TARGET
        if (d := _host_json(inp, side, src)) is not None:
            for variant in (config, f"{config}, w_noise_bf16"):
                ratios = ratios_of(d, src, "ratio", variant)
                add(side, f"HWA training step, `{variant}` (MLP and BERT stacks)", goal, ratios)
            # the same steps with aimc's float32 GEMMs through MKL, as nn.Linear's (files of
            # the twentieth session on: aimc._onednn)
            for variant in (config, f"{config}, w_noise_bf16"):
                if ratios := ratios_of(d, src, "ratio_mkl", variant):
                    label = (
                        f"HWA training step, `{variant}`, aimc's GEMMs through MKL "
                        "as the digital step's"
                    )
                    add(side, label, goal, ratios)
    rows = [[label, f"≤ {goal:g}", *values] for (label, goal), values in cells.items()]
    header = ["target", "goal"] + [
        f"{name} ({h})" for (_, name), h in zip(HOSTS, hosts, strict=True)
    ]
    return _table(header, ["---"] + ["---:"] * (1 + len(HOSTS)), rows)


def _drift_sweep(path: Path, inp: Inputs, metrics: list[str], header: list[str]) -> str:
    """Mean ± std over chips of ``metrics`` per config and drift time of a sweep's
    ``results.jsonl`` (digital: its one value)."""
    rows = inp.jsonl(path)
    by: dict[tuple[str, float | None], list[dict[str, Any]]] = {}
    for r in rows:
        try:
            by.setdefault((r["config"], r["t"]), []).append(r)
        except (KeyError, TypeError):
            raise ReportError(f"{path}: malformed: a row without 'config' and 't'") from None
    names = {"0 s": "0", "1 h": "1 h", "1 d": "1 day", "1 mo": "1 month", "1 y": "1 year"}
    out = []
    for (config, t), group in by.items():
        values = [[_num(r, m, source=str(path)) for r in group] for m in metrics]
        if config == "digital":
            out.append([config, "–", *[fmt_value(v[0]) for v in values]])
            continue
        label = fmt_time(t)
        cells = [config, names.get(label, label)]
        for vals in values:
            std = statistics.stdev(vals) if len(vals) > 1 else 0.0
            cells.append(f"{fmt_value(statistics.mean(vals))} ± {fmt_value(std)}")
        out.append(cells)
    return _table(["config", "t", *header], ["---", "---"] + ["---:"] * len(metrics), out)


def squad_dev1000(inp: Inputs) -> str:
    path = inp.docs / "img" / "squad_drift_dev1000_results.jsonl"
    return _drift_sweep(path, inp, ["exact_match", "f1"], ["exact match", "F1"])


def lm_drift_smollm2(inp: Inputs) -> str:
    path = inp.docs / "img" / "lm_drift_smollm2_results.jsonl"
    header = ["perplexity", "next-token accuracy (%)"]
    return _drift_sweep(path, inp, ["perplexity", "accuracy"], header)


def lm_static_ranges(inp: Inputs) -> str:
    src = "lm_static_ranges.json"
    data = inp.json(src)
    out = []
    for i, _ in enumerate(_rows(data, "rows", src)):
        top = _get(data, "rows", i, "max_range", source=src)
        out.append(
            [
                str(_get(data, "rows", i, "variant", source=src)),
                f"{_num(data, 'rows', i, 'perplexity', source=src):.4g}",
                f"{_num(data, 'rows', i, 'accuracy', source=src):.2f}",
                "–" if top is None else f"{float(top[1]):.0f} (`{top[0]}`)",
            ]
        )
    header = ["config (no device model)", "perplexity", "next-token acc. (%)", "largest range"]
    return _table(header, ["---", "---:", "---:", "---"], out)


def _pct(a: float, b: float) -> str:
    return f"{100 * (a - b) / abs(b):+.1f} %" if b else "—"


def conformance(inp: Inputs) -> str:
    """The conformance suite's cases: aimc against AIHWKIT 1.2.0 (compare_aihwkit.py)."""
    src = "compare_aihwkit_cpu.json"
    rows = []
    for i, _ in enumerate(_rows(inp.json(src), "fidelity", src)):

        def n(side: str, key: str, i: int = i) -> float:
            return _num(inp.json(src), "fidelity", i, side, key, source=src)

        case = _get(inp.json(src), "fidelity", i, source=src)
        a, b = n("aimc", "rel_error"), n("aihwkit", "rel_error")
        alpha = "—"
        if "alpha" in case["aimc"] and "alpha" in case["aihwkit"]:
            alpha = f"{n('aimc', 'alpha'):.4f} / {n('aihwkit', 'alpha'):.4f}"
        verdict = "agrees" if case["ok"] else "**differs**"
        rows.append([case["case"], f"{a:.4f}", f"{b:.4f}", _pct(a, b), alpha, verdict])
    header = ["case", "aimc rel. error", "AIHWKIT rel. error", "deviation", "α aimc / AIHWKIT"]
    return _table(header + ["verdict"], ["---", "---:", "---:", "---:", "---:", "---"], rows)


def aihwkit_speed(inp: Inputs) -> str:
    """Forward time of aimc, AIHWKIT's C++ and torch tiles and nn.Linear (compare_aihwkit.py)."""
    src = "compare_aihwkit_cpu.json"
    data = inp.json(src)
    rows = []
    for i, _ in enumerate(_rows(data, "speed", src) if "speed" in data else []):
        shape = "×".join(str(int(v)) for v in _get(data, "speed", i, "shape", source=src))
        sides = _get(data, "speed", i, "sides", source=src)
        for name in sides:

            def n(key: str, i: int = i, name: str = name) -> float:
                return _num(data, "speed", i, "sides", name, key, source=src)

            spread = f"{n('min_ms'):.1f}–{n('max_ms'):.1f}"
            ratio = f"**{n('vs_nn_linear'):.2f}×**"
            rows.append([shape, name, f"{n('median_ms'):.1f}", spread, ratio])
    header = ["in×out×rows", "forward", "median ms", "min–max ms", "vs nn.Linear"]
    return _table(header, ["---", "---", "---:", "---", "---:"], rows)


def fault_battery(inp: Inputs) -> str:
    """scripts/fault_battery.py: each fault case on the code before issue 11 and now."""
    src = "fault_battery.json"
    data = inp.json(src)
    rows = []
    for i, _ in enumerate(_rows(data, "cases", src)):

        def cell(side: str, i: int = i) -> str:
            if side not in _get(data, "cases", i, source=src):  # a run without --before
                return "—"
            res = _get(data, "cases", i, side, source=src)
            mark = "" if res["ok"] else "**fails:** "
            return mark + str(res["outcome"]).replace("|", "\\|")

        rows.append([str(_get(data, "cases", i, "case", source=src)), cell("before"), cell("now")])
    return _table(["case", "before (aimc 0.1)", "now"], ["---", "---", "---"], rows)


def llm_memory(inp: Inputs) -> str:
    """bench_llm_memory.py: a billion-parameter decoder on a lean PCM chip against digital."""
    src = "llm_memory_cpu.json"
    d = inp.json(src)

    def num(key: str) -> float:
        return _num(d, key, source=src)

    gib = 2**30
    shape = _get(d, "shape", source=src)
    what = (
        f"{shape}, {num('params') / 1e9:.2f} B parameters, {_get(d, 'dtype', source=src)}, "
        f"`{_get(d, 'config', source=src)}`, {_get(d, 'storage', source=src)} chip, "
        f"{int(num('analog_layers'))} analog layers"
    )
    spread_d = (
        f"{min(_get(d, 'digital_s', source=src)):.1f}–{max(_get(d, 'digital_s', source=src)):.1f} s"
    )
    spread_a = (
        f"{min(_get(d, 'analog_s', source=src)):.1f}–{max(_get(d, 'analog_s', source=src)):.1f} s"
    )
    rows = [
        ["model", what, "", ""],
        [
            "peak memory over the baseline (RSS)",
            f"{num('peak_digital_bytes') / gib:.2f} GiB",
            f"{num('peak_analog_bytes') / gib:.2f} GiB",
            f"**{num('memory_ratio'):.2f}×**",
        ],
        ["chip state kept (`state_dict` buffers)", "", f"{num('chip_bytes') / 1024:.0f} KiB", ""],
        [
            f"time per token, forward of 1 × {int(num('tokens'))} (min–max)",
            f"{num('digital_ms_per_token'):.1f} ms ({spread_d})",
            f"{num('analog_ms_per_token'):.1f} ms ({spread_a})",
            f"{num('time_ratio'):.2f}×",
        ],
        [
            "set-up: convert + program + drift (1 day)",
            "",
            f"{num('setup_s'):.0f} s ({num('convert_s'):.1f} + "
            + (
                f"{num('program_drift_s'):.0f} in one pass)"
                if "program_drift_s" in d
                else f"{num('program_s'):.0f} + {num('drift_s'):.0f})"
            ),
            "",
        ],
    ]
    return _table(["", "digital", "analog", "ratio"], ["---", "---:", "---:", "---:"], rows)


def _mib(v: Any) -> str:
    return "—" if v is None else f"{float(v) / 2**20:,.1f}"


def gpu_check(inp: Inputs) -> str:
    """gpu_check.py: the CUDA path against the CPU (statistics, noise-free path), then forward
    time (eager and, with ``--compile``, ``aimc.compile``), SQuAD eval time and peak memory on
    the GPU (``benchmarks/results/gpu_check_cuda.json``, committed from a lent H200)."""
    src = "gpu_check_cuda.json"
    data = inp.json(src)
    meta = _get(data, "meta", source=src)
    by_case: dict[str, list[int]] = {}
    for i, _ in enumerate(_rows(data, "checks", src)):
        by_case.setdefault(str(_get(data, "checks", i, "case", source=src)), []).append(i)
    cases, n_ok = [], 0
    for case, idx in by_case.items():
        checks = [_get(data, "checks", i, source=src) for i in idx]
        ok = [c for c in checks if c.get("ok") is True]
        n_ok += len(ok)
        zs = [abs(_num(c, "z", source=src)) for c in checks if c.get("kind") == "z"]
        ps = [_num(c, "p", source=src) for c in checks if c.get("kind") == "ks"]
        bad = ", ".join(str(c.get("name")) for c in checks if c.get("ok") is not True)
        cases.append(
            [
                case,
                f"{len(ok)} of {len(checks)}",
                f"{max(zs):.2f}" if zs else "—",
                f"{min(ps):.3g}" if ps else "—",
                f"**{bad}**" if bad else "—",
            ]
        )
    n = sum(len(v) for v in by_case.values())
    where = f"{meta.get('gpu', meta.get('device'))}, PyTorch {meta.get('torch')}"
    head = f"{where}: **{n_ok} of {n} checks agree** with the CPU."
    agree = _table(
        ["case", "agree", "largest \\|z\\|", "smallest KS p", "differs"],
        ["---", "---:", "---:", "---:", "---"],
        cases,
    )
    speed = []
    for i, _ in enumerate(_rows(data, "speed", src) if "speed" in data else []):
        r = _get(data, "speed", i, source=src)
        shape = " × ".join(str(int(_num(r, k, source=src))) for k in ("in", "out", "tokens"))

        def ms(side: str, r: dict = r) -> str:
            a, lo, hi = (_num(r, side, k, source=src) for k in ("median", "min", "max"))
            return f"{_ms(a)} ms ({_ms(lo)}–{_ms(hi)})"

        if "compiled_ms" in r:
            compiled = f"{ms('compiled_ms')}, **{_num(r, 'compiled_ratio', source=src):.2f}**"
        elif "compiled_error" in r:
            compiled = f"did not compile: {r['compiled_error']}"
        else:
            compiled = "—"
        speed.append(
            [
                f"`{_get(r, 'config', source=src)}`, {shape}",
                ms("analog_ms"),
                ms("digital_ms"),
                f"**{_num(r, 'ratio', source=src):.2f}**",
                compiled,
                f"{_mib(r.get('analog_peak_bytes'))} / {_mib(r.get('digital_peak_bytes'))}",
            ]
        )
    if "squad" in data:
        q = _get(data, "squad", source=src)

        def sec(side: str, q: dict = q) -> str:
            a, lo, hi = (_num(q, side, k, source=src) for k in ("median", "min", "max"))
            return f"{a:.2f} s ({lo:.2f}–{hi:.2f})"

        speed.append(
            [
                f"SQuAD eval `{_get(q, 'config', source=src)}` (1 day), "
                f"{int(_num(q, 'questions', source=src))} questions",
                sec("analog_s"),
                sec("digital_s"),
                f"**{_num(q, 'ratio', source=src):.2f}**",
                "—",
                f"{_mib(q.get('analog_peak_bytes'))} / {_mib(q.get('digital_peak_bytes'))}",
            ]
        )
    header = [
        "eval forward",
        "analog (eager)",
        "digital",
        "ratio",
        "compiled (aimc.compile), ratio",
        "peak MiB, analog / digital",
    ]
    times = _table(header, ["---", "---:", "---:", "---:", "---:", "---:"], speed)
    return f"{head}\n\n{agree}\n\n{times}"


TABLES: dict[str, Callable[[Inputs], str]] = {
    f.__name__: f
    for f in (
        bench_linear,
        eval_forward,
        huge_pages,
        huge_pages_alloc,
        bench_linear_bm_none,
        profile_linear,
        drift_error_table,
        pcm_cost,
        pcm_memory,
        hwa_step,
        hwa_study,
        insitu_mnist,
        pulsed_update,
        finetune_study,
        adaptation_study,
        squad_eval,
        bm_work,
        rng_draw,
        int_mvm,
        onednn_gemm,
        bf16_bracket,
        predict_saturation,
        two_hosts,
        targets,
        squad_dev1000,
        lm_drift_smollm2,
        lm_static_ranges,
        conformance,
        aihwkit_speed,
        fault_battery,
        llm_memory,
        hwa_memory,
        gpu_check,
    )
}


# --- rewriting the pages -----------------------------------------------------------------------


def render_page(text: str, inp: Inputs, page: str) -> str:
    """``text`` with every marked table regenerated."""
    opened = OPEN.findall(text)
    closed = MARKER.findall(text)
    if len(opened) != len(closed) or text.count("<!-- /report -->") != len(opened):
        raise ReportError(f"{page}: a report marker is not closed by '<!-- /report -->'")

    def sub(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in TABLES:
            raise ReportError(f"{page}: unknown report marker {name!r}; known: {sorted(TABLES)}")
        return f"<!-- report:{name} -->\n{TABLES[name](inp)}\n<!-- /report -->"

    return MARKER.sub(sub, text)


def run(results: Path = RESULTS, docs: Path = DOCS, check: bool = False) -> list[Path]:
    """Regenerate every marked table under ``docs``; returns the pages that changed (or, with
    ``check``, that would change)."""
    inp = Inputs(results, docs)
    changed = []
    for page in sorted(docs.rglob("*.md")):
        text = page.read_text()
        if "<!-- report:" not in text:
            continue
        new = render_page(text, inp, str(page))
        if new != text:
            changed.append(page)
            if not check:
                page.write_text(new)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS, help="benchmark JSON directory")
    parser.add_argument("--docs", type=Path, default=DOCS, help="docs directory")
    parser.add_argument("--check", action="store_true", help="only check; exit 1 if out of date")
    args = parser.parse_args(argv)
    try:
        changed = run(args.results, args.docs, args.check)
    except ReportError as err:
        print(f"report: error: {err}", file=sys.stderr)
        return 2
    for page in changed:
        print(f"{'out of date' if args.check else 'updated'}: {page}")
    if not changed:
        print("report: all tables up to date")
    return 1 if (args.check and changed) else 0


if __name__ == "__main__":
    sys.exit(main())
