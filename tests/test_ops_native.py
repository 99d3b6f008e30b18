"""The native CPU kernel of frfsr::window_match (:mod:`frfsr.ops.native`) against the
brute-force definition and the reference kernel, its dispatch, its build cache and its
fallback when it cannot be built.

Scores are compared with a tolerance; indices where the best is separated from the
runner-up by a margin, and exactly where the candidates are exact copies of each other
(identical arithmetic on identical data ties exactly in both kernels).
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from frfsr import ops
from frfsr.ops import native
from frfsr.ops.custom_ops import kernel_backend
from frfsr.ops.fast_match import candidate_flows, coarse_topk, principal_components
from frfsr.ops.window import window_match as reference_window_match

from test_match_fast import _brute, _check, _feat, _smooth, _square_cands, check_window_match_gradients

CPU = torch.device("cpu")


@pytest.fixture(scope="module", autouse=True)
def _built():
    # This machine is expected to have a C++ compiler (CI installs one): no silent skip.
    assert native.available(), native.unavailable_reason()


@pytest.mark.parametrize("B,C,h,w,H,W,cell,r,M,p", [
    (2, 5, 9, 11, 13, 10, 4, 2, 3, 3),      # odd sizes, cells cut by the border, few channels
    (1, 16, 12, 10, 20, 17, 4, 0, 5, 3),     # radius 0
    (2, 7, 6, 9, 30, 8, 2, 3, 1, 3),         # one flow
    (1, 33, 10, 10, 14, 15, 3, 1, 4, 1),     # patch size 1, a cell of 3
    (1, 6, 13, 12, 16, 18, 1, 2, 6, 5),      # patch size 5, cells of one patch
    (1, 40, 16, 16, 24, 24, 6, 1, 3, 3),     # a query block of 64 pixels (several vector blocks)
])
def test_native_window_match_is_the_brute_force_definition(B, C, h, w, H, W, cell, r, M, p):
    q, k = _feat(B, C, h, w, seed=h + C), _feat(B, C, H, W, seed=W + C)
    k[:, :, 2:4, 3:5] = 0                       # zero pixels: patch norms below the others
    hc, wc = -(-(h - p + 1) // cell), -(-(w - p + 1) // cell)
    flows = torch.randint(-9, 9, (B, hc, wc, M, 2), generator=torch.Generator().manual_seed(M + p))
    flows[0, 0, 0] = torch.tensor([-40, 50])    # a cell whose windows are all outside the key
    score, index = native.window_match(q, k, flows, cell, r, patch_size=p)
    _check(score, index, *_brute(q, k, _square_cands(flows, cell, r, H - p + 1, W - p + 1), p=p))
    s_ref, i_ref = reference_window_match(q, k, flows, cell, r, patch_size=p)
    assert torch.equal(torch.isfinite(score), torch.isfinite(s_ref))
    fin = torch.isfinite(s_ref)
    assert (score[fin] - s_ref[fin]).abs().max() < 1e-5


def test_native_ties_go_to_the_lowest_key_index():
    """A key made of one tile repeated: every query patch has exact ties, which both kernels
    must resolve to the lowest index."""
    tile = _feat(1, 8, 4, 4, seed=3)
    k = tile.repeat(1, 1, 4, 4)                 # period 4 in both directions
    q = _feat(1, 8, 10, 10, seed=4)
    flows = torch.randint(-6, 6, (1, 2, 2, 4, 2), generator=torch.Generator().manual_seed(5))
    s_ref, i_ref = reference_window_match(q, k, flows, 4, 3)
    s, i = native.window_match(q, k, flows, 4, 3)
    assert torch.equal(i, i_ref)
    assert (s - s_ref).abs().max() < 1e-5
    # the winner is never a later copy of an earlier candidate in the same window
    assert (i % 14 < 4).any()


def test_native_skips_repeats_of_the_first_flow_and_matches_padded_cells():
    q, k = _smooth(12, 14, 14, seed=6), _smooth(12, 20, 20, seed=7)
    flows = torch.randint(-4, 4, (1, 3, 3, 5, 2), generator=torch.Generator().manual_seed(8))
    padded = flows.clone()
    padded[0, 0, 0, 1:] = padded[0, 0, 0, :1]    # a cell padded with its first flow
    padded[0, 1, 2, 2] = padded[0, 1, 2, 0]      # a repeat before a flow that differs
    for f in (flows, padded):
        s_ref, i_ref = reference_window_match(q, k, f, 4, 1)
        s, i = native.window_match(q, k, f, 4, 1)
        best, second, _ = _brute(q, k, _square_cands(f, 4, 1, 18, 18))
        sep = best - second > 1e-4
        assert torch.equal(i[sep], i_ref[sep]) and (s - s_ref).abs().max() < 1e-5


def test_native_takes_half_precision_inputs_and_returns_their_dtype():
    q, k = _smooth(16, 12, 12, seed=9), _smooth(16, 16, 16, seed=10)
    flows = candidate_flows(q, k)
    s_ref, _ = reference_window_match(q.bfloat16(), k.bfloat16(), flows, 4, 1)
    s, _ = native.window_match(q.bfloat16(), k.bfloat16(), flows, 4, 1)
    assert s.dtype == torch.bfloat16
    assert (s.float() - s_ref.float()).abs().max() < 1e-2


def test_native_rejects_bad_arguments_like_the_reference():
    q, k = _feat(1, 4, 6, 6, seed=1), _feat(1, 4, 8, 8, seed=2)
    with pytest.raises(ValueError, match="flows must be"):
        native.window_match(q, k, torch.zeros(1, 5, 5, 1, 2, dtype=torch.long), 2, 1)
    with pytest.raises(ValueError, match="integer tensor"):
        native.window_match(q, k, torch.zeros(1, 2, 2, 1, 2), 2, 1)


def _cpu_has(flag: str) -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and flag in line.split() for line in f)
    except OSError:
        return False


@pytest.mark.parametrize("arch,width", [((), 1), (("-mavx2", "-mfma"), 8), (("-mavx512f",), 16)])
def test_every_vector_path_of_the_source_equals_the_reference(tmp_path, arch, width):
    """The source's three paths (plain C++, AVX2 + FMA, AVX-512), whichever one this
    machine's own build takes; a path this CPU cannot run is only compiled."""
    lib = native.load_library(native.compile_library(tmp_path / "k.so", arch))
    assert lib.frfsr_vector_width() == width
    if width == 8 and not (_cpu_has("avx2") and _cpu_has("fma")) or width == 16 and not _cpu_has("avx512f"):
        return
    q, k = _feat(2, 37, 13, 11, seed=30), _feat(2, 37, 21, 19, seed=31)
    flows = torch.randint(-7, 7, (2, 3, 3, 5, 2), generator=torch.Generator().manual_seed(32))
    s_ref, i_ref = reference_window_match(q, k, flows, 4, 2)
    s, i = native.window_match(q, k, flows, 4, 2, library=lib)
    best, second, _ = _brute(q, k, _square_cands(flows, 4, 2, 19, 17))
    sep = best - second > 1e-4
    assert sep.float().mean() > 0.5 and torch.equal(i[sep], i_ref[sep])
    assert (s - s_ref).abs().max() < 1e-5
    qd, kd = F.normalize(torch.randn(1, 19, 70), dim=1), F.normalize(torch.randn(1, 19, 90), dim=1)
    sim = torch.bmm(qd.transpose(1, 2), kd)
    got = sim.gather(2, native.coarse_topk(qd, kd, 6, library=lib))
    assert (got - sim.topk(6, dim=2).values).abs().max() < 1e-5


