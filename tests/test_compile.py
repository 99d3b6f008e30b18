"""torch.compile over the ``frfsr::*`` custom operators.

* The tiny model's forward traces into one graph (no graph break, ``fullgraph=True``) with
  the custom ops in it, and the compiled model gives the eager outputs (reference kernels,
  exact matching: the fast mode sizes its search from the data, which needs a graph break).
  The model is compiled with the ``aot_eager`` backend: dynamo plus AOTAutograd (fake
  kernels, functionalisation, decompositions) without code generation, which on a 2-core
  CPU would take minutes for the model (one Inductor test compiles the operators alone).
* The fused kernels (the Triton interpreter on CPU) compile the same way: the operators are
  opaque to the compiler, so the kernels run as they are inside the compiled graph, and
  the backend recorded in the graph is the one that was active when it was traced.

With ``FRFSR_TEST_CUDA=1`` on a CUDA machine everything runs on the GPU, and the whole
model is also compiled with the fused kernels.
"""
from __future__ import annotations

import os

CUDA_RUN = os.environ.get("FRFSR_TEST_CUDA", "").strip() == "1"
if not CUDA_RUN:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from frfsr import FRFSR, FRFSRConfig, ops  # noqa: E402
from frfsr.models.correspondence import resolve_match_mode  # noqa: E402

CUDA = CUDA_RUN and torch.cuda.is_available()
DEV = torch.device("cuda") if CUDA else torch.device("cpu")
FRFSR_OPS = ("frfsr.patch_match", "frfsr.deform_conv", "frfsr.ddf")


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = FRFSR(FRFSRConfig.tiny()).eval().to(DEV)
    return model


def _images(seed=0, lr_hw=(16, 16), ref_hw=(48, 48)):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, *lr_hw, generator=g).to(DEV), torch.rand(1, 3, *ref_hw, generator=g).to(DEV)


class _Recorder:
    """A torch.compile backend that keeps dynamo's graphs and runs them with aot_eager."""

    def __init__(self):
        self.graphs = []

    def __call__(self, gm, example_inputs):
        self.graphs.append(gm)
        return torch._dynamo.lookup_backend("aot_eager")(gm, example_inputs)

    def targets(self) -> set[str]:
        return {str(n.target) for gm in self.graphs for n in gm.graph.nodes if n.op == "call_function"}


def _check_model_compiles(model, lr, ref, rtol, atol):
    explanation = torch._dynamo.explain(model)(lr, ref)
    assert explanation.graph_break_count == 0, [str(r.reason) for r in explanation.break_reasons]
    assert explanation.graph_count == 1
    torch._dynamo.reset()
    eager = model(lr, ref)
    recorder = _Recorder()
    compiled = torch.compile(model, fullgraph=True, backend=recorder)
    out = compiled(lr, ref)
    assert len(recorder.graphs) == 1
    targets = recorder.targets()
    for op in FRFSR_OPS:
        assert any(op in t for t in targets), (op, sorted(t for t in targets if "frfsr" in t))
    torch.testing.assert_close(out, eager, rtol=rtol, atol=atol)
    # a second image of the same size reuses the graph
    lr2, ref2 = _images(seed=1)
    torch.testing.assert_close(compiled(lr2, ref2), model(lr2, ref2), rtol=rtol, atol=atol)
    assert len(recorder.graphs) == 1
    return compiled


def test_tiny_model_compiles_to_one_graph_reference_kernels(tiny):
    lr, ref = _images()
    lr_tex = torch.zeros(1, 1, 4 * lr.shape[-2], 4 * lr.shape[-1])
    assert resolve_match_mode("auto", lr_tex, [torch.zeros(1, 1, *ref.shape[-2:])]) == "exact"
    tiny.set_ops_backend("reference")
    with torch.no_grad():
        compiled = _check_model_compiles(tiny, lr, ref, rtol=1e-5, atol=1e-5)
        if DEV.type == "cpu":       # on CUDA a failed device assertion would end the CUDA context
            # the NaN/Inf input check is an assertion inside the graph (eager: a ValueError)
            lr[0, 0, 3, 4] = float("nan")
            with pytest.raises(RuntimeError, match="lr contains NaN or Inf"):
                compiled(lr, ref)
            with pytest.raises(ValueError, match="lr contains NaN or Inf"):
                tiny(lr, ref)


@pytest.mark.skipif(not CUDA, reason=(
    "the whole model on the fused path runs only on CUDA (FRFSR_TEST_CUDA=1): under the Triton "
    "interpreter one tiny-model forward takes about two minutes (the deformable convs), so on CPU "
    "test_fused_kernels_compile_and_follow_the_backend compiles every operator on the fused path"))
def test_tiny_model_compiles_to_one_graph_fused_kernels(tiny):
    lr, ref = _images()
    tiny.set_ops_backend("fused")
    with torch.no_grad():
        _check_model_compiles(tiny, lr, ref, rtol=2e-3, atol=2e-3)


