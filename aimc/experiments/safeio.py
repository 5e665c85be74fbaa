"""Crash-safe writes and checked reads of the files in a run directory.

Every file a run writes survives a ``kill -9`` or a full disk:

* JSON-lines logs (``results*.jsonl``, ``train_log.jsonl``) grow by :func:`append_row`: one
  ``write`` of a whole line, then ``fsync``. A failed or short write (``ENOSPC``, ``EFBIG``) is
  cut back off, so the file always ends with whole rows, and the error says so. A line torn by a
  kill (the last line, without its newline) is dropped by :func:`read_rows` and cut off before the
  next row is appended; a bad line anywhere else is damage, and an error names file and line.
* Checkpoints, exported models and other whole files are written beside their destination
  (``<name>.tmp``), synced, then renamed over it (:func:`write_file`, :func:`write_dir`): a kill
  or a failed write leaves the previous version intact.
* Loads of what a run left behind (:func:`load_torch`) turn an unreadable file into a
  :class:`RunDirError` ``"<path>: <what is wrong>; <what to do>"`` chained to the original error,
  instead of a traceback from deep inside torch or json.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

RESUME_HINT = "free space and rerun with --resume"


class RunDirError(ValueError):
    """The run directory holds something this run cannot use (damaged file, other run, busy)."""


class RunWriteError(OSError):
    """A write to the run directory failed; what was there before is intact."""


# --------------------------------------------------------------------------------------------
# reasons


def reason(err: BaseException, where: Path | None = None) -> str:
    """A short human reason for a failed read or write (``strerror`` of an ``OSError``, the
    first line of anything else), with a note when the disk or the file-size limit is the
    likely cause."""
    text = str(err).strip()
    if isinstance(err, OSError) and err.strerror:
        first, code = err.strerror, err.errno
    elif m := re.search(r"os error (\d+)", text):
        code = int(m.group(1))
        first = os.strerror(code)
    else:  # e.g. torch's "[enforce fail at inline_container.cc:...] unexpected pos ..."
        first, code = (text.splitlines()[0] if text else type(err).__name__), None
    notes = _space_notes(where) if where is not None else []
    if code is None and notes:
        return f"the write failed ({first}); " + "; ".join(notes)
    if code in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        return "; ".join([first, *notes])
    return first


def _space_notes(where: Path) -> list[str]:
    """Why writes fail here, if the file system is (nearly) full or files are size-limited."""
    import resource

    notes = []
    with contextlib.suppress(OSError):
        st = os.statvfs(where if where.is_dir() else where.parent)
        if st.f_bavail * st.f_frsize < 16 << 20:
            notes.append(f"only {st.f_bavail * st.f_frsize} bytes are free there")
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY:
        notes.append(f"files are limited to {limit} bytes here (ulimit -f)")
    return notes


# --------------------------------------------------------------------------------------------
# JSON lines


def _parse_row(line: bytes, required: Iterable[str]) -> tuple[dict[str, Any] | None, str]:
    """``(row, "")`` or ``(None, what is wrong)``."""
    try:
        row = json.loads(line)
    except ValueError as err:  # JSONDecodeError and UnicodeDecodeError
        return None, f"not valid JSON ({err})"
    if not isinstance(row, dict):
        return None, f"expected a JSON object, got {type(row).__name__}"
    missing = [k for k in required if k not in row]
    if missing:
        return None, "no " + ", ".join(repr(k) for k in missing)
    return row, ""


def read_rows(path: Path, required: Iterable[str] = ()) -> list[dict[str, Any]]:
    """The rows of a JSON-lines file written by :func:`append_row`.

    A last line without its newline that is not valid JSON was torn by a kill mid-write: it is
    dropped (its unit or step is redone). Any other bad line is damage: :class:`RunDirError`
    naming the file and line."""
    required = tuple(required)
    try:
        lines = path.read_bytes().split(b"\n")
    except OSError as err:
        raise RunDirError(f"{path}: cannot be read ({reason(err)})") from err
    tail = lines.pop()  # b"" when the file ends with a newline
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        row, wrong = _parse_row(line, required)
        if row is None:
            raise RunDirError(
                f"{path}, line {number}: {wrong}; the file is damaged: delete that line (its "
                "work is redone with --resume) or start a new --out"
            )
        rows.append(row)
    if tail.strip():
        row, wrong = _parse_row(tail, required)
        if row is not None:
            rows.append(row)
        elif wrong.startswith("not valid JSON"):
            pass  # a line torn by a kill: dropped, its work is redone
        else:
            raise RunDirError(f"{path}, line {len(lines) + 1}: {wrong}; the file is damaged")
    return rows


def _whole_rows_size(fd: int) -> tuple[int, bytes]:
    """``(size, prefix)``: the size of the file's whole rows, and the bytes to write before the
    next row (a newline if the last line is a complete row that lacks its newline)."""
    size = os.fstat(fd).st_size
    if not size or os.pread(fd, 1, size - 1) == b"\n":
        return size, b""
    data = os.pread(fd, size, 0)
    start = data.rfind(b"\n") + 1
    row, _ = _parse_row(data[start:], ())
    if row is not None:
        return size, b"\n"
    return start, b""  # a torn line: cut it off


def _count_rows(fd: int, size: int) -> int:
    data = os.pread(fd, size, 0)
    return sum(1 for line in data.split(b"\n") if line.strip())


def _write_all(fd: int, data: bytes) -> None:
    """``os.write`` until all of ``data`` is written (a short write is retried, so that the
    error behind it — ``ENOSPC``, ``EFBIG`` — is raised)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n <= 0:
            raise OSError(0, "the write made no progress")
        view = view[n:]


