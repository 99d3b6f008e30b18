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
from pathlib import Path

import torch

from .models.vgg import IMAGENET_MEAN, IMAGENET_STD, TRUNK_CONVS, VGG_BLOCKS, last_conv_index

# official stage prefixes of the U-Net, in frfsr's stage order (restoration.STAGES)
_STAGE = {"down_large": 0, "down_medium": 1, "up_small": 2, "up_medium": 3, "up_large": 4}
_BODY = {"down_body_large": 0, "down_body_medium": 1, "up_body_small": 2, "up_body_medium": 3, "up_body_large": 4}
_HEAD = {"down_head_large": 0, "down_head_medium": 1, "up_head_small": 2, "up_head_medium": 3, "up_head_large": 4}
_TAIL = {"down_tail_large": "0.tail", "down_tail_medium": "1.tail", "up_tail_small.0": "2.tail.0",
         "up_tail_medium.0": "3.tail.0", "up_tail_large.0": "4.tail.0", "up_tail_large.2": "4.tail.2"}
_DDF_BRANCH = {"spatial_branch.0": "spatial", "channel_branch.1": "channel_reduce", "channel_branch.3": "channel_expand"}
_SIFE_UPSAMPLER = ("conv_up1", "conv_up2", "conv_hr", "conv_last", "upconv1", "upconv2", "HRconv")
_VGG = rf"({'|'.join(layer.name for layer in TRUNK_CONVS)})\.(weight|bias)"    # the trunk's convs


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


def _rename(state_dict: dict, key_fn, expected_keys=None) -> tuple[dict, ConversionReport]:
    """Rename every entry with ``key_fn`` (new name, ``False`` = drop on purpose, ``None`` =
    not recognised) and report what happened."""
    out, report = {}, ConversionReport()
    for name, t in state_dict.items():
        new = key_fn(name)
        if new is False:
            report.dropped.append(name)
        elif new is None:
            report.unexpected.append(name)
        else:
            out[new] = t
            report.converted.append(name)
    if expected_keys is not None:
        report.missing = sorted(set(expected_keys) - set(out))
    return out, report


def official_to_frfsr(state_dict: dict, expected_keys=None) -> tuple[dict, ConversionReport]:
    """Convert an official (authors' / C2-Matching layout) state dict. ``expected_keys``
    (e.g. ``model.state_dict().keys()``) fills the report's ``missing`` list."""
    for name, t in state_dict.items():
        if name.endswith(("mean", "std")) and official_key(name) is False:
            _check_norm_buffer(name, t)
    return _rename(state_dict, official_key, expected_keys)


# ====================================================================== loading files
KINDS = ("official", "c2matching", "esrgan", "vgg16", "vgg19")
WRAPPER_KEYS = ("params_ema", "params", "state_dict", "model_state_dict", "model", "net_g")
_C2_RESTORATION = re.compile(r"^(?:module\.)?(?:net_g\.)?content_extractor\.")
_C2_MESSAGE = ("this is C2-Matching's restoration net (RestorationNet: a ContentExtractor with plain residual blocks), "
               "a different architecture from FRFSR's (SIFE + DDF/ESA aggregation); it cannot be converted. "
               "Only C2-Matching's feature extractor (net_extractor / ContrasExtractorSep) converts, "
               "into the texture encoder")


def _is_state_dict(d) -> bool:
    return isinstance(d, dict) and bool(d) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in d.items())


