"""File-system helpers shared by everything that writes files atomically (model folders,
checkpoints, images)."""
from __future__ import annotations

import os
from pathlib import Path


def umask() -> int:
    """The process's umask (files written with mkstemp / safetensors get 0600; we apply this)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync(path) -> None:
    """Flush a file or a folder to disk; a no-op where the platform cannot open folders."""
    path = Path(path)
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if path.is_dir() else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
