"""Real-world degradations: a second-order blur / resize / noise / JPEG pipeline on the device.

Real LR inputs are not clean bicubic downsamples: they are phone JPEGs, noisy scans, photos
resized a few times by apps. Following the idea of Real-ESRGAN (Wang et al., 2021), the LR of
a training pair is made from its HR by two rounds of random degradations, each of them

1. **blur** with a random kernel (probability ``blur_prob``): isotropic or anisotropic
   (rotated) Gaussian, generalised Gaussian ``exp(-d^(2 beta) / 2)`` or plateau
   ``1 / (1 + d^(2 beta))``, where ``d`` is the Mahalanobis distance of the tap; an odd
   kernel side drawn from ``kernel_size``; one kernel per image (:func:`random_kernels`,
   applied with :func:`kornia.filters.filter2d`);
2. **resize** up, down or to the same size (``resize_probs``), by a factor drawn from
   ``resize_range``, with an interpolation mode drawn from ``resize_modes``; the first round
   is relative to the HR size, the second to the LR size (HR / ``scale``), as in Real-ESRGAN;
3. **noise** (probability ``noise_prob``): Gaussian (probability ``gaussian_noise_prob``, sigma
   from ``noise_range`` in 8-bit levels) or Poisson (shot noise of an 8-bit sensor, scaled by
   a factor from ``poisson_scale_range``), grey (the same in all channels, probability
   ``gray_noise_prob``) or colour;
4. **JPEG** (probability ``jpeg_prob``) at a quality drawn from ``jpeg_range``
   (:func:`kornia.enhance.jpeg_codec_differentiable`, per-image quality);

then a final resize to the LR size (a random mode of ``final.resize_modes``), a final JPEG
and 8-bit quantisation. Everything runs batched on the tensors' device, on ``(B, 3, H, W)``
float images in [0, 1]; every op returns images in [0, 1].

Randomness: every draw comes from the ``torch.Generator`` passed in (draws happen on the
generator's device and are moved to the images' device), so the same seed on the same
device gives the same LR and another seed another one. Kernels, noise and JPEG qualities are
drawn per image; the resize factors and modes once per batch (a batch must keep one size).

Defaults follow Real-ESRGAN's, scaled to the small patches trained here (HR 64-160 px, LR
16-40 px): the smallest resize factors are 0.3 (first round) and 0.5 (second round) instead
of 0.15 and 0.3, so the intermediate images keep at least about half the LR's side; no side
gets smaller than 8 px, and a kernel never gets wider than the image it blurs (reflection
padding needs the image longer than half the kernel).

Sinc (ringing) filters and the random order of the final resize and JPEG of Real-ESRGAN are
not modelled; JPEG adds ringing of its own.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

__all__ = ["KERNEL_KINDS", "RESIZE_MODES", "DegradationStage", "FinalStage", "RealWorldOptions",
           "blur_kernels", "random_kernels", "blur", "random_blur", "resize", "random_resize",
           "gaussian_noise", "poisson_noise", "random_noise", "jpeg", "random_jpeg", "quantize",
           "RealWorldDegradation", "degrade_realworld", "device_generator"]

#: Blur kernel kinds (keys of :attr:`DegradationStage.kernel_probs`).
KERNEL_KINDS = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")

#: Interpolation modes of the random resizes (:func:`torch.nn.functional.interpolate` names).
RESIZE_MODES = ("area", "bilinear", "bicubic", "nearest")

_FAMILY = {"gaussian": 0, "generalized": 1, "plateau": 2}
_KIND_FAMILY = {"iso": 0, "aniso": 0, "generalized_iso": 1, "generalized_aniso": 1, "plateau_iso": 2,
                "plateau_aniso": 2}
_MIN_SIDE = 8          # no intermediate image gets smaller than this (pixels per side)
_MAX_KERNEL = 51


# ----------------------------------------------------------------------------- options
def _number(name: str, v, integer: bool = False):
    if isinstance(v, str) and not integer:      # YAML 1.1 reads 1e-3 as a string
        try:
            v = float(v)
        except ValueError:
            pass
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not float(v).is_integer()):
        raise ValueError(f"{name} must be {'an int' if integer else 'a number'}; got {v!r}")
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite; got {v!r}")
    return int(v) if integer else float(v)


def _prob(name: str, v) -> float:
    v = _number(name, v)
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1]; got {v!r}")
    return v


def _range(name: str, v, lo: float, hi: float, integer: bool = False, open_lo: bool = False) -> tuple:
    accepted = f"{'(' if open_lo else '['}{lo:g}, {hi:g}]"
    if not isinstance(v, (list, tuple)) or len(v) != 2:
        raise ValueError(f"{name} must be two numbers [low, high] in {accepted}; got {v!r}")
    a, b = (_number(name, x, integer) for x in v)
    if not (a > lo if open_lo else a >= lo) or b > hi or a > b:
        raise ValueError(f"{name} must be two numbers low <= high in {accepted}; got {list(v)!r}")
    return (a, b)


def _modes(name: str, v) -> tuple:
    if isinstance(v, str):
        v = (v,)
    if not isinstance(v, (list, tuple)) or not v or any(m not in RESIZE_MODES for m in v):
        raise ValueError(f"{name} must be a non-empty list of {', '.join(RESIZE_MODES)}; got {v!r}")
    return tuple(v)


@dataclass
class DegradationStage:
    """Probabilities and ranges of one round of degradations (see the module docstring).
    The defaults are the first round's; :attr:`RealWorldOptions.second` has its own."""

    blur_prob: float = 1.0
    kernel_size: tuple = (7, 21)                     # odd kernel sides, drawn uniformly among the odd ones
    kernel_probs: dict = field(default_factory=lambda: {
        "iso": 0.45, "aniso": 0.25, "generalized_iso": 0.12, "generalized_aniso": 0.03,
        "plateau_iso": 0.12, "plateau_aniso": 0.03})
    sigma_range: tuple = (0.2, 3.0)                  # Gaussian sigma per axis, pixels of the image blurred
    beta_gen_range: tuple = (0.5, 4.0)               # shape of the generalised Gaussian (1 = Gaussian)
    beta_plateau_range: tuple = (1.0, 2.0)           # shape of the plateau kernel
    resize_probs: tuple = (0.2, 0.7, 0.1)            # up, down, keep
    resize_range: tuple = (0.3, 1.5)                 # factor: down from [low, 1), up from (1, high]
    resize_modes: tuple = ("area", "bilinear", "bicubic")
    noise_prob: float = 1.0
    gaussian_noise_prob: float = 0.5                 # else Poisson
    noise_range: tuple = (1.0, 30.0)                 # Gaussian sigma in 8-bit levels (/255)
    poisson_scale_range: tuple = (0.05, 3.0)
    gray_noise_prob: float = 0.4
    jpeg_prob: float = 1.0
    jpeg_range: tuple = (30.0, 95.0)

    def __post_init__(self):
        self.blur_prob = _prob("blur_prob", self.blur_prob)
        self.kernel_size = _range("kernel_size", self.kernel_size, 1, _MAX_KERNEL, integer=True)
        if any(k % 2 == 0 for k in self.kernel_size):
            raise ValueError(f"kernel_size must be two odd ints in [1, {_MAX_KERNEL}]; got {list(self.kernel_size)!r}")
        kp = self.kernel_probs
        if not isinstance(kp, dict) or not kp or any(k not in KERNEL_KINDS for k in kp):
            raise ValueError(f"kernel_probs must map kernel kinds ({', '.join(KERNEL_KINDS)}) to probabilities; "
                             f"got {kp!r}")
        kp = {k: _prob(f"kernel_probs.{k}", v) for k, v in kp.items()}
        if abs(sum(kp.values()) - 1.0) > 1e-6:
            raise ValueError(f"kernel_probs must sum to 1 (kinds left out count 0); got {kp!r} "
                             f"(sum {sum(kp.values()):g})")
        self.kernel_probs = kp
        self.sigma_range = _range("sigma_range", self.sigma_range, 0.0, 20.0, open_lo=True)
        self.beta_gen_range = _range("beta_gen_range", self.beta_gen_range, 0.0, 10.0, open_lo=True)
        self.beta_plateau_range = _range("beta_plateau_range", self.beta_plateau_range, 0.0, 10.0, open_lo=True)
        rp = self.resize_probs
        if not isinstance(rp, (list, tuple)) or len(rp) != 3:
            raise ValueError(f"resize_probs must be three probabilities [up, down, keep] summing to 1; got {rp!r}")
        rp = tuple(_prob("resize_probs", v) for v in rp)
        if abs(sum(rp) - 1.0) > 1e-6:
            raise ValueError(f"resize_probs must be three probabilities [up, down, keep] summing to 1; "
                             f"got {list(rp)!r}")
        self.resize_probs = rp
        self.resize_range = _range("resize_range", self.resize_range, 0.0, 4.0, open_lo=True)
        if not self.resize_range[0] <= 1.0 <= self.resize_range[1]:
            raise ValueError(f"resize_range must be [low, high] with 0 < low <= 1 <= high <= 4; "
                             f"got {list(self.resize_range)!r}")
        self.resize_modes = _modes("resize_modes", self.resize_modes)
        for name in ("noise_prob", "gaussian_noise_prob", "gray_noise_prob", "jpeg_prob"):
            setattr(self, name, _prob(name, getattr(self, name)))
        self.noise_range = _range("noise_range", self.noise_range, 0.0, 255.0)
        self.poisson_scale_range = _range("poisson_scale_range", self.poisson_scale_range, 0.0, 10.0)
        self.jpeg_range = _range("jpeg_range", self.jpeg_range, 1.0, 100.0)


