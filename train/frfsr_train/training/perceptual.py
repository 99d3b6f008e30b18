"""Perceptual loss on the model's own VGG19 Ref-extractor trunk (no ImageNet weights needed).

Without ImageNet-pretrained VGG19 weights the usual perceptual loss would compare features of
a random network. A model trained from scratch with ``model.train_ref_extractor`` has a VGG19
trunk (conv1_1 .. conv3_1) whose features were learned to transfer Ref textures; a frozen copy
of it gives a texture-sensitive feature space for the stage-2 perceptual loss.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

from frfsr.models.vgg import VGGTrunk
from .losses import check_criterion, feature_distance

__all__ = ["TRUNK_LAYERS", "TrunkPerceptualLoss"]

#: the trunk's outputs, in the order :class:`frfsr.models.vgg.VGGTrunk` returns them
TRUNK_LAYERS = VGGTrunk.OUTPUTS


class TrunkPerceptualLoss(nn.Module):
    """``weight * sum_l w_l * dist(trunk(x)_l, trunk(gt)_l)`` on a frozen copy of a
    :class:`~frfsr.models.vgg.VGGTrunk` (e.g. ``model.ref_extractor.vgg``).

    ``layer``: a name of :data:`TRUNK_LAYERS` or ``{name: weight}``; ``criterion``: ``'l1'``,
    ``'l2'`` (means) or ``'fro'`` (Frobenius norm of the whole difference, BasicSR style)."""

    def __init__(self, trunk: nn.Module, layer="relu3_1", weight: float = 1e-2, criterion: str = "l1"):
        super().__init__()
        layers = {layer: 1.0} if isinstance(layer, str) else dict(layer)
        unknown = [k for k in layers if k not in TRUNK_LAYERS]
        if unknown or not layers:
            raise ValueError(f"perceptual layers of the Ref-extractor trunk must be among {TRUNK_LAYERS}; got {unknown or layers}")
        self.layer_weights = {k: float(v) for k, v in layers.items()}
        self.weight, self.criterion = float(weight), check_criterion(criterion)
        self.trunk = copy.deepcopy(trunk).float().eval().requires_grad_(False)

    def train(self, mode: bool = True):            # the trunk stays frozen in eval mode
        return super().train(False)

    def forward(self, x: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        fx = dict(zip(TRUNK_LAYERS, self.trunk(x)))
        with torch.no_grad():
            fg = dict(zip(TRUNK_LAYERS, self.trunk(gt)))
        return self.weight * sum(w * feature_distance(fx[k], fg[k], self.criterion)
                                 for k, w in self.layer_weights.items())
