"""ComfyUI nodes for FRFSR (V1 node definitions).

A thin adapter: the model work is :mod:`frfsr`'s; these classes declare inputs and outputs,
convert ComfyUI IMAGE tensors ([B, H, W, C] float in [0, 1]) to and from the model's NCHW
layout, move things between devices, and report progress and cancellation to ComfyUI.

Graph: LoadFRFSR / LoadFRFSRFromHub -> FRFSR_MODEL; MatchReference -> FRFSR_MATCH;
AlignTextures -> FRFSR_TEXTURES; SuperResolve -> IMAGE (4x).
"""
from __future__ import annotations

import contextlib
import dataclasses
import re
from pathlib import Path, PurePosixPath

import torch

from frfsr import FRFSR, AlignedTextures, Correspondence
from frfsr.checks import MIN_LR_SIZE

from . import comfy_compat as cc

# frfsr.pipeline / frfsr.hub / frfsr.tiling are imported where used: ComfyUI starts faster,
# and importing the pack (pytest imports the repository root too) needs only the model.

CATEGORY = "FRFSR"
MODEL_TYPE, MATCH_TYPE, TEXTURES_TYPE = "FRFSR_MODEL", "FRFSR_MATCH", "FRFSR_TEXTURES"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
REFERENCE_MODES = ["auto", "pair", "all"]


# ---------------------------------------------------------------------- the FRFSR_MODEL value
@dataclasses.dataclass
class FRFSRModel:
    """What flows along an FRFSR_MODEL link: the network plus where it runs and where it
    waits between runs (ComfyUI's offload device)."""

    model: FRFSR
    device: torch.device
    offload: torch.device
    name: str

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @contextlib.contextmanager
    def active(self):
        """Move the model to its compute device for one node's work, then back to offload."""
        nbytes = sum(p.numel() * p.element_size() for p in self.model.parameters())
        cc.free_memory(3 * nbytes, self.device)
        self.model.to(self.device)
        try:
            with torch.no_grad():          # plain tensors: other nodes may modify them in place
                yield self.model
        finally:
            if self.offload != self.device:
                self.model.to(self.offload)
                cc.soft_empty_cache()

    def __repr__(self) -> str:
        return f"FRFSRModel({self.name!r}, {self.model.config.name}, {self.dtype}, on {self.device})"


# ---------------------------------------------------------------------- conversions
def image_to_nchw(image: torch.Tensor, name: str, device, dtype) -> torch.Tensor:
    """ComfyUI IMAGE [B, H, W, C] -> model input [B, 3, H, W] (grayscale repeated, alpha dropped)."""
    if not isinstance(image, torch.Tensor) or image.dim() != 4:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"{name} must be a ComfyUI IMAGE of shape [B, H, W, C], got {shape}")
    c = image.shape[-1]
    if c == 1:
        image = image.expand(-1, -1, -1, 3)
    elif c in (3, 4):
        image = image[..., :3]
    else:
        raise ValueError(f"{name} has {c} channels; an IMAGE must have 1, 3 or 4 channels [B, H, W, C]")
    return image.permute(0, 3, 1, 2).to(device=device, dtype=dtype).clamp(0, 1).contiguous()


def nchw_to_image(t: torch.Tensor) -> torch.Tensor:
    """Model output [B, C, H, W] -> ComfyUI IMAGE [B, H, W, 3] float32 on the intermediate device."""
    if t.shape[1] == 1:
        t = t.expand(-1, 3, -1, -1)
    return t.permute(0, 2, 3, 1).clamp(0, 1).float().to(cc.intermediate_device()).contiguous()


