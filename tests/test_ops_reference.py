"""Reference operators against brute-force float64 definitions, gradchecks, memory bound, validation."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from frfsr.ops import reference as ref


def _rng(seed):
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------------------
# Brute-force definitions (explicit loops, float64)
# --------------------------------------------------------------------------------------

def bf_patch_match(query, key, p):
    q, k = query.double().numpy(), key.double().numpy()
    B, _, h, w = q.shape
    H, W = k.shape[-2:]
    gh, gw, kgw = h - p + 1, w - p + 1, W - p + 1
    score, index = np.zeros((B, gh, gw)), np.zeros((B, gh, gw), dtype=np.int64)
    for b in range(B):
        keys = []
        for ky in range(H - p + 1):
            for kx in range(kgw):
                kv = k[b, :, ky:ky + p, kx:kx + p].ravel()
                keys.append(kv / (np.sqrt((kv * kv).sum()) + 1e-5))
        for qy in range(gh):
            for qx in range(gw):
                qv = q[b, :, qy:qy + p, qx:qx + p].ravel()
                best, best_i = -math.inf, -1
                for i, kv in enumerate(keys):
                    c = float((qv * kv).sum())
                    if c > best:
                        best, best_i = c, i
                score[b, qy, qx] = best / (np.sqrt((qv * qv).sum()) + 1e-5)
                index[b, qy, qx] = best_i
    return torch.from_numpy(score), torch.from_numpy(index)


def bf_similarity(query, key, p):
    """(B, query patches, key patches) float64: every cosine correlation bf_patch_match compares
    (the key patch normalised, divided by the query patch's norm + 1e-5)."""
    q, k = query.double(), key.double()
    qp, kp = F.unfold(q, p), F.unfold(k, p)                     # (B, C*p*p, N)
    kp = kp / (kp.norm(dim=1, keepdim=True) + 1e-5)
    return torch.einsum("bdm,bdn->bmn", qp, kp) / (qp.norm(dim=1).unsqueeze(-1) + 1e-5)


def assert_same_winners(index, expected, sim, margin=1e-9, tol=1e-12):
    """``index`` picks the best key patch: equal to ``expected`` wherever the best correlation
    beats the second best by more than ``margin`` (far above float64 rounding, which differs
    between summation orders and CPUs), and everywhere scores within ``tol`` of the best."""
    top2 = sim.topk(2, dim=2).values
    clear = (top2[..., 0] - top2[..., 1]) > margin
    assert clear.float().mean() > 0.9
    assert torch.equal(index.flatten(1)[clear], expected.flatten(1)[clear])
    chosen = sim.gather(2, index.flatten(1).unsqueeze(-1)).squeeze(-1)
    assert (chosen >= top2[..., 0] - tol).all()


def _bilinear(img, y, x):
    H, W = img.shape
    if y <= -1 or y >= H or x <= -1 or x >= W:
        return 0.0
    y0, x0 = math.floor(y), math.floor(x)
    ly, lx = y - y0, x - x0
    val = 0.0
    for yy, wy in ((y0, 1 - ly), (y0 + 1, ly)):
        for xx, wx in ((x0, 1 - lx), (x0 + 1, lx)):
            if 0 <= yy < H and 0 <= xx < W:
                val += wy * wx * img[yy, xx]
    return val


def bf_deform_conv(x, offset, mask, weight, bias, stride, padding, dilation):
    """Returns the output and the list of sampled (y, x) positions; ``stride``, ``padding``
    and ``dilation`` are ints or (h, w) pairs."""
    (sh, sw), (ph, pw), (dh, dw) = ((v, v) if isinstance(v, int) else tuple(v) for v in (stride, padding, dilation))
    x, offset, mask, weight = (t.double().numpy() for t in (x, offset, mask, weight))
    B, cin, _, _ = x.shape
    cout, _, kh, kw = weight.shape
    K = kh * kw
    G = offset.shape[1] // (2 * K)
    Ho, Wo = offset.shape[-2:]
    out = np.zeros((B, cout, Ho, Wo))
    positions = []
    for b in range(B):
        for yo in range(Ho):
            for xo in range(Wo):
                for c in range(cin):
                    g = c // (cin // G)
                    for i in range(kh):
                        for j in range(kw):
                            k = i * kw + j
                            y = yo * sh - ph + i * dh + offset[b, 2 * (g * K + k), yo, xo]
                            xx = xo * sw - pw + j * dw + offset[b, 2 * (g * K + k) + 1, yo, xo]
                            positions.append((y, xx))
                            v = _bilinear(x[b, c], y, xx) * mask[b, g * K + k, yo, xo]
                            out[b, :, yo, xo] += weight[:, c, i, j] * v
    if bias is not None:
        out += bias.double().numpy()[None, :, None, None]
    return torch.from_numpy(out), positions


def bf_ddf(x, cf, sf, k, dilation):
    x, sf = x.double().numpy(), sf.double().numpy()
    cf = cf.double().reshape(cf.shape[0], cf.shape[1], k * k).numpy()
    B, C, H, W = x.shape
    out = np.zeros_like(x)
    for b in range(B):
        for c in range(C):
            for y in range(H):
                for xx in range(W):
                    for i in range(k):
                        for j in range(k):
                            yy, xs = y + (i - k // 2) * dilation, xx + (j - k // 2) * dilation
                            if 0 <= yy < H and 0 <= xs < W:
                                t = i * k + j
                                out[b, c, y, xx] += x[b, c, yy, xs] * sf[b, t, y, xx] * cf[b, c, t]
    return torch.from_numpy(out)


# --------------------------------------------------------------------------------------
# patch_match
# --------------------------------------------------------------------------------------

def _normalised(shape, seed, dtype=torch.float64):
    return F.normalize(torch.randn(shape, generator=_rng(seed), dtype=dtype), dim=1)


@pytest.mark.parametrize("p", [1, 2, 3])
def test_patch_match_matches_brute_force(p):
    query, key = _normalised((2, 3, 5, 7), 0), _normalised((2, 3, 8, 4), 1)
    score, index = ref.patch_match(query, key, patch_size=p)
    bs, bi = bf_patch_match(query, key, p)
    assert score.shape == index.shape == (2, 5 - p + 1, 7 - p + 1)
    assert score.dtype == torch.float64 and index.dtype == torch.int64
    torch.testing.assert_close(score, bs, rtol=1e-12, atol=1e-12)
    assert_same_winners(index, bi, bf_similarity(query, key, p))     # random data: no exact ties


def _sparse_periodic_key(B=2, C=3, size=12):
    """Every 3x3 key patch holds exactly one nonzero (a 1 at a pixel with y, x multiples of 3,
    in channel (y//3 + x//3) % 2), so each correlation is a single product: ties between
    duplicated patches (period 6) are exact whatever the summation order of the matmul."""
    key = torch.zeros(B, C, size, size, dtype=torch.float64)
    for y in range(0, size, 3):
        for x in range(0, size, 3):
            key[:, (y // 3 + x // 3) % 2, y, x] = 1.0
    return key


@pytest.mark.parametrize("max_block_elems", [None, 2, 6, 50])
def test_patch_match_ties_keep_lowest_index(max_block_elems):
    key = _sparse_periodic_key()                                    # 10x10 key grid, period 6
    query = _normalised((2, 3, 6, 5), 3)
    score, index = ref.patch_match(query, key, 3, max_block_elems=max_block_elems)
    bs, bi = bf_patch_match(query, key, 3)
    assert torch.equal(index, bi)
    assert ((index // 10 < 6) & (index % 10 < 6)).all()             # first copy of each patch
    assert ((index // 10 < 4) & (index % 10 < 4)).any()             # ... of patches that have copies
    torch.testing.assert_close(score, bs, rtol=1e-12, atol=1e-12)
    # Float32 too: the tie is exact there as well.
    s32, i32 = ref.patch_match(query.float(), key.float(), 3, max_block_elems=max_block_elems)
    assert torch.equal(i32, bi)
    # An all-zero query ties with every key patch: exactly zero score, index 0.
    zs, zi = ref.patch_match(torch.zeros_like(query), key, 3, max_block_elems=max_block_elems)
    assert torch.equal(zi, torch.zeros_like(zi)) and torch.equal(zs, torch.zeros_like(zs))


def test_patch_match_many_blocks_equal_one_block():
    query, key = _normalised((2, 5, 9, 6), 4), _normalised((2, 5, 7, 10), 5)
    s_one, i_one = ref.patch_match(query, key, 3, max_block_elems=10 ** 9)
    assert ref.patch_match_stats["num_blocks"] == 1
    for limit in (2, 3, 17, 100):
        s, i = ref.patch_match(query, key, 3, max_block_elems=limit)
        assert ref.patch_match_stats["max_block_numel"] <= limit
        assert ref.patch_match_stats["num_blocks"] > 1
        assert_same_winners(i, i_one, bf_similarity(query, key, 3))  # other blocks, other rounding
        torch.testing.assert_close(s, s_one, rtol=1e-14, atol=1e-14)


def test_patch_match_low_precision_input():
    query, key = _normalised((1, 4, 6, 6), 6, torch.float32), _normalised((1, 4, 7, 5), 7, torch.float32)
    s32, _ = ref.patch_match(query, key)
    s16, i16 = ref.patch_match(query.bfloat16(), key.bfloat16())
    assert s16.dtype == torch.bfloat16 and i16.dtype == torch.int64
    torch.testing.assert_close(s16.float(), s32, rtol=0.05, atol=0.05)


def test_patch_match_gradcheck():
    query = torch.randn(1, 2, 4, 5, generator=_rng(8), dtype=torch.float64, requires_grad=True)
    key = torch.randn(1, 2, 5, 4, generator=_rng(9), dtype=torch.float64, requires_grad=True)
    for limit in (None, 3):
        assert torch.autograd.gradcheck(lambda q, k: ref.patch_match(q, k, 2, max_block_elems=limit)[0],
                                        (query, key))


def _assert_same_matches(query, key, p, s1, i1, s2, i2):
    """Equal scores; differing indices only where both key patches give the same correlation."""
    torch.testing.assert_close(s1, s2, rtol=1e-5, atol=1e-5)
    diff = (i1 != i2).nonzero().tolist()
    assert len(diff) <= 0.001 * i1.numel()
    qp, kp = F.unfold(query.double(), p), F.unfold(key.double(), p)
    kp = kp / (kp.norm(dim=1, keepdim=True) + 1e-5)
    gw = query.shape[-1] - p + 1
    for b, y, x in diff:
        q = qp[b, :, y * gw + x]
        c1, c2 = q @ kp[b, :, i1[b, y, x]], q @ kp[b, :, i2[b, y, x]]
        assert abs(c1 - c2) < 1e-5


def test_patch_match_memory_bound():
    query = F.normalize(torch.randn(1, 8, 64, 64, generator=_rng(10)), dim=1)
    key = F.normalize(torch.randn(1, 8, 256, 256, generator=_rng(11)), dim=1)
    full = 62 * 62 * 254 * 254
    s1, i1 = ref.patch_match(query, key)                     # default bound
    stats = dict(ref.patch_match_stats)
    assert stats["max_block_numel"] <= ref.PATCH_MATCH_MAX_BLOCK_ELEMS
    assert stats["max_block_numel"] * 8 <= full and stats["num_blocks"] > 1
    s2, i2 = ref.patch_match(query, key, max_block_elems=2 ** 22)
    assert ref.patch_match_stats["max_block_numel"] <= 2 ** 22
    assert ref.patch_match_stats["num_blocks"] > stats["num_blocks"]
    assert s1.shape == i1.shape == (1, 62, 62) and s1.dtype == torch.float32
    _assert_same_matches(query, key, 3, s1, i1, s2, i2)
    # Spot-check some query patches against the full correlation, in float64.
    qp = F.unfold(query.double(), 3)[0]
    kp = F.unfold(key.double(), 3)[0]
    kp = kp / (kp.norm(dim=0, keepdim=True) + 1e-5)
    pick = torch.randperm(62 * 62, generator=_rng(12))[:24]
    corr = qp[:, pick].T @ kp                                # (24, 254*254)
    best = corr.max(dim=1).values / (qp[:, pick].norm(dim=0) + 1e-5)
    torch.testing.assert_close(s1.flatten()[pick].double(), best, rtol=1e-5, atol=1e-5)
    chosen = corr.gather(1, i1.flatten()[pick, None])[:, 0] / (qp[:, pick].norm(dim=0) + 1e-5)
    torch.testing.assert_close(chosen, best, rtol=1e-5, atol=1e-5)


def test_patch_match_block_shape_rule():
    assert ref.patch_match_block_shape(1, 10, 20, 10 ** 6) == (10, 20)
    bq, bk = ref.patch_match_block_shape(2, 3844, 64516)
    assert 2 * bq * bk <= ref.PATCH_MATCH_MAX_BLOCK_ELEMS and bk == 64516
    assert ref.patch_match_block_shape(3, 5, 7, 4) == (1, 1)


def test_patch_match_validation():
    q, k = torch.randn(2, 3, 5, 5), torch.randn(2, 3, 6, 6)
    with pytest.raises(ValueError, match="4-D"):
        ref.patch_match(q[0], k)
    with pytest.raises(ValueError, match="batch sizes differ"):
        ref.patch_match(q, k[:1])
    with pytest.raises(ValueError, match="channel counts differ"):
        ref.patch_match(q, k[:, :2])
    with pytest.raises(ValueError, match="patch_size 3 is larger"):
        ref.patch_match(q[..., :2], k)
    with pytest.raises(ValueError, match="patch_size 3 is larger"):
        ref.patch_match(q, k[..., :2, :])
    with pytest.raises(ValueError, match="at least the batch size"):
        ref.patch_match(q, k, max_block_elems=1)


# --------------------------------------------------------------------------------------
# deform_conv
# --------------------------------------------------------------------------------------

def _deform_inputs(B, cin, cout, hin, win, ho, wo, kh, kw, G, seed, bias=True, stride=1, padding=1,
                   dilation=1):
    g = _rng(seed)
    K = kh * kw
    x = torch.randn(B, cin, hin, win, generator=g, dtype=torch.float64)
    offset = 1.5 * torch.randn(B, 2 * G * K, ho, wo, generator=g, dtype=torch.float64)
    # Force samples of group 0, tap 0 partially and fully outside the image.
    targets = {(0, 0): (-0.4, 0.6), (0, 1): (hin - 0.6, 0.2), (1, 0): (0.5, -0.7),
               (1, 1): (min(1.2, hin - 0.5), win - 0.3), (1, 2 % wo): (-1.5, 0.5)}
    for (yo, xo), (ty, tx) in targets.items():
        offset[0, 0, yo, xo] = ty - (yo * stride - padding)
        offset[0, 1, yo, xo] = tx - (xo * stride - padding)
    mask = torch.rand(B, G * K, ho, wo, generator=g, dtype=torch.float64)
    weight = torch.randn(cout, cin, kh, kw, generator=g, dtype=torch.float64)
    b = torch.randn(cout, generator=g, dtype=torch.float64) if bias else None
    return x, offset, mask, weight, b


DEFORM_CASES = [
    # B, cin, cout, hin, win, ho, wo, kh, kw, G, bias, stride, padding, dilation
    (2, 4, 3, 9, 11, 4, 5, 3, 3, 2, True, 2, 1, 1),     # input larger than the output grid
    (2, 4, 3, 3, 2, 5, 6, 3, 3, 2, False, 1, 1, 1),     # input smaller than the output grid
    (1, 4, 2, 6, 7, 6, 7, 3, 3, 1, True, 1, 2, 2),      # same size, dilation 2
    (1, 4, 2, 5, 8, 3, 4, 2, 3, 4, False, 2, 0, 1),     # non-square kernel, G = Cin
    (1, 2, 2, 1, 5, 3, 4, 3, 3, 1, True, 1, 1, 1),      # single-row input
]


@pytest.mark.parametrize("case", DEFORM_CASES)
def test_deform_conv_matches_brute_force(case):
    B, cin, cout, hin, win, ho, wo, kh, kw, G, bias, stride, padding, dilation = case
    x, offset, mask, weight, b = _deform_inputs(B, cin, cout, hin, win, ho, wo, kh, kw, G, 13,
                                                bias, stride, padding, dilation)
    out = ref.deform_conv(x, offset, mask, weight, b, stride=stride, padding=padding, dilation=dilation)
    expect, pos = bf_deform_conv(x, offset, mask, weight, b, stride, padding, dilation)
    assert out.shape == (B, cout, ho, wo) and out.dtype == torch.float64
    torch.testing.assert_close(out, expect, rtol=1e-10, atol=1e-10)
    ys, xs = np.array([p[0] for p in pos]), np.array([p[1] for p in pos])
    assert ((ys > -1) & (ys < 0)).any() and ((ys > hin - 1) & (ys < hin)).any()
    assert ((xs > -1) & (xs < 0)).any() and ((xs > win - 1) & (xs < win)).any()
    assert (ys <= -1).any()


@pytest.mark.parametrize("stride,padding,dilation", [(1, 1, 1), (2, 1, 1), (1, 2, 2)])
def test_deform_conv_zero_offset_is_conv2d(stride, padding, dilation):
    g = _rng(20)
    x = torch.randn(2, 4, 9, 8, generator=g, dtype=torch.float64)
    weight = torch.randn(5, 4, 3, 3, generator=g, dtype=torch.float64)
    bias = torch.randn(5, generator=g, dtype=torch.float64)
    expect = F.conv2d(x, weight, bias, stride=stride, padding=padding, dilation=dilation)
    ho, wo = expect.shape[-2:]
    offset = torch.zeros(2, 2 * 2 * 9, ho, wo, dtype=torch.float64)
    mask = torch.ones(2, 2 * 9, ho, wo, dtype=torch.float64)
    out = ref.deform_conv(x, offset, mask, weight, bias, stride=stride, padding=padding, dilation=dilation)
    torch.testing.assert_close(out, expect, rtol=1e-10, atol=1e-10)


def test_deform_conv_chunked_rows_are_exact():
    x, offset, mask, weight, b = _deform_inputs(2, 4, 3, 7, 6, 5, 4, 3, 3, 2, 14)
    args = [t.clone().requires_grad_() for t in (x, offset, mask, weight, b)]
    full = ref.deform_conv(*args)
    grads_full = torch.autograd.grad(full.square().sum(), args)
    chunked = ref.deform_conv(*args, max_column_elems=1)      # one output row per chunk
    grads_chunked = torch.autograd.grad(chunked.square().sum(), args)
    torch.testing.assert_close(chunked, full, rtol=1e-12, atol=1e-12)
    for gc, gf in zip(grads_chunked, grads_full):
        torch.testing.assert_close(gc, gf, rtol=1e-12, atol=1e-12)


def test_deform_conv_gradcheck():
    g = _rng(15)
    K, G = 4, 2
    x = torch.randn(1, 2, 4, 3, generator=g, dtype=torch.float64)
    # Integer part in [-2, 1], fractional part in [0.2, 0.8]: away from bilinear kinks.
    offset = (torch.randint(-2, 2, (1, 2 * G * K, 3, 2), generator=g)
              + 0.2 + 0.6 * torch.rand(1, 2 * G * K, 3, 2, generator=g)).double()
    mask = torch.rand(1, G * K, 3, 2, generator=g, dtype=torch.float64)
    weight = torch.randn(2, 2, 2, 2, generator=g, dtype=torch.float64)
    bias = torch.randn(2, generator=g, dtype=torch.float64)
    inputs = tuple(t.requires_grad_() for t in (x, offset, mask, weight, bias))
    assert torch.autograd.gradcheck(lambda *a: ref.deform_conv(*a, stride=1, padding=1), inputs)


def test_deform_conv_low_precision_input():
    x, offset, mask, weight, b = (t.float() for t in _deform_inputs(1, 4, 3, 6, 6, 6, 6, 3, 3, 2, 16))
    out32 = ref.deform_conv(x, offset, mask, weight, b)
    out16 = ref.deform_conv(x.bfloat16(), offset, mask, weight, b)
    assert out16.dtype == torch.bfloat16
    torch.testing.assert_close(out16.float(), out32, rtol=0.05, atol=0.1)


def test_deform_conv_validation():
    x, offset, mask, weight, b = _deform_inputs(1, 4, 3, 5, 5, 4, 4, 3, 3, 2, 17)
    with pytest.raises(ValueError, match="offset channels"):
        ref.deform_conv(x, offset[:, :-1], mask, weight, b)
    with pytest.raises(ValueError, match="mask channels"):
        ref.deform_conv(x, offset, mask[:, :9], weight, b)
    with pytest.raises(ValueError, match="not divisible"):
        ref.deform_conv(x[:, :3], offset, mask, weight[:, :3], b)
    with pytest.raises(ValueError, match="spatial size"):
        ref.deform_conv(x, offset, mask[..., :3], weight, b)
    with pytest.raises(ValueError, match="weight input channels"):
        ref.deform_conv(x, offset, mask, weight[:, :2], b)
    with pytest.raises(ValueError, match="bias shape"):
        ref.deform_conv(x, offset, mask, weight, b[:2])
    with pytest.raises(ValueError, match="batch sizes differ"):
        ref.deform_conv(x.expand(2, -1, -1, -1), offset, mask, weight, b)
    with pytest.raises(ValueError, match="4-D offset"):
        ref.deform_conv(x, offset[0], mask, weight, b)


# --------------------------------------------------------------------------------------
# ddf
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("k,dilation,layout", [(3, 1, "flat"), (3, 2, "square"), (5, 1, "square"),
                                               (2, 2, "flat")])
def test_ddf_matches_brute_force(k, dilation, layout):
    g = _rng(18)
    x = torch.randn(2, 3, 5, 6, generator=g, dtype=torch.float64)
    cf = torch.randn(2, 3, k * k, generator=g, dtype=torch.float64)
    sf = torch.randn(2, k * k, 5, 6, generator=g, dtype=torch.float64)
    cf_in = cf if layout == "flat" else cf.view(2, 3, k, k)
    out = ref.ddf(x, cf_in, sf, kernel_size=k, dilation=dilation)
    torch.testing.assert_close(out, bf_ddf(x, cf, sf, k, dilation), rtol=1e-12, atol=1e-12)


def test_ddf_gradcheck():
    g = _rng(19)
    x = torch.randn(1, 2, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    cf = torch.randn(1, 2, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    sf = torch.randn(1, 9, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    for d in (1, 2):
        assert torch.autograd.gradcheck(lambda a, b, c: ref.ddf(a, b, c, 3, d), (x, cf, sf))
    # Partial requires_grad paths of the custom backward.
    xs = x.detach().requires_grad_()
    assert torch.autograd.gradcheck(lambda a: ref.ddf(a, cf.detach(), sf.detach(), 3, 2), (xs,))


def test_ddf_validation():
    x, cf, sf = torch.randn(2, 3, 5, 6), torch.randn(2, 3, 9), torch.randn(2, 9, 5, 6)
    with pytest.raises(ValueError, match="4-D x"):
        ref.ddf(x[0], cf, sf)
    with pytest.raises(ValueError, match="channel_filter shape"):
        ref.ddf(x, cf[:, :2], sf)
    with pytest.raises(ValueError, match="channel_filter shape"):
        ref.ddf(x, cf, sf, kernel_size=5)
    with pytest.raises(ValueError, match="spatial_filter shape"):
        ref.ddf(x, cf, sf[..., :5])
    with pytest.raises(ValueError, match="spatial_filter shape"):
        ref.ddf(x, cf, sf[:, :8])


# --------------------------------------------------------------------------------------
# The custom operators (reference backend): backward formulas, gradcheck, opcheck
# --------------------------------------------------------------------------------------

import frfsr.ops as ops  # noqa: E402
from frfsr.ops import custom_ops  # noqa: E402
from frfsr.ops.window import window_match as window_match_reference  # noqa: E402


def test_match_score_backward_is_the_autograd_of_both_references():
    g = _rng(30)
    for p in (1, 2, 3):
        query = torch.randn(2, 3, 6, 7, generator=g, dtype=torch.float64, requires_grad=True)
        key = torch.randn(2, 3, 8, 5, generator=g, dtype=torch.float64, requires_grad=True)
        score, index = ref.patch_match(query, key, p)
        go = torch.randn(score.shape, generator=g, dtype=torch.float64)
        expected = torch.autograd.grad(score, (query, key), go)
        got = ref.match_score_backward(go, query.detach(), key.detach(), index, p)
        for a, e in zip(got, expected):
            torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)
    # windowed matching
    query = F.normalize(torch.randn(1, 4, 9, 9, generator=g, dtype=torch.float64), dim=1).requires_grad_()
    key = F.normalize(torch.randn(1, 4, 11, 10, generator=g, dtype=torch.float64), dim=1).requires_grad_()
    flows = torch.randint(-3, 3, (1, 2, 2, 2, 2), generator=g)
    score, index = window_match_reference(query, key, flows, 4, 1)
    go = torch.randn(score.shape, generator=g, dtype=torch.float64)
    expected = torch.autograd.grad(score, (query, key), go)
    got = ref.match_score_backward(go, query.detach(), key.detach(), index, 3)
    for a, e in zip(got, expected):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)
    # query patches without a candidate (index -1, score -inf) contribute nothing (autograd
    # through the reference gives NaN there: -inf / (||q|| + 1e-5))
    flows[0, 1, 1] = 40                                  # every window of that cell is off the key
    score, index = window_match_reference(query, key, flows, 4, 1)
    assert (index == -1).sum() == 9 and torch.isneginf(score).sum() == 9
    got = ref.match_score_backward(go, query.detach(), key.detach(), index, 3)
    masked = ref.match_score_backward(torch.where(index < 0, 0.0, go), query.detach(), key.detach(), index, 3)
    for a, m in zip(got, masked):
        assert torch.isfinite(a).all() and torch.equal(a, m)
    assert torch.equal(got[0][0, :, 8, 8], torch.zeros(4, dtype=torch.float64))   # covered by those only


@pytest.mark.parametrize("case", DEFORM_CASES)
def test_deform_conv_backward_is_the_autograd_of_the_reference(case):
    B, cin, cout, hin, win, ho, wo, kh, kw, G, bias, stride, padding, dilation = case
    inputs = _deform_inputs(B, cin, cout, hin, win, ho, wo, kh, kw, G, 31, bias, stride, padding, dilation)
    args = [t.clone().requires_grad_() if t is not None else None for t in inputs]
    out = ref.deform_conv(*args, stride=stride, padding=padding, dilation=dilation)
    go = torch.randn(out.shape, generator=_rng(32), dtype=torch.float64)
    expected = torch.autograd.grad(out, [t for t in args if t is not None], go)
    for limit in (None, 1):                              # one chunk, one output row per chunk
        got = ref.deform_conv_backward(go, *inputs, stride=stride, padding=padding, dilation=dilation,
                                       max_column_elems=limit)
        assert (got[4] is None) == (not bias)
        got = [a for a in got if a is not None]
        assert len(got) == len(expected)
        for a, e in zip(got, expected):
            torch.testing.assert_close(a, e, rtol=1e-11, atol=1e-11)
    partial = ref.deform_conv_backward(go, *inputs, stride=stride, padding=padding, dilation=dilation,
                                       needs=(False, True, False, True, False))
    assert partial[0] is None and partial[2] is None and partial[4] is None
    assert partial[1] is not None and partial[3] is not None


def test_deform_conv_pairs_of_stride_padding_dilation():
    x, offset, mask, weight, b = _deform_inputs(1, 4, 2, 9, 10, 4, 3, 3, 3, 1, 33, True)
    out = ref.deform_conv(x, offset, mask, weight, b, stride=(2, 3), padding=(1, 0), dilation=(1, 2))
    expected, _ = bf_deform_conv(x, offset, mask, weight, b, (2, 3), (1, 0), (1, 2))
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="pair"):
        ref.deform_conv(x, offset, mask, weight, b, stride=(1, 1, 1))


def test_ddf_backward_is_the_autograd_of_the_reference():
    g = _rng(34)
    x = torch.randn(2, 3, 5, 6, generator=g, dtype=torch.float64, requires_grad=True)
    cf = torch.randn(2, 3, 9, generator=g, dtype=torch.float64, requires_grad=True)
    sf = torch.randn(2, 9, 5, 6, generator=g, dtype=torch.float64, requires_grad=True)
    out = ref.ddf(x, cf, sf, 3, 2)
    go = torch.randn(out.shape, generator=g, dtype=torch.float64)
    expected = torch.autograd.grad(out, (x, cf, sf), go)
    got = ref.ddf_backward(go, x.detach(), cf.detach(), sf.detach(), 3, 2)
    for a, e in zip(got, expected):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)
    assert ref.ddf_backward(go, x.detach(), cf.detach(), sf.detach(), 3, 2, (False, True, False))[::2] == (None, None)


@pytest.fixture
def reference_backend(monkeypatch):
    monkeypatch.setenv("FRFSR_OPS_BACKEND", "reference")     # what a call without a backend runs
    yield


def test_custom_op_gradcheck_reference(reference_backend):
    """gradcheck (float64, finite differences) of every operator through its custom op and
    its registered backward, reference kernels."""
    g = _rng(35)
    q = torch.randn(1, 2, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 2, 5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: ops.patch_match(a, b, 2)[0], (q, k))
    assert torch.autograd.gradcheck(lambda a, b: ops.patch_match(a, b, 2, max_block_elems=3)[0], (q, k))
    q6 = torch.randn(1, 2, 6, 6, generator=g, dtype=torch.float64, requires_grad=True)
    flows = torch.tensor([[0, 0], [1, -1]]).expand(1, 2, 2, 2, 2).contiguous()
    assert torch.autograd.gradcheck(lambda a, b: ops.window_match(a, b, flows, 2, 1)[0], (q6, k))
    # deform_conv: offsets away from the bilinear kinks (as test_deform_conv_gradcheck)
    K, G = 4, 2
    x = torch.randn(1, 2, 4, 3, generator=g, dtype=torch.float64)
    offset = (torch.randint(-2, 2, (1, 2 * G * K, 3, 2), generator=g)
              + 0.2 + 0.6 * torch.rand(1, 2 * G * K, 3, 2, generator=g)).double()
    mask = torch.rand(1, G * K, 3, 2, generator=g, dtype=torch.float64)
    weight = torch.randn(2, 2, 2, 2, generator=g, dtype=torch.float64)
    bias = torch.randn(2, generator=g, dtype=torch.float64)
    inputs = tuple(t.requires_grad_() for t in (x, offset, mask, weight, bias))
    assert torch.autograd.gradcheck(lambda *a: ops.deform_conv(*a, stride=1, padding=1), inputs)
    assert torch.autograd.gradcheck(lambda a, b: ops.deform_conv(a, offset.detach(), b, weight.detach(), None),
                                    (x, mask))
    x = torch.randn(1, 2, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    cf = torch.randn(1, 2, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    sf = torch.randn(1, 9, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, c: ops.ddf(a, b, c, 3, 2), (x, cf, sf))
    assert torch.autograd.gradcheck(lambda b: ops.ddf(x.detach(), b, sf.detach(), 3, 1), (cf,))


def _opcheck_cases(dtype=torch.float64, device="cpu"):
    """(operator, args) with small inputs for torch.library.opcheck, backend given last."""
    g = _rng(36)

    def t(*shape, grad=True, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(device, dtype).requires_grad_(grad)

    q, k = t(2, 3, 5, 6), t(2, 3, 7, 6)
    flows = torch.randint(-2, 3, (2, 2, 2, 2, 2), generator=g).to(device)
    x, off, mask, w, b = t(1, 4, 5, 6), t(1, 36, 4, 5, scale=1.5), t(1, 18, 4, 5), t(3, 4, 3, 3), t(3)
    xd, cf, sf = t(2, 3, 5, 4), t(2, 3, 3, 3), t(2, 9, 5, 4)
    go_dc, go_ddf = t(1, 3, 4, 5, grad=False), t(2, 3, 5, 4, grad=False)
    nograd = [a.detach() for a in (x, off, mask, w, b)]
    return [
        ("patch_match", torch.ops.frfsr.patch_match.default, (q, k, 3, None)),
        ("patch_match", torch.ops.frfsr.patch_match.default, (q, k, 2, 5)),
        ("window_match", torch.ops.frfsr.window_match.default, (q[:1], k[:1], flows[:1], 2, 1, 3, None)),
        ("deform_conv", torch.ops.frfsr.deform_conv.default, (x, off, mask, w, b, [1, 1], [1, 1], [1, 1])),
        ("deform_conv", torch.ops.frfsr.deform_conv.default,
         (x, off, mask.detach(), w, None, [1, 1], [1, 2], [1, 1])),
        ("deform_conv_backward", torch.ops.frfsr.deform_conv_backward.default,
         (go_dc, *nograd, [1, 1], [1, 1], [1, 1], [True, True, True, True, True])),
        ("ddf", torch.ops.frfsr.ddf.default, (xd, cf, sf, 3, 1)),
        ("ddf", torch.ops.frfsr.ddf.default, (xd, cf.detach().flatten(2), sf, 3, 2)),
        ("ddf_backward", torch.ops.frfsr.ddf_backward.default,
         (go_ddf, xd.detach(), cf.detach(), sf.detach(), 3, 1, [True, False, True])),
    ]


_OPCHECK_IDS = ["patch_match", "patch_match-p2-blocks", "window_match", "deform_conv", "deform_conv-no-bias",
                "deform_conv_backward", "ddf", "ddf-flat-filter-dilation2", "ddf_backward"]


@pytest.mark.parametrize("i", range(len(_OPCHECK_IDS)), ids=_OPCHECK_IDS)
def test_opcheck_reference(i):
    """torch.library.opcheck: schema, fake kernel against the real one, autograd registration
    and AOT dispatch (forward and backward traced, static and dynamic shapes)."""
    name, op, args = _opcheck_cases()[i]
    assert _OPCHECK_IDS[i].split("-")[0] == name
    torch.library.opcheck(op, (*args, "reference"))


def test_fake_kernels_validate_like_the_kernels():
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        q, k = torch.empty(1, 3, 5, 5), torch.empty(1, 2, 6, 6)
        with pytest.raises(ValueError, match="channel counts differ"):
            torch.ops.frfsr.patch_match(q, k, 3, None, "reference")
        with pytest.raises(ValueError, match="unknown ops backend"):
            torch.ops.frfsr.ddf(torch.empty(1, 2, 4, 4), torch.empty(1, 2, 9), torch.empty(1, 9, 4, 4), 3, 1, "gpu")
        score, index = torch.ops.frfsr.patch_match(q, torch.empty(1, 3, 6, 7), 3, None, "reference")
        assert score.shape == index.shape == (1, 3, 3) and index.dtype == torch.int64
    with pytest.raises(ValueError, match="floating query and key"):
        ops.patch_match(torch.zeros(1, 3, 5, 5, dtype=torch.long), torch.zeros(1, 3, 5, 5, dtype=torch.long))


# --------------------------------------------------------------------------------------
# The backend switch
# --------------------------------------------------------------------------------------

@pytest.fixture
def clean_backend(monkeypatch):
    monkeypatch.delenv("FRFSR_OPS_BACKEND", raising=False)
    yield monkeypatch


def test_backend_is_an_argument_and_a_model_setting(clean_backend):
    from frfsr import FRFSR, FRFSRConfig
    monkeypatch = clean_backend
    assert ops.requested_backend() == "auto" and ops.requested_backend("fused") == "fused"
    monkeypatch.setenv("FRFSR_OPS_BACKEND", "Reference ")
    assert ops.requested_backend() == "reference"              # the environment variable
    assert ops.requested_backend("auto") == "reference"        # 'auto': as if nothing were asked
    assert ops.requested_backend("fused") == "fused"           # an argument beats the environment
    monkeypatch.setenv("FRFSR_OPS_BACKEND", "triton")
    with pytest.raises(ValueError, match="unknown ops backend 'triton'"):
        ops.requested_backend()
    monkeypatch.delenv("FRFSR_OPS_BACKEND")
    a, b = FRFSR(FRFSRConfig.tiny()), FRFSR(FRFSRConfig.tiny())
    assert a.set_ops_backend("reference") is a
    with pytest.raises(ValueError, match="accepted: auto, reference, fused"):
        a.set_ops_backend("gpu")
    users = [m for m in a.modules() if hasattr(m, "ops_backend")]
    assert len(users) > 3 and all(m.ops_backend == "reference" for m in users)     # every operator's module
    assert all(m.ops_backend is None for m in b.modules() if hasattr(m, "ops_backend"))   # per model
    seen = []
    real = custom_ops.kernel_backend
    monkeypatch.setattr(ops, "kernel_backend", lambda name, dev: seen.append(name) or real(name, dev))
    with torch.no_grad():
        a(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 24, 24))
    assert seen and set(seen) == {"reference"}                  # matching, deformable convs and DDF alike
    a.set_ops_backend(None)
    assert all(m.ops_backend is None for m in users)


def test_fused_without_triton_is_a_clear_error(clean_backend):
    clean_backend.setattr(custom_ops, "fused_available", lambda: False)
    q = torch.randn(1, 3, 5, 5)
    with pytest.raises(RuntimeError, match="Triton is not importable"):
        ops.patch_match(q, q, backend="fused")
    assert custom_ops.kernel_backend("auto", torch.device("cuda")) == "reference"   # auto: the reference on CUDA
    assert ops.backend_for(q, "auto") in ("reference", "native")     # (CPU: the native kernel where built)
