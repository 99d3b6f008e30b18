"""Native CPU kernels: C++ built on first use with the machine's own compiler.

``fast_match.cpp`` holds the two CPU kernels of the fast matching mode
(:mod:`frfsr.ops.fast_match`):

* :func:`window_match`, the kernel of ``frfsr::window_match`` (the windowed search): per
  search cell and flow it computes the pixel products straight from the channels-last key,
  sums the taps and keeps the best in the core's caches, where the reference
  (:mod:`frfsr.ops.window`) gathers key blocks, runs batched matrix products and sums taps
  through memory;
* :func:`coarse_topk`, the candidates' top-k: products in registers compared at once with
  each query's current k-th best, so the (query cells x key cells) similarities are never
  stored.

Same definitions and tie rules as the reference, faster (BENCHMARKS.md, "Fast matching").
Vector paths: AVX-512, AVX2 + FMA, plain C++
(chosen by the compiler's target; ``"auto"`` uses the kernels only with vectors, the plain
build being slower than the reference).

Building: the first call in a process looks for the library in the cache
(``$FRFSR_CACHE/native``, else ``$XDG_CACHE_HOME/frfsr/native``, else
``~/.cache/frfsr/native``) under a name that hashes the source, the compiler command and
the CPU's feature flags, and otherwise compiles it there (``$CXX``, else ``c++``;
``-O3 -march=native``, falling back to no ``-march`` where the compiler refuses it; a second
or two) and writes it atomically. Nothing else is needed: the library is loaded with
:mod:`ctypes` and uses no Python or PyTorch headers.

A cached library is checked before it is used: its sha256 must be the one recorded beside it
(``<library>.sha256``, written with the build), so a truncated or replaced file is never
mapped (that would crash the process with SIGBUS); after loading, its functions must be
there and a tiny top-k must equal :func:`torch.topk`'s. A library that fails either check is
rebuilt once, with a warning; where the rebuild fails too, the reference kernel is used.

Where it cannot be built (no compiler, a failed build) or ``FRFSR_NATIVE=0`` is set,
:func:`available` is False and the ``"auto"`` backend runs the reference kernel;
:func:`unavailable_reason` says why (forcing the ``"native"`` backend raises it).
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import threading
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

__all__ = ["available", "unavailable_reason", "library_path", "vector_width", "window_match", "coarse_topk",
           "compile_library", "load_library"]

SOURCE = Path(__file__).with_name("fast_match.cpp")
_FLAGS = ("-O3", "-std=c++17", "-shared", "-fPIC", "-pthread")
_BUILD_TIMEOUT_S = 300

_lock = threading.Lock()
_state: dict = {}          # "lib": ctypes.CDLL, or "error": str; "path": the library file


def _cpu_flags() -> str:
    """The CPU's feature flags (Linux), so a cache shared between machines keeps one build each."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.machine() + " " + platform.processor()


class _BuildFailed(RuntimeError):
    """A compiler run that failed (its command and error output), or no compiler."""


def compile_library(dest, arch: tuple[str, ...] = ("-march=native",), cxx: str | None = None) -> Path:
    """Compile the kernels into ``dest`` (written atomically) with ``arch`` flags (e.g.
    ``("-mavx2", "-mfma")``, or ``()`` for plain C++) and ``cxx`` (default ``$CXX``, else
    ``c++``); ``RuntimeError`` with the compiler's message if it fails."""
    from ..._fs import atomic_file
    from ..._fs import sha256
    cmd = (cxx or os.environ.get("CXX") or "c++", *arch, *_FLAGS)
    with atomic_file(dest, suffix=".so") as tmp:
        run = subprocess.run([*cmd, str(SOURCE), "-o", str(tmp)], capture_output=True, text=True,
                             timeout=_BUILD_TIMEOUT_S)
        if run.returncode != 0:
            raise _BuildFailed(f"`{' '.join(cmd)}` exited {run.returncode}: {run.stderr.strip()[-600:]}")
        digest = sha256(tmp)
        with atomic_file(_digest_path(dest)) as dtmp:
            dtmp.write_text(digest + "\n")
    return Path(dest)


def _digest_path(lib) -> Path:
    return Path(str(lib) + ".sha256")


class _BadLibrary(RuntimeError):
    """A cached library that is damaged or not ours (truncated, replaced, failing its self-test)."""


def _check_file(path: Path) -> None:
    """Raise :class:`_BadLibrary` unless ``path`` is the file its build recorded (by sha256);
    checked before loading, as mapping a truncated library kills the process."""
    from ..._fs import sha256
    try:
        recorded = _digest_path(path).read_text().strip()
    except (OSError, UnicodeDecodeError):
        raise _BadLibrary(f"{path} has no recorded checksum ({_digest_path(path).name})") from None
    if sha256(path) != recorded:
        raise _BadLibrary(f"{path} is not the file that was built (truncated or replaced: its sha256 differs)")


