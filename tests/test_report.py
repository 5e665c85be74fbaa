"""``benchmarks/report.py``: the docs' benchmark tables are generated from the measured JSON."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_report", ROOT / "benchmarks" / "report.py")
report = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(report)


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path]:
    """A copy of docs/ and benchmarks/results/."""
    docs, results = tmp_path / "docs", tmp_path / "results"
    shutil.copytree(ROOT / "docs", docs)
    shutil.copytree(ROOT / "benchmarks" / "results", results)
    return docs, results


def _marked(docs: Path) -> set[str]:
    return {n for p in docs.rglob("*.md") for n in report.OPEN.findall(p.read_text())}


def test_committed_docs_are_up_to_date_and_every_table_is_used():
    assert report.run(check=True) == [], "run `make report` and commit the docs"
    assert _marked(ROOT / "docs") == set(report.TABLES)


def test_idempotent_and_regenerates_emptied_tables(tree):
    docs, results = tree
    page = docs / "benchmarks.md"
    original = page.read_text()
    emptied = report.MARKER.sub(
        lambda m: f"<!-- report:{m.group(1)} -->\n<!-- /report -->", original
    )
    assert emptied != original
    page.write_text(emptied)
    assert report.run(results, docs) == [page]
    assert page.read_text() == original
    assert report.run(results, docs) == []  # a second run changes nothing


def test_numbers_follow_the_json(tree):
    docs, results = tree
    path = results / "hwa_step_cpu.json"
    data = json.loads(path.read_text())
    data["rows"][0]["ratio"] = 9.87654
    path.write_text(json.dumps(data))
    changed = report.run(results, docs)
    assert changed and all("**9.88**" in p.read_text() for p in changed)


def test_missing_json_fails_clearly(tree, capsys):
    docs, results = tree
    (results / "pcm_cpu.json").unlink()
    with pytest.raises(report.ReportError, match=r"pcm_cpu\.json: missing"):
        report.run(results, docs)
    assert report.main(["--results", str(results), "--docs", str(docs)]) == 2
    assert "pcm_cpu.json: missing" in capsys.readouterr().err


def test_malformed_json_fails_clearly(tree):
    docs, results = tree
    (results / "linear_cpu.json").write_text("{not json")
    with pytest.raises(report.ReportError, match=r"linear_cpu\.json: not valid JSON"):
        report.run(results, docs)
    (results / "linear_cpu.json").write_text(json.dumps({"results": [{"in": 768}]}))
    with pytest.raises(report.ReportError, match=r"linear_cpu\.json: malformed"):
        report.run(results, docs)


def test_bad_markers_fail(tree):
    docs, results = tree
    page = docs / "extra.md"
    page.write_text("<!-- report:no_such_table -->\nx\n<!-- /report -->\n")
    with pytest.raises(report.ReportError, match="unknown report marker 'no_such_table'"):
        report.run(results, docs)
    page.write_text("<!-- report:hwa_step -->\nno closing marker\n")
    with pytest.raises(report.ReportError, match="not closed"):
        report.run(results, docs)


def test_check_mode_reports_without_writing(tree):
    docs, results = tree
    page = docs / "hwa.md"
    fresh = page.read_text()
    stale = re.sub(r"\*\*\d+\.\d\d\*\*", "**0.01**", fresh, count=1)  # one measured ratio
    assert stale != fresh
    page.write_text(stale)
    assert report.main(["--results", str(results), "--docs", str(docs), "--check"]) == 1
    assert page.read_text() == stale


def test_squad_table_shows_compiled_columns_where_measured(tree):
    """``bench_squad_eval.py --compile`` rows add a compiled time and ratio; a config measured
    without it shows dashes there; files without any compiled row keep the four columns."""
    docs, results = tree
    path = results / "squad_eval_cpu.json"
    data = json.loads(path.read_text())
    for row in data["rows"]:  # a file measured without --compile, before per-repeat ratios
        for key in [k for k in row if "compiled" in k or k == "compile_s" or "per_repeat" in k]:
            del row[key]
    path.write_text(json.dumps(data))
    inp = report.Inputs(results, docs)
    assert report.squad_eval(inp).splitlines()[0].count("|") == 5
    data["rows"][-1].update(analog_compiled_s=31.25, ratio_compiled=1.876)
    path.write_text(json.dumps(data))
    lines = report.squad_eval(report.Inputs(results, docs)).splitlines()
    assert lines[0].endswith("| analog compiled | ratio compiled |")
    assert lines[-1].endswith("| 31.2 s | **1.88** |")
    assert lines[2].endswith("| — | — |")


def test_squad_table_shows_each_evaluations_ratios_where_recorded(tree):
    """Files from the batch-by-batch interleave record each evaluation's ratios: a last
    column with their min–max (eager / compiled); a row without them shows a dash; a file
    where no row has them keeps its columns."""
    docs, results = tree
    path = results / "squad_eval_cpu.json"
    data = json.loads(path.read_text())
    for row in data["rows"]:
        for key in [k for k in row if "per_repeat" in k]:
            del row[key]
    path.write_text(json.dumps(data))
    assert "per repeat" not in report.squad_eval(report.Inputs(results, docs))
    data["rows"][-1]["ratio_per_repeat"] = [1.987, 1.912, 2.004]
    path.write_text(json.dumps(data))
    lines = report.squad_eval(report.Inputs(results, docs)).splitlines()
    suffix = " (eager / compiled)" if "ratio_compiled" in data["rows"][-1] else ""
    assert lines[0].endswith(f"per repeat, min–max{suffix} |")
    assert lines[-1].endswith("| 1.91–2.00 |")
    assert lines[2].endswith("| — |")
    data["rows"][-1]["ratio_compiled_per_repeat"] = [1.95, 2.01]
    path.write_text(json.dumps(data))
    lines = report.squad_eval(report.Inputs(results, docs)).splitlines()
    assert lines[-1].endswith("| 1.91–2.00 / 1.95–2.01 |")
    data["rows"][-1]["ratio_per_repeat"] = [1.9, "fast"]
    path.write_text(json.dumps(data))
    with pytest.raises(report.ReportError, match="ratio_per_repeat"):
        report.squad_eval(report.Inputs(results, docs))
    data["rows"][-1]["ratio_per_repeat"] = 1.9
    path.write_text(json.dumps(data))
    with pytest.raises(report.ReportError, match="not a non-empty list"):
        report.squad_eval(report.Inputs(results, docs))


def test_two_hosts_names_each_host_and_marks_missing_rows(tree):
    """The AVX2 comparison labels each column with the host its files record, and a row measured
    on one host only shows a dash on the other."""
    docs, results = tree
    path = results / "eval_forward_cpu_avx2.json"
    data = json.loads(path.read_text())
    data["meta"]["host"] = {"capability": "AVX512", "avx512_bf16": True, "amx": False}
    data["rows"][0]["ratio analog"] = 7.654321
    data["rows"][0]["ratio analog compiled"] = 3.210987
    del data["rows"][1]
    path.write_text(json.dumps(data))
    table = report.two_hosts(report.Inputs(results, docs))
    header = table.splitlines()[0]
    assert "AVX512, native bf16" in header and "AVX2, no native bf16" in header
    rows = {r.split(" | ")[0].lstrip("| "): r for r in table.splitlines()[2:]}
    first = rows[next(k for k in rows if "768x768" in k and "pcm_inference" in k)]
    assert first.rstrip(" |").endswith("7.65")
    second = rows[next(k for k in rows if "768x3072" in k and "pcm_inference" in k)]
    assert second.rstrip(" |").endswith("—")
    compiled = rows[next(k for k in rows if "compiled" in k and "768x768" in k)]
    assert compiled.rstrip(" |").endswith("3.21")
    assert any(k.startswith("HWA training step: mlp, standard_hwa") for k in rows)
    # a row measured on the AVX2 host only (e.g. a compiled SQuAD point) shows a dash first
    main = results / "squad_eval_cpu.json"
    data = json.loads(main.read_text())
    data["rows"][0].pop("ratio_compiled", None)  # the main host measured it eagerly only
    main.write_text(json.dumps(data))
    path = results / "squad_eval_cpu_avx2.json"
    data = json.loads(path.read_text())
    data["rows"][0]["ratio_compiled"] = 1.2345
    path.write_text(json.dumps(data))
    table = report.two_hosts(report.Inputs(results, docs))
    rows = {r.split(" | ")[0].lstrip("| "): r for r in table.splitlines()[2:]}
    label = f"SQuAD point, 500 questions: `{data['rows'][0]['config']}`, compiled"
    cells = rows[label].rstrip(" |").split(" | ")
    avx2 = 1 + [suffix for suffix, _ in report.HOSTS].index("_avx2")
    assert cells[1] == "—" and cells[avx2] == "1.23"
    # a host without a file for a benchmark (the Zen 5 host measured no noise draw) shows a dash
    (results / "squad_eval_cpu_zen5.json").unlink()
    table = report.two_hosts(report.Inputs(results, docs))
    rows = {r.split(" | ")[0].lstrip("| "): r for r in table.splitlines()[2:]}
    zen5 = 1 + [suffix for suffix, _ in report.HOSTS].index("_zen5")
    cells = rows[label].rstrip(" |").split(" | ")
    assert cells[zen5] == "—" and cells[avx2] == "1.23"


def test_targets_count_the_layers_within_each_goal(tree):
    """The at-a-glance table counts, per target and host, the measured ratios within the goal,
    from the same JSON as the detailed tables; a target a host did not measure is a dash."""
    docs, results = tree
    path = results / "eval_forward_cpu_avx2.json"
    data = json.loads(path.read_text())
    pcm = [r for r in data["rows"] if r["config"] == "pcm_inference"]
    for r, ratio in zip(pcm, (1.2, 1.4, 1.5, 1.51, 2.5, 1.0), strict=True):
        r["ratio analog"] = ratio
    path.write_text(json.dumps(data))
    path = results / "squad_eval_cpu_avx2.json"
    data = json.loads(path.read_text())
    row = next(r for r in data["rows"] if r["config"] == "bert_squad:0.0175")
    row["ratio"] = 1.99
    row["ratio_compiled"] = 2.04  # bench_squad_eval.py --compile
    path.write_text(json.dumps(data))
    table = report.targets(report.Inputs(results, docs))
    rows = {
        r.split(" | ")[0].lstrip("| "): r.rstrip(" |").split(" | ") for r in table.splitlines()[2:]
    }
    assert rows["eval forward, `pcm_inference`, eager"][1] == "≤ 1.5"
    avx2 = 2 + [suffix for suffix, _ in report.HOSTS].index("_avx2")  # after target, goal
    assert len(rows["eval forward, `pcm_inference`, eager"]) == 2 + len(report.HOSTS)
    assert rows["eval forward, `pcm_inference`, eager"][avx2] == "1.00–2.50 (4 of 6 within)"
    squad = rows["SQuAD point, 500 questions, `bert_squad:0.0175`, eager"]
    assert squad[avx2] == "1.99 (**met**)"
    squad_compiled = rows["SQuAD point, 500 questions, `bert_squad:0.0175`, compiled"]
    assert squad_compiled[avx2] == "2.04 (not met)"
    if "ratio_compiled" not in json.dumps(
        json.loads((results / "squad_eval_cpu.json").read_text())
    ):
        assert squad_compiled[2] == "—"  # the main host's file has no compiled rows
    assert rows["eval forward, `bert_squad:0.0175+w_noise_bf16`, eager"][avx2] == "—"
    assert report._verdict([1.0, 1.5], 1.5) == "1.00–1.50 (**2 of 2** within)"
    assert report._verdict([1.33, 1.33], 1.5) == "1.33 (**2 of 2** within)"
    assert report._verdict([2.01], 2.0) == "2.01 (not met)"
