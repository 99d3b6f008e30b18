import numpy as np
import pytest
import torch
from PIL import Image

from frfsr_train.data import (SHUFFLE_LEVELS, CUFED5Dataset, CUFEDTrainDataset, DataLayoutError, PairFolderDataset,
                        augment_pair, bicubic_downsample, bicubic_upsample, color_jitter, flip_rot, modcrop,
                        sample_flip_rot, shuffle_blocks)


def _rand_u8(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _save(path, h, w, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = _rand_u8(h, w, seed)
    Image.fromarray(arr).save(path)
    return arr


def _to_chw_float(arr):
    return torch.from_numpy(np.array(arr)).permute(2, 0, 1).float() / 255.0


# ----------------------------------------------------------------------------- degradation
def test_bicubic_downsample_equals_pil_uint8():
    arr = _rand_u8(50, 38, seed=1)  # not divisible by 4 -> cropped to 48 x 36
    ref = np.array(Image.fromarray(arr[:48, :36]).resize((9, 12), Image.BICUBIC))
    out = bicubic_downsample(arr, 4)
    assert out.dtype == np.uint8 and out.shape == (12, 9, 3)
    assert np.array_equal(out, ref)
    t = torch.from_numpy(arr).permute(2, 0, 1)
    out_t = bicubic_downsample(t, 4)
    assert out_t.dtype == torch.uint8 and torch.equal(out_t, torch.from_numpy(ref).permute(2, 0, 1))
    assert np.array_equal(np.asarray(bicubic_downsample(Image.fromarray(arr))), ref)
    # batched tensors
    out_b = bicubic_downsample(torch.stack([t, t]), 4)
    assert out_b.shape == (2, 3, 12, 9)


def test_bicubic_float_path_close_to_uint8_path():
    arr = _rand_u8(32, 32, seed=2)
    f = bicubic_downsample(_to_chw_float(arr), 4, clamp=False)
    assert f.dtype == torch.float32 and f.shape == (3, 8, 8)
    u = torch.from_numpy(bicubic_downsample(arr, 4)).permute(2, 0, 1).float() / 255.0
    # PIL's 8-bit path clips an intermediate 8-bit image; otherwise the two agree up to rounding
    assert (f.clamp(0, 1) - u).abs().max() <= 2.0 / 255.0
    assert bicubic_upsample(f, 4).shape == (3, 32, 32)
    assert bicubic_downsample(_to_chw_float(arr), 4).min() >= 0.0


def test_modcrop_and_bad_inputs():
    assert modcrop(torch.zeros(3, 10, 7), 4).shape == (3, 8, 4)
    with pytest.raises(ValueError, match="scale"):
        bicubic_downsample(np.zeros((8, 8, 3), np.uint8), 0)
    with pytest.raises(ValueError, match="smaller than the scale"):
        bicubic_downsample(np.zeros((3, 8, 3), np.uint8), 4)
    with pytest.raises(TypeError):
        bicubic_downsample([[1, 2]], 4)
    with pytest.raises(TypeError, match="uint8 or floating"):
        bicubic_downsample(torch.zeros(3, 8, 8, dtype=torch.int32), 4)


# ----------------------------------------------------------------------------- augmentation
def test_flip_rot_keeps_hr_lr_consistent():
    arr = _rand_u8(32, 32, seed=3)
    hr_u8 = torch.from_numpy(arr).permute(2, 0, 1).contiguous()
    hr_f = hr_u8.float() / 255
    lr_u8, lr_f = bicubic_downsample(hr_u8), bicubic_downsample(hr_f, clamp=False)
    for hflip in (False, True):
        for vflip in (False, True):
            for rot in (0, 1):
                p = dict(hflip=hflip, vflip=vflip, rot90=rot)
                got_f = bicubic_downsample(flip_rot(hr_f, **p).contiguous(), clamp=False)
                assert torch.allclose(got_f, flip_rot(lr_f, **p), atol=1e-5)
                got_u8 = bicubic_downsample(flip_rot(hr_u8, **p).contiguous())
                diff = (got_u8.int() - flip_rot(lr_u8, **p).int()).abs().max()
                # flips are exact; a rotation swaps PIL's horizontal / vertical passes (8-bit rounding in between)
                assert diff <= (1 if rot else 0)


def test_augment_pair_modes():
    hr, lr, ref = torch.rand(3, 16, 16), torch.rand(3, 4, 4), torch.rand(3, 16, 16)
    for seed in range(8):
        g = torch.Generator().manual_seed(seed)
        p = sample_flip_rot(torch.Generator().manual_seed(seed))
        h2, l2, r2 = augment_pair(hr, lr, ref, generator=g, ref_mode="same")
        assert torch.equal(h2, flip_rot(hr, **p)) and torch.equal(l2, flip_rot(lr, **p))
        assert torch.equal(r2, flip_rot(ref, **p))
    _, _, r3 = augment_pair(hr, lr, ref, ref_mode="none")
    assert r3 is ref
    assert augment_pair(hr, lr)[2] is None
    with pytest.raises(ValueError, match="ref_mode"):
        augment_pair(hr, lr, ref, ref_mode="x")


@pytest.mark.parametrize("level", ["easy", "medium", "hard"])
@pytest.mark.parametrize("size", [(32, 32), (37, 29)])
def test_shuffle_blocks_permutes_pixels(level, size):
    h, w = size
    ids = torch.arange(h * w, dtype=torch.float64).view(1, h, w)
    img = torch.cat([ids, -ids])  # two channels must move together
    out = shuffle_blocks(img, level, generator=torch.Generator().manual_seed(0))
    assert out.shape == img.shape
    assert torch.equal(out[1], -out[0])
    # every pixel exactly once: the unique ids form a permutation
    assert torch.equal(out[0].flatten().sort().values, ids.flatten())
    assert not torch.equal(out, img)
    # blocks stay intact: each output row segment of a block is a run of consecutive ids
    n = SHUFFLE_LEVELS[level]
    assert (out[0, :, 1:] - out[0, :, :-1] == 1).sum() >= h * (w - n)


def test_shuffle_blocks_random_image_and_errors():
    img = torch.rand(2, 3, 24, 20)
    out = shuffle_blocks(img, 4, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out.flatten(2).sort(dim=-1).values, img.flatten(2).sort(dim=-1).values)
    assert torch.equal(shuffle_blocks(img, 4, torch.Generator().manual_seed(5)),
                       shuffle_blocks(img, 4, torch.Generator().manual_seed(5)))
    # small non-divisible case still changes the arrangement
    small = torch.arange(9.0).view(1, 3, 3)
    for s in range(5):
        assert not torch.equal(shuffle_blocks(small, 2, torch.Generator().manual_seed(s)), small)
    with pytest.raises(ValueError, match="level"):
        shuffle_blocks(img, "extreme")
    with pytest.raises(ValueError, match="blocks"):
        shuffle_blocks(torch.rand(3, 4, 4), 8)


def test_color_jitter():
    ref = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(0))
    a = color_jitter(ref, 0.4, 0.4, 0.4, 0.1, generator=torch.Generator().manual_seed(7))
    b = color_jitter(ref, 0.4, 0.4, 0.4, 0.1, generator=torch.Generator().manual_seed(7))
    c = color_jitter(ref, 0.4, 0.4, 0.4, 0.1, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == ref.shape and a.min() >= 0 and a.max() <= 1
    assert torch.equal(color_jitter(ref), ref)  # all strengths 0 -> unchanged
    batch = color_jitter(torch.stack([ref, ref]), brightness=(2.0, 2.0), generator=torch.Generator().manual_seed(1))
    assert torch.allclose(batch[0], (ref * 2).clamp(0, 1))
    with pytest.raises(ValueError, match="hue"):
        color_jitter(ref, hue=0.7)
    with pytest.raises(ValueError, match="channels"):
        color_jitter(torch.rand(1, 8, 8), brightness=0.1)


# ----------------------------------------------------------------------------- datasets
def test_cufed_train_suffix_and_same_name_pairing(tmp_path):
    hr0 = _save(tmp_path / "input" / "000000_0.png", 40, 40, seed=10)
    _save(tmp_path / "ref" / "000000_1.png", 40, 44, seed=11)
    _save(tmp_path / "input" / "foo.png", 42, 40, seed=12)
    _save(tmp_path / "ref" / "foo.png", 40, 40, seed=13)
    ds = CUFEDTrainDataset(tmp_path, patch=None, augment=False)
    assert len(ds) == 2
    item = ds[0]
    assert item["name"] == "000000" and item["ref_path"].endswith("000000_1.png")
    assert item["hr"].shape == (3, 40, 40) and item["lr"].shape == (3, 10, 10)
    assert item["lr_up"].shape == (3, 40, 40) and item["ref"].shape == (3, 40, 44)
    assert item["ref_lr"].shape == (3, 10, 11) and item["ref_down_up"].shape == (3, 40, 44)
    assert item["hr"].dtype == torch.float32
    assert torch.equal(item["hr"], _to_chw_float(hr0))
    lr_expected = np.asarray(Image.fromarray(hr0).resize((10, 10), Image.BICUBIC))
    assert torch.equal(item["lr"], _to_chw_float(lr_expected))
    assert ds[1]["name"] == "foo" and ds[1]["hr"].shape == (3, 40, 40)  # 42 rows cropped to 40


def test_cufed_train_patch_augment_shuffle_jitter(tmp_path):
    for i in range(3):
        _save(tmp_path / "input" / f"{i:06d}_0.png", 48, 48, seed=i)
        _save(tmp_path / "ref" / f"{i:06d}_1.png", 48, 48, seed=100 + i)
    ds = CUFEDTrainDataset(tmp_path, patch=32, augment=True, shuffle_level="medium", ref_jitter=True, seed=3)
    item = ds[1]
    assert item["hr"].shape == (3, 32, 32) and item["lr"].shape == (3, 8, 8) and item["ref"].shape == (3, 32, 32)
    assert item["ref"].min() >= 0 and item["ref"].max() <= 1
    # the LR is exactly the PIL bicubic of the (cropped, augmented) HR
    hr_u8 = (item["hr"] * 255).round().to(torch.uint8)
    assert torch.equal(item["lr"], bicubic_downsample(hr_u8).float() / 255)
    again = ds[1]
    assert all(torch.equal(item[k], again[k]) for k in ("hr", "lr", "ref"))
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=3)))
    assert batch["hr"].shape == (3, 3, 32, 32) and batch["ref_down_up"].shape == (3, 3, 32, 32)
    with pytest.raises(ValueError, match="patch"):
        CUFEDTrainDataset(tmp_path, patch=30)
    with pytest.raises(ValueError, match="shuffle_level"):
        CUFEDTrainDataset(tmp_path, shuffle_level="extreme")
    with pytest.raises(ValueError, match="smaller than patch"):
        CUFEDTrainDataset(tmp_path, patch=64)[0]


