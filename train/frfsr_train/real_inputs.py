"""Real inputs on held-out photos: degraded LRs, Refs at another zoom or angle, no Ref at all.

Every *kind* of input pairs one LR with one Ref, both cut from the held-out photos of
:mod:`frfsr_train.data.photos` (never trained on; every source):

* the *scene* is the photo at half its resolution (PIL bicubic), so that the full-resolution
  photo can serve as a Ref with twice the detail; the HR is a ``patch`` x ``patch`` crop of
  the scene (8-bit), ``crops`` deterministic crops per photo (seeded, flat crops redrawn);
* LR kinds: ``clean`` and every ``ref_*`` / ``self`` / ``unrelated`` kind use the PIL-bicubic
  x1/4 of the HR (the CUFED protocol); ``jpeg50`` / ``jpeg70`` / ``jpeg90`` save that LR as a
  JPEG of that quality (PIL, 4:2:0); ``blur_noise`` blurs the HR with a Gaussian of sigma
  :data:`BLUR_SIGMA` (HR pixels) before the x1/4 and adds Gaussian noise of sigma
  :data:`NOISE_SIGMA` (seeded), then rounds to 8 bits;
* Ref kinds: another view of the same scene, its field of view moved by a quarter of its
  side from the HR's centre (right and down, or left and up on alternate crops), at the HR's
  zoom (``clean``, the JPEG and ``blur_noise`` kinds; with a side that is a multiple of 16, such
  a move is a whole number of LR pixels), the same moved 2 HR pixels further
  (``ref_offgrid``: off the LR's pixel grid by half an LR pixel, as a real Ref is), at half the magnification
  (``ref_zoom0.5``: twice the field of view, antialiased), at twice the magnification
  (``ref_zoom2``: half the field, cut from the full-resolution photo: real detail; as many
  pixels as the same-zoom Ref), at twice the magnification over the same-zoom Ref's field
  (``ref_detail2``: twice its pixels per side, from the full-resolution photo), or
  rotated by 15 / 30 degrees (``ref_rot15``, ``ref_rot30``: bilinear); ``self`` gives the
  bicubic-upsampled LR as the Ref (the model alone); ``unrelated`` gives the same-zoom Ref of
  the same crop of the next held-out photo. A Ref is ``patch`` x ``patch`` pixels, smaller
  where the photo cannot hold its field of view (``ref_zoom0.5`` on scikit-image's photos).

:func:`evaluate` reports per model and kind the PSNR-Y / SSIM-Y (4-pixel border, float
images) of bicubic, of the model with the kind's Ref, and of the model alone (the self Ref
for the same LR), the gain (model - bicubic), the Ref gain (model - model alone) and the mean
relevance (:attr:`frfsr.Correspondence.relevance`). ``python train/evaluate.py --layout heldout`` and
``benchmarks/eval_default.py`` run it and print a markdown table (:func:`markdown`).
"""
from __future__ import annotations

import argparse
import io
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from frfsr import RefViews
from frfsr.devices import cpu_name

from .seeds import seed_of

__all__ = ["KINDS", "LR_KINDS", "BLUR_SIGMA", "NOISE_SIGMA", "SCENE_SCALE", "Case", "Scene", "load_scene",
           "crop_positions", "jpeg", "blur_noise", "degrade_lr", "make_ref", "ref_view", "build_cases", "evaluate",
           "markdown", "add_arguments", "run"]

#: Every kind, in table order (see the module docstring).
KINDS = ("clean", "ref_offgrid", "jpeg50", "jpeg70", "jpeg90", "blur_noise", "ref_zoom0.5", "ref_zoom2", "ref_detail2", "ref_rot15",
         "ref_rot30", "self", "unrelated")