@pytest.mark.parametrize("B,D,nq,nk,k", [(1, 64, 300, 500, 22), (2, 7, 50, 13, 22), (1, 33, 97, 1000, 5),
                                         (1, 128, 40, 60, 60)])
def test_native_coarse_topk_equals_the_reference(B, D, nq, nk, k):
    qd = F.normalize(torch.randn(B, D, nq, generator=torch.Generator().manual_seed(nq)), dim=1)
    kd = F.normalize(torch.randn(B, D, nk, generator=torch.Generator().manual_seed(nk)), dim=1)
    got = native.coarse_topk(qd, kd, k)
    want = coarse_topk(qd, kd, k, backend="reference")
    assert got.shape == want.shape == (B, nq, min(k, nk))
    sim = torch.bmm(qd.transpose(1, 2).double(), kd.double())
    g, w = sim.gather(2, got), sim.gather(2, want)
    assert (g - w).abs().max() < 1e-5                       # the same values, best first
    assert (g[..., :-1] >= g[..., 1:] - 1e-6).all()
    exact = sim.topk(min(k, nk) + 1, dim=2).values if nk > k else None
    sep = (w[..., -1] - exact[..., -1] > 1e-5) if exact is not None else torch.ones(B, nq, dtype=torch.bool)
    assert sep.float().mean() > 0.9
    assert torch.equal(got.sort(2).values[sep], want.sort(2).values[sep])   # the same set where it is unique


