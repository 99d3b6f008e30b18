"""ComfyUI nodes for FRFSR: each node defined once, here.

A thin adapter: the model work is :mod:`frfsr`'s; these classes declare inputs and outputs,
convert ComfyUI IMAGE tensors ([B, H, W, C] float in [0, 1]) to and from the model's NCHW
layout, move things between devices, and report progress and cancellation to ComfyUI.

Graph: LoadFRFSR / LoadFRFSRFromHub -> FRFSR_MODEL; then either Upscale (one node: LR +
Reference(s) -> IMAGE 4x), or the three steps MatchReference -> FRFSR_MATCH, AlignTextures
-> FRFSR_TEXTURES, SuperResolve -> IMAGE (4x), which show the match on the way.
SelectReferences picks, from a batch of candidate IMAGEs, the Reference(s) most relevant to
an LR (:mod:`frfsr.retrieval`), for any of them.

Each class below is the one definition of a node: its inputs (``input_spec``, in the
``(type, options)`` form of ComfyUI's INPUT_TYPES), its outputs (``OUTPUTS``), its checks and
its work. As they are, these classes are ComfyUI V1 nodes (``NODE_CLASS_MAPPINGS``); on a
ComfyUI with the V3 interface, :mod:`frfsr_nodes.v3` makes ``io.ComfyNode`` classes from
the same definitions. Every choice input is a list, so that ComfyUI checks it when a prompt
is queued.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import re
import warnings
from pathlib import Path, PurePosixPath

import torch

from frfsr import FRFSR, AlignedTextures, Correspondence
from frfsr.checks import MIN_LR_SIZE
from frfsr.memory import step_memory
from frfsr import hub
from frfsr.hub import CONFIG_NAME, WEIGHTS_NAME

from . import comfy_compat as cc

# frfsr.pipeline / frfsr.tiling are imported where used: ComfyUI starts faster, and importing
# the pack (pytest imports the repository root too) needs only the model (frfsr.hub is part of
# it: the model loads itself).

CATEGORY = "FRFSR"
MODEL_TYPE, MATCH_TYPE, TEXTURES_TYPE = "FRFSR_MODEL", "FRFSR_MATCH", "FRFSR_TEXTURES"
DTYPE_CHOICES = ["auto", "float32", "float16", "bfloat16"]     # names of frfsr.devices (auto: resolve_dtype)
REFERENCE_MODES = ["auto", "pair", "all"]
MATCH_MODES = ["auto", "exact", "fast"]                        # FRFSR.match's match_mode


# ---------------------------------------------------------------------- the FRFSR_MODEL value
@dataclasses.dataclass
class FRFSRModel:
    """What flows along an FRFSR_MODEL link: the network plus where it runs and where it
    waits between runs (ComfyUI's offload device). ``placement`` moves it; inside ComfyUI
    it holds the ComfyUI model patcher that ComfyUI's memory management counts."""

    model: FRFSR
    device: torch.device
    offload: torch.device
    name: str
    placement: cc.ManagedModel = dataclasses.field(default=None, repr=False)

    def __post_init__(self):
        if self.placement is None:
            self.placement = cc.ManagedModel(self.model, self.device, self.offload)

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @contextlib.contextmanager
    def active(self, memory_required: int = 0):
        """The model on its compute device for one node's work (after asking for
        ``memory_required`` bytes besides its weights), then back on its offload device."""
        with self.placement.use(memory_required) as net:
            with torch.no_grad():          # plain tensors: other nodes may modify them in place
                yield net

    def __repr__(self) -> str:
        return f"FRFSRModel({self.name!r}, {self.model.config.name}, {self.dtype}, on {self.device})"


# ---------------------------------------------------------------------- conversions
class FRFSRImageWarning(UserWarning):
    """An IMAGE input holds values slightly outside [0, 1] (they are clipped)."""


RANGE_TOLERANCE = 1e-3         # overshoot that is rounding, not a wrong value range: clipped silently
RANGE_REFUSED = (-0.5, 1.5)    # beyond this the tensor is not a [0, 1] image at all (0-255, [-1, 1])


def check_image_values(image: torch.Tensor, name: str) -> None:
    """ComfyUI IMAGEs hold values in [0, 1]. NaN/inf and values far outside (a 0-255 or
    [-1, 1] tensor) are refused; a small overshoot beyond rounding is clipped with a warning."""
    if image.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(image.shape)}); connect an image with pixels")
    if not bool(torch.isfinite(image).all()):
        raise ValueError(f"{name} holds NaN or infinite values; an IMAGE must hold values in [0, 1]")
    lo, hi = (float(v) for v in torch.aminmax(image.float()))
    if lo < RANGE_REFUSED[0] or hi > RANGE_REFUSED[1]:
        hint = " (is it a 0-255 image?)" if hi > 2 else " (is it a [-1, 1] tensor?)" if lo < -0.5 else ""
        raise ValueError(f"{name} values span [{lo:.4g}, {hi:.4g}], but a ComfyUI IMAGE holds values in [0, 1]{hint}")
    if lo < -RANGE_TOLERANCE or hi > 1 + RANGE_TOLERANCE:
        warnings.warn(f"FRFSR: {name} values span [{lo:.4g}, {hi:.4g}], outside [0, 1]; they are clipped to [0, 1]",
                      FRFSRImageWarning, stacklevel=3)