def test_cufed_train_errors(tmp_path):
    with pytest.raises(DataLayoutError, match="input folder not found"):
        CUFEDTrainDataset(tmp_path)
    (tmp_path / "input").mkdir()
    (tmp_path / "ref").mkdir()
    with pytest.raises(ValueError, match="no input images"):
        CUFEDTrainDataset(tmp_path)
    _save(tmp_path / "input" / "000001_0.png", 16, 16)
    _save(tmp_path / "input" / "000002_0.png", 16, 16)
    _save(tmp_path / "ref" / "000001_1.png", 16, 16)
    with pytest.raises(DataLayoutError, match="000002_0.png"):
        CUFEDTrainDataset(tmp_path)
    _save(tmp_path / "ref" / "000002_1.png", 16, 16)
    _save(tmp_path / "ref" / "stray.png", 16, 16)
    with pytest.raises(DataLayoutError, match="stray.png"):
        CUFEDTrainDataset(tmp_path)


def test_cufed5(tmp_path):
    for name, seed in (("000", 0), ("001", 10)):
        _save(tmp_path / f"{name}_0.png", 42, 38, seed=seed)
        for lv in range(1, 6):
            _save(tmp_path / f"{name}_{lv}.png", 30 + 4 * lv, 34, seed=seed + lv)
    ds = CUFED5Dataset(tmp_path)
    assert len(ds) == 2
    item = ds[1]
    assert item["name"] == "001" and item["hr"].shape == (3, 40, 36) and item["lr"].shape == (3, 10, 9)
    assert len(item["refs"]) == 5 and item["ref_levels"] == [1, 2, 3, 4, 5]
    assert [r.shape[1] for r in item["refs"]] == [32, 36, 40, 44, 48]  # 34, 38, 42, 46, 50 -> multiples of 4
    assert item["refs"][2].shape == (3, 40, 32) and item["refs_lr"][2].shape == (3, 10, 8)
    assert "ref" not in item
    one = CUFED5Dataset(tmp_path, level=3)[1]
    assert len(one["refs"]) == 1 and one["ref_level"] == 3 and one["ref_path"].endswith("001_3.png")
    assert torch.equal(one["ref"], item["refs"][2])
    with pytest.raises(ValueError, match="level"):
        CUFED5Dataset(tmp_path, level=6)
    (tmp_path / "001_4.png").unlink()
    with pytest.raises(DataLayoutError, match="001_4"):
        CUFED5Dataset(tmp_path)
    _save(tmp_path / "001_4.png", 16, 16)
    _save(tmp_path / "oddname.png", 16, 16)
    with pytest.raises(DataLayoutError, match="oddname.png"):
        CUFED5Dataset(tmp_path)


