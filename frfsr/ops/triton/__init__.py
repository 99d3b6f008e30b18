"""Fused Triton implementations of :mod:`frfsr.ops` (same signatures and semantics as
:mod:`frfsr.ops.reference`).

* :func:`patch_match` -- blocked ``tl.dot`` of normalised query patches against normalised
  key patches with a running max/argmax in registers (no similarity matrix in memory).
* :func:`deform_conv` -- modulated deformable convolution as an implicit GEMM (bilinear
  sampling * mask feeding ``tl.dot``, no im2col buffer); Triton backward kernels for the
  input, offsets, mask, weight and bias.
* :func:`window_match` -- the windowed search of the fast matching mode: per cell and
  candidate flow, an implicit-GEMM ``tl.dot`` of the cell's query patches with a square of
  key patches read channels-last from the feature maps, folded into a running max.
* :func:`ddf` -- decoupled dynamic filter in one pass per output tile; Triton backward
  kernels for the input and both filters.

The functions here compute forward passes and do not record autograd;
:func:`deform_conv_backward` and :func:`ddf_backward` are the backward passes, which the
custom operators ``frfsr::deform_conv`` / ``frfsr::ddf`` register as their gradients. The matching
kernels have no backward of their own: the custom operators ``frfsr::patch_match`` and
``frfsr::window_match`` differentiate the score with one PyTorch formula for both backends
(:mod:`frfsr.ops.custom_ops`).

The kernels run on CUDA tensors, or on CPU tensors under the Triton interpreter
(``TRITON_INTERPRET=1`` set before Triton is imported). Importing this package raises
:class:`ImportError` when Triton is not installed (or fails to import).
"""
from __future__ import annotations

try:
    import triton  # noqa: F401
    import triton.language  # noqa: F401
except Exception as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "frfsr.ops.triton needs Triton (pip install 'frfsr[fused]'); "
        f"importing it failed: {type(exc).__name__}: {exc}") from exc

from .ddf import ddf, ddf_backward
from .deform_conv import deform_conv, deform_conv_backward
from .patch_match import patch_match
from .window_match import window_match

__all__ = ["patch_match", "window_match", "deform_conv", "deform_conv_backward", "ddf", "ddf_backward"]
