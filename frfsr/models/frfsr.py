"""FRFSR: match -> align -> restore (paper Fig. 1), with feature reuse for stage 2."""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..checks import MIN_LR_SIZE, MIN_REF_SIZE, check_dtype, check_image
from ..config import FRFSRConfig
from .. import ops
from ..ops.fast_match import MATCH_MODES
from .correspondence import (SCALES, MosaicLayout, flow_warp, index_to_flow, match_refs, normalize_features,
                             pre_offsets, ref_confidence, relevance_of, subpixel_shift, upscale_flow)
from .pretrained import PretrainedMixin
from .restoration import RestorationNet
from .sife import SIFE
from .texture_encoder import TextureEncoder
from .vgg import ReferenceFeatureExtractor, extract_in_tiles


class _Tensors:
    """Dataclass helper: ``.to(device / dtype)`` moves every tensor inside, through tuples,
    lists and nested results (a :class:`Correspondence` carries its :class:`EncodedRefs`).
    A dtype applies to floating tensors only: indices stay integers."""

    def to(self, *args, **kwargs):
        def mv(v):
            if isinstance(v, torch.Tensor):
                return v.to(*args, **kwargs) if v.is_floating_point() else v.to(*_devices(args), **_devices(kwargs))
            if isinstance(v, (tuple, list)):
                return type(v)(mv(x) for x in v)
            if isinstance(v, _Tensors):
                return v.to(*args, **kwargs)
            return v
        return type(self)(**{f.name: mv(getattr(self, f.name)) for f in fields(self)})


def _devices(a):
    """The device part of ``.to`` arguments (an int tensor keeps its dtype)."""
    if isinstance(a, dict):
        return {k: v for k, v in a.items() if k in ("device", "non_blocking", "copy")}
    return [x for x in a if not isinstance(x, torch.dtype)]


@dataclass
class EncodedRefs(_Tensors):
    """Ref images with everything the model computes from them alone: texture-encoder
    features per Ref, and the VGG19 features laid on the Ref mosaic at the three scales.
    Make it once with :meth:`FRFSR.encode_refs` to reuse it for many LRs or tiles."""

    images: tuple[torch.Tensor, ...]                 # (B, 3, H_r, W_r) each
    textures: tuple[torch.Tensor, ...]               # texture features, 1/4 size, each
    feats: tuple[torch.Tensor, torch.Tensor, torch.Tensor]   # VGG19 relu1_1 / relu2_1 / relu3_1 mosaics
    layout: MosaicLayout
    sources: tuple[tuple[int, float, float], ...] = ()   # per mosaic image: (which Ref given, scale, angle)

    @property
    def batch_size(self) -> int:
        return self.images[0].shape[0]

    def mosaic_image(self) -> torch.Tensor:
        """The Ref images side by side, on the relu1_1 (full-size) mosaic."""
        return self.layout.canvas(list(self.images), SCALES[0])

    def given(self) -> tuple[int, ...]:
        """Per Ref given, the mosaic image that is that Ref as given (scale 1, angle 0), else
        its first copy (with no :attr:`sources`, every image is a Ref given)."""
        if not self.sources:
            return tuple(range(len(self.images)))
        chosen: dict[int, int] = {}
        for j, (i, s, a) in enumerate(self.sources):
            if i not in chosen or ((s, a) == (1.0, 0.0) and self.sources[chosen[i]][1:] != (1.0, 0.0)):
                chosen[i] = j
        return tuple(chosen[i] for i in sorted(chosen))


