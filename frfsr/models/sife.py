"""Single-image feature embedding (paper III-C, eq. 14): the RRDB trunk of ESRGAN. It
reconstructs the LR's own features, which the U-Net fuses at its smallest scale. A SIFE
may keep ESRGAN's x4 upsampler too (``FRFSRConfig.sife_upsampler``): its 4x image is then
an input of the U-Net's head beside the upsampled LR. Parameter names follow BasicSR's
RRDBNet so that ESRGAN weights load directly."""
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
    ``feat``-channel feature at LR size out. With ``upsampler=True`` it also holds ESRGAN's
    x4 upsampler (two nearest x2 steps, each followed by a 3x3 conv, then ``conv_hr`` and
    ``conv_last``), which :meth:`upsample` runs on that feature: a pretrained RRDB x4 net's
    whole image as well as its trunk."""

    def __init__(self, n_blocks: int = 23, feat: int = 64, grow: int = 32, upsampler: bool = False):
        super().__init__()
        self.conv_first = nn.Conv2d(3, feat, 3, 1, 1)
        self.body = nn.Sequential(*[RRDB(feat, grow) for _ in range(n_blocks)])
        self.conv_body = nn.Conv2d(feat, feat, 3, 1, 1)
        self.has_upsampler = upsampler
        if upsampler:
            self.conv_up1 = nn.Conv2d(feat, feat, 3, 1, 1)
            self.conv_up2 = nn.Conv2d(feat, feat, 3, 1, 1)
            self.conv_hr = nn.Conv2d(feat, feat, 3, 1, 1)
            self.conv_last = nn.Conv2d(feat, 3, 3, 1, 1)

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        feat = self.conv_first(lr)
        return feat + self.conv_body(self.body(feat))

    trunk = forward

    def upsample(self, feat: torch.Tensor) -> torch.Tensor:
        """The 4x image of the upsampler from the trunk's feature (not clamped)."""
        if not self.has_upsampler:
            raise ValueError("this SIFE has no upsampler (built with upsampler=False)")
        x = feat
        for conv in (self.conv_up1, self.conv_up2):
            x = F.leaky_relu(conv(F.interpolate(x, scale_factor=2, mode="nearest")), 0.2)
        return self.conv_last(F.leaky_relu(self.conv_hr(x), 0.2))


class RRDBNet(SIFE):
    """ESRGAN's whole RRDBNet x4: the SIFE trunk plus its upsampler. Parameter names are
    BasicSR's, so ESRGAN / Real-ESRGAN x4 weights load with ``load_state_dict`` and the
    trunk's keys are exactly :class:`SIFE`'s. LR in [0, 1], 4x image out (not clamped)."""

    def __init__(self, n_blocks: int = 23, feat: int = 64, grow: int = 32):
        super().__init__(n_blocks, feat, grow, upsampler=True)

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        return self.upsample(self.trunk(lr))

    @classmethod
    def from_state_dict(cls, state_dict: dict) -> "RRDBNet":
        """An RRDBNet of the shape of ``state_dict`` (BasicSR names) holding it, in eval mode."""
        net = cls(**cls.shape_of(state_dict))
        net.load_state_dict(state_dict)
        return net.eval()

    @staticmethod
    def shape_of(state_dict: dict) -> dict:
        """``n_blocks``, ``feat`` and ``grow`` of RRDBNet / SIFE weights (BasicSR names)."""
        blocks = {int(k.split(".")[1]) for k in state_dict if k.startswith("body.")}
        if "conv_first.weight" not in state_dict or not blocks:
            raise ValueError("not RRDBNet weights: expected conv_first.weight and body.N.rdbK.convJ keys")
        return dict(n_blocks=max(blocks) + 1, feat=int(state_dict["conv_first.weight"].shape[0]),
                    grow=int(state_dict["body.0.rdb1.conv1.weight"].shape[0]))