def append_row(path: Path, row: dict[str, Any]) -> None:
    """Append one JSON line and force it to disk (a kill loses at most the row in flight).

    A torn last line left by a kill is cut off first. If the write or the sync fails, the file
    is cut back to its previous size and :class:`RunWriteError` says so: the file never holds a
    torn or lost row."""
    data = (json.dumps(row, sort_keys=True) + "\n").encode()
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        size, prefix = _whole_rows_size(fd)
        try:
            if size < os.fstat(fd).st_size:
                os.ftruncate(fd, size)
            _write_all(fd, prefix + data)
            os.fsync(fd)
        except OSError as err:
            os.ftruncate(fd, size)
            with contextlib.suppress(OSError):
                os.fsync(fd)
            n = _count_rows(fd, size)
            raise RunWriteError(
                f"could not append to {path}: {reason(err, path)}; the file is unchanged "
                f"({n} rows); {RESUME_HINT}"
            ) from err
    finally:
        os.close(fd)


def keep_rows(path: Path, keep: Callable[[dict[str, Any]], bool]) -> None:
    """Rewrite a JSON-lines log with only the rows ``keep`` accepts (atomically); used on resume
    to drop log rows of steps that are redone."""
    if not path.exists():
        return
    rows = read_rows(path)
    if all(keep(r) for r in rows):
        return
    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows if keep(r))
    write_file(path, lambda tmp: tmp.write_text(text), f"{path} is unchanged")


# --------------------------------------------------------------------------------------------
# whole files and directories


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for p in sorted(root.rglob("*")):
        if p.is_file():
            _fsync_path(p)
    _fsync_path(root)