#: The second round's defaults (Real-ESRGAN's second-order settings, resize range scaled).
SECOND_STAGE_DEFAULTS = {"blur_prob": 0.8, "sigma_range": (0.2, 1.5), "resize_probs": (0.3, 0.4, 0.3),
                         "resize_range": (0.5, 1.2), "noise_range": (1.0, 25.0), "poisson_scale_range": (0.05, 2.5)}


@dataclass
class FinalStage:
    """The last steps: resize to the LR size, JPEG, 8-bit quantisation."""

    resize_modes: tuple = ("area", "bilinear", "bicubic")
    jpeg_prob: float = 1.0
    jpeg_range: tuple = (30.0, 95.0)
    quantize: bool = True                            # round to 8-bit levels, like an LR read from a file

    def __post_init__(self):
        self.resize_modes = _modes("resize_modes", self.resize_modes)
        self.jpeg_prob = _prob("jpeg_prob", self.jpeg_prob)
        self.jpeg_range = _range("jpeg_range", self.jpeg_range, 1.0, 100.0)
        if not isinstance(self.quantize, bool):
            raise ValueError(f"quantize must be true or false; got {self.quantize!r}")


def _stage(cls, value, name: str, defaults: dict | None = None):
    if isinstance(value, cls):
        return value
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be a mapping of option names to values; got {value!r}")
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(value) - set(known))
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(f'{name}.{u}' for u in unknown)}; known keys of {name}: "
                         f"{', '.join(known)}")
    try:
        return cls(**{**(defaults or {}), **value})
    except ValueError as e:
        raise ValueError(f"{name}.{e}") from None


