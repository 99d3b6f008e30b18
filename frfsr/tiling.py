"""Tiled inference for large LR images, with memory bounded by the tile, not the image.

The LR is cut into overlapping tiles (:class:`TilePlan`). Every tile is matched against
the *whole* Ref (the Ref features are computed once, :meth:`FRFSR.encode_refs`), aligned
and restored on its own; the 4x results are blended with feathered weights: inside an
overlap of ``overlap`` LR pixels, a tile's outer quarter is dropped and the next half
ramps linearly, so the two tiles' weights sum to one and each tile's border pixels (the
ones that see zero padding where the whole image has content) never reach the output.

Results differ slightly from the untiled forward: the DDF channel filter pools over the
tile, not the image, and ESA's coarse branch pools on the tile's grid. With the default
overlap (16 LR pixels) the difference is far below visibility (tests/test_tiling.py).

:func:`run_tiles` runs a step over the tiles and blends what it returns (the pipeline runs
:func:`sr_step` with it); :func:`upscale_tiled` is that for tensors (the ComfyUI node uses it);
:func:`restore_tiled` restores tiles of already aligned textures (``AlignedTextures.crop``).
They pick a tile size from free memory by default and halve it on out-of-memory errors.
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass
from typing import Callable

import torch

from .checks import MIN_LR_SIZE
from .memory import free_memory, is_out_of_memory, release_memory

DEFAULT_OVERLAP = 16        # LR pixels shared by neighbouring tiles
MAX_AUTO_TILE = 1024        # largest tile side auto_tile_size picks (LR pixels)
MEMORY_FRACTION = 0.5       # share of the free memory auto_tile_size plans to use

ProgressFn = Callable[[int, int], None]        # progress(done_tiles, total_tiles)
# on_tile((y0, y1, x0, x1), sr_tile): a tile's 4x result as soon as it is restored (LR window)
TileFn = Callable[[tuple, torch.Tensor], None]
InterruptFn = Callable[[], bool]               # interrupt() -> True to stop (or raise itself)


@dataclass
class TiledOutput:
    """:func:`upscale_tiled` with ``return_details=True``: the SR image (B, 3, 4h, 4w), the
    match confidence on the LR grid (B, 1, h, w), the Ref warped onto the HR grid
    (B, 3, 4h, 4w), the tile size that was used (None: the image in one piece) and the
    Refs' backward confidence (:attr:`frfsr.Correspondence.ref_confidence`, the best over the
    tiles): with ``confidence``, what :func:`frfsr.models.correspondence.relevance_of` takes."""

    sr: torch.Tensor
    confidence: torch.Tensor
    warped_ref: torch.Tensor | None
    tile: int | None
    ref_confidence: tuple[torch.Tensor, ...] = ()    # per Ref: its sampled patches' best match over all tiles


# ------------------------------------------------------------------ planning
def axis_spans(length: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """[start, stop) of the tiles along one axis: as few tiles of ``tile`` pixels as cover
    ``length`` with at least ``overlap`` shared pixels, spread evenly."""
    if length <= tile:
        return [(0, length)]
    n = math.ceil((length - overlap) / (tile - overlap))
    starts = sorted({round(i * (length - tile) / (n - 1)) for i in range(n)})
    return [(s, s + tile) for s in starts]


def feather(start: int, stop: int, length: int, overlap: int, scale: int = 1) -> torch.Tensor:
    """Blending weight (float32, ``(stop - start) * scale`` values) of one tile along one
    axis, at ``scale`` output pixels per LR pixel. Sides on the image border keep weight 1;
    inner sides drop their first ``overlap / 4`` LR pixels and ramp up over ``overlap / 2``."""
    n = (stop - start) * scale
    w = torch.ones(n)
    if overlap <= 0:
        return w
    pos = (torch.arange(n, dtype=torch.float32) + 0.5) / scale        # LR units from the tile's start
    ramp = lambda d: ((d - overlap / 4) / (overlap / 2)).clamp(0, 1)   # noqa: E731
    if start > 0:
        w = torch.minimum(w, ramp(pos))
    if stop < length:
        w = torch.minimum(w, ramp((stop - start) - pos))
    return w


@dataclass(frozen=True)
class TilePlan:
    """The tiles of an ``height`` x ``width`` LR: a grid of row spans x column spans."""

    height: int
    width: int
    tile: int | None
    overlap: int
    rows: tuple[tuple[int, int], ...]
    cols: tuple[tuple[int, int], ...]

    @classmethod
    def build(cls, height: int, width: int, tile: int | None, overlap: int = DEFAULT_OVERLAP) -> "TilePlan":
        """``tile`` None (or not smaller than the image) gives one tile, the whole image."""
        if tile is None or tile >= max(height, width):
            return cls(height, width, None, 0, ((0, height),), ((0, width),))
        overlap = min(overlap, tile // 2)
        return cls(height, width, tile, overlap, tuple(axis_spans(height, tile, overlap)),
                   tuple(axis_spans(width, tile, overlap)))

    def __len__(self) -> int:
        return len(self.rows) * len(self.cols)

    def windows(self) -> list[tuple[int, int, int, int]]:
        """(y0, y1, x0, x1) of every tile, row by row."""
        return [(y0, y1, x0, x1) for y0, y1 in self.rows for x0, x1 in self.cols]

    def weight_sums(self, scale: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-axis sums of the feather weights; the 2-D sum is their outer product."""
        wy = torch.zeros(self.height * scale)
        for y0, y1 in self.rows:
            wy[y0 * scale: y1 * scale] += feather(y0, y1, self.height, self.overlap, scale)
        wx = torch.zeros(self.width * scale)
        for x0, x1 in self.cols:
            wx[x0 * scale: x1 * scale] += feather(x0, x1, self.width, self.overlap, scale)
        return wy, wx


