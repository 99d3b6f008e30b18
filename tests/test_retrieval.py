"""Reference retrieval (frfsr.retrieval): descriptor ranking, the descriptor cache, selection
with re-ranking, the JSON sidecar, the ComfyUI node, and the held-out hit rate."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from frfsr import FRFSR, FRFSRConfig
from frfsr import retrieval
from frfsr.retrieval import RefIndex, Selection, select_references, sidecar_path, write_selection_json
from benchmark_scripts import load_benchmark

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    return FRFSR.from_pretrained("frfsr-default").eval()


def _photo(name: str) -> torch.Tensor:
    from frfsr_train.data.photos import load_photo
    return torch.from_numpy(np.array(load_photo(name))).permute(2, 0, 1).float().div(255)


def _views():
    """An LR cut from coffee, views of the same place (shifted, zoomed out, rotated) and
    crops of unrelated photos, each (3, H, W)."""
    coffee = _photo("coffee")
    hr = coffee[:, 100:228, 200:328]
    lr = F.interpolate(hr[None], scale_factor=0.25, mode="bicubic", antialias=True, align_corners=False)[0].clamp(0, 1)
    shifted = coffee[:, 132:260, 232:360]
    wide = F.interpolate(coffee[None, :, 68:324, 168:424], scale_factor=0.5, mode="bicubic", antialias=True,
                         align_corners=False)[0].clamp(0, 1)
    t = math.radians(15)
    theta = torch.tensor([[math.cos(t), -math.sin(t), 0.0], [math.sin(t), math.cos(t), 0.0]])[None]
    field = coffee[None, :, 84:244, 184:344]
    rotated = F.grid_sample(field, F.affine_grid(theta, list(field.shape), align_corners=False),
                            align_corners=False, padding_mode="reflection")[0, :, 16:144, 16:144]
    others = [_photo(n)[:, 40:168, 40:168] for n in ("astronaut", "camera", "brick", "grass", "coins", "rocket")]
    return lr, {"shifted": shifted, "wide": wide, "rotated": rotated}, others


def test_views_of_the_same_scene_rank_above_unrelated_images(model):
    lr, views, others = _views()
    index = RefIndex(model, [*others, *views.values()], cache_dir=None)
    ranked = [i for i, _ in index.rank(lr)]
    relevant = set(range(len(others), len(others) + len(views)))
    assert set(ranked[:len(views)]) == relevant, [index.names[i] for i in ranked]
    scores = dict(index.rank(lr))
    assert min(scores[i] for i in relevant) > max(scores[i] for i in range(len(others)))


def test_select_reranks_by_the_match_relevance(model):
    lr, views, others = _views()
    cands = [*others, views["shifted"], views["rotated"]]
    index = RefIndex(model, cands, cache_dir=None)
    chosen = index.select(lr, k=3, rerank=4)
    assert len(chosen) == 3 and all(isinstance(s, Selection) for s in chosen)
    assert {chosen[0].index, chosen[1].index} == {len(others), len(others) + 1}
    for s in chosen:                                   # the relevance is the model's, for that Ref alone
        with torch.no_grad():
            direct = float(model.match(lr[None], cands[s.index][None]).relevance[0])
        assert s.relevance == pytest.approx(direct, abs=1e-5)
    keys = [s.relevance + s.score for s in chosen]
    assert keys == sorted(keys, reverse=True)
    # no re-ranking: the descriptor order, no relevance
    plain = index.select(lr, k=2, rerank=0)
    assert [s.index for s in plain] == [i for i, _ in index.rank(lr)[:2]] and plain[0].relevance is None
    # k beyond the candidates gives them all; bad arguments are refused with what is accepted
    assert len(index.select(lr, k=50, rerank=0)) == len(cands)
    with pytest.raises(ValueError, match="k must be"):
        index.select(lr, k=0)
    with pytest.raises(ValueError, match="rerank must be"):
        index.select(lr, k=1, rerank=-1)


def test_subset_shares_descriptors(model):
    lr, views, others = _views()
    index = RefIndex(model, [*others, views["shifted"]], cache_dir=None)
    sub = index.subset([len(others), 0])
    assert sub.names == [f"candidate[{len(others)}]", "candidate[0]"] and sub.descriptors[1] is index.descriptors[0]
    assert sub.rank(lr)[0][0] == 0
    with pytest.raises(ValueError, match="subset indices"):
        index.subset([99])


def _save(t: torch.Tensor, path: Path) -> Path:
    Image.fromarray(t.mul(255).round().byte().permute(1, 2, 0).numpy()).save(path)
    return path


def test_descriptor_cache_hits_and_changed_files(model, tmp_path, monkeypatch):
    lr, views, others = _views()
    folder = tmp_path / "refs"
    folder.mkdir()
    files = [_save(t, folder / f"{i:02d}.png") for i, t in enumerate([*others[:3], views["shifted"]])]
    (folder / "notes.txt").write_text("not an image")
    cache = tmp_path / "cache"
    calls = []
    real = retrieval.ref_descriptor
    monkeypatch.setattr(retrieval, "ref_descriptor", lambda *a, **k: calls.append(1) or real(*a, **k))

    first = RefIndex.from_dir(model, folder, cache_dir=cache)
    assert (first.computed, first.cache_hits, len(calls)) == (4, 0, 4)
    assert first.names == [str(f) for f in files]
    stored = sorted(cache.rglob("*.safetensors"))
    assert len(stored) == 4 and not list(cache.rglob("*.part"))
    assert {p.stem for p in stored} == {retrieval.sha256(f) for f in files}
    assert all(p.parent.name == first.identity[:16] for p in stored)

    second = RefIndex.from_dir(model, folder, cache_dir=cache)              # nothing described again
    assert (second.computed, second.cache_hits, len(calls)) == (0, 4, 4)
    for a, b in zip(first.descriptors, second.descriptors):
        assert torch.equal(a, b)
    assert second.rank(lr)[0][0] == 3

    _save(others[4], files[1])                                             # a changed file is described again
    third = RefIndex.from_dir(model, folder, cache_dir=cache)
    assert (third.computed, third.cache_hits, len(calls)) == (1, 3, 5)
    assert not torch.equal(third.descriptors[1], first.descriptors[1])

    other = FRFSR(FRFSRConfig.tiny()).eval()                              # other weights: another key
    assert retrieval.model_identity(other) != first.identity
    assert RefIndex(other, files[:1], cache_dir=cache).computed == 1

    stored[0].write_bytes(b"broken")                                       # a broken cache file is replaced
    fourth = RefIndex.from_dir(model, folder, cache_dir=cache)
    assert fourth.computed == 1


def test_default_cache_folder_follows_the_photo_cache(monkeypatch, tmp_path):
    from frfsr_train.data.photos import cache_dir
    monkeypatch.setenv("FRFSR_CACHE", str(tmp_path / "c"))
    assert retrieval.descriptor_cache_dir() == tmp_path / "c" / "descriptors"
    assert cache_dir() == tmp_path / "c" / "photos"
    monkeypatch.delenv("FRFSR_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert retrieval.descriptor_cache_dir() == tmp_path / "x" / "frfsr" / "descriptors"


def test_bad_candidates_are_refused(model, tmp_path):
    with pytest.raises(ValueError, match="no candidate"):
        RefIndex(model, [], cache_dir=None)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        RefIndex(model, [tmp_path / "missing.png"], cache_dir=None)
    with pytest.raises(ValueError, match="no image files"):
        RefIndex.from_dir(model, tmp_path)
    with pytest.raises(ValueError, match="one RGB image"):
        RefIndex(model, [torch.rand(2, 3, 32, 32)], cache_dir=None)
    with pytest.raises(ValueError, match="names for"):
        RefIndex(model, [torch.rand(3, 32, 32)], names=["a", "b"], cache_dir=None)


def test_select_references_and_the_json_sidecar(model, tmp_path):
    lr, views, others = _views()
    folder = tmp_path / "refs"
    folder.mkdir()
    for i, t in enumerate([*others[:4], views["wide"]]):
        _save(t, folder / f"ref{i}.png")
    refs, chosen = select_references(model, lr, folder, k=2, rerank=3, cache_dir=tmp_path / "cache")
    assert len(refs) == 2 and refs[0].shape[:2] == (1, 3)
    assert chosen[0].name == str(folder / "ref4.png")
    out = sidecar_path(tmp_path / "out" / "sr.png")
    assert out.name == "sr.png.refs.json"
    written = write_selection_json(out, chosen, lr="lr.png")
    assert written == out and not list(out.parent.glob("*.part"))
    data = json.loads(out.read_text())
    assert data["lr"] == "lr.png"
    assert [r["rank"] for r in data["refs"]] == [1, 2]
    assert data["refs"][0] == {"rank": 1, "name": str(folder / "ref4.png"), "index": 4,
                               "score": pytest.approx(chosen[0].score), "relevance": pytest.approx(chosen[0].relevance)}


# ---------------------------------------------------------------------- the ComfyUI node
def test_select_references_node():
    from test_comfy_nodes import get_pack, pack_modules
    pack = get_pack()
    nodes, _ = pack_modules(pack)
    handle = nodes.LoadFRFSR().load(nodes.BUNDLED, "cpu", "float32")[0]

    lr, views, others = _views()
    cands = torch.stack([others[0], views["shifted"], others[1], others[2], views["rotated"]]).permute(0, 2, 3, 1)
    node = pack.NODE_CLASS_MAPPINGS["FRFSRSelectReferences"]()
    images, report = node.select(handle, lr[None].permute(0, 2, 3, 1), cands, 2, 3)
    data = json.loads(report)
    picked = [s["index"] for s in data["selected"]]
    assert set(picked) == {1, 4} and data["candidates"] == 5 and data["k"] == 2
    assert images.shape == (2, 128, 128, 3)
    torch.testing.assert_close(images, cands[picked])
    assert all(s["relevance"] is not None for s in data["selected"])
    # rerank 0: descriptor order only, no relevance
    _, report = node.select(handle, lr[None].permute(0, 2, 3, 1), cands, 1, 0)
    assert json.loads(report)["selected"][0]["relevance"] is None


# ---------------------------------------------------------------------- held-out hit rate
def test_relevant_ref_is_in_the_top_3_on_held_out_photos(model, monkeypatch):
    """benchmarks/bench_retrieval.py on scikit-image's held-out photos: 15 LRs, each with its
    relevant Ref (same zoom, half / twice the zoom, rotated 15 / 30 degrees) among 61
    candidates (50 distractors from the training photos)."""
    bench = load_benchmark("bench_retrieval")
    queries, cands, names = bench.build(["skimage"], crops=5, patch=128, candidates=61)
    result = bench.evaluate(model, queries, cands, names, rerank=3)
    assert result["n_candidates"] == 61 and len(result["per"]) == 15
    overall = bench.rows(result)[-1]
    assert overall["kind"] == "all"
    assert overall["top3"] >= 0.95, result["per"]
    assert overall["top1"] >= 0.6, result["per"]
    table = bench.markdown(result, "frfsr-default").splitlines()
    assert len(table) == 2 + len(bench.REF_KINDS) + 1 and table[-1].startswith("| frfsr-default | all | 15 | 61 |")


def test_pil_and_numpy_images_are_accepted(model):
    lr, views, others = _views()
    as_pil = [Image.fromarray(t.mul(255).round().byte().permute(1, 2, 0).numpy())
              for t in (others[0], views["shifted"])]
    index = RefIndex(model, as_pil, cache_dir=None)
    lr_np = lr.mul(255).round().byte().permute(1, 2, 0).numpy()
    assert index.rank(lr_np)[0][0] == 1
    assert index.image(1).shape == (1, 3, 128, 128)
    half = FRFSR.from_pretrained("frfsr-default", torch_dtype=torch.bfloat16)
    assert retrieval.model_identity(half) != retrieval.model_identity(model)      # another precision, another key
