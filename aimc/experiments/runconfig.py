"""``run_config.json``, and resumes that only continue the same run.

**Resume policy.** ``run_config.json`` records ``determines_numbers`` (every setting that changes
the numbers, resolved configs included, so that a preset whose definition changed is caught) and
``aimc_version``. ``--resume`` refuses a run whose numbers-determining settings differ, naming
each differing field. Across aimc versions (or from a run that predates the version record) it is
stricter: the two sets of settings must be the same, field for field (a field only one version
knows is a difference); then the run continues with a warning (its rows and the new ones go in
one table, which is only right if the new version did not change the simulation: see its
changelog), and ``aimc_versions`` lists every version that wrote to the run. Otherwise it is
refused with both versions and the differing fields named: finish the run with the version that
started it, or start a new ``--out``. Damage (not JSON, not an object, no
``determines_numbers``) is an error naming the file.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from .safeio import RunDirError, read_rows, reason, write_text

CONFIG_NAME = "run_config.json"


def make_dir(out: Path) -> None:
    """Create run directory ``out``; a path that cannot be one is an error naming ``--out``."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunDirError(
            f"--out: cannot create {out} ({reason(err)}); allowed: a directory you can write to"
        ) from err


def read_run_config(path: Path) -> dict[str, Any]:
    """The ``run_config.json`` of a run, checked; damage is a :class:`RunDirError`."""
    fix = f"it records the settings of the run in {path.parent}: restore it, or start a new --out"
    try:
        meta = json.loads(path.read_bytes())
    except OSError as err:
        raise RunDirError(f"{path}: cannot be read ({reason(err)}); {fix}") from err
    except ValueError as err:
        raise RunDirError(f"{path}: not valid JSON ({err}); {fix}") from err
    if not isinstance(meta, dict):
        raise RunDirError(f"{path}: expected a JSON object, got {type(meta).__name__}; {fix}")
    if not isinstance(meta.get("determines_numbers"), dict):
        raise RunDirError(
            f"{path}: no 'determines_numbers' object (the settings that determine the "
            f"numbers); {fix}"
        )
    return meta


def _version_clash(old: dict[str, Any], new: dict[str, Any]) -> str:
    """What forbids a resume across aimc versions ("" if nothing: same settings)."""
    only = sorted(set(old) ^ set(new))
    if not only:
        return ""
    return "settings that determine the numbers are not the same: " + ", ".join(
        f"{k} (only {'in the run' if k in old else 'here'})" for k in only
    )


def _differences(path: str, old: Any, new: Any) -> list[str]:
    """``"<path> (<old> != <new>)"`` for each differing leaf of two JSON values (a resolved
    config names the one field that differs, not two whole dicts)."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = list(old) + [k for k in new if k not in old]
        return [
            d
            for k in keys
            for d in _differences(f"{path}.{k}", old.get(k, "<absent>"), new.get(k, "<absent>"))
        ]
    return [] if old == new else [f"{path} ({old!r} != {new!r})"]


def check_resume(out: Path, meta: dict[str, Any], determines: dict[str, Any]) -> None:
    """Refuse to resume the run in ``out`` (its ``run_config.json`` is ``meta``) with settings
    ``determines`` if that would change its numbers (see the module doc for the policy)."""
    from .. import __version__

    old = meta["determines_numbers"]
    new = json.loads(json.dumps(determines))  # as stored: tuples are lists
    old_version = meta.get("aimc_version")
    versions = ""
    if old_version != __version__:
        versions = f" with aimc {old_version or '(unrecorded, older)'}; this is aimc {__version__}"
    diff = [d for k in new if k in old for d in _differences(k, old[k], new[k])]
    if diff:
        shown = ", ".join(diff[:6]) + (f" and {len(diff) - 6} more" if len(diff) > 6 else "")
        raise RunDirError(
            f"--resume: the run in {out} was made with different {shown}"
            + (f" (and{versions})" if versions else "")
        )
    if not versions:
        return
    if clash := _version_clash(old, new):
        raise RunDirError(
            f"--resume: the run in {out} was made{versions}, and its {clash}; finish it with "
            f"aimc {old_version or 'the version that started it'}, or start a new --out"
        )
    print(
        f"aimc: warning: resuming the run in {out}, made{versions}; the settings that determine "
        "the numbers are the same, so its rows and the new ones go in one table (right only "
        "if this version did not change the simulation: see the changelog)",
        file=sys.stderr,
    )


def _has_rows(out: Path) -> bool:
    return any(p.stat().st_size for p in out.glob("results*.jsonl"))


def prepare_run_dir(
    out: Path, determines: dict[str, Any], resume: bool, extra: dict[str, Any] | None = None
) -> None:
    """Create ``out`` and write ``run_config.json``; refuse to reuse a run without ``resume``,
    or to mix runs made with settings that change the numbers (``determines``) or made by
    another aimc version with other settings (see the module doc)."""
    import torch

    from .. import __version__

    cfg_path = out / CONFIG_NAME
    make_dir(out)
    versions = [__version__]
    if cfg_path.exists() or _has_rows(out):
        if not resume:
            raise RunDirError(
                f"--out: {out} already holds a run; pass --resume to continue it "
                "or choose a new directory"
            )
        for path in sorted(out.glob("results*.jsonl")):
            read_rows(path, required=("key",))  # damage is reported before anything runs
        if cfg_path.exists():
            meta = read_run_config(cfg_path)
            check_resume(out, meta, determines)
            old = meta.get("aimc_versions")
            if not isinstance(old, list) or not old:
                old = [meta.get("aimc_version") or "unrecorded"]
            versions = old + ([__version__] if old[-1] != __version__ else [])
    meta = {
        "aimc_version": __version__,
        "aimc_versions": versions,
        "determines_numbers": determines,
        "torch": torch.__version__,
        **(extra or {}),
    }
    write_text(cfg_path, json.dumps(meta, indent=2) + "\n")


__all__ = ["CONFIG_NAME", "check_resume", "prepare_run_dir", "read_run_config"]