#: Kinds whose LR is degraded (all others use the clean LR).
LR_KINDS = ("jpeg50", "jpeg70", "jpeg90", "blur_noise")
BLUR_SIGMA = 1.0            # HR pixels
NOISE_SIGMA = 5 / 255       # on the [0, 1] scale, added to the LR
SCENE_SCALE = 0.5           # scene pixels per photo pixel
DEFAULT_PATCH, DEFAULT_CROPS = 128, 3
_BORDER = 4                 # pixels left out of every metric per side (psnr_y's crop_border)
# Ref kind -> HR pixels its field moves beyond the quarter of its side (off the LR's pixel grid)
_REF_EXTRA_MOVE = {"ref_offgrid": 2}
# Ref kind -> (field of view: the HR's side / this, rotation in degrees, Ref pixels per scene pixel)
_REF_GEOMETRY = {"ref_zoom0.5": (0.5, 0.0, 0.5), "ref_zoom2": (2.0, 0.0, 2.0), "ref_detail2": (1.0, 0.0, 2.0),
                 "ref_rot15": (1.0, 15.0, 1.0), "ref_rot30": (1.0, 30.0, 1.0)}


def _check_kinds(kinds) -> tuple[str, ...]:
    kinds = tuple(kinds)
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise ValueError(f"unknown kind(s) {', '.join(map(repr, bad)) or '(none given)'}; accepted: {', '.join(KINDS)}")
    return kinds


# ---------------------------------------------------------------------- scenes and crops
@dataclass
class Scene:
    """A photo (3, H, W uint8) and its scene, the photo at :data:`SCENE_SCALE` (uint8)."""

    name: str
    photo: torch.Tensor
    scene: torch.Tensor


def load_scene(name: str) -> Scene:
    """The :class:`Scene` of a photo (any name :func:`frfsr_train.data.photos.load_photo` takes)."""
    from .data.degrade import bicubic_resize
    from .data.photos import load_photo
    arr = load_photo(name)
    h, w = arr.shape[:2]
    scene = bicubic_resize(np.ascontiguousarray(arr), (round(h * SCENE_SCALE), round(w * SCENE_SCALE)))
    to_t = lambda a: torch.from_numpy(np.array(a)).permute(2, 0, 1).contiguous()  # noqa: E731
    return Scene(str(name), to_t(arr), to_t(scene))


def crop_positions(scene: Scene, patch: int, n: int, seed: int = 0, min_std: float = 0.04) -> list[tuple[int, int]]:
    """``n`` (y, x) corners of ``patch`` x ``patch`` HR crops of the scene, a fixed function of
    (photo name, patch, n, seed); crops flatter than ``min_std`` are redrawn (up to 20 times)."""
    _, h, w = scene.scene.shape
    if min(h, w) < patch:
        raise ValueError(f"{scene.name}: its scene ({h}x{w}, the photo at {SCENE_SCALE}) is smaller than patch={patch}")
    g = torch.Generator().manual_seed(seed_of("crops", scene.name, patch, n, seed))
    out = []
    for _ in range(n):
        for _ in range(20):
            y = int(torch.randint(0, h - patch + 1, (), generator=g))
            x = int(torch.randint(0, w - patch + 1, (), generator=g))
            if scene.scene[:, y:y + patch, x:x + patch].float().div(255).std() >= min_std:
                break
        out.append((y, x))
    return out


# ---------------------------------------------------------------------- degradations
def _u8(img: torch.Tensor) -> np.ndarray:
    """(3, H, W) float in [0, 1] or uint8 -> (H, W, 3) uint8."""
    if img.dtype != torch.uint8:
        img = img.clamp(0, 1).mul(255).round().to(torch.uint8)
    return np.ascontiguousarray(img.permute(1, 2, 0).numpy())


def _float(arr) -> torch.Tensor:
    t = torch.from_numpy(np.array(arr)) if isinstance(arr, np.ndarray) else arr
    if t.dim() == 3 and t.shape[-1] == 3 and t.shape[0] != 3:
        t = t.permute(2, 0, 1)
    return t.float().div(255) if t.dtype == torch.uint8 else t.float()


def jpeg(img: torch.Tensor, quality: int) -> torch.Tensor:
    """``img`` (3, H, W; float in [0, 1] or uint8) saved as a JPEG of ``quality`` (PIL, 4:2:0
    chroma) and read back, float in [0, 1]."""
    from PIL import Image
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"JPEG quality must be 1..100; got {quality!r}")
    buf = io.BytesIO()
    Image.fromarray(_u8(img)).save(buf, format="JPEG", quality=int(quality), subsampling=2)
    buf.seek(0)
    with Image.open(buf) as im:
        return _float(np.asarray(im.convert("RGB")))