@dataclass
class RealWorldOptions:
    """All options of :class:`RealWorldDegradation`: two rounds and the final steps.

    ``first`` / ``second`` / ``final`` accept a :class:`DegradationStage` /
    :class:`FinalStage` or a mapping of the fields to change (``second`` starts from
    :data:`SECOND_STAGE_DEFAULTS`). Bad values raise ``ValueError`` naming the field (e.g.
    ``second.jpeg_range``) and its accepted range. ``scale``: HR side / LR side.
    """

    first: DegradationStage = field(default_factory=DegradationStage)
    second: DegradationStage = field(default_factory=lambda: DegradationStage(**SECOND_STAGE_DEFAULTS))
    final: FinalStage = field(default_factory=FinalStage)
    scale: int = 4
    clean_prob: float = 0.0         # share of images that keep the clean LR passed in (see __call__)

    def __post_init__(self):
        self.first = _stage(DegradationStage, self.first, "first")
        self.second = _stage(DegradationStage, self.second, "second", SECOND_STAGE_DEFAULTS)
        self.final = _stage(FinalStage, self.final, "final")
        if isinstance(self.scale, bool) or not isinstance(self.scale, int) or self.scale < 1:
            raise ValueError(f"scale must be a positive int; got {self.scale!r}")
        self.clean_prob = _number("clean_prob", self.clean_prob)
        if not 0 <= self.clean_prob <= 1:
            raise ValueError(f"clean_prob must be in [0, 1] (a probability); got {self.clean_prob}")

    @classmethod
    def from_dict(cls, d: dict | None, prefix: str = "") -> "RealWorldOptions":
        """Options from a (YAML) mapping ``{first: {...}, second: {...}, final: {...}}``;
        missing keys keep their defaults. ``prefix`` is put before the key names in error
        messages (e.g. ``'degradation.'``)."""
        d = d or {}
        if not isinstance(d, dict):
            raise ValueError(f"{prefix.rstrip('.') or 'realworld options'} must be a mapping; got {d!r}")
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ValueError(f"unknown key(s) {', '.join(prefix + u for u in unknown)}; known keys: {', '.join(known)}")
        parts = (("first", DegradationStage, None), ("second", DegradationStage, SECOND_STAGE_DEFAULTS),
                 ("final", FinalStage, None))
        kw = {name: _stage(tp, d.get(name), prefix + name, defaults) for name, tp, defaults in parts if name in d}
        kw.update({k: d[k] for k in ("scale", "clean_prob") if k in d})
        return cls(**kw)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _need_kornia(what: str) -> None:
    if importlib.util.find_spec("kornia") is None:     # a training extra, not a core dependency
        raise ImportError(f"{what} need kornia (pip install 'frfsr[train]')")