def test_pair_folder_split_layout(tmp_path):
    hr = _save(tmp_path / "hr" / "a.png", 32, 24, seed=1)
    _save(tmp_path / "ref" / "a.jpg", 20, 20, seed=2)
    _save(tmp_path / "hr" / "b.bmp", 16, 16, seed=3)
    _save(tmp_path / "ref" / "b.PNG", 16, 16, seed=4)
    ds = PairFolderDataset(tmp_path)
    assert ds.layout == "split" and len(ds) == 2
    item = ds[0]
    assert item["name"] == "a" and item["ref_path"].endswith("a.jpg")
    assert torch.equal(item["hr"], _to_chw_float(hr))
    assert item["lr"].shape == (3, 8, 6) and item["ref"].shape == (3, 20, 20) and item["ref_lr"].shape == (3, 5, 5)
    _save(tmp_path / "hr" / "c.png", 16, 16)
    with pytest.raises(DataLayoutError, match="c.png"):
        PairFolderDataset(tmp_path)


def test_pair_folder_nested_layout(tmp_path):
    _save(tmp_path / "x" / "hr.png", 16, 20, seed=1)
    _save(tmp_path / "x" / "ref.webp", 24, 24, seed=2)
    _save(tmp_path / "y" / "hr.tif", 16, 16, seed=3)
    _save(tmp_path / "y" / "ref.jpeg", 16, 16, seed=4)
    ds = PairFolderDataset(tmp_path)
    assert ds.layout == "nested" and [p[0] for p in ds.pairs] == ["x", "y"]
    item = ds[0]
    assert item["name"] == "x" and item["hr"].shape == (3, 16, 20) and item["lr"].shape == (3, 4, 5)
    (tmp_path / "z").mkdir()
    _save(tmp_path / "z" / "hr.png", 16, 16)
    with pytest.raises(DataLayoutError, match=r"z \(no ref"):
        PairFolderDataset(tmp_path)


def test_pair_folder_missing(tmp_path):
    with pytest.raises(DataLayoutError, match="not found"):
        PairFolderDataset(tmp_path / "nope")
    with pytest.raises(DataLayoutError, match="neither"):
        PairFolderDataset(tmp_path)
    (tmp_path / "hr").mkdir()
    with pytest.raises(DataLayoutError, match="no hr images"):
        PairFolderDataset(tmp_path)
    _save(tmp_path / "hr" / "a.png", 16, 16)
    with pytest.raises(DataLayoutError, match="ref folder not found"):
        PairFolderDataset(tmp_path)