def write_file(path: Path, fill: Callable[[Path], Any], intact: str) -> None:
    """Write ``path`` through ``fill(tmp)`` on ``<path>.tmp``, sync it and rename it over
    ``path``. On failure the temporary file is removed and :class:`RunWriteError` names
    ``path``, the reason and ``intact`` (what is still there, e.g. "the previous checkpoint is
    intact")."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        fill(tmp)
        _fsync_path(tmp)
        os.replace(tmp, path)
        _fsync_path(path.parent)
    except Exception as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise RunWriteError(
            f"could not write {path}: {reason(err, path)}; {intact}; {RESUME_HINT}"
        ) from err


def write_text(path: Path, text: str) -> None:
    """:func:`write_file` for a small text file."""
    write_file(path, lambda tmp: tmp.write_text(text), f"{path.name} is unchanged")


def write_dir(path: Path, fill: Callable[[Path], Any], intact: str) -> Path:
    """:func:`write_file` for a directory: ``fill(tmp)`` fills ``<path>.tmp``, which replaces
    ``path``. A kill leaves either the old directory or the new one (or, between the two
    renames, the old one as ``<path>.old``)."""
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        fill(tmp)
        _fsync_tree(tmp)
        replace_dir(tmp, path)
    except Exception as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RunWriteError(
            f"could not write {path}: {reason(err, path)}; {intact}; {RESUME_HINT}"
        ) from err
    return path


def replace_dir(tmp: Path, path: Path) -> None:
    """Rename directory ``tmp`` to ``path``, replacing (and then deleting) an existing one."""
    old = path.with_name(path.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        os.replace(path, old)
        try:
            os.replace(tmp, path)
        except OSError:
            os.replace(old, path)
            raise
        _fsync_path(path.parent)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)
        _fsync_path(path.parent)


# --------------------------------------------------------------------------------------------
# checked loads


def load_torch(path: Path, keys: Iterable[str], hint: str, **kwargs: Any) -> dict[str, Any]:
    """``torch.load(path)`` of a checkpoint dict with ``keys``; an unreadable, truncated or
    foreign file is a :class:`RunDirError` ``"<path>: <what is wrong>; <hint>"``."""
    import torch

    try:
        state = torch.load(path, **({"weights_only": False} | kwargs))
    except Exception as err:
        raise RunDirError(
            f"{path}: not a readable checkpoint ({reason(err)}); the file is damaged or "
            f"incomplete: {hint}"
        ) from err
    if not isinstance(state, dict):
        raise RunDirError(f"{path}: expected a checkpoint dict, got {type(state).__name__}; {hint}")
    missing = [k for k in keys if k not in state]
    if missing:
        raise RunDirError(f"{path}: not an aimc checkpoint (no {', '.join(missing)}); {hint}")
    return state


def load_state(module: Any, state: dict[str, Any], path: Path, hint: str) -> None:
    """``module.load_state_dict(state)`` (a model or an optimizer); a mismatch (another model or
    config wrote the checkpoint) is a :class:`RunDirError` naming ``path``.

    ``torch.optim`` does not check the shapes of the per-parameter state it loads (a mismatch
    would fail at the first step, or broadcast): they are checked here, e.g. the moments of a
    learned output scale saved when it had one value per layer column (now one per tile)."""
    import torch

    try:
        module.load_state_dict(state)
        if isinstance(module, torch.optim.Optimizer):
            _check_optimizer_shapes(module)
    except (RuntimeError, ValueError, KeyError, TypeError) as err:
        raise RunDirError(
            f"{path}: does not fit this run's {type(module).__name__} ({reason(err)}); {hint}"
        ) from err


def _check_optimizer_shapes(opt: Any) -> None:
    """Every non-scalar tensor of a parameter's optimizer state has the parameter's shape."""
    import torch

    index = 0
    for group in opt.param_groups:
        for p in group["params"]:
            for key, value in opt.state.get(p, {}).items():
                if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != p.shape:
                    raise ValueError(
                        f"optimizer state {key!r} of parameter {index} has shape "
                        f"{tuple(value.shape)}, the parameter {tuple(p.shape)}"
                    )
            index += 1


__all__ = [
    "RunDirError",
    "RunWriteError",
    "append_row",
    "keep_rows",
    "load_state",
    "load_torch",
    "read_rows",
    "reason",
    "replace_dir",
    "write_dir",
    "write_file",
    "write_text",
]
