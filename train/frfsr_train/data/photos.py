"""Natural photo sources: which photos there are, which are for training, which are held out.

:data:`SOURCES` is the one table of them. Per source it names the training photos and the
HELD-OUT photos (never trained on: every evaluation on "held-out photos" uses only these),
where the files come from and, per file, its size and sha256 (checked when fetched):

* ``skimage``: photographs bundled with scikit-image (``skimage.data``, offline, no
  download). Loaded straight from scikit-image; :func:`fetch` also writes them to the cache
  as PNG (their sha256 is that of the decoded RGB pixels).
* ``wallpapers``: the photographs among the KDE Plasma wallpapers of Debian's
  ``plasma-workspace-wallpapers`` package (4:5.27.5-2, Debian 12; LGPL-3 / CC-BY-SA-4.0,
  authors in the package's ``metadata.json`` files), 2560x1600 JPEGs. The package's other
  wallpapers are drawings or renders and are left out. Fetched with
  ``apt-get download plasma-workspace-wallpapers`` (no root needed) or from a ``.deb`` given
  by path; the photos are read from the package's ``data.tar`` (``dpkg-deb`` where Python
  cannot decompress it).
* ``matplotlib``: the sample photo that matplotlib ships in ``mpl-data/sample_data``
  (``grace_hopper.jpg``, 512x600; the other sample files are data, logos and a clip-art
  image). Needs matplotlib only to fetch (``pip install matplotlib``), or the wheel from
  ``pip download matplotlib --no-deps``.

Photos are named ``source:name`` (``wallpapers:Path``, ``matplotlib:grace_hopper``); a bare
name is a ``skimage.data`` photo (``coffee``), and a path to an image file is that file.
Fetched files live in the cache folder :func:`cache_dir` (``$FRFSR_CACHE/photos``, else
``$XDG_CACHE_HOME/frfsr/photos``, else ``~/.cache/frfsr/photos``), never in the
repository. Fetch everything with ``python train/fetch_photos.py``; a photo whose source
has not been fetched raises :class:`PhotoNotFetched`, which names that command.
"""
from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from frfsr._fs import atomic_file, cache_root, digest

__all__ = ["PhotoFile", "PhotoSource", "SOURCES", "PhotoNotFetched", "FETCH_SCRIPT", "cache_dir",
           "photo_names", "heldout_photos", "train_photos", "split_of", "resolve", "is_fetched", "fetch",
           "fetch_all", "load_photo", "load_photos", "load_skimage_photos", "TRAIN_PHOTOS", "HELDOUT_PHOTOS"]

#: The command that fetches every source (or one, with ``--source NAME``).
FETCH_SCRIPT = "python train/fetch_photos.py"


@dataclass(frozen=True)
class PhotoFile:
    """One photo of a source: ``member`` (its path inside the package or archive), ``size``
    (bytes of that file; 0 where the photo is decoded from a library), ``sha256`` (of the
    file, or of the decoded (H, W, 3) uint8 pixels for scikit-image) and ``shape`` (H, W)."""

    member: str
    size: int
    sha256: str
    shape: tuple[int, int]


@dataclass(frozen=True)
class PhotoSource:
    """A source of photos: ``train`` and ``heldout`` name its photos (keys of ``files``);
    ``fetch_command`` is what a user runs to get it into the cache."""

    name: str
    description: str
    fetch_command: str
    train: tuple[str, ...]
    heldout: tuple[str, ...]
    files: dict[str, PhotoFile] = field(default_factory=dict)
    extension: str = ".png"

    @property
    def photos(self) -> tuple[str, ...]:
        return self.train + self.heldout


def _sk(h, w, sha):
    return PhotoFile("", 0, sha, (h, w))


