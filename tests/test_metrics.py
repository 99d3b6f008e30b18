import math

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from frfsr.metrics import psnr, psnr_y, rgb_to_y, ssim_y


def _rand_pair(seed=0, h=40, w=36):
    g = torch.Generator().manual_seed(seed)
    hr = torch.rand(3, h, w, generator=g, dtype=torch.float64)
    sr = (hr + 0.05 * torch.randn(3, h, w, generator=g, dtype=torch.float64)).clamp(0, 1)
    return sr, hr


def _y_ref(img_chw):
    """Y on the 0-255 scale written out from the MATLAB rgb2ycbcr coefficients."""
    r, g, b = img_chw.double()
    return (16.0 + 65.481 * r + 128.553 * g + 24.966 * b).numpy()


def test_rgb_to_y_values_and_layouts():
    img = torch.tensor([[[0.0, 1.0]], [[0.0, 1.0]], [[0.0, 1.0]]])  # black, white (1, 2)
    y = rgb_to_y(img)
    assert y.shape == (1, 1, 2) and y.dtype == torch.float64
    assert torch.allclose(y, torch.tensor([[[16.0, 235.0]]], dtype=torch.float64))
    assert torch.allclose(rgb_to_y(img, unit_range=True), y / 255.0)
    assert rgb_to_y(img[None]).shape == (1, 1, 1, 2)
    arr = np.zeros((5, 6, 3), np.uint8)
    arr[..., 0] = 255
    ya = rgb_to_y(arr)
    assert ya.shape == (5, 6) and np.allclose(ya, 16.0 + 65.481)


def test_ssim_matches_skimage():
    for seed, border in [(0, 4), (1, 0), (2, 7)]:
        sr, hr = _rand_pair(seed)
        c = border
        ys = _y_ref(sr)[c:sr.shape[1] - c, c:sr.shape[2] - c]
        yh = _y_ref(hr)[c:hr.shape[1] - c, c:hr.shape[2] - c]
        ref = structural_similarity(ys, yh, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                    data_range=255)
        assert abs(ssim_y(sr, hr, crop_border=border) - ref) < 1e-6


def test_ssim_numpy_hwc_and_uint8_match_tensor():
    sr, hr = _rand_pair(3)
    v = ssim_y(sr, hr)
    assert abs(ssim_y(sr.permute(1, 2, 0).numpy(), hr.permute(1, 2, 0).numpy()) - v) < 1e-12
    sr8 = (sr * 255).round().to(torch.uint8)
    hr8 = (hr * 255).round().to(torch.uint8)
    assert abs(ssim_y(sr8, hr8) - ssim_y(sr, hr, quantize=True)) < 1e-12


def test_psnr_y_hand_computed():
    # 2 x 2 gray image, no crop: Y = 16 + 219 * v for R = G = B = v.
    hr = torch.full((3, 2, 2), 0.5, dtype=torch.float64)
    sr = hr.clone()
    sr[:, 0, 0] = 0.6
    dy = 219.0 * 0.1  # Y difference at the one changed pixel (65.481 + 128.553 + 24.966 = 219)
    mse = dy ** 2 / 4
    expected = 10 * math.log10(255.0 ** 2 / mse)
    assert abs(psnr_y(sr, hr, crop_border=0) - expected) < 1e-9
    # with a border: the changed pixel is cropped away in a 4x4 image with crop 1 ... unless it is inside
    hr4 = torch.full((3, 4, 4), 0.25, dtype=torch.float64)
    sr4 = hr4.clone()
    sr4[:, 0, 0] = 1.0  # in the border -> cropped
    sr4[:, 1, 2] = 0.75  # inside
    mse4 = (219.0 * 0.5) ** 2 / 4
    assert abs(psnr_y(sr4, hr4, crop_border=1) - 10 * math.log10(255.0 ** 2 / mse4)) < 1e-9


def test_psnr_y_random_matches_formula():
    sr, hr = _rand_pair(4)
    c = 4
    ys, yh = _y_ref(sr)[c:-c, c:-c], _y_ref(hr)[c:-c, c:-c]
    expected = 10 * np.log10(255.0 ** 2 / np.mean((ys - yh) ** 2))
    assert abs(psnr_y(sr, hr) - expected) < 1e-9


