"""Ref/LR training pairs made from single photographs ("two views of one scene").

Real Ref-based SR pairs an LR image with a Ref photo of the same scene taken from elsewhere,
at another zoom, in other light. :class:`ViewPairDataset` imitates that from one photo:

* ``hr``: a random ``patch`` x ``patch`` crop of the photo (flat crops are redrawn a few
  times); both views then get the same random flip / 90-degree rotation;
* ``ref``: another view of the same scene, a ``ref_patch`` x ``ref_patch`` image resampled
  from the photo by one affine warp (bilinear ``grid_sample``): centred on the HR centre
  plus a random offset (up to ``max_offset * patch`` per axis), at a random zoom in
  ``scale_range`` (Ref pixels per photo pixel) and rotated by up to ``max_rotation``
  degrees, and, when ``max_perspective > 0``, seen at a slant: a random perspective warp that
  moves each Ref corner by up to ``max_perspective * ref_patch`` per axis; with ``antialias``
  the photo is low-pass filtered before a zoomed-out view is sampled (as a camera's optics
  would); then colour-changed (:func:`frfsr_train.data.color_jitter`, brightness / contrast /
  saturation), quantised to 8 bits, and with probability ``p_shuffle`` cut into n x n
  blocks that are shuffled (:func:`frfsr_train.data.shuffle_blocks`, n drawn from
  ``shuffle_choices``);
* with probability ``p_unrelated`` the Ref is a view of a *different* photo instead
  (``related=False``), so that a model learns to ignore irrelevant Refs;
* ``lr``: ``bicubic_downsample(hr)`` (PIL bicubic on the 8-bit crop, the CUFED protocol).

Because the Ref is made by a known warp, every item also carries the ground-truth
correspondence: ``ref_coords`` (2, P, P), for every HR pixel its (x, y) position in the Ref
(pixel centres at integer coordinates, block shuffling included), NaN where it falls outside
the Ref or the Ref is unrelated, and ``ref_valid`` (1, P, P), the mask of finite entries.
With a perspective warp the map from HR to Ref pixels is a homography (``ref_homography``);
``ref_coords`` follow it exactly. This is what the contrastive texture-encoder training
(:mod:`frfsr_train.training.contrastive`) learns from.

Photos: :mod:`frfsr_train.data.photos` holds the table of photo sources and their training /
held-out splits. :func:`load_skimage_photos` reads the photographs bundled with scikit-image
(``skimage.data``, no download); :data:`TRAIN_PHOTOS` are for training,
:data:`HELDOUT_PHOTOS` are never trained on and feed :func:`heldout_pairs`, a fixed
evaluation set. :class:`ViewPairDataset` also takes photo names of any source
(``wallpapers:Path``, ``matplotlib:grace_hopper``) or image paths.
"""
from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass, field, fields

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .augment import SHUFFLE_LEVELS, color_jitter, flip_rot, sample_flip_rot, shuffle_blocks
from .degrade import bicubic_downsample
# the photo table lives in .photos; these names stay importable from here
from .photos import HELDOUT_PHOTOS, TRAIN_PHOTOS, load_photos, load_skimage_photos

__all__ = ["TRAIN_PHOTOS", "HELDOUT_PHOTOS", "DEFAULT_VIEW_JITTER", "HELDOUT_KINDS", "ViewOptions",
           "load_skimage_photos", "ViewPairDataset", "heldout_pairs"]

#: Colour change of the Ref view (:func:`frfsr_train.data.color_jitter` strengths).
DEFAULT_VIEW_JITTER = {"brightness": 0.25, "contrast": 0.25, "saturation": 0.25}

#: Kinds of :func:`heldout_pairs`: a relevant Ref, an unrelated Ref, and the relevant Ref
#: block-shuffled 2x2 / 4x4 / 8x8 (:data:`frfsr_train.data.SHUFFLE_LEVELS`).
HELDOUT_KINDS = ("relevant", "unrelated", "easy", "medium", "hard")


