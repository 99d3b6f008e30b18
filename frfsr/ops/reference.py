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
    Chunking does not change the result. :func:`deform_conv_backward` recomputes the
    sampled columns chunk by chunk with the same bound (autograd through
    :func:`deform_conv` instead keeps every chunk's columns until the backward pass).
``ddf``
    A custom autograd function loops over the k * k taps with shifted views of the padded
    input; forward and backward hold a few (B, C, H, W) temporaries, never a
    (B, C * k * k, H, W) unfold, and nothing but the inputs is saved for backward
    (:func:`ddf_backward` is that backward pass on its own).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "patch_match", "patch_match_block_shape", "patch_match_stats", "PATCH_MATCH_MAX_BLOCK_ELEMS",
    "match_score_backward",
    "deform_conv", "deform_conv_backward", "DEFORM_CONV_MAX_COLUMN_ELEMS", "ddf", "ddf_backward",
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


def match_score_backward(grad_score: torch.Tensor, query: torch.Tensor, key: torch.Tensor, index: torch.Tensor,
                         patch_size: int, needs=(True, True)):
    """Gradients w.r.t. ``query`` and ``key`` of a matching score, for :func:`patch_match` and
    :func:`frfsr.ops.window.window_match` alike: the gradient semantics of the
    ``frfsr::patch_match`` and ``frfsr::window_match`` custom operators, whatever kernel
    computed the forward pass.

    ``score[b, y, x] = <q, k> / ((||k|| + 1e-5) (||q|| + 1e-5))`` with ``q`` the query patch at
    (y, x) and ``k`` the key patch that ``index[b, y, x]`` selects (row-major in the
    (H-p+1, W-p+1) grid, norms over C*p*p). The selection is held fixed (the index is a
    piecewise-constant function of the inputs and has no gradient); a position whose index is
    -1 (no candidate) contributes nothing; a norm term at an all-zero patch contributes 0,
    the value PyTorch gives the norm's gradient at 0. Returns (grad_query, grad_key) in the
    inputs' dtypes, None where ``needs`` (two flags) is false. Memory: a few (B, C, h-p+1,
    w-p+1) temporaries; the key gradient is accumulated with ``scatter_add``.
    """
    p = int(patch_size)
    need_q, need_k = (bool(n) for n in needs)
    if not (need_q or need_k):
        return None, None
    B, C, h, w = query.shape
    H, W = key.shape[-2:]
    hq, wq, wk = h - p + 1, w - p + 1, W - p + 1
    if tuple(index.shape) != (B, hq, wq) or tuple(grad_score.shape) != (B, hq, wq):
        raise ValueError(f"match_score_backward expects index and grad_score of shape {(B, hq, wq)}, got "
                         f"{tuple(index.shape)} and {tuple(grad_score.shape)}")
    dtype = _compute_dtype(query, key)
    q, k = query.to(dtype), key.to(dtype)
    valid = index >= 0
    idx = index.clamp_min(0)
    corner = (torch.div(idx, wk, rounding_mode="floor") * W + idx % wk).reshape(B, 1, hq * wq)
    kflat = k.reshape(B, C, H * W)

    def taps():
        """Per tap (ty, tx): the query pixels, the selected key patches' pixels and their flat positions."""
        for ty in range(p):
            for tx in range(p):
                pix = (corner + (ty * W + tx)).expand(B, C, hq * wq)
                yield q[:, :, ty:ty + hq, tx:tx + wq], kflat.gather(2, pix).view(B, C, hq, wq), pix, ty, tx

    dot, nq2, nk2 = (q.new_zeros(B, hq, wq) for _ in range(3))
    for q_t, k_t, _, _, _ in taps():
        dot += (q_t * k_t).sum(1)
        nq2 += q_t.square().sum(1)
        nk2 += k_t.square().sum(1)
    nq, nk = nq2.sqrt(), nk2.sqrt()
    aq, ak = 1.0 / (nq + _EPS), 1.0 / (nk + _EPS)
    g = torch.where(valid, grad_score.to(dtype), torch.zeros((), dtype=dtype, device=q.device))
    s = dot * aq * ak
    c_cross = (g * aq * ak)[:, None]                       # d score / d q = c_cross * k + c_q * q, likewise k
    c_q = (-g * s * aq / torch.where(nq > 0, nq, torch.ones_like(nq)))[:, None]   # s = 0 where nq = 0
    c_k = (-g * s * ak / torch.where(nk > 0, nk, torch.ones_like(nk)))[:, None]
    gq = torch.zeros_like(q) if need_q else None
    gk = torch.zeros_like(kflat) if need_k else None
    for q_t, k_t, pix, ty, tx in taps():
        if need_q:
            gq[:, :, ty:ty + hq, tx:tx + wq] += c_cross * k_t + c_q * q_t
        if need_k:
            gk.scatter_add_(2, pix, (c_cross * q_t + c_k * k_t).reshape(B, C, hq * wq))
    return (gq.to(query.dtype) if need_q else None,
            gk.view(B, C, H, W).to(key.dtype) if need_k else None)


# --------------------------------------------------------------------------------------
# Modulated deformable convolution
# --------------------------------------------------------------------------------------

def pair(v, name: str = "value") -> tuple[int, int]:
    """``v`` as an (h, w) pair of ints: an int is used for both."""
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}")
        return int(v[0]), int(v[1])
    return int(v), int(v)


