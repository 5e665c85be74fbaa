"""One process (or torchrun job) per run directory (aimc.experiments.rundir).

A second process on the same ``--out`` fails at once naming the holder; the lock of a killed
process is taken over; every rank of a torchrun job fails with rank 0's message; the lock is
released when a run ends, normally or by an exception.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import ROOT, tiny_squad_assets, write_tiny_idx

from aimc.experiments import rundir
from aimc.experiments.rundir import LOCK_NAME, RunDirBusy, acquire_lock, open_run_dir
from aimc.experiments.safeio import RunDirError
from aimc.experiments.sweep import read_results

HOLDER = """
import sys, time
from pathlib import Path
from aimc.experiments.rundir import acquire_lock
lock = acquire_lock(Path(sys.argv[1]))
print("locked", flush=True)
time.sleep(600)
"""

# squad-drift, slowed down after each result row so that a second process meets it running
SLOW_SWEEP = """
import sys, time
import aimc.experiments.sweep as sweep
_append = sweep.append_row
def _slow(path, row):
    _append(path, row)
    time.sleep(1.0)
sweep.append_row = _slow
from aimc.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    return env | extra


def _start_holder(out: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(out)],
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "locked"
    return proc


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=30)


@pytest.fixture
def holder(tmp_path):
    """A process that holds the lock of ``tmp_path / "run"``."""
    proc = _start_holder(tmp_path / "run")
    yield proc
    _stop(proc)


def _busy_message(out: Path, pid: int) -> str:
    return f"--out: {out} is in use by pid {pid} on host {socket.gethostname()} since "


# -- the lock itself ---------------------------------------------------------------------------


def test_second_lock_names_the_holder_and_release_frees_it(tmp_path):
    out = tmp_path / "run"
    lock = acquire_lock(out)
    info = json.loads((out / LOCK_NAME).read_text())
    assert info["pid"] == os.getpid() and info["host"] == socket.gethostname()
    assert {"started", "command", "aimc_version"} <= set(info)
    with pytest.raises(RunDirBusy) as exc:  # flock locks per open file: the same process counts
        acquire_lock(out)
    msg = str(exc.value)
    assert msg.startswith(_busy_message(out, os.getpid()))
    assert f"since {info['started']} (command: {info['command']})" in msg
    lock.release()
    lock.release()  # idempotent
    assert not (out / LOCK_NAME).exists()
    with acquire_lock(out) as again:
        assert again.held
    assert not (out / LOCK_NAME).exists()


def test_lock_of_a_killed_process_is_taken_over(tmp_path, capsys):
    out = tmp_path / "run"
    proc = _start_holder(out)
    try:
        with pytest.raises(RunDirBusy, match=f"in use by pid {proc.pid} "):
            acquire_lock(out)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        assert json.loads((out / LOCK_NAME).read_text())["pid"] == proc.pid  # left behind
        with acquire_lock(out) as lock:
            assert lock.held
            assert json.loads((out / LOCK_NAME).read_text())["pid"] == os.getpid()
        err = capsys.readouterr().err
        assert f"taking over the lock of {out} left by pid {proc.pid}" in err
    finally:
        _stop(proc)


def test_file_system_without_flock_warns_and_goes_on(tmp_path, monkeypatch, capsys):
    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(rundir.fcntl, "flock", no_flock)
    lock = acquire_lock(tmp_path / "run")
    assert not lock.held
    assert "cannot lock" in capsys.readouterr().err
    lock.release()


def test_out_that_is_a_file_is_a_clear_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunDirError, match="--out: cannot create .*file"):
        acquire_lock(tmp_path / "file")


def test_lock_is_released_when_the_run_fails(tmp_path):
    out = tmp_path / "run"
    with open_run_dir(out, {"a": 1}, resume=False):
        assert (out / LOCK_NAME).exists()
    with pytest.raises(RunDirError, match="already holds a run"):  # refused: lock given back
        open_run_dir(out, {"a": 1}, resume=False)
    assert not (out / LOCK_NAME).exists()
    with pytest.raises(KeyError), open_run_dir(out, {"a": 1}, resume=True):
        raise KeyError("a failure in the middle of the run")
    assert not (out / LOCK_NAME).exists()


# -- every command -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_assets(tmp_path_factory):
    return tiny_squad_assets(tmp_path_factory.mktemp("lock_assets"))


def _squad_drift(hf_assets, out: Path, resume: bool = False):
    from aimc.experiments.squad_drift import SweepSpec, run

    spec = SweepSpec(
        model=str(hf_assets["model"]),
        data=str(hf_assets["data"]),
        configs=["digital"],
        max_questions=2,
    )
    return run(spec, out, resume=resume, progress=False)


def _finetune(hf_assets, out: Path, resume: bool = False):
    from aimc.experiments.finetune_squad import FinetuneSpec, run

    spec = FinetuneSpec(
        model=str(hf_assets["model"]),
        train=str(hf_assets["data"]),
        max_length=128,
        stride=32,
        max_steps=1,
        batch_size=2,
    )
    return run(spec, out, resume=resume, progress=False)


