"""The harness of ``scripts/fault_battery.py``: runs the aimc CLI of a source tree with faults
injected from outside the library, and reads what a run left behind independently of the aimc
version that wrote it."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

TIMINGS = {"eval_s", "wall_s", "step_s"}

# `python -c WRAPPER <faults as JSON> <aimc arguments>`: aimc's CLI with a fault injected at a
# chosen call (works on any aimc version: it patches the standard library and torch)
WRAPPER = r"""
import errno, json, os, signal, sys, time
from pathlib import Path
cfg = json.loads(sys.argv.pop(1))
def die():
    os.kill(os.getpid(), signal.SIGKILL)
def name(fd):
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""
def enospc():
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
if "write" in cfg:  # the (after+1)-th write to a file: half of it, then kill / ENOSPC / slow
    w, real_write, n = cfg["write"], os.write, [0]
    def write(fd, data):
        if not name(fd).endswith(w["file"]):
            return real_write(fd, data)
        n[0] += 1
        if w["mode"] == "slow":
            done = real_write(fd, data)
            time.sleep(w["seconds"])
            return done
        if n[0] <= w["after"]:
            return real_write(fd, data)
        if n[0] == w["after"] + 1 and len(data) > 1:
            done = real_write(fd, bytes(data)[: len(data) // 2])
            if w["mode"] == "kill":
                die()
            return done
        raise enospc()
    os.write = write
if "save" in cfg:  # the nth torch.save: a partial file, then kill / ENOSPC
    import torch
    s, real_save, m = cfg["save"], torch.save, [0]
    def save(obj, f, *a, **k):
        m[0] += 1
        if m[0] != s["nth"]:
            return real_save(obj, f, *a, **k)
        Path(f).write_bytes(b"PK\x03\x04 partial")
        if s["mode"] == "kill":
            die()
        raise enospc()
    torch.save = save
if "replace" in cfg:  # kill just before the nth rename of a "<prefix>*.tmp"
    r, real_replace, c = cfg["replace"], os.replace, [0]
    def replace(src, dst, *a, **k):
        p = Path(src).name
        if p.startswith(r["prefix"]) and p.endswith(".tmp"):
            c[0] += 1
            if c[0] == r["nth"]:
                die()
        return real_replace(src, dst, *a, **k)
    os.replace = replace
from aimc.cli import main
sys.exit(main(sys.argv[1:]))
"""


# --------------------------------------------------------------------------------------------
# running the CLI of one aimc tree


class Tree:
    """Runs the aimc CLI of one source tree (``code``) in work directory ``work``."""

    def __init__(self, code: Path, work: Path, assets: dict[str, Path]) -> None:
        self.code, self.work, self.assets = code, work, assets
        self.refs: dict[str, Path] = {}
        work.mkdir(parents=True, exist_ok=True)

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ, PYTHONPATH=str(self.code), HF_HUB_OFFLINE="1")
        return env | {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"} | extra

    def start(self, args: list[str], faults: dict | None = None, limit: int | None = None, **env):
        """Start ``aimc <args>`` (through the fault wrapper with ``faults``; under
        ``RLIMIT_FSIZE = limit``); stdout and stderr go to files beside ``--out``."""
        out = Path(args[args.index("--out") + 1])
        log = out.with_name(out.name + f".{int(time.time() * 1e6)}.log")
        cmd = [sys.executable, "-c", WRAPPER, json.dumps(faults or {}), *args, "--threads", "1"]

        def pre() -> None:
            if limit is not None:
                resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

        f = open(log, "w")  # noqa: SIM115 - closed by finish()
        proc = subprocess.Popen(
            cmd, cwd=self.code, env=self.env(**env), stdout=f, stderr=f, preexec_fn=pre
        )
        proc.log, proc.log_file = log, f
        return proc

    def run(self, args: list[str], faults=None, limit=None, timeout: float = 600, **env):
        return finish(self.start(args, faults, limit, **env), timeout)


def finish(proc, timeout: float = 600):
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    proc.log_file.close()
    proc.text = proc.log.read_text()
    return proc


def said(proc) -> str:
    """How a run ended, in a few words: exit status and its last message."""
    if proc.returncode == -signal.SIGKILL:
        return "killed"
    lines = [ln for ln in proc.text.strip().splitlines() if ln.strip()]
    last = lines[-1][:600] if lines else ""
    if "Traceback (most recent call last)" in proc.text:
        return f"exit {proc.returncode}, traceback: {last}"
    return f"exit {proc.returncode}" + (f": {last}" if proc.returncode else "")


def kill_when(proc, ready: Callable[[], bool], timeout: float = 300) -> bool:
    """SIGKILL ``proc`` as soon as ``ready()``; ``False`` if it ended first."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.003)
    os.kill(proc.pid, signal.SIGKILL)
    finish(proc)
    return True


# --------------------------------------------------------------------------------------------
# reading what a run left (independently of the aimc version that wrote it)


def lines_of(path: Path) -> tuple[list[dict], int]:
    """(parsed rows, number of unparsable lines) of a JSON-lines file."""
    rows, bad = [], 0
    for line in path.read_bytes().splitlines() if path.exists() else []:
        try:
            rows.append(json.loads(line))
        except ValueError:
            bad += 1
    return rows, bad


def strip(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMINGS} for r in rows]


def sweep_state(out: Path) -> dict[str, Any]:
    """Result rows (the first of each unit, timings dropped, by key), duplicates, unparsable
    lines and the summary table of a sweep directory."""
    rows, bad = lines_of(out / "results.jsonl")
    keys = [r.get("key") for r in rows]
    first: dict[str, dict] = {}
    for r in strip(rows):
        first.setdefault(r.get("key"), r)
    summary = out / "summary.md"
    table = None
    if summary.exists():
        table = [ln for ln in summary.read_text().splitlines() if ln.startswith("|")]
    return {"rows": first, "dups": len(keys) - len(set(keys)), "bad": bad, "table": table}


def compare_sweep(out: Path, ref: Path) -> tuple[str, bool]:
    got, want = sweep_state(out), sweep_state(ref)
    notes = []
    if got["dups"]:
        notes.append(f"{got['dups']} duplicate rows")
    if got["bad"]:
        notes.append(f"{got['bad']} torn/bad lines left in results.jsonl")
    same = got["rows"] == want["rows"] and got["table"] == want["table"]
    text = ("identical table" if same else "DIFFERENT table") + "".join(f"; {n}" for n in notes)
    return text, same and not notes


def finetune_state(out: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    model = out / "model"
    weights = load_file(str(model / "model.safetensors")) if model.exists() else {}
    rows, bad = lines_of(out / "train_log.jsonl")
    meta = json.loads((model / "aimc_finetune.json").read_text()) if model.exists() else None
    return {"weights": weights, "log": strip(rows), "bad": bad, "meta": meta}


def compare_finetune(out: Path, ref: Path) -> tuple[str, bool]:
    got, want = finetune_state(out), finetune_state(ref)
    w = (
        got["weights"].keys() == want["weights"].keys()
        and bool(got["weights"])
        and all(got["weights"][k].equal(want["weights"][k]) for k in want["weights"])
    )
    text = "identical weights" if w else "DIFFERENT or missing weights"
    steps = [r["step"] for r in got["log"]]
    log_ok = got["log"] == want["log"]
    if not log_ok:
        dups = len(steps) - len(set(steps))
        text += f"; train_log {'has ' + str(dups) + ' duplicate steps' if dups else 'differs'}"
    leftovers = [p.name for p in (out / "checkpoints").glob("*.tmp")] if w else []
    leftovers += [p.name for p in out.glob("*.tmp")]
    if leftovers:
        text += f"; left behind: {', '.join(sorted(leftovers))}"
    return text, w and log_ok and got["meta"] == want["meta"] and not leftovers


def count(path: Path) -> int:
    """Number of complete lines in ``path`` (0 if it does not exist)."""
    return path.read_bytes().count(b"\n") if path.exists() else 0
