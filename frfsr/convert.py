"""Converters from foreign checkpoints to frfsr's parameter names.

``official_to_frfsr`` maps the authors' released names (texture encoder
``net_extractor.*``, correspondence VGG19 ``net_map.*``, SIFE ``sisr.*`` and the stage-1
restoration net ``net_g.dyn_agg_restore.*``) to an :class:`frfsr.FRFSR` state dict. The
prefixes are optional, so a BasicSR per-network file (``dyn_agg_restore.*`` alone)
converts too.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from .models.vgg import IMAGENET_MEAN, IMAGENET_STD

# official stage prefixes of the U-Net, in frfsr's stage order (restoration.STAGES)
_STAGE = {"down_large": 0, "down_medium": 1, "up_small": 2, "up_medium": 3, "up_large": 4}
_BODY = {"down_body_large": 0, "down_body_medium": 1, "up_body_small": 2, "up_body_medium": 3, "up_body_large": 4}
_HEAD = {"down_head_large": 0, "down_head_medium": 1, "up_head_small": 2, "up_head_medium": 3, "up_head_large": 4}
_TAIL = {"down_tail_large": "0.tail", "down_tail_medium": "1.tail", "up_tail_small.0": "2.tail.0",
         "up_tail_medium.0": "3.tail.0", "up_tail_large.0": "4.tail.0", "up_tail_large.2": "4.tail.2"}
_DDF_BRANCH = {"spatial_branch.0": "spatial", "channel_branch.1": "channel_reduce", "channel_branch.3": "channel_expand"}
_SIFE_UPSAMPLER = ("conv_up1", "conv_up2", "conv_hr", "conv_last", "upconv1", "upconv2", "HRconv")
_VGG = r"(conv[123]_[12])\.(weight|bias)"


def _restoration_key(k: str) -> str | None:
    """Name inside ``dyn_agg_restore`` -> name inside frfsr's RestorationNet."""
    if k.startswith("unet_head."):
        return "head." + k.split(".", 1)[1]
    if k.startswith("high_q_conv1."):
        return "sife_fuse." + k.split(".", 1)[1]
    m = re.fullmatch(r"(\w+?)_offset_conv([12])\.(weight|bias)", k)
    if m and m.group(1) in _STAGE:
        return f"stages.{_STAGE[m.group(1)]}.align.offset_conv{m.group(2)}.{m.group(3)}"
    m = re.fullmatch(r"(\w+?)_dyn_agg\.(conv_offset_mask\.)?(weight|bias)", k)
    if m and m.group(1) in _STAGE:
        inner = "offset_mask." if m.group(2) else ""
        return f"stages.{_STAGE[m.group(1)]}.align.dcn.{inner}{m.group(3)}"
    m = re.fullmatch(r"(\w+)\.0\.(weight|bias)", k)
    if m and m.group(1) in _HEAD:
        return f"stages.{_HEAD[m.group(1)]}.head.{m.group(2)}"
    m = re.fullmatch(r"ddf_block_([1-5])\.(\d+)\.conv([12])\.(\w+\.\d)\.(weight|bias)", k)
    if m and m.group(4) in _DDF_BRANCH:
        return (f"stages.{int(m.group(1)) - 1}.drb.ddf_blocks.{m.group(2)}.ddf{m.group(3)}."
                f"{_DDF_BRANCH[m.group(4)]}.{m.group(5)}")
    m = re.fullmatch(r"(\w+)\.(\d+)\.(conv[12]|ESA\.\w+)\.(weight|bias)", k)
    if m and m.group(1) in _BODY:
        return f"stages.{_BODY[m.group(1)]}.drb.res_blocks.{m.group(2)}.{m.group(3).replace('ESA.', 'esa.')}.{m.group(4)}"
    m = re.fullmatch(r"(.+)\.(weight|bias)", k)
    if m and m.group(1) in _TAIL:
        return f"stages.{_TAIL[m.group(1)]}.{m.group(2)}"
    return None


def official_key(name: str) -> str | None | bool:
    """frfsr name for one official parameter name; ``False`` for entries that are
    deliberately dropped (ImageNet mean/std buffers, SIFE's unused upsampler); ``None``
    when the name is not recognised."""
    k = re.sub(r"^(module\.)", "", name)
    m = re.fullmatch(r"(?:net_extractor\.)?feature_extraction_image([12])\.(.+)", k)
    if m:
        trunk = "lr_trunk" if m.group(1) == "1" else "ref_trunk"
        rest = m.group(2)
        if rest in ("mean", "std"):
            return False
        m2 = re.fullmatch(r"model\." + _VGG, rest)
        return f"texture_encoder.{trunk}.{m2.group(1)}.{m2.group(2)}" if m2 else None
    m = re.fullmatch(r"(?:net_map\.)?vgg\.(.+)", k)
    if m:
        if m.group(1) in ("mean", "std"):
            return False
        m2 = re.fullmatch(r"vgg_net\." + _VGG, m.group(1))
        return f"ref_extractor.vgg.{m2.group(1)}.{m2.group(2)}" if m2 else None
    m = re.fullmatch(r"sisr\.(.+)", k)
    if m:
        if m.group(1).split(".")[0] in _SIFE_UPSAMPLER:
            return False
        return "sife." + m.group(1)
    m = re.fullmatch(r"(?:net_g\.)?dyn_agg_restore\.(.+)", k)
    if m:
        r = _restoration_key(m.group(1))
        return "restoration." + r if r else None
    return None


@dataclass
class ConversionReport:
    """What a conversion did: keys mapped, dropped on purpose, not recognised, and the
    model keys that the converted dict leaves unset."""

    converted: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.unexpected and not self.missing

    def __str__(self) -> str:
        lines = [f"converted {len(self.converted)} tensors, dropped {len(self.dropped)} on purpose"]
        for title, keys in (("unexpected (not recognised)", self.unexpected), ("missing (left unset)", self.missing)):
            if keys:
                shown = ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")
                lines.append(f"{title}: {shown}")
        return "\n".join(lines)


def _check_norm_buffer(name: str, t: torch.Tensor) -> None:
    ref = IMAGENET_MEAN if name.endswith("mean") else IMAGENET_STD
    if t.numel() != 3 or not torch.allclose(t.flatten().double(), torch.tensor(ref, dtype=torch.float64), atol=1e-6):
        raise ValueError(f"{name} is {t.flatten().tolist()}, not the ImageNet normalisation {list(ref)} that frfsr uses")


def official_to_frfsr(state_dict: dict, expected_keys=None) -> tuple[dict, ConversionReport]:
    """Convert an official (authors' / C2-Matching layout) state dict. ``expected_keys``
    (e.g. ``model.state_dict().keys()``) fills the report's ``missing`` list."""
    out, report = {}, ConversionReport()
    for name, t in state_dict.items():
        new = official_key(name)
        if new is False:
            if name.endswith(("mean", "std")):
                _check_norm_buffer(name, t)
            report.dropped.append(name)
        elif new is None:
            report.unexpected.append(name)
        else:
            out[new] = t
            report.converted.append(name)
    if expected_keys is not None:
        report.missing = sorted(set(expected_keys) - set(out))
    return out, report