def _self_test(lib: ctypes.CDLL) -> None:
    """Raise :class:`_BadLibrary` unless the loaded library's kernels answer as they should:
    its vector width is one it can have and a tiny top-k equals torch.topk's."""
    if int(lib.frfsr_vector_width()) not in (1, 4, 8, 16):
        raise _BadLibrary("its vector width is not one a build can have")
    g = torch.Generator().manual_seed(0)
    qd, kd = torch.randn(1, 4, 5, generator=g), torch.randn(1, 4, 7, generator=g)
    want = torch.topk(torch.einsum("bdq,bdk->bqk", qd, kd), 3, dim=-1).indices
    if not torch.equal(coarse_topk(qd, kd, 3, library=lib), want):
        raise _BadLibrary("its self-test (a 5 x 7 top-3) gives wrong indices")


class _BadLoaded(_BadLibrary):
    """A library that was loaded and then failed its checks: the process keeps it mapped
    under its name, so it is removed (the next process rebuilds it) and this one falls back."""


def _load_checked(path: Path) -> ctypes.CDLL:
    """The library at ``path`` after :func:`_check_file`, loading and :func:`_self_test`."""
    _check_file(path)
    try:
        lib = load_library(path)
        _self_test(lib)
    except OSError as e:                            # not a loadable library: nothing was mapped
        raise _BadLibrary(f"{path} cannot be loaded: {e}") from None
    except (AttributeError, _BadLibrary) as e:      # a library without our functions, or wrong answers      # a library without our functions, or wrong answers
        for p in (path, _digest_path(path)):
            p.unlink(missing_ok=True)
        raise _BadLoaded(f"{path} is not a working build ({e}); removed, the next run rebuilds it") from None
    return lib


def load_library(path) -> ctypes.CDLL:
    """A built library, loaded, its functions' signatures declared."""
    lib = ctypes.CDLL(str(path))
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    missing = [f for f in ("frfsr_window_match", "frfsr_coarse_topk", "frfsr_vector_width") if not hasattr(lib, f)]
    if missing:
        raise AttributeError(f"it lacks the function(s) {', '.join(missing)}")
    lib.frfsr_window_match.argtypes = [ptr] * 6 + [i64] * 10 + [ptr, ptr, ctypes.c_int]
    lib.frfsr_window_match.restype = ctypes.c_int
    lib.frfsr_coarse_topk.argtypes = [ptr, ptr] + [i64] * 4 + [ptr, ctypes.c_int]
    lib.frfsr_coarse_topk.restype = ctypes.c_int
    lib.frfsr_vector_width.restype = ctypes.c_int
    return lib


def _build() -> Path:
    """The cached library for this source, compiler and CPU, compiled if missing (with
    ``-march=native`` first, without it if the compiler refuses). A cached build needs no
    compiler."""
    from ..._fs import cache_root
    cxx = os.environ.get("CXX") or "c++"
    src = SOURCE.read_bytes()
    variants = []
    for arch in (("-march=native",), ()):
        key = hashlib.sha256(src + "\0".join((cxx, *arch, *_FLAGS)).encode() + _cpu_flags().encode()).hexdigest()
        variants.append((arch, cache_root() / "native" / f"fast_match-{key[:16]}.so"))
    for _, dest in variants:
        if dest.is_file():
            return dest
    if shutil.which(cxx) is None:
        raise _BuildFailed(f"no C++ compiler found ({cxx!r}); install one (e.g. g++) or set CXX")
    errors = []
    for arch, dest in variants:
        try:
            return compile_library(dest, arch, cxx)
        except _BuildFailed as e:
            errors.append(str(e))
    raise _BuildFailed("the native CPU kernel could not be built: " + "; ".join(errors))