_SKIMAGE_FILES = {
    "astronaut": _sk(512, 512, "a8c429c18afa7b0fd5673e598d73a21225d94c864a71bbb3885126fdecb41071"),
    "immunohistochemistry": _sk(512, 512, "c5b3ef509a92f16d4c29be8cf0300fe75d53e13a3ce650159db932caea8dcc1b"),
    "hubble_deep_field": _sk(872, 1000, "9a3ea9548188f81e63435188456e74de45a981ebeb791e265abe79a26d3b528b"),
    "retina": _sk(1411, 1411, "3670e389d0dae9f755cc1bb7e4da4c3d2cdf10eba2dc3060836d8d4b8024d860"),
    "colorwheel": _sk(370, 371, "4ce89baa8b291cfec33e2e67908a588b16eee46478ad4b664a93c7a17ea4b277"),
    "logo": _sk(500, 500, "17be4850288aa25b79790e4508165da432585627d4bd46d7992ab1d6496f43df"),
    "stereo_motorcycle": _sk(500, 741, "ca829467c1d4f427da9c4862ba43829da6ac90afe1f75735e95dba9e3fd9620b"),
    "camera": _sk(512, 512, "13e2b4aa92cb1649b4aac5a4d48b38a8ea3a18b86e8abdf5a4871abf24c9d038"),
    "brick": _sk(512, 512, "3501e216fb0968c378803347d3a13e3cc04021eaecc44b64c6528088c7ea0f64"),
    "grass": _sk(512, 512, "c7ca5c984d6b5a2787506e70a42bcac22b164b00e8e1cf9e06cf76b8110c5734"),
    "gravel": _sk(512, 512, "e73bd88250cbfd7f96f232357ecad0d2302252483457337f5cf79d2c5b82227a"),
    "coins": _sk(303, 384, "aaecc2ad43bd43e204f7ad01dc60494586ff80d42236c2db358c59b9be1f5427"),
    "moon": _sk(512, 512, "a641c47851a3252efa5514c25bb953056fae7de469736ede1363e861c70bfb10"),
    "clock": _sk(300, 400, "bd64c6ee0d85e182d35d7ba6c24b03f47d1dc9e217008a809820bad85467a334"),
    "cell": _sk(660, 550, "54f2cef870247578152537000a9198faacea769f88cc918a047624048ebaac8e"),
    "page": _sk(191, 384, "ec733fa2c40866580dddaeba150133b831d35bc25bef98e24b7b8ce2557ed37a"),
    "text": _sk(172, 448, "36c90cb1af9203254329824cd648ef884675e529f5b3fa0f8b583ccc751e7339"),
    "coffee": _sk(400, 600, "0ce2b51640b9c95f19617f03eabf40c3f0368589cc1ee1190b70966165ac184f"),
    "rocket": _sk(427, 640, "3d4435cc745752b7f9724df88c6e18817de3ce7e3d2d71c55f85f7831e68f197"),
    "chelsea": _sk(300, 451, "416b729128bfb2c3d1eb69bf9b1734a796293abc17939267b2dc94f8a5784031"),
}


def _wp(name, size, sha):
    return PhotoFile(f"usr/share/wallpapers/{name}/contents/images/2560x1600.jpg", size, sha, (1600, 2560))


_WALLPAPER_FILES = {
    "BytheWater": _wp("BytheWater", 494563, "c272434ef39f2abf1ed48a15a8910088020f3165329a5092f3940ec9464bc05f"),
    "DarkestHour": _wp("DarkestHour", 318080, "8e3703fae3a3c217b1fc2b399b706cd3720584268d071ba153e4809daa55f1ce"),
    "Grey": _wp("Grey", 234512, "88c31d8944b7e6935d1b9a296654c692f0772cb512491713eb30a972a604c0ed"),
    "Kite": _wp("Kite", 487350, "bdca288ce296a981e80659c021cf707caddc702c0c8d4247e60bd618476d47f8"),
    "OneStandsOut": _wp("OneStandsOut", 892075, "cb507baf1dafdcae362264f3aba9483ed4be5f6c9fdd770f0ec0920c6d9e80fd"),
    "summer_1am": _wp("summer_1am", 442791, "c868b50789591dd42910153c768053f1ba0a98cb36bbfc2b7a96a1045d0477f8"),
    "ColdRipple": _wp("ColdRipple", 526600, "05bef6722fc0ed81292cceb3ed026c38d17e510f3c84be7d68610c2b1a723c3f"),
    "ColorfulCups": _wp("ColorfulCups", 698472, "6e0f3a72feb5a4a9fec191b77e34874c3c69e2d93040deb3f07773e73385023d"),
    "EveningGlow": _wp("EveningGlow", 632699, "586682dcb362b9f620068f10138f87d0d3649939aef238adc5807cb951976a7a"),
    "FallenLeaf": _wp("FallenLeaf", 543137, "95603a6560c7e8d50e0e03b3f4adbe39c5258c72528e74e4ecaea1daf4e499de"),
    "Path": _wp("Path", 910087, "7477457d7f17b736259f1b021864778ad4ba802cf3214e6728181ff29126bba8"),
}

