"""Fused windowed cosine patch matching (Triton): the fine step of the fast matching mode.

Same semantics as :func:`frfsr.ops.window.window_match` (see its module docstring): one
program owns one cell of ``cell`` x ``cell`` query patches of one batch sample (grid =
``(cells, B)``); for every candidate flow of the cell (up to the last one other than its
first, :func:`frfsr.ops.window.flows_needed`) it forms the square of
``(cell + 2 * radius)**2`` key corners as one ``BLOCK_N`` tile and computes the tile's
correlations with the cell's query patches as an implicit GEMM over the p * p taps and
the channels (``tl.dot``, fp32 accumulation; query and key pixels are read channels-last
straight from the feature maps, no unfolded patches in memory). The tile is divided by
the key patch norms and folded into a running max held in registers, ties to the lowest
key index. Nothing but the inputs, the (B, hk, wk) key patch norms and the outputs is
written to memory.

Precision: fp32 operands; ``"tf32"`` dot on CUDA by default (``"ieee"`` on request), always
``"ieee"`` under the Triton interpreter (CPU tensors).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..window import check_window_match_args, flows_needed, patch_norms
from . import _device
from ._device import is_interpreted as _is_interpreted

_EPS = 1e-5


# Sizes change with every tile and Ref: no specialisation on them (value 1, divisibility by 16),
# or every new size would compile anew. C is padded to a multiple of 16, so the strides (all
# multiples of C) are always specialised as divisible by 16, which the channel loads need: without
# it they spilled about 1 KB on every NVIDIA target.
@triton.jit(do_not_specialize=["hq", "wq", "hk", "wk", "hc", "wc", "M"])
def _window_match_kernel(
    q_ptr, k_ptr, kn_ptr, flow_ptr, need_ptr, score_ptr, index_ptr,
    C, hq, wq, hk, wk, hc, wc, M,
    s_qb, s_qh, s_qw,
    s_kb, s_kh, s_kw,
    CELL: tl.constexpr, RADIUS: tl.constexpr, P: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    cy = pid // wc
    cx = pid % wc
    V: tl.constexpr = CELL + 2 * RADIUS

    offs_p = tl.arange(0, BLOCK_P)
    y = cy * CELL + offs_p // CELL
    x = cx * CELL + offs_p % CELL
    p_mask = (offs_p < CELL * CELL) & (y < hq) & (x < wq)
    offs_n = tl.arange(0, BLOCK_N)
    vy = offs_n // V
    vx = offs_n % V
    n_in = offs_n < V * V
    offs_c = tl.arange(0, BLOCK_C)

    q_base = q_ptr + b * s_qb
    k_base = k_ptr + b * s_kb
    big = hk * wk
    best = tl.full([BLOCK_P], float("-inf"), tl.float32)
    best_idx = tl.full([BLOCK_P], 0, tl.int32) + big

    cell_id = (b * hc + cy) * wc + cx
    flow_base = flow_ptr + cell_id * M * 2
    for m in range(tl.load(need_ptr + cell_id)):     # the flows after these repeat the first
        dy = tl.load(flow_base + 2 * m)
        dx = tl.load(flow_base + 2 * m + 1)
        ky = cy * CELL + dy - RADIUS + vy
        kx = cx * CELL + dx - RADIUS + vx
        n_valid = n_in & (ky >= 0) & (ky < hk) & (kx >= 0) & (kx < wk)
        kyc = tl.minimum(tl.maximum(ky, 0), hk - 1)
        kxc = tl.minimum(tl.maximum(kx, 0), wk - 1)
        acc = tl.zeros([BLOCK_P, BLOCK_N], tl.float32)
        for t in tl.static_range(P * P):
            ty = t // P
            tx = t % P
            q_pix = q_base + (y + ty)[:, None] * s_qh + (x + tx)[:, None] * s_qw
            k_pix = k_base + (kyc + ty)[None, :] * s_kh + (kxc + tx)[None, :] * s_kw
            for c0 in range(0, C, BLOCK_C):
                c = c0 + offs_c
                c_mask = c < C
                qv = tl.load(q_pix + c[None, :], mask=p_mask[:, None] & c_mask[None, :], other=0.0)
                kv = tl.load(k_pix + c[:, None], mask=c_mask[:, None] & n_valid[None, :], other=0.0)
                acc = tl.dot(qv, kv, acc, input_precision=PRECISION)
        kidx = kyc * wk + kxc
        knv = tl.load(kn_ptr + b * big + kidx, mask=n_valid, other=1.0)
        sc = acc * (1.0 / (knv + 1e-5))[None, :]
        sc = tl.where(n_valid[None, :], sc, float("-inf"))
        tile_max = tl.max(sc, axis=1)
        hit = (sc == tile_max[:, None]) & n_valid[None, :]
        tile_arg = tl.min(tl.where(hit, kidx[None, :], big), axis=1)
        upd = (tile_max > best) | ((tile_max == best) & (tile_arg < best_idx))
        best = tl.where(upd, tile_max, best)
        best_idx = tl.where(upd, tile_arg, best_idx)

    out = b * hq * wq + y * wq + x
    tl.store(score_ptr + out, best, mask=p_mask)
    tl.store(index_ptr + out, tl.where(best_idx == big, -1, best_idx).to(tl.int64), mask=p_mask)


# Compiled ahead of time (frfsr.ops.triton.aot): at the default search cell 4 (16 query
# patches x 36 key corners, BLOCK_N 64) 32 channels per step and 4 warps spill nothing on
# sm_80..sm_90 (64 channels spilled on every NVIDIA target).
_BLOCK_C, _WARPS = 32, 4


@torch.no_grad()
def window_match(query: torch.Tensor, key: torch.Tensor, flows: torch.Tensor, cell: int, radius: int,
                 patch_size: int = 3, max_block_elems: int | None = None, precision: str | None = None):
    """:func:`frfsr.ops.window.window_match` as one fused kernel (same arguments and
    outputs; ``max_block_elems`` is accepted and ignored: the kernel holds one
    ``cell**2 x (cell + 2 radius)**2`` tile in registers). ``precision``: ``"tf32"`` (CUDA
    default) or ``"ieee"`` (the only choice under the interpreter). The kernel has no backward:
    :func:`frfsr.ops.window_match` (the ``frfsr::window_match`` custom operator) differentiates
    the score."""
    del max_block_elems
    p, s, r = check_window_match_args(query, key, flows, cell, radius, patch_size)
    interpreted = _is_interpreted(_window_match_kernel)
    if not _device.on_gpu(query) and not interpreted:
        raise RuntimeError("frfsr.ops.triton.window_match needs CUDA tensors (or TRITON_INTERPRET=1 for CPU tensors)")
    precision = "ieee" if interpreted else (precision or "tf32")
    if precision not in ("tf32", "ieee"):
        raise ValueError(f"unknown precision {precision!r}")
    if precision == "tf32":  # 'ieee' where the device has no tf32 dot (AMD gfx90a, gfx950, RDNA)
        precision = _device.fp32_dot_precision(query.device, True)
    B, C, h, w = query.shape
    H, W = key.shape[-2:]
    hq, wq, hk, wk = h - p + 1, w - p + 1, H - p + 1, W - p + 1
    hc, wc, M = flows.shape[1], flows.shape[2], flows.shape[3]

    q = query.float()
    k = key.float()
    qn, kn = patch_norms(q, p), patch_norms(k, p).contiguous()
    # channels-last (one pixel's channels contiguous), padded with zero channels to a multiple
    # of 16: whole, aligned channel steps (a masked remainder spilled registers)
    c_pad = -C % 16
    q = torch.nn.functional.pad(q.permute(0, 2, 3, 1), (0, c_pad)).contiguous()
    k = torch.nn.functional.pad(k.permute(0, 2, 3, 1), (0, c_pad)).contiguous()
    C = C + c_pad
    fl = flows.to(torch.int32).contiguous()
    need = flows_needed(flows).to(torch.int32).contiguous()
    score = torch.empty(B, hq, wq, device=query.device, dtype=torch.float32)
    index = torch.empty(B, hq, wq, device=query.device, dtype=torch.int64)
    for t in (q, k):  # 32-bit offsets within a sample (a 1000 x 1000 x 256 map spans 2.6e8)
        if t[0].numel() >= 2 ** 31:
            raise ValueError(f"frfsr.ops.triton.window_match: a {tuple(t.shape)} feature map is beyond the "
                             "kernel's 32-bit indexing (2^31 values per sample); split the image")

    block_p = max(16, triton.next_power_of_2(s * s))
    block_n = max(16, triton.next_power_of_2((s + 2 * r) ** 2))
    block_c = min(_BLOCK_C if not interpreted else 32, max(16, triton.next_power_of_2(C)))
    grid = (hc * wc, B)

    def launch():
        _window_match_kernel[grid](
            q, k, kn, fl, need, score, index,
            C, hq, wq, hk, wk, hc, wc, M,
            q.stride(0), q.stride(1), q.stride(2),
            k.stride(0), k.stride(1), k.stride(2),
            CELL=s, RADIUS=r, P=p, BLOCK_P=block_p, BLOCK_N=block_n, BLOCK_C=block_c,
            PRECISION=precision, num_warps=_WARPS)

    if interpreted:
        launch()
    else:  # pragma: no cover - needs a GPU
        with _device.device_ctx(query):
            launch()
    score = score / (qn + _EPS)
    if query.is_floating_point() and query.dtype != torch.float32:
        score = score.to(query.dtype)
    return score, index