def image_input(image: torch.Tensor, name: str, device, dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
    """ComfyUI IMAGE [B, H, W, C] -> the model input [B, 3, H, W] on ``device`` in ``dtype``
    (grayscale repeated) and its alpha channel [B, 1, H, W] float32 or None: the IMAGE's values
    checked (:func:`check_image_values`), then converted by the library
    (:func:`frfsr.image_io.to_model_input`)."""
    from frfsr.image_io import to_model_input
    if not isinstance(image, torch.Tensor) or image.dim() != 4:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"{name} must be a ComfyUI IMAGE of shape [B, H, W, C], got {shape}")
    c = image.shape[-1]
    if c not in (1, 3, 4):
        raise ValueError(f"{name} has {c} channels; an IMAGE must have 1, 3 or 4 channels [B, H, W, C]")
    check_image_values(image[..., :3], name)
    rgb, alpha, _ = to_model_input(image.clamp(0, 1).permute(0, 3, 1, 2), name)
    return rgb.to(device=device, dtype=dtype).contiguous(), alpha


def nchw_to_image(t: torch.Tensor) -> torch.Tensor:
    """Model output [B, C, H, W] -> ComfyUI IMAGE [B, H, W, 3] float32 on the intermediate device."""
    if t.shape[1] == 1:
        t = t.expand(-1, 3, -1, -1)
    return t.permute(0, 2, 3, 1).clamp(0, 1).float().to(cc.intermediate_device()).contiguous()




