"""Fused decoupled dynamic filter (DDF, 'mul' combine) in Triton, forward and backward.

    out[b,c,y,x] = sum_{t=i*k+j} x[b, c, y+(i-k//2)*d, x+(j-k//2)*d] * S[b,t,y,x] * Cf[b,c,t]

with zero padding, S = spatial_filter (B, k*k, H, W), Cf = channel_filter (B, C, k*k) (or
(B, C, k, k)).

Kernels
-------
``_ddf_fwd_kernel``
    One program = a tile of ``BLOCK_C`` channels x ``BLOCK_P`` pixels of one sample; a
    single pass over the k*k taps loads the shifted input tile, the spatial filter row and
    the channel filter column and accumulates in registers; one store of the output.
``_ddf_bwd_x_kernel``
    Gather formulation of the transposed filter (no atomics):
    ``gx[c,q] = sum_t go[c, q - d_t] * S[t, q - d_t] * Cf[c, t]``.
``_ddf_bwd_filters_kernel``
    One program = ``BLOCK_P`` pixels of one sample, looping over taps and channel chunks.
    With ``P = go[c,p] * x[c,p+d_t]`` it reduces ``gS[t,p] = sum_c P * Cf[c,t]`` fully in
    registers and ``gCf[c,t] = sum_p P * S[t,p]`` over its pixel tile, writing that partial
    to a (n_pixel_tiles, B, C, k*k) fp32 buffer that is summed in PyTorch (deterministic;
    ``cdiv(H*W, BLOCK_P) * B * C * k*k * 4`` bytes).

All arithmetic is fp32; results come back in the dtype of the corresponding input.
Double backward is not supported.
"""
from __future__ import annotations


import torch
import triton
import triton.language as tl

from ..reference import check_ddf_args
from . import _device
from ._device import is_interpreted as _is_interpreted


# Sizes and batch/channel/row strides change with the input: do not let Triton specialise on
# them (value 1 / divisibility by 16), or every new size would recompile. Pixel and tap
# strides stay specialised.
_DNS = ["B", "C", "H", "W", "dil", "s_xb", "s_xc", "s_xh", "s_cb", "s_cc", "s_sb", "s_st", "s_sh",
        "s_yb", "s_yc", "s_yh", "s_gb", "s_gc", "s_gh"]


def _jit(fn):
    names = set(fn.__code__.co_varnames[:fn.__code__.co_argcount])
    return triton.jit(fn, do_not_specialize=[n for n in _DNS if n in names])


