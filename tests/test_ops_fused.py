"""Fused Triton operators (``frfsr.ops.triton``) against ``frfsr.ops.reference``.

On CPU the kernels run under the Triton interpreter (``TRITON_INTERPRET=1`` is set here,
before Triton is imported), so the sizes are tiny. With ``FRFSR_TEST_CUDA=1`` on a machine
with CUDA the interpreter is left off, the same cases run on the GPU and the larger
``cuda_*`` cases are added (they are the only cases skipped elsewhere).
"""
from __future__ import annotations

import os
import sys
from unittest import mock

import pytest
import torch  # does not import Triton

CUDA = os.environ.get("FRFSR_TEST_CUDA", "").strip() == "1" and torch.cuda.is_available()
if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch.nn.functional as F  # noqa: E402

pytest.importorskip("triton")

import frfsr.ops as ops  # noqa: E402
from frfsr.ops import reference as ref  # noqa: E402

import frfsr.ops.triton as fused  # noqa: E402


def _interpreted() -> bool:
    kern = sys.modules["frfsr.ops.triton.ddf"]._ddf_fwd_kernel
    return type(kern).__name__ == "InterpretedFunction"


# Triton decides at import/decoration time whether kernels are interpreted. If some other
# module imported Triton before TRITON_INTERPRET=1 was set, CPU tensors cannot run the
# kernels: say so clearly instead of failing deep inside Triton.
_MODE_PROBLEM = None
if not CUDA and not _interpreted():
    _MODE_PROBLEM = ("Triton kernels are compiled (not interpreted) but there is no CUDA run: Triton was "
                     "imported before this module set TRITON_INTERPRET=1. Run with TRITON_INTERPRET=1 "
                     "in the environment, or FRFSR_TEST_CUDA=1 on a CUDA machine.")


@pytest.fixture(autouse=True)
def _require_usable_triton_mode():
    if _MODE_PROBLEM is not None:
        pytest.fail(_MODE_PROBLEM)


DEV = torch.device("cuda") if CUDA else torch.device("cpu")
cuda_only = pytest.mark.skipif(not CUDA, reason="larger CUDA cases: set FRFSR_TEST_CUDA=1 on a CUDA machine")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(*shape, g, scale=1.0, device=DEV, requires_grad=False):
    t = (torch.randn(*shape, generator=g) * scale).to(device)
    return t.requires_grad_(requires_grad)


def _rand(*shape, g, device=DEV, requires_grad=False):
    return torch.rand(*shape, generator=g).to(device).requires_grad_(requires_grad)


def _fused_op(name, *args, **kwargs):
    """``frfsr.ops.<name>`` on the fused kernels: the custom operator, which carries the
    fused backward (the functions of frfsr.ops.triton compute forward passes only)."""
    return getattr(ops, name)(*args, backend="fused", **kwargs)


def _assert_close(actual, expected, rel, name=""):
    assert actual.shape == expected.shape, (name, actual.shape, expected.shape)
    assert actual.dtype == expected.dtype, (name, actual.dtype, expected.dtype)
    scale = max(1.0, expected.abs().max().item()) if expected.numel() else 1.0
    err = (actual.float() - expected.float()).abs().max().item() if expected.numel() else 0.0
    assert err <= rel * scale, f"{name}: max abs err {err:.3g} > {rel:.1g} * {scale:.3g}"


def test_kernels_run_in_the_expected_mode():
    assert _interpreted() == (not CUDA)


# --------------------------------------------------------------------------------------
# patch_match
# --------------------------------------------------------------------------------------