def _load() -> ctypes.CDLL | None:
    """The loaded library, built on the first call in the process; None when unavailable."""
    with _lock:
        if "lib" in _state or "error" in _state:
            return _state.get("lib")
        if os.environ.get("FRFSR_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
            _state["error"] = "the native CPU kernels are disabled by FRFSR_NATIVE=0"
            return None
        try:
            path = _build()
            try:
                lib = _load_checked(path)
            except _BadLoaded:
                raise
            except _BadLibrary as e:                # damaged cache, never loaded: rebuild it once
                warnings.warn(f"the cached native CPU kernel is unusable ({e}); rebuilding it", RuntimeWarning,
                              stacklevel=3)
                for p in (path, _digest_path(path)):
                    p.unlink(missing_ok=True)
                path = _build()
                lib = _load_checked(path)
        except (_BuildFailed, _BadLibrary, OSError, subprocess.SubprocessError) as e:   # no compiler, a failed build
            _state["error"] = (str(e) if isinstance(e, _BuildFailed)
                               else f"the native CPU kernel could not be loaded: {e}")
            warnings.warn(_state["error"] + "; using the reference kernel", RuntimeWarning, stacklevel=3)
            return None
        _state["lib"], _state["path"] = lib, path
        return lib


def _library(library: ctypes.CDLL | None) -> ctypes.CDLL:
    """``library``, else the built one; ``RuntimeError`` saying why when there is none."""
    lib = _load() if library is None else library
    if lib is None:
        raise RuntimeError(f"native CPU kernels unavailable: {unavailable_reason()}")
    return lib


def available() -> bool:
    """True when the native kernels are built (or load from the cache) on this machine."""
    return _load() is not None


def unavailable_reason() -> str | None:
    """Why :func:`available` is False (None when it is True)."""
    _load()
    return _state.get("error")


def library_path() -> Path | None:
    """The loaded library file (None when unavailable)."""
    _load()
    return _state.get("path")


def vector_width() -> int:
    """Floats per vector of the loaded build: 16 (AVX-512), 8 (AVX2 + FMA) or 1 (plain C++)."""
    return int(_library(None).frfsr_vector_width())


@torch.no_grad()
def window_match(query: torch.Tensor, key: torch.Tensor, flows: torch.Tensor, cell: int, radius: int,
                 patch_size: int = 3, library: ctypes.CDLL | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`frfsr.ops.window.window_match` by the native kernel: CPU tensors, computed in
    float32 (float64 inputs are the reference's); returns (score in the query's dtype,
    index). Not differentiable by itself (the operator ``frfsr::window_match`` adds the
    gradient). Extra memory: a padded channels-last copy of the query and one of the key.
    ``library``: a :func:`load_library` result to run instead of the built one."""
    from ..window import _EPS, check_window_match_args, flows_needed, patch_norms
    p, s, r = check_window_match_args(query, key, flows, cell, radius, patch_size)
    lib = _library(library)
    if query.device.type != "cpu" or key.device.type != "cpu":
        raise RuntimeError(f"the native window_match kernel runs on CPU tensors; got {query.device} and {key.device}")
    B, C, h, w = query.shape
    H, W = key.shape[-2:]
    hq, wq = h - p + 1, w - p + 1
    hc, wc, M = flows.shape[1:4]
    q, k = query.detach().float(), key.detach().float()
    qpad = F.pad(q, (0, wc * s + p - 1 - w, 0, hc * s + p - 1 - h)).permute(0, 2, 3, 1).contiguous()
    kcl = k.permute(0, 2, 3, 1).contiguous()
    kn = patch_norms(k, p).contiguous()
    fl = flows.reshape(B * hc * wc, M, 2).to(torch.int64).contiguous()
    need = flows_needed(fl).contiguous()
    order = torch.argsort(need, descending=True, stable=True).contiguous()
    best = torch.empty(B * hc * wc, s * s)
    index = torch.empty(B * hc * wc, s * s, dtype=torch.int64)
    status = lib.frfsr_window_match(qpad.data_ptr(), kcl.data_ptr(), kn.data_ptr(), fl.data_ptr(), need.data_ptr(),
                                    order.data_ptr(), B, hc, wc, M, C, H, W, s, r, p, best.data_ptr(),
                                    index.data_ptr(), max(1, torch.get_num_threads()))
    if status != 0:
        raise MemoryError("the native window_match kernel ran out of memory for its per-thread buffers")

    def assemble(t):
        return t.view(B, hc, wc, s, s).permute(0, 1, 3, 2, 4).reshape(B, hc * s, wc * s)[:, :hq, :wq]

    score = assemble(best) / (patch_norms(q, p) + _EPS)
    return score.to(query.dtype), assemble(index).contiguous()


@torch.no_grad()
def coarse_topk(qd: torch.Tensor, kd: torch.Tensor, k: int, library: ctypes.CDLL | None = None) -> torch.Tensor:
    """:func:`frfsr.ops.fast_match.coarse_topk` by the native kernel: indices (B, Nq, k') of
    the k' = min(k, Nk) largest dot products of every query column of ``qd`` (B, D, Nq) with
    the key columns of ``kd`` (B, D, Nk), best first, ties to the lowest index; float32, CPU.
    The similarity matrix is never stored."""
    lib = _library(library)
    B, D, n_q = qd.shape
    n_k = kd.shape[2]
    k = min(int(k), n_k)
    out = torch.empty(B, n_q, k, dtype=torch.int64)
    for b in range(B):
        qT = qd[b].float().contiguous()
        krows = kd[b].float().t().contiguous()
        status = lib.frfsr_coarse_topk(qT.data_ptr(), krows.data_ptr(), n_q, n_k, D, k, out[b].data_ptr(),
                                       max(1, torch.get_num_threads()))
        if status != 0:
            raise MemoryError("the native coarse top-k kernel ran out of memory for its per-thread buffers")
    return out