@dataclass
class Correspondence(_Tensors):
    """Result of :meth:`FRFSR.match`. Flows and pre-offsets are listed at relu1_1 (HR),
    relu2_1 (HR/2) and relu3_1 (LR) scale; flows are (B, h, w, 2) in (x, y) order, pointing
    into the Ref mosaic; pre-offsets are (B, 9, h, w, 2)."""

    flows: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    pre_offsets: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    confidence: torch.Tensor          # (B, 1, h, w): cosine similarity of the best match, 0 on the border
    ref_id: torch.Tensor              # (B, h, w) int64: which Ref the best patch came from (-1 on the border)
    refs: EncodedRefs
    lr_texture: torch.Tensor | None = None   # (B, C, h, w): the LR's texture features that were matched
    patch_size: int = 3

    @functools.cached_property
    def ref_confidence(self) -> tuple[torch.Tensor, ...]:
        """Per Ref given: (B, N) float32, the best LR match of each of its sampled patches
        (:func:`frfsr.models.correspondence.ref_confidence`), computed on first reading."""
        if self.lr_texture is None:
            return ()
        with torch.no_grad():
            lr_n = normalize_features(self.lr_texture)
            return tuple(ref_confidence(lr_n, normalize_features(self.refs.textures[i]), self.patch_size)
                         for i in self.refs.given())

    @property
    def relevance(self) -> torch.Tensor:
        """Relevance per sample (B,): how well the Refs and the LR match, both ways
        (:func:`frfsr.models.correspondence.relevance_of`, where the scale is described;
        below the weights' ``config.relevance_threshold`` the Refs hardly match)."""
        return relevance_of(self.confidence, self.ref_confidence)


@dataclass
class AlignedTextures(_Tensors):
    """Result of :meth:`FRFSR.align`: the Ref mosaic's VGG19 features, the same features
    warped onto the LR grid by the flows, and the pre-offsets, at the three scales.
    ``origin`` (y, x, in LR pixels) is where this grid starts on the Ref mosaic's
    coordinates: (0, 0) for a whole image, the tile's corner for a crop."""

    ref_feats: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    warped: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    pre_offsets: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    confidence: torch.Tensor
    warped_ref: torch.Tensor          # (B, 3, 4h, 4w): the Ref image warped onto the HR grid (a preview)
    origin: tuple[int, int] = (0, 0)

    @property
    def lr_size(self) -> tuple[int, int]:
        return tuple(self.warped[2].shape[-2:])

    def crop(self, y0: int, x0: int, y1: int, x1: int) -> "AlignedTextures":
        """The textures of the LR tile [y0:y1, x0:x1] (LR pixels). Ref features are shared, not
        copied; pre-offsets are moved by the tile's corner so that the deformable convs still
        sample the same Ref positions."""
        h, w = self.lr_size
        if not (0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w):
            raise ValueError(f"tile [{y0}:{y1}, {x0}:{x1}] is outside the LR grid of {h}x{w}")
        warped, offsets = [], []
        for level, s in enumerate(SCALES):
            warped.append(self.warped[level][..., y0 * s: y1 * s, x0 * s: x1 * s])
            shift = torch.tensor([x0 * s, y0 * s], dtype=self.pre_offsets[level].dtype, device=self.pre_offsets[level].device)
            offsets.append(self.pre_offsets[level][:, :, y0 * s: y1 * s, x0 * s: x1 * s] + shift)
        oy, ox = self.origin
        return AlignedTextures(self.ref_feats, tuple(warped), tuple(offsets), self.confidence[..., y0:y1, x0:x1],
                               self.warped_ref[..., 4 * y0: 4 * y1, 4 * x0: 4 * x1], (oy + y0, ox + x0))


@dataclass
class Restoration(_Tensors):
    """Result of :meth:`FRFSR.restore`."""

    sr: torch.Tensor                  # (B, 3, 4h, 4w)
    feature: torch.Tensor             # (B, ngf, 4h, 4w): F_SR before the output convs (reused by stage 2)
    sife: torch.Tensor                # (B, sife_feat, h, w)


REF_TILE = 1024             # Ref pixels per side that the feature extractors process at once


def ref_feature_bytes(config: FRFSRConfig, dtype: torch.dtype = torch.float32) -> float:
    """Bytes of the VGG19 features of one Ref pixel: relu1_1 (full size), relu2_1 (1/4 of the
    pixels) and relu3_1 (1/16)."""
    c1, c2, c3 = config.vgg_widths
    return torch.finfo(dtype).bits // 8 * (c1 + c2 / 4 + c3 / 16)


