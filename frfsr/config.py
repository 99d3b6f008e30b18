"""Model configuration: one dataclass, a JSON round-trip and named presets."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CONFIG_VERSION = 1
CLASS_NAME = "FRFSR"            # "_class_name" in config.json
#: The relevance threshold of weights whose config does not give one (the bundled weights' value).
DEFAULT_RELEVANCE_THRESHOLD = 0.465


@dataclass
class FRFSRConfig:
    """Hyper-parameters of an FRFSR model.

    ``paper`` is the architecture of the paper and the authors' release (stage-1
    restoration net of 13,487,071 parameters); ``compact`` has the paper's SIFE trunk (for a
    pretrained RRDB prior) with the bundled models' narrow U-Net and encoders; ``prior`` is
    ``compact`` with the RRDB's x4 upsampler kept (the U-Net also sees the prior's image); ``tiny`` is a small model for tests and
    quick experiments.
    """

    # restoration U-Net (paper III-C)
    ngf: int = 64                       # U-Net feature width at every scale
    n_res_blocks: int = 16              # residual blocks with ESA per scale
    n_ddf_blocks: int = 2               # DDF residual blocks per scale
    deform_groups: int = 8              # deformable groups of the alignment convs
    ddf_se_ratio: float = 0.2           # channel-branch squeeze ratio of DDF
    ddf_filter_norm: bool = False       # paper eq. 20 FilterNorm; the release applies none
    # single-image feature embedding (RRDB trunk, eq. 14)
    sife_blocks: int = 23
    sife_feat: int = 64
    sife_grow: int = 32
    # SIFE keeps ESRGAN's x4 upsampler: its 4x image (a pretrained RRDB x4 prior's own result)
    # goes into the U-Net's head beside the bilinear upsampled LR
    sife_upsampler: bool = False
    # texture encoder and reference feature extractor widths (VGG conv1, conv2, conv3)
    vgg_widths: tuple[int, int, int] = (64, 128, 256)
    # correspondence
    patch_size: int = 3
    # refine each match to a fraction of an LR pixel (frfsr.models.correspondence.subpixel_shift);
    # the release's flows are whole LR pixels (4 HR pixels)
    subpixel_match: bool = False
    # relevance (frfsr.models.correspondence.relevance_of) below which the Refs hardly match the LR
    # and the pipeline warns; its scale depends on the texture encoder's weights, so it is
    # measured for them (benchmarks/eval_relevance.py). Weights whose config.json has no such
    # field get DEFAULT_RELEVANCE_THRESHOLD; null turns the warning off.
    relevance_threshold: float | None = DEFAULT_RELEVANCE_THRESHOLD
    # feature reuse (paper III-A): a stage-2 net also takes the stage-1 net's HR feature
    stage: int = 1
    version: int = CONFIG_VERSION
    name: str = "custom"

    def __post_init__(self):
        if isinstance(self.vgg_widths, list):
            self.vgg_widths = tuple(self.vgg_widths)
        self.validate()

    def validate(self) -> None:
        """ValueError naming the first field of the wrong type or out of range and what it
        accepts (a model is never built from a value that means something else, e.g. the
        string "no" for a flag). The size of the model is checked where it is built
        (:func:`frfsr.models.frfsr.check_size`)."""
        for f in dataclasses.fields(self):
            _check_type(f.name, getattr(self, f.name))
        if self.version != CONFIG_VERSION:
            raise ValueError(f"unsupported FRFSR config version {self.version!r}; this frfsr reads version {CONFIG_VERSION}")
        positive = ["ngf", "n_res_blocks", "deform_groups", "sife_blocks", "sife_feat", "sife_grow"]
        for k in positive:
            v = getattr(self, k)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"config field {k} must be a positive integer, got {v!r}")
        if not isinstance(self.n_ddf_blocks, int) or self.n_ddf_blocks < 0:
            raise ValueError(f"config field n_ddf_blocks must be an integer >= 0, got {self.n_ddf_blocks!r}")
        if len(self.vgg_widths) != 3 or min(self.vgg_widths) < 1:
            raise ValueError(f"vgg_widths must be three positive integers, got {self.vgg_widths!r}")
        for w in self.vgg_widths:
            if w % self.deform_groups:
                raise ValueError(f"every vgg width must be divisible by deform_groups={self.deform_groups}; got {self.vgg_widths}")
        if self.ngf % 4 or self.ngf < 8:
            raise ValueError(f"ngf must be a multiple of 4 and >= 8 (ESA uses ngf/4 channels), got {self.ngf}")
        if self.stage not in (1, 2):
            raise ValueError(f"stage must be 1 (reconstruction net) or 2 (feature-reuse net), got {self.stage!r}")
        if self.patch_size != 3:
            raise ValueError(f"only patch_size 3 is supported (pre-offsets are built for 3x3 taps), got {self.patch_size}")
        if not 0 < self.ddf_se_ratio <= 1:
            raise ValueError(f"ddf_se_ratio must be in (0, 1], got {self.ddf_se_ratio}")

    # ---------------------------------------------------------------- presets
    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "FRFSRConfig":
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; accepted: {', '.join(sorted(PRESETS))}")
        kw = dict(PRESETS[name])
        kw.update(overrides)
        kw.setdefault("name", name)
        return cls(**kw)

    @classmethod
    def paper(cls, **overrides: Any) -> "FRFSRConfig":
        return cls.preset("paper", **overrides)

    @classmethod
    def tiny(cls, **overrides: Any) -> "FRFSRConfig":
        return cls.preset("tiny", **overrides)

    # ---------------------------------------------------------------- json
    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["vgg_widths"] = list(self.vgg_widths)
        return d

    def to_json(self, path: str | Path | None = None) -> str:
        """The config.json of a saved model (with ``"_class_name": "FRFSR"``)."""
        text = json.dumps({"_class_name": CLASS_NAME, **self.to_dict()}, indent=2, sort_keys=True) + "\n"
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_dict(cls, d: dict) -> "FRFSRConfig":
        if not isinstance(d, dict):
            raise TypeError(f"an FRFSR config must be a JSON object, got {type(d).__name__}")
        if d.get("_class_name", CLASS_NAME) != CLASS_NAME:
            raise ValueError(f"the config describes a {d['_class_name']!r}, not an {CLASS_NAME} model")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known - {"_class_name", "architecture"})
        if unknown:
            raise ValueError(f"unknown FRFSR config field(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**{k: v for k, v in d.items() if k in known})

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> "FRFSRConfig":
        """Parse and validate JSON text or a config.json file (errors name the file)."""
        p = Path(text_or_path) if not str(text_or_path).lstrip().startswith("{") else None
        where = f"{p}: " if p is not None else ""
        try:
            return cls.from_dict(json.loads(p.read_text() if p is not None else str(text_or_path)))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{where}config is not valid JSON: {e}") from None
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}{e}") from None


_KINDS = {"ddf_se_ratio": "number", "ddf_filter_norm": "bool", "sife_upsampler": "bool", "subpixel_match": "bool", "vgg_widths": "ints", "name": "str",
          "relevance_threshold": "number or null"}


def _check_type(name: str, value) -> None:
    """TypeError-like ValueError unless ``value`` is of the kind the field ``name`` takes
    (integers for every other field; ``true``/``false`` only for flags)."""
    kind = _KINDS.get(name, "int")
    is_int = isinstance(value, int) and not isinstance(value, bool)
    ok = {"int": is_int,
          "number": (is_int or isinstance(value, float)) and not isinstance(value, bool),
          "bool": isinstance(value, bool),
          "str": isinstance(value, str),
          "number or null": value is None or ((is_int or isinstance(value, float)) and not isinstance(value, bool)),
          "ints": isinstance(value, (tuple, list)) and all(isinstance(v, int) and not isinstance(v, bool)
                                                            for v in value)}[kind]
    if not ok:
        accepted = {"int": "an integer", "number": "a number", "bool": "true or false",
                    "str": "a string", "ints": "a list of three integers",
                    "number or null": "a number or null"}[kind]
        raise ValueError(f"config field {name} must be {accepted}, got {value!r} ({type(value).__name__})")


PRESETS: dict[str, dict] = {
    "paper": dict(),
    "tiny": dict(ngf=16, n_res_blocks=1, n_ddf_blocks=1, deform_groups=2, sife_blocks=1,
                 sife_feat=16, sife_grow=8, vgg_widths=(8, 16, 32)),
    # the bundled models' narrow U-Net (one block per scale) and encoders with the paper's SIFE
    # (23 RRDB, 64 features, growth 32), which takes a pretrained ESRGAN / Real-ESRGAN trunk
    "compact": dict(ngf=32, n_res_blocks=1, n_ddf_blocks=1, deform_groups=2, vgg_widths=(32, 64, 128)),
    # ``compact`` whose SIFE is a whole RRDB x4 net: the U-Net's head also takes the prior's 4x image
    "prior": dict(ngf=32, n_res_blocks=1, n_ddf_blocks=1, deform_groups=2, vgg_widths=(32, 64, 128),
                  sife_upsampler=True),
}
