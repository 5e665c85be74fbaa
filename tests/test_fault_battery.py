"""Faults a run directory must survive (aimc.experiments.safeio, .rundir, .checkpoints): a full
disk while appending rows or writing checkpoints, damaged or truncated files, a run made by
another aimc version. The long part of the battery (kill -9 at many moments of real runs) is
``scripts/fault_battery.py``.

Every error names the file and says what to do; a failed write never tears a row or destroys the
previous checkpoint, and ``--resume`` then ends with the numbers of an uninterrupted run.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import ROOT, tiny_squad_assets, write_tiny_idx

import aimc
from aimc.cli import main as cli_main
from aimc.experiments.rundir import LOCK_NAME, prepare_run_dir
from aimc.experiments.safeio import RunDirError, RunWriteError, append_row, read_rows

ENOSPC = os.strerror(errno.ENOSPC)
TIMINGS = ("eval_s", "wall_s", "step_s")


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test of this module on one thread (see conftest.one_thread)."""


def _rows_file(tmp_path: Path, n: int) -> Path:
    path = tmp_path / "results.jsonl"
    for i in range(n):
        append_row(path, {"key": f"u{i}", "value": i})
    return path


def _fail_writes_to(monkeypatch, name: str, after: int = 0, partial: bool = True) -> None:
    """``os.write`` to a file called ``name`` fails with ENOSPC from its ``after``-th call on
    (0: the first), after writing half of the data (a short write, as on a filling disk)."""
    real, calls = os.write, {"n": 0}

    def write(fd, data):
        if not os.readlink(f"/proc/self/fd/{fd}").endswith(name):
            return real(fd, data)
        calls["n"] += 1
        if calls["n"] <= after:
            return real(fd, data)
        if partial and calls["n"] == after + 1 and len(data) > 1:
            return real(fd, bytes(data)[: len(data) // 2])
        raise OSError(errno.ENOSPC, ENOSPC)

    monkeypatch.setattr(os, "write", write)


def _strip(rows: list[dict], fields=TIMINGS) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in fields} for r in rows]


# -- appending rows ----------------------------------------------------------------------------


def test_full_disk_while_appending_leaves_whole_rows(tmp_path, monkeypatch):
    path = _rows_file(tmp_path, 2)
    before = path.read_bytes()
    _fail_writes_to(monkeypatch, "results.jsonl")
    with pytest.raises(RunWriteError) as exc:
        append_row(path, {"key": "u2", "value": 2})
    assert str(exc.value) == (
        f"could not append to {path}: {ENOSPC}; the file is unchanged (2 rows); "
        "free space and rerun with --resume"
    )
    assert path.read_bytes() == before  # the half-written row was cut off
    monkeypatch.undo()
    append_row(path, {"key": "u2", "value": 2})
    assert [r["key"] for r in read_rows(path)] == ["u0", "u1", "u2"]


def test_file_size_limit_while_appending(tmp_path):
    """RLIMIT_FSIZE in a child: the write past the limit is short, the next one fails (EFBIG;
    Python ignores SIGXFSZ)."""
    path = _rows_file(tmp_path, 3)
    size = path.stat().st_size
    code = (
        "import sys; from pathlib import Path\n"
        "from aimc.experiments.safeio import append_row\n"
        "append_row(Path(sys.argv[1]), {'key': 'u3', 'pad': 'x' * 500})\n"
    )

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (size + 100, size + 100))

    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-c", code, str(path)],
        env=env,
        capture_output=True,
        text=True,
        preexec_fn=limit,
        timeout=120,
    )
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert f"could not append to {path}: File too large; files are limited to {size + 100} " in last
    assert "; the file is unchanged (3 rows); free space and rerun with --resume" in last
    assert path.stat().st_size == size