#: The Debian package of the wallpapers, the version whose files :data:`SOURCES` records,
#: and where that version's ``.deb`` lies on Debian's mirrors (for machines without apt).
WALLPAPER_PACKAGE = "plasma-workspace-wallpapers"
WALLPAPER_VERSION = "4:5.27.5-2"
WALLPAPER_DEB_URL = ("https://deb.debian.org/debian/pool/main/p/plasma-workspace-wallpapers/"
                     "plasma-workspace-wallpapers_5.27.5-2_all.deb")

SOURCES: dict[str, PhotoSource] = {
    "skimage": PhotoSource(
        "skimage",
        "photos bundled with scikit-image (skimage.data), offline",
        f"{FETCH_SCRIPT} --source skimage  (needs scikit-image: pip install scikit-image)",
        # Colour: astronaut, immunohistochemistry, hubble_deep_field, retina, colorwheel, logo
        # (RGBA -> RGB), the left view of stereo_motorcycle; grayscale (-> RGB): camera, brick,
        # grass, gravel, coins, moon, clock, cell, page, text.
        train=("astronaut", "immunohistochemistry", "hubble_deep_field", "retina", "colorwheel", "logo",
               "stereo_motorcycle", "camera", "brick", "grass", "gravel", "coins", "moon", "clock", "cell",
               "page", "text"),
        # natural colour photos with textures: a coffee cup and beans, a rocket on its launch
        # pad, a cat's fur (skimage.data.cat is the same image as chelsea: excluded too)
        heldout=("coffee", "rocket", "chelsea"),
        files=_SKIMAGE_FILES),
    "wallpapers": PhotoSource(
        "wallpapers",
        f"photographs among the KDE Plasma wallpapers (Debian package {WALLPAPER_PACKAGE} {WALLPAPER_VERSION})",
        f"{FETCH_SCRIPT} --source wallpapers  (runs `apt-get download {WALLPAPER_PACKAGE}`; without apt, "
        f"download {WALLPAPER_DEB_URL} and pass it with --deb FILE)",
        # a pier on a lake, a misty lake, black-and-white architecture, a kite in a blue sky,
        # moss from above, reeds at dusk
        train=("BytheWater", "DarkestHour", "Grey", "Kite", "OneStandsOut", "summer_1am"),
        # a foggy pier, stacked plastic cups, rowing boats under an evening sky, autumn
        # leaves, a forest path
        heldout=("ColdRipple", "ColorfulCups", "EveningGlow", "FallenLeaf", "Path"),
        files=_WALLPAPER_FILES, extension=".jpg"),
    "matplotlib": PhotoSource(
        "matplotlib",
        "the sample photo shipped with matplotlib (mpl-data/sample_data)",
        f"{FETCH_SCRIPT} --source matplotlib  (needs matplotlib: pip install matplotlib; or pass the wheel "
        "from `pip download matplotlib --no-deps` with --wheel FILE)",
        # matplotlib ships one photograph (Grace Hopper's portrait); it is held out
        train=(),
        heldout=("grace_hopper",),
        files={"grace_hopper": PhotoFile("matplotlib/mpl-data/sample_data/grace_hopper.jpg", 61306,
                                         "a8ca6d734765703b09728ab47fe59f473d93ae3967fc24c7c0288c3c7adb7130",
                                         (600, 512))},
        extension=".jpg"),
}

