"""Datasets for reference-based super-resolution.

Every item is a dict of CHW float32 tensors in [0, 1] plus strings:

* ``hr``: the HR image, cropped to a multiple of ``scale`` (bottom / right, see
  :func:`frfsr_train.data.degrade.modcrop`);
* ``lr``: ``hr`` downsampled by ``scale`` with PIL bicubic on 8-bit data (the C2-Matching
  protocol, bit-exact); ``lr_up``: ``lr`` bicubic-upsampled back to the HR size;
* ``ref`` / ``ref_lr`` / ``ref_down_up``: the reference image (cropped to a multiple of
  ``scale``), its bicubic downsampling and that downsampling bicubic-upsampled back (the
  blurred Ref used for matching against ``lr_up``);
* ``name`` (the pair's name), ``hr_path``, ``ref_path``.

Image files may be png, jpg, jpeg, bmp, tif, tiff or webp (any letter case); they are read
with PIL and converted to RGB. Layout problems (missing or empty folders, unpaired or
ambiguous files) raise :class:`DataLayoutError`, which is both a ``ValueError`` and a
``FileNotFoundError``, with the offending names in its message.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..seeds import ITEM, mix_seed
from .augment import SHUFFLE_LEVELS, color_jitter, flip_rot, sample_flip_rot, shuffle_blocks
from .degrade import bicubic_downsample, bicubic_upsample, modcrop

__all__ = ["IMG_EXTENSIONS", "DataLayoutError", "load_image", "list_images",
           "CUFEDTrainDataset", "CUFED5Dataset", "PairFolderDataset", "DEFAULT_REF_JITTER"]

IMG_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

#: Colour jitter strengths used for the Ref when ``ref_jitter=True``.
DEFAULT_REF_JITTER = {"brightness": 0.2, "contrast": 0.2, "saturation": 0.2, "hue": 0.05}


class DataLayoutError(FileNotFoundError, ValueError):
    """A dataset folder is missing, empty, or holds unpaired / ambiguous files."""


def _names(items, limit: int = 10) -> str:
    items = sorted(str(i) for i in items)
    text = ", ".join(items[:limit])
    return text + (f" ... and {len(items) - limit} more" if len(items) > limit else "")


def load_image(path) -> torch.Tensor:
    """Read an image file as an RGB ``uint8`` tensor (3, H, W)."""
    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"))
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def list_images(folder, what: str = "image") -> dict[str, Path]:
    """Map file stem -> path for the image files directly inside ``folder``.

    Raises :class:`DataLayoutError` if the folder is missing, holds no images, or two images
    share a stem (e.g. ``a.png`` and ``a.jpg``). Hidden files are ignored.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataLayoutError(f"{what} folder not found: {folder}")
    found: dict[str, list[Path]] = {}
    for p in folder.iterdir():
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMG_EXTENSIONS:
            found.setdefault(p.stem, []).append(p)
    if not found:
        raise DataLayoutError(f"no {what} images ({', '.join(e[1:] for e in IMG_EXTENSIONS)}) in {folder}")
    dup = {k: v for k, v in found.items() if len(v) > 1}
    if dup:
        raise DataLayoutError(f"ambiguous {what} files in {folder} (same name, several extensions): "
                              + _names(p.name for v in dup.values() for p in v))
    return {k: v[0] for k, v in found.items()}


def check_readable(paths, limit: int = 5) -> None:
    """:class:`DataLayoutError` naming the image files of ``paths`` that do not open as images
    (empty, truncated header, another format, unreadable); each file's header is read, not
    its pixels."""
    bad = []
    for p in paths:
        try:
            with Image.open(p) as im:
                im.verify()
        except Exception as e:            # PIL raises many kinds for a damaged file
            bad.append(f"{p} ({type(e).__name__}: {(str(e).splitlines() or [''])[0][:120]})")
    if bad:
        raise DataLayoutError(f"{len(bad)} training image(s) cannot be read: {'; '.join(bad[:limit])}"
                              f"{' ...' if len(bad) > limit else ''}; replace or remove them")


def _check_scale(scale) -> int:
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale must be a positive int; got {scale!r}")
    return scale


def _to_float(img: torch.Tensor) -> torch.Tensor:
    return img.to(torch.float32) / 255.0 if img.dtype == torch.uint8 else img.to(torch.float32)