def ref_bytes_per_pixel(config: FRFSRConfig, dtype: torch.dtype = torch.float32) -> int:
    """Bytes an encoded Ref holds per Ref pixel: the image, the VGG19 features
    (:func:`ref_feature_bytes`) and the texture feature (1/16 of the pixels). Paper preset,
    float32: 524 bytes."""
    elem = torch.finfo(dtype).bits // 8
    return int(elem * (3 + config.vgg_widths[2] / 16) + ref_feature_bytes(config, dtype))


def _distinct_numbers(values, name: str, inside, accepted: str, example: str) -> tuple[float, ...]:
    """``values`` (a number or a sequence) as a non-empty tuple of distinct floats that
    ``inside`` accepts; ValueError naming ``name``, what is ``accepted`` and an ``example``."""
    if isinstance(values, (int, float)) and not isinstance(values, bool):
        values = (values,)
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be numbers, e.g. {example}; got {values!r}") from None
    if not out or not all(inside(v) for v in out) or len(set(out)) != len(out):
        got = " ".join(f"{v:g}" for v in out) or "none"
        raise ValueError(f"{name} must be distinct {accepted}, e.g. {example}; got {got}")
    return out


def check_ref_scales(scales) -> tuple[float, ...]:
    """The Ref pyramid's factors: a non-empty sequence of distinct numbers in (0, 4]."""
    return _distinct_numbers(scales, "ref_scales", lambda s: 0 < s <= 4, "factors in (0, 4]", "1 0.71 0.5")


def check_ref_angles(angles) -> tuple[float, ...]:
    """The Ref rotations: a non-empty sequence of distinct angles in degrees, in [-180, 180]."""
    return _distinct_numbers(angles, "ref_angles", lambda a: -180 <= a <= 180, "angles in [-180, 180] degrees",
                             "0 30 -30")


@dataclass(frozen=True)
class RefViews:
    """The copies of every Ref that are matched: the Ref resized by each of ``scales`` (factors
    in (0, 4]; e.g. ``(1, 0.71, 0.5)`` for a Ref shot closer than the LR), each rotated by
    each of ``angles`` (degrees, counter-clockwise, in [-180, 180]; e.g. ``(0, 30, -30)`` for a
    Ref shot at another camera roll). The default is the Ref as given. A number or any
    sequence of numbers is accepted for either and checked here (ValueError naming
    ``ref_scales`` / ``ref_angles``); :meth:`FRFSR.encode_refs` makes the copies."""

    scales: tuple[float, ...] = (1.0,)
    angles: tuple[float, ...] = (0.0,)

    def __post_init__(self):
        object.__setattr__(self, "scales", check_ref_scales(self.scales))
        object.__setattr__(self, "angles", check_ref_angles(self.angles))

    @classmethod
    def of(cls, scales=None, angles=None, base: "RefViews | None" = None) -> "RefViews":
        """``base`` (default: the Ref as given) with the ``scales`` and ``angles`` that are not None."""
        base = base if base is not None else cls()
        if not isinstance(base, RefViews):
            raise TypeError(f"ref_views must be a frfsr.RefViews, e.g. RefViews(scales=(1, 0.5)); got {base!r}")
        if scales is None and angles is None:
            return base
        return cls(base.scales if scales is None else scales, base.angles if angles is None else angles)

    def copies(self) -> list[tuple[float, float]]:
        """(scale, angle) of every copy, scale by scale."""
        return [(s, a) for s in self.scales for a in self.angles]

    def pixels(self, h: int, w: int) -> int:
        """Pixels of every copy of an h x w Ref together (what encoding it costs)."""
        return sum(math.prod(ref_copy_size(h, w, s, a)) for s, a in self.copies())


def resize_ref(ref: torch.Tensor, scale: float) -> torch.Tensor:
    """A Ref resized by ``scale`` (bicubic, antialiased when shrinking), kept in [0, 1]."""
    size = ref_copy_size(*ref.shape[-2:], scale)
    out = F.interpolate(ref.float(), size=size, mode="bicubic", align_corners=False, antialias=scale < 1)
    return out.clamp_(0, 1).to(ref.dtype)