#: ``skimage.data`` photos for training and held out (the ``skimage`` source's lists; bare
#: names, as :func:`load_skimage_photos` and the training configs take them).
TRAIN_PHOTOS = SOURCES["skimage"].train
HELDOUT_PHOTOS = SOURCES["skimage"].heldout

_SKIMAGE_ALIASES = {"cat": "chelsea"}
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".ppm")


class PhotoNotFetched(FileNotFoundError):
    """A photo's source is not in the cache (or cannot be fetched); the message names the
    command that fetches it."""


# ---------------------------------------------------------------------- names
def cache_dir() -> Path:
    """Where fetched photos live: ``$FRFSR_CACHE/photos``, else ``$XDG_CACHE_HOME/frfsr/photos``,
    else ``~/.cache/frfsr/photos`` (one sub-folder per source)."""
    return cache_root() / "photos"


def _check_sources(sources) -> list[str]:
    names = list(SOURCES) if sources is None else [sources] if isinstance(sources, str) else list(sources)
    unknown = [s for s in names if s not in SOURCES]
    if unknown:
        raise ValueError(f"unknown photo source(s) {', '.join(map(repr, unknown))}; known: {', '.join(SOURCES)}")
    return names


def photo_names(split: str = "all", sources=None) -> list[str]:
    """Qualified names (``source:name``) of the ``split`` ('train', 'heldout' or 'all') photos
    of ``sources`` (default: every source), in table order."""
    if split not in ("train", "heldout", "all"):
        raise ValueError(f"split must be 'train', 'heldout' or 'all'; got {split!r}")
    out = []
    for s in _check_sources(sources):
        src = SOURCES[s]
        names = src.train if split == "train" else src.heldout if split == "heldout" else src.photos
        out += [f"{s}:{n}" for n in names]
    return out


def heldout_photos(sources=None) -> list[str]:
    """The held-out photos (never trained on) of ``sources``, qualified names."""
    return photo_names("heldout", sources)


def train_photos(sources=None) -> list[str]:
    """The training photos of ``sources``, qualified names."""
    return photo_names("train", sources)


def resolve(name) -> tuple[str, str] | Path:
    """``(source, photo)`` for a table photo (``source:name`` or a bare ``skimage.data``
    name; ``cat`` is ``chelsea``), or the :class:`~pathlib.Path` of an image file. Unknown
    names raise ValueError listing what is accepted."""
    if isinstance(name, Path):
        return name
    text = str(name)
    source, sep, photo = text.partition(":")
    if sep and source in SOURCES:
        photo = _SKIMAGE_ALIASES.get(photo, photo) if source == "skimage" else photo
        if photo not in SOURCES[source].files:
            raise ValueError(f"{source!r} has no photo {photo!r}; its photos: {', '.join(SOURCES[source].photos)}")
        return source, photo
    if not sep and _SKIMAGE_ALIASES.get(text, text) in SOURCES["skimage"].files:
        return "skimage", _SKIMAGE_ALIASES.get(text, text)
    path = Path(text).expanduser()
    if path.suffix.lower() in _IMAGE_SUFFIXES or path.exists():
        return path
    if not sep:        # a skimage.data image outside the table (load_skimage_photos decides)
        return "skimage", text
    raise ValueError(f"unknown photo {text!r}: give 'source:name' (sources: {', '.join(SOURCES)}), a "
                     "skimage.data name or the path of an image file")


def split_of(name) -> str | None:
    """'train' or 'heldout' for a table photo, None for files and photos outside the table."""
    where = resolve(name)
    if isinstance(where, Path):
        return None
    src = SOURCES[where[0]]
    return "train" if where[1] in src.train else "heldout" if where[1] in src.heldout else None


# ---------------------------------------------------------------------- verification
def _sha256_file(path: Path) -> str:
    return digest(path, hashlib.sha256())


def _file_ok(path: Path, pf: PhotoFile, full: bool = True) -> bool:
    try:
        if pf.size and path.stat().st_size != pf.size:
            return False
    except OSError:
        return False
    return not full or not pf.size or _sha256_file(path) == pf.sha256


