"""File-system helpers shared by everything that writes files atomically (model folders,
checkpoints, images): umask, fsync, a file written beside its name and renamed into place,
and replacing a folder as a whole."""
from __future__ import annotations

import contextlib
import glob
import os
import re
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


# ------------------------------------------------------------------ which file a path names
def same_file(a, b) -> bool:
    """Whether the paths ``a`` and ``b`` name one file: ``os.path.samefile`` where both exist
    (symlinks, hard links, ``..``), else the resolved paths compared."""
    try:
        if os.path.lexists(a) and os.path.lexists(b):
            return os.path.samefile(a, b)
    except OSError:                      # e.g. a dangling symlink
        pass
    return os.path.normcase(os.path.realpath(a)) == os.path.normcase(os.path.realpath(b))


def check_apart(outputs, inputs) -> None:
    """Raise ``ValueError`` naming both paths where an output of ``outputs`` would be written
    over an input of ``inputs`` or over another output; both are ``(what, path)`` pairs, e.g.
    ``("-o", "sr.png")``, ``("the LR", "photo.png")``. Called before any work."""
    outputs = [(what, os.fspath(p)) for what, p in outputs if p is not None]
    for i, (what, out) in enumerate(outputs):
        for other, src in inputs:
            if same_file(out, src):
                raise ValueError(f"{what} {out} is {other} {os.fspath(src)}: an output never overwrites an input; "
                                 "give another output name")
        for other, out2 in outputs[i + 1:]:
            if same_file(out, out2):
                raise ValueError(f"{what} {out} and {other} {out2} are the same file: each output needs its own name")


def describe_os_error(e: OSError) -> str:
    """An OS error as one line: what went wrong and on which path."""
    if e.errno is None:                  # a message of ours (e.g. :class:`WriteError`)
        return str(e)
    what = e.strerror or str(e)
    where = " -> ".join(os.fspath(f) for f in (e.filename, e.filename2) if f is not None)
    return f"{what}: {where}" if where else what


class WriteError(OSError):
    """A file that could not be written: one line naming it and the system's reason."""


# ------------------------------------------------------------------ temporary files and their owners
TEMP_TAG = ".frfsr-"                 # every temporary name: .<name>.frfsr-[<kind>-]<pid>-<random><suffix>
_NAME_ROOM = 120                     # bytes of <name> kept in a temporary name (file systems allow 255)
_OWNER = re.compile(r"\.frfsr-(?:[a-z]+-)?(\d+)-")


def _short(name: str) -> str:
    raw = os.fsencode(name)
    return name if len(raw) <= _NAME_ROOM else os.fsdecode(raw[:_NAME_ROOM]).rstrip("\udcff") or "x"


def temp_prefix(dest, kind: str = "") -> str:
    """The prefix of a temporary name beside ``dest`` written by this process: the name
    (shortened, so the temporary name is never longer than the final one allows), the tag,
    ``kind`` (e.g. ``"new"``) and the process id, which :func:`remove_leftovers` reads."""
    return f".{_short(Path(dest).name)}{TEMP_TAG}{kind + '-' if kind else ''}{os.getpid()}-"


def temp_pattern(dest) -> str:
    """The glob pattern of every temporary name beside ``dest`` (files and folders, every kind)."""
    return f".{glob.escape(_short(Path(dest).name))}{TEMP_TAG}*"


def _alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this machine (True where that cannot be told)."""
    if pid == os.getpid():
        return True
    if os.name != "posix":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:                      # e.g. another user's process
        return True
    return True


def temp_owner(path) -> int | None:
    """The process id stamped in a temporary name (None for a name without one)."""
    m = _OWNER.search(Path(path).name)
    return int(m.group(1)) if m else None


def remove_leftovers(dest, keep=lambda p: False) -> list[Path]:
    """Remove the temporary files and folders that runs which no longer exist left beside
    ``dest`` (every kind: images, videos, libraries, model folders); those of running
    processes (this one included) and those ``keep(path)`` names are left alone. Returns
    what was removed."""
    dest = Path(dest)
    if not dest.parent.is_dir():
        return []
    removed = []
    for p in sorted(dest.parent.glob(temp_pattern(dest))):
        pid = temp_owner(p)
        if pid is None or _alive(pid) or keep(p):
            continue
        try:
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        except FileNotFoundError:        # another run removed it first
            continue
        except OSError:
            continue
        removed.append(p)
    return removed


@contextlib.contextmanager
def atomic_file(dest, suffix: str = ".part"):
    """A temporary path beside ``dest`` (:func:`temp_prefix`, then ``XXXX<suffix>``) to write;
    when the block ends normally it gets the mode a plain ``open()`` would give and is
    renamed onto ``dest``, otherwise it is removed. So ``dest`` is never seen half-written,
    and a temporary file is removed only by its own process or after that process is gone."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(dest), suffix=suffix, dir=dest.parent)
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
STAGING = TEMP_TAG                   # sibling folders: .<name>.frfsr-new-<pid>-* (being written), .<name>.frfsr-old-<pid>-*


def _siblings(out: Path, kind: str = "") -> list[Path]:
    return sorted(out.parent.glob(f".{glob.escape(_short(out.name))}{STAGING}{kind}*"))


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


def _rename_new(staging: Path, out: Path) -> bool:
    """Rename ``staging`` to the missing ``out``; False where another process made ``out`` first."""
    import errno
    try:
        os.rename(staging, out)
    except OSError as e:
        if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
            return False
        raise
    return True


def replace_folder(out: Path, write, keep=()) -> None:
    """Make ``out`` the folder that ``write(staging)`` fills, as a whole: everything is written
    into a sibling folder, which then takes ``out``'s place in one atomic exchange, so a crash
    or a kill at any moment leaves the old folder or the new one, both complete. The entries
    ``keep`` of the old folder are carried over first (hard links where possible); every file
    is given the umask's permissions and flushed to disk. Leftovers of interrupted calls are
    removed."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # what killed calls left (never a running call's staging folder, nor the previous folder
    # that an interrupted two-rename swap left while ``out`` is missing)
    remove_leftovers(out, keep=lambda p: f"{STAGING}old-" in p.name and not out.exists())
    staging = Path(tempfile.mkdtemp(prefix=temp_prefix(out, "new"), dir=out.parent))
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
        if not out.exists() and _rename_new(staging, out):
            pass
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