def test_native_coarse_topk_keeps_the_lowest_index_among_ties():
    kd = F.normalize(torch.randn(1, 16, 5, generator=torch.Generator().manual_seed(1)), dim=1).repeat(1, 1, 4)
    qd = F.normalize(torch.randn(1, 16, 9, generator=torch.Generator().manual_seed(2)), dim=1)
    got = native.coarse_topk(qd, kd, 3)                     # every key appears 4 times (index + 5 j)
    best = (qd[0].t() @ kd[0, :, :5]).argmax(1)              # its 4 copies tie: the first three win
    assert torch.equal(got[0], best[:, None] + torch.tensor([0, 5, 10]))


def test_principal_components_keep_dot_products_and_cut_the_channels():
    g = torch.Generator().manual_seed(3)
    basis = torch.linalg.qr(torch.randn(32, 32, generator=g))[0]
    scales = torch.cat([torch.ones(8), torch.full((24,), 1e-3)])
    qd = basis @ (scales[:, None] * torch.randn(32, 200, generator=g))
    kd = basis @ (scales[:, None] * torch.randn(32, 300, generator=g))
    pq, pk = principal_components(qd[None], kd[None], 8)
    assert pq.shape == (1, 8, 200) and pk.shape == (1, 8, 300)
    assert torch.allclose(pq[0].t() @ pk[0], qd.t() @ kd, atol=1e-3)      # 8 axes hold nearly everything
    same = principal_components(qd[None], kd[None], 32)
    assert same[0] is not None and torch.equal(same[0][0], qd)


