"""Run directories: one process (or one ``torchrun`` job) per ``--out``.

**The lock.** :func:`open_run_dir` takes ``<out>/.aimc.lock`` with
``fcntl.flock(LOCK_EX | LOCK_NB)`` for the whole run and writes its holder into it as JSON (pid,
host, start time, command line, aimc version). A second process on the same ``--out`` fails at
once (:func:`fail_if_busy` checks before any data or model is loaded) with :class:`RunDirBusy`:
``--out: <out> is in use by pid N on host H since <time> (command: ...)``. The kernel releases a
``flock`` when its holder dies, ``kill -9`` included, so a lock that can be taken is stale by
definition: it is taken over (with a note naming the dead holder). A run that ends, normally or
by an exception, deletes the lock file. Under ``torchrun`` rank 0 takes the lock for the job and
broadcasts the outcome, so that every rank fails with the same message instead of waiting at a
barrier.

File systems: on a local disk the lock is exact. Linux NFS clients (v4, or v3 with ``lockd``)
emulate ``flock`` with byte-range locks that hold across clients; a lock of a client that crashed
(not just a killed process) is freed only when the server's lease expires (about 90 s), and until
then the run reads as busy. Lustre needs the ``flock`` mount option (``localflock`` locks per
node only). Where ``flock`` is not supported at all (some FUSE, SMB or ``noflock`` mounts) the run
goes on without a lock, after a warning. A process forked (not exec'd) from the holder inherits
the lock and keeps it while it lives.

**Resume policy**: :mod:`aimc.experiments.runconfig`.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import shlex
import socket
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import torch

from .runconfig import make_dir, prepare_run_dir
from .safeio import RunDirError, reason

LOCK_NAME = ".aimc.lock"


class RunDirBusy(RunDirError):
    """Another live process holds the run directory's lock."""


# --------------------------------------------------------------------------------------------
# ranks


def dist_info() -> tuple[int, int]:
    """``(rank, world size)`` from the ``torchrun`` environment (``(0, 1)`` outside it)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    return rank, world


def barrier(world: int) -> None:
    """Wait for every rank (nothing to do in a single process)."""
    import torch

    if world > 1 and torch.distributed.is_initialized():
        torch.distributed.barrier()


def broadcast(value: Any, world: int) -> Any:
    """Rank 0's ``value`` on every rank (a picklable object)."""
    import torch

    if world == 1 or not torch.distributed.is_initialized():
        return value
    device = None
    if torch.distributed.get_backend() == "nccl":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0, device=device)
    return box[0]


# --------------------------------------------------------------------------------------------
# the lock


def _command() -> str:
    argv = list(sys.argv)
    if argv and Path(argv[0]).name == "__main__.py" and Path(argv[0]).parent.name == "aimc":
        argv[0:1] = ["python", "-m", "aimc"]
    elif argv and argv[0] == "-c":
        argv[0:1] = ["python", "-c", "..."]
    return shlex.join(argv)


def holder_info() -> dict[str, Any]:
    """What the lock file says about its holder: this process."""
    from .. import __version__

    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": _command(),
        "aimc_version": __version__,
        "world_size": dist_info()[1],
    }


def _read_holder(fd: int) -> dict[str, Any] | None:
    """The holder recorded in an open lock file (``None`` if empty or unreadable)."""
    with contextlib.suppress(OSError, ValueError):
        info = json.loads(os.pread(fd, 1 << 16, 0) or b"null")
        return info if isinstance(info, dict) else None
    return None


