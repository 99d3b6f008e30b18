"""Texture-adaptive aggregation (paper III-C-2, eq. 17-21): the dynamic residual block
is a stack of DDF residual blocks followed by residual blocks with enhanced spatial
attention (ESA)."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import ops


class DDF(nn.Module):
    """Decoupled dynamic filter (kernel 3, 'mul' combine, one head).

    spatial filter: conv1x1(C -> k*k) per pixel; channel filter: GAP -> conv1x1(C -> rC)
    -> ReLU -> conv1x1(rC -> k*k*C); out[c, p] = sum_k spatial[k, p] channel[c, k]
    x[c, p + d_k]. ``filter_norm`` applies the DDF paper's filter normalisation (paper
    eq. 20); the authors' release runs without it.
    """

    def __init__(self, channels: int, kernel_size: int = 3, se_ratio: float = 0.2, filter_norm: bool = False):
        super().__init__()
        self.kernel_size = kernel_size
        self.filter_norm = filter_norm
        self.ops_backend: str | None = None       # the operator's backend (FRFSR.set_ops_backend)
        taps = kernel_size * kernel_size
        mid = max(int(channels * se_ratio), 1)
        self.spatial = nn.Conv2d(channels, taps, 1)
        self.channel_reduce = nn.Conv2d(channels, mid, 1)
        self.channel_expand = nn.Conv2d(mid, channels * taps, 1)

    def _norm(self, f: torch.Tensor, dim: int) -> torch.Tensor:
        gain = math.sqrt(2.0) / self.kernel_size           # ReLU gain / k, as in the DDF paper
        f = f - f.mean(dim=dim, keepdim=True)
        return f / (f.std(dim=dim, keepdim=True) + 1e-10) * gain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        taps = self.kernel_size ** 2
        spatial = self.spatial(x)                                                     # B, k*k, H, W
        pooled = x.mean(dim=(2, 3), keepdim=True)
        channel = self.channel_expand(F.relu(self.channel_reduce(pooled))).view(b, c, taps)
        if self.filter_norm:
            spatial, channel = self._norm(spatial, 1), self._norm(channel, 2)
        return ops.ddf(x, channel, spatial, kernel_size=self.kernel_size, backend=self.ops_backend)


class DDFResBlock(nn.Module):
    """x + DDF(relu(DDF(x)))."""

    def __init__(self, channels: int, se_ratio: float = 0.2, filter_norm: bool = False):
        super().__init__()
        self.ddf1 = DDF(channels, 3, se_ratio, filter_norm)
        self.ddf2 = DDF(channels, 3, se_ratio, filter_norm)

    def forward(self, x):
        return x + self.ddf2(F.relu(self.ddf1(x)))


class ESA(nn.Module):
    """Enhanced spatial attention: a coarse mask from a strided, max-pooled branch."""

    def __init__(self, channels: int):
        super().__init__()
        f = channels // 4
        self.conv1 = nn.Conv2d(channels, f, 1)
        self.conv_f = nn.Conv2d(f, f, 1)
        self.conv_max = nn.Conv2d(f, f, 3, padding=1)
        self.conv2 = nn.Conv2d(f, f, 3, stride=2, padding=0)
        self.conv3 = nn.Conv2d(f, f, 3, padding=1)
        self.conv3_ = nn.Conv2d(f, f, 3, padding=1)
        self.conv4 = nn.Conv2d(f, channels, 1)

    def forward(self, x):
        c1_ = self.conv1(x)
        v = F.max_pool2d(self.conv2(c1_), kernel_size=7, stride=3)
        v = F.relu(self.conv3(F.relu(self.conv_max(v))))
        v = F.interpolate(self.conv3_(v), x.shape[-2:], mode="bilinear", align_corners=False)
        return x * torch.sigmoid(self.conv4(v + self.conv_f(c1_)))


class ResBlockESA(nn.Module):
    """x + ESA(conv(relu(conv(x))))."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, 1, 1)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1)
        self.esa = ESA(channels)

    def forward(self, x):
        return x + self.esa(self.conv2(F.relu(self.conv1(x))))


class DynamicResidualBlock(nn.Module):
    """DRB of one scale: DDF residual blocks (+ skip), then ESA residual blocks (+ skip)."""

    def __init__(self, channels: int, n_ddf: int, n_res: int, se_ratio: float = 0.2, filter_norm: bool = False):
        super().__init__()
        self.ddf_blocks = nn.Sequential(*[DDFResBlock(channels, se_ratio, filter_norm) for _ in range(n_ddf)])
        self.res_blocks = nn.Sequential(*[ResBlockESA(channels) for _ in range(n_res)])

    def forward(self, h, skip):
        h = self.ddf_blocks(h) + skip
        return self.res_blocks(h) + skip