@dataclass
class ViewOptions:
    """How a Ref view is made (see :class:`ViewPairDataset`), with the defaults of every user:
    the dataset's arguments, the ``data.views`` section of a restoration-net config and the
    ``data`` section of an encoder config (which changes three of them) start from these."""

    scale_range: list = field(default_factory=lambda: [0.8, 1.25])   # Ref zoom (Ref pixels per photo pixel)
    max_rotation: float = 10.0          # degrees
    max_offset: float = 0.25            # fraction of the patch, per axis
    max_perspective: float = 0.0        # corner moves of a perspective warp, fraction of ref_patch (0 = none)
    antialias: bool = False             # low-pass the photo before sampling zoomed-out (zoom < 1) views
    color: bool = True                  # brightness / contrast / saturation change of the Ref
    p_shuffle: float = 0.0              # probability of a block-shuffled Ref
    shuffle_choices: list = field(default_factory=lambda: [2, 4, 8])  # its blocks per side, drawn uniformly
    p_unrelated: float = 0.2            # probability of a Ref cut from another photo
    p_aligned: float = 0.0              # probability of a Ref on the photo's own pixel grid (zoom 1, no turn)

    def view_arguments(self) -> dict:
        """These options as :class:`ViewPairDataset` keyword arguments (also of a config
        section that extends this class)."""
        return {f.name: getattr(self, f.name) for f in fields(ViewOptions)}


_VIEW = ViewOptions()


def _rotation(theta: float) -> np.ndarray:
    c, s = math.cos(theta), math.sin(theta)
    return np.array([[c, -s], [s, c]])


def _flip_matrix(size: int, hflip: bool, vflip: bool, rot90: int) -> np.ndarray:
    """3x3 matrix sending pixel (x, y, 1) of a ``size`` x ``size`` image to its place after
    :func:`frfsr_train.data.flip_rot` (h-flip, then v-flip, then ``rot90`` quarter turns CCW)."""
    n = size - 1
    m = np.eye(3)
    if hflip:
        m = np.array([[-1.0, 0, n], [0, 1, 0], [0, 0, 1]]) @ m
    if vflip:
        m = np.array([[1.0, 0, 0], [0, -1, n], [0, 0, 1]]) @ m
    for _ in range(rot90 % 4):                                # torch.rot90: new (x, y) = (y, n - x)
        m = np.array([[0.0, 1, 0], [-1, 0, n], [0, 0, 1]]) @ m
    return m