def _separated_pair(B, C, h, w, H, W, p, seed, device=DEV):
    """Query = noisy crop of the key at a per-sample offset: each query patch has one clear best match."""
    g = _gen(seed)
    key = F.normalize(torch.randn(B, C, H, W, generator=g), dim=1)
    qs, expect = [], []
    wk = W - p + 1
    for b in range(B):
        y0 = int(torch.randint(0, H - h + 1, (1,), generator=g))
        x0 = int(torch.randint(0, W - w + 1, (1,), generator=g))
        qs.append(key[b, :, y0:y0 + h, x0:x0 + w] + 0.05 * torch.randn(C, h, w, generator=g))
        ys = torch.arange(h - p + 1).view(-1, 1) + y0
        xs = torch.arange(w - p + 1).view(1, -1) + x0
        expect.append(ys * wk + xs)
    query = F.normalize(torch.stack(qs), dim=1)
    return query.to(device), key.to(device), torch.stack(expect).to(device)


def _similarity(query, key, p):
    qp = F.unfold(query.double(), p)
    kp = F.unfold(key.double(), p)
    kp = kp / (kp.norm(dim=1, keepdim=True) + 1e-5)
    return torch.einsum("bdm,bdn->bmn", qp, kp) / (qp.norm(dim=1).unsqueeze(-1) + 1e-5)


@pytest.mark.parametrize("B,C,h,w,H,W,p", [
    (2, 3, 7, 9, 11, 13, 3),
    (3, 5, 6, 5, 9, 12, 2),
    (1, 4, 9, 8, 12, 10, 3),
])
def test_patch_match_separated(B, C, h, w, H, W, p):
    query, key, expect = _separated_pair(B, C, h, w, H, W, p, seed=B * 100 + C)
    score, index = fused.patch_match(query, key, patch_size=p)
    r_score, r_index = ref.patch_match(query, key, patch_size=p)
    assert index.dtype == torch.int64 and index.shape == (B, h - p + 1, w - p + 1)
    assert torch.equal(r_index, expect)  # sanity of the construction
    assert torch.equal(index, r_index)
    _assert_close(score, r_score, 1e-5, "score")


@pytest.mark.parametrize("B,C,h,w,H,W,p", [
    (2, 4, 8, 11, 7, 5, 3),     # query larger than key
    (1, 2, 5, 7, 13, 9, 1),     # 1x1 patches, > 64 key patches (several key tiles)
    (2, 3, 12, 13, 14, 11, 3),  # > 64 query patches (several query tiles)
])
def test_patch_match_random(B, C, h, w, H, W, p):
    g = _gen(7 + h)
    query = F.normalize(torch.randn(B, C, h, w, generator=g), dim=1).to(DEV)
    key = F.normalize(torch.randn(B, C, H, W, generator=g), dim=1).to(DEV)
    score, index = fused.patch_match(query, key, p)
    r_score, r_index = ref.patch_match(query, key, p)
    _assert_close(score, r_score, 1e-5, "score")
    # where the reference's winner is not a near-tie, the indices agree; everywhere the
    # fused winner scores as high as the best match (up to rounding)
    sim = _similarity(query, key, p)                                   # (B, Nq, Nk)
    top2 = sim.topk(2, dim=2).values
    clear = (top2[..., 0] - top2[..., 1]) > 1e-4
    assert clear.float().mean() > 0.5
    assert torch.equal(index.flatten(1)[clear], r_index.flatten(1)[clear])
    chosen = sim.gather(2, index.flatten(1).unsqueeze(-1)).squeeze(-1)
    assert (chosen >= top2[..., 0] - 1e-5).all()


def _signs(shape, g):
    """Entries +-128 with 4 channels: every 2x2 patch has the norm 512 exactly (512 + 1e-5 is
    512 in float32), so normalised entries are +-1/4 and every product and sum is exact
    whatever the summation order: ties are exact in every implementation, on any CPU and
    with any Triton version."""
    return (torch.randint(0, 2, shape, generator=g).float() * 2 - 1) * 128


