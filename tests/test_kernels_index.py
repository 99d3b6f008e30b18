"""64-bit index arithmetic of the fused kernels, under the Triton interpreter.

At the pipeline's largest size (a 4000 x 4000 output with a 4000 x 4000 Ref) two kinds of
offsets pass 2^31 elements: the deformable conv's offset / mask planes and their gradient
buffers (2*8*9 = 144 planes of 16 M values) and exact matching's patch matrices (2304 x 1 M
values). Each case here builds tensors whose planes or rows lie more than 2^31 elements
apart but are only a few values long (views into a sparse memory-mapped file, so nothing but
the touched pages costs memory), runs the fused kernel on them and compares with the
reference op: an offset computed in 32 bits would wrap and read or write the wrong memory.
The interpreter computes int32 arithmetic in wrapping int32, as the GPU does.

The other index products stay below 2^31 at that size; tests/test_kernels_aot.py checks it on
the recorded 16 MP launches (every tensor a kernel indexes in 32 bits spans less than 2^31
elements per sample).
"""
from __future__ import annotations

import os
import sys

import pytest
import torch

os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

import frfsr.ops as ops  # noqa: E402
import frfsr.ops.triton  # noqa: E402,F401
from frfsr.ops import reference as ref  # noqa: E402

dcn_mod = sys.modules["frfsr.ops.triton.deform_conv"]
pm_mod = sys.modules["frfsr.ops.triton.patch_match"]

pytestmark = pytest.mark.skipif(type(dcn_mod._dcn_fwd_kernel).__name__ != "InterpretedFunction",
                                reason="needs the Triton interpreter (TRITON_INTERPRET=1 before Triton is imported)")

FAR = 2 ** 28          # plane / row spacing: (planes - 1) * FAR > 2^31


class _Sparse:
    """Views into one sparse memory-mapped file of float32 values."""

    def __init__(self, path, n_values):
        with open(path, "wb") as f:
            f.truncate(n_values * 4)
        self.flat = torch.from_file(str(path), shared=True, size=n_values, dtype=torch.float32)
        self.used = 0

    def view(self, shape, strides, fill=None):
        span = 1 + sum((n - 1) * s for n, s in zip(shape, strides))
        assert self.used + span <= self.flat.numel()
        t = self.flat.as_strided(shape, strides, self.used)
        self.used += span + 64
        if fill is not None:
            t.copy_(fill)
        return t


@pytest.fixture
def sparse(tmp_path):
    return _Sparse(tmp_path / "sparse.bin", 64 * FAR)


def _dcn_case(G=1, Hin=6, Win=7, Ho=5, Wo=6, C=4, Cout=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    K = 9
    return (torch.randn(1, C, Hin, Win, generator=g), torch.randn(1, 2 * G * K, Ho, Wo, generator=g) * 2,
            torch.rand(1, G * K, Ho, Wo, generator=g), torch.randn(Cout, C, 3, 3, generator=g) * 0.5,
            torch.randn(Cout, generator=g))


def _close(a, e, tol=1e-4):
    scale = max(1.0, e.abs().max().item())
    assert (a.float() - e.float()).abs().max().item() <= tol * scale


def _isolated(test):
    """Run the test body in a forked child: an offset that wraps in 32 bits reads or writes
    far outside the mapping and crashes the process, which must fail this test only."""
    def run(*args, **kwargs):
        pid = os.fork()
        if pid == 0:                                     # child
            code = 0
            try:
                test(*args, **kwargs)
            except BaseException:                       # noqa: BLE001 - reported through the exit code
                import traceback
                traceback.print_exc()
                code = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status):
            pytest.fail(f"the kernel crashed the process (signal {os.WTERMSIG(status)}): an offset wrapped in 32 bits")
        assert os.WEXITSTATUS(status) == 0, "the check failed in the child process (traceback above)"
    run.__name__, run.__doc__ = test.__name__, test.__doc__
    import inspect
    run.__signature__ = inspect.signature(test)
    return run