def _describe(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "another process (its lock file gives no details yet)"
    return (
        f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')} since "
        f"{holder.get('started', '?')} (command: {holder.get('command', '?')})"
    )


class RunLock:
    """The held lock of a run directory (or, on ranks other than 0, a stand-in); releasing it
    deletes the lock file. A context manager."""

    def __init__(self, path: Path | None = None, fd: int | None = None) -> None:
        self.path, self.fd = path, fd

    @property
    def held(self) -> bool:
        return self.fd is not None

    def release(self) -> None:
        """Delete the lock file and unlock (idempotent)."""
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            if self.path is not None and _same_file(self.fd, self.path):
                self.path.unlink()  # while still holding it, so no one takes a deleted file
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _busy(out: Path, holder: dict[str, Any] | None) -> RunDirBusy:
    return RunDirBusy(
        f"--out: {out} is in use by {_describe(holder)}; wait for it to end, stop it, or "
        "choose another --out"
    )


def _try_lock(fd: int, path: Path) -> bool:
    """Take the lock on ``fd``: ``True``; held by another process: :class:`RunDirBusy`; no
    locks on this file system: ``False`` (after a warning)."""
    for attempt in range(5):  # a moment's shared lock of a peeking process is not a holder
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if attempt == 4:
                raise _busy(path.parent, _read_holder(fd)) from None
            time.sleep(0.05)
        except OSError as err:
            print(
                f"aimc: warning: cannot lock {path} ({reason(err)}): this file system has no "
                "flock; make sure no other process uses this --out",
                file=sys.stderr,
            )
            return False
    return False  # pragma: no cover - the loop returns or raises


def _peek(out: Path) -> str | None:
    """The busy message if a live process holds ``out``'s lock (``None`` otherwise); creates
    nothing. A shared lock, taken and given back at once, tests the holder's exclusive one."""
    try:
        fd = os.open(out / LOCK_NAME, os.O_RDONLY)
    except OSError:
        return None  # no lock file: free (or no directory yet)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return str(_busy(out, _read_holder(fd)))
    except OSError:
        return None  # no flock here: acquire_lock warns
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def fail_if_busy(out: Path) -> None:
    """Raise :class:`RunDirBusy` (on every rank) if a live process holds ``out``: a cheap check
    that writes nothing, so that a second run on a busy ``--out`` stops before it loads its
    data and model. :func:`open_run_dir` takes the lock itself later."""
    rank, world = dist_info()
    message = broadcast(_peek(Path(out)) if rank == 0 else None, world)
    if message is not None:
        _fail_together(RunDirBusy(message), world)


def _fail_together(error: Exception, world: int) -> NoReturn:
    """Raise ``error``, which every rank raises: first leave the process group together, so
    that no rank is aborted at exit because rank 0 (the host of the group's store) is gone."""
    import torch

    if world > 1 and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    raise error


def acquire_lock(out: Path) -> RunLock:
    """Lock run directory ``out`` (created if needed) for this process; see the module doc."""
    make_dir(out)
    path = out / LOCK_NAME
    for _ in range(50):  # the file can be deleted by a releasing holder between open and flock
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise RunDirError(f"--out: cannot create {path} ({reason(err)})") from err
        try:
            if not _try_lock(fd, path):
                os.close(fd)
                return RunLock()
        except BaseException:
            os.close(fd)
            raise
        if _same_file(fd, path):
            break
        os.close(fd)
    else:  # pragma: no cover - 50 holders in a row released between our open and flock
        raise RunDirError(f"--out: {path} keeps changing; is another aimc starting there?")
    if stale := _read_holder(fd):
        print(
            f"aimc: --out: taking over the lock of {out} left by {_describe(stale)}, which "
            "no longer holds it (killed?)",
            file=sys.stderr,
        )
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(holder_info(), indent=2) + "\n").encode(), 0)
    return RunLock(path, fd)


def open_run_dir(
    out: Path, determines: dict[str, Any], resume: bool, extra: dict[str, Any] | None = None
) -> RunLock:
    """Lock ``out`` and prepare it (:func:`prepare_run_dir`) on rank 0; every rank gets the
    outcome, so that all fail with rank 0's error. Returns the lock (held by rank 0), to be
    released when the run ends: ``with open_run_dir(...):``."""
    rank, world = dist_info()
    lock, error = RunLock(), None
    if rank == 0:
        try:
            lock = acquire_lock(out)
            try:
                prepare_run_dir(out, determines, resume, extra)
            except BaseException:
                lock.release()
                raise
        except Exception as err:
            error = err
    failure = None if error is None else (isinstance(error, ValueError), str(error))
    outcome = broadcast(failure, world)
    if error is not None:
        _fail_together(error, world)
    if outcome is not None:
        is_value_error, message = outcome
        _fail_together((RunDirError if is_value_error else RuntimeError)(message), world)
    return lock


def init_distributed(device: str, world: int) -> torch.device:
    """Join the process group under torchrun (gloo on CPU, NCCL on CUDA); the rank's device."""
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device: got {device!r}; allowed: cpu, cuda, cuda:<index>") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device: got {device!r} but CUDA is not available here; allowed: cpu")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"--device: got {device!r}; allowed: cpu, cuda, cuda:<index>")
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    if dev.type == "cuda" and world > 1:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return dev


__all__ = [
    "LOCK_NAME",
    "RunDirBusy",
    "RunLock",
    "acquire_lock",
    "barrier",
    "broadcast",
    "dist_info",
    "fail_if_busy",
    "holder_info",
    "init_distributed",
    "open_run_dir",
    "prepare_run_dir",
]
