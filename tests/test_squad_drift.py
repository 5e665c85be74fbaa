"""``aimc squad-drift`` (aimc.experiments.squad_drift, aimc.experiments.report, aimc.cli).

All runs use a tiny random-init ``BertForQuestionAnswering`` (2 layers, hidden size 32) with the
real fast tokenizer of the shared MiniLM model, and a 10-question SQuAD file: real dev questions
(one with a context longer than 384 tokens, so it gives two features) and three synthetic
questions with very short contexts, so that even a random model gets some answers right.

Subprocess runs use ``--threads 1``; the whole file takes well under a minute on a quiet machine.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import SHARED_DEV, SHARED_MODEL, official_layout, save_tiny_bert

from aimc import presets
from aimc.cli import main as cli_main
from aimc.config import DriftCompensation, IOConfig
from aimc.experiments.report import fmt_time, summary_table
from aimc.experiments.squad_drift import (
    SweepSpec,
    Unit,
    append_row,
    read_results,
    resolve_config,
    run,
    unit_seeds,
    work_units,
)
from aimc.squad.data import load_squad
from aimc.squad.metrics import exact_match_score, f1_score, metric_max_over_ground_truths

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]

CONFIGS = ["digital", "ideal", "bert_squad:0.035"]
TIMES = [0.0, 3600.0]
CHIPS = 2
MAX_Q = 8  # of the 10 questions in the file
N_UNITS = 1 + (len(CONFIGS) - 1) * CHIPS * len(TIMES)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ROW_FIELDS = {
    "key",
    "config",
    "chip",
    "t",
    "exact_match",
    "f1",
    "questions",
    "features",
    "eval_s",
    "wall_s",
    "program_seed",
    "read_seed",
    "rank",
    "config_resolved",
}


# --------------------------------------------------------------------------------------------
# Helpers and fixtures
# --------------------------------------------------------------------------------------------


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if "PYTHONPATH" in env else "")
    env.update(
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def _args(
    assets: dict[str, Any],
    out: Path,
    *,
    data: str = "json_gz",
    configs: list[str] = CONFIGS,
    times: list[float] = TIMES,
    chips: int = CHIPS,
    extra: tuple[str, ...] = (),
) -> list[str]:
    return [
        "squad-drift",
        "--model",
        str(assets["model"]),
        "--data",
        str(assets[data]),
        "--out",
        str(out),
        "--configs",
        ",".join(configs),
        "--times",
        ",".join(repr(t) for t in times),
        "--chips",
        str(chips),
        "--max-questions",
        str(MAX_Q),
        "--no-progress",
        *extra,
    ]


def _cli(args: list[str], timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "aimc", *args, "--threads", "1"],
        cwd=ROOT,
        env=_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _by_key(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["key"]: r for r in rows}


def _scores(rows: list[dict[str, Any]]) -> dict[str, tuple[float, float]]:
    return {r["key"]: (r["exact_match"], r["f1"]) for r in rows}


def _table(summary: str) -> list[str]:
    """The markdown table lines of a summary (stdout or summary.md)."""
    return [line for line in summary.splitlines() if line.startswith("|")]


def _synthetic(qid: str, question: str, context: str, answer: str) -> dict[str, Any]:
    return {
        "id": qid,
        "title": "Synthetic",
        "context": context,
        "question": question,
        "answers": (answer,),
        "answer_starts": (context.index(answer),),
    }


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, Any]:
    """Tiny QA model + tokenizer, a tiny BertModel (no QA head), SQuAD .json and .json.gz."""
    if not (SHARED_MODEL / "tokenizer.json").exists() or not SHARED_DEV.exists():
        pytest.skip("shared MiniLM tokenizer or SQuAD dev set not available")
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("squad_drift_assets")
    tokenizer = AutoTokenizer.from_pretrained(str(SHARED_MODEL))
    assert tokenizer.is_fast
    model_dir = save_tiny_bert(root / "tiny-qa")
    assert json.loads((model_dir / "config.json").read_text())["architectures"] == [
        "BertForQuestionAnswering"
    ]
    bare_dir = save_tiny_bert(root / "tiny-bare", qa=False)

    dev = load_squad(SHARED_DEV)
    long_ex = dev[250]  # question + context > 384 tokens: two features
    assert len(tokenizer(long_ex.question, long_ex.context)["input_ids"]) > 384
    real = [e.__dict__ for e in dev[:6]]
    items = [
        *real[:4],
        long_ex.__dict__,
        _synthetic("syn-paris", "What is the capital of France?", "Paris", "Paris"),
        _synthetic("syn-broncos", "Who won Super Bowl 50?", "Denver Broncos", "Denver Broncos"),
        *real[4:6],
        _synthetic("syn-tower", "Where is the Eiffel Tower?", "In Paris.", "Paris"),
    ]
    doc = official_layout(items)
    json_path = root / "squad.json"
    json_path.write_text(json.dumps(doc))
    gz_path = root / "squad.json.gz"
    gz_path.write_bytes(gzip.compress(json.dumps(doc).encode()))
    assert load_squad(json_path) == load_squad(gz_path)
    return {
        "root": root,
        "model": model_dir,
        "bare_model": bare_dir,
        "json": json_path,
        "json_gz": gz_path,
        "examples": load_squad(json_path),
    }


@pytest.fixture(scope="module")
def cli_run(assets) -> dict[str, Any]:
    """One complete CLI sweep (run "A"): digital, ideal, bert_squad:0.035 x 2 chips x 2 times."""
    out = assets["root"] / "run_a"
    proc = _cli(_args(assets, out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_results(out)
    return {"out": out, "stdout": proc.stdout, "stderr": proc.stderr, "rows": rows}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """In-process runs use one thread, like the subprocess runs (``--threads 1``)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


