"""Feature alignment module (paper III-C-1, eq. 15-16).

An offset branch reads the U-Net feature, the flow-warped Ref feature and the Ref
feature at the same position, and a modulated deformable convolution over the Ref
feature, seeded by the correspondence's pre-offsets, aligns the Ref texture to the LR
grid. The Ref feature map may have any size: the deformable conv samples it at
absolute positions and writes on the grid of the U-Net feature.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import repeat

from .. import ops


def same_grid(feat: torch.Tensor, size: tuple[int, int], origin: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """``feat`` read on a grid of ``size`` whose first pixel sits at ``origin`` (y, x) of
    ``feat``, at the same pixel coordinates: cropped where it is larger, zero-filled where
    it is smaller. (The release zero-pads LR and Ref to one common size; this is that,
    without resizing anything.)"""
    h, w = size
    y0, x0 = origin
    H, W = feat.shape[-2:]
    if (H, W) == (h, w) and origin == (0, 0):
        return feat
    crop = feat[..., y0: y0 + h, x0: x0 + w]
    return F.pad(crop, (0, w - crop.shape[-1], 0, h - crop.shape[-2]))


class ModulatedDeformConv(nn.Module):
    """DCNv2 whose offsets and masks come from a separate feature (``offset_mask`` conv),
    with a precomputed per-tap offset (the correspondence's pre-offset) added to the
    learned offsets."""

    def __init__(self, channels: int, deform_groups: int, kernel_size: int = 3):
        super().__init__()
        self.groups = deform_groups
        self.kernel_size = kernel_size
        taps = kernel_size * kernel_size
        self.weight = nn.Parameter(torch.empty(channels, channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.offset_mask = nn.Conv2d(channels, 3 * deform_groups * taps, kernel_size, 1, kernel_size // 2)
        self.ops_backend: str | None = None       # the operator's backend (FRFSR.set_ops_backend)
        self.reset_parameters()

    def reset_parameters(self):
        bound = 1.0 / math.sqrt(self.weight[0].numel())
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.zeros_(self.bias)
        nn.init.zeros_(self.offset_mask.weight)
        nn.init.zeros_(self.offset_mask.bias)

    def forward(self, ref_feat: torch.Tensor, guide: torch.Tensor, pre_offset: torch.Tensor) -> torch.Tensor:
        """``ref_feat`` (B, C, H', W') any size; ``guide`` (B, C, h, w) on the output grid;
        ``pre_offset`` (B, K, h, w, 2) in (x, y) order, K = kernel taps."""
        o1, o2, mask = torch.chunk(self.offset_mask(guide), 3, dim=1)
        # (x, y) per tap -> (dy, dx) per tap, the same for every deformable group
        pre = repeat(pre_offset.flip(-1), "b k h w yx -> b (g k yx) h w", g=self.groups)
        offset = torch.cat((o1, o2), dim=1) + pre.to(o1.dtype)
        return ops.deform_conv(ref_feat, offset, torch.sigmoid(mask), self.weight, self.bias,
                               stride=1, padding=self.kernel_size // 2, dilation=1, backend=self.ops_backend)


class FeatureAlignment(nn.Module):
    """Offset branch ``conv3x3(ngf + 2C -> C) -> lrelu -> conv3x3(C -> C) -> lrelu`` on
    [U-Net feature; warped Ref feature; Ref feature], then the deformable conv over the
    Ref feature, then LeakyReLU 0.1."""

    def __init__(self, ngf: int, ref_channels: int, deform_groups: int):
        super().__init__()
        self.offset_conv1 = nn.Conv2d(ngf + 2 * ref_channels, ref_channels, 3, 1, 1)
        self.offset_conv2 = nn.Conv2d(ref_channels, ref_channels, 3, 1, 1)
        self.dcn = ModulatedDeformConv(ref_channels, deform_groups)

    def forward(self, x, warped, ref_feat, pre_offset, origin=(0, 0)):
        guide = torch.cat((x, warped, same_grid(ref_feat, x.shape[-2:], origin)), dim=1)
        guide = F.leaky_relu(self.offset_conv1(guide), 0.1)
        guide = F.leaky_relu(self.offset_conv2(guide), 0.1)
        return F.leaky_relu(self.dcn(ref_feat, guide, pre_offset), 0.1)
