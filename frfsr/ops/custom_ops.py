"""The operators of :mod:`frfsr.ops` as PyTorch custom operators, namespace ``frfsr``
(reference kernel / fused kernel):

* ``frfsr::patch_match``: :func:`frfsr.ops.reference.patch_match` /
  :func:`frfsr.ops.triton.patch_match`;
* ``frfsr::window_match``: :func:`frfsr.ops.window.window_match` /
  :func:`frfsr.ops.triton.window_match`, and the native CPU kernel
  :func:`frfsr.ops.native.window_match`;
* ``frfsr::deform_conv`` and ``frfsr::deform_conv_backward``:
  :func:`frfsr.ops.reference.deform_conv` / :func:`frfsr.ops.triton.deform_conv` and the
  ``deform_conv_backward`` functions of the same modules;
* ``frfsr::ddf`` and ``frfsr::ddf_backward``: :func:`frfsr.ops.reference.ddf` /
  :func:`frfsr.ops.triton.ddf` and the ``ddf_backward`` functions of the same modules.

Every operator takes its kernel as its last argument, ``backend``: ``"reference"`` (plain
PyTorch, any device), ``"fused"`` (Triton: CUDA tensors, or CPU tensors under
``TRITON_INTERPRET=1``; on a GPU, the reference kernel for an (operator, device, dtype) whose
fused kernel failed its first-use self-check, :mod:`frfsr.ops.selfcheck`), ``"native"`` (C++ on CPU tensors where an operator has such a
kernel, the reference kernel where it has not) or ``"auto"`` (fused for CUDA tensors when
Triton imports, native for CPU tensors when built with vector instructions, reference
otherwise). The wrappers in :mod:`frfsr.ops` pass the backend that
:func:`frfsr.ops.backend_for` resolves from their ``backend`` argument, so an operator is a pure function of its
arguments: a compiled graph records the backend it was traced with, and torch.compile
retraces when the backend switch changes.

Each operator has a fake (meta) kernel, which validates the arguments (the same
``ValueError`` as the kernels) and gives the output shapes and dtypes, so torch.compile and
torch.export trace through it without running it. The operators are opaque to the
compiler: the kernels run as they are, compiled Triton or not (the Triton interpreter
cannot run on the fake tensors that tracing a ``torch.library.triton_op`` body needs).

Autograd is registered per operator, not per kernel, so all backends have one gradient
semantics:

* ``patch_match`` / ``window_match``: ``score`` is differentiable w.r.t. ``query`` and
  ``key`` through the selected key patch, by one PyTorch formula
  (:func:`frfsr.ops.reference.match_score_backward`) whichever kernel found the match;
  ``index`` is not differentiable; ``flows`` get no gradient.
* ``deform_conv``: differentiable w.r.t. ``x``, ``offset``, ``mask``, ``weight`` and
  ``bias`` by ``frfsr::deform_conv_backward`` of the same backend.
* ``ddf``: differentiable w.r.t. all three tensors by ``frfsr::ddf_backward`` of the same
  backend; the channel filter's gradient has the shape that was passed in.

Double backward is supported by neither backend of ``deform_conv`` and ``ddf`` (the
backward operators have no autograd); the matching formula is plain PyTorch.
"""
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from . import reference as _ref
from . import window as _window

BACKENDS = ("auto", "reference", "fused", "native")

_FUSED_MISSING = ("FRFSR ops backend 'fused' was requested but Triton is not importable; "
                  "install the 'fused' extra (pip install 'frfsr[fused]') or use 'reference'")


def check_backend(name: str) -> str:
    """``name`` if it is one of :data:`BACKENDS`, else ``ValueError``."""
    if name not in BACKENDS:
        raise ValueError(f"unknown ops backend {name!r}; accepted: {', '.join(BACKENDS)}")
    return name


@torch.compiler.assume_constant_result
def fused_available() -> bool:
    """True when the Triton kernels import (Triton installed)."""
    try:
        from . import triton as _fused  # noqa: F401
    except Exception:
        return False
    return True


@torch.compiler.assume_constant_result
def native_available(vectorised: bool = False) -> bool:
    """True when the native CPU kernels (:mod:`frfsr.ops.native`) are built on this machine;
    with ``vectorised``, only if the build uses AVX2 or AVX-512 ("auto" wants that: the plain
    C++ build is slower than the reference kernel)."""
    from . import native
    return native.available() and (not vectorised or native.vector_width() > 1)


