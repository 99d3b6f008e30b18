"""Small synthetic datasets of smooth random textures, in the layouts :mod:`frfsr_train.data` reads.

Each scene is a random canvas (low-frequency colour field + oriented stripes + blobs, so
there is detail for a 4x model to recover); the HR is one crop of it and the Ref a
shifted crop of the same canvas, so the texture matching has real correspondences. Used
by the tests and by ``train/configs/tiny.yaml`` (``data.synthetic``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["texture", "make_cufed_train", "make_cufed5", "make_pairs"]


def texture(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A random smooth RGB texture, (h, w, 3) uint8."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    low = rng.random((4, 4, 3))
    base = np.asarray(Image.fromarray((low * 255).astype(np.uint8)).resize((w, h), Image.BICUBIC), np.float64) / 255
    img = 0.6 * base
    for _ in range(3):                      # oriented stripes of random period and colour
        theta, period = rng.uniform(0, np.pi), rng.uniform(4.0, 14.0)
        phase = np.cos(theta) * xx + np.sin(theta) * yy
        img += 0.15 * np.sin(2 * np.pi * phase / period)[..., None] * rng.uniform(-1, 1, 3)
    for _ in range(6):                      # soft blobs
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(3, max(4.0, min(h, w) / 6))
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
        img += 0.3 * blob[..., None] * rng.uniform(-1, 1, 3)
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


def _save(arr: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _scene(size: int, rng: np.random.Generator, max_shift: int):
    """(HR crop, shifted Ref crop) of one canvas, both size x size."""
    canvas = texture(size + max_shift, size + max_shift, rng)
    dy, dx = (int(v) for v in rng.integers(1, max_shift + 1, 2))
    return canvas[:size, :size], canvas[dy:dy + size, dx:dx + size]


def _make_shifted_pairs(root, num_images: int, size: int, seed: int, hr_path, ref_path) -> Path:
    """``num_images`` (HR, shifted Ref) scenes written to ``root / hr_path(i)`` and
    ``root / ref_path(i)``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for i in range(num_images):
        hr, ref = _scene(size, rng, max(4, size // 4))
        _save(hr, root / hr_path(i))
        _save(ref, root / ref_path(i))
    return root


def make_cufed_train(root, num_images: int = 8, size: int = 96, seed: int = 0) -> Path:
    """CUFED training layout: ``root/input/NNNNNN_0.png`` with ``root/ref/NNNNNN_1.png``."""
    return _make_shifted_pairs(root, num_images, size, seed, lambda i: f"input/{i:06d}_0.png",
                               lambda i: f"ref/{i:06d}_1.png")


def make_cufed5(root, num_images: int = 2, size: int = 80, seed: int = 0) -> Path:
    """CUFED5 layout: ``root/NNN_0.png`` (HR) and ``root/NNN_1..5.png`` Refs of decreasing
    relevance (shifted crops that overlap the HR less and less; level 5 is unrelated)."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for i in range(num_images):
        canvas = texture(2 * size, 2 * size, rng)
        _save(canvas[:size, :size], root / f"{i:03d}_0.png")
        for level in range(1, 5):
            off = (level - 1) * size // 4 + 2
            _save(canvas[off:off + size, off:off + size], root / f"{i:03d}_{level}.png")
        _save(texture(size, size, rng), root / f"{i:03d}_5.png")
    return root


def make_pairs(root, num_images: int = 2, size: int = 80, seed: int = 0) -> Path:
    """Pair-folder layout: ``root/hr/NAME.png`` with ``root/ref/NAME.png``."""
    return _make_shifted_pairs(root, num_images, size, seed, lambda i: f"hr/pair{i:03d}.png",
                               lambda i: f"ref/pair{i:03d}.png")