def _degrade(img: torch.Tensor, scale: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(bicubic LR, LR bicubic-upsampled to the input size) as float32; ``img`` is modcropped."""
    lr = bicubic_downsample(img, scale)
    return _to_float(lr), _to_float(bicubic_upsample(lr, scale))


def _pair_sample(hr: torch.Tensor, ref: torch.Tensor, scale: int) -> dict:
    """Item dict from modcropped HR / Ref tensors (uint8 or float)."""
    lr, lr_up = _degrade(hr, scale)
    ref_lr, ref_down_up = _degrade(ref, scale)
    return {"hr": _to_float(hr), "lr": lr, "lr_up": lr_up,
            "ref": _to_float(ref), "ref_lr": ref_lr, "ref_down_up": ref_down_up}


class CUFEDTrainDataset(Dataset):
    """CUFED training set: ``root/input/*`` (HR) paired with ``root/ref/*`` (Ref).

    Pairing, per input file stem ``s``: ``ref/s.*`` if it exists (same-name pairing, item name
    ``s``), otherwise, when ``s`` ends in ``_0``, ``ref/<base>_1.*`` (the C2-Matching naming
    ``000000_0.png`` / ``000000_1.png``, item name ``<base>``). Inputs without a Ref and Refs
    used by no input raise :class:`DataLayoutError` naming them.

    Per item: the HR (cropped to a multiple of ``scale``) and the Ref are randomly cropped to
    ``patch`` x ``patch`` (``patch=None`` keeps whole images; a smaller image is an error);
    with ``augment`` the HR gets random flips / 90-degree rotations and the Ref an independent
    draw (``ref_mode='same'`` reuses the HR draw, ``'none'`` leaves it); the LR is then made
    from the augmented HR. ``shuffle_level`` ('easy' | 'medium' | 'hard' | int | None)
    block-shuffles the Ref (:func:`shuffle_blocks`); ``ref_jitter`` (False, True for
    :data:`DEFAULT_REF_JITTER`, or a dict of :func:`color_jitter` strengths) colour-jitters it.
    ``ref_lr`` / ``ref_down_up`` are computed from the final Ref.

    Randomness uses the global torch RNG (seeded per worker by ``DataLoader``); with ``seed``
    every item is deterministic (``seed`` and the index seed its own generator), which repeats
    the same augmentation every epoch and is meant for tests and debugging.
    """

    def __init__(self, root, patch: int | None = 160, augment: bool = True, shuffle_level=None,
                 ref_jitter=False, scale: int = 4, ref_mode: str = "independent", seed: int | None = None):
        self.root = Path(root)
        self.scale = _check_scale(scale)
        if patch is not None and (isinstance(patch, bool) or not isinstance(patch, int)
                                  or patch <= 0 or patch % self.scale):
            raise ValueError(f"patch must be None or a positive multiple of scale={self.scale}; got {patch!r}")
        self.patch = patch
        self.augment = bool(augment)
        if shuffle_level is not None and not (shuffle_level in SHUFFLE_LEVELS
                                              or (isinstance(shuffle_level, int) and not isinstance(shuffle_level, bool)
                                                  and shuffle_level >= 1)):
            raise ValueError(f"shuffle_level must be None, {', '.join(map(repr, SHUFFLE_LEVELS))} or a positive int; "
                             f"got {shuffle_level!r}")
        self.shuffle_level = shuffle_level
        if ref_jitter is True:
            ref_jitter = dict(DEFAULT_REF_JITTER)
        elif ref_jitter is False or ref_jitter is None:
            ref_jitter = None
        elif isinstance(ref_jitter, dict):
            unknown = set(ref_jitter) - {"brightness", "contrast", "saturation", "hue"}
            if unknown:
                raise ValueError(f"ref_jitter keys must be brightness, contrast, saturation, hue; got {_names(unknown)}")
            ref_jitter = dict(ref_jitter)
        else:
            raise ValueError(f"ref_jitter must be a bool or a dict of color_jitter strengths; got {ref_jitter!r}")
        self.ref_jitter = ref_jitter
        if ref_mode not in ("independent", "same", "none"):
            raise ValueError(f"ref_mode must be 'independent', 'same' or 'none'; got {ref_mode!r}")
        self.ref_mode = ref_mode
        self.seed = seed
        self.pairs = self._pair(list_images(self.root / "input", "input"), list_images(self.root / "ref", "ref"))

    @staticmethod
    def _pair(inputs: dict[str, Path], refs: dict[str, Path]) -> list[tuple[str, Path, Path]]:
        pairs, missing, used = [], [], set()
        for stem in sorted(inputs):
            if stem in refs:
                name, ref_stem = stem, stem
            elif stem.endswith("_0") and stem[:-2] + "_1" in refs:
                name, ref_stem = stem[:-2], stem[:-2] + "_1"
            else:
                missing.append(inputs[stem].name)
                continue
            used.add(ref_stem)
            pairs.append((name, inputs[stem], refs[ref_stem]))
        if missing:
            raise DataLayoutError(f"input images without a Ref (expected ref/<same name> or ref/<base>_1.* for "
                                  f"<base>_0.*): {_names(missing)}")
        unused = [refs[s].name for s in refs if s not in used]
        if unused:
            raise DataLayoutError(f"Ref images matching no input image: {_names(unused)}")
        return pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def files(self) -> list[Path]:
        """Every image file the dataset reads (inputs and Refs)."""
        return [p for _, inp, ref in self.pairs for p in (inp, ref)]

    def _generator(self, index: int) -> torch.Generator | None:
        if self.seed is None:
            return None
        return torch.Generator().manual_seed(mix_seed(ITEM, self.seed, index))

    def _crop(self, img: torch.Tensor, path: Path, g) -> torch.Tensor:
        img = modcrop(img, self.scale)
        if self.patch is None:
            return img
        h, w = img.shape[-2:]
        p = self.patch
        if h < p or w < p:
            raise ValueError(f"{path} is {h}x{w} (after cropping to a multiple of {self.scale}), "
                             f"smaller than patch={p}")
        top = int(torch.randint(0, h - p + 1, (1,), generator=g))
        left = int(torch.randint(0, w - p + 1, (1,), generator=g))
        return img[:, top:top + p, left:left + p]

    def __getitem__(self, index: int) -> dict:
        name, hr_path, ref_path = self.pairs[index]
        g = self._generator(index)
        hr = self._crop(load_image(hr_path), hr_path, g)
        ref = self._crop(load_image(ref_path), ref_path, g)
        if self.augment:
            params = sample_flip_rot(g)
            hr = flip_rot(hr, **params)
            if self.ref_mode == "independent":
                ref = flip_rot(ref, **sample_flip_rot(g))
            elif self.ref_mode == "same":
                ref = flip_rot(ref, **params)
        if self.shuffle_level is not None:
            ref = shuffle_blocks(ref, self.shuffle_level, generator=g)
        if self.ref_jitter is not None:
            ref = color_jitter(_to_float(ref), generator=g, **self.ref_jitter)
        sample = _pair_sample(hr.contiguous(), ref.contiguous(), self.scale)
        sample.update(name=name, hr_path=str(hr_path), ref_path=str(ref_path))
        return sample


class CUFED5Dataset(Dataset):
    """CUFED5 test set: ``root/XXX_0.*`` (HR) and ``root/XXX_1.*`` ... ``root/XXX_5.*`` (Refs
    from most to least relevant), all in one folder.

    ``level`` is 1..5 (one Ref level) or ``None`` / ``'all'`` (all five). Items hold ``hr``,
    ``lr``, ``lr_up``, ``name`` (``XXX``), the lists ``refs``, ``refs_lr``, ``refs_down_up``,
    ``ref_levels`` and ``ref_paths`` (five entries, or one for a single level), and, for a
    single level, also ``ref``, ``ref_lr``, ``ref_down_up``, ``ref_level`` and ``ref_path``.
    HR and Refs are cropped to multiples of ``scale``. Images differ in size, so batch with
    ``batch_size=1``. Files not named ``<name>_<digit>``, or groups lacking the HR or a Ref,
    raise :class:`DataLayoutError`.
    """

    NUM_REFS = 5

    def __init__(self, root, level=None, scale: int = 4):
        self.root = Path(root)
        self.scale = _check_scale(scale)
        if level is None or level == "all":
            self.levels = list(range(1, self.NUM_REFS + 1))
            self.single = False
        elif isinstance(level, int) and not isinstance(level, bool) and 1 <= level <= self.NUM_REFS:
            self.levels = [level]
            self.single = True
        else:
            raise ValueError(f"level must be 1..{self.NUM_REFS}, None or 'all'; got {level!r}")
        self.level = level
        files = list_images(self.root, "CUFED5")
        pattern = re.compile(r"^(.+)_(\d+)$")
        groups: dict[str, dict[int, Path]] = {}
        bad = []
        for stem, path in files.items():
            m = pattern.match(stem)
            if not m or int(m.group(2)) > self.NUM_REFS:
                bad.append(path.name)
                continue
            groups.setdefault(m.group(1), {})[int(m.group(2))] = path
        if bad:
            raise DataLayoutError(f"CUFED5 files must be named <name>_0 (HR) ... <name>_{self.NUM_REFS} (Refs); "
                                  f"unexpected: {_names(bad)}")
        incomplete = [f"{name} (missing " + ", ".join(f"{name}_{i}" for i in range(self.NUM_REFS + 1) if i not in g) + ")"
                      for name, g in sorted(groups.items()) if len(g) != self.NUM_REFS + 1]
        if incomplete:
            raise DataLayoutError(f"incomplete CUFED5 groups in {self.root}: {_names(incomplete)}")
        self.groups = [(name, groups[name]) for name in sorted(groups)]

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, index: int) -> dict:
        name, files = self.groups[index]
        hr = modcrop(load_image(files[0]), self.scale)
        lr, lr_up = _degrade(hr, self.scale)
        sample = {"hr": _to_float(hr), "lr": lr, "lr_up": lr_up, "name": name, "hr_path": str(files[0]),
                  "refs": [], "refs_lr": [], "refs_down_up": [], "ref_levels": list(self.levels),
                  "ref_paths": [str(files[lv]) for lv in self.levels]}
        for lv in self.levels:
            ref = modcrop(load_image(files[lv]), self.scale)
            ref_lr, ref_down_up = _degrade(ref, self.scale)
            sample["refs"].append(_to_float(ref))
            sample["refs_lr"].append(ref_lr)
            sample["refs_down_up"].append(ref_down_up)
        if self.single:
            sample.update(ref=sample["refs"][0], ref_lr=sample["refs_lr"][0], ref_down_up=sample["refs_down_up"][0],
                          ref_level=self.levels[0], ref_path=sample["ref_paths"][0])
        return sample


class PairFolderDataset(Dataset):
    """A plain folder of (HR, Ref) pairs, in one of two layouts:

    * ``root/hr/NAME.ext`` with ``root/ref/NAME.ext`` (paired by file stem; extensions may
      differ), chosen when ``root/hr`` exists;
    * ``root/NAME/hr.ext`` with ``root/NAME/ref.ext`` (one sub-folder per pair).

    Items hold ``hr``, ``lr``, ``lr_up``, ``ref``, ``ref_lr``, ``ref_down_up`` (HR and Ref
    cropped to multiples of ``scale``), ``name``, ``hr_path``, ``ref_path``. Missing folders,
    unpaired files and sub-folders lacking ``hr.*`` or ``ref.*`` raise
    :class:`DataLayoutError` naming them.
    """

    def __init__(self, root, scale: int = 4):
        self.root = Path(root)
        self.scale = _check_scale(scale)
        if not self.root.is_dir():
            raise DataLayoutError(f"dataset folder not found: {self.root}")
        if (self.root / "hr").is_dir() or (self.root / "ref").is_dir():
            self.layout = "split"
            self.pairs = self._split_pairs()
        else:
            self.layout = "nested"
            self.pairs = self._nested_pairs()

    def _split_pairs(self) -> list[tuple[str, Path, Path]]:
        hrs = list_images(self.root / "hr", "hr")
        refs = list_images(self.root / "ref", "ref")
        no_ref = sorted(hrs[s].name for s in hrs if s not in refs)
        no_hr = sorted(refs[s].name for s in refs if s not in hrs)
        if no_ref or no_hr:
            parts = []
            if no_ref:
                parts.append(f"hr/ files without a ref/ counterpart: {_names(no_ref)}")
            if no_hr:
                parts.append(f"ref/ files without an hr/ counterpart: {_names(no_hr)}")
            raise DataLayoutError(f"unpaired files in {self.root}: " + "; ".join(parts))
        return [(s, hrs[s], refs[s]) for s in sorted(hrs)]

    def _nested_pairs(self) -> list[tuple[str, Path, Path]]:
        subdirs = sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not subdirs:
            raise DataLayoutError(f"{self.root} has neither hr/ and ref/ folders nor per-pair sub-folders "
                                  "NAME/hr.* + NAME/ref.*")
        pairs, problems = [], []
        for d in subdirs:
            found: dict[str, list[Path]] = {"hr": [], "ref": []}
            for p in d.iterdir():
                if p.is_file() and p.stem.lower() in found and p.suffix.lower() in IMG_EXTENSIONS:
                    found[p.stem.lower()].append(p)
            lacking = [k for k, v in found.items() if not v]
            several = [k for k, v in found.items() if len(v) > 1]
            if lacking:
                problems.append(f"{d.name} (no {' or '.join(k + '.*' for k in lacking)})")
            elif several:
                problems.append(f"{d.name} (several {' and '.join(k + '.*' for k in several)} files)")
            else:
                pairs.append((d.name, found["hr"][0], found["ref"][0]))
        if problems:
            raise DataLayoutError(f"sub-folders of {self.root} must each hold one hr.* and one ref.* image; "
                                  f"bad: {_names(problems)}")
        return pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict:
        name, hr_path, ref_path = self.pairs[index]
        hr = modcrop(load_image(hr_path), self.scale)
        ref = modcrop(load_image(ref_path), self.scale)
        sample = _pair_sample(hr, ref, self.scale)
        sample.update(name=name, hr_path=str(hr_path), ref_path=str(ref_path))
        return sample
