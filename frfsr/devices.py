"""Devices and precisions: parsing what a user asked for, refusing what this machine does
not have, and choosing the fastest precision that keeps the results (``"auto"``).

One table of dtype names (:data:`DTYPES`) serves the pipeline, the Hub loader, the CLI and
the node pack.

CPU precision: bfloat16 is fast on a CPU only where the CPU computes it natively (the
AVX-512 BF16 or AMX instructions). Elsewhere (e.g. an AVX2-only CPU) PyTorch emulates bf16,
far slower than float32 (BENCHMARKS.md, "CPU"), so ``"auto"`` picks float32 and an explicit
bf16 request on such a CPU warns.
"""
from __future__ import annotations

import functools
import warnings

import torch

from .checks import FRFSRWarning

DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float64": torch.float64, "fp64": torch.float64, "double": torch.float64,
}
AUTO = "auto"
_NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def is_dtype_name(s) -> bool:
    return isinstance(s, str) and s.lower().replace("torch.", "") in DTYPES


def parse_dtype(dtype) -> torch.dtype | None:
    """torch dtype, a name ("float16", "fp16", "bf16", ...) or None / "auto" (-> None)."""
    if dtype is None or isinstance(dtype, torch.dtype):
        if isinstance(dtype, torch.dtype) and not dtype.is_floating_point:
            raise ValueError(f"torch_dtype must be a floating dtype, got {dtype}")
        return dtype
    if isinstance(dtype, str):
        key = dtype.lower().replace("torch.", "")
        if key == AUTO:
            return None
        if key in DTYPES:
            return DTYPES[key]
        raise ValueError(f"unknown dtype {dtype!r}; accepted: {', '.join(sorted(DTYPES))}, 'auto' or a torch.dtype")
    raise TypeError(f"dtype must be a torch.dtype or a string, got {type(dtype).__name__}")


def _available(kind: str) -> tuple[bool, int]:
    """(usable, number of devices) of a device type on this machine."""
    if kind == "cpu":
        return True, 1
    if kind == "cuda":
        return torch.cuda.is_available(), torch.cuda.device_count() if torch.cuda.is_available() else 0
    if kind == "mps":
        ok = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
        return ok, int(ok)
    backend = getattr(torch, kind, None)
    if backend is not None and hasattr(backend, "is_available"):
        try:
            ok = bool(backend.is_available())
        except Exception:
            ok = False
        n = backend.device_count() if ok and hasattr(backend, "device_count") else int(ok)
        return ok, n
    return False, 0


def usable_devices() -> list[str]:
    """The device names this machine can run on, e.g. ['cpu', 'cuda:0', 'cuda:1']."""
    out = ["cpu"]
    for kind in ("cuda", "mps", "xpu"):
        ok, n = _available(kind)
        if ok:
            out += [kind] if kind == "mps" else [f"{kind}:{i}" for i in range(n)]
    return out


def parse_device(device) -> torch.device:
    """torch.device, a string ("cpu", "cuda", "cuda:1", "mps"), an int (a CUDA index) or
    "auto" / None (CUDA if available, else CPU). A device this machine does not have
    raises ValueError naming it and listing the ones it has."""
    if device is None or device == AUTO:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(device, int) and not isinstance(device, bool):
        device = torch.device("cuda", device)
    elif isinstance(device, str):
        try:
            device = torch.device(device.strip())
        except RuntimeError as e:
            raise ValueError(f"unknown device {device!r}: {e}; accepted e.g. 'cpu', 'cuda', 'cuda:0', 'mps', "
                             "'auto'") from None
    elif not isinstance(device, torch.device):
        raise TypeError(f"device must be a torch.device, a string or an int, got {type(device).__name__}")
    ok, n = _available(device.type)
    if not ok:
        raise ValueError(f"device {str(device)!r} is not available on this machine (this torch {torch.__version__} "
                         f"finds no usable {device.type.upper()} device); available: {', '.join(usable_devices())}")
    if device.index is not None and device.index >= n:
        raise ValueError(f"device {str(device)!r} does not exist: this machine has {n} {device.type} device(s); "
                         f"available: {', '.join(usable_devices())}")
    return device


@functools.lru_cache(maxsize=None)
def _cpuinfo(field: str) -> str | None:
    """The first ``field`` line of /proc/cpuinfo (None where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.split(":", 1)[0].strip().lower() == field:
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _cpu_flags() -> frozenset[str]:
    return frozenset((_cpuinfo("flags") or "").split())


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo where there is one), as benchmarks report it."""
    import platform
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bfloat16 in hardware (AVX-512 BF16 or AMX)."""
    return any(f in _cpu_flags() for f in _NATIVE_BF16_FLAGS)


def auto_dtype(device) -> torch.dtype:
    """The precision ``dtype="auto"`` means for inference on ``device``: bfloat16 on a CUDA
    GPU that supports it and on a CPU with native bf16, float32 elsewhere."""
    device = torch.device(device) if not isinstance(device, torch.device) else device
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    if device.type == "cpu":
        return torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    return torch.float32


def resolve_dtype(dtype, device) -> torch.dtype:
    """A dtype request for inference: "auto" -> :func:`auto_dtype`, None -> float32, else
    :func:`parse_dtype`; warns for bf16 on a CPU that only emulates it."""
    if isinstance(dtype, str) and dtype.strip().lower() == AUTO:
        return auto_dtype(device)
    out = parse_dtype(dtype) or torch.float32
    warn_if_emulated(out, device)
    return out


def warn_if_emulated(dtype: torch.dtype, device, stacklevel: int = 3) -> None:
    """Warn when bfloat16 is asked for on a CPU without native bf16 (emulated there)."""
    device = torch.device(device) if not isinstance(device, torch.device) else device
    if dtype == torch.bfloat16 and device.type == "cpu" and not cpu_has_native_bf16():
        warnings.warn("bfloat16 on this CPU is emulated (it has no AVX-512 BF16 or AMX instructions) and runs "
                      "many times slower than float32 (BENCHMARKS.md: bf16 on a CPU without native bf16); "
                      "use dtype='float32' or 'auto' here", FRFSRWarning, stacklevel=stacklevel)
