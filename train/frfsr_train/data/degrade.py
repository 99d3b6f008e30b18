"""Bicubic degradation exactly as PIL computes it.

The LR images of CUFED / CUFED5 (C2-Matching protocol) are made with
``PIL.Image.resize((w // 4, h // 4), Image.BICUBIC)``, an antialiased bicubic filter
(a = -0.5, support widened by the scale factor). These helpers call PIL itself, so the
results are bit-identical to that protocol:

* 8-bit input (``uint8`` numpy array / tensor, or a ``PIL.Image``) goes through PIL's 8-bit
  RGB / L resampler and comes back as ``uint8`` of the same kind (exact match with PIL);
* floating point input goes through PIL's 32-bit float ('F' mode) resampler one channel at a
  time and comes back as float32 of the same kind, clamped to [0, 1] unless ``clamp=False``.

Accepted layouts: tensors ``(C, H, W)`` / ``(B, C, H, W)``, numpy arrays ``(H, W)`` /
``(H, W, C)``, and PIL images.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

__all__ = ["modcrop", "bicubic_resize", "bicubic_downsample", "bicubic_upsample"]


def _check_scale(scale) -> int:
    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or scale < 1:
        raise ValueError(f"scale must be a positive int; got {scale!r}")
    return int(scale)


def _hw(img) -> tuple[int, int]:
    if isinstance(img, Image.Image):
        return img.height, img.width
    if isinstance(img, torch.Tensor):
        if img.ndim not in (3, 4):
            raise ValueError(f"tensors must be (C, H, W) or (B, C, H, W); got shape {tuple(img.shape)}")
        return int(img.shape[-2]), int(img.shape[-1])
    if isinstance(img, np.ndarray):
        if img.ndim not in (2, 3):
            raise ValueError(f"numpy arrays must be (H, W) or (H, W, C); got shape {img.shape}")
        return int(img.shape[0]), int(img.shape[1])
    raise TypeError(f"expected a torch.Tensor, numpy.ndarray or PIL.Image; got {type(img).__name__}")


def modcrop(img, scale: int = 4):
    """Crop the bottom rows / right columns so that height and width are multiples of ``scale``.

    The top-left corner is kept (BasicSR's ``mod_crop``). Works on the same inputs as
    :func:`bicubic_resize` and returns the same kind of object.
    """
    scale = _check_scale(scale)
    h, w = _hw(img)
    hh, ww = h - h % scale, w - w % scale
    if hh == 0 or ww == 0:
        raise ValueError(f"image of size {h}x{w} is smaller than the scale factor {scale}")
    if (hh, ww) == (h, w):
        return img
    if isinstance(img, Image.Image):
        return img.crop((0, 0, ww, hh))
    if isinstance(img, torch.Tensor):
        return img[..., :hh, :ww]
    return img[:hh, :ww]


def _resize_hwc(arr: np.ndarray, size: tuple[int, int], clamp: bool) -> np.ndarray:
    """Resize one (H, W, C) numpy image to (h, w) = size with PIL bicubic."""
    h, w = size
    if arr.dtype == np.uint8:
        c = arr.shape[2]
        if c in (1, 3):  # one PIL image in mode L / RGB (RGBA would be alpha-premultiplied)
            src = arr[:, :, 0] if c == 1 else arr
            out = np.array(Image.fromarray(np.ascontiguousarray(src)).resize((w, h), Image.BICUBIC))
            return out.reshape(h, w, c)
        chans = [np.array(Image.fromarray(np.ascontiguousarray(arr[:, :, i])).resize((w, h), Image.BICUBIC))
                 for i in range(c)]
        return np.stack(chans, axis=2)
    chans = []
    for i in range(arr.shape[2]):
        plane = np.ascontiguousarray(arr[:, :, i], dtype=np.float32)
        chans.append(np.array(Image.fromarray(plane).resize((w, h), Image.BICUBIC), dtype=np.float32))
    out = np.stack(chans, axis=2)
    return np.clip(out, 0.0, 1.0) if clamp else out


def bicubic_resize(img, size: tuple[int, int], clamp: bool = True):
    """Resize ``img`` to ``size = (height, width)`` with PIL's antialiased bicubic filter.

    See the module docstring for accepted inputs and the uint8 / float paths. The output has
    the input's kind and layout (uint8 stays uint8, float becomes float32).
    """
    if (not isinstance(size, (tuple, list)) or len(size) != 2
            or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0 for s in size)):
        raise ValueError(f"size must be (height, width) with positive ints; got {size!r}")
    size = (int(size[0]), int(size[1]))
    if isinstance(img, Image.Image):
        if img.mode not in ("L", "RGB", "RGBA", "F"):
            img = img.convert("RGB")
        return img.resize((size[1], size[0]), Image.BICUBIC)
    if isinstance(img, torch.Tensor):
        _hw(img)
        if img.dtype != torch.uint8 and not img.is_floating_point():
            raise TypeError(f"tensor images must be uint8 or floating point; got {img.dtype}")
        batch = img.unsqueeze(0) if img.ndim == 3 else img
        outs = []
        for x in batch.detach().cpu():
            arr = x.permute(1, 2, 0).numpy()
            if arr.dtype not in (np.uint8, np.float32):
                arr = arr.astype(np.float32)
            outs.append(torch.from_numpy(_resize_hwc(arr, size, clamp)).permute(2, 0, 1))
        out = torch.stack(outs).to(img.device)
        return out[0] if img.ndim == 3 else out
    if isinstance(img, np.ndarray):
        _hw(img)
        if img.dtype != np.uint8 and not np.issubdtype(img.dtype, np.floating):
            raise TypeError(f"numpy images must be uint8 or floating point; got {img.dtype}")
        arr = img[:, :, None] if img.ndim == 2 else img
        out = _resize_hwc(arr, size, clamp)
        return out[:, :, 0] if img.ndim == 2 else out
    raise TypeError(f"expected a torch.Tensor, numpy.ndarray or PIL.Image; got {type(img).__name__}")


def bicubic_downsample(img, scale: int = 4, clamp: bool = True):
    """LR image: ``modcrop(img, scale)`` then PIL bicubic resize to ``(H // scale, W // scale)``.

    HR sizes not divisible by ``scale`` are cropped at the bottom / right first, so the LR is
    exactly ``1/scale`` of :func:`modcrop` of the input; crop the HR the same way before
    pairing it with the result. ``uint8`` / PIL inputs use PIL's 8-bit path (bit-exact with
    the C2-Matching protocol); float inputs use the per-channel 'F' path.
    """
    scale = _check_scale(scale)
    img = modcrop(img, scale)
    h, w = _hw(img)
    return bicubic_resize(img, (h // scale, w // scale), clamp=clamp)


def bicubic_upsample(img, scale: int = 4, clamp: bool = True):
    """PIL bicubic resize to ``(H * scale, W * scale)`` (the 'LR up' / 'Ref down-up' images)."""
    scale = _check_scale(scale)
    h, w = _hw(img)
    return bicubic_resize(img, (h * scale, w * scale), clamp=clamp)
