"""Conversions between user images (PIL, numpy, torch) and the model's (B, 3, H, W) floats.

:func:`to_model_input` turns one image into an RGB float tensor in [0, 1] plus, when
the image has one, its alpha channel, and records how the image came in
(:class:`ImageInfo`). :func:`from_model_output` turns the model's result back into the
same kind of image: PIL in, PIL out; numpy HWC in, numpy HWC out (uint16 stays uint16);
tensor CHW / BCHW in, tensor out. Grayscale inputs are expanded to RGB for the model and
returned as grayscale (ITU-R BT.601 luma of the RGB result).

Accepted inputs
---------------
* PIL images of mode 1, L, LA, La, P, PA, RGB, RGBA, RGBa, CMYK, YCbCr, I;16*, I, F; an
  EXIF orientation (camera JPEGs) is applied first, so the image is seen, and returned,
  upright.
* numpy arrays (H, W) or (H, W, C), C in 1..4, dtype uint8, uint16 or float16/32/64
  (floats in [0, 1]).
* torch tensors (C, H, W) or (B, C, H, W), C in 1..4, dtype uint8 or floating (in [0, 1]).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

try:  # PIL is a dependency, but keep the module importable for tensor-only users
    from PIL import Image
except ImportError:  # pragma: no cover
    Image = None

OUTPUT_TYPES = ("pil", "np", "pt")
NP_DTYPES = ("uint8", "uint16", "float16", "float32", "float64")
_LUMA = (0.299, 0.587, 0.114)
_FLOAT_TOLERANCE = 1e-3      # floats a hair outside [0, 1] (resampling overshoot) are clamped, not refused


@dataclass(frozen=True)
class ImageInfo:
    """How an image came in, so that the result can go back out the same way."""

    kind: str                  # "pil", "np" or "pt"
    gray: bool                 # one colour channel (expanded to RGB for the model)
    alpha: bool                # had an alpha channel
    dtype: str                 # numpy dtype name ("uint8", "uint16", "float32", ...) of the pixel values
    batched: bool = False      # a (B, C, H, W) tensor
    squeeze_channels: bool = False   # numpy (H, W) input: gray output without a channel axis
    torch_dtype: torch.dtype | None = None
    device: torch.device | None = None

    @property
    def bit_depth(self) -> int | None:
        return {"uint8": 8, "uint16": 16}.get(self.dtype)


# ----------------------------------------------------------------------- input
def _float_range_check(x, name: str) -> None:
    lo, hi = float(x.min()), float(x.max())
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError(f"{name} contains NaN or Inf values")
    if lo < -_FLOAT_TOLERANCE or hi > 1 + _FLOAT_TOLERANCE:
        raise ValueError(f"{name} is a float image with values in [{lo:g}, {hi:g}]; float images must be in [0, 1] "
                         "(pass 8-bit data as uint8 and 16-bit data as uint16, or divide by the maximum first)")


def _pil_to_array(img, name: str) -> np.ndarray:
    mode = img.mode
    if mode in ("RGB", "RGBA", "L", "LA"):
        return np.asarray(img)
    if mode == "1":
        return np.asarray(img.convert("L"))
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in img.info
        return np.asarray(img.convert("RGBA" if has_alpha else "RGB"))
    if mode in ("RGBa", "La"):
        return np.asarray(img.convert("RGBA" if mode == "RGBa" else "LA"))
    if mode in ("CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
        return np.asarray(img.convert("RGB"))
    if mode.startswith("I;16"):
        return np.asarray(img).astype(np.uint16)
    if mode == "I":
        a = np.asarray(img)
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise ValueError(f"{name} is a 32-bit integer PIL image with values outside 0..65535; "
                             "only 8- and 16-bit integer images are accepted")
        return a.astype(np.uint16)
    if mode == "F":
        return np.asarray(img).astype(np.float32)
    raise ValueError(f"{name} has PIL mode {mode!r}; accepted modes: 1, L, LA, P, PA, RGB, RGBA, CMYK, YCbCr, "
                     "I;16, I, F")


def _check_not_empty(shape: tuple, name: str, layout: str) -> None:
    if 0 in shape:
        raise ValueError(f"{name} is empty: shape {tuple(shape)} {layout} has a zero-length axis (an empty batch, "
                         "or zero height or width); give at least one image with pixels")


def _array_to_tensor(a: np.ndarray, name: str) -> tuple[torch.Tensor, str, bool]:
    """numpy (H, W) / (H, W, C) -> (1, C, H, W) float32 in [0, 1], dtype name, squeezed flag."""
    if a.ndim not in (2, 3):
        raise ValueError(f"{name} must be a numpy array of shape (H, W) or (H, W, C); got shape {a.shape}")
    _check_not_empty(a.shape, name, "(H, W[, C])")
    squeeze = a.ndim == 2
    if squeeze:
        a = a[:, :, None]
    if a.shape[2] not in (1, 2, 3, 4):
        hint = " (it looks channels-first: transpose it to (H, W, C))" if a.shape[0] in (1, 3, 4) else ""
        raise ValueError(f"{name} has {a.shape[2]} channels in its last axis; accepted: 1 (gray), 2 (gray + alpha), "
                         f"3 (RGB), 4 (RGBA){hint}")
    dtype = a.dtype.name
    if dtype == "uint8":
        x = torch.from_numpy(a.astype(np.float32)) / 255.0
    elif dtype == "uint16":
        x = torch.from_numpy(a.astype(np.float32)) / 65535.0
    elif dtype in ("float16", "float32", "float64"):
        _float_range_check(a, name)
        x = torch.from_numpy(a.astype(np.float32)).clamp(0, 1)
    else:
        raise TypeError(f"{name} has dtype {dtype}; accepted numpy dtypes: {', '.join(NP_DTYPES)}")
    return x.permute(2, 0, 1).unsqueeze(0), dtype, squeeze


def _tensor_to_tensor(t: torch.Tensor, name: str) -> tuple[torch.Tensor, str, bool]:
    if t.dim() not in (3, 4):
        raise ValueError(f"{name} must be a tensor of shape (C, H, W) or (B, C, H, W); got shape {tuple(t.shape)}")
    _check_not_empty(tuple(t.shape), name, "(C, H, W) / (B, C, H, W)")
    batched = t.dim() == 4
    x = t if batched else t.unsqueeze(0)
    if x.shape[1] not in (1, 2, 3, 4):
        hint = " (it looks channels-last: use .permute(0, 3, 1, 2))" if x.shape[-1] in (1, 3, 4) else ""
        raise ValueError(f"{name} has {x.shape[1]} channels in dim {x.dim() - 3}; accepted: 1 (gray), 2 (gray + alpha), "
                         f"3 (RGB), 4 (RGBA){hint}")
    if x.dtype == torch.uint8:
        return x.float() / 255.0, "uint8", batched
    if not x.is_floating_point():
        raise TypeError(f"{name} has dtype {x.dtype}; accepted tensor dtypes: torch.uint8 or a floating dtype in [0, 1]")
    _float_range_check(x.detach(), name)
    return x.detach().float().clamp(0, 1), str(x.dtype).replace("torch.", ""), batched


def upright(img):
    """A PIL image turned as its EXIF orientation says (camera JPEGs), the tag then dropped;
    the image itself where it has no orientation. Inputs are read upright, so the output
    (which carries no orientation) looks as the input did."""
    from PIL import ImageOps
    try:
        orientation = img.getexif().get(0x0112, 1)
    except Exception:                 # unreadable EXIF: as stored
        return img
    if orientation in (None, 1):
        return img
    return ImageOps.exif_transpose(img)


def to_model_input(image, name: str = "image") -> tuple[torch.Tensor, torch.Tensor | None, ImageInfo]:
    """One image -> ``(rgb, alpha, info)``: ``rgb`` (B, 3, H, W) float32 in [0, 1] (on the
    tensor's device for tensor input, else CPU), ``alpha`` (B, 1, H, W) or None."""
    if Image is not None and isinstance(image, Image.Image):
        arr = _pil_to_array(upright(image), name)
        x, dtype, _ = _array_to_tensor(arr, name)
        kind, batched, squeeze, tdtype, device = "pil", False, False, None, None
    elif isinstance(image, np.ndarray):
        x, dtype, squeeze = _array_to_tensor(image, name)
        kind, batched, tdtype, device = "np", False, None, None
    elif isinstance(image, torch.Tensor):
        x, dtype, batched = _tensor_to_tensor(image, name)
        kind, squeeze, tdtype, device = "pt", False, image.dtype, image.device
    else:
        raise TypeError(f"{name} must be a PIL image, a numpy array (H, W[, C]) or a torch tensor (C, H, W) / "
                        f"(B, C, H, W); got {type(image).__name__}")
    c = x.shape[1]
    gray, has_alpha = c in (1, 2), c in (2, 4)
    alpha = x[:, -1:] if has_alpha else None
    rgb = x[:, :1].expand(-1, 3, -1, -1).contiguous() if gray else x[:, :3]
    info = ImageInfo(kind, gray, has_alpha, dtype, batched, squeeze, tdtype, device)
    return rgb, alpha, info


def to_rgb(image, name: str = "image") -> torch.Tensor:
    """Any accepted image -> (B, 3, H, W) float32 RGB in [0, 1]; an alpha channel is dropped."""
    return to_model_input(image, name)[0]


def upscale_alpha(alpha: torch.Tensor, scale: int = 4) -> torch.Tensor:
    """Bicubic upscaling of an alpha channel (B, 1, H, W), clamped to [0, 1]."""
    return F.interpolate(alpha.float(), scale_factor=scale, mode="bicubic", align_corners=False).clamp_(0, 1)


# ---------------------------------------------------------------------- output
def _dtype_name(output_dtype) -> str:
    """Normalise "uint16" / np.uint16 / torch.uint16 to a name in NP_DTYPES."""
    if isinstance(output_dtype, torch.dtype):
        name = str(output_dtype).replace("torch.", "")
    else:
        try:
            name = np.dtype(output_dtype).name
        except TypeError:
            name = str(output_dtype)
    if name not in NP_DTYPES:
        raise ValueError(f"output_dtype {output_dtype!r} is not supported; accepted: {', '.join(NP_DTYPES)}")
    return name


def _default_dtype(info: ImageInfo, otype: str) -> str:
    """The input's dtype when the output has the input's kind; otherwise the output kind's
    natural one (PIL: 8-bit, 16-bit for 16-bit gray; numpy: the input's integer depth, else
    float32; tensors: float32)."""
    if otype == info.kind:
        return info.dtype if info.dtype in NP_DTYPES else "float32"
    if otype == "pil":
        return "uint16" if info.bit_depth == 16 and info.gray and not info.alpha else "uint8"
    if otype == "np" and info.bit_depth is not None:
        return info.dtype
    return "float32"


def _quantise(x: torch.Tensor, dtype: str) -> np.ndarray:
    """Float tensor in [0, 1] -> numpy array of ``dtype``."""
    x = x.detach().float().clamp(0, 1).cpu()
    if dtype == "uint8":
        return (x * 255.0).round_().to(torch.uint8).numpy()
    if dtype == "uint16":
        return (x * 65535.0).round_().numpy().astype(np.uint16)
    return x.numpy().astype(dtype)


def from_model_output(rgb: torch.Tensor, alpha: torch.Tensor | None, info: ImageInfo,
                      output_type: str | None = None, output_dtype=None):
    """The model's (B, 3, H, W) result (+ alpha) back to an image like the input.

    ``output_type``: "pil", "np", "pt" or None (the input's kind). ``output_dtype``:
    "uint8", "uint16", "float16", "float32", "float64" (numpy / torch dtypes accepted
    too); None keeps the input's (uint16 in, uint16 out; PIL holds 8-bit, or 16-bit
    grayscale). Returns one image, or a (B, ...) array / tensor for a batched input."""
    otype = info.kind if output_type is None else output_type
    if otype not in OUTPUT_TYPES:
        raise ValueError(f"output_type {output_type!r} is not supported; accepted: {', '.join(OUTPUT_TYPES)} or None")
    dtype = _default_dtype(info, otype) if output_dtype is None else _dtype_name(output_dtype)
    x = rgb.detach().float()
    if info.gray:
        w = torch.tensor(_LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        x = (x * w).sum(1, keepdim=True)
    if alpha is not None:
        x = torch.cat((x, alpha.to(x)), dim=1)
    if otype == "pt":
        if dtype.startswith("float"):
            out = x.clamp(0, 1).to(getattr(torch, dtype))
        else:
            out = torch.from_numpy(_quantise(x, dtype))
        if info.device is not None:
            out = out.to(info.device)
        return out if info.batched else out[0]
    if otype == "pil" and dtype not in ("uint8", "uint16") and not (dtype == "float32" and x.shape[1] == 1):
        raise ValueError(f"a PIL image holds 8- or 16-bit integers or one float32 channel (mode F), not {dtype} "
                         f"with {x.shape[1]} channels; use output_type='np' or 'pt'")
    if otype == "pil" and dtype == "uint16" and x.shape[1] != 1:
        raise ValueError("PIL cannot hold 16-bit colour or 16-bit images with alpha; "
                         "use output_type='np' for 16-bit output")
    arr = _quantise(x.permute(0, 2, 3, 1), dtype)
    if otype == "np":
        if info.squeeze_channels and arr.shape[-1] == 1:
            arr = arr[..., 0]
        return arr if info.batched else arr[0]
    images = [Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a) for a in arr]    # float32 gray: mode F
    return images if info.batched else images[0]


def map_to_output(m: torch.Tensor, output_type: str, batched: bool = False):
    """A one-channel map (B, 1, H, W) (e.g. match confidence) as "pt" (tensor, values kept),
    "np" (float32 (H, W)) or "pil" (8-bit "L", values clamped to [0, 1])."""
    if output_type == "pt":
        return m if batched else m[0]
    if output_type == "np":
        arr = m[:, 0].detach().float().cpu().numpy()
        return arr if batched else arr[0]
    if output_type == "pil":
        arr = _quantise(m[:, 0], "uint8")
        imgs = [Image.fromarray(a, "L") for a in arr]
        return imgs if batched else imgs[0]
    raise ValueError(f"output_type {output_type!r} is not supported; accepted: {', '.join(OUTPUT_TYPES)}")
