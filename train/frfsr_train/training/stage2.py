"""Stage 2 (paper III-A, eq. 1-4): assemble the feature-reuse model from a stage-1 export.

The stage-1 restoration net becomes the frozen ``reuse_net`` whose 64-channel HR feature
the stage-2 net fuses; the texture encoder, the Ref extractor and the SIFE are taken from
stage 1 and frozen too. Only ``model.restoration`` (the stage-2 net) is trained.
"""
from __future__ import annotations

import dataclasses

from frfsr.models import FRFSR
from .build import freeze

__all__ = ["build_stage2_model", "trainable_names"]


def build_stage2_model(stage1_dir, from_stage1: bool = True, reuse: bool = True) -> FRFSR:
    """A stage-2 :class:`FRFSR` from the stage-1 export in ``stage1_dir``.

    ``reuse=False`` (the ablation of feature reuse): a plain stage-1-architecture model with
    the stage-1 weights, everything but ``restoration`` frozen, to be trained with the
    stage-2 losses like the reuse model.

    ``from_stage1`` also copies the stage-1 restoration weights into the stage-2 net where
    names and shapes match (the reuse fusion convs ``reuse_down`` / ``reuse_up`` keep their
    fresh initialisation)."""
    stage1 = FRFSR.from_pretrained(stage1_dir)
    cfg1, state1 = stage1.config, stage1.state_dict()
    if cfg1.stage != 1:
        raise ValueError(f"{stage1_dir} holds a stage-{cfg1.stage} model; stage 2 is built from a stage-1 export")
    if not reuse:
        model = FRFSR(cfg1)
        model.load_state_dict(state1, strict=True)
        for name, child in model.named_children():
            if name != "restoration":
                freeze(child)
        return model
    model = FRFSR(dataclasses.replace(cfg1, stage=2))
    own = model.state_dict()
    state = {}
    for k, v in state1.items():
        if k.startswith("restoration."):
            state["reuse_net." + k[len("restoration."):]] = v
            if from_stage1 and k in own and own[k].shape == v.shape:
                state[k] = v
        else:
            state[k] = v
    missing, unexpected = model.load_state_dict(state, strict=False)
    bad = [k for k in missing if not k.startswith("restoration.")
           or (from_stage1 and not k.startswith("restoration.reuse_"))]
    if bad or unexpected:
        raise ValueError(f"{stage1_dir} does not match its config: missing {bad[:6]}, unexpected {unexpected[:6]}")
    for name, child in model.named_children():
        if name != "restoration":
            freeze(child)
    return model


def trainable_names(model) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]
