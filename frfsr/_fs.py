"""File-system helpers shared by everything that writes files atomically (model folders,
checkpoints, images): umask, fsync, a file written beside its name and renamed into place,
and replacing a folder as a whole."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path


def umask() -> int:
    """The process's umask (files written with mkstemp / safetensors get 0600; we apply this)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def cache_root() -> Path:
    """The root of frfsr's caches (fetched photos, Ref descriptors): ``$FRFSR_CACHE``, else
    ``$XDG_CACHE_HOME/frfsr``, else ``~/.cache/frfsr``."""
    root = os.environ.get("FRFSR_CACHE")
    if root:
        return Path(root).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "frfsr"


@contextlib.contextmanager
def atomic_file(dest, suffix: str = ".part"):
    """A temporary path beside ``dest`` (``.<name>.XXXX<suffix>``) to write; when the block
    ends normally it gets the mode a plain ``open()`` would give and is renamed onto ``dest``,
    otherwise it is removed. So ``dest`` is never seen half-written."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=suffix, dir=dest.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~umask())          # mkstemp makes 0600 files
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def sha256(path) -> str:
    """The hex sha256 of a file."""
    import hashlib
    return digest(path, hashlib.sha256())


def digest(path, h) -> str:
    """The hex digest of a file by the hash object ``h`` (fed in 4 MiB chunks)."""
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


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


# ------------------------------------------------------------------ replacing a folder as a whole
STAGING = ".frfsr-"                  # sibling folders: .<name>.frfsr-new-* (being written), .<name>.frfsr-old-*


def _siblings(out: Path, kind: str = "") -> list[Path]:
    return sorted(out.parent.glob(f".{out.name}{STAGING}{kind}*"))


def recover_interrupted_replace(out: Path, complete) -> None:
    """Where a :func:`replace_folder` was killed between its two renames (only on systems
    without an atomic folder exchange), ``out`` is missing and the previous folder waits in a
    sibling: put it back. ``complete(folder)`` says whether a sibling is whole."""
    out = Path(out)
    if not out.exists():
        for old in reversed(_siblings(out, "old-")):
            if complete(old):
                os.rename(old, out)
                return


def _exchange(a: Path, b: Path) -> bool:
    """Swap two folders atomically (Linux renameat2 RENAME_EXCHANGE); False where the system
    or file system has no such call."""
    import ctypes
    import errno
    import sys
    if not sys.platform.startswith("linux"):
        return False
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _link_or_copy(src, dst) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _carry(src: Path, dst: Path) -> None:
    if src.is_dir() and not src.is_symlink():
        shutil.copytree(src, dst, symlinks=True, copy_function=_link_or_copy)
    elif src.is_symlink():
        os.symlink(os.readlink(src), dst)
    else:
        _link_or_copy(src, dst)


def replace_folder(out: Path, write, keep=()) -> None:
    """Make ``out`` the folder that ``write(staging)`` fills, as a whole: everything is written
    into a sibling folder, which then takes ``out``'s place in one atomic exchange, so a crash
    or a kill at any moment leaves the old folder or the new one, both complete. The entries
    ``keep`` of the old folder are carried over first (hard links where possible); every file
    is given the umask's permissions and flushed to disk. Leftovers of interrupted calls are
    removed."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for left in _siblings(out):
        shutil.rmtree(left, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}{STAGING}new-", dir=out.parent))
    try:
        os.chmod(staging, 0o777 & ~umask())
        for p in keep:
            _carry(p, staging / p.name)
        carried = {p.name for p in keep}
        write(staging)
        mode = 0o666 & ~umask()          # as a plain open() would (mkstemp and safetensors write 0600)
        for p in staging.iterdir():
            if p.name not in carried and p.is_file():
                os.chmod(p, mode)
                fsync(p)
        fsync(staging)
        if not out.exists():
            os.rename(staging, out)
        elif _exchange(staging, out):
            shutil.rmtree(staging)         # now the old folder
        else:                              # no atomic exchange: two renames, undone by recover_interrupted_replace
            old = out.with_name(staging.name.replace(f"{STAGING}new-", f"{STAGING}old-"))
            os.rename(out, old)
            os.rename(staging, out)
            shutil.rmtree(old)
        fsync(out.parent)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
