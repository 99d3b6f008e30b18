"""Training configuration: a YAML file -> nested dataclasses, validated with clear errors.

One system for both trainings: :class:`TrainConfig` (the restoration net, either stage:
sections ``stage``, ``model``, ``data``, ``degradation``, ``optim``, ``loss``, ``init`` and
``train``; ``train/configs/paper_stage1.yaml`` comments every key) and :class:`EncoderConfig`
(the texture encoder's contrastive training: ``model``, ``data``, ``degradation``, ``train``,
``eval``; ``train/configs/encoder_default.yaml``). :func:`load_config` reads either. Unknown
keys, wrong types and inconsistent values raise :class:`ConfigError` naming the key and the
file. Command-line overrides use dotted keys: ``train.max_steps=10``, values parsed as YAML.

Numbers written like ``1e-4`` (which YAML 1.1 reads as a string) are accepted for float
fields. Names: in a config key ``lr`` is a learning rate (``optim.lr``, ``train.lr``: the
keys users write); in code, ``lr`` is the low-resolution image and a learning rate is
``learning_rate``.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from frfsr.ops.custom_ops import BACKENDS as OPS_BACKENDS

from ..data.views import ViewOptions

__all__ = ["ConfigError", "ModelSection", "SyntheticSection", "ViewsSection", "DataSection", "DegradationSection",
           "OptimSection", "LossSection", "InitSection", "TrainSection", "TrainConfig", "EncoderModelSection",
           "EncoderDataSection", "EncoderTrainSection", "EncoderEvalSection", "EncoderConfig", "load_config",
           "config_from_command_line", "parse_overrides", "DEGRADATION_KINDS"]

#: Values of ``degradation.kind``.
DEGRADATION_KINDS = ("bicubic", "realworld")


class ConfigError(ValueError):
    """A training configuration is malformed or inconsistent."""


@dataclass
class ModelSection:
    """Architecture: an :class:`frfsr.FRFSRConfig` preset plus field overrides (stage 1 only;
    stage 2 takes the architecture of its stage-1 export)."""

    preset: str = "paper"
    overrides: dict = field(default_factory=dict)
    train_ref_extractor: bool = False   # train the VGG19 Ref extractor through the warp (no ImageNet weights)
    freeze_sife: bool = False           # keep SIFE (trunk, and upsampler if any) as initialised (a pretrained prior)


@dataclass
class SyntheticSection:
    """Generate a small CUFED-layout dataset of smooth random textures (tests, smoke runs)."""

    num_images: int = 8
    size: int = 96
    seed: int = 0


@dataclass
class ViewsSection(ViewOptions):
    """Ref/LR pairs made from single photos (:class:`frfsr_train.data.views.ViewPairDataset`): the Ref
    is another view of the same scene (offset, zoom, rotation, optional perspective warp,
    colour change, optional block shuffle), or with probability ``p_unrelated`` a view of
    another photo. The view keys and their defaults are :class:`~frfsr_train.data.views.ViewOptions`."""

    photos: Optional[list] = None       # photo names; null = frfsr_train.data.views.TRAIN_PHOTOS
    ref_patch: Optional[int] = None     # Ref side; null = data.patch
    length: int = 2000                  # items per epoch (drawn afresh from the photos)


@dataclass
class DataSection:
    """CUFED training data (C2-Matching protocol: 160x160 HR patches, PIL-bicubic x1/4 LR)."""

    root: Optional[str] = None          # CUFED folder with input/ and ref/; None with `synthetic` -> <output_dir>/data
    patch: int = 160                    # HR patch side (multiple of 4; patch/4 >= 15)
    batch_size: int = 9                 # per process and micro-batch
    num_workers: int = 4
    augment: bool = True                # random flips and 90-degree rotations
    shuffle_level: Union[str, int, None] = None   # Ref block shuffle: easy | medium | hard | n | null
    ref_jitter: Union[bool, dict] = False
    synthetic: Optional[SyntheticSection] = None
    views: Optional[ViewsSection] = None   # train on views of photos instead of CUFED (root is then unused)


@dataclass
class DegradationSection:
    """How the LR of each training batch is made from its HR. ``bicubic``: the data's own LR
    (PIL bicubic x1/4 of the 8-bit HR, the paper's protocol). ``realworld``: made on the
    training device by :class:`frfsr_train.data.realworld.RealWorldDegradation` (blur, resize,
    noise and JPEG twice, then resize to HR/4 and JPEG); ``first`` / ``second`` / ``final``
    change the fields of its :class:`~frfsr_train.data.realworld.RealWorldOptions` (missing ones keep
    their defaults); ``clean_prob``: the share of samples that keep the data's bicubic LR, so
    that a model trained for degraded LRs stays good on clean ones."""

    kind: str = "bicubic"
    first: dict = field(default_factory=dict)     # frfsr_train.data.realworld.DegradationStage fields, first round
    second: dict = field(default_factory=dict)    # the same, second round
    final: dict = field(default_factory=dict)     # frfsr_train.data.realworld.FinalStage fields
    clean_prob: float = 0.0                       # share of samples that keep the bicubic LR

    def options(self):
        """The :class:`~frfsr_train.data.realworld.RealWorldOptions` of these keys."""
        from ..data.realworld import RealWorldOptions
        return RealWorldOptions.from_dict({"first": self.first, "second": self.second, "final": self.final,
                                           "clean_prob": self.clean_prob}, prefix="degradation.")


@dataclass
class OptimSection:
    """Adam for the generator (base lr + three offset-branch groups), Adam for the discriminator,
    MultiStep schedule counted in optimiser steps."""

    lr: float = 1e-4
    betas: list = field(default_factory=lambda: [0.9, 0.999])    # the paper writes (0.99, 0.999)
    weight_decay: float = 0.0
    lr_offset_large: float = 1e-4       # offset branches at HR scale (stages 0 and 4)
    lr_offset_medium: float = 1e-5      # at HR/2 (stages 1 and 3)
    lr_offset_small: float = 1e-6       # at LR scale (stage 2)
    lr_prior_mix: float = 1e-2          # the prior image's share of the base (restoration.prior_mix, sife_upsampler)
    milestones: list = field(default_factory=lambda: [72545, 211040])
    gamma: float = 0.1
    lr_d: float = 1e-4
    betas_d: list = field(default_factory=lambda: [0.9, 0.999])
    max_grad_norm: Optional[float] = None


@dataclass
class LossSection:
    """Stage 1 uses ``pixel`` alone; stage 2 adds the perceptual, WGAN-GP and detail terms after
    the L1 warm-up (each one whose weight is above 0; with ``adversarial: 0`` no critic is trained)."""

    pixel: float = 1.0
    perceptual: float = 1e-4
    perceptual_layer: str = "relu5_1"
    perceptual_criterion: str = "fro"
    perceptual_net: str = "vgg19"           # vgg19 | ref_extractor (the model's own trained VGG19 trunk, frozen)
                                            # | rrdb (the first blocks of a pretrained RRDB, frozen: rrdb_weights)
    rrdb_weights: Optional[str] = None      # perceptual_net rrdb: RRDBNet / SIFE safetensors (e.g. the x4plus prior)
    vgg19_weights: Optional[str] = None     # torchvision vgg19 state dict (.pth / .safetensors) for the perceptual loss
    adversarial: float = 1e-6
    gradient_penalty: float = 10.0
    l1_warmup_steps: int = 10000            # stage 2: the first steps use L1 only (no discriminator)
    disc_ndf: int = 32
    disc: str = "release"                   # release (the authors' image discriminator: BN, one sigmoid score)
                                            # | patch (a WGAN-GP critic without BN or sigmoid, one score per patch)
                                            # | patch_aa (the same with blurred, alias-free downsampling)
    disc_shift: int = 0                     # the critic sees real and generated images moved by up to this many px
    grid_penalty: float = 0.0               # weight of the SR's spectrum above the HR's at the LR grid's frequencies
    detail: float = 0.0                     # stage 2: weight of the fine-detail strength gap (detail_strength_gap)
    detail_cell: int = 8                    # ... measured per block of this many HR pixels a side


@dataclass
class InitSection:
    """Where the weights come from."""

    pretrained: Optional[str] = None    # stage 1: a whole FRFSR export (config.json + model.safetensors) to start from;
                                        # with init.sife, its SIFE may differ in size (the rest must match)
    sife: Optional[str] = None          # stage 1: ESRGAN RRDB_PSNR_x4 .pth for the SIFE trunk
    encoder: Optional[str] = None       # stage 1: contrastively pre-trained texture encoder state dict
    vgg19: Optional[str] = None         # stage 1: torchvision vgg19 weights for the Ref feature extractor
    stage1: Optional[str] = None        # stage 2: the stage-1 export directory (required)
    from_stage1: bool = True            # stage 2: start the stage-2 net from the stage-1 weights where shapes match
    reuse: bool = True                  # stage 2: feature reuse; false = a plain stage-1-architecture net
                                        # trained from stage 1 with the stage-2 losses (the ablation)


@dataclass
class TrainSection:
    max_steps: int = 255000             # optimiser steps
    max_minutes: Optional[float] = None  # also stop (checkpoint and export) after this much wall time
    grad_accum: int = 1                 # micro-batches per optimiser step
    checkpoint_every: int = 5000
    keep_checkpoints: int = 3           # 0 keeps all
    log_every: int = 100
    seed: int = 0
    output_dir: str = "runs/frfsr"
    deterministic: bool = False
    mixed_precision: Optional[str] = None   # no | fp16 | bf16; None: from `accelerate launch` / accelerate config
    log_with: list = field(default_factory=lambda: ["csv"])   # csv, tensorboard, wandb, ...
    ops_backend: Optional[str] = None   # frfsr.ops backend: auto | reference | fused | native


class ConfigFile:
    """What both configs share: built from a mapping (a YAML file's), checked, written back."""

    what = "a training config"

    @classmethod
    def from_dict(cls, d: dict, source: str | None = None):
        where = f" in {source}" if source else ""
        if not isinstance(d, dict):
            raise ConfigError(f"{cls.what} must be a mapping{where}; got {type(d).__name__}")
        cfg = _build(cls, {k: v for k, v in d.items() if k != "source"}, "", where)
        cfg.source = source
        cfg.validate()
        return cfg

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("source")
        return d

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def validate(self) -> None:
        raise NotImplementedError


def _failer(source):
    where = f" (in {source})" if source else ""

    def fail(msg):
        raise ConfigError(msg + where)
    return fail


def _check_model(m, fail) -> None:
    """``model``: a known preset whose overrides make a valid :class:`frfsr.FRFSRConfig`."""
    from frfsr.config import PRESETS, FRFSRConfig
    if m.preset not in PRESETS:
        fail(f"model.preset must be one of {', '.join(sorted(PRESETS))}; got {m.preset!r}")
    try:
        FRFSRConfig.preset(m.preset, **m.overrides)
    except (TypeError, ValueError) as e:
        fail(f"model: {e}")


def _check_views(v: ViewOptions, prefix: str, fail) -> None:
    """The view keys of ``data.views`` (restoration net) or ``data`` (encoder)."""
    if not (0 <= v.p_unrelated <= 1 and 0 <= v.p_shuffle <= 1 and 0 <= v.p_aligned <= 1):
        fail(f"{prefix}.p_unrelated, {prefix}.p_shuffle and {prefix}.p_aligned must be in [0, 1]")
    if len(v.scale_range) != 2:
        fail(f"{prefix}.scale_range must be two numbers")
    if not (all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v.scale_range)
            and 0 < v.scale_range[0] <= v.scale_range[1]):
        fail(f"{prefix}.scale_range must be [low, high] with 0 < low <= high (Ref zoom); got {v.scale_range!r}")
    if not 0 <= v.max_rotation <= 180:
        fail(f"{prefix}.max_rotation must be in [0, 180] degrees; got {v.max_rotation}")
    if not 0 <= v.max_perspective <= 0.25:
        fail(f"{prefix}.max_perspective must be in [0, 0.25] (a fraction of the Ref side); got {v.max_perspective}")


def _check_degradation(g, fail) -> None:
    if g.kind not in DEGRADATION_KINDS:
        fail(f"degradation.kind must be one of {', '.join(DEGRADATION_KINDS)}; got {g.kind!r}")
    try:
        g.options()                     # checked whatever the kind, so that a typo never waits for a switch
    except (TypeError, ValueError) as e:
        fail(str(e))


def _check_finite(section: str, obj, fail) -> None:
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if isinstance(v, float) and not math.isfinite(v):
            fail(f"{section}.{f.name} must be a finite number; got {v}")


@dataclass
class TrainConfig(ConfigFile):
    """A whole training run of the restoration net (stage 1 or stage 2)."""

    stage: int = 1
    model: Optional[ModelSection] = None
    data: DataSection = field(default_factory=DataSection)
    degradation: DegradationSection = field(default_factory=DegradationSection)
    optim: OptimSection = field(default_factory=OptimSection)
    loss: LossSection = field(default_factory=LossSection)
    init: InitSection = field(default_factory=InitSection)
    train: TrainSection = field(default_factory=TrainSection)
    source: Optional[str] = None        # the YAML file it came from (for messages)

    def validate(self) -> None:
        fail = _failer(self.source)
        if self.stage not in (1, 2):
            fail(f"stage must be 1 or 2, got {self.stage!r}")
        d, o, l, t, i = self.data, self.optim, self.loss, self.train, self.init
        if self.stage == 1:
            if self.model is None:
                self.model = ModelSection()
            if self.model.overrides.get("stage", 1) != 1:
                fail("model.overrides.stage must be 1 in a stage-1 config")
            _check_model(self.model, fail)
            if i.stage1 is not None:
                fail("init.stage1 is a stage-2 key; remove it from a stage-1 config")
        else:
            if self.model is not None:
                fail("stage 2 takes its architecture from init.stage1's config.json; remove the model section")
            if not i.stage1:
                fail("stage 2 needs init.stage1: the directory of the stage-1 export (config.json + model.safetensors)")
            for k in ("pretrained", "sife", "encoder", "vgg19"):
                if getattr(i, k) is not None:
                    fail(f"init.{k} is a stage-1 key; stage 2 takes those weights from init.stage1")
        if d.patch < 60 or d.patch % 4:
            fail(f"data.patch must be a multiple of 4 and >= 60 (LR side >= 15 px); got {d.patch}")
        for k, v in (("data.batch_size", d.batch_size), ("train.max_steps", t.max_steps),
                     ("train.grad_accum", t.grad_accum), ("train.checkpoint_every", t.checkpoint_every),
                     ("train.log_every", t.log_every)):
            if v < 1:
                fail(f"{k} must be >= 1; got {v}")
        if d.num_workers < 0 or t.keep_checkpoints < 0 or l.l1_warmup_steps < 0 or l.disc_ndf < 1 or l.disc_shift < 0:
            fail("data.num_workers, train.keep_checkpoints, loss.l1_warmup_steps and loss.disc_shift must be >= 0, "
                 "loss.disc_ndf >= 1")
        if not math.isfinite(l.grid_penalty) or l.grid_penalty < 0:
            fail(f"loss.grid_penalty must be a finite number >= 0; got {l.grid_penalty}")
        if not math.isfinite(l.detail) or l.detail < 0:
            fail(f"loss.detail must be a finite number >= 0; got {l.detail}")
        if not 2 <= l.detail_cell <= d.patch - 2:
            fail(f"loss.detail_cell must be from 2 to data.patch - 2 ({d.patch - 2}); got {l.detail_cell}")
        if l.disc_shift >= d.patch // 2:
            fail(f"loss.disc_shift must be below half of data.patch ({d.patch // 2}); got {l.disc_shift}")
        _check_finite("train", t, fail)           # the loader has made max_minutes a float (or null)
        if t.max_minutes is not None and t.max_minutes <= 0:
            fail(f"train.max_minutes must be null or a number of minutes > 0; got {t.max_minutes}")
        if d.root is None and d.synthetic is None and d.views is None:
            fail("data.root is required (a CUFED folder with input/ and ref/), or set data.synthetic or data.views")
        if d.views is not None:
            if d.views.length < 1:
                fail("data.views.length must be >= 1")
            _check_views(d.views, "data.views", fail)
        _check_degradation(self.degradation, fail)
        from .losses import DISCRIMINATORS
        if l.disc not in DISCRIMINATORS:
            fail(f"loss.disc must be one of {', '.join(DISCRIMINATORS)}; got {l.disc!r}")
        if l.perceptual_net not in ("vgg19", "ref_extractor", "rrdb"):
            fail(f"loss.perceptual_net must be vgg19, ref_extractor or rrdb; got {l.perceptual_net!r}")
        if l.perceptual_net == "rrdb" and self.stage == 2:
            from .perceptual import rrdb_layer_depth
            if not l.rrdb_weights:
                fail("loss.perceptual_net rrdb needs loss.rrdb_weights (RRDBNet safetensors, e.g. the converted prior)")
            try:
                rrdb_layer_depth(l.perceptual_layer)
            except ValueError as e:
                fail(f"loss.perceptual_layer: {e}")
            if not Path(l.rrdb_weights).is_file():
                fail(f"loss.rrdb_weights: no file at {l.rrdb_weights}")
        from ..data import SHUFFLE_LEVELS
        if isinstance(d.shuffle_level, str) and d.shuffle_level not in SHUFFLE_LEVELS:
            fail(f"data.shuffle_level must be null, {', '.join(SHUFFLE_LEVELS)} or a positive int; got {d.shuffle_level!r}")
        if isinstance(d.shuffle_level, int) and d.shuffle_level < 1:
            fail(f"data.shuffle_level must be a positive int; got {d.shuffle_level}")
        for name in ("betas", "betas_d"):
            b = getattr(o, name)
            if len(b) != 2 or not all(isinstance(x, (int, float)) and 0 <= x < 1 for x in b):
                fail(f"optim.{name} must be two numbers in [0, 1); got {b!r}")
            setattr(o, name, [float(x) for x in b])
        if list(o.milestones) != sorted(set(o.milestones)) or not all(isinstance(m, int) and m > 0 for m in o.milestones):
            fail(f"optim.milestones must be strictly increasing positive ints; got {o.milestones!r}")
        for k in ("lr", "lr_offset_large", "lr_offset_medium", "lr_offset_small", "lr_prior_mix", "lr_d", "gamma"):
            v = getattr(o, k)
            if not math.isfinite(v) or v <= 0:
                fail(f"optim.{k} must be a finite number > 0; got {v}")
        _check_finite("optim", o, fail)
        _check_finite("loss", l, fail)
        if l.perceptual_criterion not in ("fro", "l1", "l2"):
            fail(f"loss.perceptual_criterion must be fro, l1 or l2; got {l.perceptual_criterion!r}")
        if t.mixed_precision not in (None, "no", "fp16", "bf16", "fp8"):
            fail(f"train.mixed_precision must be null, no, fp16, bf16 or fp8; got {t.mixed_precision!r}")
        if t.ops_backend not in (None, *OPS_BACKENDS):
            fail(f"train.ops_backend must be null, {', '.join(OPS_BACKENDS)}; got {t.ops_backend!r}")
        if not all(isinstance(x, str) for x in t.log_with):
            fail(f"train.log_with must be a list of tracker names; got {t.log_with!r}")


# ---------------------------------------------------------------------- the texture encoder
@dataclass
class EncoderModelSection:
    """The FRFSR architecture the encoder is trained for (its ``vgg_widths`` set the encoder)."""

    preset: str = "tiny"
    overrides: dict = field(default_factory=lambda: {"ngf": 32, "vgg_widths": [32, 64, 128]})


@dataclass
class EncoderDataSection(ViewOptions):
    """Views of the training photos; the view keys are :class:`~frfsr_train.data.views.ViewOptions`,
    three of them with the encoder's own defaults."""

    photos: Optional[list] = None       # photo names; null = frfsr_train.data.views.TRAIN_PHOTOS
    patch: int = 96                     # HR / LR-up side (texture grid = patch / 4)
    ref_patch: int = 96
    num_workers: int = 1
    p_shuffle: float = 0.3              # block-shuffled Refs: the correspondence is tracked through the shuffle
    shuffle_choices: list = field(default_factory=lambda: [2, 4])
    p_unrelated: float = 0.0            # unrelated pairs have no positives for the contrastive loss


@dataclass
class EncoderTrainSection:
    """AdamW with a linear warm-up and a cosine decay to 10 %; the InfoNCE loss's settings."""

    batch_size: int = 8                 # per process
    steps: int = 3000
    lr: float = 5e-4                    # the peak learning rate
    weight_decay: float = 0.0
    warmup_steps: int = 100
    grad_clip: Optional[float] = 1.0    # gradient norm bound; null or 0: none
    temperature: float = 0.07           # InfoNCE temperature
    samples_per_image: int = 64         # sampled LR positions (queries) per pair
    neg_radius: float = 1.5             # Ref positions closer than this (texture pixels) are not negatives
    seed: int = 0
    log_every: int = 20
    eval_every: int = 250               # 0: evaluate at the end only
    max_minutes: Optional[float] = None  # stop (and save) after this much wall time
    init: Optional[str] = None          # safetensors of texture_encoder.* keys to start from
    tie_init: bool = True               # start the Ref trunk as a copy of the LR trunk (ignored with init)


@dataclass
class EncoderEvalSection:
    """The held-out pairs (:func:`frfsr_train.data.views.heldout_pairs`) of the matching accuracy."""

    kinds: list = field(default_factory=lambda: ["relevant", "medium", "unrelated"])
    n: int = 12
    patch: int = 96
    seed: int = 0


@dataclass
class EncoderConfig(ConfigFile):
    """A contrastive training run of the texture encoder (``train/encoder.py``). ``degradation``
    is the restoration net's section: how the training LR views are made."""

    what = "an encoder config"

    model: EncoderModelSection = field(default_factory=EncoderModelSection)
    data: EncoderDataSection = field(default_factory=EncoderDataSection)
    degradation: DegradationSection = field(default_factory=DegradationSection)
    train: EncoderTrainSection = field(default_factory=EncoderTrainSection)
    eval: EncoderEvalSection = field(default_factory=EncoderEvalSection)
    output_dir: Optional[str] = None    # default: the script's --output_dir, else outputs/<config name>
    source: Optional[str] = None

    def validate(self) -> None:
        fail = _failer(self.source)
        _check_model(self.model, fail)
        d, t, e = self.data, self.train, self.eval
        _check_views(d, "data", fail)
        for k, v in (("data.patch", d.patch), ("data.ref_patch", d.ref_patch), ("eval.patch", e.patch)):
            if v < 16 or v % 4:
                fail(f"{k} must be a multiple of 4 and >= 16; got {v}")
        for k, v in (("train.batch_size", t.batch_size), ("train.log_every", t.log_every),
                     ("train.samples_per_image", t.samples_per_image), ("eval.n", e.n)):
            if v < 1:
                fail(f"{k} must be >= 1; got {v}")
        if d.num_workers < 0 or t.steps < 0 or t.warmup_steps < 0 or t.eval_every < 0:
            fail("data.num_workers, train.steps, train.warmup_steps and train.eval_every must be >= 0")
        for k in ("lr", "temperature"):
            v = getattr(t, k)
            if not math.isfinite(v) or v <= 0:
                fail(f"train.{k} must be a finite number > 0; got {v}")
        _check_finite("train", t, fail)
        from ..data.views import HELDOUT_KINDS
        bad = [k for k in e.kinds if k not in HELDOUT_KINDS]
        if bad:
            fail(f"eval.kinds must be among {', '.join(HELDOUT_KINDS)}; got {bad}")
        _check_degradation(self.degradation, fail)


# ---------------------------------------------------------------------- loading
def parse_overrides(items) -> dict:
    """``["train.max_steps=4", "data.root=/x"]`` -> nested dict; values parsed as YAML."""
    out: dict = {}
    for item in items or ():
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with another override")
        node[parts[-1]] = yaml.safe_load(value)
    return out


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(path, overrides=None, kind: type[ConfigFile] = TrainConfig):
    """Read a YAML config and apply overrides (a dict or ``key=value`` strings); ``kind``:
    :class:`TrainConfig` (the restoration net) or :class:`EncoderConfig`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"training config not found: {path}")
    try:
        d = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from None
    if not isinstance(d, dict):
        raise ConfigError(f"{path} must hold a mapping of sections; got {type(d).__name__}")
    if overrides:
        d = _merge(d, overrides if isinstance(overrides, dict) else parse_overrides(overrides))
    return kind.from_dict(d, source=str(path))


def config_from_command_line(parser, path, sets, kind: type[ConfigFile] = TrainConfig, **train_options):
    """:func:`load_config` for a command line: the ``--set`` items, then the ``train.*`` options
    given (those not None, e.g. ``max_steps=args.max_steps``); a bad config ends the command
    through ``parser.error`` (exit code 2)."""
    try:
        overrides = parse_overrides(sets)
        for key, value in train_options.items():
            if value is not None:
                overrides.setdefault("train", {})[key] = value
        return load_config(path, overrides, kind=kind)
    except ConfigError as e:
        parser.error(str(e))


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp, key: str, where: str):
    """Check / convert ``value`` to the annotated type ``tp``."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{key} must not be null{where}")
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key, where)
            except ConfigError as e:
                errors.append(e)
        names = " or ".join(_type_name(a) for a in args)
        raise ConfigError(f"{key} must be {names}{where}; got {value!r}")
    if dataclasses.is_dataclass(tp):
        if value is None:
            raise ConfigError(f"{key} must be a mapping{where}; got null")
        return _build(tp, value, key + ".", where)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp in (list, dict):
        if isinstance(value, tp):
            return value
        if tp is list and isinstance(value, tuple):
            return list(value)
        if tp is list and isinstance(value, str):
            return [value]
    raise ConfigError(f"{key} must be {_type_name(tp)}{where}; got {value!r}")


def _build(cls, d, prefix: str, where: str):
    if not isinstance(d, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'the config'} must be a mapping{where}; got {d!r}")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls) if f.name != "source"]
    unknown = sorted(set(d) - set(known))
    if unknown:
        of = f"keys of {prefix.rstrip('.')}" if prefix else "sections and top-level keys"
        raise ConfigError(f"unknown key(s) {', '.join(prefix + u for u in unknown)}{where}; known {of}: "
                          f"{', '.join(known)}")
    kwargs = {k: _coerce(v, hints[k], prefix + k, where) for k, v in d.items()}
    return cls(**kwargs)
