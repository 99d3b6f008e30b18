"""Image quality metrics as the super-resolution literature reports them, and two measures
of fine detail.

``psnr_y`` and ``ssim_y`` follow BasicSR's ``calculate_psnr`` / ``calculate_ssim`` with
``test_y_channel=True``: both images are cropped by ``crop_border`` pixels on every side,
converted to the Y channel of MATLAB's ``rgb2ycbcr`` (BT.601 studio range, values in
[16, 235]) and compared in float64 on the 0-255 scale. SSIM uses an 11x11 Gaussian window
(sigma 1.5), K1 = 0.01, K2 = 0.03, L = 255 and 'valid' filtering (no padding), which is what
``skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=255)`` computes as well.

``sharpness`` and ``detail_fidelity`` look at the fine detail alone: the Laplacian (4-neighbour,
'valid' filtering) of the same cropped Y images. ``sharpness`` is the variance of the SR's
Laplacian over the HR's (1 = as much fine detail as the truth; a blurry image is near 0, a
noisy or over-sharpened one above 1); ``detail_fidelity`` is the Pearson correlation of the
two Laplacians (1 = the detail is where and what it should be; detail that is invented lowers
it as much as detail that is missing).

``grid_energy`` looks for the artefact an x``scale`` network is prone to: a pattern locked to the
LR pixel grid (checkerboards, stripes of period ``scale``). It is the power of the SR's Y at the
grid's frequencies (every multiple of ``1 / scale`` cycle per pixel in each direction, DC
excluded, each with its neighbouring bins, of a Hann-windowed FFT) over the HR's power there: a
faithful or soft result is near or below 1, a result with such a pattern well above it.

Accepted image inputs
---------------------
* torch tensors ``(C, H, W)`` or ``(B, C, H, W)``;
* numpy arrays ``(H, W)``, ``(H, W, C)`` or ``(B, H, W, C)``;
* ``PIL.Image.Image`` (converted with ``numpy.asarray``).

``C`` is 3 (RGB) or 1 (already a luminance image, used as it is: ``255 * value``). Floating
point data are taken to be in [0, 1] and clamped to it (as BasicSR's ``tensor2img`` does);
``uint8`` data are in [0, 255]. Float data whose maximum exceeds 2 are rejected, as they are
almost certainly on the 0-255 scale.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["rgb_to_y", "psnr", "psnr_y", "ssim_y", "sharpness", "detail_fidelity", "lr_grid_mask", "lr_grid_spectrum",
           "grid_energy"]

#: MATLAB rgb2ycbcr, Y row, for RGB in [0, 1] and Y in [0, 255].
Y_WEIGHTS = (65.481, 128.553, 24.966)
_Y_OFFSET = 16.0


def _to_batch(img, name: str = "image") -> tuple[torch.Tensor, str]:
    """Convert an accepted image to a float64 CPU tensor (B, C, H, W) in [0, 1].

    Returns the tensor and a layout tag ('chw', 'bchw', 'hw', 'hwc', 'bhwc') describing the input.
    """
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow is a dependency
        Image = None
    if Image is not None and isinstance(img, Image.Image):
        img = np.asarray(img)

    if isinstance(img, torch.Tensor):
        t = img.detach().cpu()
        if t.ndim == 3:
            layout, t = "chw", t.unsqueeze(0)
        elif t.ndim == 4:
            layout = "bchw"
        else:
            raise ValueError(f"{name}: torch tensors must be (C, H, W) or (B, C, H, W); got shape {tuple(img.shape)}")
    elif isinstance(img, np.ndarray):
        a = img
        if a.ndim == 2:
            layout, a = "hw", a[None, :, :, None]
        elif a.ndim == 3:
            layout, a = "hwc", a[None]
        elif a.ndim == 4:
            layout = "bhwc"
        else:
            raise ValueError(f"{name}: numpy arrays must be (H, W), (H, W, C) or (B, H, W, C); got shape {img.shape}")
        t = torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2)
    else:
        raise TypeError(f"{name}: expected a torch.Tensor, numpy.ndarray or PIL.Image; got {type(img).__name__}")

    if t.shape[1] not in (1, 3):
        raise ValueError(f"{name}: expected 1 (luminance) or 3 (RGB) channels; got {t.shape[1]} "
                         f"(shape {tuple(img.shape)}, layout {layout.upper()})")
    if t.shape[-1] == 0 or t.shape[-2] == 0 or t.shape[0] == 0:
        raise ValueError(f"{name}: empty image of shape {tuple(img.shape)}")
    if t.dtype == torch.uint8:
        return t.to(torch.float64) / 255.0, layout
    if not t.is_floating_point():
        raise TypeError(f"{name}: expected a floating point ([0, 1]) or uint8 ([0, 255]) image; got dtype {t.dtype}")
    t = t.to(torch.float64)
    if not torch.isfinite(t).all():
        raise ValueError(f"{name}: contains NaN or infinite values")
    if t.max() > 2.0:
        raise ValueError(f"{name}: float images must be in [0, 1] (max is {float(t.max()):.4g}); "
                         "divide 0-255 data by 255 or pass uint8")
    return t.clamp(0.0, 1.0), layout


def _y255(batch: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) float64 in [0, 1] -> (B, 1, H, W) luminance on the 0-255 scale."""
    if batch.shape[1] == 1:
        return batch * 255.0
    w = batch.new_tensor(Y_WEIGHTS).view(1, 3, 1, 1)
    return (batch * w).sum(dim=1, keepdim=True) + _Y_OFFSET