def _train_vision(tmp_path, out: Path, resume: bool = False, **kw):
    from aimc.experiments.train_vision import VisionSpec, run

    spec = VisionSpec(
        data=str(write_tiny_idx(tmp_path / "idx")),
        epochs=1,
        batch_size=8,
        configs=["digital"],
        times=[0.0],
        chips=1,
    )
    return run(replace(spec, **kw), out, resume=resume, progress=False)


@pytest.mark.parametrize("peek", [True, False], ids=["peek", "lock"])
@pytest.mark.parametrize("command", ["squad-drift", "finetune-squad", "train-vision"])
def test_every_command_refuses_a_busy_out(command, peek, holder, tmp_path, request, monkeypatch):
    """``peek``: the check before loading anything fails (the model and data paths are bogus, so
    loading them would fail otherwise); ``lock``: without it, taking the lock fails."""
    out = tmp_path / "run"
    if not peek:
        monkeypatch.setattr(rundir, "_peek", lambda out: None)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.raises(RunDirBusy) as exc:
            if command == "train-vision":
                _train_vision(tmp_path, out, resume=True)
            else:
                hf = request.getfixturevalue("hf_assets")
                if peek:
                    hf = hf | {"model": tmp_path / "no-model", "data": tmp_path / "no-data"}
                (_squad_drift if command == "squad-drift" else _finetune)(hf, out, resume=True)
    finally:
        torch.set_num_threads(threads)
    assert str(exc.value).startswith(_busy_message(out, holder.pid))
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]  # nothing was written


def test_busy_check_writes_nothing(tmp_path):
    rundir.fail_if_busy(tmp_path / "new")
    assert not (tmp_path / "new").exists()
    with acquire_lock(tmp_path / "run") as lock:
        with pytest.raises(RunDirBusy, match=f"in use by pid {os.getpid()} "):
            rundir.fail_if_busy(tmp_path / "run")
        assert lock.held
    rundir.fail_if_busy(tmp_path / "run")


def _complete_lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def test_second_squad_drift_process_fails_at_once(hf_assets, tmp_path):
    """The issue: a second squad-drift on the same --out (with --resume) ran every unit again."""
    out = tmp_path / "run"
    args = [
        *("squad-drift", "--model", str(hf_assets["model"]), "--data", str(hf_assets["data"])),
        *("--out", str(out), "--configs", "digital,ideal", "--times", "0,60", "--chips", "1"),
        *("--max-questions", "2", "--no-progress", "--threads", "1"),
    ]
    log = open(tmp_path / "first.log", "w")  # noqa: SIM115 - closed below
    first = subprocess.Popen(
        [sys.executable, "-c", SLOW_SWEEP, *args], cwd=ROOT, env=_env(), stdout=log, stderr=log
    )
    try:
        deadline = time.monotonic() + 120
        while _complete_lines(out / "results.jsonl") < 1:
            assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        t0 = time.monotonic()
        second = subprocess.run(
            [sys.executable, "-m", "aimc", *args, "--resume"],
            cwd=ROOT,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        second_s = time.monotonic() - t0
        assert first.poll() is None, "the first process ended before the second one checked"
        assert second.returncode == 2, second.stderr[-3000:]
        err = second.stderr.strip().splitlines()[-1]
        assert err.startswith("aimc squad-drift: error: " + _busy_message(out, first.pid))
        assert "squad-drift --model" in err  # the holder's command line
        assert "Traceback" not in second.stderr
        assert first.wait(timeout=120) == 0, (tmp_path / "first.log").read_text()[-3000:]
    finally:
        _stop(first)
        log.close()
    keys = [r["key"] for r in read_results(out)]
    assert len(keys) == len(set(keys)) == 3  # digital + ideal x 2 times, each once
    assert not (out / LOCK_NAME).exists()
    assert second_s < 60


# -- torchrun ----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_ranks_all_fail_with_rank0_message(holder, tmp_path):
    out = tmp_path / "run"
    data = write_tiny_idx(tmp_path / "idx")
    args = [
        *("train-vision", "--data", str(data), "--out", str(out), "--epochs", "1"),
        *("--configs", "digital", "--times", "0", "--chips", "1", "--no-progress"),
        *("--threads", "1", "--resume"),
    ]
    port = str(_free_port())
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "aimc", *args],
            cwd=ROOT,
            env=_env(
                RANK=str(rank),
                LOCAL_RANK=str(rank),
                WORLD_SIZE="2",
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=port,
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(2)
    ]
    try:
        results = [p.communicate(timeout=120) for p in procs]  # a hang at a barrier times out
    finally:
        for p in procs:
            _stop(p)
    lines = [err.strip().splitlines()[-1] for _, err in results]
    assert [p.returncode for p in procs] == [2, 2], results
    assert lines[0] == lines[1], lines
    assert lines[0].startswith("aimc train-vision: error: " + _busy_message(out, holder.pid))