def resize(t: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[B, C, H, W] float -> ``size`` (h, w): bicubic, antialiased when it shrinks (as PIL's
    bicubic resize: no aliasing from skipped pixels), clipped to [0, 1]."""
    if tuple(t.shape[-2:]) == tuple(size):
        return t
    import torch.nn.functional as F
    return F.interpolate(t.float(), size=tuple(size), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)


def output_image(sr: torch.Tensor, alpha: torch.Tensor | None = None, size: tuple[int, int] | None = None):
    """The SR result [B, 3, H, W] as a ComfyUI IMAGE, resized to ``size`` (h, w) if given,
    with the input's ``alpha`` ([B, 1, h, w]) resized to it and appended as a 4th channel."""
    if size is not None:
        sr = resize(sr, size)
    image = nchw_to_image(sr)
    if alpha is not None:
        a = resize(alpha.to(image.device), tuple(image.shape[1:3])).permute(0, 2, 3, 1)
        image = torch.cat([image, a.to(image.dtype)], dim=-1).contiguous()
    return image


# ---------------------------------------------------------------------- loading
BUNDLED = hub.DEFAULT_MODEL         # the weights shipped in frfsr/weights/default, when present


def _bundled() -> dict:
    """The bundled weights this copy has: name -> folder."""
    return {name: folder for name, folder in hub.bundled_models().items() if folder.is_dir()}


def model_choices() -> list[str]:
    """LoadFRFSR's list: the bundled weights (those this copy has), then every
    ``.safetensors`` under the model folders."""
    return list(_bundled()) + cc.list_models()


def _check_dtype(dtype: str) -> None:
    if dtype not in DTYPE_CHOICES:
        raise ValueError(f"dtype must be one of {DTYPE_CHOICES}, got {dtype!r}")


def load_model(source, dtype: str, device: str = "auto", **hub_kwargs) -> FRFSR:
    """Load through :meth:`frfsr.FRFSR.from_pretrained` (the library's one loader: config
    checks, weights that must fit the config, verified Hub downloads), on the CPU, in the
    precision ``dtype`` means for the device it will run on ("auto":
    :func:`frfsr.devices.resolve_dtype`). ``hub_kwargs``: for a Hub repo id (revision, ...)."""
    from frfsr.devices import resolve_dtype
    _check_dtype(dtype)
    torch_dtype = resolve_dtype(dtype, cc.compute_device(device))
    return FRFSR.from_pretrained(source, torch_dtype=torch_dtype, device="cpu", **hub_kwargs)


def model_folder(name: str) -> Path:
    """The model folder for a LoadFRFSR choice (checked against the listing first)."""
    bundled = _bundled()
    if name in bundled:
        return bundled[name]
    weights = cc.resolve_model(name, offered=tuple(bundled))
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


_REVISION = re.compile(r"^[A-Za-z0-9_.\-/]{1,255}$")


def validate_repo_id(repo_id: str) -> str:
    """Refuse anything but ``name`` or ``owner/name`` in ASCII letters, digits, ``-``, ``_``
    and ``.``, before any request is made: ASCII first (older huggingface_hub releases let
    any Unicode letter through), then huggingface_hub's own validator."""
    from huggingface_hub.utils import HFValidationError
    from huggingface_hub.utils import validate_repo_id as hf_validate_repo_id

    rid = repo_id.strip() if isinstance(repo_id, str) else repo_id
    if not isinstance(rid, str) or not rid:
        raise ValueError(f"invalid Hugging Face repo id {repo_id!r}: expected 'owner/name'")
    bad = [ch for ch in rid if not ch.isascii()]
    if bad:
        raise ValueError(f"invalid Hugging Face repo id {repo_id!r}: it must be ASCII, but holds "
                         f"{', '.join(repr(ch) for ch in dict.fromkeys(bad))} (letters a-z, digits, '-', '_' and '.' only)")
    try:
        hf_validate_repo_id(rid)
    except HFValidationError as e:
        raise ValueError(f"invalid Hugging Face repo id {repo_id!r}: expected 'owner/name' made of letters, "
                         f"digits, '-', '_' and '.' (no '..', '--', spaces, URLs or paths): {e}") from None
    return rid


def validate_revision(revision: str) -> str:
    rev = (revision or "").strip() or "main"
    if not _REVISION.fullmatch(rev) or ".." in rev or rev.startswith("/"):
        raise ValueError(f"invalid revision {revision!r}: use a branch, tag or commit hash (ASCII)")
    return rev


def validate_repo_file(filename: str) -> str:
    """The weights inside a Hub repo: ``model.safetensors`` or ``<subfolder>/model.safetensors``."""
    name = (filename or "").strip() or WEIGHTS_NAME
    pure = PurePosixPath(name)
    if pure.is_absolute() or ".." in pure.parts or "\\" in name or ":" in name or pure.name != WEIGHTS_NAME:
        raise ValueError(f"invalid file {filename!r}: give the weights' path inside the repo, "
                         f"'{WEIGHTS_NAME}' or '<subfolder>/{WEIGHTS_NAME}' ({CONFIG_NAME} beside it)")
    return name


def reference_input(ref: torch.Tensor, lr_batch: int, mode: str):
    """A Reference IMAGE batch as the model takes it: the batch itself (Reference i serves LR
    i, or one serves all) or a list of single References (every one serves every LR)."""
    if mode not in REFERENCE_MODES:
        raise ValueError(f"reference_mode must be one of {REFERENCE_MODES}, got {mode!r}")
    n = ref.shape[0]
    if mode == "pair" and n not in (1, lr_batch):
        raise ValueError(f"reference_mode 'pair' needs one Reference per image ({lr_batch}) or one for all; got {n}")
    if mode == "all" or (mode == "auto" and n not in (1, lr_batch)):
        return list(ref.split(1))          # several References for every LR
    return ref


def lr_and_references(model: "FRFSRModel", image, reference, mode: str, views):
    """The LR and Reference IMAGEs as model inputs on the intermediate device (:func:`image_input`),
    the LR's alpha channel (or None), the References as :func:`reference_input` gives them, and
    the Reference pixels to encode (over every copy of the RefViews ``views``)."""
    lr, alpha = image_input(image, "image", cc.intermediate_device(), model.dtype)
    ref = reference_input(image_input(reference, "reference", cc.intermediate_device(), model.dtype)[0],
                          lr.shape[0], mode)
    refs = ref if isinstance(ref, list) else [ref]
    return lr, alpha, ref, sum(views.pixels(*r.shape[-2:]) for r in refs)


PREVIEW_SIDE = 512         # longest side of the preview shown on the node during a tiled run


class TilePreview:
    """The result so far of a tiled run, for ComfyUI's preview on the node: the first image of
    the batch at most PREVIEW_SIDE pixels wide, the LR enlarged (bilinear) where no tile is
    done yet, each restored tile pasted in as it comes."""

    def __init__(self, lr: torch.Tensor):
        h, w = lr.shape[-2:]
        self.scale = 4 * min(1.0, PREVIEW_SIDE / (4 * max(h, w)))        # preview pixels per LR pixel
        size = (max(1, round(h * self.scale)), max(1, round(w * self.scale)))
        self.canvas = resize(lr[:1].float().cpu(), size)

    def paste(self, window, sr: torch.Tensor) -> None:
        y0, y1, x0, x1 = (round(v * self.scale) for v in window)
        if y1 > y0 and x1 > x0:
            self.canvas[..., y0:y1, x0:x1] = resize(sr[:1].float().cpu(), (y1 - y0, x1 - x0))

    def image(self):
        """ComfyUI's preview: ("JPEG", PIL image, longest side)."""
        from PIL import Image
        pixels = (self.canvas[0].permute(1, 2, 0) * 255).round().clamp(0, 255).to(torch.uint8).numpy()
        return ("JPEG", Image.fromarray(pixels), PREVIEW_SIDE)


def run_tiled(model: "FRFSRModel", tiler, lr: torch.Tensor, inputs, ref_pixels: int, tile_size: int,
              tile_overlap: int, alpha: torch.Tensor | None = None, size: tuple[int, int] | None = None
              ) -> tuple[torch.Tensor]:
    """``tiler(net, lr, inputs(), tile=..., ...)`` (a :mod:`frfsr.tiling` function) with the
    model on its device, ComfyUI's progress bar per tile (with a preview of the result so far
    where ComfyUI shows one, when there are several tiles) and the cancel check between
    tiles; the result as :func:`output_image` makes it (``alpha``, ``size``)."""
    tile, overlap = tile_args(tile_size, tile_overlap)
    pbar = cc.progress_bar(1)
    preview = TilePreview(lr) if cc.shows_previews() else None

    def progress(done: int, total: int) -> None:
        shown = preview.image() if preview is not None and 1 < total and done < total else None
        pbar.update_absolute(done, total, shown)

    with model.active(step_memory(model.model, lr.shape, ref_pixels, tile)) as net:
        sr = tiler(net, lr, inputs(), tile=tile, overlap=overlap, progress=progress, interrupt=cc.check_interrupt,
                   on_tile=preview.paste if preview is not None else None)
    return (output_image(sr, alpha, size),)


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
_DTYPE_INPUT = (DTYPE_CHOICES, {"default": "auto", "tooltip": "weight precision. auto: bfloat16 on a GPU and on a CPU "
                                                          "that computes it natively, else float32 (the reference)"})
_MODEL_INPUT = (MODEL_TYPE, {"tooltip": "the FRFSR model, from Load FRFSR Model or Load FRFSR Model (Hugging Face Hub)"})
_MATCH_MODE_INPUT = (MATCH_MODES, {"default": "auto", "tooltip":
                     "exact: every LR patch against every Reference patch (the release's matching); fast: "
                     "coarse-to-fine, linear in the image size, slightly different matches; auto: fast for large "
                     "inputs"})
_REF_SCALES_INPUT = ("STRING", {"default": "1", "tooltip":
                     "Reference scale pyramid: factors the Reference is also matched at, e.g. '1 0.71 0.5' for a "
                     "Reference shot closer than the LR; '1': the Reference as it is"})
_REF_ANGLES_INPUT = ("STRING", {"default": "0", "tooltip":
                     "Reference rotations: angles in degrees (counter-clockwise) the Reference is also matched at, "
                     "e.g. '0 30 -30' for a Reference shot at another camera roll (4.7x the matching cost); '0': "
                     "upright as it is"})


def _numbers(text: str, name: str, example: str) -> list[float]:
    try:
        return [float(v) for v in str(text).replace(",", " ").split()]
    except ValueError:
        raise ValueError(f"{name} must be numbers separated by spaces, e.g. '{example}'; got {text!r}") from None


def parse_ref_scales(text: str) -> tuple[float, ...]:
    """'1 0.71 0.5' or '1, 0.5' -> (1.0, 0.71, 0.5) (checked by :func:`ref_views`)."""
    return tuple(_numbers(text, "ref_scales", "1 0.71 0.5"))


def parse_ref_angles(text: str) -> tuple[float, ...]:
    """'0 30 -30' -> (0.0, 30.0, -30.0) (checked by :func:`ref_views`)."""
    return tuple(_numbers(text, "ref_angles", "0 30 -30"))


def ref_views(ref_scales: str, ref_angles: str):
    """The nodes' ``ref_scales`` and ``ref_angles`` texts as the library's RefViews (checked there)."""
    from frfsr.models.frfsr import RefViews
    return RefViews(parse_ref_scales(ref_scales), parse_ref_angles(ref_angles))


_REFERENCE_MODE_INPUT = (REFERENCE_MODES, {"default": "auto", "tooltip":
                         "pair: Reference i serves LR i; all: every Reference serves every LR; "
                         "auto: pair when the batch sizes match (or one Reference serves all), else all"})
_TILE_INPUTS = {             # the tiling of the restoration step (SuperResolve and Upscale)
    "tile_size": ("INT", {"default": 0, "min": 0, "max": 8192, "step": 8, "tooltip":
                          "tile side in LR pixels; 0 = auto (from free memory, halved on out-of-memory); "
                          "larger than the image = one piece; the minimum is 15"}),
    "tile_overlap": ("INT", {"default": 16, "min": 0, "max": 256, "step": 1, "tooltip":
                             "LR pixels shared by neighbouring tiles, blended smoothly (at most half the tile)"}),
}


def optional_input_error(cls, **values) -> str | bool:
    """The check of optional choice and range inputs for V1's VALIDATE_INPUTS: ComfyUI builds
    of early 2024 check only the required inputs against their lists and ranges when a prompt
    is queued (later builds, and V3, check the optional ones too). True, or the message."""
    optional = cls.input_spec().get("optional", {})
    for name, value in values.items():
        if value is None:                     # linked from another node: checked when it runs
            continue
        kind, options = optional[name][0], optional[name][1]
        if isinstance(kind, list) and value not in kind:
            return f"{name}: {value!r} is not one of {kind}"
        if kind in ("INT", "FLOAT"):
            try:
                number = float(value)
            except (TypeError, ValueError):
                return f"{name}: {value!r} is not a number"
            if not options.get("min", number) <= number <= options.get("max", number):
                return f"{name}: {value!r} is outside {options['min']:g} to {options['max']:g}"
    return True


class _Node:
    """Every node of the pack: its category, its inputs (``input_spec``) and its outputs
    declared once as (type, name, tooltip) triples, from which ComfyUI's RETURN_TYPES,
    RETURN_NAMES and OUTPUT_TOOLTIPS (V1) and the V3 schema (:mod:`frfsr_nodes.v3`) are
    derived."""

    CATEGORY = CATEGORY
    OUTPUTS: tuple = ()
    REQUIRED: dict = {}           # the inputs: these two, or an input_spec classmethod of the node's own
    OPTIONAL: dict = {}

    @classmethod
    def input_spec(cls) -> dict:
        """The node's inputs: {"required": {name: (type, options)}, "optional": {...}}."""
        return {"required": dict(cls.REQUIRED), **({"optional": dict(cls.OPTIONAL)} if cls.OPTIONAL else {})}

    @classmethod
    def INPUT_TYPES(cls):         # ComfyUI V1
        return cls.input_spec()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "OUTPUTS" in cls.__dict__:
            cls.RETURN_TYPES, cls.RETURN_NAMES, cls.OUTPUT_TOOLTIPS = (tuple(c) for c in zip(*cls.OUTPUTS))


class _ModelLoader(_Node):
    """What the two loaders share: one MODEL output, made by ``load``."""

    OUTPUTS = ((MODEL_TYPE, "model", "the FRFSR network, for FRFSR Upscale or the three step nodes"),)
    FUNCTION = "load"


class LoadFRFSR(_ModelLoader):
    """Load an FRFSR model from ComfyUI/models/frfsr."""

    DESCRIPTION = ("Loads FRFSR weights: one bundled with frfsr (works offline; " +
                   "; ".join(f"{n}: {use}" for n, use in hub.BUNDLED_USES.items()) + ") or a model folder "
                   "ComfyUI/models/frfsr/<name>/ (config.json + model.safetensors, as save_pretrained "
                   "writes them and the Hub holds them).")

    @classmethod
    def INPUT_TYPES(cls):         # ComfyUI V1
        # The bundled workflows' images, if the input folder lacks them (once per folder). V1
        # only: older ComfyUI sets --input-directory after loading the pack, so the folder is
        # known for sure only when the frontend asks for the nodes; V3 does it at start-up.
        cc.install_example_inputs()
        return cls.input_spec()

    @classmethod
    def input_spec(cls):
        return {"required": {
            "model_name": (model_choices(), {"tooltip": "models/frfsr/<name>/model.safetensors (config.json beside "
                                                        "it); " + ", ".join(hub.BUNDLED_USES) + " = the weights bundled with frfsr"}),
            "device": _DEVICE_INPUT,
            "dtype": _DTYPE_INPUT,
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, model_name):
        """Checked by ComfyUI when the prompt is queued (instead of its own list check), so a
        missing or unsafe model name is reported with what is available."""
        if model_name is None:             # linked from another node: checked when it arrives
            return True
        try:
            model_folder(model_name)
        except (ValueError, FileNotFoundError) as e:
            return str(e)
        return True

    @classmethod
    def IS_CHANGED(cls, model_name, device="auto", dtype="auto"):
        """Reload when the weights file (or its config) changes on disk."""
        try:
            folder = Path(model_folder(model_name))
        except (ValueError, FileNotFoundError):
            return ""
        files = [folder / WEIGHTS_NAME, folder / CONFIG_NAME]
        return f"{model_name}:" + ",".join(str(f.stat().st_mtime) for f in files if f.is_file())

    def load(self, model_name: str, device: str = "auto", dtype: str = "auto"):
        folder = model_folder(model_name)
        return _handle(load_model(folder, dtype, device), model_name, device)


class LoadFRFSRFromHub(_ModelLoader):
    """Download an FRFSR model from the Hugging Face Hub (cached) and load it."""

    DESCRIPTION = ("Downloads FRFSR weights from a Hugging Face Hub repo into the Hugging Face cache "
                   "and loads them. Set HF_HUB_OFFLINE=1 to use the cache only.")

    @classmethod
    def input_spec(cls):
        return {
            "required": {
                "repo_id": ("STRING", {"default": "frfsr/frfsr-default", "multiline": False,
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

    def load(self, repo_id: str, revision: str = "main", device: str = "auto", dtype: str = "auto",
             file: str = ""):
        rid, rev, name = validate_repo_id(repo_id), validate_revision(revision), validate_repo_file(file)
        _check_dtype(dtype)
        subfolder = str(PurePosixPath(name).parent)
        label = f"{rid}@{rev}" + ("" if name == WEIGHTS_NAME else f":{name}")
        model = load_model(rid, dtype, device, revision=rev, subfolder=None if subfolder == "." else subfolder,
                           hub_only=True)          # always the Hub: a repo id is never read as a local path
        return _handle(model, label, device)


class MatchReference(_Node):
    """Find, for every LR patch, the most similar Reference patch."""

    DESCRIPTION = ("Matches the low-resolution image against the Reference image(s). A Reference batch "
                   "of the LR batch's size pairs them one to one; a batch of 1 serves every LR; other "
                   "batches give every LR all the References. Outputs the match and its confidence map.")
    OUTPUTS = ((MATCH_TYPE, "match", "correspondence between LR and Reference, for AlignTextures"),
               ("IMAGE", "confidence", "match confidence per LR pixel (white = the Reference explains this patch well)"))
    FUNCTION = "match"

    REQUIRED = {
        "model": _MODEL_INPUT,
        "image": ("IMAGE", {"tooltip": "the low-resolution image(s) to upscale, at least 15x15"}),
        "reference": ("IMAGE", {"tooltip": "high-resolution Reference image(s), at least 12x12"}),
        "reference_mode": _REFERENCE_MODE_INPUT,
    }
    OPTIONAL = {                                # optional: workflows saved before them still validate
        "match_mode": _MATCH_MODE_INPUT,
        "ref_scales": _REF_SCALES_INPUT,
        "ref_angles": _REF_ANGLES_INPUT,
    }
    VALIDATE_INPUTS_V1_ONLY = True              # V3 checks the optional choice itself

    @classmethod
    def VALIDATE_INPUTS(cls, match_mode="auto"):
        return optional_input_error(cls, match_mode=match_mode)

    def match(self, model: FRFSRModel, image, reference, reference_mode: str = "auto", match_mode: str = "auto",
              ref_scales: str = "1", ref_angles: str = "0"):
        views = ref_views(ref_scales, ref_angles)
        lr, _, ref, ref_pixels = lr_and_references(model, image, reference, reference_mode, views)
        with model.active(step_memory(model.model, lr.shape, ref_pixels)) as net:
            lr = lr.to(model.device)
            ref = [r.to(model.device) for r in ref] if isinstance(ref, list) else ref.to(model.device)
            cc.check_interrupt()
            refs = net.encode_refs(ref, lr.shape[0], views=views)
            corr = net.match(lr, refs, match_mode)
            confidence = nchw_to_image(corr.confidence.clamp(0, 1))
            corr = corr.to(cc.intermediate_device())
        return (corr, confidence)


class AlignTextures(_Node):
    """Warp the Reference features onto the LR grid along the match."""

    DESCRIPTION = "Warps the Reference textures onto the LR image along the match; previews the warped Reference."
    OUTPUTS = ((TEXTURES_TYPE, "textures", "aligned Reference textures, for SuperResolve"),
               ("IMAGE", "warped_reference",
                "the Reference warped onto the 4x output grid (a preview of what gets transferred)"))
    FUNCTION = "align"

    REQUIRED = {
        "model": _MODEL_INPUT,
        "match": (MATCH_TYPE, {"tooltip": "the match from FRFSR Match Reference"}),
    }

    def align(self, model: FRFSRModel, match: Correspondence):
        if not isinstance(match, Correspondence):
            raise TypeError(f"match must come from MatchReference, got {type(match).__name__}")
        ref_pixels = sum(r.shape[-2] * r.shape[-1] for r in match.refs.images)
        with model.active(step_memory(model.model, match.confidence.shape, ref_pixels)) as net:
            cc.check_interrupt()
            tex = net.align(match.to(model.device))
            preview = nchw_to_image(tex.warped_ref)
            tex = tex.to(cc.intermediate_device())
        return (tex, preview)


class _FourTimesImage(_Node):
    """What both super-resolving nodes return: the 4x IMAGE, from their ``upscale`` method."""

    OUTPUTS = (("IMAGE", "image", "the 4x super-resolved image(s)"),)
    FUNCTION = "upscale"


class SuperResolve(_FourTimesImage):
    """Restore the 4x image from the LR image and the aligned textures, tile by tile."""

    DESCRIPTION = ("Restores the 4x image from the LR image and the aligned textures, tile by tile "
                   "(tile_size in LR pixels bounds the memory; 0 picks it from the free memory). "
                   "An alpha channel of the image is enlarged and kept.")

    REQUIRED = {
        "model": _MODEL_INPUT,
        "image": ("IMAGE", {"tooltip": "the same LR image(s) given to FRFSR Match Reference"}),
        "textures": (TEXTURES_TYPE, {"tooltip": "the aligned textures from FRFSR Align Textures"}),
        **_TILE_INPUTS,
    }

    def upscale(self, model: FRFSRModel, image, textures: AlignedTextures, tile_size: int = 0,
                tile_overlap: int = 16):
        if not isinstance(textures, AlignedTextures):
            raise TypeError(f"textures must come from AlignTextures, got {type(textures).__name__}")
        lr, alpha = image_input(image, "image", cc.intermediate_device(), model.dtype)
        n, (h, w) = textures.confidence.shape[0], textures.lr_size
        if (n, h, w) != (lr.shape[0], *lr.shape[-2:]):
            raise ValueError(f"the textures were made for {n} image(s) of {h}x{w}, but image is {lr.shape[0]} of "
                             f"{lr.shape[-2]}x{lr.shape[-1]}: connect the same image to MatchReference and SuperResolve")
        from frfsr.tiling import restore_tiled

        ref_pixels = sum(f.shape[-2] * f.shape[-1] for f in textures.ref_feats[:1])
        return run_tiled(model, restore_tiled, lr, lambda: textures.to(model.device), ref_pixels, tile_size,
                         tile_overlap, alpha=alpha)


class Upscale(_FourTimesImage):
    """The whole super-resolution in one node: LR image + Reference image(s) -> image 4x
    (or ``upscale_by`` times) the LR's size."""

    DESCRIPTION = ("Upscales the LR image(s) 4x, transferring detail from the Reference image(s): match, "
                   "align and restore in one node, tile by tile (memory bounded by the tile); upscale_by "
                   "below 4 resizes the 4x result down. An alpha channel of the image is enlarged and kept. "
                   "The three step nodes do the same and show the match confidence and the warped Reference.")
    OUTPUTS = (("IMAGE", "image", "the super-resolved image(s), upscale_by times the LR's size (4x by default)"),)

    REQUIRED = {
        "model": _MODEL_INPUT,
        "image": ("IMAGE", {"tooltip": "the low-resolution image(s) to upscale, at least 15x15"}),
        "reference": ("IMAGE", {"tooltip": "high-resolution Reference image(s) of the same scene, objects or "
                                           "textures, at least 12x12 (several: a batch, e.g. from Batch Images)"}),
        "reference_mode": _REFERENCE_MODE_INPUT,
        **_TILE_INPUTS,
    }
    OPTIONAL = {
        "match_mode": _MATCH_MODE_INPUT,
        "ref_scales": _REF_SCALES_INPUT,
        "ref_angles": _REF_ANGLES_INPUT,
        "upscale_by": ("FLOAT", {"default": 4.0, "min": 1.0, "max": 4.0, "step": 0.05, "tooltip":
                                 "output size as a multiple of the LR's: 4 = the model's 4x result as it is; "
                                 "below 4 that result is resized down (bicubic, antialiased)"}),
    }
    VALIDATE_INPUTS_V1_ONLY = True              # V3 checks the optional choice and range itself

    @classmethod
    def VALIDATE_INPUTS(cls, match_mode="auto", upscale_by=4.0):
        return optional_input_error(cls, match_mode=match_mode, upscale_by=upscale_by)

    def upscale(self, model: FRFSRModel, image, reference, reference_mode: str = "auto", tile_size: int = 0,
                tile_overlap: int = 16, match_mode: str = "auto", ref_scales: str = "1", ref_angles: str = "0",
                upscale_by: float = 4.0):
        from frfsr.memory import encode_within_memory
        from frfsr.tiling import upscale_tiled

        size = output_size(image, upscale_by)
        views = ref_views(ref_scales, ref_angles)
        lr, alpha, ref, ref_pixels = lr_and_references(model, image, reference, reference_mode, views)
        cc.check_interrupt()

        def encoded():                  # called with the model on its device
            refs = [r.to(model.device) for r in ref] if isinstance(ref, list) else ref.to(model.device)
            return encode_within_memory(model.model, refs, lr.shape[0], views=views)

        return run_tiled(model, functools.partial(upscale_tiled, match_mode=match_mode), lr, encoded, ref_pixels,
                         tile_size, tile_overlap, alpha=alpha, size=size)


UPSCALE_BY_RANGE = (1.0, 4.0)


def output_size(image: torch.Tensor, upscale_by: float) -> tuple[int, int]:
    """(h, w) of the result for an LR IMAGE [B, H, W, C] and ``upscale_by`` (1 to 4)."""
    factor = float(upscale_by)
    if not UPSCALE_BY_RANGE[0] <= factor <= UPSCALE_BY_RANGE[1]:
        raise ValueError(f"upscale_by must be between {UPSCALE_BY_RANGE[0]:g} and {UPSCALE_BY_RANGE[1]:g}, got {upscale_by!r}")
    h, w = image.shape[1:3]
    return max(1, round(h * factor)), max(1, round(w * factor))


class SelectReferences(_Node):
    """Choose, among many candidate References, the k most relevant to the LR image."""

    DESCRIPTION = ("Picks the k candidate References most relevant to the LR image: every candidate is ranked "
                   "by a texture descriptor of the model's texture encoder (robust to crops, zoom and rotation), "
                   "the best few are matched against the LR and re-ranked by the match relevance. Outputs the "
                   "selected References (best first) and a JSON report of their indices, scores and relevances.")
    OUTPUTS = (("IMAGE", "references", "the selected References, best first, as one batch (for the Reference input "
                "of FRFSR Upscale or Match Reference, which gives the LR all of them)"),
               ("STRING", "selection", "JSON: per selected Reference its index in the candidate batch (from 0), "
                "descriptor score and match relevance"))
    FUNCTION = "select"
    REQUIRED = {
        "model": _MODEL_INPUT,
        "image": ("IMAGE", {"tooltip": "the low-resolution image (one; the first of a batch is used)"}),
        "candidates": ("IMAGE", {"tooltip": "candidate References, a batch (e.g. from Batch Images or a "
                                            "folder loader); images of other sizes: one batch each, batched"}),
        "k": ("INT", {"default": 1, "min": 1, "max": 64, "step": 1, "tooltip": "how many References to select"}),
        "rerank": ("INT", {"default": 3, "min": 0, "max": 256, "step": 1, "tooltip":
                           "how many of the best candidates by descriptor are matched against the LR and "
                           "re-ranked by the match relevance (0: the descriptor order only)"}),
    }

    def select(self, model: FRFSRModel, image, candidates, k: int = 1, rerank: int = 3):
        import json

        from frfsr.retrieval import RefIndex

        lr, _ = image_input(image, "image", cc.intermediate_device(), model.dtype)
        if lr.shape[0] != 1:
            warnings.warn(f"FRFSR Select References: image is a batch of {lr.shape[0]}; the first image is used",
                          stacklevel=2)
        cands, alpha = image_input(candidates, "candidates", cc.intermediate_device(), model.dtype)
        pixels = cands.shape[-2] * cands.shape[-1]
        with model.active(step_memory(model.model, lr.shape, pixels)) as net:
            cc.check_interrupt()
            index = RefIndex(net, [c.to(model.device) for c in cands.split(1)], cache_dir=None,
                             progress=lambda *_: cc.check_interrupt())
            chosen = index.select(lr[:1].to(model.device), max(1, int(k)), max(0, int(rerank)))
        picked = torch.cat([cands[s.index: s.index + 1] for s in chosen])
        if alpha is not None:             # the candidates' alpha stays with them
            alpha = torch.cat([alpha[s.index: s.index + 1] for s in chosen])
        report = {"k": len(chosen), "candidates": len(index),
                  "selected": [{"index": s.index, "score": round(s.score, 6),
                                "relevance": None if s.relevance is None else round(s.relevance, 6)} for s in chosen]}
        return (output_image(picked, alpha), json.dumps(report))


NODE_CLASS_MAPPINGS = {
    "LoadFRFSR": LoadFRFSR,
    "LoadFRFSRFromHub": LoadFRFSRFromHub,
    "FRFSRMatchReference": MatchReference,
    "FRFSRAlignTextures": AlignTextures,
    "FRFSRSuperResolve": SuperResolve,
    "FRFSRUpscale": Upscale,
    "FRFSRSelectReferences": SelectReferences,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "LoadFRFSR": "Load FRFSR Model",
    "LoadFRFSRFromHub": "Load FRFSR Model (Hugging Face Hub)",
    "FRFSRMatchReference": "FRFSR Match Reference",
    "FRFSRAlignTextures": "FRFSR Align Textures",
    "FRFSRSuperResolve": "FRFSR Super-Resolve (4x)",
    "FRFSRUpscale": "FRFSR Upscale",
    "FRFSRSelectReferences": "FRFSR Select References",
}
