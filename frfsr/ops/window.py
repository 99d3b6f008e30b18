"""Windowed cosine patch matching, plain PyTorch (CPU and GPU, autograd): the reference
for the fused kernel in :mod:`frfsr.ops.triton.window_match` and the native CPU kernel in
:mod:`frfsr.ops.native`, and the fine step of :func:`frfsr.ops.fast_match.fast_patch_match`.

The query patch grid is cut into square *cells* of ``cell`` x ``cell`` patch positions.
Every cell has ``M`` candidate displacements (flows). Every query patch of cell
(cy, cx) (query corners y in [cy * cell, (cy + 1) * cell), likewise x) is compared, for
every flow (dy, dx) of its cell, with all key patches whose top-left corner lies in the
square the cell's corners cover moved by the flow and widened by ``radius`` on each side:
rows [cy * cell + dy - radius, (cy + 1) * cell + dy + radius), likewise columns, i.e.
(cell + 2 * radius)**2 key corners per flow; corners outside the key patch grid are
skipped. The cosine is the
one of :func:`frfsr.ops.reference.patch_match`: <q, k> / (||k|| + 1e-5) / (||q|| + 1e-5),
norms over the C * p * p patch values, ties to the lowest key index.

Memory bound
------------
The per-pixel features of the query (unfolded into overlapping cell blocks, about
``(cell + p - 1)**2 / cell**2`` times the query) and of the key (one channels-last copy),
plus one chunk of cells whose gathered key blocks and block correlations hold at most
``max_block_elems`` elements (default :data:`WINDOW_MATCH_MAX_BLOCK_ELEMS`; one cell if its
blocks alone hold more). Nothing grows with (query positions x key positions).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["window_match", "check_window_match_args", "patch_norms", "flows_needed", "WINDOW_MATCH_MAX_BLOCK_ELEMS"]

WINDOW_MATCH_MAX_BLOCK_ELEMS = 2 ** 25
"""Default upper bound on the elements of one chunk's gathered key blocks plus correlations
(128 MiB of float32; on a 2-core CPU 2**21 to 2**26 took about the same time)."""

_EPS = 1e-5


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def patch_norms(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """L2 norm of every ``patch_size`` x ``patch_size`` patch of ``x`` (B, C, H, W) over its
    C * p * p values: (B, H - p + 1, W - p + 1)."""
    sq = x.pow(2).sum(1, keepdim=True)
    return (F.avg_pool2d(sq, patch_size, stride=1) * (patch_size * patch_size)).clamp_min(0).sqrt()[:, 0]


def _tap_sum(parts: list[torch.Tensor]) -> torch.Tensor:
    """Sum of equally shaped (strided) slices into a new tensor, the first two in one pass."""
    out = parts[0] + parts[1] if len(parts) > 1 else parts[0].clone()
    for t in parts[2:]:
        out.add_(t)
    return out


def flows_needed(flows: torch.Tensor) -> torch.Tensor:
    """How many of its flows every cell needs: (B, hc, wc, M, 2) -> (B, hc, wc), the position
    of its last flow other than its first, plus one (at least 1). The flows after it only
    repeat the first and cannot change the cell's result."""
    M = flows.shape[-2]
    differs = (flows != flows[..., :1, :]).any(-1)
    return torch.where(differs, torch.arange(1, M + 1, device=flows.device), 0).amax(-1).clamp_min(1)


