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

import torch
import torch.nn as nn

from frfsr.config import FRFSRConfig
from frfsr.convert import convert_state_dict, detect_kind, load_checkpoint
from frfsr.models import FRFSR
from frfsr.models.restoration import STAGES

logger = logging.getLogger(__name__)

__all__ = ["build_stage1_model", "generator_param_groups", "offset_level", "GeneratorNet", "freeze"]

# parameters of the deformable-alignment offset branches (C2-Matching: names containing 'offset')
_OFFSET = re.compile(r"^restoration\.stages\.(\d+)\.align\.(offset_conv1|offset_conv2|dcn\.offset_mask)\.")
_LEVEL_NAME = {0: "large", 1: "medium", 2: "small"}
# init.<key>: (the layout of its file, the part it fills, the part's name in messages), in loading order
_INITS = {"vgg19": ("vgg19", "ref_extractor", "Ref feature extractor"),
          "encoder": ("encoder", "texture_encoder", "texture encoder"),
          "sife": ("esrgan", "sife", "SIFE")}


def freeze(module: nn.Module) -> None:
    """No gradients, eval mode."""
    module.requires_grad_(False)
    module.eval()


def _init_state(path, kind: str, model: FRFSR) -> dict[str, torch.Tensor]:
    """The checkpoint at ``path`` in frfsr's names, converted from the layout ``kind`` by
    :func:`frfsr.convert.convert_state_dict` (a file of another layout, or tensors that do not
    fit the model, raise ValueError). ``kind="encoder"`` (``init.encoder``) also takes frfsr's
    own names (``texture_encoder.*`` as train/encoder.py writes them, or a TextureEncoder state
    dict), else torchvision vgg16 weights (both trunks, before contrastive training) or
    C2-Matching's feature extractor."""
    sd = load_checkpoint(path)
    if kind == "encoder":
        if any(k.startswith("texture_encoder.") for k in sd):
            return {k: v for k, v in sd.items() if k.startswith("texture_encoder.")}
        if any(k.startswith(("lr_trunk.", "ref_trunk.")) for k in sd):
            return {"texture_encoder." + k: v for k, v in sd.items()}
        kind = "vgg16" if (detect_kind(sd) or "").startswith("vgg") else "c2matching"
    out, report = convert_state_dict(sd, kind, model)
    if report.unexpected:
        logger.warning("%s: %d tensors not recognised as %s weights are ignored (%s%s)", path,
                       len(report.unexpected), kind, ", ".join(report.unexpected[:6]),
                       ", ..." if len(report.unexpected) > 6 else "")
    return out