def rgb_to_y(img, unit_range: bool = False):
    """Y channel of MATLAB's ``rgb2ycbcr`` (BT.601 studio range).

    ``Y = 16 + 65.481 R + 128.553 G + 24.966 B`` with R, G, B in [0, 1]; the result lies in
    [16, 235] (0-255 scale), or in [16/255, 235/255] when ``unit_range`` is True.

    ``img`` must have 3 channels (RGB) in one of the layouts listed in the module docstring;
    the output is float64 and keeps the layout with a single channel: ``(C, H, W) -> (1, H, W)``,
    ``(B, C, H, W) -> (B, 1, H, W)`` for tensors, ``(H, W, 3) -> (H, W)`` and
    ``(B, H, W, 3) -> (B, H, W)`` for numpy arrays (and PIL images).
    """
    batch, layout = _to_batch(img)
    if batch.shape[1] != 3:
        raise ValueError(f"rgb_to_y needs an RGB image with 3 channels; got {batch.shape[1]} channel(s)")
    y = _y255(batch)
    if unit_range:
        y = y / 255.0
    if layout == "chw":
        return y[0]
    if layout == "bchw":
        return y
    y = y[:, 0].numpy()
    return y[0] if layout in ("hw", "hwc") else y


def _prepare_pair(sr, hr, crop_border: int, quantize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate, crop and convert both images to Y (B, 1, H, W) float64 on the 0-255 scale."""
    if isinstance(crop_border, bool) or not isinstance(crop_border, (int, np.integer)) or crop_border < 0:
        raise ValueError(f"crop_border must be a non-negative int; got {crop_border!r}")
    a, _ = _to_batch(sr, "sr")
    b, _ = _to_batch(hr, "hr")
    if a.shape != b.shape:
        raise ValueError(f"sr and hr must have the same shape; got {tuple(a.shape)} and {tuple(b.shape)} "
                         "(as (B, C, H, W))")
    if quantize:
        a = torch.round(a * 255.0) / 255.0
        b = torch.round(b * 255.0) / 255.0
    c = int(crop_border)
    h, w = a.shape[-2:]
    if h - 2 * c <= 0 or w - 2 * c <= 0:
        raise ValueError(f"crop_border={c} leaves nothing of a {h}x{w} image")
    if c:
        a = a[..., c:h - c, c:w - c]
        b = b[..., c:h - c, c:w - c]
    return _y255(a), _y255(b)


def _reduce(values: list[float], reduction: str):
    if reduction == "mean":
        return float(sum(values) / len(values))
    if reduction == "none":
        return values
    raise ValueError(f"reduction must be 'mean' or 'none'; got {reduction!r}")


def psnr(a, b, data_range: float = 1.0) -> float:
    """Generic PSNR ``10 log10(data_range^2 / MSE)`` over all elements, in float64.

    ``a`` and ``b`` are tensors or numpy arrays of identical shape (no layout assumptions, no
    clamping, no colour conversion). Identical inputs give ``inf``.
    """
    def as_t(x, name):
        if isinstance(x, torch.Tensor):
            return x.detach().cpu().to(torch.float64)
        if isinstance(x, np.ndarray):
            return torch.from_numpy(np.asarray(x, dtype=np.float64))
        raise TypeError(f"psnr: {name} must be a torch.Tensor or numpy.ndarray; got {type(x).__name__}")

    ta, tb = as_t(a, "a"), as_t(b, "b")
    if ta.shape != tb.shape:
        raise ValueError(f"psnr: inputs must have the same shape; got {tuple(ta.shape)} and {tuple(tb.shape)}")
    if ta.numel() == 0:
        raise ValueError("psnr: inputs are empty")
    if not data_range > 0:
        raise ValueError(f"psnr: data_range must be positive; got {data_range!r}")
    mse = float(((ta - tb) ** 2).mean())
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(float(data_range) ** 2 / mse)


def psnr_y(sr, hr, crop_border: int = 4, quantize: bool = False, reduction: str = "mean", mask=None):
    """PSNR on the Y channel (0-255 scale, float64) after cropping ``crop_border`` pixels per side.

    ``quantize=True`` first rounds both images to 8 bits, reproducing evaluation on saved PNGs
    (BasicSR's ``tensor2img`` followed by ``calculate_psnr``). For batches, ``reduction='mean'``
    averages the per-image PSNRs and ``'none'`` returns the list. Identical images give ``inf``.
    ``mask``: a boolean (H, W) map of the uncropped image (or one per image, (B, 1, H, W)):
    the error is averaged over its pixels only (e.g. the part of an image a Ref shows).
    """
    ya, yb = _prepare_pair(sr, hr, crop_border, quantize)
    if mask is None:
        mse = ((ya - yb) ** 2).flatten(1).mean(dim=1)
    else:
        m = torch.as_tensor(mask, dtype=torch.bool)
        m = m.reshape((1, 1) + tuple(m.shape)) if m.dim() == 2 else m
        c, (h, w) = int(crop_border), m.shape[-2:]
        if (h - 2 * c, w - 2 * c) != tuple(ya.shape[-2:]) or m.shape[0] not in (1, ya.shape[0]):
            raise ValueError(f"mask of shape {tuple(m.shape)} does not fit {ya.shape[0]} image(s) of "
                             f"{ya.shape[-2] + 2 * c}x{ya.shape[-1] + 2 * c}")
        m = m[..., c:h - c, c:w - c].expand_as(ya).to(ya.device)
        count = m.flatten(1).sum(1)
        if bool((count == 0).any()):
            raise ValueError("mask leaves no pixel inside the cropped image")
        mse = (((ya - yb) ** 2) * m).flatten(1).sum(1) / count
    values = [math.inf if m == 0 else 10.0 * math.log10(255.0 ** 2 / m) for m in mse.tolist()]
    return _reduce(values, reduction)


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    g = torch.exp(-(x ** 2) / (2.0 * sigma ** 2))
    g = g / g.sum()
    return torch.outer(g, g).view(1, 1, size, size)


def ssim_y(sr, hr, crop_border: int = 4, quantize: bool = False, reduction: str = "mean"):
    """SSIM on the Y channel (0-255 scale, float64) after cropping ``crop_border`` pixels per side.

    11x11 Gaussian window with sigma 1.5, K1 = 0.01, K2 = 0.03, L = 255, population (not
    sample) covariances and 'valid' filtering: the SSIM map covers only positions where the
    window fits entirely, and its mean is returned. The cropped image must be at least 11x11.
    ``quantize`` and ``reduction`` behave as in :func:`psnr_y`.
    """
    ya, yb = _prepare_pair(sr, hr, crop_border, quantize)
    if ya.shape[-1] < 11 or ya.shape[-2] < 11:
        raise ValueError(f"ssim_y needs at least 11x11 pixels after cropping; got "
                         f"{ya.shape[-2]}x{ya.shape[-1]} (crop_border={crop_border})")
    win = _gaussian_window()
    c1 = (0.01 * 255.0) ** 2
    c2 = (0.03 * 255.0) ** 2

    def filt(x):
        return F.conv2d(x, win)

    mu_a, mu_b = filt(ya), filt(yb)
    var_a = filt(ya * ya) - mu_a ** 2
    var_b = filt(yb * yb) - mu_b ** 2
    cov = filt(ya * yb) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return _reduce(ssim_map.flatten(1).mean(dim=1).tolist(), reduction)


#: The 3x3 Laplacian (4-neighbour) of :func:`sharpness` and :func:`detail_fidelity`, (1, 1, 3, 3) float64.
LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]], dtype=torch.float64).view(1, 1, 3, 3)


def _laplacians(sr, hr, crop_border: int) -> tuple[torch.Tensor, torch.Tensor]:
    ya, yb = _prepare_pair(sr, hr, crop_border, False)
    if ya.shape[-1] < 3 or ya.shape[-2] < 3:
        raise ValueError(f"the Laplacian needs at least 3x3 pixels after cropping; got {ya.shape[-2]}x{ya.shape[-1]}")
    return F.conv2d(ya, LAPLACIAN).flatten(1), F.conv2d(yb, LAPLACIAN).flatten(1)


def sharpness(sr, hr, crop_border: int = 4, reduction: str = "mean"):
    """Variance of the SR's Laplacian over the HR's, on Y after cropping ``crop_border``
    pixels per side (see the module docstring). An HR without any detail (flat) gives inf
    unless the SR is flat too (then 1)."""
    la, lb = _laplacians(sr, hr, crop_border)
    va, vb = la.var(dim=1, unbiased=False).tolist(), lb.var(dim=1, unbiased=False).tolist()
    return _reduce([(1.0 if a == 0 else math.inf) if b == 0 else a / b for a, b in zip(va, vb)], reduction)


def detail_fidelity(sr, hr, crop_border: int = 4, reduction: str = "mean"):
    """Pearson correlation of the SR's and the HR's Laplacians, on Y after cropping
    ``crop_border`` pixels per side (see the module docstring); 0 where either is flat."""
    la, lb = _laplacians(sr, hr, crop_border)
    la, lb = la - la.mean(dim=1, keepdim=True), lb - lb.mean(dim=1, keepdim=True)
    den = (la.norm(dim=1) * lb.norm(dim=1)).tolist()
    num = (la * lb).sum(dim=1).tolist()
    return _reduce([n / d if d > 0 else 0.0 for n, d in zip(num, den)], reduction)


def lr_grid_mask(h: int, w: int, scale: int) -> torch.Tensor:
    """The bins of an (unshifted) ``h`` x ``w`` FFT at the LR pixel grid's frequencies: every
    multiple of ``1 / scale`` cycle/px in each direction but DC, each with its 8 neighbours;
    ``(h, w)`` bool."""
    mask = torch.zeros(h, w, dtype=torch.bool)
    for ky in range(scale):
        for kx in range(scale):
            if ky == 0 and kx == 0:
                continue
            cy, cx = round(ky * h / scale), round(kx * w / scale)
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    mask[(cy + dy) % h, (cx + dx) % w] = True
    return mask


def lr_grid_spectrum(x: torch.Tensor, scale: int) -> torch.Tensor:
    """The orthonormal FFT of each ``(..., H, W)`` image of ``x``, mean removed and Hann-windowed,
    at the bins of :func:`lr_grid_mask`: complex ``(..., n_bins)``, differentiable."""
    h, w = x.shape[-2:]
    window = (torch.hann_window(h, periodic=False, dtype=x.dtype, device=x.device)[:, None] *
              torch.hann_window(w, periodic=False, dtype=x.dtype, device=x.device)[None, :])
    f = torch.fft.fft2((x - x.mean(dim=(-2, -1), keepdim=True)) * window, norm="ortho")
    return f[..., lr_grid_mask(h, w, scale).to(x.device)]


def grid_energy(sr, hr, scale: int = 4, crop_border: int = 4, reduction: str = "mean"):
    """Power of the SR's Y at the LR grid's frequencies over the HR's (see the module
    docstring), after cropping ``crop_border`` pixels per side; an HR without power there
    gives inf unless the SR has none either (then 1)."""
    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or scale < 2:
        raise ValueError(f"scale must be an int >= 2; got {scale!r}")
    ya, yb = _prepare_pair(sr, hr, crop_border, False)
    h, w = ya.shape[-2:]
    if h < 4 * scale or w < 4 * scale:
        raise ValueError(f"grid_energy needs at least {4 * scale}x{4 * scale} pixels after cropping; got {h}x{w}")
    pa, pb = ((lr_grid_spectrum(y[:, 0], scale).abs() ** 2).sum(dim=1).tolist() for y in (ya, yb))
    return _reduce([(1.0 if a == 0 else math.inf) if b == 0 else a / b for a, b in zip(pa, pb)], reduction)
