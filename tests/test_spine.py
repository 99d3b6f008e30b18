"""The inference spine: from FRFSRPipeline.__call__ to the matching operator in at most six
calls (the ones docs/architecture.md lists), one function named encode_refs, and no
per-call choice kept in model or process state."""
import ast
import sys
import warnings
from pathlib import Path

import pytest
import torch

from frfsr import FRFSR, FRFSRConfig, FRFSRPipeline, ops
from frfsr.checks import FRFSRWarning
from frfsr.pipeline import FRFSRPipeline as _Pipeline

ROOT = Path(__file__).resolve().parents[1]
MAX_CALLS = 6
# the chain docs/architecture.md lists, innermost last (the operator itself is the sixth call)
CHAIN = ["FRFSRPipeline.__call__", "run_tiles", "step", "FRFSR.match", "match_refs"]


@pytest.fixture(scope="module")
def pipe():
    torch.manual_seed(0)
    p = FRFSRPipeline(FRFSR(FRFSRConfig.tiny()).eval().set_ops_backend("reference"))
    p.relevance_threshold = None
    return p


def _calls_to_operator(pipe, match_mode: str) -> list[list[str]]:
    """For every call of frfsr.ops.patch_match (the function that calls the operator
    torch.ops.frfsr.patch_match) during one pipeline call: the functions from
    FRFSRPipeline.__call__ to it."""
    entry, target = _Pipeline.__call__.__code__, ops.patch_match.__code__
    chains = []

    def profile(frame, event, arg):
        if event == "call" and frame.f_code is target:
            chains.append(_chain(frame, entry))

    sys.setprofile(profile)
    try:
        pipe(torch.rand(1, 3, 24, 20), torch.rand(1, 3, 48, 40), tile=None, output_type="pt", progress=False,
             match_mode=match_mode)
    finally:
        sys.setprofile(None)
    return chains


def _chain(frame, entry) -> list[str]:
    names = []
    while frame is not None:
        names.append(frame.f_code.co_qualname)
        if frame.f_code is entry:
            return names[::-1]
        frame = frame.f_back
    return []


def test_pipeline_reaches_the_exact_matching_operator_in_six_calls(pipe):
    chains = _calls_to_operator(pipe, "exact")
    assert chains and all(chains), chains
    for chain in chains:
        # __call__ -> ... -> ops.patch_match: len(chain) - 1 calls, then the operator: one more
        assert len(chain) <= MAX_CALLS, chain
    assert [n.split(".<locals>.")[-1] for n in chains[0][:len(CHAIN)]] == CHAIN


def test_pipeline_reaches_the_fast_matching_operator_in_six_calls(pipe, monkeypatch):
    """The fast mode's windowed search is the operator frfsr::window_match, called by
    fast_patch_match itself: __call__ -> run_tiles -> step -> match -> match_refs ->
    fast_patch_match -> the operator."""
    seen = []
    real = torch.ops.frfsr.window_match

    class Spy:
        def __call__(self, *a, **k):
            seen.append(_chain(sys._getframe(1), _Pipeline.__call__.__code__))
            return real(*a, **k)
    monkeypatch.setattr(torch.ops.frfsr, "window_match", Spy())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FRFSRWarning)
        pipe(torch.rand(1, 3, 24, 20), torch.rand(1, 3, 48, 40), tile=None, output_type="pt", progress=False,
             match_mode="fast")
    assert seen and all(c for c in seen)
    for chain in seen:
        assert len(chain) <= MAX_CALLS, chain     # len(chain) - 1 calls, then the operator


def test_one_function_named_encode_refs():
    found = []
    for path in sorted((ROOT / "frfsr").rglob("*.py")) + sorted((ROOT / "frfsr_nodes").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == "encode_refs":
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert len(found) == 1 and found[0].startswith("frfsr/models/frfsr.py"), found


def test_no_process_wide_backend_or_match_mode():
    for name in ("set_backend", "use_backend", "get_backend", "_forced"):
        assert not hasattr(ops, name), name
    model = FRFSR(FRFSRConfig.tiny())
    assert not hasattr(model, "match_mode") and not hasattr(model, "use_match_mode")


def test_match_leaves_the_relevance_to_its_readers(monkeypatch):
    """FRFSR.match computes no backward match (training reads no relevance); reading
    Correspondence.relevance computes it once."""
    import frfsr.models.frfsr as model_module
    calls = []
    real = model_module.ref_confidence
    monkeypatch.setattr(model_module, "ref_confidence", lambda *a, **k: calls.append(1) or real(*a, **k))
    torch.manual_seed(0)
    model = FRFSR(FRFSRConfig.tiny()).eval()
    with torch.no_grad():
        corr = model.match(torch.rand(1, 3, 16, 16), [torch.rand(1, 3, 40, 40), torch.rand(1, 3, 36, 44)])
        sr = model.restore(torch.rand(1, 3, 16, 16), model.align(corr)).sr
    assert sr.shape == (1, 3, 64, 64) and calls == []
    first = corr.relevance
    assert len(calls) == 2 and torch.equal(corr.relevance, first) and len(calls) == 2     # once per Ref, kept


def test_the_relevance_threshold_belongs_to_the_weights(tmp_path):
    from frfsr.config import DEFAULT_RELEVANCE_THRESHOLD
    from frfsr.hub import BUNDLED_DIR
    for name in ("default", "robust"):
        assert FRFSRConfig.from_json(BUNDLED_DIR.parent / name / "config.json").relevance_threshold == 0.465
    model = FRFSR(FRFSRConfig.tiny(relevance_threshold=0.3))
    assert FRFSRPipeline(model).relevance_threshold == 0.3
    model.save_pretrained(tmp_path / "m")
    assert FRFSRPipeline.from_pretrained(str(tmp_path / "m")).relevance_threshold == 0.3
    text = (tmp_path / "m" / "config.json").read_text()
    assert FRFSRConfig.from_json(text.replace('"relevance_threshold": 0.3', '"relevance_threshold": null')
                                 ).relevance_threshold is None
    old = text.replace('  "relevance_threshold": 0.3,\n', "")                   # weights saved without the field
    assert "relevance_threshold" not in old
    assert FRFSRConfig.from_json(old).relevance_threshold == DEFAULT_RELEVANCE_THRESHOLD
    with pytest.raises(ValueError, match="relevance_threshold must be a number or null"):
        FRFSRConfig.tiny(relevance_threshold="high")