# ------------------------------------------------------------------ dispatch
def test_auto_dispatches_window_match_to_the_native_kernel_on_cpu(monkeypatch):
    if native.vector_width() == 1:
        pytest.fail("the native build on this machine has no vector instructions; auto would not use it")
    assert kernel_backend("auto", CPU) == "native"
    calls = []
    real = native.window_match
    monkeypatch.setattr(native, "window_match", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    q, k = _smooth(16, 20, 20, seed=11), _smooth(16, 40, 40, seed=12)
    s_auto, i_auto = ops.fast_patch_match(q, k)
    assert calls, "auto did not run the native kernel"
    s_ref, i_ref = ops.fast_patch_match(q, k, backend="reference")
    assert len(calls) == 1
    assert (s_auto - s_ref).abs().max() < 1e-5
    assert (i_auto == i_ref).float().mean() > 0.99
    ops.window_match(q, k, candidate_flows(q, k), 4, 1, backend="native")
    assert len(calls) == 2
    # float64 keeps the reference's float64 arithmetic; the other operators have no native kernel
    ops.window_match(q.double(), k.double(), candidate_flows(q, k), 4, 1, backend="native")
    ops.patch_match(q[..., :8, :8], k[..., :8, :8], backend="native")
    assert len(calls) == 2


def test_native_backend_is_for_cpu_tensors_only():
    with pytest.raises(RuntimeError, match="runs on CPU tensors"):
        kernel_backend("native", torch.device("cuda"))
    with pytest.raises(ValueError, match="accepted: auto, reference, fused, native"):
        kernel_backend("cpp", CPU)


def test_native_gradients_are_the_operators_and_opcheck():
    check_window_match_gradients("native")


# ------------------------------------------------------------------ building
def _run(code: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=600)


_PROBE = """
    import warnings, torch
    from frfsr import ops
    from frfsr.ops import native
    from frfsr.ops.custom_ops import kernel_backend
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kind = kernel_backend("auto", torch.device("cpu"))
    print("KIND", kind)
    print("PATH", native.library_path())
    print("REASON", native.unavailable_reason())
    print("WARNED", any("could not be built" in str(w.message) for w in caught))
    print("WARNINGS", len(caught))
    q = torch.nn.functional.normalize(torch.randn(1, 8, 12, 12), dim=1)
    s, i = ops.fast_patch_match(q, q)
    print("SELF", bool((i.view(-1) == torch.arange(100).view(10, 10)[:, :].reshape(-1)).all()))
    try:
        ops.window_match(q, q, torch.zeros(1, 3, 3, 1, 2, dtype=torch.long), 4, 1, backend="native")
        print("FORCED ok")
    except RuntimeError as e:
        print("FORCED", e)
"""


def _fields(out: str) -> dict:
    return {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in out.splitlines() if " " in line}


def test_the_build_is_cached_and_a_missing_compiler_falls_back_to_the_reference(tmp_path):
    cache = tmp_path / "cache"
    # a fresh cache: built once, then loaded without a compiler
    first = _run(_PROBE, {"FRFSR_CACHE": str(cache)})
    assert first.returncode == 0, first.stderr
    f = _fields(first.stdout)
    assert f["KIND"] == "native" and f["SELF"] == "True" and f["FORCED"] == "ok"
    built = sorted((cache / "native").glob("fast_match-*.so"))
    assert len(built) == 1 and f["PATH"] == str(built[0])
    assert not [p for p in (cache / "native").iterdir() if p.name.startswith(".")]   # no partial files
    mtime = built[0].stat().st_mtime_ns
    cached = _fields(_run(_PROBE, {"FRFSR_CACHE": str(cache), "PATH": str(tmp_path)}).stdout)   # no c++ on PATH
    assert cached["KIND"] == "native" and cached["PATH"] == str(built[0]) and cached["SELF"] == "True"
    assert built[0].stat().st_mtime_ns == mtime
    missing = _fields(_run(_PROBE, {"FRFSR_CACHE": str(tmp_path / "cache1"), "PATH": str(tmp_path)}).stdout)
    assert missing["KIND"] == "reference" and missing["SELF"] == "True" and missing["WARNED"] == "False"
    assert "no C++ compiler found" in missing["REASON"] and "no C++ compiler found" in missing["FORCED"]

    # a compiler that fails: a warning, the reference kernel, and the reason when forced
    bad = tmp_path / "bad-cxx"
    bad.write_text("#!/bin/sh\necho 'bad-cxx: cannot compile' >&2\nexit 1\n")
    bad.chmod(0o755)
    res = _run(_PROBE, {"FRFSR_CACHE": str(tmp_path / "cache2"), "CXX": str(bad)})
    assert res.returncode == 0, res.stderr
    f = _fields(res.stdout)
    assert f["KIND"] == "reference" and f["WARNED"] == "True" and f["SELF"] == "True"
    assert "bad-cxx: cannot compile" in f["REASON"] and "could not be built" in f["FORCED"]
    assert not list((tmp_path / "cache2" / "native").glob("*.so"))

    # switched off
    off = _fields(_run(_PROBE, {"FRFSR_CACHE": str(cache), "FRFSR_NATIVE": "0"}).stdout)
    assert off["KIND"] == "reference" and "FRFSR_NATIVE=0" in off["FORCED"]