def _source_dir(source: str) -> Path:
    return cache_dir() / source


def is_fetched(source: str) -> bool:
    """Whether every photo of ``source`` is in the cache (file sizes checked; scikit-image
    needs no cache, so ``skimage`` is fetched when scikit-image imports)."""
    _check_sources(source)
    if source == "skimage":
        try:
            import skimage.data  # noqa: F401
        except ImportError:
            return False
        return True
    src = SOURCES[source]
    return all(_file_ok(_source_dir(source) / f"{n}{src.extension}", pf, full=False) for n, pf in src.files.items())


def _not_fetched(source: str, why: str) -> PhotoNotFetched:
    return PhotoNotFetched(f"{why}. Fetch the {source!r} photos with: {SOURCES[source].fetch_command}")


def _verify(data: bytes, pf: PhotoFile, source: str, label: str) -> None:
    if pf.size and (len(data) != pf.size or hashlib.sha256(data).hexdigest() != pf.sha256):
        raise _not_fetched(source, f"{label} is {len(data)} bytes with sha256 {hashlib.sha256(data).hexdigest()[:16]}..., "
                                   f"not the recorded {pf.size} bytes / {pf.sha256[:16]}... (the held-out figures "
                                   "were measured on the recorded files)")


def _install(dest: Path, data: bytes) -> None:
    """Write ``data`` to ``dest`` atomically (a temporary file in the same folder, renamed)."""
    with atomic_file(dest, suffix="") as tmp:
        tmp.write_bytes(data)


# ---------------------------------------------------------------------- fetching
def _fetch_skimage(force: bool) -> list[Path]:
    from PIL import Image
    src, out = SOURCES["skimage"], []
    photos = load_skimage_photos(src.photos)
    for name, arr in photos.items():
        pf = src.files[name]
        sha = hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()
        if arr.shape[:2] != pf.shape or sha != pf.sha256:
            raise ValueError(f"skimage.data.{name} is {arr.shape[0]}x{arr.shape[1]} with pixel sha256 {sha[:16]}..., "
                             f"not the recorded {pf.shape[0]}x{pf.shape[1]} / {pf.sha256[:16]}...: this scikit-image "
                             "ships another version of the photo")
        dest = _source_dir("skimage") / f"{name}.png"
        if dest.exists() and not force:
            out.append(dest)
            continue
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG", compress_level=1)        # a cache copy: fast over small
        _install(dest, buf.getvalue())
        out.append(dest)
    return out


def _ar_member(deb: Path, prefix: str) -> tuple[str, bytes]:
    """The first member of the ar archive ``deb`` whose name starts with ``prefix``."""
    with open(deb, "rb") as f:
        if f.read(8) != b"!<arch>\n":
            raise ValueError(f"{deb} is not a Debian package (no ar header)")
        while True:
            header = f.read(60)
            if len(header) < 60:
                break
            name, size = header[:16].decode().strip().rstrip("/"), int(header[48:58].decode().strip())
            if name.startswith(prefix):
                return name, f.read(size)
            f.seek(size + (size & 1), os.SEEK_CUR)
    raise ValueError(f"{deb} has no {prefix}* member")


def _deb_files(deb: Path, members: set[str]) -> dict[str, bytes]:
    """The bytes of ``members`` (paths without a leading './') of the package ``deb``."""
    name, payload = _ar_member(deb, "data.tar")
    try:
        tar = tarfile.open(fileobj=io.BytesIO(payload), mode="r:*")
    except tarfile.ReadError:          # e.g. data.tar.zst, which Python's tarfile cannot read
        if not shutil.which("dpkg-deb"):
            raise ValueError(f"{deb}: cannot decompress {name} (install dpkg, or use a .deb from Debian: "
                             f"{WALLPAPER_DEB_URL})") from None
        raw = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], check=True, capture_output=True).stdout
        tar = tarfile.open(fileobj=io.BytesIO(raw), mode="r:")
    out = {}
    with tar:
        for info in tar:
            path = info.name[2:] if info.name.startswith("./") else info.name
            if path in members and info.isfile():
                out[path] = tar.extractfile(info).read()
    return out


