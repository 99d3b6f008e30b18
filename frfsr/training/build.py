"""Models and optimisers for the two training stages.

* :func:`build_stage1_model`: an :class:`FRFSR` from a preset, optionally initialised from a
  whole export, ESRGAN weights (SIFE), a contrastive texture encoder and torchvision VGG19
  weights (Ref extractor); the texture encoder and the extractor are frozen.
* :func:`build_stage2_model` (in :mod:`.stage2`): the feature-reuse model from a stage-1 export.
* :func:`generator_param_groups`: C2-Matching's Adam groups, the deformable-alignment offset
  branches at their own learning rates.
* :class:`GeneratorNet`: match -> align -> restore as one ``forward`` (what DDP wraps).
"""
from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn as nn

from ..config import FRFSRConfig
from ..models import FRFSR
from ..models.restoration import STAGES

logger = logging.getLogger(__name__)

__all__ = ["load_weights_file", "build_stage1_model", "generator_param_groups", "offset_level",
           "GeneratorNet", "freeze"]

# parameters of the deformable-alignment offset branches (C2-Matching: names containing 'offset')
_OFFSET = re.compile(r"^restoration\.stages\.(\d+)\.align\.(offset_conv1|offset_conv2|dcn\.offset_mask)\.")
_LEVEL_NAME = {0: "large", 1: "medium", 2: "small"}
# torchvision vgg16 / vgg19 `features` indices of conv1_1 .. conv3_1 (the same in both)
_TV_VGG = {"conv1_1": 0, "conv1_2": 2, "conv2_1": 5, "conv2_2": 7, "conv3_1": 10}


def load_weights_file(path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a torch file (``weights_only``); BasicSR's
    ``{'params': ...}`` / ``{'params_ema': ...}`` / ``{'state_dict': ...}`` wrappers are opened."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"weights file not found: {p}")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(p))
    sd = torch.load(str(p), map_location="cpu", weights_only=True)
    for key in ("params_ema", "params", "state_dict", "model"):
        if isinstance(sd, Mapping) and isinstance(sd.get(key), Mapping):
            sd = sd[key]
            break
    if not isinstance(sd, Mapping):
        raise ValueError(f"{p} does not hold a state dict")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}


def freeze(module: nn.Module) -> None:
    """No gradients, eval mode."""
    module.requires_grad_(False)
    module.eval()


def _load_part(model: FRFSR, prefix: str, state: dict, what: str) -> None:
    target = getattr(model, prefix.rstrip("."))
    missing, unexpected = target.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{what}: missing {missing[:6]}{'...' if len(missing) > 6 else ''}, "
                         f"unexpected {unexpected[:6]}{'...' if len(unexpected) > 6 else ''}")


def _init_sife(model: FRFSR, path) -> None:
    try:
        from ..convert import esrgan_to_sife
    except ImportError:
        logger.warning("init.sife=%s ignored: frfsr.convert.esrgan_to_sife is not available in this version; "
                       "SIFE keeps its random initialisation", path)
        return
    out = esrgan_to_sife(load_weights_file(path))
    sd = out[0] if isinstance(out, tuple) else out
    sd = {k[len("sife."):] if k.startswith("sife.") else k: v for k, v in sd.items()}
    _load_part(model, "sife.", sd, f"SIFE init from {path}")
    logger.info("SIFE initialised from %s", path)


def _init_encoder(model: FRFSR, path) -> None:
    sd = load_weights_file(path)
    if any(k.startswith(("lr_trunk.", "ref_trunk.")) for k in sd):
        enc = sd
    elif "features.0.weight" in sd:             # torchvision vgg16: both trunks (before contrastive training)
        enc = {f"{trunk}.{name}.{kind}": sd[f"features.{idx}.{kind}"]
               for trunk in ("lr_trunk", "ref_trunk") for name, idx in _TV_VGG.items() for kind in ("weight", "bias")}
    else:
        from ..convert import official_to_frfsr
        conv, _ = official_to_frfsr(sd)
        if not any(k.startswith("texture_encoder.") for k in conv):
            conv = sd
        enc = {k[len("texture_encoder."):]: v for k, v in conv.items() if k.startswith("texture_encoder.")}
    _load_part(model, "texture_encoder.", enc, f"texture encoder init from {path}")
    logger.info("texture encoder initialised from %s", path)