def test_identical_images():
    _, hr = _rand_pair(5)
    assert psnr_y(hr, hr) == math.inf
    assert abs(ssim_y(hr, hr) - 1.0) < 1e-12
    assert psnr(hr, hr) == math.inf


def test_batches():
    sr, hr = _rand_pair(6)
    sr2, hr2 = _rand_pair(7)
    per = psnr_y(torch.stack([sr, sr2]), torch.stack([hr, hr2]), reduction="none")
    assert per == pytest.approx([psnr_y(sr, hr), psnr_y(sr2, hr2)])
    assert psnr_y(torch.stack([sr, sr2]), torch.stack([hr, hr2])) == pytest.approx(sum(per) / 2)
    s = ssim_y(torch.stack([sr, sr2]), torch.stack([hr, hr2]), reduction="none")
    assert s == pytest.approx([ssim_y(sr, hr), ssim_y(sr2, hr2)])


def test_generic_psnr():
    a = np.zeros((4, 4))
    b = np.full((4, 4), 0.1)
    assert psnr(a, b, data_range=1.0) == pytest.approx(20.0)
    assert psnr(torch.zeros(3), torch.full((3,), 25.5), data_range=255) == pytest.approx(20.0)


def test_bad_inputs():
    sr, hr = _rand_pair(8)
    with pytest.raises(ValueError, match="same shape"):
        psnr_y(sr, hr[:, :-1])
    with pytest.raises(ValueError, match="channels"):
        psnr_y(sr[:2], hr[:2])
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        ssim_y(sr[0], hr[0])
    with pytest.raises(ValueError, match="11x11"):
        ssim_y(sr[:, :16, :16], hr[:, :16, :16], crop_border=4)
    with pytest.raises(ValueError, match="crop_border"):
        psnr_y(sr, hr, crop_border=-1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        psnr_y(sr * 255, hr * 255)
    with pytest.raises(TypeError):
        psnr_y([1, 2, 3], hr)
    with pytest.raises(TypeError, match="dtype"):
        psnr_y(sr.to(torch.int32), hr.to(torch.int32))
    with pytest.raises(ValueError, match="shape"):
        psnr(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="3 channels"):
        rgb_to_y(torch.rand(1, 4, 4))


def test_psnr_y_over_a_mask():
    g = torch.Generator().manual_seed(0)
    hr = torch.rand(2, 3, 40, 32, generator=g)
    sr = (hr + 0.05 * torch.randn(2, 3, 40, 32, generator=g)).clamp(0, 1)
    sr[..., 20:, :] = hr[..., 20:, :] * 0.5                                       # the lower half much worse
    full = torch.ones(40, 32, dtype=torch.bool)
    assert psnr_y(sr, hr, mask=full) == pytest.approx(psnr_y(sr, hr), abs=1e-9)
    top = torch.zeros(40, 32, dtype=torch.bool)
    top[:20] = True                                                               # rows 4..19 after the crop
    expected = psnr_y(sr[..., :24, :], hr[..., :24, :])                           # the same rows, cropped by 4
    assert psnr_y(sr, hr, mask=top) == pytest.approx(expected, abs=1e-9)
    assert psnr_y(sr, hr, mask=top) > psnr_y(sr, hr) + 3
    with pytest.raises(ValueError, match="does not fit"):
        psnr_y(sr, hr, mask=torch.ones(8, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="no pixel"):
        psnr_y(sr, hr, mask=torch.zeros(40, 32, dtype=torch.bool))


# ---------------------------------------------------------------- fine-detail measures
def _textured(seed=0, size=48):
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(1, 3, size // 4, size // 4, generator=g)
    img = torch.nn.functional.interpolate(base, size=(size, size), mode="bicubic", align_corners=False)
    return (img + 0.15 * torch.rand(1, 3, size, size, generator=g)).clamp(0, 1)


def test_sharpness_and_detail_fidelity_of_the_truth_and_of_a_blur():
    from frfsr.metrics import detail_fidelity, sharpness
    hr = _textured()
    assert sharpness(hr, hr) == pytest.approx(1.0)
    assert detail_fidelity(hr, hr) == pytest.approx(1.0)
    blurred = torch.nn.functional.avg_pool2d(hr, 3, 1, 1, count_include_pad=False)
    assert sharpness(blurred, hr) < 0.3                       # a blur keeps little fine detail
    assert 0.2 < detail_fidelity(blurred, hr) < 1.0           # what is left is in the right place
    doubled = (0.5 + 2 * (hr - 0.5)).clamp(0, 1)
    assert sharpness(doubled, hr) > 1.5                       # over-sharpened


def test_invented_detail_is_sharp_but_not_faithful():
    from frfsr.metrics import detail_fidelity, sharpness
    hr, other = _textured(0), _textured(1)
    assert sharpness(other, hr) > 0.5
    assert abs(detail_fidelity(other, hr)) < 0.2
    assert detail_fidelity(hr, hr) > detail_fidelity(0.5 * hr + 0.5 * other, hr) > detail_fidelity(other, hr)


def test_detail_measures_by_hand_and_edge_cases():
    from frfsr.metrics import LAPLACIAN, detail_fidelity, rgb_to_y, sharpness
    sr, hr = _textured(2, 24), _textured(3, 24)
    lap = lambda x: torch.nn.functional.conv2d(rgb_to_y(x).double()[..., 4:-4, 4:-4], LAPLACIAN).flatten()
    a, b = lap(sr), lap(hr)
    assert sharpness(sr, hr) == pytest.approx(float(a.var(unbiased=False) / b.var(unbiased=False)), rel=1e-6)
    assert detail_fidelity(sr, hr) == pytest.approx(float(torch.corrcoef(torch.stack([a, b]))[0, 1]), rel=1e-6)
    flat = torch.full((1, 3, 24, 24), 0.5)
    assert sharpness(flat, flat) == 1.0 and detail_fidelity(flat, hr) == 0.0
    assert sharpness(hr, flat) == math.inf
    assert len(sharpness(torch.cat([sr, hr]), torch.cat([hr, hr]), reduction="none")) == 2
    with pytest.raises(ValueError, match="same shape"):
        sharpness(sr, hr[..., :20])
    with pytest.raises(ValueError, match="3x3"):
        detail_fidelity(sr[..., :10, :10], hr[..., :10, :10])


def _grid_pattern(size, period, amplitude=0.08):
    i = torch.arange(size, dtype=torch.float32)
    wave = torch.cos(2 * torch.pi * (i[:, None] + i[None, :]) / period)
    return (amplitude * wave).expand(1, 3, size, size)


def test_grid_energy_finds_a_pattern_locked_to_the_lr_grid():
    """Diagonal stripes of period 4 (what an x4 net's artefact looks like) raise the measure far
    above the truth's 1; the same stripes off the grid (period 3) and a blur do not."""
    from frfsr.metrics import grid_energy
    hr = _textured(4, 64)
    assert grid_energy(hr, hr) == pytest.approx(1.0)
    striped = (hr + _grid_pattern(64, 4)).clamp(0, 1)
    off_grid = (hr + _grid_pattern(64, 3)).clamp(0, 1)
    blurred = torch.nn.functional.avg_pool2d(hr, 3, 1, 1, count_include_pad=False)
    assert grid_energy(striped, hr) > 3.0
    assert grid_energy(off_grid, hr) < 1.5
    assert grid_energy(blurred, hr) < 1.0
    # scale 2 looks at 1/2 cycle/px only: period-4 stripes are off its grid, a checkerboard is on it
    checker = (hr + _grid_pattern(64, 2)).clamp(0, 1)
    assert grid_energy(striped, hr, scale=2) < 1.5 < grid_energy(checker, hr, scale=2)
    per = grid_energy(torch.cat([hr, striped]), torch.cat([hr, hr]), reduction="none")
    assert per[0] == pytest.approx(1.0) and per[1] > 3.0


def test_grid_energy_edge_cases():
    from frfsr.metrics import grid_energy
    flat = torch.full((1, 3, 32, 32), 0.5)
    assert grid_energy(flat, flat) == 1.0
    assert grid_energy(_textured(5, 32), flat) == math.inf
    with pytest.raises(ValueError, match="scale must be an int >= 2"):
        grid_energy(flat, flat, scale=1)
    with pytest.raises(ValueError, match="at least 16x16 pixels after cropping; got 12x12"):
        grid_energy(flat[..., :20, :20], flat[..., :20, :20])
