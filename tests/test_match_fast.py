"""Fast (coarse-to-fine) patch matching against exact matching, the windowed-search op
against a brute-force definition, the fused kernel against the reference op (Triton
interpreter on CPU), and the ``match_mode`` option through the model, pipeline, CLI and
ComfyUI node. Small sizes only.

Scores are compared with a tolerance; indices only where the best score is separated from
the runner-up by a margin (float rounding may order near-ties differently on other CPUs).
"""
from __future__ import annotations

import os

if os.environ.get("FRFSR_TEST_CUDA") != "1":
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from frfsr import ops  # noqa: E402
from frfsr.models import RefViews  # noqa: E402
from frfsr.models.correspondence import MosaicLayout, match_refs, resolve_match_mode  # noqa: E402
from frfsr.ops import reference as R  # noqa: E402
from frfsr.ops.fast_match import (FAST_MATCH_DEFAULTS, FAST_MATCH_MIN_PAIRS, cell_flows,  # noqa: E402
                                  fast_patch_match, flop_counts, unique_flows)
from frfsr.ops.window import window_match  # noqa: E402

MARGIN = 1e-4


def _feat(*shape, seed):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=1)


def _smooth(c, h, w, seed):
    """Per-pixel normalised features with spatial structure (upsampled noise)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, c, h // 2 + 2, w // 2 + 2, generator=g)
    x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False) + 0.3 * torch.randn(1, c, h, w, generator=g)
    return F.normalize(x, dim=1)


def _brute(query, key, cands_fn, p=3):
    """float64 best / runner-up / index per query patch over the key corners cands_fn(b, y, x)."""
    B, _, h, w = query.shape
    hq, wq, wk = h - p + 1, w - p + 1, key.shape[-1] - p + 1
    qp = F.unfold(query.double(), p).transpose(1, 2)
    kp = F.unfold(key.double(), p)
    kp = kp / (kp.norm(dim=1, keepdim=True) + 1e-5)
    best = torch.full((B, hq, wq), float("-inf"), dtype=torch.float64)
    second = best.clone()
    index = torch.full((B, hq, wq), -1, dtype=torch.long)
    for b in range(B):
        for y in range(hq):
            for x in range(wq):
                c = cands_fn(b, y, x)
                if not c:
                    continue
                c = torch.tensor(sorted(c))
                s = (qp[b, y * wq + x] @ kp[b][:, c]) / (qp[b, y * wq + x].norm() + 1e-5)
                top = s.topk(min(2, len(c)))
                best[b, y, x] = top.values[0]
                second[b, y, x] = top.values[1] if len(c) > 1 else float("-inf")
                index[b, y, x] = c[(s == s.max()).nonzero()[0, 0]]
    return best, second, index


def _square_cands(flows, cell, r, hk, wk):
    def cands(b, y, x):
        cy, cx = y // cell, x // cell
        out = set()
        for dy, dx in flows[b, cy, cx].tolist():
            for ky in range(cy * cell + dy - r, (cy + 1) * cell + dy + r):
                for kx in range(cx * cell + dx - r, (cx + 1) * cell + dx + r):
                    if 0 <= ky < hk and 0 <= kx < wk:
                        out.add(ky * wk + kx)
        return out
    return cands


def _check(score, index, best, second, ref_index, tol=1e-5):
    fin = torch.isfinite(best)
    assert torch.equal(torch.isfinite(score), fin)
    assert torch.equal(index[~fin], torch.full_like(index[~fin], -1))
    assert (score.double()[fin] - best[fin]).abs().max() <= tol
    sep = fin & (best - second > MARGIN)
    assert sep.float().mean() > 0.5
    assert torch.equal(index[sep], ref_index[sep])


# ------------------------------------------------------------------ the windowed-search op
@pytest.mark.parametrize("h,w,H,W,cell,r,M", [(9, 11, 13, 10, 4, 2, 3), (12, 10, 20, 17, 4, 0, 5), (6, 9, 30, 8, 2, 3, 1)])
def test_window_match_reference_is_the_brute_force_definition(h, w, H, W, cell, r, M):
    q, k = _feat(2, 5, h, w, seed=h), _feat(2, 5, H, W, seed=W)
    k[:, :, 2:4, 3:5] = 0                       # zero pixels: patch norms below 3
    hc, wc = -(-(h - 2) // cell), -(-(w - 2) // cell)
    flows = torch.randint(-8, 8, (2, hc, wc, M, 2), generator=torch.Generator().manual_seed(M))
    score, index = window_match(q, k, flows, cell, r, max_block_elems=4000)     # several chunks
    whole = window_match(q, k, flows, cell, r)
    assert torch.equal(score, whole[0]) and torch.equal(index, whole[1])
    _check(score, index, *_brute(q, k, _square_cands(flows, cell, r, H - 2, W - 2)))


def test_window_match_skips_repeats_of_the_first_flow_per_cell():
    # Cells padded with their first flow (as unique_flows pads) are searched with fewer flows,
    # in chunks of cells sorted by that number: the result is still the brute-force one.
    h, w, H, W, cell, r, M = 14, 13, 18, 16, 2, 1, 6
    q, k = _feat(2, 5, h, w, seed=3), _feat(2, 5, H, W, seed=4)
    hc, wc = -(-(h - 2) // cell), -(-(w - 2) // cell)
    g = torch.Generator().manual_seed(5)
    flows = torch.randint(-6, 6, (2, hc, wc, M, 2), generator=g)
    keep = torch.randint(1, M + 1, (2, hc, wc), generator=g)          # distinct flows per cell
    pad = torch.arange(M).view(1, 1, 1, M) >= keep[..., None]
    flows = torch.where(pad[..., None], flows[..., :1, :], flows)
    flows[0, 0, 0, 2] = flows[0, 0, 0, 0]                              # a repeat before other flows
    flows[0, 0, 0, 3:] = torch.tensor([5, -4])
    results = [window_match(q, k, flows, cell, r, max_block_elems=e) for e in (1, 3000, 40000, None)]
    for score, index in results[1:]:
        assert torch.equal(score, results[0][0]) and torch.equal(index, results[0][1])
    _check(*results[0], *_brute(q, k, _square_cands(flows, cell, r, H - 2, W - 2)))


def test_window_match_is_differentiable_and_checks_its_arguments():
    q = _feat(1, 4, 8, 8, seed=0).requires_grad_()
    k = _feat(1, 4, 9, 9, seed=1)
    flows = torch.zeros(1, 2, 2, 1, 2, dtype=torch.long)
    score, _ = window_match(q, k, flows, 4, 1)
    score.sum().backward()
    assert torch.isfinite(q.grad).all() and q.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="flows must be"):
        window_match(q, k, flows[:, :1], 4, 1)
    with pytest.raises(ValueError, match="integer"):
        window_match(q, k, flows.float(), 4, 1)


def test_unique_flows_drops_repeats_only():
    f = torch.tensor([[[[[1, 2], [0, 0], [1, 2], [-3, 5]], [[4, 4], [4, 4], [4, 4], [4, 4]]]]])
    u = unique_flows(f)
    assert u.shape == (1, 1, 2, 3, 2)
    assert {tuple(v) for v in u[0, 0, 0].tolist()} == {(1, 2), (0, 0), (-3, 5)}
    assert {tuple(v) for v in u[0, 0, 1].tolist()} == {(4, 4)}


def test_cell_flows_take_the_best_neighbour_topk_of_each_neighbour():
    # 2x3 query cells of step 2, each with 3 candidates (best first) on a 4-wide coarse key grid of step 2
    cand = (torch.arange(6 * 3) * 7 % 16).view(1, 6, 3)
    full = cell_flows(cand, (2, 3), (4, 4), 2, 2, neighbours=1)
    some = cell_flows(cand, (2, 3), (4, 4), 2, 2, neighbours=1, neighbour_topk=1)
    assert full.shape == (1, 2, 3, 3 * 9, 2) and some.shape == (1, 2, 3, 3 + 8, 2)
    own = cell_flows(cand, (2, 3), (4, 4), 2, 2, neighbours=0)
    assert torch.equal(some[..., :3, :], own) and torch.equal(full[..., :3, :], own)   # own candidates first
    # each neighbour contributes its best candidate: cell (0, 1)'s right neighbour is cell (0, 2)
    ky, kx = divmod(int(cand[0, 2, 0]), 4)
    right = (2 * ky - 0, 2 * kx - 2 * 2)                 # the flow of cell (0, 2)'s best, from cell (0, 1)
    assert right not in {tuple(f) for f in own[0, 0, 1].tolist()}
    assert right in {tuple(f) for f in some[0, 0, 1].tolist()}
    assert flop_counts(10 ** 4, 10 ** 4, 8, cell=2, search_cell=4, key_stride=2, topk=6, neighbours=1,
                       neighbour_topk=2)["max_flows"] == 6 * 4 + 2 * (16 - 4)
    with pytest.raises(ValueError, match="neighbour_topk >= 1"):
        fast_patch_match(_feat(1, 4, 12, 12, seed=0), _feat(1, 4, 12, 12, seed=1), neighbours=1, neighbour_topk=0)


# ------------------------------------------------------------------ fast against exact
@pytest.mark.parametrize("h,w,H,W", [(17, 13, 23, 11), (10, 10, 5, 5), (14, 18, 16, 22)])
def test_fast_with_all_candidates_equals_exact(h, w, H, W):
    """With top-k over every coarse key position the squares cover the whole key: fast must
    then give exact's result (odd sizes, a key smaller than a cell, batch 2)."""
    q, k = _feat(2, 6, h, w, seed=h + w), _feat(2, 6, H, W, seed=H * W)
    ks = FAST_MATCH_DEFAULTS["key_stride"]
    n_coarse = -(-(H - 2) // ks) * -(-(W - 2) // ks)          # every coarse key position
    score, index = fast_patch_match(q, k, topk=n_coarse, window_match=window_match)
    es, ei = R.patch_match(q.double(), k.double())
    qp, kp = F.unfold(q.double(), 3).transpose(1, 2), F.unfold(k.double(), 3)
    sim = torch.bmm(qp, kp / (kp.norm(dim=1, keepdim=True) + 1e-5)) / (qp.norm(dim=2, keepdim=True) + 1e-5)
    top = sim.topk(min(2, sim.shape[2]), dim=2).values
    second = (top[..., 1] if top.shape[2] > 1 else torch.full_like(top[..., 0], float("-inf"))).view(es.shape)
    _check(score, index, es.double(), second, ei)


def test_fast_finds_a_shifted_copy_in_a_larger_ref():
    """The Ref holds the LR's scene, shifted, inside other content twice its size: the fast
    mode must find the true correspondence (cosine 1) at (nearly) every position."""
    scene = _smooth(16, 40, 40, seed=3)
    lr = scene[..., 4:36, 6:38]                                  # 32 x 32
    ref = _smooth(16, 64, 64, seed=4)
    oy, ox = 21, 13
    ref[..., oy:oy + 40, ox:ox + 40] = scene
    score, index = fast_patch_match(lr, ref, window_match=window_match)
    hq, wk = 30, 62
    gy, gx = torch.meshgrid(torch.arange(hq), torch.arange(hq), indexing="ij")
    true = (gy + 4 + oy) * wk + (gx + 6 + ox)
    found = (index[0] == true).float().mean()
    assert found >= 0.98, found
    es, _ = R.patch_match(lr, ref)
    assert (score - es).abs().max() < 1e-4


def _scene(c, coords_y, coords_x, seed):
    """A textured multi-channel scene (bicubic-interpolated noise, one sample every 2 px on
    [-24, 72) in both axes) sampled at the given pixel coordinates, per-pixel normalised."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(1, c, 48, 48, generator=g)
    gy, gx = torch.meshgrid(coords_y, coords_x, indexing="ij")
    grid = torch.stack(((gx + 24) / 95 * 2 - 1, (gy + 24) / 95 * 2 - 1), dim=-1)[None]
    return F.normalize(F.grid_sample(base, grid.float(), mode="bicubic", align_corners=True), dim=1)


def test_fast_finds_a_shifted_and_zoomed_copy_like_exact():
    """The Ref shows the LR's scene zoomed by 1.3 and shifted: the match of LR patch corner
    (y, x) should lie near ((y + 1) * 1.3 + offset - 1, likewise x); fast finds it at most
    positions, about as often as exact."""
    zoom, oy, ox = 1.3, 5.0, 3.0
    lr = _scene(16, torch.arange(32.0), torch.arange(32.0), seed=24)
    ref = _scene(16, (torch.arange(64.0) - oy) / zoom, (torch.arange(60.0) - ox) / zoom, seed=24)
    hq, wk = 30, 58
    g = torch.arange(hq, dtype=torch.float64)
    ty, tx = (g + 1) * zoom + oy - 1, (g + 1) * zoom + ox - 1
    rates = {}
    for name, fn in (("exact", R.patch_match), ("fast", lambda q, k: fast_patch_match(q, k, window_match=window_match))):
        _, index = fn(lr, ref)
        ky, kx = torch.div(index[0], wk, rounding_mode="floor"), index[0] % wk
        ok = ((ky - ty[:, None]).abs() <= 1.5) & ((kx - tx[None, :]).abs() <= 1.5)
        rates[name] = float(ok.float().mean())
    assert rates["exact"] > 0.9, rates
    assert rates["fast"] > 0.85 and rates["fast"] >= rates["exact"] - 0.05, rates


def test_several_refs_and_the_scale_pyramid_in_fast_mode_agree_with_exact():
    """Two Refs, each also matched at scales 0.71 and 0.5, through FRFSR.match: fast keeps
    exact's confidence (within 1e-3) at most positions and is never above it."""
    from frfsr import FRFSR, FRFSRConfig
    torch.manual_seed(0)
    model = FRFSR(FRFSRConfig.tiny()).eval()
    g = torch.Generator().manual_seed(25)
    img = F.interpolate(torch.rand(1, 3, 24, 24, generator=g), size=(96, 96), mode="bicubic", align_corners=False)
    lr = F.interpolate(img[..., 8:72, 12:76], size=(16, 16), mode="area").clamp(0, 1)
    refs = [img.clamp(0, 1), torch.rand(1, 3, 64, 72, generator=g)]
    with torch.no_grad():
        encoded = model.encode_refs(refs, views=RefViews((1, 0.71, 0.5)))
        ce = model.match(lr, encoded, mode="exact")
        cf = model.match(lr, encoded, mode="fast")
    e, f = ce.confidence[..., 1:-1, 1:-1], cf.confidence[..., 1:-1, 1:-1]
    assert (f <= e + 1e-5).all()
    assert (f >= e - 1e-3).float().mean() >= 0.9
    assert (cf.ref_id == ce.ref_id).float().mean() >= 0.8


def test_fast_agrees_with_exact_on_structured_inputs():
    q, k = _smooth(16, 28, 28, seed=5), _smooth(16, 36, 36, seed=6)
    fs, fi = fast_patch_match(q, k, window_match=window_match)
    es, ei = R.patch_match(q, k)
    assert torch.isfinite(fs).all() and (fi >= 0).all() and (fi < 34 * 34).all()
    assert (fs <= es + 1e-5).all()                               # never better than the true best
    good = (fi == ei) | (fs >= es - 1e-3)
    assert good.float().mean() > 0.5


def test_fast_is_deterministic_and_chunking_does_not_change_it():
    q, k = _feat(1, 8, 21, 19, seed=7), _feat(1, 8, 30, 26, seed=8)
    a = fast_patch_match(q, k, window_match=window_match)
    b = fast_patch_match(q, k, window_match=window_match)
    c = fast_patch_match(q, k, window_match=lambda *x, **kw: window_match(*x, **kw, max_block_elems=3000),
                         max_block_elems=500)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert torch.equal(a[1], c[1]) and torch.allclose(a[0], c[0])


def test_several_refs_in_both_modes():
    """Two Refs on the mosaic; the second holds the LR's scene: both modes pick it and the
    same mosaic coordinates."""
    scene = _smooth(16, 24, 24, seed=9)
    lr = scene[..., 2:22, 2:22]
    other = _smooth(16, 30, 26, seed=10)
    holder = _smooth(16, 34, 34, seed=11)
    holder[..., 5:29, 7:31] = scene
    layout = MosaicLayout.build([(4 * 30, 4 * 26), (4 * 34, 4 * 34)])
    res = {m: match_refs(lr, [other, holder], layout, mode=m) for m in ("exact", "fast")}
    (es, ekx, eky, eid), (fs, fkx, fky, fid) = res["exact"], res["fast"]
    assert (eid == 1).float().mean() > 0.98
    same = (fkx == ekx) & (fky == eky) & (fid == eid)
    assert same.float().mean() > 0.95
    assert (fs - es)[same].abs().max() < 1e-4


# ------------------------------------------------------------------ the fused kernel
def _fused():
    pytest.importorskip("triton")
    import importlib
    import frfsr.ops.triton as fused
    kern = importlib.import_module("frfsr.ops.triton.window_match")._window_match_kernel
    if type(kern).__name__ != "InterpretedFunction" and os.environ.get("FRFSR_TEST_CUDA") != "1":
        pytest.skip("Triton was imported before TRITON_INTERPRET=1 was set")
    return fused


def test_fused_window_match_equals_the_reference():
    fused = _fused()
    dev = torch.device("cuda") if os.environ.get("FRFSR_TEST_CUDA") == "1" else torch.device("cpu")
    q, k = _feat(2, 16, 6, 7, seed=12), _feat(2, 16, 11, 9, seed=13)
    k[:, :, 0:2, 0:3] = 0
    flows = torch.randint(-5, 5, (2, 2, 3, 3, 2), generator=torch.Generator().manual_seed(14))
    flows[0, 0, 0, 1:] = flows[0, 0, 0, 0]          # cells padded with their first flow (searched once)
    flows[1, 1, 2, 1] = flows[1, 1, 2, 0]           # a repeat before a flow that differs
    s_ref, i_ref = window_match(q, k, flows, 2, 1)
    s, i = fused.window_match(q.to(dev), k.to(dev), flows.to(dev), 2, 1)
    s, i = s.cpu(), i.cpu()
    best, second, _ = _brute(q, k, _square_cands(flows, 2, 1, 9, 7))
    tol = 1e-5 if dev.type == "cpu" else 5e-3
    assert torch.equal(torch.isfinite(s), torch.isfinite(s_ref))
    fin = torch.isfinite(s_ref)
    assert (s[fin] - s_ref[fin]).abs().max() <= tol
    sep = fin & (best - second > (MARGIN if dev.type == "cpu" else 1e-2))
    assert torch.equal(i[sep], i_ref[sep])
    assert torch.equal(i[~fin], i_ref[~fin])


def test_dispatch_uses_the_fused_kernel_when_asked():
    _fused()
    q, k = _feat(1, 16, 6, 6, seed=15), _feat(1, 16, 7, 7, seed=16)
    flows = torch.zeros(1, 2, 2, 1, 2, dtype=torch.long)
    s, i = ops.window_match(q, k, flows, 2, 1, backend="fused")
    s2, i2 = ops.window_match(q, k, flows, 2, 1, backend="reference")
    assert (s - s2).abs().max() < 1e-5


def check_window_match_gradients(backend: str):
    """One backward for every kernel of frfsr::window_match: where ``backend``'s kernel and the
    reference select the same key patches, the scores and their gradients w.r.t. query and
    key agree; opcheck for ``backend``'s kernel."""
    q, k = _feat(1, 16, 6, 7, seed=17), _feat(1, 16, 9, 8, seed=18)
    flows = torch.randint(-3, 3, (1, 2, 3, 2, 2), generator=torch.Generator().manual_seed(19))
    best, second, _ = _brute(q, k, _square_cands(flows, 2, 1, 7, 6))
    sep = best - second > MARGIN                 # the output gradient is put on clear winners only
    assert sep.float().mean() > 0.5
    go = torch.randn(best.shape, generator=torch.Generator().manual_seed(20)) * sep
    res = {}
    for name in ("reference", backend):
        qq, kk = q.clone().requires_grad_(), k.clone().requires_grad_()
        score, index = ops.window_match(qq, kk, flows, 2, 1, backend=name)
        res[name] = (score, index, torch.autograd.grad(score, (qq, kk), go))
    (rs, ri, rg), (fs, fi, fg) = res["reference"], res[backend]
    assert torch.equal(fi[sep], ri[sep])
    assert (fs - rs).abs().max() < 1e-5
    for a, e in zip(fg, rg):
        assert e.abs().sum() > 0 and (a - e).abs().max() < 1e-5
    # (the reference kernel's opcheck is in tests/test_ops_reference.py)
    q, k = _feat(1, 8, 5, 6, seed=21).requires_grad_(), _feat(1, 8, 6, 6, seed=22).requires_grad_()
    flows = torch.randint(-2, 2, (1, 2, 2, 1, 2), generator=torch.Generator().manual_seed(23))
    torch.library.opcheck(torch.ops.frfsr.window_match.default, (q, k, flows, 2, 1, 3, None, backend))


def test_window_match_gradients_agree_between_backends_and_opcheck():
    _fused()
    check_window_match_gradients("fused")


# ------------------------------------------------------------------ match_mode plumbing
def test_auto_mode_threshold():
    q = torch.zeros(1, 1, 102, 102)                      # 100 x 100 positions
    side = int((FAST_MATCH_MIN_PAIRS / 1e4) ** 0.5)
    small = [torch.zeros(1, 1, side, side)]
    large = [torch.zeros(1, 1, side + 4, side + 4)]
    assert resolve_match_mode("auto", q, small) == "exact"
    assert resolve_match_mode("auto", q, large) == "fast"
    assert resolve_match_mode("auto", q, small + large) == "fast"      # Refs count together
    assert resolve_match_mode("exact", q, large) == "exact"
    with pytest.raises(ValueError, match="match_mode"):
        resolve_match_mode("quick", q, small)


def test_match_mode_reaches_the_model_pipeline_cli_and_node():
    from frfsr import FRFSR, FRFSRConfig, FRFSRPipeline, cli
    torch.manual_seed(0)
    model = FRFSR(FRFSRConfig.tiny()).eval()
    lr = torch.rand(1, 3, 20, 18, generator=torch.Generator().manual_seed(1))
    ref = torch.rand(1, 3, 64, 60, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        corr = {m: model.match(lr, ref, mode=m) for m in ("exact", "fast", "auto")}
        assert not hasattr(model, "match_mode")            # a per-call argument, no model state
        with pytest.raises(ValueError, match="match_mode"):
            model.match(lr, ref, mode="nope")
    for m in ("fast", "auto"):
        assert corr[m].flows[0].shape == corr["exact"].flows[0].shape
        assert torch.isfinite(corr[m].confidence).all()
        assert (corr[m].confidence <= corr["exact"].confidence + 1e-5).all()
    pipe = FRFSRPipeline(model)
    pipe.relevance_threshold = None                      # random weights: no relevance warning
    out = pipe(lr, ref, match_mode="fast", output_type="pt", progress=False)
    assert out.shape == (1, 3, 80, 72) and not hasattr(model, "match_mode")
    args = cli.build_parser().parse_args(["upscale", "lr.png", "--ref", "r.png", "-o", "o.png", "--match-mode", "fast"])
    assert args.match_mode == "fast"
    nodes = pytest.importorskip("frfsr_nodes.nodes") if _nodes_importable() else None
    if nodes is not None:
        spec = nodes.MatchReference.INPUT_TYPES()["optional"]["match_mode"]     # optional: older workflows validate
        assert set(spec[0]) == {"auto", "exact", "fast"} and spec[1]["default"] == "auto"


def _nodes_importable() -> bool:
    try:
        import frfsr_nodes.nodes  # noqa: F401
    except Exception:
        return False
    return True