@_jit
def _ddf_fwd_kernel(
    x_ptr, cf_ptr, sf_ptr, out_ptr,
    C, H, W, dil,
    s_xb, s_xc, s_xh, s_xw,
    s_cb, s_cc, s_ct,
    s_sb, s_st, s_sh, s_sw,
    s_yb, s_yc, s_yh, s_yw,
    KS: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    p_mask = offs_p < H * W
    y = offs_p // W
    x = offs_p % W
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = offs_c < C
    x_base = x_ptr + b * s_xb + offs_c[:, None] * s_xc
    acc = tl.zeros([BLOCK_C, BLOCK_P], tl.float32)
    for t in range(KS * KS):
        yy = y + (t // KS - KS // 2) * dil
        xx = x + (t % KS - KS // 2) * dil
        valid = p_mask & (yy >= 0) & (yy < H) & (xx >= 0) & (xx < W)
        xv = tl.load(x_base + (yy * s_xh + xx * s_xw)[None, :],
                     mask=c_mask[:, None] & valid[None, :], other=0.0).to(tl.float32)
        s = tl.load(sf_ptr + b * s_sb + t * s_st + y * s_sh + x * s_sw, mask=p_mask, other=0.0).to(tl.float32)
        cf = tl.load(cf_ptr + b * s_cb + offs_c * s_cc + t * s_ct, mask=c_mask, other=0.0).to(tl.float32)
        acc += xv * s[None, :] * cf[:, None]
    tl.store(out_ptr + b * s_yb + offs_c[:, None] * s_yc + (y * s_yh + x * s_yw)[None, :],
             acc.to(out_ptr.dtype.element_ty), mask=c_mask[:, None] & p_mask[None, :])


@_jit
def _ddf_bwd_x_kernel(
    go_ptr, cf_ptr, sf_ptr, gx_ptr,
    C, H, W, dil,
    s_gb, s_gc, s_gh, s_gw,
    s_cb, s_cc, s_ct,
    s_sb, s_st, s_sh, s_sw,
    s_xb, s_xc, s_xh, s_xw,
    KS: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    p_mask = offs_p < H * W
    y = offs_p // W
    x = offs_p % W
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = offs_c < C
    go_base = go_ptr + b * s_gb + offs_c[:, None] * s_gc
    acc = tl.zeros([BLOCK_C, BLOCK_P], tl.float32)
    for t in range(KS * KS):
        # output pixel p = q - d_t read x at q
        yy = y - (t // KS - KS // 2) * dil
        xx = x - (t % KS - KS // 2) * dil
        valid = p_mask & (yy >= 0) & (yy < H) & (xx >= 0) & (xx < W)
        g = tl.load(go_base + (yy * s_gh + xx * s_gw)[None, :],
                    mask=c_mask[:, None] & valid[None, :], other=0.0).to(tl.float32)
        s = tl.load(sf_ptr + b * s_sb + t * s_st + yy * s_sh + xx * s_sw, mask=valid, other=0.0).to(tl.float32)
        cf = tl.load(cf_ptr + b * s_cb + offs_c * s_cc + t * s_ct, mask=c_mask, other=0.0).to(tl.float32)
        acc += g * s[None, :] * cf[:, None]
    tl.store(gx_ptr + b * s_xb + offs_c[:, None] * s_xc + (y * s_xh + x * s_xw)[None, :],
             acc.to(gx_ptr.dtype.element_ty), mask=c_mask[:, None] & p_mask[None, :])


@_jit
def _ddf_bwd_filters_kernel(
    go_ptr, x_ptr, cf_ptr, sf_ptr, gsf_ptr, gcf_part_ptr,
    B, C, H, W, dil,
    s_gb, s_gc, s_gh, s_gw,
    s_xb, s_xc, s_xh, s_xw,
    s_cb, s_cc, s_ct,
    s_sb, s_st, s_sh, s_sw,
    KS: tl.constexpr, NEED_SF: tl.constexpr, NEED_CF: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    pid_p = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    HW = H * W
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    p_mask = offs_p < HW
    y = offs_p // W
    x = offs_p % W
    ar_c = tl.arange(0, BLOCK_C)
    go_pix = (y * s_gh + x * s_gw)[None, :]
    # partial channel-filter gradients: (n_pixel_tiles, B, C, KS*KS), contiguous
    part_base = gcf_part_ptr + (pid_p * B + b) * C * (KS * KS)
    for t in range(KS * KS):  # runtime loop: unrolling k*k copies of the channel loop compiles slowly
        yy = y + (t // KS - KS // 2) * dil
        xx = x + (t % KS - KS // 2) * dil
        valid = p_mask & (yy >= 0) & (yy < H) & (xx >= 0) & (xx < W)
        x_pix = (yy * s_xh + xx * s_xw)[None, :]
        s = tl.load(sf_ptr + b * s_sb + t * s_st + y * s_sh + x * s_sw, mask=p_mask, other=0.0).to(tl.float32)
        acc_s = tl.zeros([BLOCK_P], tl.float32)
        for c0 in range(0, C, BLOCK_C):
            offs_c = c0 + ar_c
            c_mask = offs_c < C
            g = tl.load(go_ptr + b * s_gb + offs_c[:, None] * s_gc + go_pix,
                        mask=c_mask[:, None] & p_mask[None, :], other=0.0).to(tl.float32)
            xv = tl.load(x_ptr + b * s_xb + offs_c[:, None] * s_xc + x_pix,
                         mask=c_mask[:, None] & valid[None, :], other=0.0).to(tl.float32)
            prod = g * xv
            if NEED_SF:
                cf = tl.load(cf_ptr + b * s_cb + offs_c * s_cc + t * s_ct, mask=c_mask, other=0.0).to(tl.float32)
                acc_s += tl.sum(prod * cf[:, None], axis=0)
            if NEED_CF:
                tl.store(part_base + offs_c * (KS * KS) + t, tl.sum(prod * s[None, :], axis=1), mask=c_mask)
        if NEED_SF:
            # gsf is a contiguous (B, KS*KS, H, W) buffer
            tl.store(gsf_ptr + (b * (KS * KS) + t) * HW + offs_p, acc_s, mask=p_mask)


# Compiled ahead of time for NVIDIA and AMD targets by frfsr.ops.triton.aot (BENCHMARKS.md: registers,
# spills and shared memory per target; the filter-gradient kernel spills a few bytes on sm_80 only).
_BLOCK_C, _BLOCK_P, _WARPS = 16, 128, 8          # forward and grad_x
_F_BLOCK_C, _F_BLOCK_P, _F_WARPS = 16, 128, 4    # filter gradients


def _forward(x, cf, sf, k, dil):
    B, C, H, W = x.shape
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    BLOCK_C, BLOCK_P = _BLOCK_C, _BLOCK_P
    grid = (triton.cdiv(H * W, BLOCK_P), triton.cdiv(C, BLOCK_C), B)
    _check_index_range(x, cf, sf, out)
    if out.numel():
        with _device.device_ctx(x):
            _ddf_fwd_kernel[grid](
                x, cf, sf, out, C, H, W, dil,
                *x.stride(), *cf.stride(), *sf.stride(), *out.stride(),
                KS=k, BLOCK_C=BLOCK_C, BLOCK_P=BLOCK_P, num_warps=_WARPS)
    return out


def ddf_backward(go: torch.Tensor, x: torch.Tensor, cf: torch.Tensor, sf: torch.Tensor, k: int, dil: int,
                 needs=(True, True, True)):
    """Gradients w.r.t. ``x`` (B, C, H, W), ``cf`` (B, C, k*k) and ``sf`` (B, k*k, H, W) for the
    output gradient ``go`` (any strides), each in its input's dtype; None where ``needs``
    (three flags) is false. The backward kernels of the module docstring."""
    need_x, need_cf, need_sf = (bool(n) for n in needs)
    B, C, H, W = x.shape
    HW = H * W
    gx = gcf = gsf = None
    if x.numel() == 0:
        return (torch.zeros_like(x) if need_x else None, torch.zeros_like(cf) if need_cf else None,
                torch.zeros_like(sf) if need_sf else None)
    BLOCK_C, BLOCK_P = _BLOCK_C, _BLOCK_P
    _check_index_range(go, x, cf, sf)
    with _device.device_ctx(x):
        if need_x:
            gx = torch.empty(B, C, H, W, device=x.device, dtype=x.dtype)
            grid = (triton.cdiv(HW, BLOCK_P), triton.cdiv(C, BLOCK_C), B)
            _ddf_bwd_x_kernel[grid](
                go, cf, sf, gx, C, H, W, dil,
                *go.stride(), *cf.stride(), *sf.stride(), *gx.stride(),
                KS=k, BLOCK_C=BLOCK_C, BLOCK_P=BLOCK_P, num_warps=_WARPS)
        if need_cf or need_sf:
            n_pt = triton.cdiv(HW, _F_BLOCK_P)
            gsf32 = torch.empty(B, k * k, H, W, device=x.device, dtype=torch.float32) if need_sf else None
            part = torch.empty(n_pt, B, C, k * k, device=x.device, dtype=torch.float32) if need_cf else None
            dummy = gsf32 if gsf32 is not None else part
            _ddf_bwd_filters_kernel[(n_pt, B)](
                go, x, cf, sf, gsf32 if need_sf else dummy, part if need_cf else dummy,
                B, C, H, W, dil,
                *go.stride(), *x.stride(), *cf.stride(), *sf.stride(),
                KS=k, NEED_SF=need_sf, NEED_CF=need_cf,
                BLOCK_C=_F_BLOCK_C, BLOCK_P=_F_BLOCK_P, num_warps=_F_WARPS)
            if need_sf:
                gsf = gsf32.to(sf.dtype)
            if need_cf:
                gcf = part.sum(0).to(cf.dtype)
    return gx, gcf, gsf


def ddf(x: torch.Tensor, channel_filter: torch.Tensor, spatial_filter: torch.Tensor,
        kernel_size: int = 3, dilation: int = 1) -> torch.Tensor:
    """Decoupled dynamic filter ('mul' combine), the fused Triton forward.

    ``x`` (B, C, H, W), ``channel_filter`` (B, C, k*k) or (B, C, k, k), ``spatial_filter``
    (B, k*k, H, W). Returns (B, C, H, W) in ``x``'s dtype. Not differentiable by itself:
    ``frfsr::ddf`` (:mod:`frfsr.ops.custom_ops`) pairs it with :func:`ddf_backward`.
    """
    k, d = int(kernel_size), int(dilation)
    cf = check_ddf_args(x, channel_filter, spatial_filter, k, d)
    _check_device(x)
    return _forward(x, cf, spatial_filter, k, d)


def _check_device(x: torch.Tensor) -> None:
    if not _device.on_gpu(x) and not _is_interpreted(_ddf_fwd_kernel):
        raise RuntimeError("frfsr.ops.triton.ddf needs CUDA tensors (or TRITON_INTERPRET=1 for CPU tensors)")


def _check_index_range(*ts) -> None:
    """The kernels index within one batch sample with 32-bit offsets (the batch offset and the
    filter-gradient buffers are 64-bit): refuse a sample spanning 2^31 elements or more (the
    pipeline's largest, 64 channels at 16 MP, spans 1.07e9)."""
    for t in ts:
        if t.dim() and t.numel():
            span = 1 + sum((n - 1) * abs(st) for n, st in zip(t.shape[1:], t.stride()[1:]))
            if span >= 2 ** 31:
                raise ValueError(f"frfsr.ops.triton.ddf: one sample of a {tuple(t.shape)} tensor spans {span} "
                                 "elements, beyond the kernels' 32-bit indexing (2^31); split the batch or the image")
