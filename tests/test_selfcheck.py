"""The fused kernels' first-use self-check (frfsr.ops.selfcheck), under the Triton interpreter.

On a GPU the check runs before the first fused call per (operator, device, dtype); CPU
tensors skip it. Here it is made to apply to CPU tensors (the interpreter runs the fused
kernels on them) and a failing (raising) and a wrong kernel are injected: each falls back to
the reference op with one warning, and the outcome is reported.
"""
from __future__ import annotations

import os
import sys
import warnings

import pytest
import torch

os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

import frfsr.ops as ops  # noqa: E402
import frfsr.ops.triton as fused  # noqa: E402
from frfsr.ops import reference as ref  # noqa: E402
from frfsr.ops import selfcheck  # noqa: E402

pytestmark = pytest.mark.skipif(
    type(sys.modules["frfsr.ops.triton.ddf"]._ddf_fwd_kernel).__name__ != "InterpretedFunction",
    reason="needs the Triton interpreter (TRITON_INTERPRET=1 before Triton is imported)")


@pytest.fixture
def check_cpu(monkeypatch):
    """The self-check applies to CPU tensors (as to GPU tensors outside tests), from a clean slate."""
    monkeypatch.setattr(selfcheck, "_applies", lambda device: True)
    monkeypatch.delenv("FRFSR_FUSED_SELFCHECK", raising=False)
    selfcheck._reset()
    yield
    selfcheck._reset()


def _ddf_args(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, 5, 7, 6, generator=g), torch.randn(1, 5, 9, generator=g), torch.randn(1, 9, 7, 6, generator=g)


def _dcn_args(seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, 4, 5, 6, generator=g), torch.randn(1, 36, 4, 5, generator=g), torch.rand(1, 18, 4, 5, generator=g),
            torch.randn(3, 4, 3, 3, generator=g), torch.randn(3, generator=g))


def _close(a, e, tol=1e-4):
    assert (a - e).abs().max().item() <= tol * max(1.0, e.abs().max().item())


def test_real_kernels_pass_and_run(check_cpu, monkeypatch):
    calls = []
    real = fused.ddf
    monkeypatch.setattr(fused, "ddf", lambda *a, **k: calls.append(1) or real(*a, **k))
    x, cf, sf = _ddf_args()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        out = ops.ddf(x, cf, sf, 3, 1, backend="fused")
    assert len(calls) == 2          # the self-check's call, then the operator's
    _close(out, ref.ddf(x, cf, sf, 3, 1))
    (outcome,) = selfcheck.report()
    assert (outcome.operator, outcome.dtype, outcome.ok, outcome.detail) == ("ddf", "torch.float32", True, "")


def test_failing_kernel_falls_back_to_the_reference_with_one_warning(check_cpu, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("PTX assembly aborted: injected compile error")
    monkeypatch.setattr(fused, "deform_conv", broken)
    x, off, mask, w, b = _dcn_args()
    with pytest.warns(RuntimeWarning, match="fused deform_conv kernel failed its self-check"):
        out = ops.deform_conv(x, off, mask, w, b, backend="fused")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)      # once only
        out2 = ops.deform_conv(x, off, mask, w, b, backend="fused")
    r_out = ref.deform_conv(x, off, mask, w, b)
    assert torch.equal(out, r_out) and torch.equal(out2, r_out)
    (outcome,) = selfcheck.report()
    assert not outcome.ok and "injected compile error" in outcome.detail
    # the backward follows the forward's decision: the reference backward, no fused kernel
    xg = x.clone().requires_grad_()
    out = ops.deform_conv(xg, off, mask, w, b, backend="fused")
    (gx,) = torch.autograd.grad(out.sum(), xg)
    xr = x.clone().requires_grad_()
    (rgx,) = torch.autograd.grad(ref.deform_conv(xr, off, mask, w, b).sum(), xr)
    _close(gx, rgx, 1e-6)