def kernel_backend(backend: str, device: torch.device) -> str:
    """'reference', 'fused' or 'native': the kernels operators run for ``backend`` on
    ``device`` (an operator without a native kernel runs its reference kernel for 'native')."""
    check_backend(backend)
    if backend == "auto":
        if device.type == "cuda" and fused_available():
            return "fused"
        return "native" if device.type == "cpu" and native_available(vectorised=True) else "reference"
    if backend == "fused" and not fused_available():
        raise RuntimeError(_FUSED_MISSING)
    if backend == "native":
        if device.type != "cpu":
            raise RuntimeError(f"FRFSR ops backend 'native' runs on CPU tensors, got {device.type} tensors; "
                               "use 'auto', 'fused' or 'reference'")
        if not native_available():
            from . import native
            raise RuntimeError(f"FRFSR ops backend 'native' was requested but {native.unavailable_reason()}")
    return backend


def _fused():
    """The Triton kernels' package, looked up at every call."""
    from . import triton as fused
    return fused


def _fused_passes(operator: str, t: Tensor) -> bool:
    """False when the fused kernel of ``operator`` failed its first-use self-check for ``t``'s
    device and dtype (:mod:`frfsr.ops.selfcheck`): the reference kernel runs instead."""
    from . import selfcheck
    return selfcheck.use_fused(operator, t.device, t.dtype)


def _pairs(*values) -> List[Tuple[int, int]]:
    return [_ref.pair(v) for v in values]


def _fresh(t: Tensor) -> Tensor:
    """A contiguous tensor of ``t``'s shape and dtype (what the kernels return)."""
    return t.new_empty(t.shape)


# --------------------------------------------------------------------------------------
# patch_match, window_match
# --------------------------------------------------------------------------------------

@torch.library.custom_op("frfsr::patch_match", mutates_args=())
def patch_match(query: Tensor, key: Tensor, patch_size: int = 3, max_block_elems: Optional[int] = None,
                backend: str = "auto") -> Tuple[Tensor, Tensor]:
    """Best cosine match of every query patch among all key patches (see :mod:`frfsr.ops`)."""
    if kernel_backend(backend, query.device) == "fused" and _fused_passes("patch_match", query):
        score, index = _fused().patch_match(query, key, patch_size=patch_size)
    else:
        score, index = _ref.patch_match(query, key, patch_size=patch_size, max_block_elems=max_block_elems)
    return score.contiguous(), index.contiguous()


@patch_match.register_fake
def _patch_match_fake(query, key, patch_size=3, max_block_elems=None, backend="auto"):
    p = _ref.check_patch_match_args(query, key, patch_size)
    check_backend(backend)
    B, _, h, w = query.shape
    shape = (B, h - p + 1, w - p + 1)
    return query.new_empty(shape), query.new_empty(shape, dtype=torch.int64)


@torch.library.custom_op("frfsr::window_match", mutates_args=())
def window_match(query: Tensor, key: Tensor, flows: Tensor, cell: int, radius: int, patch_size: int = 3,
                 max_block_elems: Optional[int] = None, backend: str = "auto") -> Tuple[Tensor, Tensor]:
    """Windowed cosine matching, the fine step of the fast mode (see :mod:`frfsr.ops.window`)."""
    kernel = kernel_backend(backend, query.device)
    if kernel == "fused" and _fused_passes("window_match", query):
        score, index = _fused().window_match(query, key, flows, cell, radius, patch_size=patch_size)
    elif kernel == "native" and _window._compute_dtype(query, key) == torch.float32:
        from . import native
        score, index = native.window_match(query, key, flows, cell, radius, patch_size=patch_size)
    else:
        score, index = _window.window_match(query, key, flows, cell, radius, patch_size=patch_size,
                                            max_block_elems=max_block_elems)
    return score.contiguous(), index.contiguous()


@window_match.register_fake
def _window_match_fake(query, key, flows, cell, radius, patch_size=3, max_block_elems=None, backend="auto"):
    p, _, _ = _window.check_window_match_args(query, key, flows, cell, radius, patch_size)
    check_backend(backend)
    B, _, h, w = query.shape
    shape = (B, h - p + 1, w - p + 1)
    return query.new_empty(shape), query.new_empty(shape, dtype=torch.int64)


def _match_backward(ctx, grad_score, grad_index):
    query, key, index = ctx.saved_tensors
    if grad_score is None:
        return None, None
    return _ref.match_score_backward(grad_score, query, key, index, ctx.patch_size, ctx.needs_input_grad[:2])


