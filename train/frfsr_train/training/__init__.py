"""Two-stage feature-reuse training (paper III-A): stage 1 with the reconstruction loss,
stage 2 with L1 + perceptual + WGAN-GP on top of the frozen stage-1 net's HR feature.

Entry points: ``accelerate launch train/stage1.py --config train/configs/paper_stage1.yaml``
and ``train/stage2.py`` (``train/train.py`` runs either, as the config's ``stage`` says); in
Python :class:`Trainer` with a :class:`TrainConfig` from :func:`load_config`. Losses are in
:mod:`.losses`, the models' initialisation in :mod:`.build`.
"""
from .checkpoint import resolve_checkpoint, save_checkpoint
from .config import ConfigError, TrainConfig, load_config

__all__ = ["Trainer", "TrainConfig", "ConfigError", "load_config", "save_checkpoint", "resolve_checkpoint",
           "build_stage2_model"]


def __getattr__(name):
    # the loop pulls in Accelerate: import it on first use
    if name == "Trainer":
        from .loop import Trainer
        return Trainer
    if name == "build_stage2_model":
        from .stage2 import build_stage2_model
        return build_stage2_model
    raise AttributeError(f"module 'frfsr_train.training' has no attribute {name!r}")