def test_wrong_kernel_falls_back_to_the_reference(check_cpu, monkeypatch):
    real = fused.ddf
    monkeypatch.setattr(fused, "ddf", lambda *a, **k: real(*a, **k) * 1.5)
    x, cf, sf = _ddf_args(1)
    with pytest.warns(RuntimeWarning, match="fused ddf kernel failed its self-check"):
        out = ops.ddf(x, cf, sf, 3, 1, backend="fused")
    assert torch.equal(out, ref.ddf(x, cf, sf, 3, 1))
    (outcome,) = selfcheck.report()
    assert not outcome.ok and outcome.detail.startswith("output: max abs error")


def test_wrong_index_is_caught(check_cpu, monkeypatch):
    real = fused.patch_match

    def shifted(*a, **k):
        score, index = real(*a, **k)
        return score, index + 1
    monkeypatch.setattr(fused, "patch_match", shifted)
    g = torch.Generator().manual_seed(2)
    q = torch.nn.functional.normalize(torch.randn(1, 3, 6, 6, generator=g), dim=1)
    k = torch.nn.functional.normalize(torch.randn(1, 3, 8, 7, generator=g), dim=1)
    with pytest.warns(RuntimeWarning, match="patch_match"):
        score, index = ops.patch_match(q, k, 3, backend="fused")
    r_score, r_index = ref.patch_match(q, k, 3)
    assert torch.equal(index, r_index)
    assert selfcheck.report()[0].detail == "index differs from the reference"


def test_each_operator_passes_with_the_real_kernels(check_cpu):
    """window_match, patch_match and deform_conv (forward and backward) pass the check as
    they are; the outcome is per dtype."""
    outcomes = selfcheck.check_device(torch.device("cpu"), dtypes=(torch.float32,))
    assert {o.operator for o in outcomes} == set(selfcheck.OPERATORS)
    assert all(o.ok for o in outcomes), [o for o in outcomes if not o.ok]


def test_cpu_runs_skip_the_check(monkeypatch):
    """Without the test hook CPU tensors never run the check (nothing recorded, no cost)."""
    selfcheck._reset()

    def fail(*a, **k):
        raise AssertionError("the self-check ran for CPU tensors")
    monkeypatch.setattr(selfcheck, "_run", fail)
    x, cf, sf = _ddf_args(3)
    ops.ddf(x, cf, sf, 3, 1, backend="fused")
    assert selfcheck.report() == []


def test_switched_off(check_cpu, monkeypatch):
    monkeypatch.setenv("FRFSR_FUSED_SELFCHECK", "0")
    monkeypatch.setattr(fused, "ddf", lambda *a, **k: torch.zeros(1, 5, 7, 6))
    x, cf, sf = _ddf_args(4)
    out = ops.ddf(x, cf, sf, 3, 1, backend="fused")
    assert torch.equal(out, torch.zeros(1, 5, 7, 6))      # trusted as asked
    assert selfcheck.report() == []


def test_frfsr_info_shows_the_outcomes(monkeypatch, capsys):
    """`frfsr info` on a GPU machine runs the self-check for the current device and prints one
    line per operator and dtype (here the GPU and the outcomes are stand-ins)."""
    from frfsr import cli
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(ops, "fused_available", lambda: True)
    outcomes = [selfcheck.Outcome("ddf", "cuda:0", "torch.bfloat16", True, ""),
                selfcheck.Outcome("window_match", "cuda:0", "torch.float32", False, "RuntimeError: injected")]
    seen = []
    monkeypatch.setattr(selfcheck, "check_device", lambda device: seen.append(device) or outcomes)
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert seen == [torch.device("cuda", 0)]
    assert "fused ddf on cuda:0 bfloat16: self-check passed" in out
    assert ("fused window_match on cuda:0 float32: self-check FAILED, the reference op runs instead "
            "(RuntimeError: injected)") in out
    monkeypatch.setenv("FRFSR_FUSED_SELFCHECK", "0")
    assert cli.main(["info"]) == 0
    assert "self-check: off" in capsys.readouterr().out