def _patch_match_setup(ctx, inputs, output):
    query, key, patch_size = inputs[:3]
    ctx.save_for_backward(query, key, output[1])
    ctx.patch_size = patch_size


def _patch_match_backward(ctx, grad_score, grad_index):
    return (*_match_backward(ctx, grad_score, grad_index), None, None, None)


def _window_match_setup(ctx, inputs, output):
    query, key = inputs[:2]
    ctx.save_for_backward(query, key, output[1])
    ctx.patch_size = inputs[5]


def _window_match_backward(ctx, grad_score, grad_index):
    return (*_match_backward(ctx, grad_score, grad_index), None, None, None, None, None, None)


patch_match.register_autograd(_patch_match_backward, setup_context=_patch_match_setup)
window_match.register_autograd(_window_match_backward, setup_context=_window_match_setup)


# --------------------------------------------------------------------------------------
# deform_conv
# --------------------------------------------------------------------------------------

@torch.library.custom_op("frfsr::deform_conv", mutates_args=())
def deform_conv(x: Tensor, offset: Tensor, mask: Tensor, weight: Tensor, bias: Optional[Tensor],
                stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int],
                backend: str = "auto") -> Tensor:
    """Modulated deformable convolution (see :mod:`frfsr.ops`); stride, padding and
    dilation are (h, w) pairs."""
    st, pd, dl = _pairs(stride, padding, dilation)
    if kernel_backend(backend, x.device) == "fused" and _fused_passes("deform_conv", x):
        out = _fused().deform_conv(x, offset, mask, weight, bias, stride=st, padding=pd, dilation=dl)
    else:
        out = _ref.deform_conv(x, offset, mask, weight, bias, stride=st, padding=pd, dilation=dl)
    return out.contiguous()


@deform_conv.register_fake
def _deform_conv_fake(x, offset, mask, weight, bias, stride, padding, dilation, backend="auto"):
    _ref.check_deform_conv_args(x, offset, mask, weight, bias, stride, dilation, padding)
    check_backend(backend)
    return x.new_empty((x.shape[0], weight.shape[0], *offset.shape[-2:]))


@torch.library.custom_op("frfsr::deform_conv_backward", mutates_args=())
def deform_conv_backward(grad: Tensor, x: Tensor, offset: Tensor, mask: Tensor, weight: Tensor,
                         bias: Optional[Tensor], stride: Sequence[int], padding: Sequence[int],
                         dilation: Sequence[int], needs: Sequence[bool], backend: str = "auto") -> List[Tensor]:
    """Gradients of ``frfsr::deform_conv`` w.r.t. (x, offset, mask, weight, bias): the
    gradients whose flag in ``needs`` is set (the bias's only with a bias), in that order."""
    st, pd, dl = _pairs(stride, padding, dilation)
    needs = _deform_needs(needs, bias)
    if kernel_backend(backend, x.device) == "fused" and _fused_passes("deform_conv", x):
        grads = _fused().deform_conv_backward(grad, x, offset, mask, weight, bias, st, pd, dl, needs)
    else:
        grads = _ref.deform_conv_backward(grad, x, offset, mask, weight, bias, st, pd, dl, needs)
    return [g.contiguous() for g, n in zip(grads, needs) if n]


def _deform_needs(needs, bias) -> Tuple[bool, ...]:
    if len(needs) != 5:
        raise ValueError(f"deform_conv_backward needs five flags (x, offset, mask, weight, bias), got {list(needs)}")
    needs = tuple(bool(n) for n in needs)
    return needs[:4] + (needs[4] and bias is not None,)


@deform_conv_backward.register_fake
def _deform_conv_backward_fake(grad, x, offset, mask, weight, bias, stride, padding, dilation, needs, backend="auto"):
    _ref.check_deform_conv_args(x, offset, mask, weight, bias, stride, dilation, padding)
    check_backend(backend)
    return [_fresh(t) for t, n in zip((x, offset, mask, weight, bias), _deform_needs(needs, bias)) if n]


def _deform_conv_setup(ctx, inputs, output):
    x, offset, mask, weight, bias, stride, padding, dilation, backend = inputs
    ctx.save_for_backward(x, offset, mask, weight, bias)
    ctx.conf = (stride, padding, dilation, backend)


