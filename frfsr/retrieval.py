"""Reference retrieval: among many candidate Refs, choose the few most relevant to an LR.

Two stages, cheap then exact:

1. **Ranking by a global descriptor.** Every candidate is described once by the model's
   texture encoder (the Ref trunk, :meth:`frfsr.models.texture_encoder.TextureEncoder.encode_ref`):
   its feature map, L2-normalised per pixel, is average-pooled over cells of
   :data:`CELL` x :data:`CELL` texture pixels (8x8 image pixels) and each cell normalised
   again, giving a *bag of local features* (at most :data:`MAX_CELLS` per scale: larger
   images keep an evenly spaced subset). The candidate is described at the scales
   :data:`SCALES` (1 and 0.5: a Ref shot closer than the LR offers its objects at the LR's
   size in the half-size copy), all cells in one bag. The LR is described the same way by
   the LR trunk on its bicubic x4
   (:meth:`~frfsr.models.texture_encoder.TextureEncoder.encode_lr`), once upright and once
   per angle of :data:`QUERY_ROTATIONS` (a Ref shot at another angle). The score of a
   candidate is the mean, over the LR's cells, of the best cosine similarity to any of the
   candidate's cells (the best over the LR's rotations): how much of the LR the
   candidate's textures explain, wherever they are, which makes it indifferent to shifts
   and crops and tolerant of zoom and rotation. These settings were chosen by measurement
   (``benchmarks/bench_retrieval.py``; pooled means over the whole image, coarser cells,
   a symmetric score and centred features ranked worse).
2. **Re-ranking by the match.** The best ``rerank`` candidates are matched against the LR
   by the model itself (:meth:`frfsr.FRFSR.match`, one candidate at a time) and re-ordered
   by :attr:`frfsr.Correspondence.relevance` plus the descriptor score (both are mean best
   cosine similarities; with the bundled weights the relevance alone re-ranked worse than
   the descriptor, the sum as well or better); the first ``k`` are selected.

Descriptors of files are cached on disk, keyed by the sha256 of the file's bytes and by
the model's identity (:func:`model_identity`: the texture encoder's weights and the
descriptor's settings), one safetensors file each, written atomically, under
:func:`descriptor_cache_dir` (``$FRFSR_CACHE/descriptors``, else
``$XDG_CACHE_HOME/frfsr/descriptors``, else ``~/.cache/frfsr/descriptors``: the cache
root of :func:`frfsr._fs.cache_root`, which the photo cache shares). A changed file has
another hash and is described again; candidates given as tensors are described in memory.

:func:`select_references` is the call per LR (:class:`RefIndex` built once for many LRs);
:func:`write_selection_json` writes the ``<output>.refs.json`` sidecar that records which
Refs were used and their scores (:func:`sidecar_path`).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ._fs import atomic_file, cache_root, sha256
from .image_files import IMAGE_SUFFIXES

__all__ = ["RefChooser", "CELL", "MAX_CELLS", "MAX_QUERY_CELLS", "SCALES", "QUERY_ROTATIONS", "DESCRIPTOR_VERSION", "Selection",
           "RefIndex", "descriptor_cache_dir", "model_identity", "ref_descriptor", "lr_descriptor", "descriptor_scores",
           "select_references",
           "write_selection_json", "sidecar_path", "IMAGE_SUFFIXES"]

CELL = 2                    # texture pixels per cell side (8 image pixels)
MAX_CELLS = 2048            # cells per candidate and scale; larger images keep an evenly spaced subset
MAX_QUERY_CELLS = 512       # cells per LR view
SCALES = (1.0, 0.5)         # the candidate is described at these sizes, in one bag
QUERY_ROTATIONS = (-20.0, 20.0)   # the LR is also described rotated by these angles (degrees)
DESCRIPTOR_VERSION = 1      # part of the cache key: a change of the descriptor's design invalidates the cache
_MIN_SIDE = 12              # the smallest Ref the model takes (frfsr.checks.MIN_REF_SIZE)


def descriptor_cache_dir() -> Path:
    """Where descriptors of candidate files are cached: ``<cache root>/descriptors``
    (:func:`frfsr._fs.cache_root`)."""
    return cache_root() / "descriptors"


# ---------------------------------------------------------------------- descriptors
def _cells(feat: torch.Tensor, cell: int, max_cells: int) -> torch.Tensor:
    """(1, C, h, w) features -> (N, C) unit vectors: per-pixel normalised, averaged over
    ``cell`` x ``cell`` cells, normalised; where there are more than ``max_cells`` cells,
    every n-th row and column of cells."""
    f = F.normalize(feat.float(), dim=1)
    side = max(1, min(cell, *f.shape[-2:]))
    pooled = F.avg_pool2d(f, side, stride=side, ceil_mode=True)
    h, w = pooled.shape[-2:]
    step = max(1, math.ceil(math.sqrt(h * w / max_cells)))
    pooled = pooled[..., ::step, ::step]
    return F.normalize(pooled.flatten(2)[0].t(), dim=1)


def _rotate(img: torch.Tensor, degrees: float) -> torch.Tensor:
    """``img`` (1, C, H, W) rotated about its centre (bilinear, reflected at the borders)."""
    t = math.radians(degrees)
    h, w = img.shape[-2:]
    c, s = math.cos(t), math.sin(t)
    theta = torch.tensor([[c, -s * h / w, 0.0], [s * w / h, c, 0.0]], dtype=img.dtype, device=img.device)[None]
    grid = F.affine_grid(theta, list(img.shape), align_corners=False)
    return F.grid_sample(img, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _check_image(img, name: str) -> torch.Tensor:
    """One image as a (1, 3, H, W) tensor: a tensor (3, H, W) / (1, 3, H, W), or a PIL image
    or numpy array (:func:`frfsr.image_io.to_rgb`)."""
    if not isinstance(img, torch.Tensor):
        from .image_io import to_rgb
        img = to_rgb(img, name)
    if img.dim() == 3:
        img = img[None]
    if img.dim() != 4 or img.shape[0] != 1 or img.shape[1] != 3:
        raise ValueError(f"{name} must be one RGB image (3, H, W) or (1, 3, H, W); got shape {tuple(img.shape)}")
    return img


@torch.no_grad()
def ref_descriptor(model, ref, scales=SCALES, cell: int = CELL, max_cells: int = MAX_CELLS) -> torch.Tensor:
    """The descriptor of a candidate Ref ((3, H, W) or (1, 3, H, W) in [0, 1], or a PIL image or
    numpy array): (N, C) unit
    vectors of its texture cells at every scale (see the module docstring), float16."""
    from .models.frfsr import REF_TILE, resize_ref
    ref = _check_image(ref, "ref").to(model.device, model.dtype)
    bags = []
    for s in scales:
        img = ref if s == 1 else resize_ref(ref, s)
        if min(img.shape[-2:]) < _MIN_SIDE:
            continue
        bags.append(_cells(model.texture_encoder.encode_ref(img, REF_TILE), cell, max_cells))
    if not bags:
        raise ValueError(f"ref is {ref.shape[-2]}x{ref.shape[-1]}; a Ref must be at least {_MIN_SIDE}x{_MIN_SIDE}")
    return torch.cat(bags).to("cpu", torch.float16)


@torch.no_grad()
def lr_descriptor(model, lr: torch.Tensor, rotations=QUERY_ROTATIONS, cell: int = CELL,
                  max_cells: int = MAX_QUERY_CELLS) -> list[torch.Tensor]:
    """The descriptor of an LR (3, h, w) or (1, 3, h, w): per view (upright, then each angle
    of ``rotations``) the (M, C) unit vectors of the LR trunk's texture cells on its
    bicubic x4, float32."""
    lr = _check_image(lr, "lr").to(model.device, model.dtype)
    up = F.interpolate(lr, scale_factor=4, mode="bicubic", align_corners=False)
    views = [up] + [_rotate(up, a) for a in rotations if a]
    return [_cells(model.texture_encoder.encode_lr(v), cell, max_cells).cpu() for v in views]


def descriptor_scores(query, descriptors, chunk: int = 1 << 22) -> torch.Tensor:
    """Score of every candidate descriptor (K,) for the LR descriptor ``query`` (what
    :func:`lr_descriptor` gives: (M, C) per view, or one such tensor): the mean over the
    LR's cells of the best cosine similarity to the candidate's cells, the best view's.
    Candidates are compared in batches of about ``chunk`` similarities."""
    views = [query] if isinstance(query, torch.Tensor) else list(query)
    q = torch.cat([v.float() for v in views])                       # (sum M, C)
    bounds = torch.tensor([0] + [v.shape[0] for v in views]).cumsum(0).tolist()
    out = torch.empty(len(descriptors))
    order = sorted(range(len(descriptors)), key=lambda i: descriptors[i].shape[0])   # similar sizes padded together
    start = 0
    while start < len(order):
        n = descriptors[order[start]].shape[0]
        stop = start + 1
        while stop < len(order) and (stop - start + 1) * descriptors[order[stop]].shape[0] * q.shape[0] <= chunk:
            stop += 1
        group = [descriptors[i].float() for i in order[start:stop]]
        n = max(d.shape[0] for d in group)
        bank = q.new_zeros(len(group), n, q.shape[1])
        valid = torch.zeros(len(group), n, dtype=torch.bool)
        for j, d in enumerate(group):
            bank[j, : d.shape[0]], valid[j, : d.shape[0]] = d, True
        sim = torch.einsum("mc,knc->kmn", q, bank).masked_fill_(~valid[:, None, :], -2.0)
        best = sim.amax(2)                                           # (k, sum M)
        per_view = torch.stack([best[:, a:b].mean(1) for a, b in zip(bounds[:-1], bounds[1:])])
        out[torch.tensor(order[start:stop])] = per_view.amax(0)
        start = stop
    return out


def model_identity(model, scales=SCALES, cell: int = CELL, max_cells: int = MAX_CELLS) -> str:
    """A hex key naming what a descriptor depends on: the texture encoder's weights (their
    bytes, in float32), the precision it runs in, the descriptor's settings and
    :data:`DESCRIPTOR_VERSION`."""
    h = hashlib.sha256()
    h.update(json.dumps({"version": DESCRIPTOR_VERSION, "scales": [float(s) for s in scales], "cell": cell,
                         "max_cells": max_cells, "dtype": str(model.dtype)}, sort_keys=True).encode())
    for name, t in sorted(model.texture_encoder.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------- the cache
def _load_cached(path: Path) -> torch.Tensor | None:
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    try:
        return load_file(str(path))["descriptor"]
    except (OSError, KeyError, SafetensorError):       # missing, or a broken file: described again
        return None


def _save_cached(path: Path, desc: torch.Tensor, meta: dict) -> None:
    """Write a descriptor atomically (a temporary file in the same folder, renamed)."""
    from safetensors.torch import save_file
    with atomic_file(path) as tmp:
        save_file({"descriptor": desc.contiguous()}, str(tmp), metadata={k: str(v) for k, v in meta.items()})


def _read_candidate(path: Path) -> torch.Tensor:
    from .image_files import read_image
    from .image_io import to_rgb
    return to_rgb(read_image(path, "candidate Ref"), str(path))


# ---------------------------------------------------------------------- selection
@dataclass(frozen=True)
class Selection:
    """One selected Ref: ``name`` (the file's path as given, or ``candidate[i]``), ``index``
    (its position among the candidates), ``score`` (the descriptor score) and ``relevance``
    (:attr:`frfsr.Correspondence.relevance` of the LR matched against it alone; None when it
    was not re-ranked)."""

    name: str
    index: int
    score: float
    relevance: float | None = None


class RefIndex:
    """Candidate Refs, described once, to rank and select from for many LRs.

    ``candidates``: image files (paths), or images in memory (tensors (3, H, W) /
    (1, 3, H, W) in [0, 1], PIL images, numpy arrays), or a mix; ``names``: labels for them
    (default: the paths, ``candidate[i]`` for images in memory). ``cache_dir``: where file
    descriptors are cached (True, the default: :func:`descriptor_cache_dir`; None or False:
    no disk cache; images in memory are never cached). The descriptors are computed here,
    at construction (``progress(done, total)`` after each); ``computed`` and ``cache_hits``
    count how many were described and how many read from the cache.
    """

    def __init__(self, model, candidates, names=None, *, cache_dir: str | os.PathLike | bool | None = True,
                 progress=None):
        candidates = list(candidates)
        if not candidates:
            raise ValueError("no candidate Refs given; give image files or tensors")
        if names is not None and len(names) != len(candidates):
            raise ValueError(f"{len(names)} names for {len(candidates)} candidates; give one name per candidate")
        self.model = model
        self.candidates = candidates
        self.names = [str(n) for n in names] if names is not None else [
            str(c) if isinstance(c, (str, os.PathLike)) else f"candidate[{i}]" for i, c in enumerate(candidates)]
        self.identity = model_identity(model)
        self.cache_dir = (descriptor_cache_dir() if cache_dir is True else
                          None if cache_dir is None or cache_dir is False else Path(cache_dir))
        self.computed = self.cache_hits = 0
        self.descriptors = []
        for i, c in enumerate(candidates):
            self.descriptors.append(self._describe(c, self.names[i]))
            if progress is not None:
                progress(i + 1, len(candidates))

    @classmethod
    def from_dir(cls, model, folder, **kwargs) -> "RefIndex":
        """Every image file (:data:`IMAGE_SUFFIXES`) directly in ``folder``, sorted by name."""
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"Ref folder {folder} does not exist or is not a folder")
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"no image files in {folder} (accepted: {', '.join(IMAGE_SUFFIXES)})")
        return cls(model, files, **kwargs)

    def subset(self, indices) -> "RefIndex":
        """An index over the candidates ``indices`` (in that order), sharing their
        descriptors (nothing is described again)."""
        indices = [int(i) for i in indices]
        bad = [i for i in indices if not 0 <= i < len(self)]
        if bad or not indices:
            raise ValueError(f"subset indices must be 0..{len(self) - 1} (at least one); got {bad or 'none'}")
        out = object.__new__(RefIndex)
        out.__dict__.update(self.__dict__)
        out.candidates = [self.candidates[i] for i in indices]
        out.names = [self.names[i] for i in indices]
        out.descriptors = [self.descriptors[i] for i in indices]
        out.computed = out.cache_hits = 0
        return out

    def __len__(self) -> int:
        return len(self.candidates)

    def _describe(self, candidate, name: str) -> torch.Tensor:
        if not isinstance(candidate, (str, os.PathLike)):
            self.computed += 1
            return ref_descriptor(self.model, candidate)
        path = Path(candidate)
        if not path.is_file():
            raise FileNotFoundError(f"candidate Ref {path} does not exist or is not a file")
        if self.cache_dir is None:
            self.computed += 1
            return ref_descriptor(self.model, _read_candidate(path))
        digest = sha256(path)
        where = self.cache_dir / self.identity[:16] / f"{digest}.safetensors"
        desc = _load_cached(where)
        if desc is not None:
            self.cache_hits += 1
            return desc
        desc = ref_descriptor(self.model, _read_candidate(path))
        self.computed += 1
        try:
            _save_cached(where, desc, {"sha256": digest, "model": self.identity, "name": path.name})
        except OSError as e:                # a read-only or full cache: go on without it
            import warnings

            from ._fs import describe_os_error
            from .checks import FRFSRWarning
            warnings.warn(f"the descriptor cache {self.cache_dir} cannot be written ({describe_os_error(e)}); "
                          "going on without it", FRFSRWarning, stacklevel=3)
            self.cache_dir = None
        return desc

    def image(self, index: int) -> torch.Tensor:
        """Candidate ``index`` as a (1, 3, H, W) float tensor (files are read again)."""
        c = self.candidates[index]
        return _read_candidate(Path(c)) if isinstance(c, (str, os.PathLike)) else _check_image(c, self.names[index])

    def rank(self, lr) -> list[tuple[int, float]]:
        """Every candidate as ``(index, score)``, best first (descriptor scores only). ``lr``:
        a tensor (3, h, w) / (1, 3, h, w), a PIL image or a numpy array."""
        scores = descriptor_scores(lr_descriptor(self.model, lr), self.descriptors)
        order = torch.argsort(scores, descending=True, stable=True)
        return [(int(i), float(scores[i])) for i in order]

    @torch.no_grad()
    def select(self, lr, k: int = 1, rerank: int | None = None) -> list[Selection]:
        """The ``k`` most relevant candidates for ``lr``, best first: the best ``rerank``
        (default ``max(k, 3)``; 0: none) by descriptor score, matched against the LR and
        ordered by relevance + score; past them, the descriptor order. ``k`` larger than
        the candidates gives them all."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a whole number >= 1 (how many Refs per LR); got {k!r}")
        rerank = max(k, 3) if rerank is None else rerank
        if isinstance(rerank, bool) or not isinstance(rerank, int) or rerank < 0:
            raise ValueError(f"rerank must be a whole number >= 0 (candidates matched by the model); got {rerank!r}")
        lr = _check_image(lr, "lr")
        ranked = self.rank(lr)
        head = ranked[:rerank]
        lr_m = lr.to(self.model.device, self.model.dtype)
        rescored = []
        for i, score in head:
            ref = self.image(i).to(self.model.device, self.model.dtype)
            relevance = float(self.model.match(lr_m, ref).relevance[0])
            rescored.append(Selection(self.names[i], i, score, relevance))
        rescored.sort(key=lambda s: -(s.relevance + s.score))
        rest = [Selection(self.names[i], i, score) for i, score in ranked[len(head):]]
        return (rescored + rest)[:k]


