"""The Ref relevance: one function (relevance_of) behind Correspondence.relevance and the
pipeline's warning, and a threshold that tells held-out unrelated Refs from relevant ones
with the bundled weights."""
import json
import warnings
from pathlib import Path

import pytest
import torch

from frfsr import FRFSRPipeline
from frfsr_train import real_inputs
from frfsr.checks import FRFSRWarning
from frfsr.config import DEFAULT_RELEVANCE_THRESHOLD as PIPELINE_THRESHOLD
from frfsr.config import FRFSRConfig
from frfsr.hub import BUNDLED_DIR
from frfsr.models.correspondence import ref_confidence, relevance_of, sample_grid
from frfsr import ops

RELEVANCE_THRESHOLD = FRFSRConfig.from_json(BUNDLED_DIR / "config.json").relevance_threshold   # the weights'
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


def test_relevance_of_averages_forward_and_the_best_refs_backward_score():
    conf = torch.zeros(2, 1, 5, 5)
    conf[:, :, 1:-1, 1:-1] = torch.tensor([0.2, 0.6]).view(2, 1, 1, 1)
    backward = (torch.tensor([[0.4, 0.6], [0.0, 0.2]]), torch.tensor([[0.1, 0.1, 0.1], [0.9, 0.7, 0.8]]))
    rel = relevance_of(conf, backward)
    # sample 0: forward 0.2, Refs 0.5 / 0.1 -> best 0.5; sample 1: forward 0.6, Refs 0.1 / 0.8 -> 0.8
    assert rel.tolist() == pytest.approx([(0.2 + 0.5) / 2, (0.6 + 0.8) / 2])
    assert relevance_of(conf, ()).tolist() == pytest.approx([0.2, 0.6])
    for bad in ((torch.zeros(3, 2),), (torch.zeros(2),), (torch.zeros(2, 0),), ("x",)):
        with pytest.raises(ValueError, match=r"one \(B, N\) tensor per Ref"):
            relevance_of(conf, bad)


def test_sample_grid_is_everything_or_a_centred_regular_grid():
    ys, xs = sample_grid(30, 30, 1024)
    assert ys.tolist() == list(range(30)) and xs.tolist() == list(range(30))
    ys, xs = sample_grid(100, 61, 1024)
    assert len(ys) * len(xs) <= 1024
    step = int(ys[1] - ys[0])
    assert step == 3 and (xs[1:] - xs[:-1]).eq(step).all() and (ys[1:] - ys[:-1]).eq(step).all()
    assert ys[0] == 99 % 3 // 2 and xs[0] == 60 % 3 // 2 and ys[-1] <= 99 and xs[-1] <= 60
    with pytest.raises(ValueError, match="max_samples >= 1"):
        sample_grid(0, 5)


def test_ref_confidence_is_the_backward_exact_match():
    g = torch.Generator().manual_seed(0)
    norm = lambda t: torch.nn.functional.normalize(t, dim=1)  # noqa: E731
    lr, ref = norm(torch.randn(2, 8, 9, 11, generator=g)), norm(torch.randn(1, 8, 13, 10, generator=g))
    full, _ = ops.patch_match(ref.expand(2, -1, -1, -1), lr, patch_size=3)        # every Ref patch's best LR patch
    got = ref_confidence(lr, ref, 3, max_samples=10 ** 6, max_block_elems=500)   # small blocks: several LR row blocks
    assert got.shape == (2, 11 * 8)
    torch.testing.assert_close(got, full.flatten(1), atol=1e-5, rtol=0)
    sub = ref_confidence(lr, ref, 3, max_samples=20)
    ys, xs = sample_grid(11, 8, 20)
    torch.testing.assert_close(sub, full[:, ys][:, :, xs].flatten(1), atol=1e-5, rtol=0)
    # a Ref cut from the first LR finds itself there: its patches score 1 (not in the second LR)
    cut = ref_confidence(lr, lr[:1, :, 2:8, 3:9], 3)
    assert cut[0].min() > 0.999 and cut[1].max() < 0.9


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
        assert len(corr.ref_confidence) == 1 and corr.ref_confidence[0].shape == (1, 23 * 23)   # 46x46 Ref patches, every other one
        assert rel == pytest.approx(float(relevance_of(corr.confidence, corr.ref_confidence)[0]), abs=1e-6)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = pipe(lr, ref, tile=None, return_details=True)
            tiled = pipe(lr, ref, tile=32, overlap=16, return_details=True)
        assert out.relevance[0] == pytest.approx(rel, abs=1e-5)
        assert float(relevance_of(torch.as_tensor(out.confidence), corr.ref_confidence)[0]) == pytest.approx(rel,
                                                                                                           abs=1e-5)
        # tiles: their blended confidence maps, and each Ref patch's best LR patch over the tiles
        assert tiled.relevance[0] == pytest.approx(rel, abs=0.01)
        fired = [w for w in caught if issubclass(w.category, FRFSRWarning) and "hardly matches" in str(w.message)]
        assert len(fired) == (rel < RELEVANCE_THRESHOLD) + (tiled.relevance[0] < RELEVANCE_THRESHOLD)
        seen[kind] = rel
    # the pair kinds fall on their sides of the threshold, far enough that the tiles agree
    assert seen["unrelated"] < RELEVANCE_THRESHOLD - 0.05 < RELEVANCE_THRESHOLD + 0.1 < seen["clean"]


def test_warning_separates_heldout_unrelated_from_relevant_refs(tmp_path, capsys):
    # scikit-image's held-out photos (always there), one crop each, every relevant kind, the
    # unrelated kind and every LR against the other photos' Refs: 30 relevant (3 photos x every kind
    # but self and unrelated), 21 unrelated pairs
    bench = load_benchmark("eval_relevance")
    out = tmp_path / "rel.json"
    assert bench.main(["--sources", "skimage", "--crops", "1", "--seeds", "0", "--json", str(out)]) == 0
    saved = json.loads(out.read_text())
    s = saved["summary"]
    assert s["threshold"] == RELEVANCE_THRESHOLD
    assert s["n_relevant"] == 3 * (len(real_inputs.KINDS) - 2) and s["n_unrelated"] == 21
    assert s["fires_unrelated"] >= 0.9 and s["fires_relevant"] <= 0.05
    assert s["auc"] >= 0.95
    kinds = {r["kind"]: r for r in s["per_kind"]}
    assert set(kinds) == set(real_inputs.KINDS) | {"unrelated (all)"}
    assert kinds["self"]["fires"] == 0 and kinds["self"]["median"] > kinds["clean"]["median"]
    assert "ROC AUC" in capsys.readouterr().out