# ----------------------------------------------------------------------------- random draws
def device_generator(device, seed: int) -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with ``seed`` (a CPU one where the device
    has no generators of its own)."""
    seed = int(seed) % (2 ** 63)
    try:
        return torch.Generator(device=device).manual_seed(seed)
    except RuntimeError:
        return torch.Generator().manual_seed(seed)


def _device(x: torch.Tensor, generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else x.device


def _uniform(n: int, lo: float, hi: float, generator, device) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=generator, device=device, dtype=torch.float64)


def _bernoulli(n: int, p: float, generator, device) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=device) < p


def _choice(weights, generator, device) -> int:
    w = torch.as_tensor([float(v) for v in weights], dtype=torch.float64)
    u = float(torch.rand((), generator=generator, device=device, dtype=torch.float64))
    return min(int(torch.searchsorted(w.cumsum(0) / w.sum(), torch.tensor(u, dtype=torch.float64), right=True)),
               len(w) - 1)


def _check_images(x: torch.Tensor, name: str = "images") -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != 3 or not x.is_floating_point():
        raise ValueError(f"{name} must be a float (B, 3, H, W) tensor in [0, 1]; got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}"
                         f"{' ' + str(x.dtype) if isinstance(x, torch.Tensor) else ''}")


# ----------------------------------------------------------------------------- blur
def blur_kernels(size: int, sigma_x, sigma_y=None, theta=0.0, family="gaussian", beta=1.0,
                 support=None, device=None) -> torch.Tensor:
    """Blur kernels ``(B, size, size)``, each summing to 1, for per-image parameters.

    ``sigma_x`` / ``sigma_y`` (default ``sigma_x``): spreads along the kernel's own axes,
    which are rotated by ``theta`` radians (counter-clockwise in (x, y)); ``family``:
    ``'gaussian'`` ``exp(-d^2 / 2)``, ``'generalized'`` ``exp(-(d^2)^beta / 2)`` or
    ``'plateau'`` ``1 / (1 + (d^2)^beta)``, ``d`` being the Mahalanobis distance of the tap
    from the centre, one name for all or a ``(B,)`` tensor of codes 0 / 1 / 2. ``support``:
    odd kernel sides ``<= size`` (per image); taps outside are zero. Scalars broadcast;
    ``size`` must be odd.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 1 or size % 2 == 0:
        raise ValueError(f"size must be a positive odd int; got {size!r}")
    sigma_x = torch.as_tensor(sigma_x, dtype=torch.float64, device=device).reshape(-1)
    dev = sigma_x.device
    sigma_y = sigma_x if sigma_y is None else torch.as_tensor(sigma_y, dtype=torch.float64, device=dev).reshape(-1)
    if isinstance(family, str):
        if family not in _FAMILY:
            raise ValueError(f"family must be one of {', '.join(_FAMILY)}; got {family!r}")
        family = _FAMILY[family]
    family = torch.as_tensor(family, device=dev).reshape(-1)
    theta = torch.as_tensor(theta, dtype=torch.float64, device=dev).reshape(-1)
    beta = torch.as_tensor(beta, dtype=torch.float64, device=dev).reshape(-1)
    n = max(t.numel() for t in (sigma_x, sigma_y, family, theta, beta))
    if (sigma_x <= 0).any() or (sigma_y <= 0).any() or (beta <= 0).any():
        raise ValueError("sigma_x, sigma_y and beta must be > 0")
    r = size // 2
    ax = torch.arange(-r, r + 1, dtype=torch.float64, device=dev)
    yy, xx = torch.meshgrid(ax, ax, indexing="ij")
    cos, sin = theta.cos()[:, None, None], theta.sin()[:, None, None]
    u = cos * xx + sin * yy                            # tap in the kernel's own axes
    v = -sin * xx + cos * yy
    d2 = (u / sigma_x[:, None, None]) ** 2 + (v / sigma_y[:, None, None]) ** 2
    d2 = d2.expand(n, size, size)
    b = beta[:, None, None]
    fam = family[:, None, None]
    k = torch.where(fam == 0, torch.exp(-0.5 * d2),
                    torch.where(fam == 1, torch.exp(-0.5 * d2.pow(b)), 1.0 / (1.0 + d2.pow(b))))
    if support is not None:
        half = (torch.as_tensor(support, device=dev).reshape(-1) // 2)[:, None, None]
        k = k * ((xx.abs() <= half) & (yy.abs() <= half))
    return (k / k.sum((-2, -1), keepdim=True)).float()


def random_kernels(n: int, options: DegradationStage | None = None, generator: torch.Generator | None = None,
                   max_size: int | None = None, device=None) -> torch.Tensor:
    """``n`` random blur kernels ``(n, K, K)`` as one round of ``options`` draws them (kind
    from ``kernel_probs``, odd side from ``kernel_size`` capped at ``max_size``, sigmas,
    rotation and shape). Kernels smaller than the largest are zero-padded to ``K``; all sum
    to 1. Returned on ``device`` (default: the generator's)."""
    o = options or DegradationStage()
    gdev = generator.device if generator is not None else torch.device("cpu")
    lo, hi = o.kernel_size
    if max_size is not None:
        cap = max(1, max_size if max_size % 2 else max_size - 1)
        lo, hi = min(lo, cap), min(hi, cap)
    n_sizes = (hi - lo) // 2 + 1
    sizes = lo + 2 * torch.randint(0, n_sizes, (n,), generator=generator, device=gdev)
    kinds = [k for k in KERNEL_KINDS if o.kernel_probs.get(k, 0.0) > 0]
    w = torch.tensor([o.kernel_probs[k] for k in kinds], dtype=torch.float64)
    u = torch.rand(n, generator=generator, device=gdev, dtype=torch.float64).cpu()
    kind = torch.searchsorted(w.cumsum(0) / w.sum(), u, right=True).clamp(max=len(kinds) - 1)
    family = torch.tensor([_KIND_FAMILY[kinds[i]] for i in kind.tolist()], device=gdev)
    iso = torch.tensor([kinds[i].endswith("iso") and not kinds[i].endswith("aniso") for i in kind.tolist()],
                       device=gdev)
    sx = _uniform(n, *o.sigma_range, generator, gdev)
    sy = torch.where(iso, sx, _uniform(n, *o.sigma_range, generator, gdev))
    theta = torch.where(iso, torch.zeros_like(sx), _uniform(n, 0.0, math.pi, generator, gdev))
    b_gen = _uniform(n, *o.beta_gen_range, generator, gdev)
    b_plat = _uniform(n, *o.beta_plateau_range, generator, gdev)
    beta = torch.where(family == 1, b_gen, torch.where(family == 2, b_plat, torch.ones_like(sx)))
    k = blur_kernels(int(sizes.max()), sx, sy, theta, family, beta, support=sizes)
    return k.to(device or gdev)


def blur(x: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Filter each image of ``x`` (B, 3, H, W) with its kernel ``(B, k, k)`` (or one ``(1, k,
    k)`` for all; :func:`kornia.filters.filter2d`, reflected borders). Needs ``H, W > k // 2``."""
    from kornia.filters import filter2d
    _check_images(x)
    k = kernels.shape[-1]
    if min(x.shape[-2:]) <= k // 2:
        raise ValueError(f"a {k}x{k} kernel needs images larger than {k // 2} px per side; got {tuple(x.shape[-2:])}")
    return filter2d(x, kernels.to(device=x.device, dtype=x.dtype), border_type="reflect").clamp(0, 1)


def random_blur(x: torch.Tensor, options: DegradationStage | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Blur each image with probability ``blur_prob`` by a kernel of :func:`random_kernels`
    (capped so it fits the image); the others are left as they are."""
    _check_images(x)
    o = options or DegradationStage()
    dev = _device(x, generator)
    n = x.shape[0]
    kernels = random_kernels(n, o, generator, max_size=2 * min(x.shape[-2:]) - 1, device=x.device)
    use = _bernoulli(n, o.blur_prob, generator, dev).to(x.device)
    if not bool(use.any()):
        return x
    delta = torch.zeros_like(kernels)
    delta[:, kernels.shape[-1] // 2, kernels.shape[-1] // 2] = 1.0
    return blur(x, torch.where(use[:, None, None], kernels, delta))


# ----------------------------------------------------------------------------- resize
def resize(x: torch.Tensor, size: tuple[int, int], mode: str = "bicubic") -> torch.Tensor:
    """Resize to ``size = (h, w)`` with :func:`torch.nn.functional.interpolate` (no
    antialiasing but for ``'area'``, as camera apps and Real-ESRGAN do), clamped to [0, 1]."""
    _check_images(x)
    if mode not in RESIZE_MODES:
        raise ValueError(f"mode must be one of {', '.join(RESIZE_MODES)}; got {mode!r}")
    size = (int(size[0]), int(size[1]))
    if min(size) < 1:
        raise ValueError(f"size must be positive; got {size}")
    if tuple(x.shape[-2:]) == size:
        return x
    kw = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    return F.interpolate(x, size=size, mode=mode, **kw).clamp(0, 1)


def random_resize(x: torch.Tensor, options: DegradationStage | None = None, generator: torch.Generator | None = None,
                  base_size: tuple[int, int] | None = None) -> torch.Tensor:
    """Resize the batch up / down / not (``resize_probs``) by a factor of ``resize_range``
    relative to ``base_size`` (default: its own size) with a mode of ``resize_modes``; one
    draw for the whole batch. No side gets below 8 px."""
    _check_images(x)
    o = options or DegradationStage()
    dev = _device(x, generator)
    base = tuple(x.shape[-2:]) if base_size is None else (int(base_size[0]), int(base_size[1]))
    which = _choice(o.resize_probs, generator, dev)
    lo, hi = o.resize_range
    u = float(torch.rand((), generator=generator, device=dev, dtype=torch.float64))
    factor = (1 + (hi - 1) * u) if which == 0 else (lo + (1 - lo) * u) if which == 1 else 1.0
    mode = o.resize_modes[int(torch.randint(0, len(o.resize_modes), (), generator=generator, device=dev))]
    size = tuple(max(_MIN_SIDE, int(round(s * factor))) for s in base)
    return resize(x, size, mode)


# ----------------------------------------------------------------------------- noise
def _per_image(v, n: int, x: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(v, dtype=x.dtype, device=x.device).reshape(-1)
    return (t.expand(n) if t.numel() == 1 else t).reshape(n, 1, 1, 1)


def gaussian_noise(x: torch.Tensor, sigma, gray=False, generator: torch.Generator | None = None) -> torch.Tensor:
    """Add zero-mean Gaussian noise of standard deviation ``sigma`` (a number or (B,), in
    [0, 1] units) per image; ``gray`` (bool or (B,)): the same noise in the three channels."""
    _check_images(x)
    n = x.shape[0]
    noise = torch.randn(x.shape, generator=generator, device=_device(x, generator), dtype=torch.float32)
    noise = noise.to(device=x.device, dtype=x.dtype)
    gray = _per_image(gray, n, x).bool()
    noise = torch.where(gray, noise[:, :1].expand_as(noise), noise)
    return (x + _per_image(sigma, n, x) * noise).clamp(0, 1)


def poisson_noise(x: torch.Tensor, scale, gray=False, generator: torch.Generator | None = None,
                  levels: float = 255.0) -> torch.Tensor:
    """Add shot noise: ``Poisson(x * levels) / levels - x`` (a sensor counting ``levels``
    photons at white), times ``scale`` (a number or (B,)) per image; ``gray`` (bool or (B,)):
    the noise of the luma, the same in the three channels."""
    _check_images(x)
    n = x.shape[0]
    dev = _device(x, generator)
    luma = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
    clean = torch.cat([x, luma], 1).float().clamp(0, 1)
    counts = torch.poisson(clean.to(dev) * levels, generator=generator).to(x.device)
    noise = (counts / levels - clean).to(x.dtype)
    noise = torch.where(_per_image(gray, n, x).bool(), noise[:, 3:4].expand(-1, 3, -1, -1), noise[:, :3])
    return (x + _per_image(scale, n, x) * noise).clamp(0, 1)


def random_noise(x: torch.Tensor, options: DegradationStage | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """With probability ``noise_prob`` per image: Gaussian (``gaussian_noise_prob``) or
    Poisson noise, grey with probability ``gray_noise_prob``, strengths from ``noise_range``
    (8-bit levels) / ``poisson_scale_range``."""
    _check_images(x)
    o = options or DegradationStage()
    dev, n = _device(x, generator), x.shape[0]
    use = _bernoulli(n, o.noise_prob, generator, dev)
    is_gauss = _bernoulli(n, o.gaussian_noise_prob, generator, dev)
    gray = _bernoulli(n, o.gray_noise_prob, generator, dev)
    sigma = _uniform(n, *o.noise_range, generator, dev) / 255.0
    scale = _uniform(n, *o.poisson_scale_range, generator, dev)
    if not bool(use.any()):
        return x
    g_out = gaussian_noise(x, sigma.to(x.device), gray.to(x.device), generator) if bool((use & is_gauss).any()) else x
    p_out = poisson_noise(x, scale.to(x.device), gray.to(x.device), generator) if bool((use & ~is_gauss).any()) else x
    use, is_gauss = use.to(x.device)[:, None, None, None], is_gauss.to(x.device)[:, None, None, None]
    return torch.where(use, torch.where(is_gauss, g_out, p_out), x)


# ----------------------------------------------------------------------------- JPEG
def jpeg(x: torch.Tensor, quality) -> torch.Tensor:
    """JPEG-compress and decode each image at ``quality`` (a number or (B,), in [1, 100])
    with :func:`kornia.enhance.jpeg_codec_differentiable` (standard tables, 4:2:0 chroma;
    sizes that are not multiples of 16 are padded inside and cropped back)."""
    from kornia.enhance import jpeg_codec_differentiable
    _check_images(x)
    q = torch.as_tensor(quality, dtype=torch.float32, device=x.device).reshape(-1)
    if q.numel() == 1:
        q = q.expand(x.shape[0]).contiguous()
    if q.numel() != x.shape[0] or (q < 1).any() or (q > 100).any():
        raise ValueError(f"quality must be one number or one per image, in [1, 100]; got {quality!r}")
    return jpeg_codec_differentiable(x.clamp(0, 1), q).to(x.dtype).clamp(0, 1)


def random_jpeg(x: torch.Tensor, prob: float = 1.0, quality_range=(30.0, 95.0),
                generator: torch.Generator | None = None) -> torch.Tensor:
    """JPEG each image with probability ``prob`` at a quality drawn from ``quality_range``."""
    _check_images(x)
    dev, n = _device(x, generator), x.shape[0]
    use = _bernoulli(n, prob, generator, dev).to(x.device)
    q = _uniform(n, *quality_range, generator, dev).to(x.device)
    if not bool(use.any()):
        return x
    return torch.where(use[:, None, None, None], jpeg(x, q), x)


def quantize(x: torch.Tensor) -> torch.Tensor:
    """Round to 8-bit levels (what an LR saved as an image file holds)."""
    return x.clamp(0, 1).mul(255).round().div(255)


# ----------------------------------------------------------------------------- pipeline
class RealWorldDegradation:
    """The second-order pipeline of the module docstring: ``lr = degrade(hr, generator)``.

    ``hr``: ``(B, 3, H, W)`` float in [0, 1] on any device, ``H`` and ``W`` multiples of
    ``options.scale``; returns ``(B, 3, H / scale, W / scale)`` in ``hr``'s dtype and device.
    Differentiable but for the random draws; call it under ``torch.no_grad()`` to make
    training inputs.
    """

    def __init__(self, options: RealWorldOptions | dict | None = None):
        if options is None:
            options = RealWorldOptions()
        elif isinstance(options, dict):
            options = RealWorldOptions.from_dict(options)
        elif not isinstance(options, RealWorldOptions):
            raise TypeError(f"options must be RealWorldOptions or a mapping; got {type(options).__name__}")
        _need_kornia("the realworld degradations")
        self.options = options

    def __repr__(self) -> str:
        return f"RealWorldDegradation({self.options!r})"

    def stage(self, x: torch.Tensor, options: DegradationStage, generator=None,
              base_size: tuple[int, int] | None = None) -> torch.Tensor:
        """One round: blur, resize (relative to ``base_size``), noise, JPEG."""
        x = random_blur(x, options, generator)
        x = random_resize(x, options, generator, base_size)
        x = random_noise(x, options, generator)
        return random_jpeg(x, options.jpeg_prob, options.jpeg_range, generator)

    def __call__(self, hr: torch.Tensor, generator: torch.Generator | None = None,
                 clean: torch.Tensor | None = None) -> torch.Tensor:
        """``clean``: the clean LR of the batch (e.g. the data's PIL-bicubic one), needed when
        ``options.clean_prob > 0``: each image keeps it with that probability (drawn last,
        so the degraded images are the same as with ``clean_prob = 0``), so that a model
        trained on these LRs still sees clean ones."""
        _check_images(hr, "hr")
        o, s = self.options, self.options.scale
        h, w = hr.shape[-2:]
        if h % s or w % s or h // s < 1 or w // s < 1:
            raise ValueError(f"hr height and width must be positive multiples of the scale {s}; got {h}x{w}")
        lr_size = (h // s, w // s)
        x = hr.float()
        x = self.stage(x, o.first, generator)
        x = self.stage(x, o.second, generator, base_size=lr_size)
        dev = _device(x, generator)
        mode = o.final.resize_modes[int(torch.randint(0, len(o.final.resize_modes), (), generator=generator,
                                                      device=dev))]
        x = resize(x, lr_size, mode)
        x = random_jpeg(x, o.final.jpeg_prob, o.final.jpeg_range, generator)
        if o.final.quantize:
            x = quantize(x)
        x = x.clamp(0, 1)
        if o.clean_prob > 0:
            if clean is None or clean.shape != x.shape:
                raise ValueError(f"clean_prob {o.clean_prob} needs the clean LR of shape {tuple(x.shape)}; got "
                                 f"{None if clean is None else tuple(clean.shape)}")
            keep = torch.rand(x.shape[0], generator=generator, device=dev).to(x.device) < o.clean_prob
            x = torch.where(keep[:, None, None, None], clean.to(x), x)
        return x.to(hr.dtype)


def degrade_realworld(hr: torch.Tensor, generator: torch.Generator | None = None,
                      options: RealWorldOptions | dict | None = None) -> torch.Tensor:
    """``RealWorldDegradation(options)(hr, generator)``: real-world LRs of an HR batch."""
    return RealWorldDegradation(options)(hr, generator)
