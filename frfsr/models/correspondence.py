"""Correlation-based texture warp (paper III-B, eq. 5-13).

Texture features of the bicubic-upsampled LR and of the Ref(s) are L2-normalised per
pixel and matched as 3x3 patches by cosine similarity (``frfsr.ops.patch_match``). The
best Ref patch of every LR position gives an index, the index a flow on the LR texture
grid (= the LR grid, relu3_1 scale), and the flow is scaled to the relu2_1 and relu1_1
grids (x2, x4) and shifted once per 3x3 tap into the pre-offsets that seed the
deformable alignment. A matched index is a whole LR pixel (4 HR pixels); with the weights'
``subpixel_match`` each flow is refined to a fraction of one (:func:`subpixel_shift`, the
vertex of the parabola through the match's score and its neighbours'), so that a Ref off the
LR's pixel grid is aligned too.

Several Refs are laid side by side on one canvas (the *mosaic*), with zero gaps between
them, at every feature scale; a flow then points into the mosaic, and warping and
deformable sampling need not know how many Refs there were. The match keeps, per LR
position, the best patch over all Refs. A single Ref is its own mosaic.

Matching modes (``match_mode``): ``"exact"`` compares every LR patch with every Ref patch
(:func:`frfsr.ops.patch_match`, the reference and release-equal path); ``"fast"`` searches
coarse-to-fine (:func:`frfsr.ops.fast_patch_match`, cost linear in the LR, same outputs);
``"auto"`` (default) takes fast where LR positions x Ref patches (all Refs) exceed
:data:`frfsr.ops.FAST_MATCH_MIN_PAIRS`. Both modes match each Ref on its own and keep the
best, the earlier Ref on ties.

Relevance (:func:`relevance_of`; the threshold is the weights' ``config.relevance_threshold``): how well the Refs and an LR
match, one number per LR, from both directions: the LR's confidence map (each LR patch's best
Ref patch) and each Ref's *backward* confidence (:func:`ref_confidence`: each Ref patch's
best LR patch, on a grid of at most :data:`REF_SAMPLES` Ref patches). A tiled run blends the
tiles' confidence maps and keeps each Ref patch's best over the tiles, so it computes the
relevance as one match does.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import ops

SCALES = (4, 2, 1)          # mosaic factor of relu1_1, relu2_1, relu3_1 w.r.t. the texture grid
MOSAIC_GAP = 2              # zero columns between Refs, in texture-grid (1/4) pixels

REF_SAMPLES = 1024
"""At most this many patches of each Ref (a regular grid over its patch positions; all of them
for a Ref of up to 128x128 pixels, whose texture map has 30x30 patches) are matched back
against the LR for the relevance: the backward match then costs (LR patches) x 1024 patch
products however large the Ref is."""


@dataclass(frozen=True)
class MosaicLayout:
    """Where each Ref sits on the mosaic: column offsets in texture-grid (1/4-scale) pixels,
    and the Refs' image sizes."""

    offsets: tuple[int, ...]
    sizes: tuple[tuple[int, int], ...]

    @classmethod
    def build(cls, sizes) -> "MosaicLayout":
        sizes = tuple((int(h), int(w)) for h, w in sizes)
        offsets, x = [], 0
        for _, w in sizes:
            offsets.append(x)
            x += -(-w // 4) + MOSAIC_GAP
        return cls(tuple(offsets), sizes)

    def canvas(self, maps: list[torch.Tensor], factor: int) -> torch.Tensor:
        """Place per-Ref maps (B, C, h_r, w_r) onto one zero canvas; map r starts at column
        ``factor * offsets[r]``. With one Ref the map itself is returned."""
        if len(maps) == 1:
            return maps[0]
        height = max(m.shape[-2] for m in maps)
        width = max(factor * o + m.shape[-1] for o, m in zip(self.offsets, maps))
        b, c = maps[0].shape[:2]
        out = maps[0].new_zeros(b, c, height, width)
        for o, m in zip(self.offsets, maps):
            out[:, :, : m.shape[-2], factor * o: factor * o + m.shape[-1]] = m
        return out


def normalize_features(feat: torch.Tensor) -> torch.Tensor:
    """L2-normalise a feature map per pixel over channels."""
    return F.normalize(feat, dim=1)


def sample_grid(h: int, w: int, max_samples: int = REF_SAMPLES) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows and columns (int64) of a regular grid over an ``h`` x ``w`` grid of positions: all
    of them when ``h * w <= max_samples``, else every s-th one (s the smallest step giving at
    most ``max_samples``), centred."""
    if h < 1 or w < 1 or max_samples < 1:
        raise ValueError(f"sample_grid needs h, w and max_samples >= 1, got {h}, {w}, {max_samples}")
    step = 1
    while -(-h // step) * -(-w // step) > max_samples:
        step += 1
    ys = torch.arange((h - 1) % step // 2, h, step)
    xs = torch.arange((w - 1) % step // 2, w, step)
    return ys, xs


def ref_confidence(lr_tex: torch.Tensor, ref_tex: torch.Tensor, patch_size: int = 3,
                   max_samples: int = REF_SAMPLES, max_block_elems: int = 1 << 24) -> torch.Tensor:
    """The backward match of the relevance: for the Ref patches on :func:`sample_grid` of the
    Ref's patch positions, the cosine similarity of each with its best LR patch, (B, N) float32.
    ``lr_tex`` (B, C, h, w) and ``ref_tex`` (B or 1, C, H, W) are L2-normalised per pixel
    (:func:`normalize_features`); the cosine is :func:`frfsr.ops.patch_match`'s
    (<q, k> / (||q|| + 1e-5) / (||k|| + 1e-5) over the C x p x p patch values). Exact: every
    LR patch is compared, by row blocks of the LR whose products hold at most
    ``max_block_elems`` elements."""
    p = patch_size
    b, c, h, w = lr_tex.shape
    H, W = ref_tex.shape[-2:]
    if h < p or w < p or H < p or W < p:
        raise ValueError(f"ref_confidence needs maps of at least {p}x{p}, got {h}x{w} (LR) and {H}x{W} (Ref)")
    ys, xs = sample_grid(H - p + 1, W - p + 1, max_samples)
    dev = ref_tex.device
    taps = torch.arange(p, device=dev)
    iy = (ys.to(dev)[:, None, None, None] + taps[None, None, :, None]).expand(-1, len(xs), p, p)
    ix = (xs.to(dev)[None, :, None, None] + taps[None, None, None, :]).expand(len(ys), -1, p, p)
    ref = ref_tex.float().expand(b, -1, -1, -1)
    q = ref[:, :, iy, ix].permute(0, 2, 3, 1, 4, 5).reshape(b, len(ys) * len(xs), c * p * p)   # (B, N, C p p)
    q = q / (q.norm(dim=2, keepdim=True) + 1e-5)
    key = lr_tex.float()
    n, wk = q.shape[1], w - p + 1
    rows = max(1, min(h - p + 1, max_block_elems // max(1, b * wk * (n + c * p * p))))
    best = torch.full((b, n), float("-inf"), device=dev)
    for y0 in range(0, h - p + 1, rows):
        y1 = min(h - p + 1, y0 + rows)
        k = F.unfold(key[:, :, y0:y1 + p - 1], p)                                   # (B, C p p, rows * wk)
        k = k / (k.norm(dim=1, keepdim=True) + 1e-5)
        best = torch.maximum(best, torch.bmm(q, k).amax(dim=2))
    return best


def relevance_of(confidence: torch.Tensor, ref_confidence=()) -> torch.Tensor:
    """Relevance per sample (B,), float32, in [-1, 1]: the mean of

    * the *forward* score: the mean, over the LR positions where a whole 3x3 patch fits (the
      one-position border, which :meth:`frfsr.FRFSR.match` sets to zero, is left out), of
      the cosine similarity of each LR texture patch with its best Ref patch (``confidence``,
      (B, 1, h, w)); how much of the LR the Refs explain;
    * the *backward* score: for the Ref that the LR explains best, the mean cosine of its
      patches with their best LR patch (``ref_confidence``: one (B, N) tensor per Ref, from
      :func:`ref_confidence`); how much of a Ref the LR shows.

    With no ``ref_confidence`` (an empty tuple) it is the forward score alone.

    Why both: a Ref at twice the zoom shows a quarter of the LR's scene, so most LR patches
    find no true match (a low forward score), while nearly all of the Ref is in the LR (a
    high backward score); a Ref at half the zoom is the other way round; an unrelated photo
    scores low both ways. The scale depends on the texture encoder's weights: their
    ``config.relevance_threshold`` says below which value the Refs hardly match (how it was
    measured for the bundled weights: BENCHMARKS.md, "Ref relevance"). Matching a Ref pyramid
    (``ref_scales`` / ``ref_angles``) raises the forward score of every Ref, unrelated ones too."""
    if not isinstance(confidence, torch.Tensor) or confidence.dim() != 4 or confidence.shape[1] != 1:
        shape = tuple(confidence.shape) if isinstance(confidence, torch.Tensor) else type(confidence).__name__
        raise ValueError(f"relevance_of needs a (B, 1, h, w) confidence map, got {shape}")
    h, w = confidence.shape[-2:]
    if h < 3 or w < 3:
        raise ValueError(f"a {h}x{w} confidence map has no position inside its border; it needs at least 3x3")
    forward = confidence[:, :, 1:-1, 1:-1].float().flatten(1).mean(1)
    if ref_confidence is None or len(ref_confidence) == 0:
        return forward
    for r in ref_confidence:
        if not isinstance(r, torch.Tensor) or r.dim() != 2 or r.shape[0] != forward.shape[0] or r.shape[1] < 1:
            shape = tuple(r.shape) if isinstance(r, torch.Tensor) else type(r).__name__
            raise ValueError(f"ref_confidence must hold one (B, N) tensor per Ref with B = {forward.shape[0]}, "
                             f"got {shape}")
    backward = torch.stack([r.float().mean(1) for r in ref_confidence], 1).amax(1)
    return (forward + backward.to(forward.device)) / 2


def resolve_match_mode(match_mode: str, lr_tex: torch.Tensor, ref_texs: list[torch.Tensor], patch_size: int = 3) -> str:
    """'exact' or 'fast': what ``match_mode`` ('exact', 'fast' or 'auto') means for these
    texture maps (see the module docstring)."""
    from ..ops.fast_match import mode_for_counts
    n_query = (lr_tex.shape[-2] - patch_size + 1) * (lr_tex.shape[-1] - patch_size + 1)
    n_key = sum((t.shape[-2] - patch_size + 1) * (t.shape[-1] - patch_size + 1) for t in ref_texs)
    return mode_for_counts(match_mode, n_query, n_key)


def match_refs(lr_tex: torch.Tensor, ref_texs: list[torch.Tensor], layout: MosaicLayout, patch_size: int = 3,
               mode: str = "exact", backend: str | None = None):
    """Best 3x3 patch over all Refs for every valid LR texture position.

    ``mode``: 'exact' (default here), 'fast' or 'auto' (see the module docstring);
    ``backend``: the kernels of :mod:`frfsr.ops` (None: the environment's or 'auto').
    Returns ``score`` (B, h-2, w-2), ``kx``, ``ky`` (mosaic texture-grid coordinates of the
    matched patch's top-left corner, int64) and ``ref_id`` (which Ref won, int64)."""
    mode = resolve_match_mode(mode, lr_tex, ref_texs, patch_size)
    match = ops.patch_match if mode == "exact" else ops.fast_patch_match
    q = normalize_features(lr_tex)
    best = kx = ky = ref_id = None
    for r, (tex, off) in enumerate(zip(ref_texs, layout.offsets)):
        score, index = match(q, normalize_features(tex), patch_size=patch_size, backend=backend)
        wk = tex.shape[-1] - patch_size + 1
        x, y = index % wk + off, torch.div(index, wk, rounding_mode="floor")
        if best is None:
            best, kx, ky, ref_id = score, x, y, torch.zeros_like(index)
        else:
            better = score > best
            best = torch.where(better, score, best)
            kx, ky = torch.where(better, x, kx), torch.where(better, y, ky)
            ref_id = torch.where(better, torch.full_like(ref_id, r), ref_id)
    return best, kx, ky, ref_id


def index_to_flow(kx: torch.Tensor, ky: torch.Tensor, patch_size: int = 3,
                  fraction: torch.Tensor | None = None) -> torch.Tensor:
    """Flow (B, h, w, 2) in (x, y) order on the texture grid: matched patch corner minus the
    query patch corner, plus ``fraction`` (B, h - p + 1, w - p + 1, 2) when given (the
    :func:`subpixel_shift` of the match), zero-padded by ``patch_size - 1`` at the bottom and
    right (the release's convention)."""
    b, hv, wv = kx.shape
    gy, gx = torch.meshgrid(torch.arange(hv, device=kx.device), torch.arange(wv, device=kx.device), indexing="ij")
    flow = torch.stack((kx - gx, ky - gy), dim=-1).float()
    if fraction is not None:
        flow = flow + fraction
    pad = patch_size - 1
    return F.pad(flow, (0, 0, 0, pad, 0, pad))


@torch.no_grad()
def subpixel_shift(lr_tex: torch.Tensor, ref_texs: list[torch.Tensor], layout: MosaicLayout, kx: torch.Tensor,
                   ky: torch.Tensor, ref_id: torch.Tensor, patch_size: int = 3) -> torch.Tensor:
    """Sub-pixel refinement of a match (B, h-p+1, w-p+1, 2), (x, y) order, each in [-0.5, 0.5]:
    per axis, the vertex of the parabola through the scores of the matched Ref patch and of
    its two neighbours along that axis (the cosine of :func:`match_refs`), so that a Ref
    shifted by a fraction of an LR pixel gets a fractional flow. Zero where a neighbour
    falls outside its Ref or the three scores have no maximum in the middle. Computed in
    float32, without gradients, one map of Ref pixels of the LR's size at a time."""
    p = patch_size
    q = normalize_features(lr_tex.float())           # float32: the vertex is a ratio of small differences
    b, c, h, w = q.shape
    hq, wq = h - p + 1, w - p + 1
    q_taps = [q[:, :, a:a + hq, j:j + wq] for a in range(p) for j in range(p)]
    q_norm = torch.sqrt(sum((t * t).sum(1) for t in q_taps))
    shift = torch.zeros(b, hq, wq, 2, device=q.device)
    for r, (tex, off) in enumerate(zip(ref_texs, layout.offsets)):
        mine = ref_id == r
        if not bool(mine.any()):
            continue
        H, W = tex.shape[-2:]
        flat = tex.flatten(2)
        x0, y0 = kx - off, ky

        def read(dy: int, dx: int) -> torch.Tensor:
            """Ref pixel (y0 + dy, x0 + dx) per query, normalised as the match normalises every
            pixel (only the pixels read, not the whole Ref, are normalised)."""
            yy, xx = (y0 + dy).clamp(0, H - 1), (x0 + dx).clamp(0, W - 1)
            idx = (yy * W + xx).flatten(1)[:, None].expand(-1, flat.shape[1], -1)
            return normalize_features(flat.gather(2, idx).view(b, -1, hq, wq).float())

        # the scores of the match and of its four neighbours: each Ref pixel of the (p+2)^2
        # window is read once and added to every candidate patch that covers it
        cands = ((0, 0), (0, -1), (0, 1), (-1, 0), (1, 0))
        dots = {d: 0 for d in cands}
        norms = {d: 0 for d in cands}
        for u in range(-1, p + 1):
            for v in range(-1, p + 1):
                px = read(u, v)
                sq = (px * px).sum(1)
                for dy, dx in cands:
                    a, j = u - dy, v - dx
                    if 0 <= a < p and 0 <= j < p:
                        dots[(dy, dx)] = dots[(dy, dx)] + (q_taps[a * p + j] * px).sum(1)
                        norms[(dy, dx)] = norms[(dy, dx)] + sq

        def score(dy: int, dx: int) -> torch.Tensor:
            return dots[(dy, dx)] / ((torch.sqrt(norms[(dy, dx)]) + 1e-5) * (q_norm + 1e-5))

        s0 = score(0, 0)
        for axis, (dy, dx), pos, size in ((0, (0, 1), x0, W), (1, (1, 0), y0, H)):
            lo, hi = score(-dy, -dx), score(dy, dx)
            curve = lo - 2 * s0 + hi
            inside = (pos >= 1) & (pos + p <= size - 1)
            ok = mine & inside & (curve < -1e-6) & (s0 >= lo) & (s0 >= hi)
            vertex = (0.5 * (lo - hi) / curve.clamp(max=-1e-6)).clamp(-0.5, 0.5)
            shift[..., axis] = torch.where(ok, vertex.float(), shift[..., axis])
    return shift


def upscale_flow(flow: torch.Tensor, factor: int) -> torch.Tensor:
    """Nearest-neighbour repeat of a (B, h, w, 2) flow by ``factor``, values times ``factor``."""
    if factor == 1:
        return flow
    return flow.repeat_interleave(factor, 1).repeat_interleave(factor, 2) * factor


def pre_offsets(flow: torch.Tensor, step: int, taps: int = 3) -> torch.Tensor:
    """The flow shifted by (i, j) * step for every tap (i, j) of a ``taps`` x ``taps`` kernel,
    zero-filled: (B, taps*taps, h, w, 2), (x, y) order."""
    b, h, w, _ = flow.shape
    span = (taps - 1) * step
    padded = F.pad(flow, (0, 0, span, 0, span, 0))       # zeros on the top and left
    shifts = [padded[:, span - i * step: span - i * step + h, span - j * step: span - j * step + w]
              for i in range(taps) for j in range(taps)]
    return torch.stack(shifts, dim=1)


_WARP_CHUNK_ELEMS = 1 << 26      # float32 elements of the features sampled at once (256 MiB)


def flow_warp(feat: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Sample ``feat`` (B, C, H, W) at (grid + flow) for the grid of ``flow`` (B, h, w, 2):
    bilinear, zeros outside, pixel-centre convention of align_corners=True. The output
    is (B, C, h, w); ``feat`` need not have the flow's size."""
    b, h, w, _ = flow.shape
    H, W = feat.shape[-2:]
    # Positions in half precision (8 to 11 bits of mantissa) are off by pixels on a Ref of
    # 2000 px, and PyTorch's CPU sampler can then read outside the input (a segfault, seen with
    # bf16): the grid is float32 at least, and half-precision features are sampled in float32,
    # a few channels at a time (bounded extra memory), and cast back.
    full = feat.dtype in (torch.float32, torch.float64)
    flow = flow.to(feat.dtype if full else torch.float32)
    gy, gx = torch.meshgrid(torch.arange(h, device=flow.device, dtype=flow.dtype),
                            torch.arange(w, device=flow.device, dtype=flow.dtype), indexing="ij")
    x = 2.0 * (gx + flow[..., 0]) / max(W - 1, 1) - 1.0
    y = 2.0 * (gy + flow[..., 1]) / max(H - 1, 1) - 1.0
    grid = torch.stack((x, y), dim=-1)
    if full:
        return F.grid_sample(feat, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    step = max(1, _WARP_CHUNK_ELEMS // max(1, feat.shape[0] * H * W))
    return torch.cat([F.grid_sample(feat[:, c:c + step].float(), grid, mode="bilinear", padding_mode="zeros",
                                    align_corners=True).to(feat.dtype) for c in range(0, feat.shape[1], step)], 1)
