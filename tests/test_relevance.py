"""The Ref relevance: one function (relevance_of) behind Correspondence.relevance and the
pipeline's warning, and a threshold that tells held-out unrelated Refs from relevant ones
with the bundled weights."""
import json
import warnings
from pathlib import Path

import pytest
import torch

from frfsr import FRFSRPipeline, real_inputs
from frfsr.checks import FRFSRWarning
from frfsr.models.correspondence import RELEVANCE_THRESHOLD, relevance_of
from frfsr.pipeline import RELEVANCE_THRESHOLD as PIPELINE_THRESHOLD
from benchmark_scripts import load_benchmark

ROOT = Path(__file__).resolve().parents[1]




@pytest.fixture(scope="module")
def pipe():
    p = FRFSRPipeline.from_pretrained()
    p.set_progress_bar_config(disable=True)
    return p


def test_relevance_of_is_the_mean_inside_the_border():
    conf = torch.full((2, 1, 6, 7), 9.0)                 # the border must not count
    conf[0, :, 1:-1, 1:-1] = 0.25
    conf[1, :, 1:-1, 1:-1] = torch.linspace(-1, 1, 20).view(4, 5)
    rel = relevance_of(conf.to(torch.bfloat16))
    assert rel.dtype == torch.float32 and rel.shape == (2,)
    assert rel[0].item() == pytest.approx(0.25) and rel[1].item() == pytest.approx(0.0, abs=1e-2)
    assert relevance_of(conf)[1].item() == pytest.approx(0.0, abs=1e-6)
    for bad in (torch.zeros(1, 6, 7), torch.zeros(1, 2, 6, 7), "map"):
        with pytest.raises(ValueError, match=r"\(B, 1, h, w\) confidence map"):
            relevance_of(bad)
    with pytest.raises(ValueError, match="at least 3x3"):
        relevance_of(torch.zeros(1, 1, 2, 9))
    assert PIPELINE_THRESHOLD == RELEVANCE_THRESHOLD      # one threshold, where the function is


def _pairs(patch):
    cases = real_inputs.build_cases(photos=["coffee", "rocket"], kinds=("clean", "unrelated"), patch=patch, crops=1)
    return {c.kind: c for c in cases if c.photo.endswith("coffee")}


def test_pipeline_warning_and_correspondence_agree(pipe):
    # LR 48x48: whole, and in 2x2 tiles of 32 (overlap 16) whose confidence maps are blended
    pairs = _pairs(192)
    seen = {}
    for kind, c in pairs.items():
        lr, ref = c.lr[None], c.ref[None]
        with torch.no_grad():
            corr = pipe.model.match(lr, ref)
        rel = float(corr.relevance[0])
        assert rel == pytest.approx(float(relevance_of(corr.confidence)[0]), abs=1e-6)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = pipe(lr, ref, tile=None, return_details=True)
            tiled = pipe(lr, ref, tile=32, overlap=16, return_details=True)
        assert out.relevance[0] == pytest.approx(rel, abs=1e-5)
        assert float(relevance_of(torch.as_tensor(out.confidence))[0]) == pytest.approx(rel, abs=1e-5)
        assert tiled.relevance[0] == pytest.approx(rel, abs=0.01)       # the blended map of the tiles
        fired = [w for w in caught if issubclass(w.category, FRFSRWarning) and "hardly matches" in str(w.message)]
        assert len(fired) == (rel < RELEVANCE_THRESHOLD) + (tiled.relevance[0] < RELEVANCE_THRESHOLD)
        seen[kind] = rel
    # the pair kinds fall on their sides of the threshold, far enough that the tiles agree
    assert seen["unrelated"] < RELEVANCE_THRESHOLD - 0.05 < RELEVANCE_THRESHOLD + 0.1 < seen["clean"]


def test_warning_separates_heldout_unrelated_from_relevant_refs(tmp_path, capsys):
    # scikit-image's held-out photos (always there), one crop each, every relevant kind, the
    # unrelated kind and every LR against the other photos' Refs: 27 relevant, 21 unrelated pairs
    bench = load_benchmark("eval_relevance")
    out = tmp_path / "rel.json"
    assert bench.main(["--sources", "skimage", "--crops", "1", "--seeds", "0", "--json", str(out)]) == 0
    saved = json.loads(out.read_text())
    s = saved["summary"]
    assert s["threshold"] == RELEVANCE_THRESHOLD
    assert s["n_relevant"] == 27 and s["n_unrelated"] == 21
    assert s["fires_unrelated"] >= 0.9 and s["fires_relevant"] <= 0.05
    assert s["auc"] >= 0.95
    kinds = {r["kind"]: r for r in s["per_kind"]}
    assert set(kinds) == set(real_inputs.KINDS) | {"unrelated (all)"}
    assert kinds["self"]["fires"] == 0 and kinds["self"]["median"] > kinds["clean"]["median"]
    assert "ROC AUC" in capsys.readouterr().out