def test_torn_and_damaged_lines(tmp_path):
    path = _rows_file(tmp_path, 3)
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines) + b'{"key": "u3", "val')  # killed mid-write
    assert [r["key"] for r in read_rows(path, ("key",))] == ["u0", "u1", "u2"]
    append_row(path, {"key": "u3"})  # cuts the torn line off first
    assert [r["key"] for r in read_rows(path, ("key",))] == ["u0", "u1", "u2", "u3"]
    assert path.read_bytes().count(b"\n") == 4

    path.write_bytes(b"".join(lines) + b'{"key": "u3"}')  # whole, but without its newline
    append_row(path, {"key": "u4"})
    assert [r["key"] for r in read_rows(path)] == ["u0", "u1", "u2", "u3", "u4"]

    for bad, what in ((b'{"key": "u1", "va\n', "not valid JSON"), (b"[1, 2]\n", "JSON object")):
        path.write_bytes(lines[0] + bad + lines[2])
        with pytest.raises(RunDirError, match=f"{path}, line 2: .*{what}.*delete that line"):
            read_rows(path, ("key",))
    path.write_bytes(lines[0] + b'{"value": 1}\n')
    with pytest.raises(RunDirError, match=f"{path}, line 2: no 'key'"):
        read_rows(path, ("key",))


# -- run_config.json and versions --------------------------------------------------------------


@pytest.mark.parametrize(
    "text, what",
    [
        ('{"determines_numbers": {"seed": 0', "not valid JSON"),
        ("[1, 2]", "expected a JSON object, got list"),
        ('{"spec": {}}', "no 'determines_numbers' object"),
        ('{"determines_numbers": 3}', "no 'determines_numbers' object"),
    ],
)
def test_damaged_run_config_is_a_clear_error(tmp_path, text, what):
    out = tmp_path / "run"
    out.mkdir()
    (out / "run_config.json").write_text(text)
    with pytest.raises(RunDirError) as exc:
        prepare_run_dir(out, {"seed": 0}, resume=True)
    msg = str(exc.value)
    assert msg.startswith(f"{out / 'run_config.json'}: {what}") and "start a new --out" in msg
    assert (out / "run_config.json").read_text() == text  # left as it was