# ------------------------------------------------------------------ memory
def bytes_per_lr_pixel(model) -> int:
    """Rough peak activation bytes per LR pixel of one forward (16 HR pixels each, the widest
    stages at HR size: U-Net features, the deformable conv's sampled columns over the relu1_1
    texture, the DDF filters, and SIFE's upsampler where it has one), per batch element."""
    cfg = getattr(model, "config", None)
    ngf = getattr(cfg, "ngf", 64)
    c1 = getattr(cfg, "vgg_widths", (64,))[0]
    upsampler = 3 * getattr(cfg, "sife_feat", 64) if getattr(cfg, "sife_upsampler", False) else 0
    dtype = getattr(model, "dtype", torch.float32)
    elem = torch.finfo(dtype).bits // 8 if dtype.is_floating_point else 4
    return 16 * elem * (24 * ngf + 40 * c1 + upsampler)


def auto_tile_size(model, batch_size: int = 1, device=None, budget_bytes: int | None = None) -> int:
    """Tile side (LR pixels) whose forward should fit in ``MEMORY_FRACTION`` of the free
    memory of ``device`` (default: the model's), between ``MIN_LR_SIZE`` and ``MAX_AUTO_TILE``."""
    device = device if device is not None else getattr(model, "device", "cpu")
    budget = budget_bytes if budget_bytes is not None else MEMORY_FRACTION * free_memory(device)
    side = int(math.sqrt(max(budget, 0) / (bytes_per_lr_pixel(model) * max(batch_size, 1))))
    return max(MIN_LR_SIZE, min(MAX_AUTO_TILE, side))


def check_tile_args(tile, overlap) -> None:
    """TypeError / ValueError unless ``tile`` ("auto", None or an int) and ``overlap`` are usable."""
    if isinstance(tile, bool) or not (tile is None or tile == "auto" or isinstance(tile, int)):
        raise TypeError(f"tile must be an int (LR pixels), 'auto' or None (no tiling); got {tile!r}")
    if isinstance(tile, int) and tile < MIN_LR_SIZE:
        raise ValueError(f"tile must be at least {MIN_LR_SIZE} LR pixels (the model's minimum input), got {tile}")
    if isinstance(overlap, bool) or not isinstance(overlap, int) or overlap < 0:
        raise ValueError(f"overlap must be an integer >= 0 (LR pixels), got {overlap!r}")
    if isinstance(tile, int) and overlap > tile // 2:
        raise ValueError(f"overlap ({overlap}) must be at most half the tile ({tile} -> {tile // 2})")


# ------------------------------------------------------------------ the loop
StepFn = Callable[[torch.Tensor, tuple], dict]   # step(lr_tile, (y0, y1, x0, x1)) -> {name: tensor or tuple}