def _shuffle_with_coords(ref: torch.Tensor, coords: torch.Tensor, n: int, generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Block-shuffle ``ref`` (3, R, R) and move ``coords`` (2, P, P; Ref (x, y), NaN = none)
    with it: the same blocks are permuted in a map of Ref pixel positions, whose inverse
    sends each old Ref pixel to its new place (sub-pixel parts are kept)."""
    _, rh, rw = ref.shape
    gy, gx = torch.meshgrid(torch.arange(rh, dtype=torch.float32), torch.arange(rw, dtype=torch.float32), indexing="ij")
    mixed = shuffle_blocks(torch.cat([ref, gx[None], gy[None]]), n, generator=generator)
    ref, src = mixed[:3], mixed[3:].round().long()                  # src[:, y, x]: old position of new pixel (x, y)
    new_pos = torch.empty(2, rh, rw)
    new_pos[0, src[1], src[0]] = gx
    new_pos[1, src[1], src[0]] = gy
    valid = torch.isfinite(coords).all(0)
    xi = coords[0].nan_to_num(0).round().clamp(0, rw - 1).long()
    yi = coords[1].nan_to_num(0).round().clamp(0, rh - 1).long()
    moved = new_pos[:, yi, xi] + coords - torch.stack([xi, yi]).float()
    return ref, torch.where(valid[None], moved, torch.full_like(coords, float("nan")))


def _corner_homography(size: int, moves: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Perspective warp of a ``size`` x ``size`` view whose corners (TL, TR, BR, BL pixel
    centres) move by ``moves`` (4, 2): the 3x3 homography sending each view pixel to its
    unwarped position (:func:`kornia.geometry.transform.get_perspective_transform`), and the
    moved corners (4, 2)."""
    from kornia.geometry.transform import get_perspective_transform
    n = size - 1
    square = torch.tensor([[0.0, 0.0], [n, 0.0], [n, n], [0.0, n]], dtype=torch.float64)
    moved = square + moves.to(torch.float64)
    H = get_perspective_transform(square[None], moved[None])[0].numpy().astype(np.float64)
    return H / H[2, 2], moved.numpy()


def _apply_homography(m: np.ndarray, gx: torch.Tensor, gy: torch.Tensor) -> torch.Tensor:
    """(2, ...) image of the points (gx, gy) under the 3x3 homography ``m``."""
    den = m[2, 0] * gx + m[2, 1] * gy + m[2, 2]
    return torch.stack([(m[0, 0] * gx + m[0, 1] * gy + m[0, 2]) / den, (m[1, 0] * gx + m[1, 1] * gy + m[1, 2]) / den])


def _linearise(m: np.ndarray, c: float) -> np.ndarray:
    """The affine map (2, 3) that agrees with homography ``m`` to first order at (c, c)."""
    p = np.array([c, c, 1.0])
    w = m[2] @ p
    f = (m[:2] @ p) / w
    jac = (m[:2, :2] - np.outer(f, m[2, :2])) / w
    return np.concatenate([jac, (f - jac @ p[:2])[:, None]], 1)


def _antialias_sigma(zoom: float) -> float:
    """Gaussian sigma (photo pixels) of the low-pass filter before sampling at ``zoom`` < 1."""
    return 0.5 * math.sqrt(1.0 / zoom ** 2 - 1.0)


def _lowpass(box: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of a (3, h, w) float image (:func:`kornia.filters.gaussian_blur2d`)."""
    from kornia.filters import gaussian_blur2d
    k = 2 * int(math.ceil(3 * sigma)) + 1
    if sigma <= 0 or k < 3 or min(box.shape[-2:]) <= k // 2:
        return box
    return gaussian_blur2d(box[None], (k, k), (sigma, sigma), border_type="reflect")[0]


class ViewPairDataset(Dataset):
    """Ref/LR pairs made from photos: see the module docstring for what an item holds.

    Args:
        photos: ``name -> (H, W, 3) uint8`` array (e.g. from :func:`load_skimage_photos`), or
            a list of photo names / image paths (:func:`frfsr_train.data.photos.load_photos`);
            every photo must be at least ``patch`` pixels on each side; two or more photos are
            needed when ``p_unrelated > 0``. Item ``i`` is cut from photo ``i % len(photos)``.
        patch: HR size (a multiple of 4); ``ref_patch``: Ref size (default ``patch``).
        length: number of items (the photos are sampled afresh for every index).
        scale_range: Ref zoom range, Ref pixels per photo pixel (drawn log-uniformly).
        max_rotation: Ref rotation bound in degrees; ``max_offset``: Ref centre offset bound,
            as a fraction of ``patch``, per axis.
        max_perspective: perspective warp of the Ref, how far each of its corners moves (per
            axis, uniformly drawn) as a fraction of ``ref_patch``, in [0, 0.25]; 0: no warp.
        antialias: blur the photo with a Gaussian before sampling a zoomed-out Ref (zoom < 1;
            sigma ``0.5 * sqrt(1 / zoom^2 - 1)`` photo pixels), so that it is not aliased.
        color: colour-change the Ref (``True`` for :data:`DEFAULT_VIEW_JITTER`, a dict of
            :func:`color_jitter` strengths, or ``False``).
        p_shuffle, shuffle_choices: probability of block-shuffling the Ref and the numbers of
            blocks per side to draw from.
        p_unrelated: probability of a Ref cut from another photo.
        p_aligned: probability that a view is taken on the photo's own pixel grid: zoom 1, no
            rotation or perspective, a whole-pixel offset, so that it carries the photo's
            pixels unresampled (as a second frame of a burst or a video would; every other
            view is resampled, which softens it). Its colour change and shuffle still apply.
        flip: random flips / 90-degree rotations of both views (the same draw: as if the
            photo had been flipped).
        min_std: redraw HR crops (up to 10 times) whose standard deviation is below this.
        seed: ``None`` uses the global torch RNG; an int makes every item a fixed function of
            ``(seed, index)``.

    The view arguments' defaults are those of :class:`ViewOptions`.

    Item keys: ``hr`` (3, P, P), ``lr`` (3, P/4, P/4), ``ref`` (3, R, R), float32 in [0, 1];
    ``related`` (bool); ``ref_coords`` (2, P, P) float32, (x, y) in Ref pixels or NaN;
    ``ref_valid`` (1, P, P) bool; ``ref_homography`` (3, 3) float32, HR pixel (x, y, 1) -> Ref
    pixel of the *unshuffled* Ref in homogeneous coordinates (divide by the third), with the
    last row (0, 0, 1) when there is no perspective warp; ``ref_affine`` (2, 3) float32, its
    first two rows without a perspective warp (exact), its linearisation at the HR centre
    with one (NaN when unrelated); ``shuffle`` (int, 1 = none);
    ``photo`` and ``ref_photo`` (names).
    """

    def __init__(self, photos: dict[str, np.ndarray], patch: int = 96, ref_patch: int | None = None,
                 length: int = 1000, scale_range=tuple(_VIEW.scale_range), max_rotation: float = _VIEW.max_rotation,
                 max_offset: float = _VIEW.max_offset, color=_VIEW.color, p_shuffle: float = _VIEW.p_shuffle,
                 shuffle_choices=tuple(_VIEW.shuffle_choices), p_unrelated: float = _VIEW.p_unrelated,
                 flip: bool = True, min_std: float = 0.04, seed: int | None = None,
                 max_perspective: float = _VIEW.max_perspective, antialias: bool = _VIEW.antialias,
                 p_aligned: float = _VIEW.p_aligned):
        if not photos:
            raise ValueError("ViewPairDataset needs at least one photo")
        if not isinstance(photos, dict):            # names of any photo source, or image paths
            photos = load_photos(photos)
        if isinstance(patch, bool) or not isinstance(patch, int) or patch < 16 or patch % 4:
            raise ValueError(f"patch must be a multiple of 4 and >= 16; got {patch!r}")
        ref_patch = patch if ref_patch is None else ref_patch
        if isinstance(ref_patch, bool) or not isinstance(ref_patch, int) or ref_patch < 16 or ref_patch % 4:
            raise ValueError(f"ref_patch must be a multiple of 4 and >= 16; got {ref_patch!r}")
        lo, hi = (float(v) for v in scale_range)
        if not 0 < lo <= hi:
            raise ValueError(f"scale_range must be (lo, hi) with 0 < lo <= hi; got {scale_range!r}")
        if not 0 <= float(max_perspective) <= 0.25:
            raise ValueError(f"max_perspective must be in [0, 0.25] (a fraction of ref_patch); got {max_perspective!r}")
        if not 0 <= float(max_rotation) <= 180:
            raise ValueError(f"max_rotation must be in [0, 180] degrees; got {max_rotation!r}")
        if not all(0 <= float(q) <= 1 for q in (p_unrelated, p_shuffle, p_aligned)):
            raise ValueError("p_unrelated, p_shuffle and p_aligned must be probabilities in [0, 1]; "
                             f"got {p_unrelated!r}, {p_shuffle!r}, {p_aligned!r}")
        if p_unrelated > 0 and len(photos) < 2:
            raise ValueError("p_unrelated > 0 needs at least two photos")
        shuffle_choices = tuple(SHUFFLE_LEVELS.get(n, n) for n in shuffle_choices)
        if not shuffle_choices or any(not isinstance(n, int) or n < 1 for n in shuffle_choices):
            raise ValueError(f"shuffle_choices must be positive ints or level names; got {shuffle_choices!r}")
        if color is True:
            color = dict(DEFAULT_VIEW_JITTER)
        self.color = dict(color) if color else None
        self.names = sorted(photos)
        self.photos = []
        for name in self.names:
            arr = np.asarray(photos[name])
            if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
                raise ValueError(f"photo {name!r} must be an (H, W, 3) uint8 array; got {arr.shape} {arr.dtype}")
            if min(arr.shape[:2]) < patch:
                raise ValueError(f"photo {name!r} is {arr.shape[0]}x{arr.shape[1]}, smaller than patch={patch}")
            self.photos.append(torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous())
        self.patch, self.ref_patch, self.length = patch, ref_patch, int(length)
        self.log_scale = (math.log(lo), math.log(hi))
        self.max_rotation, self.max_offset = float(max_rotation), float(max_offset)
        self.p_shuffle, self.shuffle_choices = float(p_shuffle), shuffle_choices
        self.p_unrelated, self.flip, self.min_std, self.seed = float(p_unrelated), bool(flip), float(min_std), seed
        self.max_perspective, self.antialias = float(max_perspective), bool(antialias)
        self.p_aligned = float(p_aligned)
        if self.max_perspective > 0 or self.antialias:
            if importlib.util.find_spec("kornia") is None:     # a training extra, not a core dependency
                raise ImportError("max_perspective > 0 and antialias need kornia (pip install 'frfsr[train]')")

    def __len__(self) -> int:
        return self.length

    # ------------------------------------------------------------------ pieces
    def _generator(self, index: int) -> torch.Generator | None:
        if self.seed is None:
            return None
        # kept as it is, not frfsr_train.seeds.mix_seed: these seeds make heldout_pairs, the held-out
        # pairs of the figures recorded in BENCHMARKS.md; another formula would be another test set
        return torch.Generator().manual_seed((int(self.seed) * 1_000_003 + index * 7919 + 17) % (2 ** 63))

    @staticmethod
    def _uniform(g, lo: float = 0.0, hi: float = 1.0) -> float:
        return lo + (hi - lo) * float(torch.rand((), generator=g))

    def _crop_hr(self, img: torch.Tensor, g) -> tuple[torch.Tensor, int, int]:
        p = self.patch
        h, w = img.shape[-2:]
        for _ in range(10):
            y0 = int(torch.randint(0, h - p + 1, (), generator=g))
            x0 = int(torch.randint(0, w - p + 1, (), generator=g))
            hr = img[:, y0:y0 + p, x0:x0 + p]
            if hr.float().div(255).std() >= self.min_std:
                break
        return hr, y0, x0

    def _view(self, img: torch.Tensor, center: tuple[float, float], g):
        """Resample a Ref view of ``img`` (3, H, W uint8) around photo point ``center`` (x, y).
        Returns the float view, ``(A, t)`` and ``H``: photo point = A @ H(ref pixel) + t, where
        ``H`` (3x3, projective) is the perspective warp, or None without one (identity)."""
        # drawn only when asked for, so that views without it keep their seeded draws
        aligned = self.p_aligned > 0 and self._uniform(g) < self.p_aligned
        zoom = math.exp(self._uniform(g, *self.log_scale))
        theta = math.radians(self._uniform(g, -self.max_rotation, self.max_rotation))
        if aligned:
            zoom, theta = 1.0, 0.0
        r = self.ref_patch
        A = _rotation(theta) / zoom
        half = (r - 1) / 2
        H = None
        if self.max_perspective > 0 and not aligned:
            moves = (torch.rand(4, 2, generator=g, dtype=torch.float64) * 2 - 1) * (self.max_perspective * r)
            H, corners = _corner_homography(r, moves)
            ext = np.abs((corners - half) @ A.T).max(0)    # the warped corners bound the footprint
        else:
            ext = np.abs(A).sum(1) * half                    # half extent of the view's footprint (x, y)
        h, w = img.shape[-2:]
        c = np.array(center, dtype=np.float64)
        for i, size in enumerate((w, h)):                    # keep the footprint inside the photo if it fits
            c[i] = (size - 1) / 2 if 2 * ext[i] > size - 1 else float(np.clip(c[i], ext[i], size - 1 - ext[i]))
        t = c - A @ np.array([half, half])
        if aligned:                                          # Ref pixels on photo pixels
            t = np.clip(np.round(t), 0, np.array([w, h]) - r) if min(h, w) >= r else np.round(t)
        # crop the footprint's bounding box, then sample it (no float copy of the whole photo)
        x0, x1 = max(0, int(math.floor(c[0] - ext[0])) - 2), min(w, int(math.ceil(c[0] + ext[0])) + 3)
        y0, y1 = max(0, int(math.floor(c[1] - ext[1])) - 2), min(h, int(math.ceil(c[1] + ext[1])) + 3)
        if self.antialias and zoom < 1:                      # pad the box for the filter's reach
            reach = int(math.ceil(3 * _antialias_sigma(zoom))) + 1
            x0, x1, y0, y1 = max(0, x0 - reach), min(w, x1 + reach), max(0, y0 - reach), min(h, y1 + reach)
        box = img[:, y0:y1, x0:x1].float().div(255)
        if self.antialias and zoom < 1:
            box = _lowpass(box, _antialias_sigma(zoom))
        gy, gx = torch.meshgrid(torch.arange(r, dtype=torch.float64), torch.arange(r, dtype=torch.float64), indexing="ij")
        if H is not None:                                    # ref pixel -> unwarped position, then the affine
            den = H[2, 0] * gx + H[2, 1] * gy + H[2, 2]
            gx, gy = (H[0, 0] * gx + H[0, 1] * gy + H[0, 2]) / den, (H[1, 0] * gx + H[1, 1] * gy + H[1, 2]) / den
        px = A[0, 0] * gx + A[0, 1] * gy + t[0] - x0
        py = A[1, 0] * gx + A[1, 1] * gy + t[1] - y0
        bw, bh = x1 - x0, y1 - y0
        grid = torch.stack([2 * px / max(bw - 1, 1) - 1, 2 * py / max(bh - 1, 1) - 1], -1).float()
        view = F.grid_sample(box[None], grid[None], mode="bilinear", padding_mode="reflection", align_corners=True)[0]
        return view.clamp(0, 1), A, t, H

    # ------------------------------------------------------------------ item
    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} items")
        g = self._generator(index)
        k = index % len(self.photos)
        unrelated = self._uniform(g) < self.p_unrelated
        other = (k + 1 + int(torch.randint(0, len(self.photos) - 1, (), generator=g))) % len(self.photos) \
            if len(self.photos) > 1 else k
        do_shuffle = self._uniform(g) < self.p_shuffle
        n_blocks = self.shuffle_choices[int(torch.randint(0, len(self.shuffle_choices), (), generator=g))]
        flips = sample_flip_rot(g) if self.flip else {"hflip": False, "vflip": False, "rot90": 0}
        color, p, r = self.color, self.patch, self.ref_patch

        img = self.photos[k]
        hr, y0, x0 = self._crop_hr(img, g)
        off = [self._uniform(g, -self.max_offset, self.max_offset) * p for _ in range(2)]
        center = (x0 + (p - 1) / 2 + off[0], y0 + (p - 1) / 2 + off[1])
        if unrelated:
            sh, sw = self.photos[other].shape[-2:]
            center = (self._uniform(g, 0, sw - 1), self._uniform(g, 0, sh - 1))
        ref, A, t, H = self._view(self.photos[other if unrelated else k], center, g)
        # flips / quarter turns of both views (as if the photo had been flipped), cheaper
        # on the crops than on the photo; the correspondence is conjugated accordingly
        hr, ref = flip_rot(hr, **flips), flip_rot(ref, **flips)

        if unrelated:
            affine = np.full((2, 3), np.nan)
            homography = np.full((3, 3), np.nan)
            coords = torch.full((2, p, p), float("nan"))
        else:
            inv = np.linalg.inv(A)                           # ref pixel = inv @ (photo point - t)
            hr_to_ref = np.eye(3)
            hr_to_ref[:2] = np.concatenate([inv, (inv @ (np.array([x0, y0]) - t))[:, None]], 1)
            gy, gx = torch.meshgrid(torch.arange(p, dtype=torch.float64), torch.arange(p, dtype=torch.float64), indexing="ij")
            if H is None:
                affine = (_flip_matrix(r, **flips) @ hr_to_ref @ np.linalg.inv(_flip_matrix(p, **flips)))[:2]
                homography = np.concatenate([affine, [[0.0, 0.0, 1.0]]])
                coords = torch.stack([affine[0, 0] * gx + affine[0, 1] * gy + affine[0, 2],
                                      affine[1, 0] * gx + affine[1, 1] * gy + affine[1, 2]])
            else:                                            # undo the perspective warp last
                homography = (_flip_matrix(r, **flips) @ np.linalg.inv(H) @ hr_to_ref
                              @ np.linalg.inv(_flip_matrix(p, **flips)))
                homography = homography / homography[2, 2]
                coords = _apply_homography(homography, gx, gy)
                affine = _linearise(homography, (p - 1) / 2)
            inside = ((coords >= 0) & (coords <= r - 1)).all(0)
            coords = torch.where(inside[None], coords, torch.full_like(coords, float("nan"))).float()
        if color:
            ref = color_jitter(ref, generator=g, **color)
        ref = ref.mul(255).round().div(255)                  # an 8-bit image, like a real Ref
        shuffle = 1
        if do_shuffle and n_blocks > 1:
            ref, coords = _shuffle_with_coords(ref, coords, n_blocks, g)
            shuffle = n_blocks
        return {
            "hr": hr.float().div(255),
            "lr": bicubic_downsample(hr.contiguous(), 4).float().div(255),
            "ref": ref.contiguous(),
            "related": not unrelated,
            "ref_coords": coords.contiguous(),
            "ref_valid": torch.isfinite(coords).all(0, keepdim=True),
            "ref_affine": torch.from_numpy(affine).float(),
            "ref_homography": torch.from_numpy(homography).float(),
            "shuffle": shuffle,
            "photo": self.names[k],
            "ref_photo": self.names[other if unrelated else k],
        }


def heldout_pairs(kind: str = "relevant", patch: int = 96, n: int = 12, seed: int = 0,
                  ref_patch: int | None = None, photos: dict[str, np.ndarray] | None = None) -> list[dict]:
    """A fixed evaluation set of ``n`` items (dicts as :class:`ViewPairDataset` gives) cut
    from :data:`HELDOUT_PHOTOS` only (or ``photos``), the same for the same arguments.

    ``kind``: ``'relevant'`` (a colour-changed, zoomed, rotated view of the same scene),
    ``'unrelated'`` (the Ref comes from another held-out photo), or ``'easy'`` / ``'medium'``
    / ``'hard'`` (the relevant Ref of the same item cut into 2x2 / 4x4 / 8x8 shuffled
    blocks). For one ``seed`` all kinds share their HR crops.
    """
    if kind not in HELDOUT_KINDS:
        raise ValueError(f"unknown held-out kind {kind!r}; accepted: {', '.join(HELDOUT_KINDS)}")
    photos = load_skimage_photos(HELDOUT_PHOTOS) if photos is None else photos
    shuffle = SHUFFLE_LEVELS.get(kind)
    ds = ViewPairDataset(photos, patch=patch, ref_patch=ref_patch, length=n, seed=seed,
                         p_unrelated=1.0 if kind == "unrelated" else 0.0,
                         p_shuffle=1.0 if shuffle else 0.0, shuffle_choices=(shuffle or 2,))
    return [ds[i] for i in range(n)]