class _DeformPlan:
    """Geometry of one :func:`deform_conv` call in the compute dtype, shared by the forward
    and the backward pass: the (padded) input per deformable group, the weight as a matrix,
    the tap positions and the output-row chunks. The arguments are checked by the caller."""

    def __init__(self, x, offset, mask, weight, stride, padding, dilation, max_column_elems):
        B, cin, h_in, w_in = x.shape
        cout, _, kh, kw = weight.shape
        K = kh * kw
        self.G = G = offset.shape[1] // (2 * K)
        self.dtype = dtype = _compute_dtype(x, offset, mask, weight)
        x, self.offset, self.mask, weight = (t.to(dtype) for t in (x, offset, mask, weight))
        self.h_out, self.w_out = h_out, w_out = offset.shape[-2:]
        self.B, self.cin, self.h_in, self.w_in, self.cout, self.K, self.cg = B, cin, h_in, w_in, cout, K, cin // G
        (sh, sw), (ph, pw), (dh, dw) = pair(stride), pair(padding), pair(dilation)
        self.sh, self.ph, self.dh = sh, ph, dh
        # grid_sample(align_corners=True) maps -1..1 onto pixel centres 0..size-1, which is
        # degenerate for size 1: pad such dimensions with one zero pixel (same zero semantics).
        if h_in == 1 or w_in == 1:
            x = F.pad(x, (0, int(w_in == 1), 0, int(h_in == 1)))
        self.hs, self.ws = x.shape[-2:]
        self.xg = x.reshape(B * G, self.cg, self.hs, self.ws)
        self.w2d = weight.reshape(cout, cin * K)
        self.tap_i = torch.arange(kh, device=x.device, dtype=dtype).repeat_interleave(kw)   # (K,)
        tap_j = torch.arange(kw, device=x.device, dtype=dtype).repeat(kh)
        xo = torch.arange(w_out, device=x.device, dtype=dtype) * sw - pw
        self.base_x = (xo.view(1, w_out) + tap_j.view(K, 1) * dw).view(K, 1, w_out)
        limit = DEFORM_CONV_MAX_COLUMN_ELEMS if max_column_elems is None else int(max_column_elems)
        self.rows = max(1, min(h_out, limit // max(1, B * cin * K * w_out)))

    def chunks(self):
        """(first row, end row) of every chunk of output rows."""
        return [(r0, min(self.h_out, r0 + self.rows)) for r0 in range(0, self.h_out, self.rows)]

    def grid(self, r0: int, r1: int) -> torch.Tensor:
        """grid_sample grid (B*G, K*n, Wo, 2) of the output rows [r0, r1)."""
        n, B, G, K, w_out = r1 - r0, self.B, self.G, self.K, self.w_out
        yo = torch.arange(r0, r1, device=self.xg.device, dtype=self.dtype) * self.sh - self.ph
        base_y = (yo.view(1, n) + self.tap_i.view(K, 1) * self.dh).view(K, n, 1)
        off = self.offset[:, :, r0:r1].reshape(B, G, K, 2, n, w_out)
        py = base_y + off[:, :, :, 0]                                  # (B, G, K, n, Wo)
        px = self.base_x + off[:, :, :, 1]
        grid = torch.stack((px * (2.0 / (self.ws - 1)) - 1.0, py * (2.0 / (self.hs - 1)) - 1.0), dim=-1)
        return grid.view(B * G, K * n, w_out, 2)

    def samples(self, grid: torch.Tensor, r0: int, r1: int) -> torch.Tensor:
        """Bilinear samples (B, G, Cg, K, n, Wo) of the input at ``grid``."""
        cols = F.grid_sample(self.xg, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        return cols.view(self.B, self.G, self.cg, self.K, r1 - r0, self.w_out)

    def chunk_mask(self, r0: int, r1: int) -> torch.Tensor:
        return self.mask[:, :, r0:r1].reshape(self.B, self.G, 1, self.K, r1 - r0, self.w_out)


def deform_conv(x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor,
                bias: torch.Tensor | None = None, stride=1, padding=1, dilation=1,
                max_column_elems: int | None = None) -> torch.Tensor:
    """Modulated deformable convolution (DCNv2 semantics) on an output grid given by ``offset``.

    Args:
        x: (B, Cin, Hin, Win), any spatial size.
        offset: (B, 2*G*K, Ho, Wo), K = kh*kw; channel 2*(g*K + k) is dy and 2*(g*K + k) + 1
            is dx for deformable group g and tap k = i*kw + j.
        mask: (B, G*K, Ho, Wo), modulation multiplier (already activated).
        weight: (Cout, Cin, kh, kw); bias: (Cout,) or None.
        stride, padding, dilation: ints or (h, w) pairs; tap (i, j) of output (yo, xo) samples
            y = yo*stride - padding + i*dilation + dy, x = xo*stride - padding + j*dilation + dx.
        max_column_elems: column-buffer bound (default :data:`DEFORM_CONV_MAX_COLUMN_ELEMS`).

    Input channel c belongs to group c // (Cin // G). Sampling is bilinear with zero
    contribution from corners outside the image (0 for y <= -1 or y >= Hin). Returns
    (B, Cout, Ho, Wo) in ``x``'s dtype; differentiable w.r.t. every tensor argument.
    """
    check_deform_conv_args(x, offset, mask, weight, bias, stride, dilation, padding)
    plan = _DeformPlan(x, offset, mask, weight, stride, padding, dilation, max_column_elems)
    B, cin, cout, K, w_out = plan.B, plan.cin, plan.cout, plan.K, plan.w_out
    chunks = []
    for r0, r1 in plan.chunks():
        cols = plan.samples(plan.grid(r0, r1), r0, r1) * plan.chunk_mask(r0, r1)
        n = r1 - r0
        chunks.append(torch.matmul(plan.w2d, cols.reshape(B, cin * K, n * w_out)).view(B, cout, n, w_out))
    out = chunks[0] if len(chunks) == 1 else torch.cat(chunks, dim=2)
    if bias is not None:
        out = out + bias.to(plan.dtype).view(1, cout, 1, 1)
    return out.to(x.dtype)


def deform_conv_backward(grad: torch.Tensor, x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor,
                         weight: torch.Tensor, bias: torch.Tensor | None = None, stride=1, padding=1, dilation=1,
                         needs=(True, True, True, True, True), max_column_elems: int | None = None):
    """Gradients of :func:`deform_conv` w.r.t. (x, offset, mask, weight, bias) for the output
    gradient ``grad`` (B, Cout, Ho, Wo), each in its input's dtype, None where ``needs`` (five
    flags, same order) is false or the bias is None.

    Explicit formulas, not autograd: per chunk of output rows (the forward pass's chunks,
    same column-buffer bound) the samples are recomputed and the gradients of the matrix
    product, the modulation and the bilinear sampling (``grid_sampler_2d_backward``) are
    accumulated. Equal to autograd through :func:`deform_conv` up to rounding.
    """
    check_deform_conv_args(x, offset, mask, weight, bias, stride, dilation, padding)
    plan = _DeformPlan(x, offset, mask, weight, stride, padding, dilation, max_column_elems)
    need_x, need_off, need_mask, need_w, need_b = (bool(n) for n in needs)
    need_b = need_b and bias is not None
    B, G, cin, cg, cout, K, w_out = plan.B, plan.G, plan.cin, plan.cg, plan.cout, plan.K, plan.w_out
    if tuple(grad.shape) != (B, cout, plan.h_out, w_out):
        raise ValueError(f"deform_conv_backward grad shape {tuple(grad.shape)} is not the output shape "
                         f"{(B, cout, plan.h_out, w_out)}")
    g = grad.to(plan.dtype)
    gxg = torch.zeros_like(plan.xg) if need_x else None
    gw2d = plan.w2d.new_zeros(plan.w2d.shape) if need_w else None
    goff_parts, gmask_parts = [], []
    for r0, r1 in plan.chunks():
        n = r1 - r0
        grid = plan.grid(r0, r1)
        samp = plan.samples(grid, r0, r1)                             # (B, G, Cg, K, n, Wo)
        m = plan.chunk_mask(r0, r1)
        gc = g[:, :, r0:r1].reshape(B, cout, n * w_out)
        if need_w:
            cols = (samp * m).reshape(B, cin * K, n * w_out)
            gw2d += torch.matmul(gc, cols.transpose(1, 2)).sum(0)
        if not (need_x or need_off or need_mask):
            continue
        gcol = torch.matmul(plan.w2d.t(), gc).view(B, G, cg, K, n, w_out)   # d out / d (sample * mask)
        if need_mask:
            gmask_parts.append((gcol * samp).sum(2).reshape(B, G * K, n, w_out))
        if need_x or need_off:
            gsamp = (gcol * m).reshape(B * G, cg, K * n, w_out)
            g_in, g_grid = torch.ops.aten.grid_sampler_2d_backward(
                gsamp, plan.xg, grid, 0, 0, True, [need_x, need_off])       # bilinear, zeros, align_corners
            if need_x:
                gxg += g_in
            if need_off:
                gg = g_grid.view(B, G, K, n, w_out, 2)
                # grid x = px * 2 / (ws - 1) - 1 with px = base + dx (likewise y): chain rule per axis
                dy = gg[..., 1] * (2.0 / (plan.hs - 1))
                dx = gg[..., 0] * (2.0 / (plan.ws - 1))
                goff_parts.append(torch.stack((dy, dx), dim=3).reshape(B, 2 * G * K, n, w_out))
    gx = goff = gmask = gw = gb = None
    if need_x:
        gx = gxg.view(B, cin, plan.hs, plan.ws)[:, :, :plan.h_in, :plan.w_in].to(x.dtype)
    if need_off:
        goff = torch.cat(goff_parts, dim=2).to(offset.dtype)
    if need_mask:
        gmask = torch.cat(gmask_parts, dim=2).to(mask.dtype)
    if need_w:
        gw = gw2d.view(weight.shape).to(weight.dtype)
    if need_b:
        gb = g.sum(dim=(0, 2, 3)).to(bias.dtype)
    return gx, goff, gmask, gw, gb


# --------------------------------------------------------------------------------------
# Decoupled dynamic filter
# --------------------------------------------------------------------------------------

def _ddf_taps(k: int, dilation: int):
    """(tap index, row shift, column shift) into the padded input, and the padding (lo, hi)."""
    lo, hi = (k // 2) * dilation, (k - 1 - k // 2) * dilation
    return [(i * k + j, i * dilation, j * dilation) for i in range(k) for j in range(k)], (lo, hi)


def ddf_backward(grad: torch.Tensor, x: torch.Tensor, cf: torch.Tensor, sf: torch.Tensor, k: int, dilation: int,
                 needs=(True, True, True)):
    """Gradients of the DDF sum w.r.t. ``x`` (B, C, H, W), ``cf`` (B, C, k*k) and ``sf``
    (B, k*k, H, W), all of one floating dtype, for the output gradient ``grad``; None where
    ``needs`` (three flags) is false. Loops over the taps like the forward pass."""
    taps, (lo, hi) = _ddf_taps(k, dilation)
    H, W = x.shape[-2:]
    need_x, need_cf, need_sf = (bool(n) for n in needs)
    xp = F.pad(x, (lo, hi, lo, hi)) if (need_cf or need_sf) else None
    gxp = x.new_zeros((*x.shape[:2], H + lo + hi, W + lo + hi)) if need_x else None
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
    return gx, gcf, gsf


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
    taps, (lo, hi) = _ddf_taps(k, d)
    H, W = x.shape[-2:]
    xp = F.pad(x.to(dtype), (lo, hi, lo, hi))
    sf, cf = spatial_filter.to(dtype), cf.to(dtype)
    out = xp.new_zeros(xp.shape[:2] + (H, W))
    for t, dy, dx in taps:    # autograd (where called directly) records these; frfsr::ddf uses ddf_backward
        out.addcmul_(xp[:, :, dy:dy + H, dx:dx + W] * sf[:, t:t + 1], cf[:, :, t, None, None])
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
    if not (query.is_floating_point() and key.is_floating_point()):
        raise ValueError(f"patch_match expects floating query and key, got {query.dtype} and {key.dtype}")
    p = int(patch_size)
    if p < 1:
        raise ValueError(f"patch_size must be >= 1, got {patch_size}")
    (h, w), (H, W) = query.shape[-2:], key.shape[-2:]
    if min(h, w, H, W) < p:
        raise ValueError(f"patch_size {p} is larger than the query ({h}x{w}) or key ({H}x{W}) spatial size")
    if query.device != key.device:
        raise ValueError(f"patch_match query and key are on different devices ({query.device}, {key.device})")
    return p


def check_deform_conv_args(x, offset, mask, weight, bias, stride, dilation, padding=0) -> int:
    """Validate :func:`deform_conv` arguments; returns the number of deformable groups.
    ``stride``, ``dilation`` and ``padding`` may be ints or pairs."""
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
    st, dl = pair(stride, "deform_conv stride"), pair(dilation, "deform_conv dilation")
    pair(padding, "deform_conv padding")
    if min(st) < 1 or min(dl) < 1:
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
