"""Low-level operators with one dispatch point each.

Every operator has a plain-PyTorch reference implementation (``frfsr.ops.reference``),
which runs on CPU and GPU, supports autograd and is the ground truth, and optionally a
fused Triton implementation (``frfsr.ops.triton``) used on CUDA tensors.

Backend choice, from highest to lowest priority:

* ``frfsr.ops.use_backend("reference" | "fused" | "auto")`` (also a context manager),
* the environment variable ``FRFSR_OPS_BACKEND`` (same values),
* ``"auto"``: fused kernels for CUDA tensors when Triton imports, reference otherwise.

Operators
---------
``patch_match(query, key, patch_size=3, max_block_elems=None) -> (score, index)``
    Cosine matching of every ``patch_size`` x ``patch_size`` patch of ``query`` (B, C, h, w)
    against every patch of ``key`` (B, C, H, W), both already L2-normalised per pixel over
    channels. Key patches are divided by their L2 norm + 1e-5, the best correlation is
    divided by the query patch's L2 norm + 1e-5. Returns ``score`` (B, h-p+1, w-p+1) float
    and ``index`` (B, h-p+1, w-p+1) int64, a row-major index into the (H-p+1, W-p+1) grid of
    key patches; ties keep the lowest index. Never materialises the full similarity matrix.

``window_match(query, key, flows, cell, radius, patch_size=3, max_block_elems=None) -> (score, index)``
    ``patch_match`` restricted to windows: every query patch is compared with the key
    patches within ``radius`` of its own position moved by each candidate flow of its
    ``cell`` x ``cell`` cell (``flows`` (B, cells_y, cells_x, M, 2) integer (dy, dx)); same
    cosine, same tie rule; reference in :mod:`frfsr.ops.window`. It is the fine step of
    :func:`fast_patch_match` (:mod:`frfsr.ops.fast_match`), the coarse-to-fine matching with
    ``patch_match``'s signature and outputs whose cost grows linearly with the query.

``deform_conv(x, offset, mask, weight, bias=None, stride=1, padding=1, dilation=1)``
    Modulated deformable convolution (DCNv2). ``x`` (B, Cin, Hin, Win) of any size;
    ``offset`` (B, 2*G*K, Ho, Wo) holding (dy, dx) per deformable group and tap;
    ``mask`` (B, G*K, Ho, Wo); ``weight`` (Cout, Cin, kh, kw). The output grid (Ho, Wo) is
    taken from ``offset``, independent of the input size.

``ddf(x, channel_filter, spatial_filter, kernel_size=3, dilation=1)``
    Decoupled dynamic filter, 'mul' combine: out[b,c,p] = sum_t x[b,c,p+d_t] *
    spatial_filter[b,t,p] * channel_filter[b,c,t], zero padding, t = i*k + j.
"""
from __future__ import annotations

import contextlib
import os

import torch

from . import reference
from . import window as _window

_BACKENDS = ("auto", "reference", "fused")
_forced: str | None = None


def _check_backend(name: str) -> str:
    if name not in _BACKENDS:
        raise ValueError(f"unknown ops backend {name!r}; accepted: {', '.join(_BACKENDS)}")
    return name


def get_backend() -> str:
    """The requested backend: 'auto', 'reference' or 'fused'."""
    if _forced is not None:
        return _forced
    return _check_backend(os.environ.get("FRFSR_OPS_BACKEND", "auto").strip().lower() or "auto")


class use_backend(contextlib.ContextDecorator):
    """Force a backend globally, or for a ``with`` block."""

    def __init__(self, name: str):
        global _forced
        self._prev = _forced
        _forced = _check_backend(name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        global _forced
        _forced = self._prev
        return False


def fused_available() -> bool:
    """True when the Triton kernels import (Triton installed)."""
    try:
        from . import triton as _fused  # noqa: F401
    except Exception:
        return False
    return True


def _impl(name: str, t: torch.Tensor, ref_module=reference):
    backend = get_backend()
    if backend == "reference":
        return getattr(ref_module, name)
    if backend == "fused" or (t.is_cuda and fused_available()):
        if backend == "fused" and not fused_available():
            raise RuntimeError("FRFSR ops backend 'fused' was requested but Triton is not importable; "
                               "install the 'fused' extra (pip install 'frfsr[fused]') or use 'reference'")
        from . import triton as fused
        return getattr(fused, name)
    return getattr(ref_module, name)


def patch_match(query, key, patch_size: int = 3, max_block_elems: int | None = None):
    return _impl("patch_match", query)(query, key, patch_size=patch_size, max_block_elems=max_block_elems)


def window_match(query, key, flows, cell: int, radius: int, patch_size: int = 3, max_block_elems: int | None = None):
    return _impl("window_match", query, _window)(query, key, flows, cell, radius, patch_size=patch_size,
                                                  max_block_elems=max_block_elems)


def deform_conv(x, offset, mask, weight, bias=None, stride: int = 1, padding: int = 1, dilation: int = 1):
    return _impl("deform_conv", x)(x, offset, mask, weight, bias, stride=stride, padding=padding, dilation=dilation)


def ddf(x, channel_filter, spatial_filter, kernel_size: int = 3, dilation: int = 1):
    return _impl("ddf", x)(x, channel_filter, spatial_filter, kernel_size=kernel_size, dilation=dilation)


from .fast_match import FAST_MATCH_MIN_PAIRS, MATCH_MODES, fast_patch_match  # noqa: E402

__all__ = ["patch_match", "window_match", "fast_patch_match", "MATCH_MODES", "FAST_MATCH_MIN_PAIRS", "deform_conv", "ddf", "use_backend", "get_backend", "fused_available", "reference"]