def test_patch_match_ties_keep_lowest_index():
    # constant key: every key patch is identical, over several key tiles -> index 0
    g = _gen(3)
    query = _signs((2, 4, 6, 7), g).to(DEV)
    key = torch.full((2, 4, 10, 12), 128.0).to(DEV)                    # 9*11 = 99 key patches
    score, index = fused.patch_match(query, key, 2)
    r_score, r_index = ref.patch_match(query, key, 2)
    assert torch.equal(r_index, torch.zeros_like(r_index))
    assert torch.equal(index, r_index)
    _assert_close(score, r_score, 1e-5, "score")
    # key whose patches repeat with period 2 along x: winners must be in the first period
    key = _signs((1, 4, 9, 2), g).repeat(1, 1, 1, 8).to(DEV)           # 15 key patches per row
    query = _signs((1, 4, 6, 5), g).to(DEV)
    _, index = fused.patch_match(query, key, 2)
    _, r_index = ref.patch_match(query, key, 2)
    assert torch.equal(index, r_index)
    assert (index % 15 < 2).all()


def test_patch_match_validation():
    q = torch.randn(1, 3, 4, 4, device=DEV)
    with pytest.raises(ValueError):
        fused.patch_match(q, torch.randn(1, 2, 5, 5, device=DEV))
    with pytest.raises(ValueError):
        fused.patch_match(q, torch.randn(1, 3, 2, 5, device=DEV), patch_size=3)


@cuda_only
@pytest.mark.parametrize("precision,score_tol", [(None, 2e-2), ("tf32", 5e-3), ("ieee", 1e-5)])
def test_cuda_patch_match_large(precision, score_tol):
    B, C, h, w, H, W, p = 2, 64, 37, 45, 50, 61, 3
    query, key, expect = _separated_pair(B, C, h, w, H, W, p, seed=11, device="cuda")
    score, index = fused.patch_match(query, key, p, precision=precision)
    r_score, r_index = ref.patch_match(query, key, p)
    assert torch.equal(r_index, expect)
    assert torch.equal(index, r_index)
    _assert_close(score, r_score, score_tol, "score")
    # random data: scores agree, indices agree where the reference is not a near-tie
    g = _gen(12)
    query = F.normalize(torch.randn(B, C, 40, 33, generator=g), dim=1).cuda()
    key = F.normalize(torch.randn(B, C, 29, 52, generator=g), dim=1).cuda()
    score, index = fused.patch_match(query, key, p, precision=precision)
    r_score, r_index = ref.patch_match(query, key, p)
    _assert_close(score, r_score, score_tol, "score")
    sim = _similarity(query, key, p)
    top2 = sim.topk(2, dim=2).values
    clear = (top2[..., 0] - top2[..., 1]) > 4 * score_tol
    assert torch.equal(index.flatten(1)[clear], r_index.flatten(1)[clear])


# --------------------------------------------------------------------------------------
# deform_conv
# --------------------------------------------------------------------------------------

def _dcn_inputs(B, Cin, Hin, Win, Cout, G, kh, kw, Ho, Wo, off_scale, bias, seed, device=DEV):
    g = _gen(seed)
    K = kh * kw
    x = _randn(B, Cin, Hin, Win, g=g, device=device, requires_grad=True)
    off = _randn(B, 2 * G * K, Ho, Wo, g=g, scale=off_scale, device=device, requires_grad=True)
    mask = _rand(B, G * K, Ho, Wo, g=g, device=device, requires_grad=True)
    w = _randn(Cout, Cin, kh, kw, g=g, scale=0.5, device=device, requires_grad=True)
    b = _randn(Cout, g=g, device=device, requires_grad=True) if bias else None
    return x, off, mask, w, b


def _check_dcn(args, stride, padding, dilation, rel, seed=0):
    x, off, mask, w, b = args
    inputs = [t for t in (x, off, mask, w, b) if t is not None]
    out = _fused_op("deform_conv", x, off, mask, w, b, stride=stride, padding=padding, dilation=dilation)
    r_out = ref.deform_conv(x, off, mask, w, b, stride=stride, padding=padding, dilation=dilation)
    assert out.shape == (x.shape[0], w.shape[0], *off.shape[-2:])
    _assert_close(out, r_out, rel, "out")
    go = torch.randn(out.shape, generator=_gen(seed + 1)).to(out.device)
    grads = torch.autograd.grad(out, inputs, go)
    r_grads = torch.autograd.grad(r_out, inputs, go)
    for name, a, e in zip(("x", "offset", "mask", "weight", "bias"), grads, r_grads):
        _assert_close(a, e, rel, f"grad_{name}")


