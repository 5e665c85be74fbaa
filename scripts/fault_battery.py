"""Fault battery: kill -9, full disks, damaged files, other versions and concurrent processes
against real ``aimc squad-drift``, ``finetune-squad`` and ``train-vision`` runs (tiny random
BERT QA model, a few SQuAD questions, tiny IDX images), then ``--resume``.

    python scripts/fault_battery.py                    # ~5 min on 2 cores
    python scripts/fault_battery.py --before DIR       # every case on the code in DIR too (x2)

Prints a table (case, outcome) and writes ``benchmarks/results/fault_battery.json``. With
``--before``, DIR is another aimc source tree (e.g. ``git archive HEAD | tar -x -C DIR``) and
the table gets a "before" column. Faults are injected from outside the library: ``kill -9`` from
this script (at k result rows, at random delays), or a wrapper that patches ``os.write`` /
``torch.save`` / ``os.replace`` to kill itself or fail with ENOSPC at a chosen call, or
``RLIMIT_FSIZE`` (writes past it fail with EFBIG). A case is "ok" when the run ends with the
numbers of an uninterrupted run (timings aside) or fails with a one-line error that names the
file, leaving nothing torn.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(Path(__file__).resolve().parent)]
from fault_harness import (  # noqa: E402 - beside this script
    Tree,
    compare_finetune,
    compare_sweep,
    count,
    finish,
    kill_when,
    lines_of,
    said,
    sweep_state,
)

# --------------------------------------------------------------------------------------------
# commands


def sweep_args(t: Tree, out: Path) -> list[str]:
    a = t.assets
    return [
        *("squad-drift", "--model", str(a["model"]), "--data", str(a["data"]), "--out", str(out)),
        *("--configs", "digital,ideal,bert_squad:0.035", "--times", "0,3600", "--chips", "2"),
        *("--max-questions", "4", "--no-progress"),
    ]


def finetune_args(t: Tree, out: Path) -> list[str]:
    a = t.assets
    return [
        *("finetune-squad", "--model", str(a["model"]), "--train", str(a["data"])),
        *("--out", str(out), "--max-length", "128", "--stride", "32", "--max-steps", "6"),
        *("--batch-size", "4", "--lr", "1e-3", "--seed", "3", "--save-every", "2"),
        *("--preset", "standard_hwa", "--hwa-noise", "0.05", "--no-progress"),
    ]


def vision_args(t: Tree, out: Path) -> list[str]:
    return [
        *("train-vision", "--data", str(t.assets["idx"]), "--out", str(out), "--epochs", "3"),
        *("--batch-size", "8", "--configs", "digital,pcm_inference", "--times", "0,3600"),
        *("--chips", "2", "--no-progress"),
    ]


ARGS = {"sweep": sweep_args, "finetune": finetune_args, "vision": vision_args}
COMPARE = {"sweep": compare_sweep, "finetune": compare_finetune, "vision": compare_sweep}


def fresh(t: Tree, name: str) -> Path:
    out = t.work / name
    shutil.rmtree(out, ignore_errors=True)
    return out


def resume_and_compare(t: Tree, kind: str, out: Path, before: str) -> tuple[str, bool]:
    proc = t.run([*ARGS[kind](t, out), "--resume"])
    if proc.returncode != 0:
        return f"{before}; resume: {said(proc)}", False
    text, ok = COMPARE[kind](out, t.refs[kind])
    return f"{before}; resume: {text}", ok


# --------------------------------------------------------------------------------------------
# cases: each returns (outcome, ok)


def kill_at_rows(kind: str, k: int):
    log = {"sweep": "results.jsonl", "finetune": "train_log.jsonl", "vision": "results.jsonl"}

    def case(t: Tree) -> tuple[str, bool]:
        out = fresh(t, f"{kind}-kill-rows{k}")
        proc = t.start(ARGS[kind](t, out))
        path = out / log[kind]
        started = out / "run_config.json"
        ready = (lambda: started.exists()) if k == 0 else (lambda: count(path) >= k)
        if not kill_when(proc, ready):
            return f"ended before the kill ({said(finish(proc))})", False
        return resume_and_compare(t, kind, out, f"killed at {count(path)} rows")

    return case


def kill_after_delay(kind: str, fraction: float):
    def case(t: Tree) -> tuple[str, bool]:
        out = fresh(t, f"{kind}-kill-{fraction:.2f}")
        delay = fraction * t.refs[kind + "_s"]
        proc = t.start(ARGS[kind](t, out))
        time.sleep(delay)
        if proc.poll() is not None:
            return f"ended before the kill at {delay:.1f} s ({said(finish(proc))})", True
        os.kill(proc.pid, signal.SIGKILL)
        finish(proc)
        before = f"killed at {delay:.1f} s"
        return resume_and_compare(t, kind, out, before)

    return case


def injected(kind: str, faults: dict, what: str, expect_kill: bool = True):
    """A fault from the wrapper (kill or ENOSPC at a chosen call), then --resume."""

    def case(t: Tree) -> tuple[str, bool]:
        out = fresh(t, f"{kind}-{what.replace(' ', '-')}")
        proc = t.run(ARGS[kind](t, out), faults)
        first = said(proc)
        if not expect_kill:  # a full disk: a clear one-line error, rows whole, then resume
            clear = proc.returncode == 1 and "Traceback" not in proc.text
            _, bad = lines_of(out / ("train_log.jsonl" if kind == "finetune" else "results.jsonl"))
            first += f"; {bad} torn lines" if bad else ""
            text, ok = resume_and_compare(t, kind, out, first)
            return text, ok and clear and not bad
        return resume_and_compare(t, kind, out, first)

    return case


def file_size_limit(kind: str, rows: int | None = None, limit: int | None = None):
    """The run under ``RLIMIT_FSIZE``: ``limit`` bytes, or room for run_config.json and the
    first ``rows`` result rows of the reference (the next row does not fit)."""

    def case(t: Tree) -> tuple[str, bool]:
        out = fresh(t, f"{kind}-fsize")
        n = limit
        if rows is not None:
            ref = (t.refs[kind] / "results.jsonl").read_bytes().splitlines(keepends=True)
            config = (t.refs[kind] / "run_config.json").stat().st_size
            k = next(i for i in range(rows, len(ref)) if len(b"".join(ref[:i])) > config)
            n = len(b"".join(ref[:k])) + 300
        proc = t.run(ARGS[kind](t, out), limit=n)
        first = f"limit {n} B: {said(proc)}"
        clear = proc.returncode == 1 and "Traceback" not in proc.text
        _, bad = lines_of(out / "results.jsonl")
        first += f"; {bad} torn lines" if bad else ""
        text, ok = resume_and_compare(t, kind, out, first)
        return text, ok and clear and not bad

    return case


def damaged(kind: str, damage: Callable[[Path], str], expect: str, rows: int | None = None):
    """Copy the reference run (cut to ``rows`` results), damage a file, --resume: the error must
    name the file (``expect`` in its last line), without a traceback."""

    def case(t: Tree) -> tuple[str, bool]:
        out = fresh(t, f"{kind}-damage-{damage.__name__}")
        shutil.copytree(t.refs[kind], out, ignore=shutil.ignore_patterns("*.log"))
        if rows is not None:
            lines = (out / "results.jsonl").read_bytes().splitlines(keepends=True)
            (out / "results.jsonl").write_bytes(b"".join(lines[:rows]))
            (out / "summary.md").unlink()
        target = damage(out)
        proc = t.run([*ARGS[kind](t, out), "--resume"])
        text = said(proc)
        if proc.returncode == 0:
            got, ok = COMPARE[kind](out, t.refs[kind])
            return f"{target}: resumed ({got})", False
        clear = "Traceback" not in proc.text and expect.format(out=out) in text
        return f"{target}: {text}", clear

    return case


def bad_middle_line(out: Path) -> str:
    p = out / "results.jsonl"
    lines = p.read_bytes().splitlines(keepends=True)
    lines[2] = lines[2][:40] + b"\n"
    p.write_bytes(b"".join(lines))
    return "results.jsonl line 3 cut short"


def torn_last_line(out: Path) -> str:
    p = out / "results.jsonl"
    p.write_bytes(p.read_bytes() + b'{"key": "ideal|1|3600.0", "exact_ma')
    return "results.jsonl torn last line"


def config_not_json(out: Path) -> str:
    p = out / "run_config.json"
    p.write_text(p.read_text()[:50])
    return "run_config.json cut short"


def config_a_list(out: Path) -> str:
    (out / "run_config.json").write_text("[]\n")
    return "run_config.json a list"


def config_no_fields(out: Path) -> str:
    (out / "run_config.json").write_text('{"torch": "2.0"}\n')
    return "run_config.json without determines_numbers"


def other_version_other_fields(out: Path) -> str:
    p = out / "run_config.json"
    meta = json.loads(p.read_text())
    meta["aimc_version"] = "0.0.1"
    meta["determines_numbers"]["legacy_knob"] = 1
    p.write_text(json.dumps(meta))
    return "run_config.json from aimc 0.0.1 with another field"


def training_state_cut(out: Path) -> str:
    p = sorted((out / "checkpoints").glob("step-*"))[-1] / "training_state.pt"
    p.write_bytes(p.read_bytes()[:4096])
    return f"{p.parent.name}/training_state.pt truncated"


def vision_checkpoint_cut(out: Path) -> str:
    p = out / "checkpoint.pt"
    p.write_bytes(p.read_bytes()[:2048])
    return "checkpoint.pt truncated"


def other_version_same_fields(t: Tree) -> tuple[str, bool]:
    out = fresh(t, "sweep-other-version")
    shutil.copytree(t.refs["sweep"], out, ignore=shutil.ignore_patterns("*.log"))
    lines = (out / "results.jsonl").read_bytes().splitlines(keepends=True)
    (out / "results.jsonl").write_bytes(b"".join(lines[:4]))
    meta = json.loads((out / "run_config.json").read_text())
    (out / "run_config.json").write_text(json.dumps(meta | {"aimc_version": "0.0.1"}))
    warned = "warning: resuming" in (t.run([*sweep_args(t, out), "--resume"])).text
    text, ok = compare_sweep(out, t.refs["sweep"])
    return ("warned, " if warned else "no warning, ") + text, ok and warned


def damaged_model(t: Tree) -> tuple[str, bool]:
    model = fresh(t, "damaged-model")
    shutil.copytree(t.refs["finetune"] / "model", model)
    st = model / "model.safetensors"
    st.write_bytes(st.read_bytes()[:5000])
    args = sweep_args(t, t.work / "sweep-damaged-model")
    args[args.index("--model") + 1] = str(model)
    proc = t.run(args)
    clear = proc.returncode == 2 and "Traceback" not in proc.text and str(st) in said(proc)
    return "model.safetensors truncated: " + said(proc), clear


def second_process(t: Tree) -> tuple[str, bool]:
    out = fresh(t, "sweep-two-processes")
    slow = {"write": {"file": "results.jsonl", "mode": "slow", "seconds": 1.5}}
    first = t.start(sweep_args(t, out), slow)
    while count(out / "results.jsonl") < 1 and first.poll() is None:
        time.sleep(0.01)
    t0 = time.monotonic()
    second = t.run([*sweep_args(t, out), "--resume"])
    took = time.monotonic() - t0
    finish(first)
    state = sweep_state(out)
    text = f"second: {said(second)} after {took:.1f} s; first: {said(first)}"
    text += f"; {state['dups']} duplicate rows"
    ok = second.returncode == 2 and f"pid {first.pid}" in second.text and not state["dups"]
    return text, ok and first.returncode == 0


def two_ranks_vs_busy(t: Tree) -> tuple[str, bool]:
    out = fresh(t, "vision-ranks-busy")
    holder = t.start(
        vision_args(t, out), {"write": {"file": "train_log.jsonl", "mode": "slow", "seconds": 30}}
    )
    while not (out / "train_log.jsonl").exists() and holder.poll() is None:
        time.sleep(0.01)
    port = str(20000 + random.randrange(20000))
    ranks = [
        t.start(
            [*vision_args(t, out), "--resume"],
            RANK=str(r),
            LOCAL_RANK=str(r),
            WORLD_SIZE="2",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=port,
        )
        for r in range(2)
    ]
    ends = [said(finish(p, timeout=120)) for p in ranks]
    os.kill(holder.pid, signal.SIGKILL)
    finish(holder)
    same = ends[0] == ends[1] and all(p.returncode == 2 for p in ranks)
    return f"rank 0: {ends[0]} | rank 1: {ends[1]}", same and f"pid {holder.pid}" in ends[0]


def _write(file: str, after: int, mode: str) -> dict:
    return {"write": {"file": file, "after": after, "mode": mode}}


def _save(nth: int, mode: str) -> dict:
    return {"save": {"nth": nth, "mode": mode}}


def _full(kind: str, faults: dict, tag: str):
    return injected(kind, faults, tag, expect_kill=False)


def cases() -> list[tuple[str, Callable[[Tree], tuple[str, bool]]]]:
    """(name, case) of the whole battery."""
    rnd = random.Random(0)
    frac = sorted(round(rnd.uniform(0.35, 0.95), 2) for _ in range(3))
    res, log = "results.jsonl", "train_log.jsonl"
    sd, tv, ft = "squad-drift", "train-vision", "finetune"
    return [
        *[(f"{sd}: kill -9 at {k} rows", kill_at_rows("sweep", k)) for k in (0, 1, 4, 8)],
        *[(f"{sd}: kill -9 at {f:.0%} of a run", kill_after_delay("sweep", f)) for f in frac],
        (f"{sd}: kill -9 mid-write of row 3", injected("sweep", _write(res, 2, "kill"), "torn")),
        *[(f"{ft}: kill -9 at {k} logged steps", kill_at_rows("finetune", k)) for k in (1, 3, 5)],
        *[
            (f"{ft}: kill -9 at {f:.0%} of a run", kill_after_delay("finetune", f))
            for f in frac[:2]
        ],
        (
            f"{ft}: kill -9 mid-write of checkpoint 2",
            injected("finetune", _save(2, "kill"), "torn"),
        ),
        (
            f"{ft}: kill -9 before renaming checkpoint 2 into place",
            injected("finetune", {"replace": {"prefix": "step-", "nth": 2}}, "rename"),
        ),
        (
            f"{ft}: kill -9 before renaming the final model/",
            injected("finetune", {"replace": {"prefix": "model", "nth": 1}}, "export"),
        ),
        (f"{tv}: kill -9 at 3 result rows", kill_at_rows("vision", 3)),
        (
            f"{sd}: disk full at row 4 (short write, ENOSPC)",
            _full("sweep", _write(res, 3, "x"), "full"),
        ),
        (f"{sd}: file size limit (RLIMIT_FSIZE) at row 4", file_size_limit("sweep", 3)),
        (f"{ft}: disk full at train_log step 3", _full("finetune", _write(log, 2, "x"), "log")),
        (f"{ft}: disk full in torch.save of checkpoint 2", _full("finetune", _save(2, "x"), "ck")),
        (f"{ft}: file size limit 8 MB (checkpoint 1)", file_size_limit("finetune", limit=8 << 20)),
        (f"{tv}: disk full in torch.save of epoch 2", _full("vision", _save(2, "x"), "ck")),
        (f"{sd}: bad line 3 of results.jsonl", damaged("sweep", bad_middle_line, "line 3", 6)),
        (f"{sd}: torn last line of results.jsonl", torn_resume),
        (f"{sd}: run_config.json not JSON", damaged("sweep", config_not_json, "not valid", 4)),
        (f"{sd}: run_config.json not an object", damaged("sweep", config_a_list, "a JSON ob", 4)),
        (f"{sd}: run_config.json missing fields", damaged("sweep", config_no_fields, "no 'det", 4)),
        (
            f"{sd}: run of another aimc version, other fields",
            damaged("sweep", other_version_other_fields, "made with aimc 0.0.1", 4),
        ),
        (f"{sd}: run of another aimc version, same fields", other_version_same_fields),
        (f"{ft}: truncated training_state.pt", damaged("finetune", training_state_cut, "not a r")),
        (f"{tv}: truncated checkpoint.pt", damaged("vision", vision_checkpoint_cut, "not a r", 2)),
        (f"{sd} --model: truncated model.safetensors", damaged_model),
        (f"{sd}: second process on the same --out (--resume)", second_process),
        (f"{tv}: 2 torchrun ranks on a busy --out", two_ranks_vs_busy),
    ]


def torn_resume(t: Tree) -> tuple[str, bool]:
    out = fresh(t, "sweep-torn-last")
    shutil.copytree(t.refs["sweep"], out, ignore=shutil.ignore_patterns("*.log"))
    lines = (out / "results.jsonl").read_bytes().splitlines(keepends=True)
    (out / "results.jsonl").write_bytes(b"".join(lines[:6]))
    torn_last_line(out)
    return resume_and_compare(t, "sweep", out, "6 rows + a torn line")


# --------------------------------------------------------------------------------------------


def snapshot(tree: Path, dest: Path) -> Path:
    """A copy of the ``aimc`` package of ``tree``: the battery runs one fixed version of the
    code even if the working tree changes meanwhile."""
    shutil.copytree(tree / "aimc", dest / "aimc", ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def make_assets(work: Path) -> dict[str, Path]:
    from conftest import tiny_squad_assets, write_tiny_idx

    assets = tiny_squad_assets(work / "assets", n_questions=12)
    return assets | {"idx": write_tiny_idx(work / "assets" / "idx")}


def references(t: Tree) -> None:
    for kind in ("sweep", "finetune", "vision"):
        out = fresh(t, f"ref-{kind}")
        t0 = time.monotonic()
        proc = t.run(ARGS[kind](t, out))
        if proc.returncode != 0:
            raise SystemExit(f"reference {kind} run failed:\n{proc.text[-3000:]}")
        t.refs[kind], t.refs[kind + "_s"] = out, time.monotonic() - t0


def run_all(code: Path, work: Path, assets, only: str | None) -> dict[str, dict]:
    t = Tree(code, work, assets)
    references(t)
    results = {}
    for name, case in cases():
        if only and only not in name:
            continue
        t0 = time.monotonic()
        try:
            outcome, ok = case(t)
        except Exception as err:  # a case that cannot even run is a result too
            outcome, ok = f"battery error: {type(err).__name__}: {err}", False
        outcome = outcome.replace(str(work.parent) + "/", "")
        results[name] = {"outcome": outcome, "ok": ok, "seconds": round(time.monotonic() - t0, 1)}
        print(f"[{'ok' if ok else 'FAIL'}] {name}: {outcome}", flush=True)
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--before", type=Path, help="another aimc source tree to run every case on")
    p.add_argument("--work", type=Path, default=Path("/tmp/aimc-fault-battery"))
    p.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/fault_battery.json")
    p.add_argument("--only", help="run the cases whose name contains this")
    args = p.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    assets = make_assets(args.work)
    t0 = time.monotonic()
    now = snapshot(ROOT, args.work / "code-now")
    columns = {"now": run_all(now, args.work / "now", assets, args.only)}
    if args.before:
        before = snapshot(args.before, args.work / "code-before")
        columns = {"before": run_all(before, args.work / "before", assets, args.only)} | columns
    print_table(columns)
    report = {
        "cases": [
            {"case": name, **{col: res[name] for col, res in columns.items()}}
            for name in columns["now"]
        ],
        "passed": sum(r["ok"] for r in columns["now"].values()),
        "total": len(columns["now"]),
        "wall_s": round(time.monotonic() - t0, 1),
        "before_tree": str(args.before) if args.before else None,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n{report['passed']}/{report['total']} ok; wrote {args.json}")
    sys.exit(0 if report["passed"] == report["total"] else 1)


def print_table(columns: dict[str, dict]) -> None:
    cols = list(columns)
    print("\n| case | " + " | ".join(cols) + " |")
    print("|---|" + "---|" * len(cols))
    for name in columns["now"]:
        cells = [
            f"{'ok' if columns[c][name]['ok'] else 'FAIL'}: {columns[c][name]['outcome']}"
            for c in cols
        ]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
