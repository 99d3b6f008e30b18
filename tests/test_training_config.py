"""One configuration system for both trainings (the restoration net's TrainConfig and the
texture encoder's EncoderConfig), the view defaults declared once, stage 2 as its own
trainer class, the encoder's learning-rate schedule and the seed streams."""
import dataclasses
import inspect
import math
from pathlib import Path

import pytest
import torch

from frfsr_train.data.views import ViewOptions, ViewPairDataset
from frfsr_train.seeds import DEGRADATION, EPOCH, mix_seed
from frfsr_train.training.config import (ConfigError, EncoderConfig, EncoderDataSection, TrainConfig, ViewsSection,
                                         load_config)

CONFIGS = Path(__file__).resolve().parents[1] / "train" / "configs"
VIEW_KEYS = [f.name for f in dataclasses.fields(ViewOptions)]


def test_encoder_configs_load_typed_with_the_training_loader():
    cfg = load_config(CONFIGS / "encoder_default.yaml", ["train.steps=7", "data.p_shuffle=0.5"], kind=EncoderConfig)
    assert isinstance(cfg, EncoderConfig) and cfg.train.steps == 7 and cfg.data.p_shuffle == 0.5
    assert cfg.train.lr == 5e-4 and cfg.model.overrides["vgg_widths"] == [32, 64, 128]
    assert cfg.output_dir == "outputs/encoder_default"
    for name in ("encoder_tiny.yaml", "encoder_robust.yaml"):
        assert isinstance(load_config(CONFIGS / name, kind=EncoderConfig), EncoderConfig)
    # the same checks and messages as the restoration net's configs
    for overrides, msg in ((["train.stepz=3"], r"unknown key\(s\) train\.stepz"),
                           (["train.lr=.inf"], r"train\.lr must be a finite number > 0"),
                           (["data.max_rotation=200"], r"data\.max_rotation must be in \[0, 180\]"),
                           (["degradation.kind=jpeg"], r"degradation\.kind must be one of bicubic, realworld"),
                           (["model.preset=huge"], r"model\.preset must be one of"),
                           (["train.batch_size=two"], r"train\.batch_size must be int")):
        with pytest.raises(ConfigError, match=msg):
            load_config(CONFIGS / "encoder_tiny.yaml", overrides, kind=EncoderConfig)
    with pytest.raises(ConfigError, match=r"data\.views\.max_rotation must be in \[0, 180\]"):
        load_config(CONFIGS / "tiny.yaml", {"data": {"views": {"max_rotation": 200}}})
    # a restoration-net config is not an encoder config
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(CONFIGS / "tiny.yaml", kind=EncoderConfig)


def test_view_defaults_are_declared_once():
    defaults = ViewOptions()
    params = inspect.signature(ViewPairDataset).parameters
    for key in VIEW_KEYS:
        value = getattr(defaults, key)
        assert params[key].default == (tuple(value) if isinstance(value, list) else value), key
        assert getattr(ViewsSection(), key) == value, key
    # the encoder changes three of them, to what its training has always used
    enc = EncoderDataSection()
    changed = {k: getattr(enc, k) for k in VIEW_KEYS if getattr(enc, k) != getattr(defaults, k)}
    assert changed == {"p_shuffle": 0.3, "shuffle_choices": [2, 4], "p_unrelated": 0.0}


def test_a_stage2_config_gets_the_stage2_trainer(tmp_path):
    from frfsr_train.training import Stage2Trainer, Trainer
    assert issubclass(Stage2Trainer, Trainer)
    cfg2 = TrainConfig.from_dict({"stage": 2, "init": {"stage1": str(tmp_path)}, "data": {"root": str(tmp_path)}})
    cfg1 = TrainConfig.from_dict({"stage": 1, "model": {"preset": "tiny"}, "data": {"root": str(tmp_path)}})
    assert type(Trainer.__new__(Trainer, cfg2)) is Stage2Trainer
    assert type(Trainer.__new__(Trainer, cfg1)) is Trainer
    stage_specific = ("_build_model", "_build_stage_parts", "_prepare", "_adversarial", "_before_generator_step",
                      "_generator_losses", "_discriminator_step", "_learning_rates", "_rank_state")
    assert all(getattr(Stage2Trainer, m) is not getattr(Trainer, m) for m in stage_specific)


@pytest.mark.parametrize("warmup,steps", [(1, 20), (5, 40), (10, 6)])
def test_encoder_schedule_is_linear_warmup_then_cosine_to_a_tenth(warmup, steps):
    from frfsr_train.training.contrastive import learning_rate_schedule
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=2e-3)
    sched = learning_rate_schedule(opt, warmup, steps)
    for step in range(steps):
        if step < warmup:
            factor = (step + 1) / warmup
        else:
            factor = 0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, steps - warmup))))
        assert opt.param_groups[0]["lr"] == pytest.approx(2e-3 * factor, rel=1e-9), step
        opt.step()
        sched.step()


def test_seed_streams_are_deterministic_and_apart():
    assert mix_seed(EPOCH, 0, 3) == mix_seed(EPOCH, 0, 3)
    assert 0 <= mix_seed(EPOCH, 0, 3) < 2 ** 63
    assert len({mix_seed(EPOCH, 0, 3), mix_seed(DEGRADATION, 0, 3), mix_seed(EPOCH, 0, 4), mix_seed(EPOCH, 1, 3),
                mix_seed(EPOCH, -1, 3)}) == 5