@pytest.mark.parametrize(
    "B,Cin,Hin,Win,Cout,G,kh,kw,Ho,Wo,stride,padding,dilation,off_scale,bias",
    [
        (2, 6, 7, 9, 5, 2, 3, 3, 6, 11, 1, 1, 1, 3.0, True),   # output wider than input
        (1, 8, 5, 4, 3, 4, 3, 3, 7, 5, 1, 1, 2, 2.0, False),   # output larger, 4 groups, dilation 2
        (2, 4, 13, 11, 6, 1, 3, 2, 5, 4, 2, 0, 1, 1.5, True),  # input larger, stride 2, 3x2 kernel
        (1, 6, 4, 5, 4, 3, 3, 3, 3, 4, 1, 1, 1, 8.0, True),    # most samples far outside the image
    ])
def test_deform_conv(B, Cin, Hin, Win, Cout, G, kh, kw, Ho, Wo, stride, padding, dilation, off_scale, bias):
    args = _dcn_inputs(B, Cin, Hin, Win, Cout, G, kh, kw, Ho, Wo, off_scale, bias, seed=Cin * 10 + G)
    _check_dcn(args, stride, padding, dilation, rel=1e-4)


def test_deform_conv_several_channel_and_output_blocks():
    # Cg = 40 > BLOCK_C and Cout = 70 > BLOCK_O: exercises every reduction loop
    args = _dcn_inputs(1, 40, 4, 5, 70, 1, 3, 3, 3, 4, 1.0, True, seed=5)
    _check_dcn(args, 1, 1, 1, rel=1e-4)


def test_deform_conv_two_taps_per_step():
    # 8 channels per group as at relu1_1 (64 channels, 8 groups): a column tile of 16 holds two
    # taps; 9 taps per group leave the last step half filled
    args = _dcn_inputs(1, 16, 6, 7, 5, 2, 3, 3, 5, 6, 2.5, True, seed=6)
    _check_dcn(args, 1, 1, 1, rel=1e-4)


def test_deform_conv_partial_grads():
    x, off, mask, w, b = _dcn_inputs(1, 4, 5, 6, 3, 2, 3, 3, 4, 5, 2.0, True, seed=9)
    off, w = off.detach(), w.detach()
    out = _fused_op("deform_conv", x, off, mask, w, b)
    r_out = ref.deform_conv(x, off, mask, w, b)
    go = torch.randn(out.shape, generator=_gen(4)).to(out.device)
    for a, e in zip(torch.autograd.grad(out, (x, mask, b), go), torch.autograd.grad(r_out, (x, mask, b), go)):
        _assert_close(a, e, 1e-4)


@cuda_only
@pytest.mark.parametrize("Hin,Win,Ho,Wo,G,stride", [(32, 40, 48, 36, 8, 1), (61, 47, 31, 24, 4, 2)])
def test_cuda_deform_conv_large(Hin, Win, Ho, Wo, G, stride):
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        args = _dcn_inputs(2, 64, Hin, Win, 64, G, 3, 3, Ho, Wo, 4.0, True, seed=21, device="cuda")
        _check_dcn(args, stride, 1, 1, rel=2e-4)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev


# --------------------------------------------------------------------------------------
# ddf
# --------------------------------------------------------------------------------------

