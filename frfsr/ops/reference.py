"""Plain-PyTorch reference operators (CPU and GPU, autograd): the ground truth for fused kernels.

Each function validates its arguments (``ValueError`` naming the problem) and computes in
at least float32 (float64 stays float64); results come back in the input dtype.

Memory bounds
-------------
``patch_match``
    Holds the unfolded query and key patches, ``O(B * C * p * p * (h * w + H * W))``
    elements, plus one similarity block of at most ``max_block_elems`` elements
    (default :data:`PATCH_MATCH_MAX_BLOCK_ELEMS` = 2**24, i.e. 64 MiB in float32) and the
    per-query running max/argmax. The full (query patches x key patches) matrix is never
    formed. :func:`patch_match_block_shape` is the blocking rule the implementation uses;
    :data:`patch_match_stats` records what the last call really allocated.
``deform_conv``
    Output rows are processed in chunks so that the sampled column buffer
    (B, Cin * K, rows * Wo) holds at most ``max_column_elems`` elements (default
    :data:`DEFORM_CONV_MAX_COLUMN_ELEMS` = 2**25), except that a chunk is at least one row.
    Chunking does not change the result.
``ddf``
    A custom autograd function loops over the k * k taps with shifted views of the padded
    input; forward and backward hold a few (B, C, H, W) temporaries, never a
    (B, C * k * k, H, W) unfold, and nothing but the inputs is saved for backward.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "patch_match", "patch_match_block_shape", "patch_match_stats", "PATCH_MATCH_MAX_BLOCK_ELEMS",
    "deform_conv", "DEFORM_CONV_MAX_COLUMN_ELEMS", "ddf",
]

PATCH_MATCH_MAX_BLOCK_ELEMS = 2 ** 24
"""Default upper bound on the elements of one (B, query block, key block) similarity tensor."""

DEFORM_CONV_MAX_COLUMN_ELEMS = 2 ** 25
"""Default upper bound on the elements of one deformable-conv column buffer (B, Cin*K, rows*Wo)."""

_EPS = 1e-5

patch_match_stats = {"max_block_numel": 0, "num_blocks": 0, "block_shape": None}
"""Filled by each :func:`patch_match` call with the largest similarity block it really
allocated (``max_block_numel``, from the tensors' ``numel()``), the number of blocks and the
(B, query block, key block) shape used. Meant for tests and memory debugging."""


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


# --------------------------------------------------------------------------------------
# Patch matching
# --------------------------------------------------------------------------------------

def patch_match_block_shape(batch: int, n_query: int, n_key: int,
                            max_block_elems: int | None = None) -> tuple[int, int]:
    """Block sizes (query patches, key patches) used by :func:`patch_match`.

    The key block is made as large as the budget allows (fewest running-max merges), then
    the query block fills what is left, so ``batch * bq * bk <= max_block_elems``.
    """
    limit = PATCH_MATCH_MAX_BLOCK_ELEMS if max_block_elems is None else int(max_block_elems)
    if limit < batch:
        raise ValueError(f"max_block_elems ({limit}) must be at least the batch size ({batch})")
    bk = max(1, min(n_key, limit // batch))
    bq = max(1, min(n_query, limit // (batch * bk)))
    return bq, bk


def patch_match(query: torch.Tensor, key: torch.Tensor, patch_size: int = 3,
                max_block_elems: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Best cosine match of every query patch among all key patches.

    Args:
        query: (B, C, h, w), L2-normalised per pixel over channels by the caller.
        key: (B, C, H, W), same normalisation.
        patch_size: p; patches are all p x p windows at stride 1 (valid positions only).
        max_block_elems: bound on one similarity block (default
            :data:`PATCH_MATCH_MAX_BLOCK_ELEMS`); see the module docstring for the memory bound.

    Returns:
        ``score`` (B, h-p+1, w-p+1) in the input dtype: max over key patches k of
        <q, k / (||k|| + 1e-5)>, divided by ||q|| + 1e-5 (norms over C*p*p);
        ``index`` (B, h-p+1, w-p+1) int64: row-major index of the best key patch in the
        (H-p+1, W-p+1) grid, ties resolved to the lowest index. ``score`` is differentiable
        w.r.t. ``query`` and ``key`` (through the selected patch).

    Ties are ties of the computed correlations: a matmul may round the same dot product
    differently in different output columns, so bitwise-identical key patches tie exactly
    only when their correlations are computed exactly (as in the tests).
    """
    p = check_patch_match_args(query, key, patch_size)
    (B, _, h, w), (H, W) = query.shape, key.shape[-2:]

    dtype = _compute_dtype(query, key)
    qp = F.unfold(query.to(dtype), p).transpose(1, 2)            # (B, Lq, D)
    kp = F.unfold(key.to(dtype), p)                                # (B, D, Lk)
    kp = kp / (kp.norm(dim=1, keepdim=True) + _EPS)
    n_q, n_k = qp.shape[1], kp.shape[2]
    bq, bk = patch_match_block_shape(B, n_q, n_k, max_block_elems)

    max_numel, n_blocks = 0, 0
    scores, indices = [], []
    for q0 in range(0, n_q, bq):
        q_blk = qp[:, q0:q0 + bq]
        best = best_idx = None
        for k0 in range(0, n_k, bk):
            sim = torch.bmm(q_blk, kp[:, :, k0:k0 + bk])           # (B, bq, bk)
            max_numel, n_blocks = max(max_numel, sim.numel()), n_blocks + 1
            val, idx = sim.max(dim=2)                              # first maximum on ties
            del sim
            idx = idx + k0
            if best is None:
                best, best_idx = val, idx
            else:                                                  # strict: earlier block wins ties
                better = val > best
                best = torch.where(better, val, best)
                best_idx = torch.where(better, idx, best_idx)
        scores.append(best)
        indices.append(best_idx)
    patch_match_stats.update(max_block_numel=max_numel, num_blocks=n_blocks, block_shape=(B, bq, bk))

    grid = (h - p + 1, w - p + 1)
    score = torch.cat(scores, dim=1) / (qp.norm(dim=2) + _EPS)
    return (score.view(B, *grid).to(query.dtype),
            torch.cat(indices, dim=1).view(B, *grid))


# --------------------------------------------------------------------------------------
# Modulated deformable convolution
# --------------------------------------------------------------------------------------

def deform_conv(x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor,
                bias: torch.Tensor | None = None, stride: int = 1, padding: int = 1, dilation: int = 1,
                max_column_elems: int | None = None) -> torch.Tensor:
    """Modulated deformable convolution (DCNv2 semantics) on an output grid given by ``offset``.

    Args:
        x: (B, Cin, Hin, Win), any spatial size.
        offset: (B, 2*G*K, Ho, Wo), K = kh*kw; channel 2*(g*K + k) is dy and 2*(g*K + k) + 1
            is dx for deformable group g and tap k = i*kw + j.
        mask: (B, G*K, Ho, Wo), modulation multiplier (already activated).
        weight: (Cout, Cin, kh, kw); bias: (Cout,) or None.
        stride, padding, dilation: tap (i, j) of output (yo, xo) samples
            y = yo*stride - padding + i*dilation + dy, x = xo*stride - padding + j*dilation + dx.
        max_column_elems: column-buffer bound (default :data:`DEFORM_CONV_MAX_COLUMN_ELEMS`).

    Input channel c belongs to group c // (Cin // G). Sampling is bilinear with zero
    contribution from corners outside the image (0 for y <= -1 or y >= Hin). Returns
    (B, Cout, Ho, Wo) in ``x``'s dtype; differentiable w.r.t. every tensor argument.
    """
    G = check_deform_conv_args(x, offset, mask, weight, bias, stride, dilation)
    B, cin, h_in, w_in = x.shape
    cout, _, kh, kw = weight.shape
    K = kh * kw

    dtype = _compute_dtype(x, offset, mask, weight)
    out_dtype = x.dtype
    x, offset, mask, weight = (t.to(dtype) for t in (x, offset, mask, weight))
    h_out, w_out = offset.shape[-2:]
    cg = cin // G

    # grid_sample(align_corners=True) maps -1..1 onto pixel centres 0..size-1, which is
    # degenerate for size 1: pad such dimensions with one zero pixel (same zero semantics).
    if h_in == 1 or w_in == 1:
        x = F.pad(x, (0, int(w_in == 1), 0, int(h_in == 1)))
    hs, ws = x.shape[-2:]
    xg = x.reshape(B * G, cg, hs, ws)
    w2d = weight.reshape(cout, cin * K)

    tap_i = torch.arange(kh, device=x.device, dtype=dtype).repeat_interleave(kw)   # (K,)
    tap_j = torch.arange(kw, device=x.device, dtype=dtype).repeat(kh)
    xo = torch.arange(w_out, device=x.device, dtype=dtype) * stride - padding
    base_x = (xo.view(1, w_out) + tap_j.view(K, 1) * dilation).view(K, 1, w_out)

    limit = DEFORM_CONV_MAX_COLUMN_ELEMS if max_column_elems is None else int(max_column_elems)
    rows = max(1, min(h_out, limit // max(1, B * cin * K * w_out)))
    chunks = []
    for r0 in range(0, h_out, rows):
        r1 = min(h_out, r0 + rows)
        n = r1 - r0
        yo = torch.arange(r0, r1, device=x.device, dtype=dtype) * stride - padding
        base_y = (yo.view(1, n) + tap_i.view(K, 1) * dilation).view(K, n, 1)
        off = offset[:, :, r0:r1].reshape(B, G, K, 2, n, w_out)
        py = base_y + off[:, :, :, 0]                                  # (B, G, K, n, Wo)
        px = base_x + off[:, :, :, 1]
        grid = torch.stack((px * (2.0 / (ws - 1)) - 1.0, py * (2.0 / (hs - 1)) - 1.0), dim=-1)
        cols = F.grid_sample(xg, grid.view(B * G, K * n, w_out, 2), mode="bilinear",
                             padding_mode="zeros", align_corners=True)  # (B*G, cg, K*n, Wo)
        cols = cols.view(B, G, cg, K, n, w_out) * mask[:, :, r0:r1].reshape(B, G, 1, K, n, w_out)
        chunks.append(torch.matmul(w2d, cols.reshape(B, cin * K, n * w_out)).view(B, cout, n, w_out))
    out = chunks[0] if len(chunks) == 1 else torch.cat(chunks, dim=2)
    if bias is not None:
        out = out + bias.to(dtype).view(1, cout, 1, 1)
    return out.to(out_dtype)


# --------------------------------------------------------------------------------------
# Decoupled dynamic filter
# --------------------------------------------------------------------------------------

def _ddf_taps(k: int, dilation: int):
    """(tap index, row shift, column shift) into the padded input, and the padding (lo, hi)."""
    lo, hi = (k // 2) * dilation, (k - 1 - k // 2) * dilation
    return [(i * k + j, i * dilation, j * dilation) for i in range(k) for j in range(k)], (lo, hi)


class _DDF(torch.autograd.Function):
    """out = sum_t shift_t(x) * sf[:, t] * cf[:, :, t]; backward recomputes per tap."""

    @staticmethod
    def forward(ctx, x, cf, sf, k, dilation):
        taps, (lo, hi) = _ddf_taps(k, dilation)
        H, W = x.shape[-2:]
        xp = F.pad(x, (lo, hi, lo, hi))
        out = torch.zeros_like(x)
        for t, dy, dx in taps:
            out.addcmul_(xp[:, :, dy:dy + H, dx:dx + W] * sf[:, t:t + 1], cf[:, :, t, None, None])
        ctx.save_for_backward(x, cf, sf)
        ctx.k, ctx.dilation = k, dilation
        return out

    @staticmethod
    def backward(ctx, grad):
        x, cf, sf = ctx.saved_tensors
        taps, (lo, hi) = _ddf_taps(ctx.k, ctx.dilation)
        H, W = x.shape[-2:]
        need_x, need_cf, need_sf = ctx.needs_input_grad[:3]
        xp = F.pad(x, (lo, hi, lo, hi)) if (need_cf or need_sf) else None
        gxp = x.new_zeros(xp.shape if xp is not None else
                          (*x.shape[:2], H + lo + hi, W + lo + hi)) if need_x else None
        gcf = torch.empty_like(cf) if need_cf else None
        gsf = torch.empty_like(sf) if need_sf else None
        for t, dy, dx in taps:
            sf_t, cf_t = sf[:, t:t + 1], cf[:, :, t, None, None]
            if need_x:
                gxp[:, :, dy:dy + H, dx:dx + W].addcmul_(grad * sf_t, cf_t)
            if need_cf or need_sf:
                gx_t = grad * xp[:, :, dy:dy + H, dx:dx + W]
                if need_cf:
                    gcf[:, :, t] = (gx_t * sf_t).sum(dim=(2, 3))
                if need_sf:
                    gsf[:, t] = (gx_t * cf_t).sum(dim=1)
        gx = gxp[:, :, lo:lo + H, lo:lo + W] if need_x else None
        return gx, gcf, gsf, None, None


def ddf(x: torch.Tensor, channel_filter: torch.Tensor, spatial_filter: torch.Tensor,
        kernel_size: int = 3, dilation: int = 1) -> torch.Tensor:
    """Decoupled dynamic filter with the 'mul' combine.

    out[b,c,y,x] = sum_{t=i*k+j} x[b, c, y + (i - k//2)*dilation, x + (j - k//2)*dilation]
                   * spatial_filter[b, t, y, x] * channel_filter[b, c, t], zero outside the image.

    Args:
        x: (B, C, H, W).
        channel_filter: (B, C, k*k) or (B, C, k, k).
        spatial_filter: (B, k*k, H, W).
    Returns (B, C, H, W) in ``x``'s dtype; differentiable w.r.t. all three tensors.
    """
    k, d = int(kernel_size), int(dilation)
    cf = check_ddf_args(x, channel_filter, spatial_filter, k, d)
    dtype = _compute_dtype(x, cf, spatial_filter)
    out = _DDF.apply(x.to(dtype).contiguous(), cf.to(dtype).contiguous(),
                     spatial_filter.to(dtype).contiguous(), k, d)
    return out.to(x.dtype)


# --------------------------------------------------------------------------------------
# Argument checks, shared with the fused kernels
# --------------------------------------------------------------------------------------

def check_patch_match_args(query: torch.Tensor, key: torch.Tensor, patch_size: int) -> int:
    """Validate :func:`patch_match` arguments; returns the patch size."""
    if query.ndim != 4 or key.ndim != 4:
        raise ValueError(f"patch_match expects 4-D query and key (B, C, H, W), got ndim "
                         f"{query.ndim} and {key.ndim}")
    if query.shape[0] != key.shape[0]:
        raise ValueError(f"patch_match batch sizes differ: query {query.shape[0]} vs key {key.shape[0]}")
    if query.shape[1] != key.shape[1]:
        raise ValueError(f"patch_match channel counts differ: query {query.shape[1]} vs key {key.shape[1]}")
    p = int(patch_size)
    if p < 1:
        raise ValueError(f"patch_size must be >= 1, got {patch_size}")
    (h, w), (H, W) = query.shape[-2:], key.shape[-2:]
    if min(h, w, H, W) < p:
        raise ValueError(f"patch_size {p} is larger than the query ({h}x{w}) or key ({H}x{W}) spatial size")
    if query.device != key.device:
        raise ValueError(f"patch_match query and key are on different devices ({query.device}, {key.device})")
    return p


def check_deform_conv_args(x, offset, mask, weight, bias, stride, dilation) -> int:
    """Validate :func:`deform_conv` arguments; returns the number of deformable groups.
    ``stride`` and ``dilation`` may be ints or pairs."""
    for name, t in (("x", x), ("offset", offset), ("mask", mask), ("weight", weight)):
        if t.ndim != 4:
            raise ValueError(f"deform_conv expects 4-D {name}, got shape {tuple(t.shape)}")
    B, cin = x.shape[:2]
    cout, w_cin, kh, kw = weight.shape
    K = kh * kw
    if w_cin != cin:
        raise ValueError(f"deform_conv weight input channels {w_cin} do not match x channels {cin} "
                         "(weight groups are not supported)")
    if offset.shape[0] != B or mask.shape[0] != B:
        raise ValueError(f"deform_conv batch sizes differ: x {B}, offset {offset.shape[0]}, mask {mask.shape[0]}")
    if offset.shape[1] == 0 or offset.shape[1] % (2 * K):
        raise ValueError(f"deform_conv offset channels {offset.shape[1]} are not 2*G*K for K={K} taps")
    G = offset.shape[1] // (2 * K)
    if mask.shape[1] != G * K:
        raise ValueError(f"deform_conv mask channels {mask.shape[1]} are not G*K = {G * K} "
                         f"(G={G} deformable groups from offset)")
    if cin % G:
        raise ValueError(f"deform_conv input channels {cin} are not divisible by the {G} deformable groups")
    if offset.shape[-2:] != mask.shape[-2:]:
        raise ValueError(f"deform_conv offset spatial size {tuple(offset.shape[-2:])} does not match "
                         f"mask spatial size {tuple(mask.shape[-2:])}")
    if bias is not None and tuple(bias.shape) != (cout,):
        raise ValueError(f"deform_conv bias shape {tuple(bias.shape)} is not ({cout},)")
    pairs = [v if isinstance(v, (tuple, list)) else (v, v) for v in (stride, dilation)]
    if min(pairs[0]) < 1 or min(pairs[1]) < 1:
        raise ValueError(f"deform_conv stride and dilation must be >= 1, got {stride} and {dilation}")
    devices = {t.device for t in (x, offset, mask, weight, bias) if t is not None}
    if len(devices) > 1:
        raise ValueError(f"deform_conv tensors are on different devices: {sorted(map(str, devices))}")
    return G


def check_ddf_args(x, channel_filter, spatial_filter, k: int, d: int) -> torch.Tensor:
    """Validate :func:`ddf` arguments; returns the channel filter as (B, C, k*k)."""
    if k < 1 or d < 1:
        raise ValueError(f"ddf kernel_size and dilation must be >= 1, got {k} and {d}")
    if x.ndim != 4:
        raise ValueError(f"ddf expects 4-D x (B, C, H, W), got shape {tuple(x.shape)}")
    B, C, H, W = x.shape
    cf = channel_filter
    if cf.ndim == 4 and tuple(cf.shape[2:]) == (k, k):
        cf = cf.flatten(2)
    if tuple(cf.shape) != (B, C, k * k):
        raise ValueError(f"ddf channel_filter shape {tuple(channel_filter.shape)} is neither "
                         f"({B}, {C}, {k * k}) nor ({B}, {C}, {k}, {k})")
    if tuple(spatial_filter.shape) != (B, k * k, H, W):
        raise ValueError(f"ddf spatial_filter shape {tuple(spatial_filter.shape)} is not "
                         f"({B}, {k * k}, {H}, {W})")
    if not (x.device == cf.device == spatial_filter.device):
        raise ValueError("ddf tensors must be on the same device")
    return cf
