"""Fused modulated deformable convolution (DCNv2) in Triton, forward and backward.

Notation: ``x`` (B, Cin, Hin, Win), ``offset`` (B, 2*G*K, Ho, Wo) with
``offset[:, 2*(g*K+k)] = dy`` and ``offset[:, 2*(g*K+k)+1] = dx``, ``mask`` (B, G*K, Ho, Wo),
``weight`` (Cout, Cin, kh, kw), K = kh*kw, tap k = i*kw + j, Cg = Cin // G and input channel
c belongs to group c // Cg. Output pixel (yo, xo), tap (i, j) samples ``x`` bilinearly at

    y = yo*stride - padding + i*dilation + dy,   x = xo*stride - padding + j*dilation + dx

with zero padding (each of the four corners outside the image contributes 0), and

    out[b, o, yo, xo] = bias[o] + sum_{c, k} weight[o, c, k] * mask[b, g(c)K+k] * sample.

Kernels
-------
``_dcn_fwd_kernel``
    Implicit GEMM. A program owns a tile of ``BLOCK_P`` output pixels x ``BLOCK_O`` output
    channels of one sample. The reduction over (group, tap, channel) is ordered as
    ``for g: for k: <sampling positions, bilinear weights * mask for the pixel tile>;
    for channel chunk: gather 4 corners -> column tile [BLOCK_P, BLOCK_C] in registers ->
    tl.dot with the weight tile [BLOCK_C, BLOCK_O]``. No im2col buffer exists in memory.
    ``x`` is read through a channels-last view so each corner gather is contiguous in C.
    Where a group has at most ``BLOCK_C / 2`` channels (8 at relu1_1, 8 groups of 64), a
    column tile holds two taps (``PAIR``): half the reduction steps, none of them half
    padding (bf16 / fp16 / tf32 dots; compiled fp32 'ieee' dots keep one tap per step, which
    spills no registers).

``_dcn_bwd_input_kernel``  (grad_x, grad_offset, grad_mask)
    A program owns ``BLOCK_P`` pixels and one deformable group. For every tap and channel
    chunk it forms ``gcol = grad_out[pixels, :] @ weight[:, chunk, tap]`` with ``tl.dot``
    (registers only), then
    * grad_x: ``tl.atomic_add`` of ``gcol * mask * bilinear weight`` into the four corners
      (fp32 accumulation buffer, channels-last, ``B*Hin*Win*Cin*4`` bytes);
    * grad_mask: ``sum_c gcol * sample`` and grad_offset: ``sum_c gcol * mask * d sample /
      d(dy, dx)``. Both are linear in the four corner values with per-pixel coefficients,
      so the kernel only keeps the four channel sums ``t_corner = sum_c gcol * x[corner]``
      (one corner tile live at a time, the same offsets serve the load and the atomic add)
      and combines them after the channel loop: reduced in registers, no atomics.
    Memory besides the outputs: the fp32 grad_x buffer and fp32 grad_offset / grad_mask
    buffers (cast to the input dtypes at the end).

``_dcn_bwd_weight_kernel``  (grad_weight, grad_bias)
    A program owns a ``BLOCK_C x BLOCK_O`` tile of the weight for one (group, tap) and a
    contiguous range of pixel tiles over the whole batch (split-K over B*Ho*Wo). It
    recomputes the sampled column tile in registers exactly like the forward pass and
    accumulates ``col^T @ grad_out`` with ``tl.dot``; partial sums are ``tl.atomic_add``-ed
    into an fp32 buffer of the weight's size. The sampled columns are never stored: the
    extra memory is ``Cout*Cin*K*4`` bytes (plus ``Cout*4`` for the bias gradient, which
    the programs of the first (group, tap, channel-chunk) accumulate from the same
    grad_out tiles). Atomic accumulation makes grad_x / grad_weight / grad_bias
    run-to-run nondeterministic in the last bits.

Launch configurations (block sizes, warps) are checked by compiling every specialisation the
wrappers launch ahead of time for NVIDIA and AMD targets (:mod:`frfsr.ops.triton.aot`,
tests/test_kernels_aot.py); they are not autotuned.

Precision: sampling and bilinear arithmetic in fp32 (float64 inputs are computed in fp32); ``tl.dot`` gets fp32 operands
or the weight's half dtype (fp32 accumulation). fp32 operands run on tf32 tensor cores only
when the user allows TF32 for matrix products, with PyTorch's own switch
(``torch.backends.cuda.matmul.allow_tf32 = True``, off by default) and the device has tf32 dots
(not AMD gfx90a / gfx950 / RDNA); "ieee" fp32 otherwise. Double backward is not supported.

Indexing: the offset and mask tensors (2*G*K and G*K planes of Ho*Wo values: 144 x 16 M
> 2^31 at a 16 MP output) and the offset / mask gradient buffers are addressed with 64-bit
offsets; the other tensors with 32-bit offsets within a batch sample (64-bit batch offset),
which the wrappers check (``ValueError`` beyond 2^31 elements per sample).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..reference import check_deform_conv_args
from . import _device
from ._device import is_interpreted as _is_interpreted


# Sizes, batch/row strides and conv geometry change with the image size: do not let Triton
# specialise on them (value 1 / divisibility by 16), or every new size would recompile.
# Channel and pixel strides (1 for the layouts used here) stay specialised.
_DNS = ["Hin", "Win", "Ho", "Wo", "Cout", "G", "Cg", "K", "n_cblk", "tiles_per_img", "total_tiles",
        "tiles_per_split", "s_xb", "s_xh", "s_ob", "s_oc", "s_oh", "s_mb", "s_mc", "s_mh",
        "s_yb", "s_yc", "s_yh", "s_gb", "s_gc", "s_gh", "s_fb", "s_fc", "s_kb", "s_kc",
        "stride_h", "stride_w", "pad_h", "pad_w", "dil_h", "dil_w"]


def _jit(fn):
    names = set(fn.__code__.co_varnames[:fn.__code__.co_argcount])
    return triton.jit(fn, do_not_specialize=[n for n in _DNS if n in names])


# --------------------------------------------------------------------------------------
# shared device helpers
# --------------------------------------------------------------------------------------
@triton.jit
def _sample_coords(off_ptr, msk_ptr, b, g, k, K, yo, xo, p_mask,
                   s_ob, s_oc, s_oh, s_ow, s_mb, s_mc, s_mh, s_mw,
                   stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, Hin, Win,
                   KW: tl.constexpr):
    """Sampling geometry of tap k of group g for a tile of output pixels."""
    i = k // KW
    j = k % KW
    # 64-bit offsets: the offset tensor holds 2*G*K planes of Ho*Wo values (144 * 16 M > 2^31 at
    # 16 MP, 8 groups, 3x3), and a channels-last one has rows of 2*G*K*Wo values
    ch = (g * K + k).to(tl.int64)
    yo64 = yo.to(tl.int64)
    xo64 = xo.to(tl.int64)
    o_base = off_ptr + b * s_ob + yo64 * s_oh + xo64 * s_ow
    dy = tl.load(o_base + (2 * ch) * s_oc, mask=p_mask, other=0.0).to(tl.float32)
    dx = tl.load(o_base + (2 * ch + 1) * s_oc, mask=p_mask, other=0.0).to(tl.float32)
    m = tl.load(msk_ptr + b * s_mb + ch * s_mc + yo64 * s_mh + xo64 * s_mw, mask=p_mask, other=0.0).to(tl.float32)
    py = (yo * stride_h - pad_h + i * dil_h).to(tl.float32) + dy
    px = (xo * stride_w - pad_w + j * dil_w).to(tl.float32) + dx
    y0f = tl.floor(py)
    x0f = tl.floor(px)
    ly = py - y0f
    lx = px - x0f
    y0 = y0f.to(tl.int32)
    x0 = x0f.to(tl.int32)
    y1 = y0 + 1
    x1 = x0 + 1
    vy0 = (y0 >= 0) & (y0 < Hin)
    vy1 = (y1 >= 0) & (y1 < Hin)
    vx0 = (x0 >= 0) & (x0 < Win)
    vx1 = (x1 >= 0) & (x1 < Win)
    v00 = p_mask & vy0 & vx0
    v01 = p_mask & vy0 & vx1
    v10 = p_mask & vy1 & vx0
    v11 = p_mask & vy1 & vx1
    return y0, x0, y1, x1, ly, lx, m, v00, v01, v10, v11


@triton.jit
def _gather4(x_ptr, b, cc, c_mask, y0, x0, y1, x1, v00, v01, v10, v11,
             s_xb, s_xc, s_xh, s_xw):
    """Load the four bilinear corners for pixels (rows) x channels (cols), zero outside."""
    base = x_ptr + b * s_xb + cc[None, :] * s_xc
    cm = c_mask[None, :]
    a00 = tl.load(base + (y0 * s_xh + x0 * s_xw)[:, None], mask=v00[:, None] & cm, other=0.0).to(tl.float32)
    a01 = tl.load(base + (y0 * s_xh + x1 * s_xw)[:, None], mask=v01[:, None] & cm, other=0.0).to(tl.float32)
    a10 = tl.load(base + (y1 * s_xh + x0 * s_xw)[:, None], mask=v10[:, None] & cm, other=0.0).to(tl.float32)
    a11 = tl.load(base + (y1 * s_xh + x1 * s_xw)[:, None], mask=v11[:, None] & cm, other=0.0).to(tl.float32)
    return a00, a01, a10, a11


@triton.jit
def _pair_corner(base, second, c_ok, ya, xa, yb, xb, va, vb, wa, wb, s_xh, s_xw):
    """One bilinear corner of a two-tap column tile: columns where ``second`` holds read tap b's
    corner (ya/xa: tap a's), weighted by that tap's bilinear weight * mask."""
    off = tl.where(second, (yb * s_xh + xb * s_xw)[:, None], (ya * s_xh + xa * s_xw)[:, None])
    valid = tl.where(second, vb[:, None], va[:, None]) & c_ok
    w = tl.where(second, wb[:, None], wa[:, None])
    return w * tl.load(base + off, mask=valid, other=0.0).to(tl.float32)


# --------------------------------------------------------------------------------------
# forward
# --------------------------------------------------------------------------------------
@_jit
def _dcn_fwd_kernel(
    x_ptr, off_ptr, msk_ptr, w_ptr, bias_ptr, out_ptr,
    Hin, Win, Ho, Wo, Cout, G, Cg, K,
    s_xb, s_xc, s_xh, s_xw,
    s_ob, s_oc, s_oh, s_ow,
    s_mb, s_mc, s_mh, s_mw,
    s_yb, s_yc, s_yh, s_yw,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    KW: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_O: tl.constexpr,
    PRECISION: tl.constexpr, PAIR: tl.constexpr,
):
    pid_p = tl.program_id(0)
    pid_o = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)

    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    p_mask = offs_p < Ho * Wo
    yo = offs_p // Wo
    xo = offs_p % Wo
    offs_o = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)
    o_mask = offs_o < Cout
    ar_c = tl.arange(0, BLOCK_C)

    acc = tl.zeros([BLOCK_P, BLOCK_O], tl.float32)
    if PAIR:
        # 2 * Cg <= BLOCK_C (8 channels per group at relu1_1): one reduction step takes two taps,
        # column c holding channel c % Cg of tap k + c // Cg, so no step is half padding. The
        # weight rows of taps k and k + 1 are consecutive in the reordered weight.
        second = (ar_c // Cg == 1)[None, :]
        col_ch = ar_c % Cg
        for g in range(G):
            cc = (g * Cg + col_ch)[None, :] * s_xc
            for k in range(0, K, 2):
                ya0, xa0, ya1, xa1, lya, lxa, ma, va00, va01, va10, va11 = _sample_coords(
                    off_ptr, msk_ptr, b, g, k, K, yo, xo, p_mask,
                    s_ob, s_oc, s_oh, s_ow, s_mb, s_mc, s_mh, s_mw,
                    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, Hin, Win, KW)
                yb0, xb0, yb1, xb1, lyb, lxb, mb, vb00, vb01, vb10, vb11 = _sample_coords(
                    off_ptr, msk_ptr, b, g, tl.minimum(k + 1, K - 1), K, yo, xo, p_mask,
                    s_ob, s_oc, s_oh, s_ow, s_mb, s_mc, s_mh, s_mw,
                    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, Hin, Win, KW)
                n_col = tl.minimum(K - k, 2) * Cg
                c_ok = (ar_c < n_col)[None, :]
                base = x_ptr + b * s_xb + cc
                col = _pair_corner(base, second, c_ok, ya0, xa0, yb0, xb0, va00, vb00,
                                   (1.0 - lya) * (1.0 - lxa) * ma, (1.0 - lyb) * (1.0 - lxb) * mb, s_xh, s_xw)
                col += _pair_corner(base, second, c_ok, ya0, xa1, yb0, xb1, va01, vb01,
                                    (1.0 - lya) * lxa * ma, (1.0 - lyb) * lxb * mb, s_xh, s_xw)
                col += _pair_corner(base, second, c_ok, ya1, xa0, yb1, xb0, va10, vb10,
                                    lya * (1.0 - lxa) * ma, lyb * (1.0 - lxb) * mb, s_xh, s_xw)
                col += _pair_corner(base, second, c_ok, ya1, xa1, yb1, xb1, va11, vb11,
                                    lya * lxa * ma, lyb * lxb * mb, s_xh, s_xw)
                w_rows = (g * K + k) * Cg + ar_c
                wt = tl.load(w_ptr + w_rows[:, None] * Cout + offs_o[None, :],
                             mask=(ar_c < n_col)[:, None] & o_mask[None, :], other=0.0)
                acc = tl.dot(col.to(wt.dtype), wt, acc, input_precision=PRECISION)
    else:
        for g in range(G):
            for k in range(K):
                y0, x0, y1, x1, ly, lx, m, v00, v01, v10, v11 = _sample_coords(
                    off_ptr, msk_ptr, b, g, k, K, yo, xo, p_mask,
                    s_ob, s_oc, s_oh, s_ow, s_mb, s_mc, s_mh, s_mw,
                    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, Hin, Win, KW)
                w00 = ((1.0 - ly) * (1.0 - lx) * m)[:, None]
                w01 = ((1.0 - ly) * lx * m)[:, None]
                w10 = (ly * (1.0 - lx) * m)[:, None]
                w11 = (ly * lx * m)[:, None]
                for c0 in range(0, Cg, BLOCK_C):
                    offs_c = c0 + ar_c
                    c_mask = offs_c < Cg
                    a00, a01, a10, a11 = _gather4(x_ptr, b, g * Cg + offs_c, c_mask, y0, x0, y1, x1,
                                                  v00, v01, v10, v11, s_xb, s_xc, s_xh, s_xw)
                    col = w00 * a00 + w01 * a01 + w10 * a10 + w11 * a11
                    # reordered weight (G, K, Cg, Cout), contiguous
                    w_rows = (g * K + k) * Cg + offs_c
                    wt = tl.load(w_ptr + w_rows[:, None] * Cout + offs_o[None, :],
                                 mask=c_mask[:, None] & o_mask[None, :], other=0.0)
                    acc = tl.dot(col.to(wt.dtype), wt, acc, input_precision=PRECISION)

    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_o, mask=o_mask, other=0.0).to(tl.float32)
        acc += bias[None, :]
    out_ptrs = out_ptr + b * s_yb + offs_o[None, :] * s_yc + (yo * s_yh + xo * s_yw)[:, None]
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=p_mask[:, None] & o_mask[None, :])


# --------------------------------------------------------------------------------------
# backward: x, offset, mask
# --------------------------------------------------------------------------------------
@triton.jit
def _corner_bwd(x_base, gx_base, offs, valid, cm, gcol, gm, bw, NEED_X: tl.constexpr, NEED_T: tl.constexpr):
    """One bilinear corner of the input backward for a [pixels, channels] tile.

    ``gx`` shares the strides of ``x`` so one offset tile serves the load and the atomic
    add. Returns sum_c gcol * x_corner (zeros when NEED_T is false)."""
    ptr_off = offs[:, None] + cm
    msk = valid[:, None] & (cm >= 0)
    t = tl.zeros_like(bw)
    if NEED_X:
        # relaxed: a sum, no ordering with other memory operations needed
        tl.atomic_add(gx_base + ptr_off, gm * bw[:, None], mask=msk, sem="relaxed")
    if NEED_T:
        a = tl.load(x_base + ptr_off, mask=msk, other=0.0).to(tl.float32)
        t = tl.sum(gcol * a, axis=1)
    return t


@_jit
def _dcn_bwd_input_kernel(
    x_ptr, off_ptr, msk_ptr, w_ptr, go_ptr,
    gx_ptr, goff_ptr, gmsk_ptr,
    Hin, Win, Ho, Wo, Cout, G, Cg, K,
    s_xb, s_xc, s_xh, s_xw,
    s_ob, s_oc, s_oh, s_ow,
    s_mb, s_mc, s_mh, s_mw,
    s_gb, s_gc, s_gh, s_gw,
    s_fb, s_fc, s_kb, s_kc,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    KW: tl.constexpr,
    NEED_X: tl.constexpr, NEED_OFF: tl.constexpr, NEED_MASK: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_O: tl.constexpr,
    PRECISION: tl.constexpr,
):
    NEED_T: tl.constexpr = NEED_OFF or NEED_MASK
    pid_p = tl.program_id(0)
    g = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)

    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    p_mask = offs_p < Ho * Wo
    yo = offs_p // Wo
    xo = offs_p % Wo
    ar_c = tl.arange(0, BLOCK_C)
    ar_o = tl.arange(0, BLOCK_O)
    go_base = go_ptr + b * s_gb + (yo * s_gh + xo * s_gw)[:, None]
    x_base = x_ptr + b * s_xb
    gx_base = gx_ptr + b * s_xb

    for k in range(K):
        y0, x0, y1, x1, ly, lx, m, v00, v01, v10, v11 = _sample_coords(
            off_ptr, msk_ptr, b, g, k, K, yo, xo, p_mask,
            s_ob, s_oc, s_oh, s_ow, s_mb, s_mc, s_mh, s_mw,
            stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, Hin, Win, KW)
        b00 = (1.0 - ly) * (1.0 - lx)
        b01 = (1.0 - ly) * lx
        b10 = ly * (1.0 - lx)
        b11 = ly * lx
        o00 = y0 * s_xh + x0 * s_xw
        o01 = y0 * s_xh + x1 * s_xw
        o10 = y1 * s_xh + x0 * s_xw
        o11 = y1 * s_xh + x1 * s_xw
        # per-corner channel sums  t_ab = sum_c gcol * x[corner ab]
        t00 = tl.zeros([BLOCK_P], tl.float32)
        t01 = tl.zeros([BLOCK_P], tl.float32)
        t10 = tl.zeros([BLOCK_P], tl.float32)
        t11 = tl.zeros([BLOCK_P], tl.float32)
        for c0 in range(0, Cg, BLOCK_C):
            offs_c = c0 + ar_c
            c_mask = offs_c < Cg
            # channel offsets; -1 marks padding lanes (masked out in _corner_bwd)
            cm = tl.where(c_mask, (g * Cg + offs_c) * s_xc, -1)[None, :]
            # gcol[p, c] = sum_o grad_out[p, o] * weight[o, c, k]
            gcol = tl.zeros([BLOCK_P, BLOCK_C], tl.float32)
            w_rows = (g * K + k) * Cg + offs_c
            for o0 in range(0, Cout, BLOCK_O):
                offs_o = o0 + ar_o
                o_mask = offs_o < Cout
                wt = tl.load(w_ptr + w_rows[None, :] * Cout + offs_o[:, None],
                             mask=o_mask[:, None] & c_mask[None, :], other=0.0)
                gt = tl.load(go_base + offs_o[None, :] * s_gc,
                             mask=p_mask[:, None] & o_mask[None, :], other=0.0)
                gcol = tl.dot(gt.to(wt.dtype), wt, gcol, input_precision=PRECISION)
            gm = gcol * m[:, None]
            t00 += _corner_bwd(x_base, gx_base, o00, v00, cm, gcol, gm, b00, NEED_X, NEED_T)
            t01 += _corner_bwd(x_base, gx_base, o01, v01, cm, gcol, gm, b01, NEED_X, NEED_T)
            t10 += _corner_bwd(x_base, gx_base, o10, v10, cm, gcol, gm, b10, NEED_X, NEED_T)
            t11 += _corner_bwd(x_base, gx_base, o11, v11, cm, gcol, gm, b11, NEED_X, NEED_T)
        ch = (g * K + k).to(tl.int64)
        if NEED_OFF:
            # d sample / d ly and d sample / d lx, channel sums folded in
            g_dy = (1.0 - lx) * (t10 - t00) + lx * (t11 - t01)
            g_dx = (1.0 - ly) * (t01 - t00) + ly * (t11 - t10)
            # grad_offset / grad_mask buffers: (B, 2GK, Ho, Wo) / (B, GK, Ho, Wo) with pixel
            # stride 1; 64-bit plane offsets (2GK * Ho * Wo > 2^31 at 16 MP)
            ob = goff_ptr + b * s_fb + offs_p
            tl.store(ob + (2 * ch) * s_fc, g_dy * m, mask=p_mask)
            tl.store(ob + (2 * ch + 1) * s_fc, g_dx * m, mask=p_mask)
        if NEED_MASK:
            g_m = b00 * t00 + b01 * t01 + b10 * t10 + b11 * t11
            tl.store(gmsk_ptr + b * s_kb + ch * s_kc + offs_p, g_m, mask=p_mask)


# --------------------------------------------------------------------------------------
# backward: weight, bias
# --------------------------------------------------------------------------------------
@_jit
def _dcn_bwd_weight_kernel(
    x_ptr, off_ptr, msk_ptr, go_ptr, gw_ptr, gb_ptr,
    Hin, Win, Ho, Wo, Cout, G, Cg, K, n_cblk, tiles_per_img, total_tiles, tiles_per_split,
    s_xb, s_xc, s_xh, s_xw,
    s_ob, s_oc, s_oh, s_ow,
    s_mb, s_mc, s_mh, s_mw,
    s_gb, s_gc, s_gh, s_gw,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    KW: tl.constexpr, NEED_BIAS: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_O: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pid_gkc = tl.program_id(0)
    pid_o = tl.program_id(1)
    pid_s = tl.program_id(2)
    cb = pid_gkc % n_cblk
    gk = pid_gkc // n_cblk
    g = gk // K
    k = gk % K

    offs_c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = offs_c < Cg
    cc = g * Cg + offs_c
    offs_o = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)
    o_mask = offs_o < Cout
    ar_p = tl.arange(0, BLOCK_P)
    P = Ho * Wo

    acc = tl.zeros([BLOCK_C, BLOCK_O], tl.float32)
    gb_acc = tl.zeros([BLOCK_O], tl.float32)
    t_start = pid_s * tiles_per_split
    t_end = tl.minimum(t_start + tiles_per_split, total_tiles)
    for t in range(t_start, t_end):
        b = (t // tiles_per_img).to(tl.int64)
        offs_p = (t % tiles_per_img) * BLOCK_P + ar_p
        p_mask = offs_p < P
        yo = offs_p // Wo
        xo = offs_p % Wo
        y0, x0, y1, x1, ly, lx, m, v00, v01, v10, v11 = _sample_coords(
            off_ptr, msk_ptr, b, g, k, K, yo, xo, p_mask,
            s_ob, s_oc, s_oh, s_ow, s_mb, s_mc, s_mh, s_mw,
            stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, Hin, Win, KW)
        a00, a01, a10, a11 = _gather4(x_ptr, b, cc, c_mask, y0, x0, y1, x1,
                                      v00, v01, v10, v11, s_xb, s_xc, s_xh, s_xw)
        col = (((1.0 - ly) * (1.0 - lx) * m)[:, None] * a00 + ((1.0 - ly) * lx * m)[:, None] * a01
               + (ly * (1.0 - lx) * m)[:, None] * a10 + (ly * lx * m)[:, None] * a11)
        gt = tl.load(go_ptr + b * s_gb + offs_o[None, :] * s_gc + (yo * s_gh + xo * s_gw)[:, None],
                     mask=p_mask[:, None] & o_mask[None, :], other=0.0).to(tl.float32)
        acc = tl.dot(tl.trans(col), gt, acc, input_precision=PRECISION)
        if NEED_BIAS:
            gb_acc += tl.sum(gt, axis=0)

    # fp32 buffer laid out like the reordered weight (G, K, Cg, Cout)
    rows = (g * K + k) * Cg + offs_c
    tl.atomic_add(gw_ptr + rows[:, None] * Cout + offs_o[None, :], acc,
                  mask=c_mask[:, None] & o_mask[None, :], sem="relaxed")
    if NEED_BIAS:
        if pid_gkc == 0:
            tl.atomic_add(gb_ptr + offs_o, gb_acc, mask=o_mask, sem="relaxed")


# --------------------------------------------------------------------------------------
# Python side
# --------------------------------------------------------------------------------------
def _pair(v):
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"expected an int or a pair, got {v!r}")
        return int(v[0]), int(v[1])
    return int(v), int(v)


# (BLOCK_P, BLOCK_C, BLOCK_O) and num_warps, compiled ahead of time for sm_80/86/89/90 and AMD
# gfx942/gfx90a/gfx1100 by frfsr.ops.triton.aot (registers, spills and shared memory of every
# specialisation: BENCHMARKS.md). The input backward runs its output-channel loop unpipelined
# (num_stages=1): with the default 3 stages it spilled on every NVIDIA target.
_FWD_BLOCKS, _FWD_WARPS = (64, 16, 64), 8
# two taps per step (PAIR): 32 pixels and 4 warps; 64 x 8 warps spilled 40 bytes on sm_86/sm_89
_FWD_PAIR_BLOCKS, _FWD_PAIR_WARPS = (32, 16, 64), 4
_BWD_INPUT_BLOCKS, _BWD_INPUT_WARPS, _BWD_INPUT_STAGES = (64, 16, 32), 8, 1
_BWD_WEIGHT_BLOCKS, _BWD_WEIGHT_WARPS = (64, 16, 64), 8


def _dot_precision(device: torch.device, dtype: torch.dtype) -> str:
    """``tl.dot`` input precision: fp32 operands use tf32 tensor cores only when the user allows
    TF32 for matmuls (``torch.backends.cuda.matmul.allow_tf32``, PyTorch's own switch) and the
    device has tf32 dots; half operands ignore the choice ('ieee' compiles everywhere)."""
    if _is_interpreted(_dcn_fwd_kernel) or dtype != torch.float32:
        return "ieee"
    return _device.fp32_dot_precision(device, torch.backends.cuda.matmul.allow_tf32)


def _geometry(x, offset, mask, weight):
    """Sizes of a deform_conv call whose arguments passed check_deform_conv_args."""
    B, Cin, Hin, Win = x.shape
    Cout, _, kh, kw = weight.shape
    K = kh * kw
    G = offset.shape[1] // (2 * K)
    Ho, Wo = offset.shape[-2:]
    return B, Cin, Hin, Win, Cout, kh, kw, K, G, Cin // G, Ho, Wo


def _check_device(*ts):
    if not _device.on_gpu(ts[0]) and not _is_interpreted(_dcn_fwd_kernel):
        raise RuntimeError("frfsr.ops.triton.deform_conv needs CUDA tensors (or TRITON_INTERPRET=1 for CPU tensors)")


_I32 = 2 ** 31


def _check_index_range(*named):
    """The kernels index the offset and mask tensors and the gradient buffers of their shapes
    in 64 bits, everything else with 32-bit offsets within one batch sample (the batch offset
    is 64-bit): refuse inputs where one sample of those spans 2^31 elements or more
    (16 MP in the pipeline is 1.07e9 at most)."""
    for name, t in named:
        if t is None or t.dim() == 0 or t.numel() == 0:
            continue
        span = 1 + sum((n - 1) * abs(st) for n, st in zip(t.shape[1:], t.stride()[1:]))
        if span >= _I32:
            raise ValueError(f"frfsr.ops.triton.deform_conv: one sample of {name} {tuple(t.shape)} spans {span} "
                             f"elements, beyond the kernels' 32-bit indexing (2^31); split the batch or the image")


def _reorder_weight(weight, G, Cg, K):
    Cout = weight.shape[0]
    # (Cout, Cin, kh, kw) -> (G, K, Cg, Cout): the rows of a reduction step are contiguous
    return weight.reshape(Cout, G, Cg, K).permute(1, 3, 2, 0).contiguous()


def _grad_plane_buffer(B, planes, Ho, Wo, device):
    """fp32 (B, planes, Ho, Wo) buffer of the offset / mask gradient, pixel stride 1 (any plane
    and batch strides: the kernel takes them; tests hand out planes more than 2^31 apart)."""
    return torch.empty(B, planes, Ho, Wo, device=device, dtype=torch.float32)


def _forward(x, offset, mask, weight, bias, st, pd, dl):
    B, Cin, Hin, Win, Cout, kh, kw, K, G, Cg, Ho, Wo = _geometry(x, offset, mask, weight)
    xc = x.contiguous(memory_format=torch.channels_last)
    w_r = _reorder_weight(weight, G, Cg, K)
    if w_r.dtype not in (torch.float16, torch.bfloat16):
        w_r = w_r.float()
    out = torch.empty(B, Cout, Ho, Wo, device=x.device, dtype=x.dtype)
    if B * Ho * Wo == 0 or Cout == 0:
        return out.zero_() if bias is None else out.copy_(bias.view(1, -1, 1, 1).expand_as(out))
    _check_index_range(("x", xc), ("output", out))
    P = Ho * Wo
    has_bias = bias is not None
    precision = _dot_precision(x.device, w_r.dtype)
    # two taps per reduction step where a group has at most half a channel block (relu1_1: 8
    # channels per group); not with compiled fp32 'ieee' dots, where it spilled registers on
    # sm_80/sm_90 (always under the interpreter, which has no registers: the tests run it)
    pair = 2 * Cg <= _FWD_PAIR_BLOCKS[1] and (_is_interpreted(_dcn_fwd_kernel) or w_r.dtype != torch.float32
                                              or precision == "tf32")
    (BLOCK_P, BLOCK_C, BLOCK_O), warps = (_FWD_PAIR_BLOCKS, _FWD_PAIR_WARPS) if pair else (_FWD_BLOCKS, _FWD_WARPS)
    grid = (triton.cdiv(P, BLOCK_P), triton.cdiv(Cout, BLOCK_O), B)
    with _device.device_ctx(x):
        _dcn_fwd_kernel[grid](
            xc, offset, mask, w_r, bias if has_bias else w_r, out,
            Hin, Win, Ho, Wo, Cout, G, Cg, K,
            *xc.stride(), *offset.stride(), *mask.stride(), *out.stride(),
            st[0], st[1], pd[0], pd[1], dl[0], dl[1],
            KW=kw, HAS_BIAS=has_bias,
            BLOCK_P=BLOCK_P, BLOCK_C=BLOCK_C, BLOCK_O=BLOCK_O,
            PRECISION=precision, PAIR=pair,
            num_warps=warps,
        )
    return out


def _backward(grad_out, x, offset, mask, weight, bias, st, pd, dl, needs):
    need_x, need_off, need_mask, need_w, need_b = needs
    B, Cin, Hin, Win, Cout, kh, kw, K, G, Cg, Ho, Wo = _geometry(x, offset, mask, weight)
    P = Ho * Wo
    dev = x.device
    xc = x.contiguous(memory_format=torch.channels_last)
    w_r = _reorder_weight(weight, G, Cg, K)
    if w_r.dtype not in (torch.float16, torch.bfloat16):
        w_r = w_r.float()
    prec = _dot_precision(dev, w_r.dtype)
    _check_index_range(("x", xc), ("grad_out", grad_out))
    gx = goff = gmsk = gw = gb = None
    if need_x or need_off or need_mask:
        # fp32 accumulation buffer with exactly the strides of xc (one offset for load and atomic)
        gx32 = torch.zeros_like(xc, dtype=torch.float32) if need_x else None
        if need_x and gx32.stride() != xc.stride():
            raise RuntimeError("internal error: grad_x buffer strides differ from x")
        goff32 = _grad_plane_buffer(B, 2 * G * K, Ho, Wo, dev) if need_off else None
        gmsk32 = _grad_plane_buffer(B, G * K, Ho, Wo, dev) if need_mask else None
        dummy = w_r
        s_f = goff32.stride()[:2] if need_off else (0, 0)
        s_k = gmsk32.stride()[:2] if need_mask else (0, 0)
        BLOCK_P, BLOCK_C, BLOCK_O = _BWD_INPUT_BLOCKS
        grid = (triton.cdiv(P, BLOCK_P), G, B)
        with _device.device_ctx(x):
            _dcn_bwd_input_kernel[grid](
                xc, offset, mask, w_r, grad_out,
                gx32 if need_x else dummy, goff32 if need_off else dummy, gmsk32 if need_mask else dummy,
                Hin, Win, Ho, Wo, Cout, G, Cg, K,
                *xc.stride(), *offset.stride(), *mask.stride(), *grad_out.stride(), *s_f, *s_k,
                st[0], st[1], pd[0], pd[1], dl[0], dl[1],
                KW=kw, NEED_X=need_x, NEED_OFF=need_off, NEED_MASK=need_mask,
                BLOCK_P=BLOCK_P, BLOCK_C=BLOCK_C, BLOCK_O=BLOCK_O, PRECISION=prec,
                num_warps=_BWD_INPUT_WARPS, num_stages=_BWD_INPUT_STAGES,
            )
        if need_x:
            gx = gx32.to(x.dtype).contiguous()
        if need_off:
            goff = goff32.to(offset.dtype)
        if need_mask:
            gmsk = gmsk32.to(mask.dtype)
    if need_w or need_b:
        gw32 = torch.zeros(G, K, Cg, Cout, device=dev, dtype=torch.float32)
        gb32 = torch.zeros(Cout, device=dev, dtype=torch.float32)
        BLOCK_P, BLOCK_C, BLOCK_O = _BWD_WEIGHT_BLOCKS
        n_cblk = triton.cdiv(Cg, BLOCK_C)
        n_oblk = triton.cdiv(Cout, BLOCK_O)
        tiles_per_img = triton.cdiv(P, BLOCK_P)
        total_tiles = B * tiles_per_img
        base_programs = G * K * n_cblk * n_oblk
        target = 4 * _device.sm_count(dev) if _device.on_gpu(x) else 4
        n_split = max(1, min(total_tiles, triton.cdiv(target, base_programs)))
        tiles_per_split = triton.cdiv(total_tiles, n_split)
        n_split = triton.cdiv(total_tiles, tiles_per_split)
        grid = (G * K * n_cblk, n_oblk, n_split)
        with _device.device_ctx(x):
            _dcn_bwd_weight_kernel[grid](
                xc, offset, mask, grad_out, gw32, gb32,
                Hin, Win, Ho, Wo, Cout, G, Cg, K, n_cblk, tiles_per_img, total_tiles, tiles_per_split,
                *xc.stride(), *offset.stride(), *mask.stride(), *grad_out.stride(),
                st[0], st[1], pd[0], pd[1], dl[0], dl[1],
                KW=kw, NEED_BIAS=bool(need_b),
                BLOCK_P=BLOCK_P, BLOCK_C=BLOCK_C, BLOCK_O=BLOCK_O, PRECISION=prec,
                num_warps=_BWD_WEIGHT_WARPS,
            )
        if need_w:
            # (G, K, Cg, Cout) -> (Cout, Cin, kh, kw)
            gw = gw32.permute(3, 0, 2, 1).reshape(Cout, Cin, kh, kw).to(weight.dtype)
        if need_b:
            gb = gb32.to(bias.dtype)
    return gx, goff, gmsk, gw, gb


def deform_conv_backward(grad_out, x, offset, mask, weight, bias=None, stride=1, padding=1, dilation=1,
                         needs=(True, True, True, True, True)):
    """Gradients w.r.t. (x, offset, mask, weight, bias) for the output gradient ``grad_out``
    (any strides), each in its input's dtype, None where ``needs`` (five flags) is false or
    the bias is None: the backward kernels of the module docstring."""
    check_deform_conv_args(x, offset, mask, weight, bias, stride, dilation, padding)
    _check_device(x, offset, mask, weight, bias)
    st, pd, dl = _pair(stride), _pair(padding), _pair(dilation)
    needs = tuple(bool(n) for n in needs)
    needs = needs[:4] + (needs[4] and bias is not None,)
    return _backward(grad_out, x, offset, mask, weight, bias, st, pd, dl, needs)


def deform_conv(x, offset, mask, weight, bias=None, stride=1, padding=1, dilation=1):
    """Modulated deformable convolution (DCNv2), the fused Triton forward.

    See the module docstring for the exact semantics; the output grid is
    ``offset.shape[-2:]`` whatever the size of ``x``. Not differentiable by itself:
    ``frfsr::deform_conv`` (:mod:`frfsr.ops.custom_ops`) pairs it with
    :func:`deform_conv_backward`.
    """
    check_deform_conv_args(x, offset, mask, weight, bias, stride, dilation)
    _check_device(x, offset, mask, weight, bias)
    st, pd, dl = _pair(stride), _pair(padding), _pair(dilation)
    return _forward(x, offset, mask, weight, bias, st, pd, dl)
