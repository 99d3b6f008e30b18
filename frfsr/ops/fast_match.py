"""Coarse-to-fine cosine patch matching whose cost grows linearly with the query.

:func:`fast_patch_match` returns what :func:`frfsr.ops.patch_match` returns (``score``,
``index``; same cosine, same tie rule) but searches only where a coarse match points:

1. *Coarse descriptors.* The per-pixel normalised features are averaged over cells of
   ``cell`` x ``cell`` patch centres (the query on a grid of step ``query_stride``, default
   ``cell``, the key on a grid of step ``key_stride``) and renormalised per coarse pixel;
   with ``context=3`` a coarse position is described by the 3 x 3 coarse pixels around it
   (the same ``3 * cell`` span on both sides), normalised, with ``context=1`` (default) by
   its own coarse pixel.
2. *Candidates.* For every query cell, the ``topk`` most similar key positions over the whole
   coarse key (exact top-k by blocked matrix products, or by the native CPU kernel, which never
   stores the similarities), as displacements (flows). With ``coarse_dims`` (default 64) the
   descriptors are first projected on their first ``coarse_dims`` principal components
   (of the query's and the key's descriptors together): a quarter of the products at 128
   channels.
3. *Propagation.* A cell also takes the flows (the best ``neighbour_topk``) of the cells up
   to ``neighbours`` cells away (as PatchMatch propagates good matches to adjacent patches),
   and the cells are grouped into search cells of ``search_cell`` x ``search_cell`` patches
   that share all their cells' flows (repeats dropped).
4. *Windowed search.* Every query patch of a search cell compares itself, for each of the
   search cell's flows, with the key patches in the search cell's square moved by the flow
   and widened by ``radius`` (:func:`frfsr.ops.window_match`), and keeps the best cosine.
5. *Propagation* (optional, ``rounds`` > 0; off by default). PatchMatch at full resolution: every
   query patch tries the flows of the patches ``jumps`` positions away and ``samples``
   random offsets of its own flow (:func:`propagate`).

Cost: step 2 is (query / query_stride^2) x (key / key_stride^2) coarse dot products of
min(coarse_dims, context^2 C) values,
step 4 at most (query positions / search_cell^2) x topk x (search_cell / query_stride + 2
neighbours)^2 block products of (search_cell + p - 1)^2 x (search_cell + 2 radius + p - 1)^2
x C, linear in the query and independent of the key's size; see :func:`flop_counts`. Memory: bounded by the chunk sizes, never by query x key.

:data:`FAST_MATCH_MIN_PAIRS` is where ``match_mode="auto"`` switches from exact to fast.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from .reference import PATCH_MATCH_MAX_BLOCK_ELEMS
from .window import _EPS, patch_norms
from .window import window_match as _reference_window_match

__all__ = ["fast_patch_match", "candidate_flows", "coarse_topk", "principal_components", "cell_flows", "propagate", "corner_scores", "flop_counts", "mode_for_counts",
           "MATCH_MODES", "FAST_MATCH_MIN_PAIRS", "FAST_MATCH_DEFAULTS"]

MATCH_MODES = ("exact", "fast", "auto")

FAST_MATCH_MIN_PAIRS = 2 ** 26
"""``match_mode="auto"`` uses the fast mode when (query patch positions) x (key patches,
all Refs together) exceeds this (e.g. an LR of 92 px against a Ref of 368 px); below it the
exact mode, the release's, is kept (where the two cross: BENCHMARKS.md, "Fast matching")."""

FAST_MATCH_DEFAULTS = {"cell": 2, "search_cell": 4, "key_stride": 2, "topk": 22, "neighbours": 0,
                       "neighbour_topk": None, "radius": 1, "context": 1, "query_stride": None, "rounds": 0,
                       "jumps": (1,), "samples": 0, "search_radius": 8, "coarse_dims": 64}
"""Defaults of :func:`fast_patch_match` (parameters as in the module docstring). How often they
find exact matching's match, how close the SR stays, their speed and the designs compared:
BENCHMARKS.md, "Fast matching"."""