def test_damaged_files_through_the_cli_exit_2_without_traceback(tmp_path, capsys):
    data = write_tiny_idx(tmp_path / "idx")
    out = tmp_path / "run"
    args = [
        *("train-vision", "--data", str(data), "--out", str(out), "--epochs", "1"),
        *("--configs", "digital", "--times", "0", "--chips", "1", "--no-progress"),
    ]
    assert cli_main(args) == 0
    capsys.readouterr()
    results = out / "results.jsonl"
    good = results.read_bytes()
    results.write_bytes(b"garbage\n" + good)
    with pytest.raises(SystemExit) as exc:
        cli_main([*args, "--resume"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"{results}, line 1: not valid JSON" in err and "Traceback" not in err
    results.write_bytes(good)
    (out / "run_config.json").write_text("{")
    with pytest.raises(SystemExit):
        cli_main([*args, "--resume"])
    assert f"{out / 'run_config.json'}: not valid JSON" in capsys.readouterr().err
    assert not (out / LOCK_NAME).exists()


def _old_run(tmp_path: Path, determines: dict, version: str | None) -> Path:
    out = tmp_path / "run"
    out.mkdir(exist_ok=True)
    meta = {"determines_numbers": determines} | ({"aimc_version": version} if version else {})
    (out / "run_config.json").write_text(json.dumps(meta))
    return out


@pytest.mark.parametrize("version", ["0.0.1", None])
def test_resume_across_versions_with_the_same_settings_warns(tmp_path, capsys, version):
    out = _old_run(tmp_path, {"seed": 0, "times": [0.0]}, version)
    prepare_run_dir(out, {"seed": 0, "times": (0.0,)}, resume=True)
    assert "warning: resuming the run" in capsys.readouterr().err
    meta = json.loads((out / "run_config.json").read_text())
    assert meta["aimc_version"] == aimc.__version__
    assert meta["aimc_versions"] == [version or "unrecorded", aimc.__version__]


def test_resume_across_versions_with_other_settings_is_refused(tmp_path):
    out = _old_run(tmp_path, {"seed": 0}, "0.0.1")
    with pytest.raises(RunDirError) as exc:
        prepare_run_dir(out, {"seed": 0, "new_knob": 1}, resume=True)
    msg = str(exc.value)
    assert f"made with aimc 0.0.1; this is aimc {aimc.__version__}" in msg
    assert "new_knob (only here)" in msg and "finish it with aimc 0.0.1" in msg
    with pytest.raises(RunDirError, match=r"different seed \(0 != 1\) \(and with aimc 0.0.1"):
        prepare_run_dir(out, {"seed": 1}, resume=True)
    # the same version: a field the old run did not record is not a reason to refuse
    out = _old_run(tmp_path, {"seed": 0}, aimc.__version__)
    prepare_run_dir(out, {"seed": 0, "new_knob": 1}, resume=True)


def test_resume_names_the_field_of_a_resolved_config_that_changed(tmp_path):
    """A preset whose definition changed (same name, other numbers) is refused, naming the one
    field that differs, not two whole configs."""
    old = {"configs_resolved": {"ideal": {"device": {"drift_compensation": "global", "g": 25}}}}
    out = _old_run(tmp_path, old, aimc.__version__)
    new = {"configs_resolved": {"ideal": {"device": {"drift_compensation": "none", "g": 25}}}}
    with pytest.raises(RunDirError) as exc:
        prepare_run_dir(out, new, resume=True)
    assert str(exc.value) == (
        f"--resume: the run in {out} was made with different "
        "configs_resolved.ideal.device.drift_compensation ('global' != 'none')"
    )


# -- train-vision checkpoints ------------------------------------------------------------------


def _vision(tmp_path: Path, out: Path, resume: bool = False, **kw):
    from aimc.experiments.train_vision import VisionSpec, run

    spec = VisionSpec(
        data=str(write_tiny_idx(tmp_path / "idx")),
        epochs=3,
        batch_size=8,
        configs=["digital", "pcm_inference"],
        times=[0.0],
        chips=1,
    )
    return run(replace(spec, **kw), out, resume=resume, progress=False)


def _fail_torch_save(monkeypatch, on_call: int) -> None:
    """``torch.save`` writes part of the file and fails with ENOSPC on its ``on_call``-th call."""
    real, calls = torch.save, {"n": 0}

    def save(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == on_call:
            Path(f).write_bytes(b"PK\x03\x04 partial")
            raise OSError(errno.ENOSPC, ENOSPC)
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)


def test_vision_full_disk_at_a_checkpoint_then_resume(tmp_path, monkeypatch):
    ref = _vision(tmp_path, tmp_path / "ref")
    out = tmp_path / "cut"
    _fail_torch_save(monkeypatch, on_call=2)  # the checkpoint of epoch 1
    with pytest.raises(RunWriteError) as exc:
        _vision(tmp_path, out)
    ckpt = out / "checkpoint.pt"
    assert str(exc.value).startswith(
        f"could not write {ckpt}: {ENOSPC}; the previous checkpoint is intact; free space"
    )
    assert torch.load(ckpt, weights_only=False)["epoch"] == 0
    assert not list(out.glob("*.tmp")) and not (out / LOCK_NAME).exists()
    monkeypatch.undo()
    rows = _vision(tmp_path, out, resume=True)
    assert _strip(rows) == _strip(ref)
    a, b = torch.load(tmp_path / "ref" / "model.pt"), torch.load(out / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    log = [{k: r[k] for k in ("epoch", "train_loss")} for r in read_rows(out / "train_log.jsonl")]
    ref_log = read_rows(tmp_path / "ref" / "train_log.jsonl")
    assert log == [{k: r[k] for k in ("epoch", "train_loss")} for r in ref_log]


@pytest.mark.parametrize("damage", ["truncated", "garbage", "foreign"])
def test_vision_damaged_checkpoint_is_a_clear_error(tmp_path, damage):
    out = tmp_path / "run"
    _vision(tmp_path, out, epochs=1)
    ckpt = out / "checkpoint.pt"
    if damage == "truncated":
        ckpt.write_bytes(ckpt.read_bytes()[:1000])
    elif damage == "garbage":
        ckpt.write_bytes(b"\x00" * 64)
    else:
        torch.save({"weights": torch.zeros(3)}, ckpt)
    with pytest.raises(RunDirError) as exc:
        _vision(tmp_path, out, resume=True, epochs=1)
    msg = str(exc.value)
    want = "not an aimc checkpoint" if damage == "foreign" else "not a readable checkpoint"
    assert msg.startswith(f"{ckpt}: {want}") and "start a new --out" in msg
    assert isinstance(exc.value.__cause__, Exception) or damage == "foreign"


# -- finetune-squad checkpoints ----------------------------------------------------------------


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    return tiny_squad_assets(tmp_path_factory.mktemp("fault_hf"), n_questions=12)


def _finetune(hf, out: Path, resume: bool = False, **kw):
    from aimc.experiments.finetune_squad import FinetuneSpec, run

    spec = FinetuneSpec(
        model=str(hf["model"]),
        train=str(hf["data"]),
        max_length=128,
        stride=32,
        max_steps=4,
        batch_size=4,
        lr=1e-3,
        seed=3,
    )
    return run(replace(spec, **kw), out, resume=resume, save_every=1, keep=2, progress=False)


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


def test_finetune_full_disk_at_a_checkpoint_keeps_the_previous_one(hf, tmp_path, monkeypatch):
    ref = _finetune(hf, tmp_path / "ref")
    out = tmp_path / "cut"
    _fail_torch_save(monkeypatch, on_call=3)  # training_state.pt of step index 2
    with pytest.raises(RunWriteError) as exc:
        _finetune(hf, out)
    prev = out / "checkpoints" / "step-0000001"
    assert str(exc.value).startswith(
        f"could not write {out / 'checkpoints' / 'step-0000002'}: {ENOSPC}; "
        f"the previous checkpoint {prev} is intact; free space and rerun with --resume"
    )
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "step-0000000",
        "step-0000001",
    ]
    monkeypatch.undo()
    _finetune(hf, out, resume=True)
    a, b = _weights(ref), _weights(out / "model")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log = _strip(read_rows(out / "train_log.jsonl"))
    assert log == _strip(read_rows(ref.parent / "train_log.jsonl"))  # each step logged once


def test_finetune_damaged_training_state_is_a_clear_error(hf, tmp_path):
    out = tmp_path / "run"
    _finetune(hf, out, max_steps=2)
    state = out / "checkpoints" / "step-0000001" / "training_state.pt"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    with pytest.raises(RunDirError) as exc:
        _finetune(hf, out, resume=True, max_steps=2)
    msg = str(exc.value)
    assert msg.startswith(f"{state}: not a readable checkpoint (")
    assert f"delete {state.parent} to resume from the checkpoint before it" in msg


def test_damaged_safetensors_model_is_a_clear_error(hf, tmp_path):
    from aimc.experiments.squad_drift import load_qa_model

    model = tmp_path / "model"
    model.mkdir()
    for f in hf["model"].iterdir():
        (model / f.name).write_bytes(f.read_bytes())
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    with pytest.raises(ValueError) as exc:
        load_qa_model(str(model), torch.device("cpu"))
    msg = str(exc.value)
    assert msg.startswith(f"--model: cannot load the weights in {weights} (")
    assert "damaged or incomplete" in msg


# -- squad-drift: a full disk in the middle of a sweep -----------------------------------------


def test_sweep_full_disk_then_resume_gives_the_same_table(hf, tmp_path, monkeypatch):
    from aimc.experiments.squad_drift import SweepSpec, run

    spec = SweepSpec(
        model=str(hf["model"]),
        data=str(hf["data"]),
        configs=["digital", "bert_squad:0.035"],
        times=[0.0, 3600.0],
        chips=2,
        max_questions=4,
    )
    ref = run(spec, tmp_path / "ref", progress=False)
    out = tmp_path / "cut"
    _fail_writes_to(monkeypatch, "results.jsonl", after=2)
    with pytest.raises(RunWriteError, match=r"the file is unchanged \(2 rows\)"):
        run(spec, out, progress=False)
    assert len(read_rows(out / "results.jsonl")) == 2 and not (out / LOCK_NAME).exists()
    monkeypatch.undo()
    rows = run(spec, out, resume=True, progress=False)
    assert _strip(rows) == _strip(ref)
    assert (out / "summary.md").read_text().split("\n\n")[0] == (
        (tmp_path / "ref" / "summary.md").read_text().split("\n\n")[0]
    )


# -- the long battery (scripts/fault_battery.py) -----------------------------------------------


@pytest.mark.slow
def test_fault_battery_script_kill_cases(tmp_path):
    """kill -9 at several moments of real squad-drift / finetune-squad / train-vision runs, then
    --resume: every case ends with the numbers of an uninterrupted run (~2 min on 2 cores)."""
    report = tmp_path / "battery.json"
    cmd = [sys.executable, str(ROOT / "scripts" / "fault_battery.py"), "--only", "kill -9"]
    cmd += ["--work", str(tmp_path / "work"), "--json", str(report)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    cases = json.loads(report.read_text())["cases"]
    assert len(cases) >= 15 and all(c["now"]["ok"] for c in cases)