def ref_copy_size(h: int, w: int, scale: float = 1.0, angle: float = 0.0) -> tuple[int, int]:
    """(height, width) of the pyramid's copy of an h x w Ref at ``scale`` and ``angle``
    (:func:`resize_ref`, then :func:`rotate_ref`)."""
    if scale != 1:
        h, w = max(1, round(h * scale)), max(1, round(w * scale))
    if angle == 0:
        return h, w
    c, s = abs(math.cos(math.radians(angle))), abs(math.sin(math.radians(angle)))
    return max(1, math.ceil(h * c + w * s - 1e-6)), max(1, math.ceil(w * c + h * s - 1e-6))


def rotate_ref(ref: torch.Tensor, angle: float) -> torch.Tensor:
    """A Ref rotated counter-clockwise by ``angle`` degrees about its centre (bicubic), on a
    canvas grown to hold all of it; the corners it does not cover are black. Kept in [0, 1]."""
    if angle == 0:
        return ref
    h, w = ref.shape[-2:]
    t = math.radians(angle)
    c, s = math.cos(t), math.sin(t)
    oh, ow = ref_copy_size(h, w, 1.0, angle)
    # the source of each output pixel, in grid_sample's [-1, 1] coordinates (pixel centres at the
    # ends, align_corners=True): the output's coordinates rotated (y grows downwards) and rescaled
    theta = torch.tensor([[c * (ow - 1) / max(w - 1, 1), -s * (oh - 1) / max(w - 1, 1), 0.0],
                          [s * (ow - 1) / max(h - 1, 1), c * (oh - 1) / max(h - 1, 1), 0.0]],
                         dtype=torch.float64, device=ref.device)
    grid = F.affine_grid(theta.expand(ref.shape[0], 2, 3), [ref.shape[0], 1, oh, ow], align_corners=True).float()
    out = F.grid_sample(ref.float(), grid, mode="bicubic", padding_mode="zeros", align_corners=True)
    return out.clamp_(0, 1).to(ref.dtype)


def _check_ref_batch(name: str, n: int, b: int) -> None:
    if n not in (1, b):
        raise ValueError(f"{name} has batch size {n} but lr has {b}; give one Ref per LR "
                         f"(batch {b}) or one Ref for all (batch 1)")


MAX_PARAMETERS = 1_000_000_000           # 4 GB of float32 weights; the paper's stage-1 net has 13.5 million


def _parts(cfg: FRFSRConfig) -> dict[str, nn.Module]:
    """The networks of an FRFSR model of config ``cfg``, by attribute name, in order."""
    parts = {"texture_encoder": TextureEncoder(cfg.vgg_widths),
             "ref_extractor": ReferenceFeatureExtractor(cfg.vgg_widths),
             "sife": SIFE(cfg.sife_blocks, cfg.sife_feat, cfg.sife_grow, upsampler=cfg.sife_upsampler),
             "restoration": RestorationNet(cfg, cfg.vgg_widths, reuse=cfg.stage == 2)}
    if cfg.stage == 2:
        parts["reuse_net"] = RestorationNet(cfg, cfg.vgg_widths, reuse=False)
    return parts


@functools.lru_cache(maxsize=64)
def _meta_count(items: tuple) -> int:
    cfg = FRFSRConfig(**dict(items))
    with torch.device("meta"):
        return sum(p.numel() for m in _parts(cfg).values() for p in m.parameters())


def estimate_parameters(config: FRFSRConfig) -> int:
    """The parameter count of a model of ``config``, without allocating it: networks with
    one and two of each repeated block are built on the meta device (no memory), and the
    count, linear in each number of blocks, is extended to the config's."""
    base = {k: (tuple(v) if isinstance(v, list) else v) for k, v in config.to_dict().items()}
    small = dict(base, n_res_blocks=1, n_ddf_blocks=0, sife_blocks=1)

    def count(**kw) -> int:
        return _meta_count(tuple(sorted(dict(small, **kw).items())))
    p0 = count()
    return (p0 + (config.n_res_blocks - 1) * (count(n_res_blocks=2) - p0)
            + config.n_ddf_blocks * (count(n_ddf_blocks=1) - p0)
            + (config.sife_blocks - 1) * (count(sife_blocks=2) - p0))


