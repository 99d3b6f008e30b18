"""The 3-scale restoration U-Net (paper III-C, Fig. 1).

Five stages, built and run by one loop: down at full HR size (relu1_1 textures), down
at HR/2 (relu2_1), the bottom at LR size (relu3_1, where the SIFE feature is fused), up
at HR/2 and up at HR. Every stage aligns its Ref texture (FAM), fuses it with the U-Net
feature (head conv), aggregates with a dynamic residual block (TAAM) and ends in its
transition: a stride-2 conv going down, conv + PixelShuffle going up, the output convs
at the end.

A stage-2 net (feature reuse, paper eq. 3 and 18) also takes the stage-1 net's
64-channel HR feature F_SR^rec and fuses it at both full-size stages. Where SIFE keeps
its x4 upsampler (a pretrained prior), the head takes the prior's 4x image beside the
upsampled LR, and the base the output is added to mixes the two (``prior_mix``).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .aggregation import DynamicResidualBlock
from .alignment import FeatureAlignment, ModulatedDeformConv
from .correspondence import SCALES

# (Ref feature level, transition) of each stage: level 0 = relu1_1 (HR), 1 = relu2_1 (HR/2), 2 = relu3_1 (LR)
STAGES = (("down", 0), ("down", 1), ("bottom", 2), ("up", 1), ("out", 0))


def _lrelu(x):
    return F.leaky_relu(x, 0.1)


class ScaleStage(nn.Module):
    def __init__(self, ngf: int, ref_channels: int, cfg, transition: str):
        super().__init__()
        self.align = FeatureAlignment(ngf, ref_channels, cfg.deform_groups)
        self.head = nn.Conv2d(ngf + ref_channels, ngf, 3, 1, 1)
        self.drb = DynamicResidualBlock(ngf, cfg.n_ddf_blocks, cfg.n_res_blocks, cfg.ddf_se_ratio, cfg.ddf_filter_norm)
        if transition == "down":
            self.tail = nn.Conv2d(ngf, ngf, 3, 2, 1)
        elif transition in ("bottom", "up"):
            self.tail = nn.Sequential(nn.Conv2d(ngf, 4 * ngf, 3, 1, 1), nn.PixelShuffle(2), nn.LeakyReLU(0.1))
        else:
            self.tail = nn.Sequential(nn.Conv2d(ngf, ngf // 2, 3, 1, 1), nn.LeakyReLU(0.1), nn.Conv2d(ngf // 2, 3, 3, 1, 1))

    def forward(self, x, head_in, warped, ref_feat, pre_offset, origin=(0, 0)):
        """``x``: the stage's U-Net feature (offset guide and residual skip); ``head_in``: what
        the head fuses with the aligned texture; ``origin``: where the grid of ``x`` starts on
        the Ref feature's coordinates (non-zero for a tile). Returns (feature before the
        tail, tail output)."""
        aligned = self.align(x, warped, ref_feat, pre_offset, origin)
        h = _lrelu(self.head(torch.cat((head_in, aligned), dim=1)))
        h = self.drb(h, x)
        return h, self.tail(h)


class RestorationNet(nn.Module):
    def __init__(self, cfg, ref_channels=(64, 128, 256), reuse: bool = False):
        super().__init__()
        ngf = cfg.ngf
        self.reuse = reuse
        self.takes_prior = cfg.sife_upsampler      # the head also takes SIFE's 4x image
        self.head = nn.Conv2d(6 if self.takes_prior else 3, ngf, 3, 1, 1)
        if self.takes_prior:                       # per-channel share of the prior's image in the base
            self.prior_mix = nn.Parameter(torch.ones(1, 3, 1, 1))
        self.stages = nn.ModuleList(ScaleStage(ngf, ref_channels[level], cfg, kind) for kind, level in STAGES)
        self.sife_fuse = nn.Conv2d(ngf + cfg.sife_feat, ngf, 3, 1, 1)
        if reuse:
            self.reuse_down = nn.Conv2d(2 * ngf, ngf, 3, 1, 1)
            self.reuse_up = nn.Conv2d(2 * ngf, ngf, 3, 1, 1)
        self.reset_parameters()

    def reset_parameters(self):
        """The release's init: every conv N(0, 0.02) with zero bias, the deformable convs'
        own weights uniform(+-1/sqrt(fan_in)), their offset/mask convs zero."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
                nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, ModulatedDeformConv):
                m.reset_parameters()

    def forward(self, lr, sife, textures, reuse_feature=None, prior=None):
        """Returns (SR image, ``ngf``-channel HR feature before the output convs): the net's
        output added to its base, the bilinear upsampled LR. ``prior``: the 4x image of SIFE's
        upsampler (required where the config has ``sife_upsampler``, refused otherwise), which
        the head takes beside the upsampled LR and which makes the share ``prior_mix`` (per
        channel, learnt; 1 in a new net) of the base."""
        if self.reuse and reuse_feature is None:
            raise ValueError("this is a stage-2 (feature reuse) net: pass the stage-1 net's HR feature as reuse_feature")
        if (prior is not None) != self.takes_prior:
            raise ValueError("this net's head takes SIFE's 4x image (sife_upsampler): pass it as prior" if self.takes_prior
                             else "this net has no input for a prior image (its config has sife_upsampler false)")
        base = F.interpolate(lr, scale_factor=4, mode="bilinear", align_corners=False)
        x = self.head(base if prior is None else torch.cat((base, prior), dim=1))
        if prior is not None:
            base = base + self.prior_mix * (prior - base)
        skips = []
        oy, ox = textures.origin
        for (kind, level), stage in zip(STAGES, self.stages):
            f = SCALES[level]
            args = (textures.warped[level], textures.ref_feats[level], textures.pre_offsets[level], (oy * f, ox * f))
            if kind == "down":
                head_in = x
                if self.reuse and level == 0:
                    head_in = _lrelu(self.reuse_down(torch.cat((reuse_feature, x), dim=1)))
                skips.append(x)
            elif kind == "bottom":
                head_in = _lrelu(self.sife_fuse(torch.cat((sife, x), dim=1)))
            else:
                head_in = x
                if self.reuse and kind == "out":
                    head_in = _lrelu(self.reuse_up(torch.cat((reuse_feature, x), dim=1)))
                head_in = head_in + skips.pop()
            feature, x = stage(x, head_in, *args)
        return x + base, feature
