"""VGG trunks up to conv3_1, and the frozen VGG19 reference-feature extractor.

VGG16 and VGG19 agree up to conv3_1 (conv1_1, conv1_2, pool, conv2_1, conv2_2, pool,
conv3_1), so one trunk class serves the texture encoder (two VGG16 trunks) and the
reference extractor (VGG19 relu1_1, relu2_1, relu3_1).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LAYERS = ("conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1")
TILE_HALO = 16              # input pixels around a tile: > the trunk's 10-pixel reach, on the 4-pixel pooling grid


class VGGTrunk(nn.Module):
    """conv1_1 .. conv3_1 of VGG on ImageNet-normalised [0, 1] RGB input.

    ``forward`` returns ``(relu1_1, relu2_1, out3)`` where ``out3`` is relu3_1, or the
    pre-activation conv3_1 when ``final_relu=False`` (the texture encoder's output).
    """

    def __init__(self, widths=(64, 128, 256), final_relu: bool = True):
        super().__init__()
        c1, c2, c3 = widths
        self.final_relu = final_relu
        self.conv1_1 = nn.Conv2d(3, c1, 3, padding=1)
        self.conv1_2 = nn.Conv2d(c1, c1, 3, padding=1)
        self.conv2_1 = nn.Conv2d(c1, c2, 3, padding=1)
        self.conv2_2 = nn.Conv2d(c2, c2, 3, padding=1)
        self.conv3_1 = nn.Conv2d(c2, c3, 3, padding=1)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, img: torch.Tensor):
        x = (img - self.mean.to(img.dtype)) / self.std.to(img.dtype)
        r1 = F.relu(self.conv1_1(x))
        x = F.relu(self.conv1_2(r1))
        x = F.max_pool2d(x, 2)
        r2 = F.relu(self.conv2_1(x))
        x = F.relu(self.conv2_2(r2))
        x = F.max_pool2d(x, 2)
        x = self.conv3_1(x)
        return r1, r2, (F.relu(x) if self.final_relu else x)


class ReferenceFeatureExtractor(nn.Module):
    """Frozen VGG19 features of the Ref at three scales: relu1_1 (full size),
    relu2_1 (1/2) and relu3_1 (1/4). Used for texture transfer (paper eq. 10-13)."""

    def __init__(self, widths=(64, 128, 256)):
        super().__init__()
        self.vgg = VGGTrunk(widths, final_relu=True)
        self.requires_grad_(False)

    @property
    def channels(self) -> tuple[int, int, int]:
        return (self.vgg.conv1_1.out_channels, self.vgg.conv2_1.out_channels, self.vgg.conv3_1.out_channels)

    def forward(self, ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.vgg(ref)


def run_tiled(trunk, img: torch.Tensor, tile: int | None):
    """``trunk(img)`` (a :class:`VGGTrunk`, or a module calling one, returning the three
    maps at full, 1/2 and 1/4 size) computed in square tiles of ``tile`` pixels (a multiple
    of 4) with a margin of :data:`TILE_HALO` pixels, so that the intermediates are bounded
    by the tile while the outputs cover the whole image. Every output pixel sees the same
    inputs as in the whole-image call (the trunk reaches 10 pixels; tiles start on the
    pooling grid), so the results equal it up to float rounding. The trunk is called as a
    module, so a compiled trunk stays compiled."""
    h, w = img.shape[-2:]
    if tile is None or (h <= tile and w <= tile):
        return trunk(img)
    if tile < 4 * TILE_HALO or tile % 4:
        raise ValueError(f"tile must be a multiple of 4 and at least {4 * TILE_HALO}, got {tile}")
    outs = None
    for y0 in range(0, h, tile):
        for x0 in range(0, w, tile):
            y1, x1 = min(y0 + tile, h), min(x0 + tile, w)
            ya, xa = max(0, y0 - TILE_HALO), max(0, x0 - TILE_HALO)
            feats = trunk(img[..., ya: min(h, y1 + TILE_HALO), xa: min(w, x1 + TILE_HALO)])
            if outs is None:
                outs = [f.new_empty(*f.shape[:2], h // s, w // s) for f, s in zip(feats, (1, 2, 4))]
            for out, f, s in zip(outs, feats, (1, 2, 4)):
                ty, tx = y1 // s - y0 // s, x1 // s - x0 // s
                oy, ox = (y0 - ya) // s, (x0 - xa) // s
                out[..., y0 // s: y0 // s + ty, x0 // s: x0 // s + tx] = f[..., oy: oy + ty, ox: ox + tx]
            del feats
    return tuple(outs)
