"""Ref/LR view pairs from skimage photos: determinism, exact correspondence, unrelated Refs,
held-out photos kept out of training."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("skimage")

from frfsr_train.data import bicubic_downsample  # noqa: E402
from frfsr_train.data.views import (HELDOUT_KINDS, HELDOUT_PHOTOS, TRAIN_PHOTOS, ViewPairDataset,  # noqa: E402
                              heldout_pairs, load_skimage_photos)


@pytest.fixture(scope="module")
def photos():
    return load_skimage_photos()


@pytest.fixture(scope="module")
def train_photos(photos):
    return {k: photos[k] for k in ("astronaut", "brick", "camera", "immunohistochemistry", "retina")}


def _bilinear(img, x, y):
    """Sample (C, H, W) at pixel coordinates x, y (same shape), align_corners convention."""
    h, w = img.shape[-2:]
    grid = torch.stack([2 * x / (w - 1) - 1, 2 * y / (h - 1) - 1], -1)[None].float()
    return F.grid_sample(img[None], grid, mode="bilinear", align_corners=True)[0]


def test_photos_load_offline_as_rgb_uint8(photos):
    assert set(photos) == set(TRAIN_PHOTOS) | set(HELDOUT_PHOTOS)
    for name, arr in photos.items():
        assert arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3, name
        assert min(arr.shape[:2]) >= 160, name
    with pytest.raises(ValueError, match="not available"):
        load_skimage_photos(["no_such_photo"])


def test_heldout_photos_never_in_training(photos):
    assert not set(TRAIN_PHOTOS) & set(HELDOUT_PHOTOS)
    assert "cat" not in TRAIN_PHOTOS                          # skimage's cat is chelsea
    held = [photos[k] for k in HELDOUT_PHOTOS]
    for name in TRAIN_PHOTOS:                                  # no held-out image under another name
        assert not any(a.shape == photos[name].shape and np.array_equal(a, photos[name]) for a in held), name
    ds = ViewPairDataset({k: photos[k] for k in TRAIN_PHOTOS}, patch=64, length=40, p_unrelated=0.5, seed=1)
    for i in range(len(ds)):
        item = ds[i]
        assert item["photo"] in TRAIN_PHOTOS and item["ref_photo"] in TRAIN_PHOTOS
    for kind in HELDOUT_KINDS:
        for item in heldout_pairs(kind, patch=48, n=4):
            assert item["photo"] in HELDOUT_PHOTOS and item["ref_photo"] in HELDOUT_PHOTOS


def test_views_deterministic_with_seed(train_photos):
    kw = dict(patch=64, ref_patch=80, length=6, p_shuffle=0.5, p_unrelated=0.3)
    a, b = ViewPairDataset(train_photos, seed=3, **kw), ViewPairDataset(train_photos, seed=3, **kw)
    c = ViewPairDataset(train_photos, seed=4, **kw)
    for i in range(6):
        x, y = a[i], b[i]
        for key in ("hr", "lr", "ref", "ref_coords", "ref_affine"):
            assert torch.equal(x[key].nan_to_num(-7), y[key].nan_to_num(-7)), key
    assert not torch.equal(a[0]["hr"], c[0]["hr"])
    item = a[0]
    assert item["hr"].shape == (3, 64, 64) and item["lr"].shape == (3, 16, 16) and item["ref"].shape == (3, 80, 80)
    assert item["ref_coords"].shape == (2, 64, 64) and item["ref_valid"].shape == (1, 64, 64)
    hr_u8 = (item["hr"] * 255).round().to(torch.uint8)
    assert torch.equal(item["lr"], bicubic_downsample(hr_u8, 4).float() / 255)


@pytest.mark.parametrize("seed", [0, 1])
def test_ref_is_the_hr_warped_by_the_known_transform(train_photos, seed):
    """Without colour change, the Ref equals the HR bilinearly sampled at the inverse of
    ``ref_affine`` wherever that sample lies inside the HR (up to 8-bit rounding), and
    ``ref_coords`` is ``ref_affine`` applied to the HR pixel grid."""
    ds = ViewPairDataset(train_photos, patch=64, ref_patch=72, length=10, color=False, p_unrelated=0.0, seed=seed)
    for i in range(len(ds)):
        item = ds[i]
        m = item["ref_affine"].double()
        p, r = 64, 72
        # Ref pixel v -> HR pixel u = M^-1 (v - t)
        gy, gx = torch.meshgrid(torch.arange(r, dtype=torch.float64), torch.arange(r, dtype=torch.float64), indexing="ij")
        inv = torch.linalg.inv(m[:, :2])
        vx, vy = gx - m[0, 2], gy - m[1, 2]
        ux, uy = inv[0, 0] * vx + inv[0, 1] * vy, inv[1, 0] * vx + inv[1, 1] * vy
        inside = (ux >= 0) & (ux <= p - 1) & (uy >= 0) & (uy <= p - 1)
        assert inside.float().mean() > 0.3
        warped = _bilinear(item["hr"], ux, uy)
        err = (warped - item["ref"]).abs()[:, inside]
        assert err.max() <= 1.0 / 255 + 1e-4, (i, float(err.max()))
        # ref_coords follows the affine map, NaN exactly outside the Ref
        hy, hx = torch.meshgrid(torch.arange(p, dtype=torch.float64), torch.arange(p, dtype=torch.float64), indexing="ij")
        cx, cy = m[0, 0] * hx + m[0, 1] * hy + m[0, 2], m[1, 0] * hx + m[1, 1] * hy + m[1, 2]
        valid = (cx >= 0) & (cx <= r - 1) & (cy >= 0) & (cy <= r - 1)
        assert torch.equal(item["ref_valid"][0], valid)
        coords = item["ref_coords"].double()
        assert torch.allclose(coords[0][valid], cx[valid], atol=1e-3)
        assert torch.allclose(coords[1][valid], cy[valid], atol=1e-3)
        assert torch.isnan(coords[:, ~valid]).all()


def test_aligned_views_carry_the_photos_own_pixels(train_photos):
    """``p_aligned=1``: every Ref pixel is a photo pixel, unresampled: the correspondence is
    a whole-pixel shift (no zoom, no turn, even with rotation and perspective asked for),
    and the Ref equals the HR wherever the two overlap; ``p_aligned=0`` keeps the seeded
    draws of views made without the option; a probability outside [0, 1] is refused."""
    kw = dict(patch=64, ref_patch=80, length=8, color=False, p_unrelated=0.0, seed=2, max_rotation=20.0,
              max_perspective=0.1, scale_range=(0.7, 1.4))
    ds = ViewPairDataset(train_photos, p_aligned=1.0, **kw)
    for i in range(len(ds)):
        item = ds[i]
        assert torch.allclose(item["ref_affine"][:, :2], torch.eye(2), atol=1e-6), i
        shift = item["ref_affine"][:, 2]
        assert torch.allclose(shift, shift.round(), atol=1e-4), i
        valid = item["ref_valid"][0]
        assert valid.float().mean() > 0.5
        c = item["ref_coords"][:, valid].round().long()
        assert torch.equal(item["ref"][:, c[1], c[0]], item["hr"][:, valid]), i
    plain = ViewPairDataset(train_photos, **kw)
    zero = ViewPairDataset(train_photos, p_aligned=0.0, **kw)
    assert all(torch.equal(plain[i]["ref"], zero[i]["ref"]) for i in range(3))
    mixed = ViewPairDataset(train_photos, p_aligned=0.5, **{**kw, "length": 40})
    turned = [bool((mixed[i]["ref_affine"][:, :2] - torch.eye(2)).abs().max() > 1e-3) for i in range(40)]
    assert 5 < sum(turned) < 35                        # both kinds of view in one epoch
    with pytest.raises(ValueError, match="p_aligned"):
        ViewPairDataset(train_photos, p_aligned=1.5, **kw)


def test_ref_coords_follow_block_shuffling(train_photos):
    """The same item with and without shuffling: the shuffled Ref at the shuffled coords
    holds exactly the pixel the plain Ref holds at the plain coords."""
    kw = dict(patch=64, ref_patch=64, length=6, color=False, p_unrelated=0.0, seed=5)
    plain = ViewPairDataset(train_photos, p_shuffle=0.0, shuffle_choices=(4,), **kw)
    shuf = ViewPairDataset(train_photos, p_shuffle=1.0, shuffle_choices=(4,), **kw)
    for i in range(6):
        a, b = plain[i], shuf[i]
        assert b["shuffle"] == 4 and torch.equal(a["hr"], b["hr"])
        assert not torch.equal(a["ref"], b["ref"])
        assert torch.equal(a["ref_valid"], b["ref_valid"])
        valid = a["ref_valid"][0]
        ca, cb = a["ref_coords"][:, valid], b["ref_coords"][:, valid]
        fa = ca - ca.round()
        ok = (fa.abs() < 0.49).all(0)                           # skip exact .5 rounding ties
        pa = a["ref"][:, ca[1].round().long(), ca[0].round().long()]
        pb = b["ref"][:, cb[1].round().long(), cb[0].round().long()]
        assert torch.equal(pa[:, ok], pb[:, ok])
        assert torch.allclose((cb - cb.round())[:, ok], fa[:, ok], atol=1e-4)


def test_unrelated_refs_come_from_another_photo(train_photos):
    ds = ViewPairDataset(train_photos, patch=64, length=10, p_unrelated=1.0, seed=0)
    for i in range(len(ds)):
        item = ds[i]
        assert item["related"] is False and item["ref_photo"] != item["photo"]
        assert torch.isnan(item["ref_coords"]).all() and not item["ref_valid"].any()
    ds = ViewPairDataset(train_photos, patch=64, length=10, p_unrelated=0.0, seed=0)
    assert all(ds[i]["related"] and ds[i]["ref_photo"] == ds[i]["photo"] for i in range(len(ds)))
    with pytest.raises(ValueError, match="two photos"):
        ViewPairDataset({"brick": train_photos["brick"]}, p_unrelated=0.2)


def test_heldout_pairs_fixed_and_kinds():
    rel = heldout_pairs("relevant", patch=48, n=3, seed=0)
    again = heldout_pairs("relevant", patch=48, n=3, seed=0)
    assert all(torch.equal(a["ref"], b["ref"]) for a, b in zip(rel, again))
    unrel = heldout_pairs("unrelated", patch=48, n=3, seed=0)
    for a, u in zip(rel, unrel):
        assert torch.equal(a["hr"], u["hr"]) and u["ref_photo"] != u["photo"] and not u["related"]
    for kind, n in (("easy", 2), ("medium", 4), ("hard", 8)):
        for a, s in zip(rel, heldout_pairs(kind, patch=48, n=3, seed=0)):
            assert s["shuffle"] == n and torch.equal(a["hr"], s["hr"]) and s["related"]
            assert torch.equal(a["ref"].flatten().sort()[0], s["ref"].flatten().sort()[0])
    with pytest.raises(ValueError, match="kind"):
        heldout_pairs("nope")


# ---------------------------------------------------------------------- wide views: perspective, zoom 0.5-2
def _warp_back(hr, m, r):
    """HR (3, P, P) sampled at the Ref pixels' HR positions under homography ``m`` (HR -> Ref)."""
    p = hr.shape[-1]
    inv = torch.linalg.inv(m)
    gy, gx = torch.meshgrid(torch.arange(r, dtype=torch.float64), torch.arange(r, dtype=torch.float64), indexing="ij")
    den = inv[2, 0] * gx + inv[2, 1] * gy + inv[2, 2]
    ux = (inv[0, 0] * gx + inv[0, 1] * gy + inv[0, 2]) / den
    uy = (inv[1, 0] * gx + inv[1, 1] * gy + inv[1, 2]) / den
    inside = (ux >= 0) & (ux <= p - 1) & (uy >= 0) & (uy <= p - 1)
    return _bilinear(hr, ux, uy), inside