def _apt_download(workdir: Path) -> Path:
    if not shutil.which("apt-get"):
        raise _not_fetched("wallpapers", "apt-get is not available on this machine")
    errors = []
    for spec in (f"{WALLPAPER_PACKAGE}={WALLPAPER_VERSION}", WALLPAPER_PACKAGE):
        res = subprocess.run(["apt-get", "download", spec], cwd=workdir, capture_output=True, text=True)
        debs = sorted(workdir.glob(f"{WALLPAPER_PACKAGE}_*.deb"))
        if res.returncode == 0 and debs:
            return debs[0]
        errors.append(f"`apt-get download {spec}`: {(res.stderr or res.stdout).strip().splitlines()[-1:] or ['failed']}")
    raise _not_fetched("wallpapers", "could not download the package (" + "; ".join(errors)
                       + "; run `apt-get update` first if the package lists are missing)")


def _fetch_from_archive(source: str, read, force: bool) -> list[Path]:
    src, out, todo = SOURCES[source], [], {}
    for name, pf in src.files.items():
        dest = _source_dir(source) / f"{name}{src.extension}"
        if not force and _file_ok(dest, pf):
            out.append(dest)
        else:
            todo[name] = (pf, dest)
    if todo:
        data = read({pf.member for pf, _ in todo.values()})
        for name, (pf, dest) in todo.items():                # every file checked before any is written
            if pf.member not in data:
                raise _not_fetched(source, f"{pf.member} is missing from the archive")
            _verify(data[pf.member], pf, source, pf.member)
        for name, (pf, dest) in todo.items():
            _install(dest, data[pf.member])
            out.append(dest)
    return out


def _fetch_wallpapers(force: bool, deb=None) -> list[Path]:
    def read(members):
        if deb is not None:
            if not Path(deb).is_file():
                raise _not_fetched("wallpapers", f"{deb} is not a file")
            return _deb_files(Path(deb), members)
        cache_dir().mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".download-", dir=cache_dir()) as tmp:
            return _deb_files(_apt_download(Path(tmp)), members)
    return _fetch_from_archive("wallpapers", read, force)


def _fetch_matplotlib(force: bool, wheel=None) -> list[Path]:
    def read(members):
        if wheel is not None:
            if not Path(wheel).is_file():
                raise _not_fetched("matplotlib", f"{wheel} is not a file")
            with zipfile.ZipFile(wheel) as z:
                names = set(z.namelist())
                return {m: z.read(m) for m in members if m in names}
        try:
            import matplotlib
        except ImportError:
            raise _not_fetched("matplotlib", "matplotlib is not installed") from None
        root = Path(matplotlib.get_data_path()).parent.parent      # .../site-packages
        return {m: (root / m).read_bytes() for m in members if (root / m).is_file()}
    return _fetch_from_archive("matplotlib", read, force)


def fetch(source: str, *, archive=None, force: bool = False) -> list[Path]:
    """Get the photos of ``source`` into :func:`cache_dir` and return their files.

    Idempotent (files already there and verified are kept; ``force`` fetches again) and
    atomic (each file is verified against its recorded size and sha256, then renamed into
    place). ``archive``: the package to read instead of downloading: a ``.deb`` for
    ``wallpapers``, a matplotlib wheel for ``matplotlib``. Failures raise
    :class:`PhotoNotFetched` naming the command to run."""
    _check_sources(source)
    if source == "skimage":
        try:
            return _fetch_skimage(force)
        except ImportError as e:
            raise _not_fetched("skimage", str(e)) from None
    if source == "wallpapers":
        return _fetch_wallpapers(force, archive)
    return _fetch_matplotlib(force, archive)


def fetch_all(sources=None, *, force: bool = False, archives: dict | None = None) -> dict[str, list[Path]]:
    """:func:`fetch` every source (``archives``: source -> package file); returns their files."""
    archives = archives or {}
    return {s: fetch(s, archive=archives.get(s), force=force) for s in _check_sources(sources)}