def _load_part(model: FRFSR, part: str, state: dict, what: str, path) -> None:
    """Load ``state`` (frfsr's names) into the model; it must hold every tensor of ``model.<part>``."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k.startswith(part + ".")]
    if missing or unexpected:
        raise ValueError(f"{what} init from {path}: missing {missing[:6]}{'...' if len(missing) > 6 else ''}, "
                         f"unexpected {unexpected[:6]}{'...' if len(unexpected) > 6 else ''}")
    logger.info("%s initialised from %s", what, path)


def build_stage1_model(cfg) -> FRFSR:
    """The stage-1 model of a :class:`~frfsr_train.training.config.TrainConfig`, initialised and
    with the texture encoder frozen, and the Ref extractor frozen unless
    ``model.train_ref_extractor`` (trainable: SIFE + restoration [+ Ref extractor])."""
    model = FRFSR(FRFSRConfig.preset(cfg.model.preset, **cfg.model.overrides))
    init = cfg.init
    if init.pretrained:
        pretrained = FRFSR.from_pretrained(init.pretrained)
        if pretrained.config.stage != 1:
            raise ValueError(f"init.pretrained={init.pretrained} is a stage-{pretrained.config.stage} model; stage 1 "
                             "needs a stage-1 one")
        if _architecture(pretrained.config, SIFE_FIELDS) != _architecture(model.config, SIFE_FIELDS):
            raise ValueError(f"init.pretrained={init.pretrained} has another architecture than model "
                             f"({_architecture(pretrained.config, ())} against {_architecture(model.config, ())})")
        if _architecture(pretrained.config, ()) == _architecture(model.config, ()):
            model.load_state_dict(pretrained.state_dict(), strict=True)
        elif not init.sife:
            raise ValueError(f"init.pretrained={init.pretrained} has another SIFE than model: set init.sife to the "
                             "SIFE weights to put in its place")
        else:
            _load_part(model, "restoration", without_sife(pretrained, model.config), "all but SIFE",
                       init.pretrained)
    for key, (kind, part, what) in _INITS.items():
        path = getattr(init, key)
        if path:
            try:
                state = _init_state(path, kind, model)
            except (ValueError, OSError) as e:            # missing, unreadable, another layout
                raise ValueError(f"init.{key}={path}: {e}") from None
            if part == "sife" and model.config.sife_upsampler and "sife.conv_up1.weight" not in state:
                raise ValueError(f"init.sife={path} holds an RRDB trunk without its x4 upsampler, and the model keeps "
                                 "SIFE's upsampler (sife_upsampler: true): give the whole RRDBNet x4's weights")
            _load_part(model, part, state, what, path)
    if not (init.pretrained or init.vgg19 or cfg.model.train_ref_extractor):
        logger.warning("the Ref feature extractor has random weights (set init.vgg19 or init.pretrained)")
    if not (init.pretrained or init.encoder):
        logger.warning("the texture encoder has random weights (set init.encoder or init.pretrained)")
    freeze(model.texture_encoder)
    freeze(model.ref_extractor)
    if cfg.model.freeze_sife:
        freeze(model.sife)
    if cfg.model.train_ref_extractor:      # learns through the differentiable warp of its features
        model.ref_extractor.requires_grad_(True).train()
    return model


SIFE_FIELDS = ("sife_blocks", "sife_feat", "sife_grow", "sife_upsampler")


def _architecture(config: FRFSRConfig, ignore: tuple[str, ...]) -> dict:
    """The config's fields that shape the model's tensors, but ``ignore``: weights trained
    with whole-pixel matching may start a run with ``subpixel_match`` and back."""
    d = config.to_dict()
    for k in ("name", "subpixel_match", *ignore):
        d.pop(k)
    return d


def without_sife(pretrained: FRFSR, config: FRFSRConfig) -> dict[str, torch.Tensor]:
    """The weights of ``pretrained`` for a model of ``config``, which differs from it only in
    its SIFE: every tensor but SIFE's; the SIFE fusion conv keeps its weights on the U-Net
    feature and starts at zero on the new SIFE's channels, and where the new SIFE has an
    upsampler (``sife_upsampler``) the U-Net's head starts at zero on the prior's image and the
    prior's share of the base (``prior_mix``) at zero (so the model starts as ``pretrained``
    without its SIFE, and learns to use the new one)."""
    state = {k: v for k, v in pretrained.state_dict().items() if not k.startswith("sife.")}
    old_c = pretrained.config.sife_feat
    for key in [k for k in state if k.endswith("sife_fuse.weight")]:
        w = state[key]
        grown = w.new_zeros(w.shape[0], config.sife_feat + w.shape[1] - old_c, *w.shape[2:])
        grown[:, config.sife_feat:] = w[:, old_c:]          # torch.cat((sife, x)): SIFE's channels first
        state[key] = grown
    if config.sife_upsampler and not pretrained.config.sife_upsampler:
        for net in ("restoration", "reuse_net"):
            w = state.get(f"{net}.head.weight")
            if w is not None:                               # torch.cat((base, prior)): the prior's channels last
                state[f"{net}.head.weight"] = torch.cat((w, w.new_zeros(w.shape[0], 3, *w.shape[2:])), dim=1)
                state[f"{net}.prior_mix"] = w.new_zeros(1, 3, 1, 1)   # the base starts as the upsampled LR
    return state


def offset_level(name: str) -> str | None:
    """'large' / 'medium' / 'small' for an offset-branch parameter name, else None."""
    m = _OFFSET.match(name)
    return _LEVEL_NAME[STAGES[int(m.group(1))][1]] if m else None


def generator_param_groups(model: nn.Module, optim) -> list[dict]:
    """Adam groups of the trainable parameters: base (``optim.lr``), the offset branches at
    ``lr_offset_large`` (HR scale), ``lr_offset_medium`` (HR/2), ``lr_offset_small`` (LR), and
    the prior image's share of the base (``prior_mix``, one number per channel) at
    ``lr_prior_mix``."""
    groups = {"base": [], "large": [], "medium": [], "small": [], "prior_mix": []}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups["prior_mix" if name.endswith(".prior_mix") else offset_level(name) or "base"].append(p)
    learning_rates = {"base": optim.lr, "large": optim.lr_offset_large, "medium": optim.lr_offset_medium,
                      "small": optim.lr_offset_small, "prior_mix": optim.lr_prior_mix}
    return [{"params": ps, "lr": learning_rates[k], "name": k} for k, ps in groups.items() if ps]


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
