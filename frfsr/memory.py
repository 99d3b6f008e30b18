"""Memory: what is free on a device, out-of-memory errors, and the memory a Ref's encoding
needs, checked before it starts (:func:`encode_within_memory`, the pipeline's and the
nodes' way to encode Refs: the need checked up front, the extractor tile halved on
out-of-memory)."""
from __future__ import annotations

import gc
import math
import os
import warnings

import torch


def is_out_of_memory(err: BaseException) -> bool:
    """True for CUDA/MPS/CPU allocation failures."""
    oom_types = tuple(t for t in (getattr(torch, "OutOfMemoryError", None),
                                  getattr(torch.cuda, "OutOfMemoryError", None)) if t is not None)
    if oom_types and isinstance(err, oom_types):
        return True
    msg = str(err).lower()
    return isinstance(err, RuntimeError) and ("out of memory" in msg or "can't allocate memory" in msg)


def free_memory(device) -> int:
    """Bytes that a new allocation on ``device`` can use: CUDA free + cached, else the
    host's available RAM."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    try:
        import psutil
        return int(psutil.virtual_memory().available)
    except ImportError:
        try:
            return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            return 4 << 30


def ref_memory_check(model, refs, batch_size: int = 1, ref_tile: int | None = None, device=None, views=None) -> int:
    """Bytes that encoding ``refs`` (tensors) needs: what the encoded Refs keep
    (:func:`frfsr.models.ref_bytes_per_pixel` per Ref pixel, over every copy of the
    :class:`~frfsr.models.frfsr.RefViews` ``views``, default the Ref as given) plus one
    extractor tile's intermediates (``ref_tile`` Ref pixels a side; default
    :data:`~frfsr.models.frfsr.REF_TILE`). MemoryError, saying what to do, when that exceeds
    the free memory."""
    from .models.frfsr import REF_TILE, RefViews, ref_bytes_per_pixel
    from .models.vgg import TILE_HALO
    refs = list(refs) if isinstance(refs, (list, tuple)) else [refs]
    cfg, dtype = model.config, model.dtype
    views = views if views is not None else RefViews()
    keep = ref_bytes_per_pixel(cfg, dtype) * sum(views.pixels(*r.shape[-2:]) * max(r.shape[0], 1) for r in refs)
    side = min(ref_tile or REF_TILE, max(max(r.shape[-2:]) for r in refs)) + 2 * TILE_HALO
    work = 4 * cfg.vgg_widths[0] * side * side * (torch.finfo(dtype).bits // 8)
    need, free = keep + work, free_memory(device if device is not None else model.device)
    if need > free:
        biggest = max(refs, key=lambda r: r.shape[-2] * r.shape[-1])
        f = math.sqrt(max(free - work, 0) / need) * 0.9
        h, w = biggest.shape[-2:]
        raise MemoryError(
            f"encoding the Ref{'s' if len(refs) > 1 else ''} ({', '.join(f'{r.shape[-1]}x{r.shape[-2]}' for r in refs)}) "
            f"needs about {need / 2**30:.1f} GiB ({ref_bytes_per_pixel(cfg, dtype)} bytes per Ref pixel with this model "
            f"in {str(dtype).replace('torch.', '')}) but {free / 2**30:.1f} GiB is free on {model.device}. Downscale "
            f"the Ref to about {int(w * f)}x{int(h * f)} or less (detail finer than 4x the LR's scale is not used "
            "anyway), use bfloat16 (half the memory), or a device with more memory")
    return need


def encode_within_memory(model, refs, batch_size: int = 1, *, ref_tile: int | None = None, views=None,
                         oom_fallback: bool = True):
    """``model.encode_refs(refs, batch_size, ref_tile, views)`` with the memory checked up front
    (:func:`ref_memory_check`) and the extractor tile (Ref pixels) halved on out-of-memory; an
    :class:`~frfsr.EncodedRefs` is passed through."""
    from .models import EncodedRefs
    from .models.frfsr import REF_TILE
    from .models.vgg import TILE_HALO
    if isinstance(refs, EncodedRefs):
        return refs
    tile = ref_tile or REF_TILE
    ref_memory_check(model, refs, batch_size, tile, views=views)
    while True:
        try:
            return model.encode_refs(refs, batch_size, tile=tile, views=views)
        except Exception as err:
            smallest = 8 * TILE_HALO
            if not (oom_fallback and is_out_of_memory(err)) or tile <= smallest:
                raise
            del err
            release_memory(model.device)
            tile = max(smallest, tile // 2 // 4 * 4)
            warnings.warn(f"out of memory while encoding the Ref; retrying with Ref tiles of {tile} pixels",
                          RuntimeWarning, stacklevel=3)


AUTO_TILE_ESTIMATE = 256   # tile side step_memory assumes for tile "auto" (the tiler then fits its tile to what is free)


def step_memory(model, lr_shape, ref_pixels: int, tile=None) -> int:
    """Bytes one step (match, align, restore, or all three tile by tile) needs besides the
    weights, for an LR of ``lr_shape`` (B, C, h, w) and ``ref_pixels`` Ref pixels (every copy):
    the restoration's activations per LR pixel (:func:`frfsr.tiling.bytes_per_lr_pixel`) over
    the pixels processed at once (a tile, or the whole image; x1.5 for the fixed cost of small
    tiles), the blended 4x output of the whole image, and the Ref features
    (:func:`frfsr.models.frfsr.ref_feature_bytes`) held by the encoded Refs and their warp,
    twice over. What the ComfyUI nodes ask ComfyUI for (tests/test_comfy_memory.py: above the
    measured peaks)."""
    from .models.frfsr import ref_feature_bytes
    from .tiling import bytes_per_lr_pixel
    b, h, w = lr_shape[0], lr_shape[-2], lr_shape[-1]
    side = tile if isinstance(tile, int) else AUTO_TILE_ESTIMATE if tile == "auto" else max(h, w)
    at_once = min(h, side) * min(w, side)
    blended = 2 * 16 * 3 * 4 * h * w                   # float32 sum and weights of the 4x output
    ref_bytes = int(4 * ref_feature_bytes(model.config, model.dtype))
    return int(b * (3 * bytes_per_lr_pixel(model) * at_once // 2 + blended + ref_bytes * ref_pixels))


def release_memory(device) -> None:
    """Give cached memory back after an out-of-memory error (garbage, and the CUDA cache)."""
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