# ---------------------------------------------------------------------- loading
_photo_cache: dict[str, np.ndarray] = {}


def _to_rgb(img: np.ndarray, what: str) -> np.ndarray:
    img = np.asarray(img)
    if img.dtype == bool:
        img = img.astype(np.uint8) * 255
    if img.dtype != np.uint8:
        raise ValueError(f"{what} is {img.dtype}, expected uint8")
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    elif img.shape[2] == 4:
        img = img[:, :, :3]
    img = np.ascontiguousarray(img)
    img.setflags(write=False)
    return img


def load_skimage_photos(names=None) -> dict[str, np.ndarray]:
    """Load ``skimage.data`` photographs as ``name -> (H, W, 3) uint8`` arrays.

    ``names`` defaults to :data:`TRAIN_PHOTOS` + :data:`HELDOUT_PHOTOS`. Grayscale images are
    repeated to RGB, RGBA drops alpha, ``stereo_motorcycle`` gives its left view. Results are
    cached (read-only arrays). Names that scikit-image cannot provide offline (some need a
    download) raise ``ValueError`` naming them.
    """
    try:
        import skimage.data as skdata
    except ImportError as e:  # scikit-image is a test / training extra, not a core dependency
        raise ImportError("load_skimage_photos needs scikit-image (pip install scikit-image)") from e
    names = list(TRAIN_PHOTOS + HELDOUT_PHOTOS) if names is None else list(names)
    out, failed = {}, []
    for name in names:
        key = f"skimage:{name}"
        if key not in _photo_cache:
            fn = getattr(skdata, _SKIMAGE_ALIASES.get(name, name), None)
            try:
                if fn is None or not callable(fn):
                    raise AttributeError(name)
                img = fn()
            except Exception as e:  # noqa: BLE001 - missing files, pooch downloads without internet, ...
                failed.append(f"{name} ({type(e).__name__})")
                continue
            if isinstance(img, tuple):          # stereo_motorcycle: (left, right, disparity)
                img = img[0]
            _photo_cache[key] = _to_rgb(img, f"skimage.data.{name}")
        if key in _photo_cache:
            out[name] = _photo_cache[key]
    if failed:
        raise ValueError(f"skimage.data photo(s) not available offline: {', '.join(failed)}")
    return out


def _read_file(path: Path, what: str) -> np.ndarray:
    from PIL import Image
    with Image.open(path) as im:
        return _to_rgb(np.asarray(im.convert("RGB")), what)


def load_photo(name) -> np.ndarray:
    """One photo as a read-only (H, W, 3) uint8 array: ``source:name``, a ``skimage.data``
    name or an image file's path (see :func:`resolve`). A source not yet fetched raises
    :class:`PhotoNotFetched` naming the fetch command."""
    where = resolve(name)
    if isinstance(where, Path):
        if not where.is_file():
            raise FileNotFoundError(f"photo file {where} does not exist")
        return _read_file(where, str(where))
    source, photo = where
    if source == "skimage":
        try:
            return load_skimage_photos([photo])[photo]
        except ImportError as e:
            raise _not_fetched("skimage", str(e)) from None
    key = f"{source}:{photo}"
    if key not in _photo_cache:
        src = SOURCES[source]
        pf, path = src.files[photo], _source_dir(source) / f"{photo}{src.extension}"
        if not path.is_file():
            raise _not_fetched(source, f"photo {key} is not in the cache ({cache_dir()})")
        if not _file_ok(path, pf, full=False):
            raise _not_fetched(source, f"{path} is {path.stat().st_size} bytes, not the recorded {pf.size} (a broken "
                                       "or foreign file; fetching again replaces it)")
        _photo_cache[key] = _read_file(path, key)
    return _photo_cache[key]


def load_photos(names) -> dict[str, np.ndarray]:
    """``name -> (H, W, 3) uint8`` for every name (any form :func:`load_photo` takes), keyed by
    the names as given."""
    names = [names] if isinstance(names, (str, Path)) else list(names)
    if not names:
        raise ValueError("no photos named")
    return {str(n): load_photo(n) for n in names}
