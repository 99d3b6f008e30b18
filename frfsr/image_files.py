"""Image files for the command line: read every bit depth users' files have, check where a
result goes before any computation, and write it atomically.

Pillow reads 8-bit images, 16-bit grayscale (mode I;16) and float TIFFs (mode F), but
reads 16-bit colour PNGs as 8-bit; those (RGB, RGBA and gray + alpha at 16 bits) are
read and written with pypng as numpy uint16 arrays, so 16-bit colour in gives 16-bit
colour out. An image with an EXIF orientation (camera JPEGs) is read upright, turned as the
tag says. A result is written beside its final name and renamed into place, so an
interrupted run never leaves a partial file under that name.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from ._fs import WriteError, atomic_file
from .image_io import upright

_EXTERNAL_READERS = {"EPS"}      # formats Pillow reads only through another program (Ghostscript)


def _image_suffixes() -> tuple[str, ...]:
    """The suffixes (lower case) of the image formats this Pillow both reads and writes itself:
    its registered extensions, less the stub formats (which need a handler) and
    :data:`_EXTERNAL_READERS`."""
    Image.init()

    def readable(fmt: str) -> bool:
        factory = Image.OPEN.get(fmt, (None,))[0]
        return (factory is not None and fmt in Image.SAVE and fmt not in _EXTERNAL_READERS
                and not (isinstance(factory, type) and issubclass(factory, ImageFile.StubImageFile)))
    return tuple(sorted(ext for ext, fmt in Image.registered_extensions().items() if readable(fmt)))


# the image files taken as inputs where a folder or a glob is given (frfsr.batch, frfsr.retrieval)
IMAGE_SUFFIXES = _image_suffixes()

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_16BIT_COLOUR = {2: 3, 4: 2, 6: 4}        # PNG colour type -> channels (RGB, gray + alpha, RGBA)


class ImageFileError(ValueError):
    """An image file that cannot be read, or a path a result cannot be written to."""


def _png_header(path: Path) -> tuple[int, int] | None:
    """(bit depth, colour type) of a PNG file, None for other files."""
    with open(path, "rb") as f:
        head = f.read(26)
    if len(head) < 26 or not head.startswith(_PNG_SIGNATURE):
        return None
    return head[24], head[25]


def read_image(path, what: str = "image"):
    """A PIL image, or a numpy uint16 (H, W, C) array for a 16-bit colour PNG."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what} image not found: {p}" if not p.is_dir() else f"{what} image {p} is a folder")
    try:
        header = _png_header(p)
        if header is not None and header[0] == 16 and header[1] in _PNG_16BIT_COLOUR:
            import png
            width, height, rows, info = png.Reader(filename=str(p)).asDirect()
            channels = info["planes"]
            return np.vstack([np.asarray(r, dtype=np.uint16) for r in rows]).reshape(height, width, channels)
        img = Image.open(p)
        img.load()
        return upright(img)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise ImageFileError(f"cannot read the {what} image {p}: {e}") from None
    except Exception as e:            # pypng's FormatError and the like
        raise ImageFileError(f"cannot read the {what} image {p}: {type(e).__name__}: {e}") from None


def _format_of(path: Path) -> str:
    ext = path.suffix.lower()
    fmt = Image.registered_extensions().get(ext)
    if fmt is None or fmt not in Image.SAVE:
        known = ", ".join(sorted({".png", ".jpg", ".tif", ".webp", ".bmp"}))
        raise ImageFileError(f"cannot write {path}: {'no extension' if not ext else repr(ext)} is not an image "
                             f"format this installation writes; use an extension such as {known}")
    return fmt


def _description(image) -> str:
    if isinstance(image, np.ndarray):
        return f"{image.dtype.name} image with {1 if image.ndim == 2 else image.shape[-1]} channel(s)"
    return f"PIL mode {image.mode} image"


def check_output(path, like) -> None:
    """Raise :class:`ImageFileError` unless an image like ``like`` (what :func:`read_image`
    gave, or what a result of it will be) can be written to ``path``: the path is not a
    folder, its folder exists or can be made, and the format holds that kind of image."""
    p = Path(path)
    if len(os.fsencode(p.name)) > _name_max(p):
        raise ImageFileError(f"cannot write {p}: the name is {len(os.fsencode(p.name))} bytes long, more than the "
                             f"{_name_max(p)} the file system allows; give a shorter name")
    if p.is_dir():
        raise ImageFileError(f"cannot write {p}: it is a folder; give a file name such as {p / 'sr.png'}")
    fmt = _format_of(p)
    parent = p.parent if str(p.parent) else Path(".")
    existing = next(a for a in (parent, *parent.parents) if a.exists()) if not parent.exists() else parent
    if not existing.is_dir():
        raise ImageFileError(f"cannot write {p}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ImageFileError(f"cannot write {p}: the folder {existing} is not writable")
    if isinstance(like, np.ndarray):
        if fmt != "PNG":
            raise ImageFileError(f"cannot write {p}: 16-bit colour is written as PNG; use a .png name "
                                 f"(or convert the input to 8 bits)")
        return
    probe = _writable_mode(like.mode, fmt)
    try:
        Image.new(probe, (1, 1)).save(io.BytesIO(), format=fmt)
    except (OSError, ValueError, KeyError) as e:
        raise ImageFileError(f"cannot write {p}: the {fmt} format does not hold a {_description(like)} ({e}); "
                             f"use {'.tif' if like.mode in ('F', 'I;16', 'I') else '.png'}") from None


def _name_max(p: Path) -> int:
    """The longest file name (bytes) the file system of ``p``'s nearest existing folder takes."""
    folder = next((a for a in (p.parent, *p.parent.parents) if a.is_dir()), Path("."))
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        return 255


def _writable_mode(mode: str, fmt: str) -> str:
    """The mode an image is written in: JPEG has no alpha (dropped)."""
    if fmt == "JPEG" and mode in ("RGBA", "LA"):
        return mode[:-1]
    return mode


def write_image(image, path) -> None:
    """Write a PIL image or a uint16 (H, W[, C]) array to ``path`` atomically; an OS error
    (disk full, read-only folder, ...) raises :class:`frfsr._fs.WriteError` naming the file,
    and a file already at ``path`` is left as it was."""
    p = Path(path)
    check_output(p, image)
    fmt = _format_of(p)
    try:
        with atomic_file(p) as tmp, open(tmp, "wb") as f:
            if isinstance(image, np.ndarray):
                _write_png16(image, f)
            else:
                mode = _writable_mode(image.mode, fmt)
                (image.convert(mode) if mode != image.mode else image).save(f, format=fmt)
    except OSError as e:
        if isinstance(e, WriteError):
            raise
        kept = " (the file already there is unchanged)" if p.exists() else ""
        raise WriteError(f"cannot write {p}: {e.strerror or e}{kept}") from None


def _write_png16(a: np.ndarray, f) -> None:
    import png
    a = a if a.ndim == 3 else a[:, :, None]
    h, w, c = a.shape
    png.Writer(w, h, greyscale=c in (1, 2), alpha=c in (2, 4), bitdepth=16).write(
        f, a.astype(np.uint16).reshape(h, w * c))


def to_writable(image):
    """A pipeline output (PIL image, numpy array) as something :func:`write_image` takes:
    float or 8-bit arrays become 8-bit PIL images (maps such as the match confidence)."""
    if not isinstance(image, np.ndarray) or image.dtype == np.uint16:
        return image
    a = image if image.dtype == np.uint8 else (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
    return Image.fromarray(a[..., 0] if a.ndim == 3 and a.shape[-1] == 1 else a)