def test_perspective_views_follow_their_homography_and_are_seeded(train_photos):
    kw = dict(patch=64, ref_patch=72, length=6, color=False, p_unrelated=0.0, scale_range=(0.5, 2.0),
              max_rotation=30.0, max_perspective=0.15)
    ds = ViewPairDataset(train_photos, seed=2, **kw)
    again, other = ViewPairDataset(train_photos, seed=2, **kw), ViewPairDataset(train_photos, seed=3, **kw)
    slanted = 0
    for i in range(len(ds)):
        item = ds[i]
        for key in ("hr", "ref", "ref_coords", "ref_homography", "ref_affine"):
            assert torch.equal(item[key].nan_to_num(-7), again[i][key].nan_to_num(-7)), key
        m = item["ref_homography"].double()
        slanted += float(m[2, :2].abs().max()) > 1e-5
        warped, inside = _warp_back(item["hr"], m, 72)
        if inside.any():
            assert float((warped - item["ref"]).abs()[:, inside].max()) <= 1.0 / 255 + 1e-4, i
        # ref_coords: the homography applied to the HR grid, NaN outside the Ref
        gy, gx = torch.meshgrid(torch.arange(64, dtype=torch.float64), torch.arange(64, dtype=torch.float64), indexing="ij")
        den = m[2, 0] * gx + m[2, 1] * gy + m[2, 2]
        cx, cy = (m[0, 0] * gx + m[0, 1] * gy + m[0, 2]) / den, (m[1, 0] * gx + m[1, 1] * gy + m[1, 2]) / den
        valid = (cx >= 0) & (cx <= 71) & (cy >= 0) & (cy <= 71)
        assert torch.equal(item["ref_valid"][0], valid)
        assert torch.allclose(item["ref_coords"][0].double()[valid], cx[valid], atol=2e-3)
        # ref_affine: the homography's linearisation at the HR centre
        c = torch.tensor([31.5, 31.5, 1.0], dtype=torch.float64)
        at_c = (m @ c)[:2] / (m @ c)[2]
        torch.testing.assert_close(item["ref_affine"].double() @ c, at_c, rtol=0, atol=1e-3)
    assert slanted >= 5
    assert not torch.equal(ds[0]["ref"], other[0]["ref"])