def mode_for_counts(mode: str, n_query: int, n_key: int) -> str:
    """'exact' or 'fast' for a ``match_mode`` and the numbers of query positions and key
    patches (summed over Refs)."""
    if mode not in MATCH_MODES:
        raise ValueError(f"unknown match_mode {mode!r}; accepted: {', '.join(MATCH_MODES)}")
    if mode == "auto":
        return "fast" if n_query * n_key > FAST_MATCH_MIN_PAIRS else "exact"
    return mode


def _coarse_descriptors(x: torch.Tensor, cell: int, stride: int, patch_size: int,
                        context: int = 3) -> tuple[torch.Tensor, tuple[int, int]]:
    """Coarse descriptors of a per-pixel normalised map (B, C, H, W): coarse position j sits
    at patch corner ``stride * j`` and pools the patch centres [stride*j, stride*j + cell)
    (+ p//2); its descriptor is the 3 x 3 coarse neighbourhood at spacing ``cell``.
    Returns (B, 9C, n_y * n_x) normalised descriptors and (n_y, n_x)."""
    c0 = patch_size // 2
    H, W = x.shape[-2:]
    ny, nx = -(-(H - patch_size + 1) // stride), -(-(W - patch_size + 1) // stride)
    sh = x[..., c0:, c0:]
    sh = F.pad(sh, (0, max(0, stride * (nx - 1) + cell - sh.shape[-1]), 0, max(0, stride * (ny - 1) + cell - sh.shape[-2])))
    pooled = F.normalize(F.avg_pool2d(sh, cell, stride=stride)[..., :ny, :nx], dim=1)
    d = cell // stride
    if context == 1:
        return pooled.flatten(2), (ny, nx)
    desc = F.unfold(pooled, 3, dilation=d, padding=d)
    return F.normalize(desc, dim=1), (ny, nx)


def principal_components(qd: torch.Tensor, kd: torch.Tensor, dims: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``qd`` (B, D, Nq) and ``kd`` (B, D, Nk) projected on the first ``dims`` principal axes
    (uncentred: the eigenvectors of the largest eigenvalues of their joint second moment, per
    batch element), so that dot products keep as much of their value as ``dims`` axes can;
    unchanged if ``dims`` >= D."""
    D = qd.shape[1]
    if dims >= D:
        return qd, kd
    x = torch.cat((qd, kd), 2)
    _, vecs = torch.linalg.eigh(torch.bmm(x, x.transpose(1, 2)).double())
    proj = vecs[..., -dims:].to(qd.dtype).transpose(1, 2)            # (B, dims, D)
    return torch.bmm(proj, qd), torch.bmm(proj, kd)


def _native_kernels(t: torch.Tensor, backend: str | None) -> bool:
    """Whether the ops backend ``backend`` runs the native CPU kernels for ``t``."""
    from . import backend_for
    return t.dtype == torch.float32 and backend_for(t, backend) == "native"


def coarse_topk(qd: torch.Tensor, kd: torch.Tensor, k: int, max_block_elems: int | None = None, *,
                backend: str | None = None) -> torch.Tensor:
    """Indices (B, Nq, k') of the k' = min(k, Nk) largest dot products of every query column
    of ``qd`` (B, D, Nq) with the key columns of ``kd`` (B, D, Nk): by the native CPU kernel
    where the ops backend runs it (:func:`frfsr.ops.native.coarse_topk`), else by blocks
    whose similarity tensor holds at most ``max_block_elems`` elements."""
    if _native_kernels(qd, backend):
        from . import native
        return native.coarse_topk(qd, kd, k)
    B, _, n_q = qd.shape
    n_k = kd.shape[2]
    k = min(k, n_k)
    limit = PATCH_MATCH_MAX_BLOCK_ELEMS if max_block_elems is None else int(max_block_elems)
    bk = max(k, min(n_k, limit // B))
    bq = max(1, min(n_q, limit // (B * bk)))
    q = qd.transpose(1, 2)
    out = []
    # one reused buffer for the similarities: a fresh large allocation per block costs page faults
    buf = qd.new_empty(B * min(bq, n_q) * min(bk, n_k))
    for q0 in range(0, n_q, bq):
        vals = idx = None
        for k0 in range(0, n_k, bk):
            qb, kb = q[:, q0:q0 + bq], kd[:, :, k0:k0 + bk]
            sim = torch.bmm(qb, kb, out=buf[:B * qb.shape[1] * kb.shape[2]].view(B, qb.shape[1], kb.shape[2]))
            v, i = sim.topk(min(k, sim.shape[2]), dim=2)
            i = i + k0
            if vals is not None:
                v, j = torch.cat((vals, v), 2).topk(k, dim=2)
                i = torch.cat((idx, i), 2).gather(2, j)
            vals, idx = v, i
        out.append(idx)
    return torch.cat(out, 1)


def cell_flows(cand: torch.Tensor, grid_q: tuple[int, int], grid_k: tuple[int, int], cell: int, key_stride: int,
               neighbours: int, neighbour_topk: int | None = None) -> torch.Tensor:  # cell: the query grid's step
    """Flows (B, hc, wc, M, 2) int64, (dy, dx) in patch positions, of every query cell from
    the coarse candidates ``cand`` (B, hc * wc, k) (indices into the coarse key grid, best
    first), own candidates first, then the first ``neighbour_topk`` (None: all) candidates of
    each cell up to ``neighbours`` away (clamped at the border)."""
    B, _, k = cand.shape
    hc, wc = grid_q
    nkx = grid_k[1]
    ky, kx = torch.div(cand, nkx, rounding_mode="floor") * key_stride, (cand % nkx) * key_stride
    dev = cand.device
    cy = torch.arange(hc, device=dev).repeat_interleave(wc) * cell
    cx = torch.arange(wc, device=dev).repeat(hc) * cell
    flow = torch.stack((ky - cy[:, None], kx - cx[:, None]), dim=-1).view(B, hc, wc, k, 2)
    if neighbours <= 0:
        return flow
    kn = k if neighbour_topk is None else min(k, int(neighbour_topk))
    parts = [flow]                       # own cell first, so that its candidates are visited first
    n = neighbours
    for oy in range(-n, n + 1):
        iy = (torch.arange(hc, device=dev) + oy).clamp(0, hc - 1)
        for ox in range(-n, n + 1):
            if oy or ox:
                ix = (torch.arange(wc, device=dev) + ox).clamp(0, wc - 1)
                parts.append(flow[:, iy][:, :, ix][..., :kn, :])
    return torch.cat(parts, dim=3)


def _clamp_flows(flows: torch.Tensor, hk: int, wk: int, cell: int, radius: int) -> torch.Tensor:
    """Move each flow the least so that its square (see :mod:`frfsr.ops.window`) overlaps
    the key grid: then every query patch has at least one candidate."""
    hc, wc = flows.shape[1:3]
    dev = flows.device
    cy = (torch.arange(hc, device=dev) * cell).view(1, hc, 1, 1)
    cx = (torch.arange(wc, device=dev) * cell).view(1, 1, wc, 1)
    dy = torch.maximum(torch.minimum(flows[..., 0], hk - 1 - cy + radius), 1 - cell - radius - cy)
    dx = torch.maximum(torch.minimum(flows[..., 1], wk - 1 - cx + radius), 1 - cell - radius - cx)
    return torch.stack((dy, dx), dim=-1)


def group_flows(flows: torch.Tensor, factor: int) -> torch.Tensor:
    """Flows of groups of ``factor`` x ``factor`` cells (B, ceil(hc/f), ceil(wc/f), f*f*M, 2):
    the union of the group's cells' flows (edge cells repeated where the grid is not a
    multiple of ``factor``)."""
    if factor == 1:
        return flows
    B, hc, wc, M, _ = flows.shape
    hs, ws = -(-hc // factor), -(-wc // factor)
    iy = torch.arange(hs * factor, device=flows.device).clamp(max=hc - 1)
    ix = torch.arange(ws * factor, device=flows.device).clamp(max=wc - 1)
    f = flows[:, iy][:, :, ix].view(B, hs, factor, ws, factor, M, 2)
    return f.permute(0, 1, 3, 2, 4, 5, 6).reshape(B, hs, ws, factor * factor * M, 2)


def unique_flows(flows: torch.Tensor) -> torch.Tensor:
    """Drop repeated flows of a cell: (B, hc, wc, M, 2) -> (B, hc, wc, M', 2), M' the largest
    number of distinct flows of any cell; cells with fewer repeat their first flow. The
    result does not depend on the order of a cell's flows."""
    span = int(flows.abs().max()) if flows.numel() else 0
    side = 2 * span + 1
    big = side * side                                   # codes are in [0, big)
    code = ((flows[..., 0] + span) * side + flows[..., 1] + span).sort(dim=-1).values
    dup = torch.zeros_like(code, dtype=torch.bool)
    dup[..., 1:] = code[..., 1:] == code[..., :-1]
    m = int((~dup).sum(-1).max())
    code = torch.where(dup, code + big, code).sort(dim=-1).values[..., :m]   # distinct codes first
    code = torch.where(code >= big, code[..., :1], code)
    dy = torch.div(code, side, rounding_mode="floor") - span
    dx = code % side - span
    return torch.stack((dy, dx), dim=-1)


def corner_scores(query: torch.Tensor, key: torch.Tensor, qn: torch.Tensor, kn: torch.Tensor, ky: torch.Tensor,
                  kx: torch.Tensor, patch_size: int, max_block_elems: int | None = None) -> torch.Tensor:
    """Cosine of every query patch with the key patches whose top-left corners are
    (``ky``, ``kx``) (B, n, hq, wq), in the key patch grid: (B, n, hq, wq), the cosine of
    :func:`frfsr.ops.patch_match` (``qn``, ``kn``: the patch norms, (B, hq, wq) and
    (B, hk, wk)). Computed tap by tap from gathered key pixels, in row chunks whose
    gathered pixels hold at most ``max_block_elems`` elements; differentiable."""
    p = patch_size
    B, C, h, w = query.shape
    H, W = key.shape[-2:]
    n, hq, wq = ky.shape[1:]
    hk, wk = H - p + 1, W - p + 1
    kflat = key.permute(0, 2, 3, 1).contiguous().view(B * H * W, C)
    limit = PATCH_MATCH_MAX_BLOCK_ELEMS if max_block_elems is None else int(max_block_elems)
    rows = max(1, min(hq, limit // max(1, B * n * wq * C)))
    base = (torch.arange(B, device=ky.device) * (H * W)).view(B, 1, 1, 1)
    out = []
    for y0 in range(0, hq, rows):
        y1 = min(hq, y0 + rows)
        cy, cx = ky[:, :, y0:y1], kx[:, :, y0:y1]
        corner = base + cy * W + cx
        acc = None
        for ty in range(p):
            for tx in range(p):
                qt = query[:, :, y0 + ty:y1 + ty, tx:tx + wq].permute(0, 2, 3, 1).unsqueeze(1)   # (B, 1, r, wq, C)
                kt = kflat.index_select(0, (corner + (ty * W + tx)).reshape(-1)).view(*corner.shape, C)
                d = (kt * qt).sum(-1)
                acc = d if acc is None else acc + d
        knv = kn.reshape(B, 1, hk * wk).expand(B, n, hk * wk).gather(2, (cy * wk + cx).reshape(B, n, -1))
        out.append(acc / (knv.view(cy.shape) + _EPS))
    return torch.cat(out, 2) / (qn.unsqueeze(1) + _EPS)


def _offset_table(rounds: int, samples: int, radius: int, seed: int = 0) -> list[torch.Tensor]:
    """Per round, ``samples`` fixed pseudo-random (dy, dx) offsets, non-zero, the j-th of
    them within radius max(1, radius / 2**j) (PatchMatch's shrinking random search)."""
    g = torch.Generator().manual_seed(seed)
    table = []
    for _ in range(rounds):
        offs = []
        for j in range(samples):
            r = max(1, radius >> j)
            while True:
                o = torch.randint(-r, r + 1, (2,), generator=g)
                if o.abs().sum() > 0:
                    break
            offs.append(o)
        table.append(torch.stack(offs) if offs else torch.zeros(0, 2, dtype=torch.long))
    return table


def propagate(query: torch.Tensor, key: torch.Tensor, index: torch.Tensor, patch_size: int, rounds: int,
              jumps: tuple[int, ...] = (1,), samples: int = 0, search_radius: int = 8,
              max_block_elems: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """PatchMatch refinement of a full-resolution match ``index`` (B, hq, wq) (row-major
    key corners, all valid): ``rounds`` times, every query patch tries the flows of the
    patches ``j`` positions above, below, left and right (j in ``jumps``) and ``samples``
    random offsets of its own flow (radius ``search_radius`` halving per sample), and keeps
    the best (ties: lowest index). Memory: the chunks of :func:`corner_scores`, for
    4 * len(jumps) + samples candidates. Returns (score, index)."""
    p = patch_size
    B, _, h, w = query.shape
    H, W = key.shape[-2:]
    hq, wq, hk, wk = h - p + 1, w - p + 1, H - p + 1, W - p + 1
    dev = query.device
    qn, kn = patch_norms(query, p), patch_norms(key, p)
    ky, kx = torch.div(index, wk, rounding_mode="floor"), index % wk
    gy = torch.arange(hq, device=dev).view(1, hq, 1)
    gx = torch.arange(wq, device=dev).view(1, 1, wq)
    fy, fx = ky - gy, kx - gx
    best = corner_scores(query, key, qn, kn, ky[:, None], kx[:, None], p, max_block_elems)[:, 0]
    table = _offset_table(rounds, samples, search_radius)
    for it in range(rounds):
        cfy, cfx = [], []
        for j in jumps:
            for dy, dx in ((-j, 0), (j, 0), (0, -j), (0, j)):
                iy = (torch.arange(hq, device=dev) + dy).clamp(0, hq - 1)
                ix = (torch.arange(wq, device=dev) + dx).clamp(0, wq - 1)
                cfy.append(fy[:, iy][:, :, ix])
                cfx.append(fx[:, iy][:, :, ix])
        for o in table[it].tolist():
            cfy.append(fy + o[0])
            cfx.append(fx + o[1])
        cky = (torch.stack(cfy, 1) + gy[:, None]).clamp(0, hk - 1)
        ckx = (torch.stack(cfx, 1) + gx[:, None]).clamp(0, wk - 1)
        sc = corner_scores(query, key, qn, kn, cky, ckx, p, max_block_elems)
        cidx = cky * wk + ckx
        m = sc.max(1).values
        ci = torch.where(sc == m[:, None], cidx, torch.full_like(cidx, hk * wk)).min(1).values
        cur = ky * wk + kx
        take = (m > best) | ((m == best) & (ci < cur))
        new = torch.where(take, ci, cur)
        best = torch.maximum(best, m)
        ky, kx = torch.div(new, wk, rounding_mode="floor"), new % wk
        fy, fx = ky - gy, kx - gx
    return best, ky * wk + kx


def _params(**given) -> dict:
    """The parameters of :func:`fast_patch_match`, None taking :data:`FAST_MATCH_DEFAULTS`,
    validated."""
    d = {k: (FAST_MATCH_DEFAULTS.get(k) if v is None else v) for k, v in given.items()}
    for k in ("cell", "search_cell", "key_stride", "topk", "neighbours", "radius", "rounds", "samples",
              "search_radius", "context", "coarse_dims"):
        d[k] = int(d[k])
    if d["neighbour_topk"] is not None:
        d["neighbour_topk"] = int(d["neighbour_topk"])
    d["jumps"] = tuple(int(j) for j in d["jumps"])
    d["query_stride"] = int(d["query_stride"] or d["cell"])
    cell, qs, ks = d["cell"], d["query_stride"], d["key_stride"]
    if d["context"] not in (1, 3):
        raise ValueError(f"fast_patch_match needs context 1 or 3, got {d['context']}")
    if d["coarse_dims"] < 1:
        raise ValueError(f"fast_patch_match needs coarse_dims >= 1, got {d['coarse_dims']}")
    if cell < 1 or ks < 1 or cell % ks or d["topk"] < 1 or d["neighbours"] < 0 or d["search_cell"] % qs or cell % qs:
        raise ValueError(f"fast_patch_match needs cell >= 1, key_stride dividing cell, topk >= 1 and neighbours >= 0; "
                         f"got cell={cell}, key_stride={ks}, topk={d['topk']}, neighbours={d['neighbours']}")
    if d["neighbour_topk"] is not None and d["neighbour_topk"] < 1:
        raise ValueError(f"fast_patch_match needs neighbour_topk >= 1 (or None: all), got {d['neighbour_topk']}")
    if d["radius"] < 0 or d["rounds"] < 0 or d["samples"] < 0 or d["search_radius"] < 1 or any(j < 1 for j in d["jumps"]):
        raise ValueError(f"fast_patch_match needs radius, rounds, samples >= 0 and search_radius, jumps >= 1; got "
                         f"radius={d['radius']}, rounds={d['rounds']}, samples={d['samples']}, "
                         f"search_radius={d['search_radius']}, jumps={d['jumps']}")
    return d


@torch.no_grad()
def candidate_flows(query: torch.Tensor, key: torch.Tensor, patch_size: int = 3, *, cell: int | None = None,
                    search_cell: int | None = None, key_stride: int | None = None, topk: int | None = None,
                    neighbours: int | None = None, neighbour_topk: int | None = None, radius: int | None = None,
                    query_stride: int | None = None, context: int | None = None, coarse_dims: int | None = None,
                    max_block_elems: int | None = None, backend: str | None = None) -> torch.Tensor:
    """Steps 1-3 of the module docstring: the flows (B, search cells y, search cells x, M, 2)
    that :func:`fast_patch_match` gives :func:`frfsr.ops.window_match` (with its
    ``search_cell`` and ``radius``); parameters as there."""
    from .reference import check_patch_match_args
    p = check_patch_match_args(query, key, patch_size)
    d = _params(cell=cell, search_cell=search_cell, key_stride=key_stride, topk=topk, neighbours=neighbours,
                neighbour_topk=neighbour_topk, radius=radius, query_stride=query_stride, context=context,
                coarse_dims=coarse_dims, rounds=None, jumps=None, samples=None, search_radius=None)
    qs, ks = d["query_stride"], d["key_stride"]
    hk, wk = key.shape[-2] - p + 1, key.shape[-1] - p + 1
    qd, grid_q = _coarse_descriptors(query.detach().float(), d["cell"], qs, p, d["context"])
    kd, grid_k = _coarse_descriptors(key.detach().float(), d["cell"], ks, p, d["context"])
    qd, kd = principal_components(qd, kd, d["coarse_dims"])
    cand = coarse_topk(qd, kd, d["topk"], max_block_elems, backend=backend)
    del qd, kd
    flows = group_flows(cell_flows(cand, grid_q, grid_k, qs, ks, d["neighbours"], d["neighbour_topk"]),
                        d["search_cell"] // qs)
    return unique_flows(_clamp_flows(flows, hk, wk, d["search_cell"], d["radius"]))


def fast_patch_match(query: torch.Tensor, key: torch.Tensor, patch_size: int = 3, *, cell: int | None = None,
                     search_cell: int | None = None,
                     key_stride: int | None = None, topk: int | None = None, neighbours: int | None = None,
                     neighbour_topk: int | None = None, radius: int | None = None, rounds: int | None = None,
                     jumps: tuple[int, ...] | None = None,
                     samples: int | None = None, search_radius: int | None = None,
                     query_stride: int | None = None, context: int | None = None, coarse_dims: int | None = None,
                     max_block_elems: int | None = None, window_match=None, backend: str | None = None):
    """Coarse-to-fine :func:`frfsr.ops.patch_match` (same arguments and outputs; see the
    module docstring). Parameters left None take :data:`FAST_MATCH_DEFAULTS`;
    ``window_match``: the windowed-search implementation (default: the operator
    ``frfsr::window_match`` with the kernel of ``backend``, see :mod:`frfsr.ops`)."""
    from .reference import check_patch_match_args
    p = check_patch_match_args(query, key, patch_size)
    d = _params(cell=cell, search_cell=search_cell, key_stride=key_stride, topk=topk, neighbours=neighbours,
                neighbour_topk=neighbour_topk, radius=radius, rounds=rounds, jumps=jumps, samples=samples,
                search_radius=search_radius, query_stride=query_stride, context=context, coarse_dims=coarse_dims)
    if window_match is None:                 # the operator itself, with the kernel of ``backend``
        from . import backend_for
        window_match = functools.partial(torch.ops.frfsr.window_match, max_block_elems=None,
                                         backend=backend_for(query, backend))
    flows = candidate_flows(query, key, p, cell=d["cell"], search_cell=d["search_cell"], key_stride=d["key_stride"],
                            topk=d["topk"], neighbours=d["neighbours"], neighbour_topk=d["neighbour_topk"],
                            radius=d["radius"], query_stride=d["query_stride"], context=d["context"],
                            coarse_dims=d["coarse_dims"], max_block_elems=max_block_elems, backend=backend)
    search_cell, radius = d["search_cell"], d["radius"]
    if d["rounds"] == 0 or not (d["jumps"] or d["samples"]):
        return window_match(query, key, flows, search_cell, radius, patch_size=p)
    wk = key.shape[-1] - p + 1
    with torch.no_grad():
        _, index = window_match(query.detach(), key.detach(), flows, search_cell, radius, patch_size=p)
        _, index = propagate(query.detach().float(), key.detach().float(), index, p, d["rounds"], d["jumps"],
                             d["samples"], d["search_radius"], max_block_elems)
    # the score of the final match, differentiable like the exact mode's
    q, k = query.float(), key.float()
    ky, kx = torch.div(index, wk, rounding_mode="floor")[:, None], (index % wk)[:, None]
    score = corner_scores(q, k, patch_norms(q, p), patch_norms(k, p), ky, kx, p, max_block_elems)[:, 0]
    return score.to(query.dtype), index


def flop_counts(n_query: int, n_key: int, channels: int, patch_size: int = 3, **params) -> dict:
    """2 x multiply-adds of exact and fast matching for ``n_query`` query positions and
    ``n_key`` key patches of ``channels`` channels (parameters as :func:`fast_patch_match`).
    Fast counts its coarse top-k and the block products of the reference windowed search
    with the largest number of distinct flows a search cell can have (an upper bound)."""
    d = {**FAST_MATCH_DEFAULTS, **params}
    s, sc, sk, k, n, r = d["cell"], d["search_cell"], d["key_stride"], d["topk"], d["neighbours"], d["radius"]
    qs = d["query_stride"] or s
    D = channels * patch_size * patch_size
    exact = 2.0 * n_query * n_key * D
    coarse = 2.0 * (n_query / (qs * qs)) * (n_key / (sk * sk)) * min(channels * d["context"] ** 2, d["coarse_dims"])
    kn = k if d["neighbour_topk"] is None else min(k, d["neighbour_topk"])
    M = k * (sc // qs) ** 2 + kn * ((sc // qs + 2 * n) ** 2 - (sc // qs) ** 2)
    A, T = sc + patch_size - 1, sc + 2 * r + patch_size - 1
    window = 2.0 * (n_query / (sc * sc)) * M * A * A * T * T * channels
    return {"exact": exact, "fast": coarse + window, "fast_coarse": coarse, "fast_window": window, "max_flows": M}


# the pure-PyTorch windowed search, for callers that want it without the dispatch
reference_window_match = _reference_window_match
