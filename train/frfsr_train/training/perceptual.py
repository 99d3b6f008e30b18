"""Perceptual losses on networks available without ImageNet weights: the model's own VGG19
Ref-extractor trunk, or the first blocks of a pretrained RRDB (e.g. the Real-ESRGAN x4plus prior).

Without ImageNet-pretrained VGG19 weights the usual perceptual loss would compare features of
a random network. A model trained from scratch with ``model.train_ref_extractor`` has a VGG19
trunk (conv1_1 .. conv3_1) whose features were learned to transfer Ref textures; a frozen copy
of it gives a texture-sensitive feature space for the stage-2 perceptual loss. A pretrained RRDB
super-resolution trunk (:class:`frfsr.models.sife.SIFE` / ``RRDBNet`` weights) gives another: its
features were learned to restore fine detail.
"""
from __future__ import annotations

import copy
import re

import torch
import torch.nn as nn

from frfsr.models.vgg import VGGTrunk
from .losses import check_criterion, feature_distance

__all__ = ["TRUNK_LAYERS", "TrunkPerceptualLoss", "RRDBPerceptualLoss", "rrdb_layer_depth", "load_rrdb_trunk"]

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


def rrdb_layer_depth(layer: str) -> int:
    """RRDB blocks run for a perceptual layer name: ``"conv_first"`` is 0, ``"block<N>"`` (the
    output of the N-th RRDB block, from 1) is N; anything else is a ValueError."""
    m = re.fullmatch(r"conv_first|block([1-9][0-9]*)", str(layer))
    if m is None:
        raise ValueError(f"an RRDB perceptual layer is conv_first or block<N> (N >= 1, e.g. block4); got {layer!r}")
    return int(m.group(1) or 0)


class RRDBPerceptualLoss(nn.Module):
    """``weight * dist(f(x), f(gt))`` with ``f`` the frozen ``conv_first`` and first blocks of a
    pretrained RRDB trunk (``rrdb``: a :class:`frfsr.models.sife.SIFE` or subclass), up to
    ``layer`` (:func:`rrdb_layer_depth`). ``criterion`` as in :class:`TrunkPerceptualLoss`."""

    def __init__(self, rrdb: nn.Module, layer: str = "block4", weight: float = 1e-2, criterion: str = "l1"):
        super().__init__()
        depth = rrdb_layer_depth(layer)
        if depth > len(rrdb.body):
            raise ValueError(f"perceptual layer {layer} needs {depth} RRDB blocks; the weights have {len(rrdb.body)}")
        self.weight, self.criterion = float(weight), check_criterion(criterion)
        self.features = nn.Sequential(copy.deepcopy(rrdb.conv_first), *copy.deepcopy(rrdb.body[:depth]))
        self.features.float().eval().requires_grad_(False)

    def train(self, mode: bool = True):            # the features stay frozen in eval mode
        return super().train(False)

    def forward(self, x: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        fx = self.features(x)
        with torch.no_grad():
            fg = self.features(gt)
        return self.weight * feature_distance(fx, fg, self.criterion)


def load_rrdb_trunk(path) -> nn.Module:
    """The RRDB trunk (``conv_first``, ``body``, ``conv_body``) of ESRGAN / RRDBNet x4 weights or
    SIFE weights (``.pth`` or ``.safetensors``, either key style; an upsampler in the file is
    left out), read by :func:`frfsr.convert.load_checkpoint` and :func:`frfsr.convert.esrgan_to_sife`."""
    from frfsr.convert import esrgan_to_sife, load_checkpoint
    from frfsr.models.sife import SIFE, RRDBNet
    state = {k.removeprefix("sife."): v for k, v in esrgan_to_sife(load_checkpoint(path))[0].items()}
    trunk = SIFE(**RRDBNet.shape_of(state))
    trunk.load_state_dict(state)
    return trunk.eval()