def test_views_without_perspective_have_an_affine_homography(train_photos):
    ds = ViewPairDataset(train_photos, patch=64, length=4, p_unrelated=0.5, seed=0)
    for i in range(4):
        item = ds[i]
        m = item["ref_homography"]
        if item["related"]:
            assert torch.equal(m[:2], item["ref_affine"]) and torch.equal(m[2], torch.tensor([0.0, 0.0, 1.0]))
        else:
            assert torch.isnan(m).all()
    with pytest.raises(ValueError, match="max_perspective"):
        ViewPairDataset(train_photos, max_perspective=0.3)
    with pytest.raises(ValueError, match="max_rotation"):
        ViewPairDataset(train_photos, max_rotation=181)


def test_antialiased_zoomed_out_views_are_smoother(train_photos):
    kw = dict(patch=64, length=4, color=False, p_unrelated=0.0, scale_range=(0.5, 0.5), seed=1)
    sharp = ViewPairDataset(train_photos, **kw)
    soft = ViewPairDataset(train_photos, antialias=True, **kw)

    def hf(x):                                                  # high-frequency energy
        return float((x[:, 1:, :] - x[:, :-1, :]).abs().mean() + (x[:, :, 1:] - x[:, :, :-1]).abs().mean())

    for i in range(4):
        a, b = sharp[i], soft[i]
        assert torch.equal(a["hr"], b["hr"]) and torch.equal(a["ref_coords"].nan_to_num(-7), b["ref_coords"].nan_to_num(-7))
        assert hf(b["ref"]) < hf(a["ref"])