def _check_ddf(B, C, H, W, k, d, four_d, seed, rel=1e-5, device=DEV):
    g = _gen(seed)
    x = _randn(B, C, H, W, g=g, device=device, requires_grad=True)
    cf = _randn(*((B, C, k, k) if four_d else (B, C, k * k)), g=g, device=device, requires_grad=True)
    sf = _randn(B, k * k, H, W, g=g, device=device, requires_grad=True)
    out = _fused_op("ddf", x, cf, sf, kernel_size=k, dilation=d)
    r_out = ref.ddf(x, cf, sf, kernel_size=k, dilation=d)
    _assert_close(out, r_out, rel, "out")
    go = torch.randn(out.shape, generator=_gen(seed + 1)).to(device)
    grads = torch.autograd.grad(out, (x, cf, sf), go)
    r_grads = torch.autograd.grad(r_out, (x, cf, sf), go)
    for name, a, e in zip(("x", "channel_filter", "spatial_filter"), grads, r_grads):
        _assert_close(a, e, rel * 4, f"grad_{name}")


@pytest.mark.parametrize("B,C,H,W,k,d,four_d", [
    (2, 5, 7, 9, 3, 1, False),
    (1, 3, 6, 5, 3, 2, True),     # dilation 2, (B, C, k, k) channel filter
    (2, 20, 5, 11, 5, 1, False),  # several channel blocks, 5x5
    (1, 6, 9, 4, 5, 2, True),     # dilation 2 wider than the image
    (1, 1, 4, 3, 2, 1, False),    # even kernel
])
def test_ddf(B, C, H, W, k, d, four_d):
    _check_ddf(B, C, H, W, k, d, four_d, seed=C * 7 + k + d)


def test_ddf_partial_grads_and_noncontiguous():
    g = _gen(17)
    x = _randn(1, 6, 8, 5, g=g).transpose(2, 3).requires_grad_()   # (1, 6, 5, 8) non-contiguous
    cf = _randn(1, 6, 9, g=g)
    sf = _randn(1, 9, 5, 8, g=g, requires_grad=True)
    out = _fused_op("ddf", x, cf, sf, 3, 2)
    r_out = ref.ddf(x, cf, sf, 3, 2)
    _assert_close(out, r_out, 1e-5)
    go = torch.randn(out.shape, generator=_gen(18)).to(DEV)
    for a, e in zip(torch.autograd.grad(out, (x, sf), go), torch.autograd.grad(r_out, (x, sf), go)):
        _assert_close(a, e, 1e-5)


def test_channels_last_inputs_match_the_reference():
    """A model moved to channels_last hands the ops NHWC-strided tensors (and NHWC output
    gradients): each kernel reads them through their strides, forward and backward."""
    cl = torch.channels_last
    # patch matching
    query, key, _ = _separated_pair(2, 4, 7, 8, 10, 9, 3, seed=5)
    score, index = fused.patch_match(query.contiguous(memory_format=cl), key.contiguous(memory_format=cl), 3)
    r_score, r_index = ref.patch_match(query, key, 3)
    assert torch.equal(index, r_index)
    _assert_close(score, r_score, 1e-5, "score")
    # modulated deformable conv
    x, off, mask, w, b = _dcn_inputs(2, 6, 7, 9, 5, 2, 3, 3, 6, 8, 2.0, True, seed=11)
    x_cl, off_cl, mask_cl = (t.detach().contiguous(memory_format=cl).requires_grad_() for t in (x, off, mask))
    out = _fused_op("deform_conv", x_cl, off_cl, mask_cl, w, b, stride=1, padding=1, dilation=1)
    r_out = ref.deform_conv(x, off, mask, w, b, stride=1, padding=1, dilation=1)
    _assert_close(out, r_out, 1e-4, "deform_conv out")
    go = torch.randn(out.shape, generator=_gen(12)).to(DEV).contiguous(memory_format=cl)
    grads = torch.autograd.grad(out, (x_cl, off_cl, mask_cl, w, b), go)
    r_grads = torch.autograd.grad(r_out, (x, off, mask, w, b), go.contiguous())
    for name, a, e in zip(("x", "offset", "mask", "weight", "bias"), grads, r_grads):
        _assert_close(a, e, 1e-4, f"deform_conv grad_{name}")
    # DDF
    g = _gen(13)
    x = _randn(2, 5, 7, 6, g=g)
    cf = _randn(2, 5, 9, g=g, requires_grad=True)
    sf = _randn(2, 9, 7, 6, g=g)
    x_cl, sf_cl = (t.contiguous(memory_format=cl).requires_grad_() for t in (x, sf))
    x.requires_grad_()
    sf.requires_grad_()
    out = _fused_op("ddf", x_cl, cf, sf_cl, 3, 1)
    r_out = ref.ddf(x, cf, sf, 3, 1)
    _assert_close(out, r_out, 1e-5, "ddf out")
    go = torch.randn(out.shape, generator=_gen(14)).to(DEV).contiguous(memory_format=cl)
    grads = torch.autograd.grad(out, (x_cl, cf, sf_cl), go)
    r_grads = torch.autograd.grad(r_out, (x, cf, sf), go.contiguous())
    for name, a, e in zip(("x", "channel_filter", "spatial_filter"), grads, r_grads):
        _assert_close(a, e, 4e-5, f"ddf grad_{name}")