# --------------------------------------------------------------------------------------
# every operator, forward and backward, both backends
# --------------------------------------------------------------------------------------

class _EveryOp(torch.nn.Module):
    """Each operator once: exact and windowed matching, a deformable conv whose offsets
    depend on the match, a DDF on its output."""

    backend = None                      # the ops backend every call passes

    def forward(self, q, k, flows, x, off, mask, weight, bias, cf, sf):
        b = self.backend
        score, index = ops.patch_match(q, k, 3, backend=b)
        wscore, windex = ops.window_match(q, k, flows, 2, 1, backend=b)
        y = ops.deform_conv(x, off + score.mean() + wscore.mean(), torch.sigmoid(mask), weight, bias, backend=b)
        z = ops.ddf(F.relu(y), cf, sf, 3, 1, backend=b)
        return score, index, wscore, windex, z


def _every_op_inputs(requires_grad=False):
    g = torch.Generator().manual_seed(3)

    def t(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(DEV).requires_grad_(requires_grad)

    q = F.normalize(torch.randn(1, 8, 6, 7, generator=g), dim=1).to(DEV).requires_grad_(requires_grad)
    k = F.normalize(torch.randn(1, 8, 9, 8, generator=g), dim=1).to(DEV).requires_grad_(requires_grad)
    flows = torch.zeros(1, 2, 3, 1, 2, dtype=torch.long, device=DEV)
    return (q, k, flows, t(1, 4, 5, 6), t(1, 18, 5, 6, scale=1.5), t(1, 9, 5, 6), t(4, 4, 3, 3, scale=0.5),
            t(4), t(1, 4, 9), t(1, 9, 5, 6))


def _loss(outs):
    score, _, wscore, _, z = outs
    return score.sum() + wscore.sum() + z.square().sum()


def _fused_or_skip():
    pytest.importorskip("triton")
    import importlib
    kern = importlib.import_module("frfsr.ops.triton.ddf")._ddf_fwd_kernel
    if type(kern).__name__ != "InterpretedFunction" and not CUDA:
        pytest.skip("Triton was imported before TRITON_INTERPRET=1 was set")
    return importlib.import_module("frfsr.ops.triton")


class _Spy:
    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.fn(*args, **kwargs)


def test_every_op_compiles_with_inductor_reference_kernels():
    model = _EveryOp()
    inputs = _every_op_inputs()
    model.backend = "reference"
    with torch.no_grad():
        eager = model(*inputs)
        out = torch.compile(model, fullgraph=True)(*inputs)
    for a, e in zip(out, eager):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["reference", "fused"])
def test_every_op_compiles_forward_and_backward(backend):
    """A compiled training step (forward and the registered backwards, traced by AOTAutograd)
    gives the eager outputs and gradients."""
    if backend == "fused":
        _fused_or_skip()
    model = _EveryOp()
    leaves = _every_op_inputs(requires_grad=True)
    diff = [t for t in leaves if t.requires_grad]
    model.backend = backend
    eager = model(*leaves)
    eager_grads = torch.autograd.grad(_loss(eager), diff)
    explanation = torch._dynamo.explain(model)(*leaves)
    assert explanation.graph_break_count == 0, [str(r.reason) for r in explanation.break_reasons]
    torch._dynamo.reset()
    out = torch.compile(model, fullgraph=True, backend="aot_eager")(*leaves)
    grads = torch.autograd.grad(_loss(out), diff)
    tol = dict(rtol=1e-5, atol=1e-5) if DEV.type == "cpu" else dict(rtol=2e-3, atol=2e-3)
    for a, e in zip(out, eager):
        torch.testing.assert_close(a, e, **tol)
    for a, e in zip(grads, eager_grads):
        torch.testing.assert_close(a, e, **tol)


def test_fused_kernels_compile_and_follow_the_backend(monkeypatch):
    """The compiled graph runs the fused kernels when it was traced under the fused backend,
    and a change of backend retraces instead of reusing that graph."""
    fused = _fused_or_skip()
    spies = {name: _Spy(getattr(fused, name)) for name in ("patch_match", "window_match", "deform_conv", "ddf")}
    for name, spy in spies.items():
        monkeypatch.setattr(fused, name, spy)
    model = _EveryOp()
    inputs = _every_op_inputs()
    recorder = _Recorder()
    compiled = torch.compile(model, fullgraph=True, backend=recorder)
    with torch.no_grad():
        model.backend = "fused"
        eager = model(*inputs)
        assert all(s.calls == 1 for s in spies.values())
        out = compiled(*inputs)
        assert all(s.calls == 2 for s in spies.values()), {n: s.calls for n, s in spies.items()}
        assert len(recorder.graphs) == 1
        for a, e in zip(out, eager):
            torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)
        model.backend = "reference"
        ref_eager = model(*inputs)
        ref_out = compiled(*inputs)
        assert all(s.calls == 2 for s in spies.values())      # the reference graph calls no kernel
        assert len(recorder.graphs) == 2                      # retraced for the other backend
        for a, e in zip(ref_out, ref_eager):
            torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)