def check_window_match_args(query, key, flows, cell, radius, patch_size) -> tuple[int, int, int]:
    """Validate :func:`window_match` arguments; returns (patch size, cell, radius)."""
    from .reference import check_patch_match_args
    p = check_patch_match_args(query, key, patch_size)
    s, r = int(cell), int(radius)
    if s < 1 or r < 0:
        raise ValueError(f"window_match needs cell >= 1 and radius >= 0, got {cell} and {radius}")
    B, _, h, w = query.shape
    hc, wc = -(-(h - p + 1) // s), -(-(w - p + 1) // s)
    if flows.ndim != 5 or tuple(flows.shape[:3]) != (B, hc, wc) or flows.shape[3] < 1 or flows.shape[4] != 2:
        raise ValueError(f"window_match flows must be (B, cells_y, cells_x, M, 2) = ({B}, {hc}, {wc}, M >= 1, 2) "
                         f"for a {h}x{w} query and cell {s}; got {tuple(flows.shape)}")
    if flows.is_floating_point() or flows.is_complex() or flows.dtype == torch.bool:
        raise ValueError(f"window_match flows must be an integer tensor, got {flows.dtype}")
    if flows.device != query.device:
        raise ValueError(f"window_match flows are on {flows.device} but the query is on {query.device}")
    return p, s, r


def window_match(query: torch.Tensor, key: torch.Tensor, flows: torch.Tensor, cell: int, radius: int,
                 patch_size: int = 3, max_block_elems: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Best cosine match of every query patch among the key patches in its cell's windows.

    Args:
        query: (B, C, h, w), L2-normalised per pixel over channels by the caller.
        key: (B, C, H, W), same normalisation.
        flows: (B, ceil((h-p+1)/cell), ceil((w-p+1)/cell), M, 2) integer (dy, dx) candidate
            displacements per cell. Repeats are allowed; those of a cell's first flow after
            its last other flow cost nothing (pad cells with fewer flows so, as
            :func:`frfsr.ops.fast_match.unique_flows` does), other repeats cost time.
        cell, radius: see the module docstring.
        patch_size: p.
        max_block_elems: chunk bound (default :data:`WINDOW_MATCH_MAX_BLOCK_ELEMS`).

    Returns:
        ``score`` (B, h-p+1, w-p+1) in the input dtype and ``index`` (same shape, int64,
        row-major into the (H-p+1, W-p+1) key-patch grid), like ``patch_match`` restricted
        to the windows; ties resolve to the lowest index. A query patch none of whose
        windows holds a valid key corner gets score -inf and index -1.
    """
    p, s, r = check_window_match_args(query, key, flows, cell, radius, patch_size)
    B, C, h, w = query.shape
    H, W = key.shape[-2:]
    hq, wq, hk, wk = h - p + 1, w - p + 1, H - p + 1, W - p + 1
    hc, wc, M = flows.shape[1], flows.shape[2], flows.shape[3]
    dev = query.device
    dtype = _compute_dtype(query, key)
    q, k = query.to(dtype), key.to(dtype)
    qn, kn = patch_norms(q, p), patch_norms(k, p)

    A, V = s + p - 1, s + 2 * r             # query block side (pixels), key corners per side of a square
    T = V + p - 1                           # key block side (pixels)
    # Query pixel blocks of every cell: (B * hc * wc, A * A, C).
    qpad = F.pad(q, (0, wc * s + p - 1 - w, 0, hc * s + p - 1 - h))
    qblocks = (F.unfold(qpad, A, stride=s).view(B, C, A * A, hc * wc).permute(0, 3, 2, 1)
               .reshape(B * hc * wc, A * A, C).contiguous())
    # Channels-last key padded by T pixels at both ends, seen as overlapping runs of T pixels:
    # one gathered run is a block row (T * C contiguous values), and a run may start left of
    # its row or end right of it (those pixels only reach corners that are masked out below).
    kflat = F.pad(k.permute(0, 2, 3, 1).reshape(B * H * W, C), (0, 0, T, T))
    kruns = kflat.as_strided((B * H * W + T + 1, T * C), (C, 1))
    knflat = kn.reshape(B * hk * wk)
    fl = flows.reshape(B * hc * wc, M, 2).long()

    # Cells are visited by the number of flows they need (flows_needed), largest first, and each
    # chunk searches as many flows as its first cell needs.
    rows_total = B * hc * wc
    need = flows_needed(fl)
    order = torch.argsort(need, descending=True, stable=True)
    need = need[order].tolist()
    per_flow = T * T * (C + A * A) + 2 * s * s * V * V
    limit = WINDOW_MATCH_MAX_BLOCK_ELEMS if max_block_elems is None else int(max_block_elems)
    capacity = max(limit // per_flow, need[0])      # flows (one key block each) of the largest chunk

    ar_t = torch.arange(T, device=dev)
    ar_v = torch.arange(V, device=dev)
    neg_inf = torch.full((), float("-inf"), device=dev, dtype=dtype)
    # Reused buffers: fresh large allocations per chunk cost page faults on CPU.
    need_grad = torch.is_grad_enabled() and (query.requires_grad or key.requires_grad)
    kb_buf = None if need_grad else kflat.new_empty(capacity * T * T * C)
    g_buf = None if need_grad else kflat.new_empty(capacity * A * A * T * T)
    best_all, idx_all = [], []
    r0 = 0
    while r0 < rows_total:
        Mc = need[r0]
        n = max(1, min(rows_total - r0, limit // (per_flow * Mc)))
        rows = order[r0:r0 + n]
        r0 += n
        b = torch.div(rows, hc * wc, rounding_mode="floor")
        cy = torch.div(rows % (hc * wc), wc, rounding_mode="floor")
        cx = rows % wc
        f = fl[rows, :Mc]
        by = cy[:, None] * s + f[..., 0] - r                    # (n, Mc): first key corner of the square
        bx = cx[:, None] * s + f[..., 1] - r
        # (n, Mc, T) run starts; clamped rows and runs only reach corners that are masked out below
        py = (by[..., None] + ar_t).clamp(0, H - 1)
        run = (T + b[:, None, None] * (H * W) + py * W + bx.clamp(-T, W)[..., None]).reshape(-1)
        qb = qblocks.index_select(0, rows)
        if kb_buf is None:
            kb = kruns.index_select(0, run).view(n, Mc * T * T, C)
            G = torch.bmm(qb, kb.transpose(1, 2))
        else:
            kb = torch.index_select(kruns, 0, run, out=kb_buf[:run.numel() * T * C].view(-1, T * C))
            G = torch.bmm(qb, kb.view(n, Mc * T * T, C).transpose(1, 2),
                          out=g_buf[:n * A * A * Mc * T * T].view(n, A * A, Mc * T * T))
        G = G.view(n, A, A, Mc, T, T)
        # corr[i, uy, ux, m, vy, vx] = sum over taps t of G[i, uy + ty, ux + tx, m, vy + ty, vx + tx],
        # summed over tx first, then ty
        rowsum = _tap_sum([G[:, :, tx:tx + s, :, :, tx:tx + V] for tx in range(p)])
        corr = _tap_sum([rowsum[:, ty:ty + s, :, :, ty:ty + V] for ty in range(p)])
        del G, rowsum
        ky = by[..., None, None] + ar_v[:, None]                 # (n, Mc, V, 1)
        kx = bx[..., None, None] + ar_v                          # (n, Mc, 1, V)
        valid = (ky >= 0) & (ky < hk) & (kx >= 0) & (kx < wk)   # (n, Mc, V, V)
        kidx = ky.clamp(0, hk - 1) * wk + kx.clamp(0, wk - 1)
        knv = knflat[(b[:, None, None, None] * (hk * wk) + kidx).reshape(-1)].view(kidx.shape)
        inv = torch.where(valid, 1.0 / (knv + _EPS), torch.zeros((), device=dev, dtype=dtype))
        bias = torch.where(valid, torch.zeros((), device=dev, dtype=dtype), neg_inf)
        # score = corr / (||k|| + eps), -inf where the corner is outside the key grid
        score = torch.addcmul(bias.view(n, 1, 1, -1), corr.view(n, s, s, -1), inv.view(n, 1, 1, -1))
        del corr
        # Best per flow first: within a flow's square the corners are in row-major order, so the
        # first maximum (torch.max's documented tie rule) is the lowest key index; then the flows'
        # winners are compared, ties to the lowest index (Mc values per patch, not Mc * V * V).
        vals, arg = score.view(n, s, s, Mc, V * V).max(dim=4)
        del score
        kidx = kidx.view(n, 1, 1, Mc, V * V).expand(n, s, s, Mc, V * V).gather(4, arg.unsqueeze(4)).squeeze(4)
        best = vals.max(dim=3).values
        big = torch.full((), hk * wk, device=dev, dtype=kidx.dtype)
        idx = torch.where(vals == best[..., None], kidx, big).min(dim=3).values
        idx = torch.where(torch.isneginf(best), torch.full_like(idx, -1), idx)
        best_all.append(best)
        idx_all.append(idx)

    unsort = torch.argsort(order)

    def assemble(parts):
        t = torch.cat(parts)[unsort].view(B, hc, wc, s, s).permute(0, 1, 3, 2, 4).reshape(B, hc * s, wc * s)
        return t[:, :hq, :wq]

    score = assemble(best_all) / (qn + _EPS)
    return score.to(query.dtype), assemble(idx_all)