def move(obj, device):
    """Move every tensor inside nested frfsr result dataclasses/tuples to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, (tuple, list)):
        return type(obj)(move(v, device) for v in obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(obj, **{f.name: move(getattr(obj, f.name), device)
                                           for f in dataclasses.fields(obj) if f.init})
    return obj


# ---------------------------------------------------------------------- loading
BUNDLED = "frfsr-default"          # the weights shipped in frfsr/weights/default, when present
WEIGHTS_NAME, CONFIG_NAME = "model.safetensors", "config.json"


def model_choices() -> list[str]:
    """LoadFRFSR's list: the bundled weights (if this copy has them), then every
    ``.safetensors`` under the model folders."""
    from frfsr import hub
    return ([BUNDLED] if hub.BUNDLED_DIR.is_dir() else []) + cc.list_models()


def load_model(source, dtype: str) -> FRFSR:
    """Load through :meth:`frfsr.FRFSRPipeline.from_pretrained` (the library's one loader:
    config checks, weights that must fit the config), on the CPU."""
    from frfsr.pipeline import FRFSRPipeline
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
    return FRFSRPipeline.from_pretrained(source, torch_dtype=DTYPES[dtype], device="cpu").model


def model_folder(name: str) -> Path:
    """The model folder for a LoadFRFSR choice (checked against the listing first)."""
    if name == BUNDLED:
        from frfsr import hub
        return hub.BUNDLED_DIR
    weights = cc.resolve_model(name)
    if weights.name != WEIGHTS_NAME or not weights.with_name(CONFIG_NAME).is_file():
        raise ValueError(f"{name} is not an FRFSR model folder: put {CONFIG_NAME} and {WEIGHTS_NAME} together in "
                         f"models/{cc.MODEL_FOLDER}/<name>/ (as save_pretrained writes them or the Hub holds them; "
                         "the authors' checkpoints convert with `frfsr convert`)")
    return weights.parent


def _handle(model: FRFSR, name: str, device: str) -> tuple[FRFSRModel]:
    dev = cc.compute_device(device)
    offload = cc.offload_device(dev)
    model = model.to(offload).eval().requires_grad_(False)
    return (FRFSRModel(model, dev, offload, name),)


_REPO_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]{0,95}/)?[A-Za-z0-9][\w.-]{0,95}$")
_REVISION = re.compile(r"^[\w.\-/]{1,255}$")


def validate_repo_id(repo_id: str) -> str:
    """Refuse anything but ``name`` or ``owner/name`` (letters, digits, ``-``, ``_``, ``.``),
    before any request is made."""
    rid = repo_id.strip() if isinstance(repo_id, str) else repo_id
    if (not isinstance(rid, str) or not _REPO_ID.fullmatch(rid) or "--" in rid or ".." in rid
            or rid.endswith((".git", ".", "-"))):
        raise ValueError(f"invalid Hugging Face repo id {repo_id!r}: expected 'owner/name' made of letters, "
                         "digits, '-', '_' and '.' (no '..', '--', spaces, URLs or paths)")
    return rid


def validate_revision(revision: str) -> str:
    rev = (revision or "").strip() or "main"
    if not _REVISION.fullmatch(rev) or ".." in rev or rev.startswith("/"):
        raise ValueError(f"invalid revision {revision!r}: use a branch, tag or commit hash")
    return rev


def validate_repo_file(filename: str) -> str:
    """The weights inside a Hub repo: ``model.safetensors`` or ``<subfolder>/model.safetensors``."""
    name = (filename or "").strip() or WEIGHTS_NAME
    pure = PurePosixPath(name)
    if pure.is_absolute() or ".." in pure.parts or "\\" in name or ":" in name or pure.name != WEIGHTS_NAME:
        raise ValueError(f"invalid file {filename!r}: give the weights' path inside the repo, "
                         f"'{WEIGHTS_NAME}' or '<subfolder>/{WEIGHTS_NAME}' ({CONFIG_NAME} beside it)")
    return name


def download_from_hub(repo_id: str, revision: str, filename: str) -> Path:
    """Download ``filename`` and the config.json beside it into the Hugging Face cache
    (verified, offline-aware: :mod:`frfsr.hub`); return the local folder holding both.
    Always the Hub: a repo id is never read as a local path."""
    from frfsr import hub

    parent = PurePosixPath(filename).parent
    config_name = CONFIG_NAME if str(parent) == "." else f"{parent}/{CONFIG_NAME}"
    kw = dict(revision=revision, cache_dir=None, token=None, local_files_only=False, force_download=False)
    config = hub._download(repo_id, config_name, **kw)
    if "snapshots" in config.parts:        # fetch the weights from the same commit, even if the branch moves
        parts = config.parts
        kw["revision"] = parts[len(parts) - 1 - parts[::-1].index("snapshots") + 1]
    return hub._download(repo_id, filename, **kw).parent


def tile_args(tile_size: int, tile_overlap: int) -> tuple[int | str | None, int]:
    """Node widgets -> :func:`frfsr.tiling.restore_tiled` arguments: tile 0 is ``"auto"``
    (from free memory), anything else is raised to the model's minimum input; the overlap
    is capped at half the tile."""
    if tile_size <= 0:
        return "auto", max(0, tile_overlap)
    tile = max(int(tile_size), MIN_LR_SIZE)
    return tile, max(0, min(int(tile_overlap), tile // 2))


# ---------------------------------------------------------------------- nodes
_DEVICE_INPUT = (cc.DEVICE_CHOICES, {"default": "auto", "tooltip": "auto: ComfyUI's GPU when there is one, else CPU"})
_DTYPE_INPUT = (list(DTYPES), {"default": "float32", "tooltip": "weight precision; float32 is the reference"})


class LoadFRFSR:
    """Load an FRFSR model from ComfyUI/models/frfsr."""

    DESCRIPTION = ("Loads FRFSR weights from ComfyUI/models/frfsr/<name>/ (config.json + model.safetensors, "
                   "as save_pretrained writes them and the Hub holds them).")
    CATEGORY = CATEGORY
    RETURN_TYPES = (MODEL_TYPE,)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("the FRFSR network, for MatchReference, AlignTextures and SuperResolve",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model_name": (model_choices(), {"tooltip": "models/frfsr/<name>/model.safetensors (config.json beside "
                                                        "it); frfsr-default = the weights bundled with frfsr"}),
            "device": _DEVICE_INPUT,
            "dtype": _DTYPE_INPUT,
        }}

    @classmethod
    def IS_CHANGED(cls, model_name, device="auto", dtype="float32"):
        """Reload when the weights file (or its config) changes on disk."""
        try:
            folder = Path(model_folder(model_name))
        except (ValueError, FileNotFoundError):
            return ""
        files = [folder / WEIGHTS_NAME, folder / CONFIG_NAME]
        return f"{model_name}:" + ",".join(str(f.stat().st_mtime) for f in files if f.is_file())

    def load(self, model_name: str, device: str = "auto", dtype: str = "float32"):
        folder = model_folder(model_name)
        return _handle(load_model(folder, dtype), model_name, device)


class LoadFRFSRFromHub:
    """Download an FRFSR model from the Hugging Face Hub (cached) and load it."""

    DESCRIPTION = ("Downloads FRFSR weights from a Hugging Face Hub repo into the Hugging Face cache "
                   "and loads them. Set HF_HUB_OFFLINE=1 to use the cache only.")
    CATEGORY = CATEGORY
    RETURN_TYPES = (MODEL_TYPE,)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("the FRFSR network",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "repo_id": ("STRING", {"default": "frfsr/frfsr-paper", "multiline": False,
                                       "tooltip": "Hugging Face repo id, 'owner/name'"}),
                "revision": ("STRING", {"default": "main", "multiline": False,
                                        "tooltip": "branch, tag or commit hash (a commit pins the weights)"}),
                "device": _DEVICE_INPUT,
                "dtype": _DTYPE_INPUT,
            },
            "optional": {
                "file": ("STRING", {"default": "", "multiline": False, "tooltip":
                                    "for a repo with several models: '<subfolder>/model.safetensors'; "
                                    "empty = model.safetensors at the top"}),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, repo_id, revision, file=""):
        """Checked by ComfyUI when the prompt is queued, before anything runs or downloads."""
        try:       # a value linked from another node is None here; load() checks it when it arrives
            for check, value in ((validate_repo_id, repo_id), (validate_revision, revision), (validate_repo_file, file)):
                if value is not None:
                    check(value)
        except ValueError as e:
            return str(e)
        return True

    def load(self, repo_id: str, revision: str = "main", device: str = "auto", dtype: str = "float32",
             file: str = ""):
        rid, rev, name = validate_repo_id(repo_id), validate_revision(revision), validate_repo_file(file)
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
        folder = download_from_hub(rid, rev, name)
        label = f"{rid}@{rev}" + ("" if name == WEIGHTS_NAME else f":{name}")
        return _handle(load_model(folder, dtype), label, device)


class MatchReference:
    """Find, for every LR patch, the most similar Reference patch."""

    DESCRIPTION = ("Matches the low-resolution image against the Reference image(s). A Reference batch "
                   "of the LR batch's size pairs them one to one; a batch of 1 serves every LR; other "
                   "batches give every LR all the References. Outputs the match and its confidence map.")
    CATEGORY = CATEGORY
    RETURN_TYPES = (MATCH_TYPE, "IMAGE")
    RETURN_NAMES = ("match", "confidence")
    OUTPUT_TOOLTIPS = ("correspondence between LR and Reference, for AlignTextures",
                       "match confidence per LR pixel (white = the Reference explains this patch well)")
    FUNCTION = "match"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (MODEL_TYPE,),
            "image": ("IMAGE", {"tooltip": "the low-resolution image(s) to upscale, at least 15x15"}),
            "reference": ("IMAGE", {"tooltip": "high-resolution Reference image(s), at least 12x12"}),
            "reference_mode": (REFERENCE_MODES, {"default": "auto", "tooltip":
                               "pair: Reference i serves LR i; all: every Reference serves every LR; "
                               "auto: pair when the batch sizes match, else all"}),
            "match_mode": (("auto", "exact", "fast"), {"default": "auto", "tooltip":
                           "exact: every LR patch against every Reference patch; fast: coarse-to-fine, "
                           "linear in the image size; auto: fast for large inputs"}),
        }}

    def match(self, model: FRFSRModel, image, reference, reference_mode: str = "auto", match_mode: str = "auto"):
        if reference_mode not in REFERENCE_MODES:
            raise ValueError(f"reference_mode must be one of {REFERENCE_MODES}, got {reference_mode!r}")
        with model.active() as net:
            lr = image_to_nchw(image, "image", model.device, model.dtype)
            ref = image_to_nchw(reference, "reference", model.device, model.dtype)
            b, n = lr.shape[0], ref.shape[0]
            if reference_mode == "pair" and n not in (1, b):
                raise ValueError(f"reference_mode 'pair' needs one Reference per image ({b}) or one for all; got {n}")
            if reference_mode == "all" or (reference_mode == "auto" and n not in (1, b)):
                ref = list(ref.split(1))          # several References for every LR
            cc.check_interrupt()
            corr = net.match(lr, ref, match_mode=match_mode)
            confidence = nchw_to_image(corr.confidence.clamp(0, 1))
            corr = move(corr, cc.intermediate_device())
        return (corr, confidence)


class AlignTextures:
    """Warp the Reference features onto the LR grid along the match."""

    DESCRIPTION = "Warps the Reference textures onto the LR image along the match; previews the warped Reference."
    CATEGORY = CATEGORY
    RETURN_TYPES = (TEXTURES_TYPE, "IMAGE")
    RETURN_NAMES = ("textures", "warped_reference")
    OUTPUT_TOOLTIPS = ("aligned Reference textures, for SuperResolve",
                       "the Reference warped onto the 4x output grid (a preview of what gets transferred)")
    FUNCTION = "align"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": (MODEL_TYPE,), "match": (MATCH_TYPE,)}}

    def align(self, model: FRFSRModel, match: Correspondence):
        if not isinstance(match, Correspondence):
            raise TypeError(f"match must come from MatchReference, got {type(match).__name__}")
        with model.active() as net:
            cc.check_interrupt()
            tex = net.align(move(match, model.device))
            preview = nchw_to_image(tex.warped_ref)
            tex = move(tex, cc.intermediate_device())
        return (tex, preview)


class SuperResolve:
    """Restore the 4x image from the LR image and the aligned textures, tile by tile."""

    DESCRIPTION = ("Restores the 4x image from the LR image and the aligned textures, tile by tile "
                   "(tile_size in LR pixels bounds the memory; 0 picks it from the free memory).")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    OUTPUT_TOOLTIPS = ("the 4x super-resolved image(s)",)
    FUNCTION = "upscale"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (MODEL_TYPE,),
            "image": ("IMAGE", {"tooltip": "the same LR image(s) given to MatchReference"}),
            "textures": (TEXTURES_TYPE,),
            "tile_size": ("INT", {"default": 0, "min": 0, "max": 8192, "step": 8, "tooltip":
                                  "tile side in LR pixels; 0 = auto (from free memory, halved on out-of-memory); "
                                  "larger than the image = one piece; the minimum is 15"}),
            "tile_overlap": ("INT", {"default": 16, "min": 0, "max": 256, "step": 1, "tooltip":
                                     "LR pixels shared by neighbouring tiles, blended smoothly (at most half the tile)"}),
        }}

    def upscale(self, model: FRFSRModel, image, textures: AlignedTextures, tile_size: int = 0,
                tile_overlap: int = 16):
        if not isinstance(textures, AlignedTextures):
            raise TypeError(f"textures must come from AlignTextures, got {type(textures).__name__}")
        lr = image_to_nchw(image, "image", cc.intermediate_device(), model.dtype)
        n, (h, w) = textures.confidence.shape[0], textures.lr_size
        if (n, h, w) != (lr.shape[0], *lr.shape[-2:]):
            raise ValueError(f"the textures were made for {n} image(s) of {h}x{w}, but image is {lr.shape[0]} of "
                             f"{lr.shape[-2]}x{lr.shape[-1]}: connect the same image to MatchReference and SuperResolve")
        from frfsr.tiling import restore_tiled

        tile, overlap = tile_args(tile_size, tile_overlap)
        pbar = cc.progress_bar(1)
        with model.active() as net:
            sr = restore_tiled(net, lr, move(textures, model.device), tile=tile, overlap=overlap,
                               progress=lambda done, total: pbar.update_absolute(done, total),
                               interrupt=cc.check_interrupt)
        return (nchw_to_image(sr),)


NODE_CLASS_MAPPINGS = {
    "LoadFRFSR": LoadFRFSR,
    "LoadFRFSRFromHub": LoadFRFSRFromHub,
    "FRFSRMatchReference": MatchReference,
    "FRFSRAlignTextures": AlignTextures,
    "FRFSRSuperResolve": SuperResolve,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "LoadFRFSR": "Load FRFSR Model",
    "LoadFRFSRFromHub": "Load FRFSR Model (Hugging Face Hub)",
    "FRFSRMatchReference": "FRFSR Match Reference",
    "FRFSRAlignTextures": "FRFSR Align Textures",
    "FRFSRSuperResolve": "FRFSR Super-Resolve (4x)",
}
