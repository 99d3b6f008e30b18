"""Atomic training checkpoints around ``accelerator.save_state``.

Layout under ``<output_dir>/checkpoints``::

    ckpt-000500/        complete checkpoints (accelerate state + trainer_state.json)
    ckpt-001000/
    latest              text file: the name of the newest complete checkpoint

A checkpoint is written into ``ckpt-XXXXXX.tmp``, every file is fsync'ed, the folder is
renamed to ``ckpt-XXXXXX`` (atomic on POSIX file systems) and only then is ``latest``
replaced, through ``latest.tmp`` + ``os.replace``. A kill at any moment leaves ``latest``
naming a complete checkpoint; leftover ``*.tmp`` folders are removed on the next start.
With several machines, ``output_dir`` must be on a file system they share.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from frfsr._fs import fsync

__all__ = ["CKPT_DIR", "STATE_FILE", "checkpoint_name", "save_checkpoint", "resolve_checkpoint",
           "list_checkpoints", "read_trainer_state", "remove_stale"]

CKPT_DIR = "checkpoints"
STATE_FILE = "trainer_state.json"
LATEST = "latest"
_NAME = re.compile(r"^ckpt-(\d+)$")


def checkpoint_name(step: int) -> str:
    return f"ckpt-{step:06d}"


def _fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for f in files:
            fsync(Path(dirpath) / f)
        fsync(Path(dirpath))


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync(path.parent)


def list_checkpoints(ckpt_root) -> list[tuple[int, Path]]:
    """Complete checkpoints as (step, path), oldest first."""
    root = Path(ckpt_root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _NAME.match(p.name))]
    return sorted(found)


def remove_stale(ckpt_root) -> None:
    """Delete ``*.tmp`` leftovers of interrupted saves (call on the main process only)."""
    root = Path(ckpt_root)
    if root.is_dir():
        for p in root.glob("*.tmp"):
            shutil.rmtree(p) if p.is_dir() else p.unlink()


def save_checkpoint(accelerator, output_dir, step: int, trainer_state: dict, keep: int = 0) -> Path:
    """Save the accelerate state plus ``trainer_state`` as checkpoint ``step``; collective (call
    on every process). ``keep`` > 0 deletes all but the newest ``keep`` checkpoints (never the
    one ``latest`` names). Returns the checkpoint folder."""
    root = Path(output_dir) / CKPT_DIR
    final = root / checkpoint_name(step)
    tmp = root / (final.name + ".tmp")
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / STATE_FILE).write_text(json.dumps(trainer_state, indent=2, sort_keys=True) + "\n")
        _fsync_tree(tmp)
        if final.exists():          # a checkpoint of the same step from an earlier, abandoned run
            shutil.rmtree(final)
        os.rename(tmp, final)
        fsync(root)
        _write_atomic(root / LATEST, final.name + "\n")
        if keep > 0:
            for _, p in list_checkpoints(root)[:-keep]:
                if p != final:
                    shutil.rmtree(p, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def resolve_checkpoint(output_dir, which: str = "latest") -> Path | None:
    """The checkpoint folder for ``which``: ``'latest'`` (what the ``latest`` file names, or
    the newest complete folder if that file is missing; None when there is none) or a path."""
    if which != "latest":
        p = Path(which)
        if not (p / STATE_FILE).is_file():
            raise FileNotFoundError(f"{p} is not a complete checkpoint (no {STATE_FILE})")
        return p
    root = Path(output_dir) / CKPT_DIR
    named = _latest_name(root / LATEST)
    if named is not None and (root / named / STATE_FILE).is_file():
        return root / named
    complete = [p for _, p in list_checkpoints(root) if (p / STATE_FILE).is_file()]
    if named is not None or (root / LATEST).exists():
        import warnings
        warnings.warn(f"{root / LATEST} does not name a complete checkpoint; using the newest complete one "
                      f"({complete[-1].name if complete else 'none'})", RuntimeWarning, stacklevel=2)
    return complete[-1] if complete else None


def _latest_name(path: Path) -> str | None:
    """The checkpoint name ``latest`` holds, None where it is missing, unreadable or garbled."""
    try:
        text = path.read_bytes()[:256].decode("ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text if _NAME.match(text) else None


def read_trainer_state(ckpt) -> dict:
    """The trainer state saved with a checkpoint; ValueError where it is unreadable."""
    path = Path(ckpt) / STATE_FILE
    try:
        state = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} cannot be read: {e}") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path} is not a trainer state (a JSON object)")
    return state