def check_size(config: FRFSRConfig, limit: int | None = None) -> None:
    """ValueError where a model of ``config`` would have more than ``limit`` parameters
    (default :data:`MAX_PARAMETERS`), before anything is allocated."""
    limit = MAX_PARAMETERS if limit is None else limit
    n = estimate_parameters(config)
    if n > limit:
        raise ValueError(f"this config makes a model of {n:,} parameters ({4 * n / 2**30:,.1f} GiB as float32), more "
                         f"than the {limit:,} accepted (frfsr.models.frfsr.MAX_PARAMETERS); check ngf, "
                         f"n_res_blocks, n_ddf_blocks, sife_blocks, sife_feat, sife_grow and vgg_widths")


class FRFSR(nn.Module, PretrainedMixin):
    """Reference-based 4x super-resolution.

    ``model(lr, ref)`` runs :meth:`match`, :meth:`align` and :meth:`restore` in order.
    ``lr`` is (B, 3, h, w) in [0, 1] with h, w >= 15; ``ref`` is a (B or 1, 3, H, W) tensor,
    H, W >= 12, any size and aspect ratio, or a list of such tensors (several Refs per
    LR). A stage-2 model (``config.stage == 2``) carries the frozen stage-1 restoration net
    whose HR feature it reuses (``reuse_net``).

    ``FRFSR.from_pretrained(folder | "frfsr-default" | "namespace/name")``,
    ``model.save_pretrained(folder)`` and ``model.push_to_hub(repo_id)`` load and save it
    (:mod:`frfsr.models.pretrained`).
    """

    def __init__(self, config: FRFSRConfig | None = None):
        super().__init__()
        cfg = config or FRFSRConfig.paper()
        check_size(cfg)                   # before anything is allocated
        self.config = cfg
        for name, module in _parts(cfg).items():
            setattr(self, name, module)
        if cfg.stage == 2:
            self.reuse_net.requires_grad_(False)
        self.check_inputs = True          # NaN/Inf checks (one host sync each); off for the fastest path
        self.ops_backend: str | None = None   # set_ops_backend: the kernels of frfsr.ops this model runs

    @property
    def dtype(self) -> torch.dtype:
        return self.restoration.head.weight.dtype

    def set_ops_backend(self, name: str | None) -> "FRFSR":
        """The kernels of :mod:`frfsr.ops` this model's operators run: 'reference', 'fused',
        'native', or None / 'auto' (the environment variable ``FRFSR_OPS_BACKEND`` where it is
        set, else the fastest for the tensors' device). Checked here; returns the model."""
        name = None if name is None else ops.check_backend(name)
        self.ops_backend = name
        for module in self.modules():
            if module is not self and hasattr(module, "ops_backend"):
                module.ops_backend = name
        return self

    @property
    def device(self) -> torch.device:
        return self.restoration.head.weight.device

    # ------------------------------------------------------------------ inputs
    def check_lr(self, lr, name: str = "lr") -> torch.Tensor:
        """Validate an LR: shape, size, finite values. The tiled path checks the whole LR once
        with this (and :meth:`check_encoded`) and then matches each tile with ``check=False``."""
        return check_image(lr, name, MIN_LR_SIZE, self.check_inputs, what="LR")

    @staticmethod
    def check_encoded(refs: "EncodedRefs", batch_size: int) -> None:
        """Encoded Refs can serve an LR batch of ``batch_size`` (Ref tensors are checked by
        :meth:`encode_refs`)."""
        for i, r in enumerate(refs.images):
            _check_ref_batch(f"ref[{i}]", r.shape[0], batch_size)

    def encode_refs(self, ref, batch_size: int | None = None, tile: int | None = REF_TILE,
                    views: RefViews | None = None) -> EncodedRefs:
        """Validate the Ref(s) and compute what depends on them alone. ``ref``: a (B, 3, H, W)
        tensor or a list of them; ``batch_size``: the LR batch they will serve (Refs of batch
        1 are shared by every LR); ``tile``: the feature extractors run in tiles of this many
        Ref pixels (None: whole), so their intermediates stay bounded; the result is
        :func:`ref_bytes_per_pixel` per Ref pixel either way.

        ``views``: the copies of every Ref that are matched (:class:`RefViews`; None: the Ref
        as given). Every Ref is also matched as a copy resized by each of ``views.scales`` (e.g.
        ``(1, 0.71, 0.5)``: a Ref shot closer than the LR then also offers its detail at the
        LR's scale), each copy rotated by each of ``views.angles`` (:func:`rotate_ref`, on a
        canvas that holds the whole rotated Ref, so that a Ref shot at another camera roll
        offers its texture upright). The copies are laid on the same mosaic as several Refs,
        and per LR position the best patch over all of them wins; copies smaller than the
        minimum Ref size are left out. Memory and matching time grow with the summed area
        (:meth:`RefViews.pixels`). :attr:`EncodedRefs.sources` names each copy (Ref, scale,
        angle)."""
        if isinstance(ref, EncodedRefs):
            return ref
        refs = list(ref) if isinstance(ref, (list, tuple)) else [ref]
        if not refs:
            raise ValueError("at least one Ref image is required")
        b = batch_size or max(r.shape[0] if isinstance(r, torch.Tensor) and r.dim() == 4 else 1 for r in refs)
        views = RefViews.of(base=views)
        images, sources = [], []
        for i, r in enumerate(refs):
            name = "ref" if len(refs) == 1 else f"ref[{i}]"
            check_image(r, name, MIN_REF_SIZE, self.check_inputs, what="Ref")
            check_dtype(r, name, self.dtype)
            _check_ref_batch(name, r.shape[0], b)
            for s in views.scales:
                scaled = r if s == 1 else resize_ref(r, s)
                if min(scaled.shape[-2:]) < MIN_REF_SIZE:
                    continue
                for a in views.angles:
                    images.append(rotate_ref(scaled, a))
                    sources.append((i, s, a))
        layout = MosaicLayout.build([r.shape[-2:] for r in images])
        textures = tuple(self.texture_encoder.encode_ref(r, tile) for r in images)
        per_ref = [extract_in_tiles(self.ref_extractor, r, tile) for r in images]
        feats = tuple(layout.canvas([f[level] for f in per_ref], s) for level, s in enumerate(SCALES))
        return EncodedRefs(tuple(images), textures, feats, layout, tuple(sources))

    # ------------------------------------------------------------------ steps
    def match(self, lr: torch.Tensor, refs, mode: str = "auto", *, check: bool = True) -> Correspondence:
        """Correlation-based texture warp, matching step (paper eq. 5-9). ``refs``: Ref
        tensor(s) or an :class:`EncodedRefs`. ``mode``: "exact" (every LR patch against
        every Ref patch, the release's), "fast" (coarse-to-fine, cost linear in the LR) or
        "auto" (fast above :data:`frfsr.ops.FAST_MATCH_MIN_PAIRS`). ``check=False``: ``lr``
        was checked already (:meth:`check_lr`) and ``refs`` is encoded Refs that serve it, as
        for each tile of a tiled run. The relevance (:attr:`Correspondence.relevance`) is
        computed when it is read, not here."""
        if mode not in MATCH_MODES:
            raise ValueError(f"unknown match_mode {mode!r}; accepted: {', '.join(MATCH_MODES)}")
        if check:
            self.check_lr(lr)
            check_dtype(lr, "lr", self.dtype)
        refs = self.encode_refs(refs, lr.shape[0])             # Ref tensors are checked there
        if check:
            self.check_encoded(refs, lr.shape[0])
            if refs.images[0].device != lr.device:
                raise ValueError(f"the Refs are on {refs.images[0].device} but lr is on {lr.device}")
        b, p = lr.shape[0], self.config.patch_size
        lr_up = F.interpolate(lr, scale_factor=4, mode="bicubic", align_corners=False)
        lr_tex = self.texture_encoder.encode_lr(lr_up)
        ref_texs = [t.expand(b, -1, -1, -1) for t in refs.textures]
        score, kx, ky, ref_id = match_refs(lr_tex, ref_texs, refs.layout, p, mode=mode, backend=self.ops_backend)
        fraction = (subpixel_shift(lr_tex, ref_texs, refs.layout, kx, ky, ref_id, p)
                    if self.config.subpixel_match else None)
        flow3 = index_to_flow(kx, ky, p, fraction)
        flows = tuple(upscale_flow(flow3, s) for s in SCALES)
        offsets = tuple(pre_offsets(f, s) for f, s in zip(flows, SCALES))
        confidence = F.pad(score, (1, 1, 1, 1)).unsqueeze(1)
        ref_id = F.pad(ref_id, (1, 1, 1, 1), value=-1)
        return Correspondence(flows, offsets, confidence, ref_id, refs, lr_tex.detach(), p)

    def align(self, corr: Correspondence) -> AlignedTextures:
        """Reference features at three scales, warped onto the LR grid (paper eq. 10-13)."""
        b = corr.flows[0].shape[0]
        ref_feats = tuple(f.expand(b, -1, -1, -1) for f in corr.refs.feats)
        warped = tuple(flow_warp(f, flow) for f, flow in zip(ref_feats, corr.flows))
        warped_ref = flow_warp(corr.refs.mosaic_image().expand(b, -1, -1, -1), corr.flows[0])
        return AlignedTextures(ref_feats, warped, corr.pre_offsets, corr.confidence, warped_ref)

    def restore(self, lr: torch.Tensor, textures: AlignedTextures, reuse_feature: torch.Tensor | None = None) -> Restoration:
        """SIFE + the 3-scale U-Net (paper III-C). A stage-2 model computes the stage-1 HR
        feature itself with its frozen ``reuse_net`` unless ``reuse_feature`` is given."""
        sife = self.sife(lr)
        prior = self.sife.upsample(sife) if self.config.sife_upsampler else None
        if self.config.stage == 2 and reuse_feature is None:
            reuse_feature = self.reuse_feature(lr, textures, sife, prior)
        sr, feature = self.restoration(lr, sife, textures, reuse_feature, prior)
        return Restoration(sr, feature, sife)

    @torch.no_grad()
    def reuse_feature(self, lr, textures: AlignedTextures, sife=None, prior=None) -> torch.Tensor:
        """F_SR^rec of the frozen stage-1 net (paper eq. 1), for a stage-2 model."""
        if self.config.stage != 2:
            raise ValueError("reuse_feature is only defined for a stage-2 model (config.stage == 2)")
        sife = self.sife(lr) if sife is None else sife
        if prior is None and self.config.sife_upsampler:
            prior = self.sife.upsample(sife)
        return self.reuse_net(lr, sife, textures, prior=prior)[1]

    def forward(self, lr: torch.Tensor, ref) -> torch.Tensor:
        corr = self.match(lr, ref)
        return self.restore(lr, self.align(corr)).sr

    # ------------------------------------------------------------------ helpers
    def compile_for_inference(self, **compile_kwargs) -> "FRFSR":
        """``torch.compile`` the networks in place (the texture encoder's two trunks, the Ref
        extractor, SIFE, the restoration net and a stage-2 model's reuse net), so that every
        way of running the model (``forward``, the tiled pipeline, the three steps) uses the
        compiled code. ``compile_kwargs`` go to :func:`torch.compile` (e.g.
        ``mode="max-autotune"``). The first call at each new input size compiles (seconds to
        minutes). Parameter names do not change: saving and loading are unaffected."""
        for name in self.COMPILED_PARTS:
            if name != "reuse_net" or self.config.stage == 2:
                self.get_submodule(name).compile(**compile_kwargs)
        return self

    # the modules called as a whole (their __call__) on every path
    COMPILED_PARTS = ("texture_encoder.lr_trunk", "texture_encoder.ref_trunk", "ref_extractor", "sife",
                      "restoration", "reuse_net")

    def num_parameters(self, part: str | None = None) -> int:
        module = self if part is None else getattr(self, part)
        return sum(p.numel() for p in module.parameters())
