"""Contrastive texture encoder (C2-Matching): two VGG16 trunks up to conv3_1, one for the
bicubic-upsampled LR and one for the Ref. Their features, L2-normalised per pixel, are
what the correspondence step matches (paper III-B)."""
from __future__ import annotations

import torch
import torch.nn as nn

from .vgg import VGGTrunk, extract_in_tiles


class TextureEncoder(nn.Module):
    def __init__(self, widths=(64, 128, 256)):
        super().__init__()
        self.lr_trunk = VGGTrunk(widths, final_relu=False)
        self.ref_trunk = VGGTrunk(widths, final_relu=False)

    def encode_lr(self, lr_up: torch.Tensor) -> torch.Tensor:
        """Texture feature of the bicubic x4 LR, at 1/4 of its size (= the LR grid)."""
        return self.lr_trunk(lr_up)[2]

    def encode_ref(self, ref: torch.Tensor, tile: int | None = None) -> torch.Tensor:
        """Texture feature of a Ref, at 1/4 of its size; ``tile``: compute it in tiles of
        that many pixels (:func:`frfsr.models.vgg.extract_in_tiles`), bounding the memory."""
        return extract_in_tiles(self.ref_trunk, ref, tile)[2]