def unwrap_state_dict(obj, key: str | None = None) -> dict:
    """The tensor dict inside a checkpoint: BasicSR's ``params`` / ``params_ema`` (EMA
    preferred), ``state_dict``, ``model``; a ``module.`` prefix (DataParallel) is removed.
    ``key`` picks the wrapper entry explicitly."""
    if not isinstance(obj, dict):
        raise ValueError(f"the checkpoint holds a {type(obj).__name__}, not a dict of tensors")
    if key is not None:
        if key not in obj:
            top = ", ".join(map(str, list(obj)[:10]))
            raise ValueError(f"the checkpoint has no entry {key!r}; its top-level keys: {top}")
        obj = obj[key]
    else:
        while not _is_state_dict(obj) and isinstance(obj, dict):
            inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
            if inner is None:
                break
            obj = inner
    if isinstance(obj, dict):        # training checkpoints may carry counters next to tensors: keep the tensors
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors and len(tensors) >= len(obj) / 2:
            obj = tensors
    if not _is_state_dict(obj):
        raise ValueError("the checkpoint is not a state dict (a dict of parameter names to tensors); wrapper entries "
                         f"looked into: {', '.join(WRAPPER_KEYS)}")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def read_safetensors(path) -> tuple[dict, dict]:
    """(state dict on the CPU, metadata) of a safetensors file; ValueError if it is not one."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file
    if Path(path).stat().st_size == 0:
        raise ValueError(f"{path} is empty (0 bytes): not a safetensors file (an interrupted copy or download?)")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        return load_file(str(path), device="cpu"), meta
    except (SafetensorError, OSError, RuntimeError) as e:
        raise ValueError(f"{path} is not a valid safetensors file: {e}") from None


def _looks_like_text(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(4096)
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return b"\0" not in head


def load_checkpoint(path, key: str | None = None) -> dict:
    """Read a foreign checkpoint safely and return its state dict. ``.safetensors`` files
    are read with safetensors; anything else with ``torch.load(weights_only=True)``, so a
    pickle that would run code on load is refused (ValueError) instead of executed."""
    import pickle

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no such checkpoint file: {p}")
    if p.stat().st_size == 0:
        raise ValueError(f"{p} is empty (0 bytes): not a checkpoint; accepted: a PyTorch state dict (.pth, .pt, .bin) "
                         "or a .safetensors file")
    if p.suffix == ".safetensors":
        return unwrap_state_dict(read_safetensors(p)[0], key)
    try:
        obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        code = next((ln for ln in lines if "GLOBAL" in ln), None)
        if code is not None:
            raise ValueError(f"refused to load {p}: it is not a plain tensor checkpoint, and loading it would run code "
                             f"or build objects from the file ({code}). Only weights are accepted "
                             "(torch.load with weights_only=True)") from None
        detail = next((ln for ln in reversed(lines) if not ln.startswith(("Check the documentation", "Please file"))),
                      "unpickling failed")
        raise ValueError(f"{p} is not a readable PyTorch checkpoint (corrupt, or another format): {detail}") from None
    except Exception as e:             # torch / pickle on a text or other file: KeyError, EOFError, RuntimeError, ...
        detail = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        what = ("it is a text file" if _looks_like_text(p)
                else f"corrupt, truncated or another format: {type(e).__name__}: {detail}")
        raise ValueError(f"{p} is not a readable PyTorch checkpoint ({what}); "
                         "accepted: a PyTorch state dict (.pth, .pt, .bin) or a .safetensors file") from None
    try:
        return unwrap_state_dict(obj, key)
    except ValueError as e:
        raise ValueError(f"{p}: {e}") from None


# ====================================================================== recognising layouts
# torchvision ``features`` index -> name of the trunk's convs (conv1_1 .. conv3_1)
_TV_CONVS = {layer.index: layer.name for layer in TRUNK_CONVS}
# index of the last conv -> depth (28: VGG16, 34: VGG19)
_TV_DEPTH = {last_conv_index(depth): depth for depth in VGG_BLOCKS}


def _vgg_depth(state_dict: dict) -> int | None:
    """16 or 19 for a full torchvision VGG ``features`` dict (by the index of its last conv)."""
    idx = [int(m.group(1)) for k in state_dict if (m := re.fullmatch(r"features\.(\d+)\.weight", k))]
    if not idx:
        return None
    return _TV_DEPTH.get(max(idx))


def detect_kind(state_dict: dict) -> str | None:
    """Best guess of a state dict's layout: "c2matching-restoration", "vgg16", "vgg19",
    "vgg" (truncated, depth unknown), "vgg-bn", "esrgan", "official" or None."""
    keys = list(state_dict)
    if any(_C2_RESTORATION.match(k) for k in keys):
        return "c2matching-restoration"
    if "features.0.weight" in state_dict:
        if any(k.endswith("running_mean") for k in keys):
            return "vgg-bn"
        depth = _vgg_depth(state_dict)
        return f"vgg{depth}" if depth else "vgg"
    if any(re.match(r"(conv_first|model\.0)\.weight$", k) for k in keys) and \
            any(re.match(r"(body\.\d+\.rdb|RRDB_trunk\.\d+\.RDB|model\.1\.sub\.\d+\.RDB)", k) for k in keys):
        return "esrgan"
    if any(official_key(k) for k in keys):
        return "official"
    return None


def _describe(state_dict: dict) -> str:
    names = ", ".join(list(state_dict)[:3])
    return f"detected layout: {detect_kind(state_dict) or 'unknown'}; first keys: {names}"


def _nothing_matched(kind: str, state_dict: dict) -> ValueError:
    return ValueError(f"this checkpoint is not in the {kind} layout: none of its tensor names belongs to it "
                      f"({_describe(state_dict)})")


# ====================================================================== ESRGAN RRDB -> SIFE
# ESRGAN's x4 upsampler in BasicSR, 2019 ESRGAN and original-release names -> BasicSR's (SIFE's)
_ESRGAN_UPSAMPLER = {"conv_up1": "conv_up1", "conv_up2": "conv_up2", "conv_hr": "conv_hr", "conv_last": "conv_last",
                     "upconv1": "conv_up1", "upconv2": "conv_up2", "HRconv": "conv_hr",
                     "model.3": "conv_up1", "model.6": "conv_up2", "model.8": "conv_hr", "model.10": "conv_last"}


def esrgan_key(name: str, upsampler: bool = False) -> str | None | bool:
    """SIFE name for an ESRGAN RRDBNet x4 parameter: BasicSR names (``body.N.rdbK``), the
    2019 ESRGAN names (``RRDB_trunk.N.RDBK``, ``trunk_conv``) and the original release's
    ``model.N.*`` names. The upsampler's parameters get SIFE's upsampler names with
    ``upsampler=True`` (``FRFSRConfig.sife_upsampler``), else ``False`` (dropped); None if
    unknown."""
    module, _, leaf = name.rpartition(".")
    if module in _ESRGAN_UPSAMPLER and leaf in ("weight", "bias"):
        return f"sife.{_ESRGAN_UPSAMPLER[module]}.{leaf}" if upsampler else False
    m = re.fullmatch(r"(conv_first|conv_body)\.(weight|bias)", name)
    if m:
        return f"sife.{m.group(1)}.{m.group(2)}"
    if re.fullmatch(r"trunk_conv\.(weight|bias)", name):
        return "sife.conv_body." + name.rsplit(".", 1)[1]
    m = re.fullmatch(r"(?:body|RRDB_trunk)\.(\d+)\.(?:rdb|RDB)([123])\.(conv[1-5])\.(weight|bias)", name)
    if m:
        return f"sife.body.{m.group(1)}.rdb{m.group(2)}.{m.group(3)}.{m.group(4)}"
    m = re.fullmatch(r"model\.0\.(weight|bias)", name)
    if m:
        return f"sife.conv_first.{m.group(1)}"
    m = re.fullmatch(r"model\.1\.sub\.(\d+)\.RDB([123])\.(conv[1-5])\.0\.(weight|bias)", name)
    if m:
        return f"sife.body.{m.group(1)}.rdb{m.group(2)}.{m.group(3)}.{m.group(4)}"
    return None


def esrgan_to_sife(state_dict: dict, expected_keys=None) -> tuple[dict, ConversionReport]:
    """Convert ESRGAN RRDBNet x4 weights (BasicSR or the older names) to frfsr's SIFE
    (``sife.*``). The upsampler is kept where ``expected_keys`` has SIFE's upsampler (a model
    with ``sife_upsampler``), else dropped. Refuses anything else (ValueError)."""
    sd = dict(state_dict)
    upsampler = expected_keys is not None and "sife.conv_up1.weight" in set(expected_keys)
    # the original release's trunk conv is model.1.sub.<n_blocks>: the one sub-module without RDBs
    trunk = [k for k in sd if re.fullmatch(r"model\.1\.sub\.\d+\.(weight|bias)", k)]
    out, report = _rename(sd, lambda name: f"sife.conv_body.{name.rsplit('.', 1)[1]}" if name in trunk
                          else esrgan_key(name, upsampler), expected_keys)
    if not out:
        raise _nothing_matched("ESRGAN RRDB", state_dict)
    first = out.get("sife.conv_first.weight")
    if first is not None and first.shape[1] != 3:
        raise ValueError(f"this RRDBNet takes {first.shape[1]} input channels (an x2 or x1 model with pixel-unshuffle); "
                         "SIFE needs the x4 RRDBNet, which takes 3 (RGB)")
    return out, report


# ====================================================================== torchvision VGG
def _torchvision_vgg(state_dict: dict, depth: int, prefixes: tuple[str, ...],
                     expected_keys) -> tuple[dict, ConversionReport]:
    name = f"torchvision VGG{depth}"
    if any(k.endswith("running_mean") for k in state_dict):
        raise ValueError(f"this is a batch-norm VGG (vgg{depth}_bn), whose layer indices differ; "
                         f"use the plain VGG{depth} weights")
    found = _vgg_depth(state_dict)
    if found is not None and found != depth:
        raise ValueError(f"this is VGG{found} (its last conv is features.{last_conv_index(found)}), not {name}")
    out, report = {}, ConversionReport()
    for key, t in state_dict.items():
        m = re.fullmatch(r"features\.(\d+)\.(weight|bias)", key)
        if m and int(m.group(1)) in _TV_CONVS:
            layer = _TV_CONVS[int(m.group(1))]
            for i, prefix in enumerate(prefixes):
                out[f"{prefix}.{layer}.{m.group(2)}"] = t if i == 0 else t.clone()
            report.converted.append(key)
        elif m or key.startswith("classifier."):
            report.dropped.append(key)           # layers after conv3_1
        else:
            report.unexpected.append(key)
    if not out:
        raise _nothing_matched(name, state_dict)
    if expected_keys is not None:
        report.missing = sorted(set(expected_keys) - set(out))
    return out, report


def torchvision_vgg_to_texture_encoder(state_dict: dict, expected_keys=None) -> tuple[dict, ConversionReport]:
    """torchvision ``vgg16`` weights (``features.N.*``) up to conv3_1 into both trunks of the
    texture encoder (how C2-Matching initialises it before contrastive training)."""
    return _torchvision_vgg(state_dict, 16, ("texture_encoder.lr_trunk", "texture_encoder.ref_trunk"), expected_keys)


def torchvision_vgg19_to_extractor(state_dict: dict, expected_keys=None) -> tuple[dict, ConversionReport]:
    """torchvision ``vgg19`` weights up to conv3_1 into the frozen reference extractor."""
    return _torchvision_vgg(state_dict, 19, ("ref_extractor.vgg",), expected_keys)


# ====================================================================== C2-Matching and dispatch
def c2matching_extractor_to_texture_encoder(state_dict: dict, expected_keys=None) -> tuple[dict, ConversionReport]:
    """C2-Matching's contrastive feature extractor (``ContrasExtractorSep``: the same names as
    the authors' ``net_extractor``) into the texture encoder. Their restoration net is
    refused: it is a different architecture."""
    if any(_C2_RESTORATION.match(k) for k in state_dict):
        raise ValueError(_C2_MESSAGE)
    sub = {k: v for k, v in state_dict.items() if str(official_key(k) or "").startswith("texture_encoder.")
           or re.search(r"feature_extraction_image[12]\.(mean|std)$", k)}
    if not sub:
        raise _nothing_matched("C2-Matching feature extractor", state_dict)
    out, report = official_to_frfsr(sub, expected_keys)
    report.unexpected += [k for k in state_dict if k not in sub]
    return out, report


def _official(state_dict: dict, expected_keys=None) -> tuple[dict, ConversionReport]:
    if any(_C2_RESTORATION.match(k) for k in state_dict):
        raise ValueError(_C2_MESSAGE)
    out, report = official_to_frfsr(state_dict, expected_keys)
    if not out:
        raise _nothing_matched("FRFSR official", state_dict)
    return out, report


CONVERTERS = {
    "official": (_official, ""),
    "c2matching": (c2matching_extractor_to_texture_encoder, "texture_encoder."),
    "esrgan": (esrgan_to_sife, "sife."),
    "vgg16": (torchvision_vgg_to_texture_encoder, "texture_encoder."),
    "vgg19": (torchvision_vgg19_to_extractor, "ref_extractor."),
}


def convert_state_dict(state_dict: dict, kind: str = "auto", model=None) -> tuple[dict, ConversionReport]:
    """Convert a foreign state dict of ``kind`` ("auto" to detect it; see :data:`KINDS`).
    With ``model``, the report lists the model keys of the converted part left unset, and
    tensors that do not fit the model (unknown names, other shapes) raise ValueError."""
    if kind != "auto" and kind not in CONVERTERS:
        raise ValueError(f"unknown checkpoint kind {kind!r}; accepted: auto, {', '.join(KINDS)}")
    detected = detect_kind(state_dict)
    if detected == "c2matching-restoration":
        raise ValueError(_C2_MESSAGE)
    if kind == "auto":
        if detected in ("vgg", "vgg-bn"):
            raise ValueError("this is a torchvision VGG truncated or with batch norm: say which with kind='vgg16' "
                             "(texture encoder) or kind='vgg19' (reference extractor)")
        if detected not in CONVERTERS:
            raise ValueError(f"cannot tell what this checkpoint is: {_describe(state_dict)}; accepted kinds: "
                             f"{', '.join(KINDS)}")
        kind = detected
    convert, prefix = CONVERTERS[kind]
    ours = model.state_dict() if model is not None else None
    expected = [k for k in ours if k.startswith(prefix)] if ours is not None else None
    out, report = convert(state_dict, expected)
    if ours is not None:
        extra = sorted(k for k in out if k not in ours)
        shapes = [f"{k}: {tuple(out[k].shape)} in the checkpoint, {tuple(ours[k].shape)} in the model"
                  for k in out if k in ours and out[k].shape != ours[k].shape]
        problems = [f"{len(shapes)} tensors have other shapes ({'; '.join(shapes[:3])})" if shapes else "",
                    f"{len(extra)} tensors have no place in the model ({', '.join(extra[:3])})" if extra else ""]
        if extra or shapes:
            raise ValueError(f"this {kind} checkpoint does not fit the model's config ({model.config.name}): "
                             + ", ".join(p for p in problems if p))
    return out, report
