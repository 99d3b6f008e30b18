"""Real-input kinds on held-out photos (frfsr_train.real_inputs): the degraded LRs and the Refs at
other zooms / angles are what they claim, the evaluation and its command lines run."""
import json

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("skimage")

from frfsr_train import real_inputs as ri  # noqa: E402
from frfsr.metrics import psnr  # noqa: E402

PATCH = 64


@pytest.fixture(scope="module")
def cases():
    return ri.build_cases(photos=["coffee", "rocket"], patch=PATCH, crops=1)


def by(cases, photo, kind):
    (c,) = [c for c in cases if c.photo == photo and c.kind == kind]
    return c


def test_every_kind_has_the_expected_shapes(cases):
    assert {c.kind for c in cases} == set(ri.KINDS) and len(cases) == 2 * len(ri.KINDS)
    for c in cases:
        assert c.hr.shape == (3, PATCH, PATCH) and c.lr.shape == (3, PATCH // 4, PATCH // 4)
        assert c.ref.dtype == torch.float32 and 0 <= float(c.ref.min()) and float(c.ref.max()) <= 1
        if c.kind == "ref_detail2":
            assert c.ref.shape == (3, 2 * PATCH, 2 * PATCH)
        elif c.kind != "ref_zoom0.5":
            assert c.ref.shape == (3, PATCH, PATCH), c.kind
    # every photo gives the same HR crop to all kinds; the clean LR is shared by the Ref kinds
    for photo in ("coffee", "rocket"):
        clean = by(cases, photo, "clean")
        for kind in ("ref_zoom2", "ref_rot30", "self", "unrelated"):
            assert torch.equal(by(cases, photo, kind).lr, clean.lr)
        assert by(cases, photo, "unrelated").ref_photo != photo


def test_degraded_lrs_differ_from_the_clean_one(cases):
    clean = by(cases, "coffee", "clean").lr
    errors = {k: psnr(by(cases, "coffee", k).lr, clean) for k in ("jpeg50", "jpeg70", "jpeg90", "blur_noise")}
    assert all(v < 60 for v in errors.values()), errors                     # none is the clean LR
    assert errors["jpeg50"] < errors["jpeg70"] < errors["jpeg90"], errors     # lower quality, larger error
    # blur + noise: the noise is about NOISE_SIGMA on top of the blurred LR (rounding adds a little)
    hr8 = (by(cases, "coffee", "clean").hr * 255).round().to(torch.uint8)
    noiseless = ri.blur_noise(hr8, noise=0.0)
    resid = by(cases, "coffee", "blur_noise").lr - noiseless
    assert 0.7 * ri.NOISE_SIGMA < float(resid.std()) < 1.3 * ri.NOISE_SIGMA
    # the same seed gives the same LR
    assert torch.equal(ri.degrade_lr(hr8, "blur_noise", 3), ri.degrade_lr(hr8, "blur_noise", 3))
    with pytest.raises(ValueError, match="quality"):
        ri.jpeg(clean, 0)


def test_zoomed_and_self_refs(cases):
    scene = ri.load_scene("coffee")
    (y, x), = ri.crop_positions(scene, PATCH, 1)
    # twice the zoom: PATCH pixels of the full-resolution photo = half the HR's field of view
    z2 = by(cases, "coffee", "ref_zoom2").ref
    full = scene.photo.float().div(255)
    hits = [(Y, X) for Y in range(full.shape[1] - PATCH + 1) for X in range(full.shape[2] - PATCH + 1)
            if abs(Y - 2 * (y + PATCH // 2 - PATCH // 4 + PATCH // 8)) <= 1 and
            abs(X - 2 * (x + PATCH // 2 - PATCH // 4 + PATCH // 8)) <= 1 and
            torch.equal(full[:, Y:Y + PATCH, X:X + PATCH], z2)]
    assert hits, "the 2x-zoom Ref is a crop of the full-resolution photo around the HR's centre"
    # twice the detail over the clean Ref's field: the full-resolution photo's pixels there
    d2 = by(cases, "coffee", "ref_detail2").ref
    clean_ref = by(cases, "coffee", "clean").ref
    assert d2.shape[-1] == 2 * clean_ref.shape[-1]
    assert psnr(F.avg_pool2d(d2[None], 2)[0], clean_ref) > 30                 # the same view, at half the pixels
    assert psnr(F.interpolate(clean_ref[None], scale_factor=2, mode="bicubic")[0].clamp(0, 1), d2) < 45  # real detail
    # half the zoom: twice the field of view in PATCH pixels
    assert by(cases, "coffee", "ref_zoom0.5").ref.shape == (3, PATCH, PATCH)
    # where the photo is too small for the field, the Ref keeps the zoom and shrinks: chelsea's
    # scene is 150x225, so a 2 * 96 field becomes 150 x 192 scene pixels = 75 x 96 Ref pixels
    chelsea = ri.load_scene("chelsea")
    assert tuple(chelsea.scene.shape[-2:]) == (150, 226)
    assert ri.make_ref(chelsea, 0, 0, 96, "ref_zoom0.5").shape == (3, 75, 96)
    # no Ref: the bicubic-upsampled LR
    from frfsr_train.data.degrade import bicubic_upsample
    c = by(cases, "coffee", "self")
    assert torch.allclose(c.ref, bicubic_upsample(c.lr, 4).clamp(0, 1), atol=1e-6)
    # the rotated Ref differs from the unrotated one
    assert psnr(by(cases, "coffee", "ref_rot30").ref, by(cases, "coffee", "clean").ref) < 30


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="unknown kind.*accepted"):
        ri.build_cases(photos=["coffee"], kinds=["jpeg10"])
    with pytest.raises(ValueError, match="two photos"):
        ri.build_cases(photos=["coffee"], kinds=["unrelated"])
    with pytest.raises(ValueError, match="multiple of 4"):
        ri.build_cases(photos=["coffee"], kinds=["clean"], patch=66)


def test_footprints_are_the_part_of_the_hr_each_ref_shows(cases):
    share = {k: float(by(cases, "coffee", k).footprint.float().mean()) for k in
             ("clean", "ref_zoom2", "ref_detail2", "ref_zoom0.5", "ref_rot30", "self")}
    assert share["clean"] == pytest.approx(9 / 16, abs=0.03)                # moved by a quarter of its side
    assert share["ref_zoom2"] == pytest.approx(1 / 4, abs=0.03)             # half the field
    assert share["ref_detail2"] == pytest.approx(share["clean"], abs=0.02)  # the same field as the clean Ref
    assert share["ref_zoom0.5"] == 1.0 and share["self"] == 1.0             # twice the field; the LR itself
    assert 0.3 < share["ref_rot30"] < 0.9
    assert by(cases, "coffee", "unrelated").footprint is None
    # the clean Ref is a crop of the scene: the HR block inside the footprint is in the Ref, pixel for pixel
    c = by(cases, "coffee", "clean")
    rows, cols = c.footprint.any(1).nonzero()[:, 0], c.footprint.any(0).nonzero()[:, 0]
    assert int(c.footprint.sum()) == len(rows) * len(cols)                  # a rectangle
    block = c.hr[:, int(rows[0]):int(rows[-1]) + 1, int(cols[0]):int(cols[-1]) + 1]
    bh, bw = block.shape[-2:]
    assert any(torch.equal(c.ref[:, i:i + bh, j:j + bw], block)
               for i in range(c.ref.shape[1] - bh + 1) for j in range(c.ref.shape[2] - bw + 1))
    # the off-grid Ref is the clean one moved 2 HR pixels further (half an LR pixel), same share
    off = by(cases, "coffee", "ref_offgrid")
    assert float(off.footprint.float().mean()) == pytest.approx(share["clean"], abs=0.05)
    assert torch.equal(off.ref[:, :-2, :-2], c.ref[:, 2:, 2:]) and torch.equal(off.lr, c.lr)
    # the rotated Ref's footprint is a tilted square: it fills less than its bounding box
    f = by(cases, "coffee", "ref_rot30").footprint
    assert int(f.sum()) < 0.95 * int(f.any(1).sum()) * int(f.any(0).sum())


@pytest.fixture(scope="module")
def model():
    from frfsr import FRFSR
    return FRFSR.from_pretrained().eval()


def test_evaluate_rows_and_table(model, cases):
    sub = [c for c in cases if c.kind in ("clean", "self", "jpeg50")]
    res = ri.evaluate({"default": model}, sub)
    rows = {r["kind"]: r for r in res["rows"]}
    assert set(rows) == {"clean", "self", "jpeg50"} and all(r["n"] == 2 for r in rows.values())
    assert rows["self"]["ref_gain"] == 0 and rows["self"]["psnr"] == rows["self"]["alone_psnr"]
    assert rows["clean"]["alone_psnr"] == rows["self"]["psnr"]               # the same LR, the same model alone
    assert rows["jpeg50"]["bicubic_psnr"] < rows["clean"]["bicubic_psnr"]
    for r in rows.values():
        assert r["gain"] == pytest.approx(r["psnr"] - r["bicubic_psnr"])
    assert len(res["cases"]) == len(sub)
    assert rows["self"]["field_ref_gain"] == 0 and rows["clean"]["field"] == pytest.approx(9 / 16, abs=0.03)
    clean = [r for r in res["cases"] if r["kind"] == "clean"]
    assert all(isinstance(r["field_ref_gain"], float) for r in clean)
    assert rows["clean"]["field_ref_gain"] == pytest.approx(sum(r["field_ref_gain"] for r in clean) / 2)
    table = ri.markdown(res)
    assert table.count("\n") == 1 + 3 and "`jpeg50`" in table and "Ref gain in its field" in table


def test_cli_heldout_layout(tmp_path, capsys):
    from benchmark_scripts import load_script
    main = load_script("train", "evaluate").main           # python train/evaluate.py
    out = tmp_path / "res.json"
    code = main(["--layout", "heldout", "--sources", "skimage", "--kinds", "clean", "self",
                 "--patch", "64", "--crops", "1", "--device", "cpu", "--json", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| `clean` |" in printed and "| `self` |" in printed
    saved = json.loads(out.read_text())
    assert [r["kind"] for r in saved["rows"]] == ["clean", "self"]
    assert saved["config"]["photos"] == sorted(f"skimage:{n}" for n in ("coffee", "rocket", "chelsea"))
    assert main(["--layout", "cufed5", "--data", str(tmp_path)]) == 2
    assert "--layout cufed5 needs --model, --out" in capsys.readouterr().err


def test_missing_source_stops_with_the_fetch_command(tmp_path, monkeypatch):
    from frfsr_train.data import photos
    from frfsr_train.data.photos import PhotoNotFetched
    monkeypatch.setenv("FRFSR_CACHE", str(tmp_path))
    monkeypatch.setattr(photos, "_photo_cache", {})
    with pytest.raises(PhotoNotFetched, match="fetch_photos.py --source wallpapers"):
        ri.build_cases(sources=["wallpapers"], kinds=["clean"], patch=64, crops=1)