def select_references(model, lr: torch.Tensor, candidates, k: int = 1, rerank: int | None = None, **index_kwargs
                      ) -> tuple[list[torch.Tensor], list[Selection]]:
    """For one LR: the ``k`` selected Refs as (1, 3, H, W) tensors, and their
    :class:`Selection` records. ``candidates``: a :class:`RefIndex` (built once for many
    LRs), a folder, or files / tensors (``index_kwargs`` go to :class:`RefIndex`)."""
    if isinstance(candidates, RefIndex):
        index = candidates
    elif isinstance(candidates, (str, os.PathLike)) and Path(candidates).is_dir():
        index = RefIndex.from_dir(model, candidates, **index_kwargs)
    else:
        index = RefIndex(model, candidates, **index_kwargs)
    chosen = index.select(lr, k, rerank)
    return [index.image(s.index) for s in chosen], chosen


class RefChooser:
    """``refs(input_path)`` for :func:`frfsr.batch.upscale_files`: the fixed Refs ``extra``
    and the ``k`` candidates of ``index`` most relevant to that input (read from its file;
    ``rerank`` as in :meth:`RefIndex.select`). Candidates that are files are returned as
    their paths, so consecutive inputs that choose the same Refs share one encoding. With
    ``outputs`` (input path -> output path) the selection is written beside each output
    (:func:`sidecar_path`) before the output itself."""

    def __init__(self, index: RefIndex, k: int, rerank: int | None = None, *, extra=(), outputs=None):
        self.index, self.k, self.rerank, self.extra = index, k, rerank, list(extra)
        self.outputs = {Path(a): Path(b) for a, b in (outputs or {}).items()}

    def __call__(self, src) -> list:
        from .image_files import read_image
        from .image_io import to_model_input
        lr = to_model_input(read_image(src, "LR"), "LR")[0]
        chosen = self.index.select(lr, self.k, self.rerank)
        if Path(src) in self.outputs:
            write_selection_json(sidecar_path(self.outputs[Path(src)]), chosen, lr=str(src),
                                 fixed_refs=[str(r) for r in self.extra])
        return [*self.extra, *(self.index.candidates[s.index] for s in chosen)]


def sidecar_path(output) -> Path:
    """The sidecar beside an output image: ``sr.png`` -> ``sr.png.refs.json``."""
    p = Path(output)
    return p.with_name(p.name + ".refs.json")


def write_selection_json(path, selections, **extra) -> Path:
    """Write the selected Refs as JSON to ``path``, atomically: ``{"refs": [{"rank", "name",
    "index", "score", "relevance"}, ...], **extra}`` (``extra``: e.g. ``lr=``, ``model=``).
    Returns the path."""
    p = Path(path)
    refs = [{"rank": r, **asdict(s)} for r, s in enumerate(selections, 1)]
    text = json.dumps({"refs": refs, **{k: (str(v) if isinstance(v, Path) else v) for k, v in extra.items()}},
                      indent=1)
    with atomic_file(p) as tmp:
        tmp.write_text(text + "\n")
    return p