@cuda_only
@pytest.mark.parametrize("k,d", [(3, 1), (3, 2), (5, 1)])
def test_cuda_ddf_large(k, d):
    _check_ddf(2, 64, 67, 45, k, d, False, seed=31, rel=1e-5, device="cuda")


# --------------------------------------------------------------------------------------
# dispatcher
# --------------------------------------------------------------------------------------

class _Spy:
    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.fn(*args, **kwargs)


@pytest.mark.parametrize("name", ["ddf", "deform_conv", "patch_match"])
def test_dispatcher_fused_backend_calls_the_kernels(monkeypatch, name):
    assert ops.fused_available()
    spy = _Spy(getattr(fused, name))
    monkeypatch.setattr(fused, name, spy)
    g = _gen(23)
    if name == "ddf":
        x, cf, sf = _randn(1, 3, 5, 6, g=g), _randn(1, 3, 3, 3, g=g), _randn(1, 9, 5, 6, g=g)
        args = (x, cf, sf)
        kwargs = dict(kernel_size=3, dilation=2)
    elif name == "deform_conv":
        x, off, mask, w, b = _dcn_inputs(1, 4, 5, 6, 3, 2, 3, 3, 4, 5, 2.0, True, seed=2)
        args = (x.detach(), off.detach(), mask.detach(), w.detach(), b.detach())
        kwargs = {}
    else:
        q, k, _ = _separated_pair(1, 3, 6, 7, 9, 9, 3, seed=4)
        args = (q, k)
        kwargs = dict(patch_size=3)
    out = getattr(ops, name)(*args, backend="fused", **kwargs)
    assert spy.calls == 1
    r_out = getattr(ops, name)(*args, backend="reference", **kwargs)
    assert spy.calls == 1
    if name == "patch_match":
        assert torch.equal(out[1], r_out[1])
        _assert_close(out[0], r_out[0], 1e-5)
    else:
        _assert_close(out, r_out, 1e-4)


# --------------------------------------------------------------------------------------
# the custom operators: one gradient semantics for both backends, opcheck
# --------------------------------------------------------------------------------------

def _grads_per_backend(fn, inputs, seed):
    """Outputs of ``fn(*inputs)`` and the gradients w.r.t. ``inputs`` under each backend."""
    res = {}
    for backend in ("reference", "fused"):
        leaves = [t.detach().clone().requires_grad_() for t in inputs]
        with mock.patch.dict(os.environ, {"FRFSR_OPS_BACKEND": backend}):     # fn's ops calls pass no backend
            out = fn(*leaves)
        go = torch.randn(out.shape, generator=_gen(seed)).to(out.device)
        res[backend] = (out, torch.autograd.grad(out, leaves, go))
    return res