SMALL = {"configs": ["digital", "bert_squad:0.035"], "times": TIMES, "chips": 1}


@pytest.fixture(scope="module")
def api_run(assets) -> dict[str, Any]:
    """A small sweep through the Python API (in this process), used as 1-process reference."""
    out = assets["root"] / "api_run"
    spec = SweepSpec(
        model=str(assets["model"]), data=str(assets["json"]), max_questions=MAX_Q, **SMALL
    )
    rows = run(spec, out, device="cpu", progress=False)
    return {"out": out, "rows": rows, "spec": spec}


# --------------------------------------------------------------------------------------------
# 1. End to end through the CLI
# --------------------------------------------------------------------------------------------


def test_cli_end_to_end_outputs(cli_run, assets):
    out, rows = cli_run["out"], cli_run["rows"]
    for name in ("run_config.json", "results.jsonl", "summary.md", "plot.png", "plot.svg"):
        assert (out / name).is_file(), name
    assert not list(out.glob("results.rank*.jsonl"))

    # one row per unit, written in canonical order
    spec = SweepSpec(
        model=str(assets["model"]),
        data=str(assets["json_gz"]),
        configs=CONFIGS,
        times=TIMES,
        chips=CHIPS,
        max_questions=MAX_Q,
    )
    assert len(rows) == N_UNITS
    assert [r["key"] for r in rows] == [u.key for u in work_units(spec)]
    for row in rows:
        assert set(row) >= ROW_FIELDS, row.keys()
        assert row["questions"] == MAX_Q
        assert row["features"] == MAX_Q + 1  # the long question has two features
        assert 0.0 <= row["exact_match"] <= 100.0 and 0.0 <= row["f1"] <= 100.0
        assert row["exact_match"] <= row["f1"] + 1e-9
        assert row["wall_s"] >= row["eval_s"] > 0.0
        assert row["rank"] == 0
        cfg = resolve_config(row["config"])
        if cfg is None:
            assert row["t"] is None and row["chip"] == 0
            assert row["program_seed"] is None and row["read_seed"] is None
            assert row["config_resolved"] is None
        else:
            assert row["t"] in TIMES
            unit = Unit(row["config"], row["chip"], row["t"])
            assert (row["program_seed"], row["read_seed"]) == unit_seeds(spec, unit)
            assert row["config_resolved"] == json.loads(json.dumps(cfg.to_dict()))

    meta = json.loads((out / "run_config.json").read_text())
    assert meta["spec"]["configs"] == CONFIGS and meta["spec"]["times"] == TIMES
    assert meta["spec"]["chips"] == CHIPS and meta["spec"]["max_questions"] == MAX_Q
    assert set(meta["configs_resolved"]) == set(CONFIGS)
    assert meta["configs_resolved"]["digital"] is None

    # summary: printed and saved, one table line per (config, t), chips counted right
    stdout = cli_run["stdout"]
    for name in CONFIGS:
        assert f"| {name} |" in stdout
    assert _table(stdout) == _table((out / "summary.md").read_text())
    body = _table(stdout)[2:]
    assert len(body) == 1 + (len(CONFIGS) - 1) * len(TIMES)
    for line in body:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[2] == ("1" if cells[0] == "digital" else str(CHIPS))
    assert "plot:" in stdout

    assert (out / "plot.png").read_bytes().startswith(PNG_MAGIC)
    assert "<svg" in (out / "plot.svg").read_text()