@pytest.mark.parametrize("far", ["planes", "rows"])
@_isolated
def test_deform_conv_offsets_beyond_2_31(sparse, far):
    """Offset and mask planes (or rows, as in a channels-last tensor) more than 2^31 elements
    apart: the forward and every gradient agree with the reference."""
    x, off, mask, w, b = _dcn_case()
    B, O, Ho, Wo = off.shape
    M = mask.shape[1]
    if far == "planes":
        off_v = sparse.view(off.shape, (0, FAR, Wo, 1), off)
        mask_v = sparse.view(mask.shape, (0, FAR, Wo, 1), mask)
        assert (O - 1) * FAR >= 2 ** 31 and (M - 1) * FAR >= 2 ** 31
    else:
        row = 2 * FAR + 2 ** 20
        off_v = sparse.view(off.shape, (0, 1, row, O), off)
        mask_v = sparse.view(mask.shape, (0, 1, row, M), mask)
        assert (Ho - 1) * row >= 2 ** 31
    x, w, b = (t.requires_grad_() for t in (x, w, b))
    off_v.requires_grad_()
    mask_v.requires_grad_()
    out = ops.deform_conv(x, off_v, mask_v, w, b, backend="fused")
    off.requires_grad_()
    mask.requires_grad_()
    r_out = ref.deform_conv(x, off, mask, w, b)
    _close(out, r_out)
    go = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    grads = torch.autograd.grad(out, (x, off_v, mask_v, w, b), go)
    r_grads = torch.autograd.grad(r_out, (x, off, mask, w, b), go)
    for a, e in zip(grads, r_grads):
        _close(a, e)


@_isolated
def test_deform_conv_gradient_planes_beyond_2_31(sparse, monkeypatch):
    """The offset / mask gradient buffers with planes more than 2^31 elements apart (at 16 MP
    they are 16 M values apart, 144 of them)."""
    def far_planes(B, planes, Ho, Wo, device):
        assert (planes - 1) * FAR >= 2 ** 31
        return sparse.view((B, planes, Ho, Wo), (0, FAR, Wo, 1))
    monkeypatch.setattr(dcn_mod, "_grad_plane_buffer", far_planes)
    x, off, mask, w, b = _dcn_case(G=2, C=4, seed=3)
    go = torch.randn(1, 3, *off.shape[-2:], generator=torch.Generator().manual_seed(2))
    _, goff, gmsk, _, _ = frfsr.ops.triton.deform_conv_backward(go, x, off, mask, w, b)
    _, r_goff, r_gmsk, _, _ = ref.deform_conv_backward(go, x, off, mask, w, b, (1, 1), (1, 1), (1, 1),
                                                       (True, True, True, True, True))
    _close(goff, r_goff)
    _close(gmsk, r_gmsk)


@_isolated
def test_patch_match_rows_beyond_2_31(sparse, monkeypatch):
    """Query rows (D values each) and key rows (Nk values each) spaced so that the start of a
    later tile lies beyond 2^31 elements while offsets within a tile stay below (at 16 MP:
    the (Nq, D) and (D, Nk) matrices of a 4000 px Ref are 2.3e9 values long, a tile spans 64
    rows of at most 1e6 values)."""
    row = 2 ** 25 + 2 ** 10             # 63 rows < 2^31 <= 64 rows (tiles of 64 under the interpreter)

    def far_rows(qp, kp, dtype):
        B, D, Nq = qp.shape
        Nk = kp.shape[2]
        q = sparse.view((B, Nq, D), (0, row, 1), qp.transpose(1, 2))
        k = sparse.view((B, D, Nk), (0, row, 1), kp)
        assert Nq > 64 and D > 64          # several query tiles and channel steps
        return q, k
    monkeypatch.setattr(pm_mod, "_operands", far_rows)
    g = torch.Generator().manual_seed(5)
    query = torch.nn.functional.normalize(torch.randn(1, 8, 11, 11, generator=g), dim=1)
    key = torch.nn.functional.normalize(torch.randn(1, 8, 9, 9, generator=g), dim=1)
    score, index = frfsr.ops.triton.patch_match(query, key, 3)
    r_score, r_index = ref.patch_match(query, key, 3)
    _close(score, r_score, 1e-5)
    assert torch.equal(index, r_index)