def _init_vgg19(model: FRFSR, path) -> None:
    sd = load_weights_file(path)
    vgg = {}
    for name, idx in _TV_VGG.items():
        for kind in ("weight", "bias"):
            key = f"features.{idx}.{kind}"
            if key not in sd:
                raise ValueError(f"{path} is not a torchvision vgg19 state dict (no {key})")
            vgg[f"vgg.{name}.{kind}"] = sd[key]
    _load_part(model, "ref_extractor.", vgg, f"VGG19 init from {path}")
    logger.info("Ref feature extractor initialised from %s", path)


def build_stage1_model(cfg) -> FRFSR:
    """The stage-1 model of a :class:`~frfsr.training.config.TrainConfig`, initialised and
    with the texture encoder frozen, and the Ref extractor frozen unless
    ``model.train_ref_extractor`` (trainable: SIFE + restoration [+ Ref extractor])."""
    model = FRFSR(FRFSRConfig.preset(cfg.model.preset, **cfg.model.overrides))
    init = cfg.init
    if init.pretrained:
        pretrained = FRFSR.from_pretrained(init.pretrained)
        if pretrained.config.stage != 1:
            raise ValueError(f"init.pretrained={init.pretrained} is a stage-{pretrained.config.stage} model; stage 1 "
                             "needs a stage-1 one")
        model.load_state_dict(pretrained.state_dict(), strict=True)
    if init.vgg19:
        _init_vgg19(model, init.vgg19)
    if init.encoder:
        _init_encoder(model, init.encoder)
    if init.sife:
        _init_sife(model, init.sife)
    if not (init.pretrained or init.vgg19 or cfg.model.train_ref_extractor):
        logger.warning("the Ref feature extractor has random weights (set init.vgg19 or init.pretrained)")
    if not (init.pretrained or init.encoder):
        logger.warning("the texture encoder has random weights (set init.encoder or init.pretrained)")
    freeze(model.texture_encoder)
    freeze(model.ref_extractor)
    if cfg.model.train_ref_extractor:      # learns through the differentiable warp of its features
        model.ref_extractor.requires_grad_(True).train()
    return model


def offset_level(name: str) -> str | None:
    """'large' / 'medium' / 'small' for an offset-branch parameter name, else None."""
    m = _OFFSET.match(name)
    return _LEVEL_NAME[STAGES[int(m.group(1))][1]] if m else None


def generator_param_groups(model: nn.Module, optim) -> list[dict]:
    """Adam groups of the trainable parameters: base (``optim.lr``) and the offset branches at
    ``lr_offset_large`` (HR scale), ``lr_offset_medium`` (HR/2), ``lr_offset_small`` (LR)."""
    groups = {"base": [], "large": [], "medium": [], "small": []}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups[offset_level(name) or "base"].append(p)
    lrs = {"base": optim.lr, "large": optim.lr_offset_large, "medium": optim.lr_offset_medium,
           "small": optim.lr_offset_small}
    return [{"params": ps, "lr": lrs[k], "name": k} for k, ps in groups.items() if ps]


class GeneratorNet(nn.Module):
    """The SR generator of one training step: ``forward(lr, ref) -> sr``. A stage-2 model
    computes the frozen stage-1 net's HR feature inside ``restore`` and fuses it. Frozen
    sub-modules stay in eval mode whatever ``train()`` is called with."""

    def __init__(self, model: FRFSR):
        super().__init__()
        self.model = model

    def train(self, mode: bool = True):
        super().train(mode)
        for name, child in self.model.named_children():
            if not any(p.requires_grad for p in child.parameters()):
                child.eval()
        return self

    def forward(self, lr: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        m = self.model
        textures = m.align(m.match(lr, ref))
        return m.restore(lr, textures).sr