def _gaussian_blur(img: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-x ** 2 / (2 * sigma ** 2))
    k = k / k.sum()
    c = img.shape[0]
    out = F.pad(img[None], (radius, radius, radius, radius), mode="reflect")
    out = F.conv2d(out, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    out = F.conv2d(out, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return out[0]


def blur_noise(hr: torch.Tensor, sigma: float = BLUR_SIGMA, noise: float = NOISE_SIGMA,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """The LR of ``hr`` (3, H, W) for a blurry, noisy camera: Gaussian blur of ``sigma`` HR
    pixels, PIL bicubic x1/4, Gaussian noise of ``noise`` (seeded by ``generator``), 8 bits."""
    from .data.degrade import bicubic_downsample
    lr = bicubic_downsample(_gaussian_blur(_float(hr), sigma), 4)
    lr = lr + noise * torch.randn(lr.shape, generator=generator)
    return lr.clamp(0, 1).mul(255).round().div(255)


def degrade_lr(hr: torch.Tensor, kind: str, seed: int = 0) -> torch.Tensor:
    """The LR (3, H/4, W/4, float) of the 8-bit HR crop ``hr`` (3, H, W uint8) for ``kind``."""
    from .data.degrade import bicubic_downsample
    _check_kinds([kind])
    if kind == "blur_noise":
        return blur_noise(hr, generator=torch.Generator().manual_seed(seed))
    lr = _float(bicubic_downsample(hr.contiguous(), 4))
    if kind.startswith("jpeg"):
        return jpeg(lr, int(kind[4:]))
    return lr


def _field(center: float, extent: float, size: int) -> float:
    """A field of view's start along one axis: centred on ``center``, kept in [0, size)."""
    start = center - extent / 2
    return float(min(max(start, 0.0), max(size - extent, 0.0)))


def make_ref(scene: Scene, y: int, x: int, patch: int, kind: str, sign: int = 1) -> torch.Tensor:
    """The Ref (3, h, w float) of ``kind`` for the HR crop at (y, x) of the scene: another view
    whose field of view is centred a quarter of its side away from the HR's centre (``sign``
    +1: right and down, -1: left and up); see the module docstring."""
    return ref_view(scene, y, x, patch, kind, sign)[0]


def ref_view(scene: Scene, y: int, x: int, patch: int, kind: str, sign: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(Ref, footprint): the :func:`make_ref` Ref and a (patch, patch) bool map of the HR
    pixels whose scene point the Ref shows (its field of view on the HR crop)."""
    from .data.degrade import bicubic_resize
    zoom, angle, res = _REF_GEOMETRY.get(kind, (1.0, 0.0, 1.0))
    _, sh, sw = scene.scene.shape
    cy, cx = y + patch / 2, x + patch / 2
    fy, fx = min(patch / zoom, sh), min(patch / zoom, sw)          # field of view, scene pixels
    extra = _REF_EXTRA_MOVE.get(kind, 0)
    cy, cx = cy + sign * (fy / 4 + extra), cx + sign * (fx / 4 + extra)
    iy = torch.arange(patch, dtype=torch.float64)[:, None] + y      # the HR pixels' scene indices
    ix = torch.arange(patch, dtype=torch.float64)[None, :] + x
    if angle:
        theta = math.radians(angle)
        half = (patch - 1) / 2
        ext = half * (abs(math.cos(theta)) + abs(math.sin(theta)))      # half extent of the rotated footprint
        cy = min(max(cy, ext), sh - 1 - ext) if 2 * ext < sh - 1 else (sh - 1) / 2
        cx = min(max(cx, ext), sw - 1 - ext) if 2 * ext < sw - 1 else (sw - 1) / 2
        g = torch.arange(patch, dtype=torch.float64) - half
        gy, gx = torch.meshgrid(g, g, indexing="ij")
        c, s = math.cos(theta), math.sin(theta)
        px, py = cx - 0.5 + c * gx - s * gy, cy - 0.5 + s * gx + c * gy      # pixel-centre coordinates
        grid = torch.stack([2 * px / (sw - 1) - 1, 2 * py / (sh - 1) - 1], -1).float()
        out = F.grid_sample(_float(scene.scene)[None], grid[None], mode="bilinear",
                            padding_mode="reflection", align_corners=True)[0]
        dx, dy = ix - (cx - 0.5), iy - (cy - 0.5)                          # back into the Ref's grid
        inside = ((c * dx + s * dy).abs() <= half + 0.5) & ((-s * dx + c * dy).abs() <= half + 0.5)
        return out.clamp(0, 1).mul(255).round().div(255), inside
    y0, x0 = _field(cy, fy, sh), _field(cx, fx, sw)
    full = 1 / SCENE_SCALE  # photo pixels per scene pixel
    if res == full:         # from the full-resolution photo: the field at its detail
        ph, pw = scene.photo.shape[-2:]
        n_y, n_x = min(round(fy * full), ph), min(round(fx * full), pw)
        Y0, X0 = min(round(y0 * full), ph - n_y), min(round(x0 * full), pw - n_x)
        inside = (((iy + 0.5) * full >= Y0) & ((iy + 0.5) * full <= Y0 + n_y)
                  & ((ix + 0.5) * full >= X0) & ((ix + 0.5) * full <= X0 + n_x))
        return _float(scene.photo[:, Y0:Y0 + n_y, X0:X0 + n_x]), inside
    n_y, n_x = round(fy), round(fx)
    Y0, X0 = min(round(y0), sh - n_y), min(round(x0), sw - n_x)
    field = scene.scene[:, Y0:Y0 + n_y, X0:X0 + n_x]
    inside = (iy >= Y0) & (iy < Y0 + n_y) & (ix >= X0) & (ix < X0 + n_x)
    if res == 1.0:
        return _float(field), inside
    size = (max(1, round(n_y * res)), max(1, round(n_x * res)))
    return _float(bicubic_resize(_u8(field), size)), inside


# ---------------------------------------------------------------------- cases
@dataclass
class Case:
    """One LR/Ref pair: ``hr`` (3, P, P), ``lr`` (3, P/4, P/4), ``ref`` (3, h, w), float in
    [0, 1]; ``lr_key`` names the LR (photo, crop, LR degradation) so that the model alone runs
    once per LR."""

    photo: str
    crop: int
    kind: str
    hr: torch.Tensor
    lr: torch.Tensor
    ref: torch.Tensor
    ref_photo: str
    footprint: torch.Tensor | None = None    # (P, P) bool: the HR pixels the Ref shows (None: none, unrelated)

    @property
    def lr_key(self) -> tuple:
        return self.photo, self.crop, self.kind if self.kind in LR_KINDS else "clean"


def build_cases(photos=None, kinds=KINDS, patch: int = DEFAULT_PATCH, crops: int = DEFAULT_CROPS,
                seed: int = 0, sources=None) -> list[Case]:
    """Every (photo, crop, kind) :class:`Case`, a fixed function of the arguments. ``photos``:
    names (default: every held-out photo of ``sources``, all sources by default: a source
    not fetched raises :class:`frfsr_train.data.photos.PhotoNotFetched`). ``unrelated`` needs two
    photos or more."""
    from .data.photos import heldout_photos
    kinds = _check_kinds(kinds)
    if isinstance(patch, bool) or not isinstance(patch, int) or patch < 64 or patch % 4:
        raise ValueError(f"patch must be a multiple of 4 and at least 64; got {patch!r}")
    names = list(heldout_photos(sources) if photos is None else photos)
    if "unrelated" in kinds and len(names) < 2:
        raise ValueError("the 'unrelated' kind needs at least two photos")
    scenes = [load_scene(n) for n in names]
    corners = [crop_positions(s, patch, crops, seed) for s in scenes]
    cases = []
    for i, (sc, pos) in enumerate(zip(scenes, corners)):
        for j, (y, x) in enumerate(pos):
            hr8 = sc.scene[:, y:y + patch, x:x + patch]
            sign = 1 if j % 2 == 0 else -1
            lrs: dict[str, torch.Tensor] = {}
            for kind in kinds:
                lr_kind = kind if kind in LR_KINDS else "clean"
                if lr_kind not in lrs:
                    lrs[lr_kind] = degrade_lr(hr8, lr_kind, seed_of("lr", sc.name, j, lr_kind, seed))
                lr = lrs[lr_kind]
                ref_photo, footprint = sc.name, None
                if kind == "self":
                    from .data.degrade import bicubic_upsample
                    ref, footprint = bicubic_upsample(lr, 4).clamp(0, 1), torch.ones(patch, patch, dtype=torch.bool)
                elif kind == "unrelated":
                    k = (i + 1) % len(scenes)
                    oy, ox = corners[k][j]
                    ref, ref_photo = make_ref(scenes[k], oy, ox, patch, "clean", sign), scenes[k].name
                else:
                    ref, footprint = ref_view(sc, y, x, patch, kind, sign)
                cases.append(Case(sc.name, j, kind, _float(hr8), lr, ref, ref_photo, footprint))
    return cases


# ---------------------------------------------------------------------- evaluation
@torch.inference_mode()
def _run_model(model, lr: torch.Tensor, ref: torch.Tensor, ref_scales=None,
               ref_angles=None) -> tuple[torch.Tensor, float]:
    """SR (3, 4h, 4w) of one LR with one Ref (and the Ref pyramid given), and the relevance."""
    dev, dtype = model.device, model.dtype
    lr_b, ref_b = lr[None].to(dev, dtype), ref[None].to(dev, dtype)
    refs = model.encode_refs(ref_b, 1, views=RefViews.of(ref_scales, ref_angles))
    corr = model.match(lr_b, refs)
    sr = model.restore(lr_b, model.align(corr)).sr[0].float().clamp(0, 1).cpu()
    return sr, float(corr.relevance[0])


def _mean(vals):
    return float(sum(vals) / len(vals)) if vals else float("nan")


def evaluate(models: dict, cases: list[Case], ref_scales=None, progress=None, ref_angles=None) -> dict:
    """Metrics of every model on ``cases``: ``{"rows": [...], "cases": [...]}``. A row per
    (model, kind): ``model, kind, n, bicubic_psnr, bicubic_ssim, psnr, ssim, alone_psnr,
    alone_ssim, gain, ref_gain, relevance, alone_relevance, field, field_ref_gain``; a case
    entry per (model, case) with the per-image values. ``field`` is the share of the HR the
    Ref shows (:func:`ref_view`), ``field_ref_gain`` the Ref gain measured there only (PSNR-Y
    of the model with the Ref minus the model alone, over the Ref's footprint; None for
    unrelated Refs): a Ref that shows a quarter of the scene can only help there. ``ref_scales`` / ``ref_angles``: the Ref pyramid for the kinds' Refs
    (the self Ref of the model alone is matched as given). ``progress(done, total)``."""
    from .data.degrade import bicubic_upsample
    from frfsr.metrics import psnr_y, ssim_y
    kinds = list(dict.fromkeys(c.kind for c in cases))
    per_case, rows = [], []
    total, done = len(models) * len(cases), 0
    bic_cache: dict[tuple, tuple[float, float]] = {}
    for label, model in models.items():
        alone: dict[tuple, tuple] = {}
        for c in cases:
            if c.lr_key not in bic_cache:
                bic = bicubic_upsample(c.lr, 4).clamp(0, 1)
                bic_cache[c.lr_key] = (psnr_y(bic[None], c.hr[None]), ssim_y(bic[None], c.hr[None]))
            if c.lr_key not in alone:
                sr, rel = _run_model(model, c.lr, bicubic_upsample(c.lr, 4).clamp(0, 1))
                alone[c.lr_key] = (psnr_y(sr[None], c.hr[None]), ssim_y(sr[None], c.hr[None]), rel, sr)
            ap, as_, arel, alone_sr = alone[c.lr_key]
            if c.kind == "self":
                p, s, rel, sr = alone[c.lr_key]
            else:
                sr, rel = _run_model(model, c.lr, c.ref, ref_scales, ref_angles)
                p, s = psnr_y(sr[None], c.hr[None]), ssim_y(sr[None], c.hr[None])
            bp, bs = bic_cache[c.lr_key]
            fp = c.footprint
            inner = fp is not None and bool(fp[_BORDER:-_BORDER, _BORDER:-_BORDER].any())
            field_gain = (psnr_y(sr[None], c.hr[None], mask=fp) - psnr_y(alone_sr[None], c.hr[None], mask=fp)
                          if inner and c.kind != "self" else 0.0 if inner else None)
            per_case.append({"model": label, "photo": c.photo, "crop": c.crop, "kind": c.kind, "ref_photo": c.ref_photo,
                             "ref_size": list(c.ref.shape[-2:]), "bicubic_psnr": bp, "bicubic_ssim": bs, "psnr": p,
                             "ssim": s, "alone_psnr": ap, "alone_ssim": as_, "relevance": rel,
                             "alone_relevance": arel, "field": float(fp.float().mean()) if fp is not None else 0.0,
                             "field_ref_gain": field_gain})
            done += 1
            if progress is not None:
                progress(done, total)
        for kind in kinds:
            rs = [r for r in per_case if r["model"] == label and r["kind"] == kind]
            row = {"model": label, "kind": kind, "n": len(rs)}
            for key in ("bicubic_psnr", "bicubic_ssim", "psnr", "ssim", "alone_psnr", "alone_ssim", "relevance",
                        "alone_relevance"):
                row[key] = _mean([r[key] for r in rs])
            row["gain"] = row["psnr"] - row["bicubic_psnr"]
            row["ref_gain"] = row["psnr"] - row["alone_psnr"]
            row["field"] = _mean([r["field"] for r in rs])
            fg = [r["field_ref_gain"] for r in rs if r["field_ref_gain"] is not None]
            row["field_ref_gain"] = _mean(fg) if fg else None
            rows.append(row)
    return {"rows": rows, "cases": per_case}


_KIND_LABELS = {
    "clean": "clean LR, Ref: another view, same zoom",
    "ref_offgrid": "the same Ref moved off the LR grid (2 HR px further)",
    "jpeg50": "LR as JPEG q50, same-zoom Ref",
    "jpeg70": "LR as JPEG q70, same-zoom Ref",
    "jpeg90": "LR as JPEG q90, same-zoom Ref",
    "blur_noise": "LR blurred (sigma 1) + noise (5/255), same-zoom Ref",
    "ref_zoom0.5": "Ref at half the zoom (2x field of view)",
    "ref_zoom2": "Ref at twice the zoom (half the field, 2x detail)",
    "ref_detail2": "Ref at twice the zoom over the same field (2x pixels per side)",
    "ref_rot15": "Ref rotated 15 degrees",
    "ref_rot30": "Ref rotated 30 degrees",
    "self": "no Ref (LR as its own Ref)",
    "unrelated": "Ref from another held-out photo",
}


def markdown(result: dict) -> str:
    """The rows as a markdown table: per kind, bicubic then, per model, PSNR-Y / SSIM-Y with
    the kind's Ref and alone, gain, Ref gain and relevance."""
    rows = result["rows"]
    models = list(dict.fromkeys(r["model"] for r in rows))
    kinds = list(dict.fromkeys(r["kind"] for r in rows))
    head = ["kind", "input", "pairs", "Ref shows", "bicubic"]
    for m in models:
        pre = f"{m}: " if len(models) > 1 else ""
        head += [f"{pre}model", f"{pre}model alone", f"{pre}gain", f"{pre}Ref gain", f"{pre}Ref gain in its field",
                 f"{pre}relevance"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|"]
    by = {(r["model"], r["kind"]): r for r in rows}
    for kind in kinds:
        first = by[(models[0], kind)]
        cells = [f"`{kind}`", _KIND_LABELS.get(kind, kind), str(first["n"]), f"{100 * first['field']:.0f} %",
                 f"{first['bicubic_psnr']:.2f} / {first['bicubic_ssim']:.4f}"]
        for m in models:
            r = by[(m, kind)]
            cells += [f"{r['psnr']:.2f} / {r['ssim']:.4f}", f"{r['alone_psnr']:.2f} / {r['alone_ssim']:.4f}",
                      f"{r['gain']:+.2f}", f"{r['ref_gain']:+.2f}",
                      "-" if r["field_ref_gain"] is None else f"{r['field_ref_gain']:+.2f}", f"{r['relevance']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------- command line
def add_arguments(p: argparse.ArgumentParser, weights_flag: bool = True) -> None:
    """The held-out evaluation's options (``--weights``, ``--kinds``, ...) on ``p``."""
    g = p.add_argument_group("held-out real-input evaluation (--layout heldout)")
    if weights_flag:
        g.add_argument("--weights", nargs="+", metavar="W",
                       help="model folders / Hub repo ids / 'default' (the bundled weights) to put side by side "
                            "(default: --model, else the bundled weights)")
    g.add_argument("--names", nargs="+", help="a label per --weights entry (default: the names given)")
    g.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS, metavar="KIND",
                   help=f"input kinds (default: all: {' '.join(KINDS)})")
    g.add_argument("--ref-scales", type=float, nargs="+", metavar="S",
                   help="match every kind's Ref also at these factors (the Ref scale pyramid), e.g. 1 0.71 0.5")
    g.add_argument("--ref-angles", type=float, nargs="+", metavar="DEG",
                   help="match every kind's Ref also rotated by these angles (degrees), e.g. 0 30 -30")
    g.add_argument("--sources", nargs="+", metavar="SRC",
                   help="photo sources whose held-out photos are used (default: all; see frfsr_train.data.photos)")
    g.add_argument("--patch", type=int, default=DEFAULT_PATCH, help="HR crop side (default: %(default)s)")
    g.add_argument("--crops", type=int, default=DEFAULT_CROPS, help="crops per photo (default: %(default)s)")
    g.add_argument("--json", metavar="PATH", help="also write the rows and per-case values as JSON")
    g.add_argument("--threads", type=int, help="torch CPU threads")


def _load(weights: str, device: str):
    from frfsr.models import FRFSR
    name = None if weights in (None, "default") else weights
    return FRFSR.from_pretrained(name, device=device).eval()


def run(args: argparse.Namespace, command: str | None = None) -> int:
    """Run the evaluation from parsed :func:`add_arguments` options; prints the markdown
    table (and writes ``--json``). Returns the exit code."""
    if args.threads:
        torch.set_num_threads(args.threads)
    weights = list(getattr(args, "weights", None) or [getattr(args, "model", None) or "default"])
    names = list(args.names or weights)
    if len(names) != len(weights):
        raise ValueError(f"give one --names label per --weights entry ({len(weights)}), got {len(names)}")
    if len(set(names)) != len(names):
        raise ValueError(f"the model labels must differ; got {names} (use --names)")
    device = getattr(args, "device", None) or "cpu"
    t0 = time.perf_counter()
    cases = build_cases(kinds=args.kinds, patch=args.patch, crops=args.crops, seed=getattr(args, "seed", 0) or 0,
                        sources=args.sources)
    models = {n: _load(w, device) for n, w in zip(names, weights)}

    def progress(done, total):
        if done % 20 == 0 or done == total:
            print(f"  {done}/{total} runs, {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)

    result = evaluate(models, cases, ref_scales=args.ref_scales, progress=progress, ref_angles=args.ref_angles)
    seconds = time.perf_counter() - t0
    photos = sorted({c.photo for c in cases})
    result["config"] = {"weights": dict(zip(names, weights)), "kinds": list(args.kinds), "patch": args.patch,
                        "crops": args.crops, "photos": photos, "ref_scales": args.ref_scales,
                        "ref_angles": args.ref_angles,
                        "seed": getattr(args, "seed", 0) or 0, "command": command}
    result["env"] = {"cpu": cpu_name(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                     "device": device, "seconds": round(seconds, 1), "date": time.strftime("%Y-%m-%d")}
    print(markdown(result))
    print(f"\n({len(photos)} held-out photos x {args.crops} crops, HR {args.patch}x{args.patch}, "
          f"{seconds:.0f} s on {cpu_name()}, {torch.get_num_threads()} threads)", file=sys.stderr)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1))
        print(f"wrote {args.json}", file=sys.stderr)
    return 0