def _deform_conv_autograd(ctx, grad):
    x, offset, mask, weight, bias = ctx.saved_tensors
    needs = _deform_needs(ctx.needs_input_grad[:5], bias)
    grads = iter(torch.ops.frfsr.deform_conv_backward(grad, x, offset, mask, weight, bias, *ctx.conf[:3],
                                                      list(needs), ctx.conf[3]))
    return (*(next(grads) if n else None for n in needs), None, None, None, None)


deform_conv.register_autograd(_deform_conv_autograd, setup_context=_deform_conv_setup)


# --------------------------------------------------------------------------------------
# ddf
# --------------------------------------------------------------------------------------

@torch.library.custom_op("frfsr::ddf", mutates_args=())
def ddf(x: Tensor, channel_filter: Tensor, spatial_filter: Tensor, kernel_size: int = 3, dilation: int = 1,
        backend: str = "auto") -> Tensor:
    """Decoupled dynamic filter, 'mul' combine (see :mod:`frfsr.ops`)."""
    if kernel_backend(backend, x.device) == "fused" and _fused_passes("ddf", x):
        out = _fused().ddf(x, channel_filter, spatial_filter, kernel_size=kernel_size, dilation=dilation)
    else:
        out = _ref.ddf(x, channel_filter, spatial_filter, kernel_size=kernel_size, dilation=dilation)
    return out.contiguous()


@ddf.register_fake
def _ddf_fake(x, channel_filter, spatial_filter, kernel_size=3, dilation=1, backend="auto"):
    _ref.check_ddf_args(x, channel_filter, spatial_filter, int(kernel_size), int(dilation))
    check_backend(backend)
    return _fresh(x)


@torch.library.custom_op("frfsr::ddf_backward", mutates_args=())
def ddf_backward(grad: Tensor, x: Tensor, channel_filter: Tensor, spatial_filter: Tensor, kernel_size: int,
                 dilation: int, needs: Sequence[bool], backend: str = "auto") -> List[Tensor]:
    """Gradients of ``frfsr::ddf`` w.r.t. (x, channel_filter, spatial_filter): those whose
    flag in ``needs`` is set, in that order, each of its input's shape and dtype."""
    k, d = int(kernel_size), int(dilation)
    needs = _ddf_needs(needs)
    cf = _ref.check_ddf_args(x, channel_filter, spatial_filter, k, d)
    if kernel_backend(backend, x.device) == "fused" and _fused_passes("ddf", x):
        gx, gcf, gsf = _fused().ddf_backward(grad, x, cf, spatial_filter, k, d, needs)
    else:
        dtype = _ref._compute_dtype(x, cf, spatial_filter)
        gx, gcf, gsf = _ref.ddf_backward(grad.to(dtype), x.to(dtype).contiguous(), cf.to(dtype).contiguous(),
                                         spatial_filter.to(dtype).contiguous(), k, d, needs)
    out = []
    for g, t, n in zip((gx, gcf, gsf), (x, channel_filter, spatial_filter), needs):
        if n:
            out.append(g.reshape(t.shape).to(t.dtype).contiguous())
    return out


def _ddf_needs(needs) -> Tuple[bool, ...]:
    if len(needs) != 3:
        raise ValueError(f"ddf_backward needs three flags (x, channel_filter, spatial_filter), got {list(needs)}")
    return tuple(bool(n) for n in needs)


@ddf_backward.register_fake
def _ddf_backward_fake(grad, x, channel_filter, spatial_filter, kernel_size, dilation, needs, backend="auto"):
    _ref.check_ddf_args(x, channel_filter, spatial_filter, int(kernel_size), int(dilation))
    check_backend(backend)
    return [_fresh(t) for t, n in zip((x, channel_filter, spatial_filter), _ddf_needs(needs)) if n]


def _ddf_setup(ctx, inputs, output):
    x, channel_filter, spatial_filter, kernel_size, dilation, backend = inputs
    ctx.save_for_backward(x, channel_filter, spatial_filter)
    ctx.conf = (kernel_size, dilation, backend)


def _ddf_autograd(ctx, grad):
    x, cf, sf = ctx.saved_tensors
    needs = _ddf_needs(ctx.needs_input_grad[:3])
    k, d, backend = ctx.conf
    grads = iter(torch.ops.frfsr.ddf_backward(grad, x, cf, sf, k, d, list(needs), backend))
    return (*(next(grads) if n else None for n in needs), None, None, None)


ddf.register_autograd(_ddf_autograd, setup_context=_ddf_setup)