def test_cli_tensorboard_events(cli_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, rows = cli_run["out"], cli_run["rows"]
    tb = out / "tensorboard"
    for name in CONFIGS:
        chips = 1 if name == "digital" else CHIPS
        for chip in range(chips):
            d = tb / name / f"chip{chip}"
            files = list(d.glob("events.out.tfevents.*"))
            assert files, d
            assert any(b"val/f1" in f.read_bytes() for f in files)
            acc = EventAccumulator(str(d))
            acc.Reload()
            assert {"val/f1", "val/exact_match"} <= set(acc.Tags()["scalars"])
            got = {e.step: e.value for e in acc.Scalars("val/f1")}
            want = {
                int(round(r["t"] or 0)): r["f1"]
                for r in rows
                if r["config"] == name and r["chip"] == chip
            }
            assert got == pytest.approx(want, rel=1e-6, abs=1e-6)
        acc = EventAccumulator(str(tb / name / "mean"))
        acc.Reload()
        got = {e.step: e.value for e in acc.Scalars("val/f1")}
        mine = [r for r in rows if r["config"] == name]
        want = {
            int(round(t or 0)): sum(r["f1"] for r in mine if r["t"] == t) / chips
            for t in {r["t"] for r in mine}
        }
        assert got == pytest.approx(want, rel=1e-6, abs=1e-6)


def test_python_api_returns_final_rows(api_run, cli_run):
    rows, out = api_run["rows"], api_run["out"]
    assert [r["key"] for r in rows] == [u.key for u in work_units(api_run["spec"])]
    assert _by_key(read_results(out)) == _by_key(rows)
    for name in ("run_config.json", "results.jsonl", "summary.md", "plot.png", "plot.svg"):
        assert (out / name).is_file(), name
    # a unit's numbers do not depend on the rest of the sweep, the data file's compression or the
    # number of threads: the same units in the (bigger) CLI sweep give the same scores
    big = _scores(cli_run["rows"])
    assert _scores(rows) == {k: big[k] for k in _scores(rows)}


# --------------------------------------------------------------------------------------------
# 2. The digital row equals an independent HuggingFace evaluation
# --------------------------------------------------------------------------------------------


def _independent_predictions(model_dir: Path, examples) -> dict[str, str]:
    """Question by question, one feature at a time, no batching or padding."""
    from transformers import AutoTokenizer, BertForQuestionAnswering

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = BertForQuestionAnswering.from_pretrained(str(model_dir)).eval()
    preds = {}
    for ex in examples:
        enc = tokenizer(
            ex.question.lstrip(),
            ex.context,
            truncation="only_second",
            max_length=384,
            stride=128,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
        )
        best_score, best_text = -math.inf, ""
        for f in range(len(enc["input_ids"])):
            ids = enc["input_ids"][f]
            seq = enc.sequence_ids(f)
            offsets = enc["offset_mapping"][f]
            with torch.no_grad():
                out = model(
                    input_ids=torch.tensor([ids]),
                    token_type_ids=torch.tensor([enc["token_type_ids"][f]]),
                    attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                )
            s_log = out.start_logits[0].tolist()
            e_log = out.end_logits[0].tolist()
            n = len(ids)
            top_s = sorted(range(n), key=lambda i: -s_log[i])[:20]
            top_e = sorted(range(n), key=lambda i: -e_log[i])[:20]
            for s in top_s:
                if seq[s] != 1:
                    continue
                for e in top_e:
                    if seq[e] != 1 or e < s or e - s + 1 > 30:
                        continue
                    score = s_log[s] + e_log[e]
                    if score > best_score:
                        best_score = score
                        best_text = ex.context[offsets[s][0] : offsets[e][1]]
        preds[ex.id] = best_text
    return preds


def test_digital_row_matches_independent_hf_evaluation(cli_run, assets):
    examples = assets["examples"]
    keep = sorted(random.Random(0).sample(range(len(examples)), MAX_Q))  # --subset-seed 0
    subset = [examples[i] for i in keep]
    preds = _independent_predictions(assets["model"], subset)
    em = 100.0 * sum(
        metric_max_over_ground_truths(exact_match_score, preds[e.id], e.answers) for e in subset
    )
    f1 = 100.0 * sum(
        metric_max_over_ground_truths(f1_score, preds[e.id], e.answers) for e in subset
    )
    em, f1 = em / len(subset), f1 / len(subset)
    assert sum(bool(p) for p in preds.values()) >= len(subset) // 2
    assert em > 0 and f1 > 0  # the comparison is not trivially 0 == 0

    (digital,) = [r for r in cli_run["rows"] if r["config"] == "digital"]
    assert digital["exact_match"] == pytest.approx(em, abs=1e-9)
    assert digital["f1"] == pytest.approx(f1, abs=1e-9)


# --------------------------------------------------------------------------------------------
# 3. Resume
# --------------------------------------------------------------------------------------------

# Runs the CLI with a pause after each result row so that the test can kill it between units.
_SLOW_CLI = """
import sys, time
import aimc.experiments.squad_drift as sd
_append = sd.append_row
def _slow_append(path, row):
    _append(path, row)
    time.sleep(3.0)
sd.append_row = _slow_append
from aimc.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _complete_lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def test_resume_after_sigkill_matches_uninterrupted_run(cli_run, assets, capsys):
    out = assets["root"] / "run_b"
    results = out / "results.jsonl"
    args = _args(assets, out)
    with open(assets["root"] / "run_b.log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", _SLOW_CLI, *args, "--threads", "1"],
            cwd=ROOT,
            env=_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 240
            while _complete_lines(results) < 2:
                assert proc.poll() is None, (assets["root"] / "run_b.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "no results after 240 s"
                time.sleep(0.02)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    partial = read_results(out)
    assert 2 <= len(partial) < N_UNITS
    assert not (out / "summary.md").exists()

    # without --resume the directory is refused (before anything is run or written)
    with pytest.raises(SystemExit) as exc:
        cli_main(args)
    assert exc.value.code == 2
    assert "already holds a run; pass --resume" in capsys.readouterr().err
    assert len(read_results(out)) == len(partial)

    proc = _cli([*args, "--resume"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_results(out)
    keys = [r["key"] for r in rows]
    assert len(keys) == len(set(keys)) == N_UNITS  # the killed run's units were not redone
    assert _by_key(rows).keys() == _by_key(cli_run["rows"]).keys()
    assert _scores(rows) == _scores(cli_run["rows"])  # bit-identical floats, unit by unit
    # no unit counted twice: the same summary table as the uninterrupted run
    assert _table(proc.stdout) == _table(cli_run["stdout"])
    assert _table((out / "summary.md").read_text()) == _table(cli_run["stdout"])


def _interrupted_copy(src: Path, dst: Path, n_rows: int) -> None:
    """``dst``: the state of run ``src`` had it been killed after its first ``n_rows`` units."""
    dst.mkdir()
    shutil.copy(src / "run_config.json", dst / "run_config.json")
    lines = (src / "results.jsonl").read_text().splitlines(keepends=True)
    (dst / "results.jsonl").write_text("".join(lines[:n_rows]))


def test_resume_after_torn_last_line(cli_run, assets):
    out = assets["root"] / "run_torn"
    _interrupted_copy(cli_run["out"], out, 2)
    with open(out / "results.jsonl", "a") as f:
        f.write('{"key": "trunc')  # killed in the middle of writing the third row
    assert len(read_results(out)) == 2
    rows = run(
        SweepSpec(
            model=str(assets["model"]),
            data=str(assets["json_gz"]),
            configs=CONFIGS,
            times=TIMES,
            chips=CHIPS,
            max_questions=MAX_Q,
        ),
        out,
        resume=True,
        progress=False,
    )
    assert _scores(rows) == _scores(cli_run["rows"])
    assert len(read_results(out)) == N_UNITS


def test_resume_refuses_other_spec_and_non_empty_dir(cli_run, assets, capsys):
    out = cli_run["out"]
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}

    with pytest.raises(SystemExit) as exc:
        cli_main(_args(assets, out))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--resume" in err and str(out) in err

    with pytest.raises(SystemExit) as exc:
        cli_main(_args(assets, out, times=[0.0, 86400.0], extra=("--resume",)))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--resume" in err and "times" in err and "86400" in err
    assert "chips" not in err and "configs" not in err

    with pytest.raises(SystemExit) as exc:
        cli_main(_args(assets, out, chips=3, extra=("--resume",)))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "chips (2 != 3)" in err and "times" not in err

    # the refused runs changed nothing
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_resume_with_other_batch_size_is_refused_or_consistent(assets):
    spec = dict(
        model=str(assets["model"]),
        data=str(assets["json"]),
        configs=["bert_squad:0.07"],
        times=[0.0, 3600.0],
        chips=2,
        max_questions=MAX_Q,
    )
    root = assets["root"]
    full_1 = run(SweepSpec(**spec), root / "bs1", batch_size=1, progress=False)
    run(SweepSpec(**spec), root / "bs32", batch_size=32, progress=False)
    out = root / "bs32_resumed"
    _interrupted_copy(root / "bs32", out, 1)  # killed after its first unit
    try:
        resumed = run(SweepSpec(**spec), out, resume=True, batch_size=1, progress=False)
    except ValueError as err:
        assert "batch" in str(err)
        return
    # accepted: then it must equal one uninterrupted run of the resuming command line
    assert _scores(resumed) == _scores(full_1)


# --------------------------------------------------------------------------------------------
# 4. Two processes (torchrun) give the same rows as one
# --------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_two_ranks(args: list[str], log_dir: Path, timeout: float) -> None:
    torchrun = Path(sys.executable).with_name("torchrun")
    if torchrun.exists():
        cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "aimc", *args]
        with open(log_dir / "torchrun.log", "w") as log:
            proc = subprocess.Popen(
                [*cmd, "--threads", "1"],
                cwd=ROOT,
                env=_env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                rc = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                raise
        assert rc == 0, (log_dir / "torchrun.log").read_text()[-4000:]
        return
    port = str(_free_port())  # no torchrun executable: start the two ranks by hand
    procs = []
    for rank in range(2):
        env = _env(
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE="2",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=port,
        )
        log = open(log_dir / f"rank{rank}.log", "w")  # noqa: SIM115 - closed below
        procs.append(
            (
                subprocess.Popen(
                    [sys.executable, "-m", "aimc", *args, "--threads", "1"],
                    cwd=ROOT,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                ),
                log,
            )
        )
    deadline = time.monotonic() + timeout
    try:
        for rank, (proc, _) in enumerate(procs):
            rc = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            assert rc == 0, (log_dir / f"rank{rank}.log").read_text()[-4000:]
    finally:
        for proc, log in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()


def test_two_processes_equal_one(api_run, cli_run, assets):
    out = assets["root"] / "run_ddp"
    args = _args(assets, out, data="json", **SMALL)
    _run_two_ranks(args, assets["root"], timeout=400)

    assert not (out / "results.jsonl").exists()
    r0, r1 = out / "results.rank0.jsonl", out / "results.rank1.jsonl"
    assert r0.is_file() and r1.is_file()
    keys = [u.key for u in work_units(api_run["spec"])]
    rows0 = [json.loads(line) for line in r0.read_text().splitlines()]
    rows1 = [json.loads(line) for line in r1.read_text().splitlines()]
    assert [r["key"] for r in rows0] == keys[0::2] and {r["rank"] for r in rows0} == {0}
    assert [r["key"] for r in rows1] == keys[1::2] and {r["rank"] for r in rows1} == {1}

    assert _scores(rows0 + rows1) == _scores(api_run["rows"])
    big = _scores(cli_run["rows"])
    assert _scores(rows0 + rows1) == {k: big[k] for k in keys}

    assert (out / "summary.md").is_file()
    assert (out / "plot.png").read_bytes().startswith(PNG_MAGIC)
    assert _table((out / "summary.md").read_text()) == _table(
        (api_run["out"] / "summary.md").read_text()
    )


# --------------------------------------------------------------------------------------------
# 5. Bad inputs
# --------------------------------------------------------------------------------------------


def _bad_json(assets) -> str:
    path = assets["root"] / "bad.json"
    path.write_text('{"version": "1.1", "data": [')
    return str(path)


def _not_a_model(assets) -> str:
    path = assets["root"] / "not_a_model"
    path.mkdir(exist_ok=True)
    (path / "notes.txt").write_text("no model here\n")
    return str(path)


# (id, how to change the argument list, words the error message must contain, whether the
# error comes before anything is written)
BAD_INPUTS = [
    ("missing-data", ("--data", lambda a: str(a["root"] / "nope.json")), ["--data"], False),
    ("malformed-json", ("--data", _bad_json), ["--data", "not valid JSON"], False),
    (
        "no-qa-head",
        ("--model", lambda a: str(a["bare_model"])),
        ["--model", "question-answering", "BertModel"],
        False,
    ),
    ("not-a-model", ("--model", _not_a_model), ["--model", "not_a_model"], False),
    ("negative-time", ("--times=-1", None), ["--times", "-1"], True),
    ("nan-time", ("--times", "0,nan"), ["--times", "nan"], True),
    ("inf-time", ("--times", "inf"), ["--times", "inf"], True),
    ("unknown-config", ("--configs", "digital,warp_drive"), ["--configs", "warp_drive"], True),
    ("negative-w-noise", ("--configs", "bert_squad:-1"), ["--configs", "bert_squad:-1"], True),
    ("zero-chips", ("--chips", "0"), ["--chips", "0"], True),
    ("zero-max-questions", ("--max-questions", "0"), ["--max-questions", "0"], True),
    ("zero-batch-size", ("--batch-size", "0"), ["--batch-size", "0"], True),
    ("duplicate-times", ("--times", "0,0"), ["--times"], True),
    ("times-not-numbers", ("--times", "0,soon"), ["--times", "soon"], True),
]


@pytest.mark.parametrize(
    "change, words, early", [b[1:] for b in BAD_INPUTS], ids=[b[0] for b in BAD_INPUTS]
)
def test_bad_inputs_exit_2_naming_the_argument(assets, tmp_path, capsys, change, words, early):
    out = tmp_path / "out"
    args = _args(assets, out)
    flag, value = change
    if value is None:  # a "--flag=value" token
        name = flag.split("=")[0]
        i = args.index(name)
        args[i : i + 2] = [flag]
    else:
        value = value(assets) if callable(value) else value
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    with pytest.raises(SystemExit) as exc:
        cli_main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    for word in words:
        assert word in err, err
    assert "Traceback" not in err
    if early:
        assert not out.exists()
    assert not list(out.glob("results*.jsonl"))


@pytest.mark.parametrize(
    "changes, batch_size, match",
    [
        ({"times": [-1.0]}, 32, "--times"),
        ({"times": [math.nan]}, 32, "--times"),
        ({"times": []}, 32, "--times"),
        ({"configs": []}, 32, "--configs"),
        ({"configs": ["ideal", "ideal"]}, 32, "--configs"),
        ({"configs": ["bert_squad:abc"]}, 32, "--configs"),
        ({"chips": 0}, 32, "--chips"),
        ({"max_questions": 0}, 32, "--max-questions"),
        ({}, 0, "--batch-size"),
    ],
)
def test_run_rejects_bad_spec(assets, tmp_path, changes, batch_size, match):
    spec = SweepSpec(model=str(assets["model"]), data=str(assets["json"]), **{**SMALL, **changes})
    with pytest.raises(ValueError, match=match):
        run(spec, tmp_path / "out", batch_size=batch_size, progress=False)
    assert not (tmp_path / "out").exists()


def test_failed_start_leaves_out_dir_reusable(assets, tmp_path, capsys):
    out = tmp_path / "out"
    args = _args(assets, out, configs=["digital"])
    bad = list(args)
    bad[bad.index("--data") + 1] = str(assets["root"] / "nope.json")
    with pytest.raises(SystemExit):
        cli_main(bad)
    capsys.readouterr()
    assert cli_main(args) == 0


# --------------------------------------------------------------------------------------------
# 6. Weights & Biases, offline
# --------------------------------------------------------------------------------------------


def test_wandb_offline(assets, tmp_path):
    pytest.importorskip("wandb")
    out = tmp_path / "run"
    wandb_dir = tmp_path / "wandb_home"
    wandb_dir.mkdir()
    args = _args(assets, out, configs=["digital", "ideal"], times=[0.0], chips=1)
    args[args.index("--max-questions") + 1] = "2"
    env = {
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_DIR": str(wandb_dir),
        "WANDB_CONFIG_DIR": str(wandb_dir),
        "WANDB_CACHE_DIR": str(wandb_dir),
        "WANDB_DISABLE_GIT": "true",
    }
    proc = _cli([*args, "--wandb", "--wandb-mode", "offline"], **env)
    last = (proc.stderr.strip().splitlines() or [""])[-1]
    if proc.returncode != 0 and "Traceback" in proc.stderr and "wandb" in last.lower():
        pytest.skip("wandb cannot start in this sandbox: " + last)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sorted((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 2  # the units of rank 0, and the summary table
    assert all(list(r.glob("run-*.wandb")) for r in runs)
    tables = list((out / "wandb").rglob("summary_*.table.json"))
    assert len(tables) == 1
    table = json.loads(tables[0].read_text())
    assert table["columns"] == ["config", "t", "chip", "exact_match", "f1"]
    assert len(table["data"]) == 2
    assert len(read_results(out)) == 2


# --------------------------------------------------------------------------------------------
# 7. Unit level
# --------------------------------------------------------------------------------------------


def test_resolve_config_every_name():
    assert resolve_config("digital") is None
    for name, want in (
        ("pcm_inference", presets.pcm_inference()),
        ("pcm_weights_only", presets.pcm_weights_only()),
        ("standard_hwa", presets.standard_hwa()),
        ("bert_squad", presets.bert_squad()),
        ("bert_squad:0.035", presets.bert_squad(0.035)),
        ("bert_squad:0.07", presets.bert_squad(0.07)),
        ("bert_squad:0", presets.bert_squad(0.0)),
        ("bert_squad:1e-2", presets.bert_squad(0.01)),
    ):
        assert resolve_config(name).to_dict() == want.to_dict(), name
    assert resolve_config("bert_squad:0.035").io.w_noise == 0.035

    # "ideal" = AIHWKIT example 24's create_ideal_rpu_config: every PCM scale 0, no compensation,
    # one learned output scale per layer; "ideal_drift" keeps drift and global compensation
    base = presets.bert_squad().to_dict()
    ideal = resolve_config("ideal")
    got = ideal.to_dict()
    assert got["io"] == IOConfig(is_perfect=True).to_dict()
    assert got["mapping"] == {**base["mapping"], "out_scaling_columnwise": False}
    assert got["hwa"] == base["hwa"]
    assert ideal.device.model == "pcm"
    assert ideal.device.drift_compensation == DriftCompensation.NONE
    p = ideal.device.params
    assert p.prog_noise_scale == p.read_noise_scale == p.drift_scale == 0.0
    ideal_drift = resolve_config("ideal_drift")
    got = ideal_drift.to_dict()
    assert got["io"] == IOConfig(is_perfect=True).to_dict()
    assert got["mapping"] == base["mapping"] and got["hwa"] == base["hwa"]
    assert ideal_drift.device.drift_compensation == DriftCompensation.GLOBAL
    p = ideal_drift.device.params
    assert p.prog_noise_scale == p.read_noise_scale == 0.0 and p.drift_scale == 1.0
    # resolve_config returns a fresh object every time
    assert resolve_config("ideal") is not resolve_config("ideal")

    for bad in (
        "",
        "Digital",
        "warp_drive",
        "ideal:1",
        "pcm_inference:0.1",
        "bert_squad:",
        "bert_squad:-0.01",
        "bert_squad:nan",
        "bert_squad:inf",
        "bert_squad:abc",
    ):
        if bad == "bert_squad:":
            # an empty argument is the preset's default noise
            assert resolve_config(bad).to_dict() == presets.bert_squad().to_dict()
            continue
        with pytest.raises(ValueError, match="--configs"):
            resolve_config(bad)


def test_work_units_count_and_order():
    spec = SweepSpec(model="m", data="d", configs=CONFIGS, times=[3600, 0, 10], chips=2)
    units = work_units(spec)
    assert len(units) == 1 + 2 * 2 * 3
    assert units[0] == Unit("digital", 0, None)
    want = [
        Unit(c, chip, float(t)) for c in CONFIGS[1:] for chip in range(2) for t in (3600, 0, 10)
    ]
    assert units[1:] == want
    assert all(isinstance(u.t, float) for u in units[1:])
    assert len({u.key for u in units}) == len(units)
    assert units[1].key == "ideal|0|3600.0" and units[0].key == "digital|0|None"

    only_digital = SweepSpec(model="m", data="d", configs=["digital"], times=[0, 1], chips=5)
    assert work_units(only_digital) == [Unit("digital", 0, None)]
    no_digital = SweepSpec(model="m", data="d", configs=["pcm_inference"], times=[1.5], chips=3)
    assert [u.chip for u in work_units(no_digital)] == [0, 1, 2]


def test_unit_seeds_depend_only_on_seed_config_chip_t():
    unit = Unit("ideal", 1, 3600.0)
    a = SweepSpec(model="m", data="d", configs=["ideal"], times=[3600.0], chips=2)
    b = SweepSpec(
        model="other",
        data="other.json",
        configs=["digital", "bert_squad", "ideal"],
        times=[0.0, 10.0, 3600.0],
        chips=7,
        max_questions=3,
        subset_seed=5,
        max_length=128,
    )
    prog, read = unit_seeds(a, unit)
    assert unit_seeds(b, unit) == (prog, read)
    assert all(isinstance(s, int) and s >= 0 for s in (prog, read))

    other_seed = unit_seeds(SweepSpec(model="m", data="d", seed=1), unit)
    assert other_seed[0] != prog and other_seed[1] != read
    same_chip = unit_seeds(a, Unit("ideal", 1, 0.0))
    assert same_chip[0] == prog and same_chip[1] != read  # same programmed chip, new read
    assert unit_seeds(a, Unit("ideal", 0, 3600.0))[0] != prog
    assert unit_seeds(a, Unit("bert_squad", 1, 3600.0))[0] != prog

    spec = SweepSpec(model="m", data="d", configs=CONFIGS[1:], times=[0, 1, 3600], chips=3)
    seeds = [unit_seeds(spec, u) for u in work_units(spec)]
    assert len({r for _, r in seeds}) == len(seeds)  # every unit its own read noise
    assert len({p for p, _ in seeds}) == 2 * 3  # one programming per (config, chip)


def test_read_results_skips_torn_last_line(tmp_path):
    rows = [{"key": f"k{i}", "f1": i / 3} for i in range(3)]
    for row in rows[:2]:
        append_row(tmp_path / "results.jsonl", row)
    with open(tmp_path / "results.jsonl", "a") as f:
        f.write("\n")  # a blank line is ignored too
        f.write('{"key": "trunc')  # cut by SIGKILL
    append_row(tmp_path / "results.rank1.jsonl", rows[2])
    (tmp_path / "other.jsonl").write_text('{"key": "not a result"}\n')
    assert read_results(tmp_path) == rows
    (tmp_path / "empty").mkdir()
    assert read_results(tmp_path / "empty") == []


@pytest.mark.parametrize(
    "t, text",
    [
        (None, "-"),
        (0.0, "0 s"),
        (0.25, "0.25 s"),
        (1.0, "1 s"),
        (10**0.75, "5.62 s"),
        (59.0, "59 s"),
        (60.0, "1 min"),
        (90.0, "1.5 min"),
        (3600.0, "1 h"),
        (5400.0, "1.5 h"),
        (86400.0, "1 d"),
        (1e6, "11.6 d"),
        (30 * 86400.0, "1 mo"),
        (365 * 86400.0, "1 y"),
        (3650 * 86400.0, "10 y"),
    ],
)
def test_fmt_time(t, text):
    assert fmt_time(t) == text


def test_summary_table_mean_and_std():
    def row(config, chip, t, em, f1):
        return {"config": config, "chip": chip, "t": t, "exact_match": em, "f1": f1}

    rows = [
        row("digital", 0, None, 50.0, 60.0),
        row("x", 0, 0.0, 10.0, 20.0),
        row("x", 0, 3600.0, 0.0, 10.0),
        row("x", 1, 0.0, 20.0, 40.0),
        row("x", 1, 3600.0, 30.0, 10.0),
        row("x", 2, 3600.0, 60.0, 40.0),
    ]
    assert summary_table(rows) == "\n".join(
        [
            "| config | t | chips | exact match | F1 |",
            "|---|---|---:|---:|---:|",
            "| digital | - | 1 | 50.00 ± 0.00 | 60.00 ± 0.00 |",
            "| x | 0 s | 2 | 15.00 ± 7.07 | 30.00 ± 14.14 |",  # sample std over chips
            "| x | 1 h | 3 | 30.00 ± 30.00 | 20.00 ± 17.32 |",
        ]
    )
