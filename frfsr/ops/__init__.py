"""Low-level operators, each a PyTorch custom operator with a reference and a fused kernel.

Every operator is registered with :mod:`torch.library` in the namespace ``frfsr``
(``torch.ops.frfsr.patch_match``, ``window_match``, ``deform_conv``, ``ddf``, and the backward
operators ``deform_conv_backward`` and ``ddf_backward``; :mod:`frfsr.ops.custom_ops`). The
functions below keep the plain signatures and call them. Each operator has

* a reference kernel in plain PyTorch (:mod:`frfsr.ops.reference`, :mod:`frfsr.ops.window`,
  whose functions also work on their own, differentiable by autograd): CPU and GPU, the
  ground truth, and the CUDA fallback;
* a fused Triton kernel (:mod:`frfsr.ops.triton`): CUDA tensors, or CPU tensors under the
  Triton interpreter (``TRITON_INTERPRET=1`` set before Triton is imported);
* ``window_match`` also has a native CPU kernel (:mod:`frfsr.ops.native`: C++ built on first
  use with the machine's compiler and cached);
* a fake (meta) kernel, which validates the arguments and gives the output shapes, so
  ``torch.compile`` traces a model with these operators in one graph (``fullgraph=True``);
  the operators themselves are opaque to the compiler. (:func:`fast_patch_match` sizes its
  search from the data, which costs a graph break; exact matching does not);
* one autograd formula for both kernels (below).

Backend choice: every function below takes ``backend`` ("reference", "fused", "native",
"auto" or None). None and "auto" mean the environment variable ``FRFSR_OPS_BACKEND`` (same
values) where it is set, else ``"auto"``: fused kernels for CUDA tensors when Triton imports
(each checked against the reference on a small input before its first use per device and
dtype; one that fails runs the reference kernel instead, with a warning:
:mod:`frfsr.ops.selfcheck`, shown by ``frfsr info``; ``FRFSR_FUSED_SELFCHECK=0`` turns the
check off); for CPU tensors the native kernel where there is one and it is built with vector
instructions (AVX2 or AVX-512; the plain C++ build is slower than the reference); the
reference kernels otherwise. A model holds its choice (:meth:`frfsr.FRFSR.set_ops_backend`)
and passes it to every operator call; nothing is process-wide.

The backend is resolved when a function below is called and handed to the operator as its
last argument, so a ``torch.compile``-d caller is retraced when the choice changes.
``"fused"`` without Triton raises ``RuntimeError``; the fused kernels raise it for CPU
tensors outside the interpreter. ``"native"`` runs the native kernel where an operator has
one (other operators, and float64 inputs, run the reference kernel) and raises
``RuntimeError`` for CUDA tensors or where it cannot be built (the message says why).

Gradients (the same for every backend)
--------------------------------------
``patch_match``, ``window_match``
    ``score`` is differentiable w.r.t. ``query`` and ``key`` through the selected key patch
    (the selection held fixed): one PyTorch formula,
    :func:`frfsr.ops.reference.match_score_backward`, whichever kernel matched. ``index`` is
    not differentiable; a ``window_match`` position without candidates (index -1) gets no
    gradient.
``deform_conv``
    Differentiable w.r.t. ``x``, ``offset``, ``mask``, ``weight`` and ``bias``, by the backward
    kernel of the same backend (explicit formulas, chunked like the forward pass, in the
    reference; Triton kernels in the fused one).
``ddf``
    Differentiable w.r.t. ``x`` and both filters, likewise.

Double backward is not supported for ``deform_conv`` and ``ddf``.

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
    ``mask`` (B, G*K, Ho, Wo); ``weight`` (Cout, Cin, kh, kw); ``stride``, ``padding``,
    ``dilation``: ints or (h, w) pairs. The output grid (Ho, Wo) is taken from ``offset``,
    independent of the input size.

``ddf(x, channel_filter, spatial_filter, kernel_size=3, dilation=1)``
    Decoupled dynamic filter, 'mul' combine: out[b,c,p] = sum_t x[b,c,p+d_t] *
    spatial_filter[b,t,p] * channel_filter[b,c,t], zero padding, t = i*k + j.
"""
from __future__ import annotations

import os

import torch

from . import reference
from .custom_ops import BACKENDS, check_backend, fused_available, kernel_backend


def requested_backend(name: str | None = None) -> str:
    """The backend a call asks for: ``name`` ('auto', 'reference', 'fused' or 'native',
    checked); None or 'auto': ``FRFSR_OPS_BACKEND`` where it is set, else 'auto'."""
    if name is not None and check_backend(name) != "auto":
        return name
    return check_backend(os.environ.get("FRFSR_OPS_BACKEND", "auto").strip().lower() or "auto")


def backend_for(t: torch.Tensor, backend: str | None = None) -> str:
    """'reference', 'fused' or 'native': the kernels an operator call on ``t``'s device runs
    for ``backend`` (see :func:`requested_backend`)."""
    return kernel_backend(requested_backend(backend), t.device)


def patch_match(query, key, patch_size: int = 3, max_block_elems: int | None = None, *, backend: str | None = None):
    return torch.ops.frfsr.patch_match(query, key, int(patch_size), max_block_elems, backend_for(query, backend))


def window_match(query, key, flows, cell: int, radius: int, patch_size: int = 3, max_block_elems: int | None = None,
                 *, backend: str | None = None):
    return torch.ops.frfsr.window_match(query, key, flows, int(cell), int(radius), int(patch_size), max_block_elems,
                                        backend_for(query, backend))


def deform_conv(x, offset, mask, weight, bias=None, stride=1, padding=1, dilation=1, *, backend: str | None = None):
    return torch.ops.frfsr.deform_conv(x, offset, mask, weight, bias, reference.pair(stride, "stride"),
                                       reference.pair(padding, "padding"), reference.pair(dilation, "dilation"),
                                       backend_for(x, backend))


def ddf(x, channel_filter, spatial_filter, kernel_size: int = 3, dilation: int = 1, *, backend: str | None = None):
    return torch.ops.frfsr.ddf(x, channel_filter, spatial_filter, int(kernel_size), int(dilation),
                               backend_for(x, backend))


from .fast_match import FAST_MATCH_MIN_PAIRS, MATCH_MODES, fast_patch_match  # noqa: E402

__all__ = ["patch_match", "window_match", "fast_patch_match", "MATCH_MODES", "FAST_MATCH_MIN_PAIRS", "deform_conv",
           "ddf", "requested_backend", "backend_for", "fused_available", "BACKENDS", "reference"]
