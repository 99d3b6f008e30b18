"""Single-image feature embedding (paper III-C, eq. 14): the RRDB trunk of ESRGAN
without its upsampler. It reconstructs the LR's own features, which the U-Net fuses at
its smallest scale. Parameter names follow BasicSR's RRDBNet so that ESRGAN weights
load directly (the upsampler keys are simply not present)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class ResidualDenseBlock(nn.Module):
    def __init__(self, feat: int = 64, grow: int = 32):
        super().__init__()
        self.conv1 = nn.Conv2d(feat, grow, 3, 1, 1)
        self.conv2 = nn.Conv2d(feat + grow, grow, 3, 1, 1)
        self.conv3 = nn.Conv2d(feat + 2 * grow, grow, 3, 1, 1)
        self.conv4 = nn.Conv2d(feat + 3 * grow, grow, 3, 1, 1)
        self.conv5 = nn.Conv2d(feat + 4 * grow, feat, 3, 1, 1)
        for m in (self.conv1, self.conv2, self.conv3, self.conv4, self.conv5):
            nn.init.kaiming_normal_(m.weight, a=0, mode="fan_in")
            m.weight.data.mul_(0.1)
            nn.init.zeros_(m.bias)

    def forward(self, x):
        feats = [x]
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            feats.append(F.leaky_relu(conv(torch.cat(feats, 1)), 0.2))
        return self.conv5(torch.cat(feats, 1)) * 0.2 + x


class RRDB(nn.Module):
    def __init__(self, feat: int = 64, grow: int = 32):
        super().__init__()
        self.rdb1 = ResidualDenseBlock(feat, grow)
        self.rdb2 = ResidualDenseBlock(feat, grow)
        self.rdb3 = ResidualDenseBlock(feat, grow)

    def forward(self, x):
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x


class SIFE(nn.Module):
    """RRDB trunk: conv_first -> n RRDB -> conv_body, plus the long skip. LR in, a
    ``feat``-channel feature at LR size out."""

    def __init__(self, n_blocks: int = 23, feat: int = 64, grow: int = 32):
        super().__init__()
        self.conv_first = nn.Conv2d(3, feat, 3, 1, 1)
        self.body = nn.Sequential(*[RRDB(feat, grow) for _ in range(n_blocks)])
        self.conv_body = nn.Conv2d(feat, feat, 3, 1, 1)

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        feat = self.conv_first(lr)
        return feat + self.conv_body(self.body(feat))