def test_patch_match_score_gradient_is_the_same_for_both_backends():
    """Before the custom ops the fused score had no gradient; now both backends share one
    backward, so wherever they pick the same patches the gradients agree."""
    query, key, expect = _separated_pair(2, 4, 6, 7, 9, 10, 3, seed=41)
    res = _grads_per_backend(lambda q, k: ops.patch_match(q, k, 3)[0], (query, key), seed=42)
    assert torch.equal(ops.patch_match(query, key, 3, backend="fused")[1], expect)
    (r_out, r_grads), (f_out, f_grads) = res["reference"], res["fused"]
    _assert_close(f_out, r_out, 1e-5, "score")
    for name, a, e in zip(("query", "key"), f_grads, r_grads):
        assert e.abs().sum() > 0
        _assert_close(a, e, 1e-5, f"grad_{name}")


def test_deform_conv_and_ddf_gradients_agree_between_backends_through_the_ops():
    x, off, mask, w, b = _dcn_inputs(1, 4, 5, 6, 3, 2, 3, 3, 4, 5, 2.0, True, seed=43)
    res = _grads_per_backend(lambda *a: ops.deform_conv(*a, stride=1, padding=1, dilation=1),
                             (x, off, mask, w, b), seed=44)
    _assert_close(res["fused"][0], res["reference"][0], 1e-4, "deform_conv out")
    for name, a, e in zip(("x", "offset", "mask", "weight", "bias"), res["fused"][1], res["reference"][1]):
        _assert_close(a, e, 1e-4, f"deform_conv grad_{name}")
    g = _gen(45)
    x, cf, sf = _randn(2, 3, 5, 6, g=g), _randn(2, 3, 3, 3, g=g), _randn(2, 9, 5, 6, g=g)
    res = _grads_per_backend(lambda a, c, s: ops.ddf(a, c, s, 3, 2), (x, cf, sf), seed=46)
    _assert_close(res["fused"][0], res["reference"][0], 1e-5, "ddf out")
    for name, a, e in zip(("x", "channel_filter", "spatial_filter"), res["fused"][1], res["reference"][1]):
        assert a.shape == e.shape
        _assert_close(a, e, 4e-5, f"ddf grad_{name}")


def _opcheck_cases():
    g = _gen(47)
    query, key, _ = _separated_pair(1, 4, 4, 5, 6, 6, 2, seed=48)
    query.requires_grad_()
    key.requires_grad_()
    x, off, mask, w, b = _dcn_inputs(1, 2, 4, 5, 3, 1, 2, 2, 3, 4, 1.5, True, seed=49)   # 2x2 taps, 1 group
    xd, cf, sf = (_randn(1, 3, 4, 5, g=g, requires_grad=True), _randn(1, 3, 9, g=g, requires_grad=True),
                  _randn(1, 9, 4, 5, g=g, requires_grad=True))
    go_dc, go_ddf = _randn(1, 3, 3, 4, g=g), _randn(1, 3, 4, 5, g=g)
    f = torch.ops.frfsr
    return {
        "patch_match": (f.patch_match.default, (query, key, 2, None)),
        "deform_conv": (f.deform_conv.default, (x, off, mask, w, b, [1, 1], [1, 1], [1, 1])),
        "deform_conv_backward": (f.deform_conv_backward.default,
                                 (go_dc, *(t.detach() for t in (x, off, mask, w, b)), [1, 1], [1, 1], [1, 1],
                                  [True, True, True, True, True])),
        "ddf": (f.ddf.default, (xd, cf, sf, 3, 1)),
        "ddf_backward": (f.ddf_backward.default,
                         (go_ddf, xd.detach(), cf.detach(), sf.detach(), 3, 2, [True, True, True])),
    }


@pytest.mark.parametrize("name", ["patch_match", "deform_conv", "deform_conv_backward", "ddf", "ddf_backward"])
def test_opcheck_fused(name):
    """torch.library.opcheck with the fused kernels (Triton interpreter on CPU): the fake
    kernel agrees with the Triton one, the schema holds, autograd is registered and AOT
    dispatch traces forward and backward (window_match: tests/test_match_fast.py)."""
    op, args = _opcheck_cases()[name]
    torch.library.opcheck(op, (*args, "fused"))