def run_tiles(lr: torch.Tensor, step: StepFn, *, tile=None, overlap: int = DEFAULT_OVERLAP,
              progress: ProgressFn | None = None, interrupt: InterruptFn | None = None, oom_fallback: bool = True,
              device=None, dtype=None) -> tuple[dict, int | None]:
    """Run ``step(lr_tile, window)`` over the tiles of ``lr`` (B, C, h, w; ``tile``: an int or
    None, see :class:`TilePlan`) and blend what it returns: a tensor whose side is a multiple of
    the tile's is feathered in at that scale (float32); a tuple of tensors is kept as the
    elementwise maximum over the tiles. ``lr_tile`` is moved to ``device`` and ``dtype`` (the
    model's; None: as ``lr``).
    On out-of-memory the tile is halved and the run starts again. Returns ({name: blended},
    the tile used)."""
    h, w = lr.shape[-2:]
    while True:
        plan = TilePlan.build(h, w, tile, overlap)
        windows, acc = plan.windows(), {}
        try:
            for i, (y0, y1, x0, x1) in enumerate(windows):
                if interrupt is not None and interrupt():
                    raise InterruptedError("upscaling was interrupted")
                out = step(lr[..., y0:y1, x0:x1].to(device=device, dtype=dtype), (y0, y1, x0, x1))
                for name, t in out.items():
                    if isinstance(t, tuple):
                        acc[name] = t if name not in acc else tuple(torch.maximum(a, b) for a, b in zip(acc[name], t))
                    elif len(windows) == 1:
                        acc[name] = t
                    else:
                        sc = t.shape[-1] // (x1 - x0)
                        if name not in acc:
                            acc[name] = t.new_zeros(*t.shape[:2], h * sc, w * sc, dtype=torch.float32)
                        wy = feather(y0, y1, h, plan.overlap, sc).to(t.device)
                        wx = feather(x0, x1, w, plan.overlap, sc).to(t.device)
                        acc[name][..., y0 * sc: y1 * sc, x0 * sc: x1 * sc] += t.float() * (wy[:, None] * wx[None, :])
                del out
                if progress is not None:
                    progress(i + 1, len(windows))
        except Exception as err:
            if not (oom_fallback and is_out_of_memory(err)):
                raise
            current = plan.tile or max(h, w)
            if current <= MIN_LR_SIZE:
                raise RuntimeError(f"out of memory even with the smallest tile ({MIN_LR_SIZE} LR pixels); "
                                   "use a smaller Ref, a lower-precision dtype or another device") from err
            del err, acc
            release_memory(device if device is not None else lr.device)
            tile = max(MIN_LR_SIZE, current // 2)
            what = f"tile {plan.tile}" if plan.tile else f"the whole {h}x{w} image"
            warnings.warn(f"out of memory with {what}; retrying with tile {tile}", RuntimeWarning, stacklevel=3)
            continue
        if len(windows) > 1:
            for t in acc.values():
                if isinstance(t, torch.Tensor):
                    wy, wx = plan.weight_sums(t.shape[-1] // w)
                    t /= (wy[:, None] * wx[None, :]).to(t.device).clamp_min(1e-12)
        return acc, plan.tile


def tile_size(tile, model, batch_size: int):
    """``tile`` as :func:`run_tiles` takes it: "auto" becomes :func:`auto_tile_size`."""
    return auto_tile_size(model, batch_size) if tile == "auto" else tile


def check_lr_tensor(lr) -> None:
    """TypeError unless ``lr`` is a (B, C, h, w) tensor."""
    if not isinstance(lr, torch.Tensor) or lr.dim() != 4:
        raise TypeError(f"lr must be a (B, 3, h, w) tensor, got {type(lr).__name__}"
                        + (f" of shape {tuple(lr.shape)}" if isinstance(lr, torch.Tensor) else ""))


def checked_and_encoded(model, lr: torch.Tensor, refs, *, tile, overlap: int, name: str = "lr", views=None,
                        oom_fallback: bool = True):
    """Check ``lr`` (a (B, 3, h, w) tensor; ``name`` in errors) and the tiling arguments once,
    and give the Refs encoded for it: an :class:`~frfsr.EncodedRefs` checked against its batch,
    else the Ref tensor(s) moved to the model and encoded within the free memory with ``views``
    (:func:`frfsr.memory.encode_within_memory`)."""
    from .memory import encode_within_memory
    from .models import EncodedRefs
    check_lr_tensor(lr)
    check_tile_args(tile, overlap)
    model.check_lr(lr, name)
    if isinstance(refs, EncodedRefs):
        model.check_encoded(refs, lr.shape[0])
        return refs
    dev, dtype = model.device, model.dtype
    refs = [r.to(dev, dtype) for r in refs] if isinstance(refs, (list, tuple)) else refs.to(dev, dtype)
    return encode_within_memory(model, refs, lr.shape[0], views=views, oom_fallback=oom_fallback)


def sr_step(model, encoded, *, match_mode: str = "auto", details: bool = False, keep_warped_ref: bool = True,
            on_tile: TileFn | None = None, out_device=None) -> StepFn:
    """The step of :func:`run_tiles` that super-resolves an LR tile (already checked and on the
    model's device and dtype) against ``encoded`` Refs: match, align, restore (the Ref read
    where the untiled run reads it). It returns the SR tile, and with ``details`` the
    confidence, the warped Ref (``keep_warped_ref``) and the Refs' backward confidence (for the
    relevance), all moved to ``out_device``."""
    def step(lr_tile, window):
        y0, y1, x0, x1 = window
        corr = model.match(lr_tile, encoded, match_mode, check=False)
        tex = dataclasses.replace(model.align(corr), origin=(y0, x0))
        out = {"sr": model.restore(lr_tile, tex).sr.to(out_device)}
        if on_tile is not None:
            on_tile(window, out["sr"])
        if details:
            out["confidence"] = tex.confidence.to(out_device)
            out["ref_confidence"] = tuple(r.to(out_device) for r in corr.ref_confidence)
            if keep_warped_ref:
                out["warped_ref"] = tex.warped_ref.to(out_device)
        return out
    return step


@torch.no_grad()
def upscale_tiled(model, lr: torch.Tensor, refs, *, tile="auto", overlap: int = DEFAULT_OVERLAP,
                  progress: ProgressFn | None = None, interrupt: InterruptFn | None = None,
                  return_details: bool = False, keep_warped_ref: bool = True, oom_fallback: bool = True,
                  ref_views=None, name: str = "lr", on_tile: TileFn | None = None,
                  match_mode: str = "auto"):
    """4x SR of ``lr`` (B, 3, h, w) in [0, 1] against ``refs`` (a Ref tensor, a list of them,
    or an :class:`EncodedRefs`), tile by tile.

    ``tile``: tile side in LR pixels, ``"auto"`` (from free memory) or None (whole image);
    ``overlap``: LR pixels shared by neighbouring tiles (at most half the tile).
    ``progress(done, total)`` is called after each tile; ``interrupt()`` before each tile
    (return True, or raise, to stop: :class:`InterruptedError`); ``on_tile(window, sr)``
    gets each tile's 4x result before it is blended (e.g. for a preview). ``lr`` may stay on the
    CPU while the model is on a GPU: tiles travel to the model, results come back to
    ``lr``'s device. Returns the SR tensor (float32), or a :class:`TiledOutput` (its
    ``warped_ref`` None when ``keep_warped_ref=False``, which saves an HR-sized buffer).
    Refs not yet encoded are encoded here, after the LR is checked, with ``ref_views``
    (:class:`~frfsr.models.frfsr.RefViews`; None: the Refs as given). ``match_mode``: "exact", "fast" or "auto"
    (:meth:`FRFSR.match`). The LR (``name`` in errors) and the Refs are checked once; the
    tiles are not checked again (``model.match(..., check=False)``)."""
    dev, dtype = model.device, model.dtype
    encoded = checked_and_encoded(model, lr, refs, tile=tile, overlap=overlap, name=name, views=ref_views,
                                  oom_fallback=oom_fallback)
    step = sr_step(model, encoded, match_mode=match_mode, details=return_details, keep_warped_ref=keep_warped_ref,
                   on_tile=on_tile, out_device=lr.device)
    res, used = run_tiles(lr, step, tile=tile_size(tile, model, lr.shape[0]), overlap=overlap, progress=progress,
                          interrupt=interrupt, oom_fallback=oom_fallback, device=dev, dtype=dtype)
    if return_details:
        warped = res["warped_ref"].float() if keep_warped_ref else None
        return TiledOutput(res["sr"].float(), res["confidence"].float(), warped, used, res["ref_confidence"])
    return res["sr"].float()


@torch.no_grad()
def restore_tiled(model, lr: torch.Tensor, textures, *, tile="auto", overlap: int = DEFAULT_OVERLAP,
                  progress: ProgressFn | None = None, interrupt: InterruptFn | None = None,
                  oom_fallback: bool = True, on_tile: TileFn | None = None) -> torch.Tensor:
    """Restore ``lr`` tile by tile from the whole image's :class:`AlignedTextures` (from
    ``model.align``), cropping them per tile with ``textures.crop``. Only the restoration
    is tiled: the textures are held whole. Arguments as :func:`upscale_tiled`."""
    check_lr_tensor(lr)
    check_tile_args(tile, overlap)
    h, w = lr.shape[-2:]
    if tuple(textures.lr_size) != (h, w):
        raise ValueError(f"the textures were aligned for an LR of {tuple(textures.lr_size)}, but lr is {h}x{w}")
    dev, dtype = model.device, model.dtype

    def step(part, window):
        y0, y1, x0, x1 = window
        tex = textures if (y0, x0, y1, x1) == (0, 0, h, w) else textures.crop(y0, x0, y1, x1)
        sr = model.restore(part, tex).sr.to(lr.device)
        if on_tile is not None:
            on_tile(window, sr)
        return {"sr": sr}

    res, _ = run_tiles(lr, step, tile=tile_size(tile, model, lr.shape[0]), overlap=overlap, progress=progress,
                       interrupt=interrupt, oom_fallback=oom_fallback, device=dev, dtype=dtype)
    return res["sr"].float()
