"""Two-stage feature-reuse training (paper III-A): stage 1 with the reconstruction loss,
stage 2 with L1 + perceptual + WGAN-GP on top of the frozen stage-1 net's HR feature.

Entry points: ``accelerate launch train/stage1.py --config train/configs/paper_stage1.yaml``
and ``train/stage2.py`` (``train/train.py`` runs either, as the config's ``stage`` says); in
Python :class:`Trainer` with a :class:`TrainConfig` from :func:`load_config` (``Trainer(cfg)``
of a stage-2 config is a :class:`Stage2Trainer`). The texture encoder's contrastive
pre-training (``train/encoder.py``) is :mod:`.contrastive`, its config an
:class:`EncoderConfig` read by the same :func:`load_config`. Losses are in :mod:`.losses`,
the models' initialisation in :mod:`.build`.
"""
from .checkpoint import resolve_checkpoint, save_checkpoint
from .config import ConfigError, EncoderConfig, TrainConfig, load_config

__all__ = ["Trainer", "Stage2Trainer", "TrainConfig", "EncoderConfig", "ConfigError", "load_config",
           "save_checkpoint", "resolve_checkpoint", "build_stage2_model"]


def __getattr__(name):
    # the loop pulls in Accelerate: import it on first use
    if name == "Trainer":
        from .loop import Trainer
        return Trainer
    if name in ("build_stage2_model", "Stage2Trainer"):
        from . import stage2
        return getattr(stage2, name)
    raise AttributeError(f"module 'frfsr_train.training' has no attribute {name!r}")
