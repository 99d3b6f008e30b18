"""Training augmentations on image tensors (``(C, H, W)`` or ``(B, C, H, W)``).

* geometric: :func:`flip_rot` applies given flips / 90-degree rotations,
  :func:`sample_flip_rot` draws them, :func:`augment_pair` applies one draw identically to
  HR and LR and, depending on ``ref_mode``, the same draw, an independent draw or nothing to
  the Ref;
* :func:`shuffle_blocks` cuts an image into n x n blocks and permutes them (Ref shuffling
  with the named levels of :data:`SHUFFLE_LEVELS`);
* :func:`color_jitter` randomly changes brightness, contrast, saturation and hue of a Ref.

All randomness comes from the optional ``torch.Generator`` (the global torch RNG when it is
None), so results are reproducible with a seeded generator.
"""
from __future__ import annotations

import math
import numbers

import torch

__all__ = ["SHUFFLE_LEVELS", "flip_rot", "sample_flip_rot", "augment_pair", "shuffle_blocks", "color_jitter"]

#: Named Ref shuffle levels: number of blocks per side.
SHUFFLE_LEVELS = {"easy": 2, "medium": 4, "hard": 8}


def _check_image(img, name: str = "img") -> None:
    if not isinstance(img, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor (C, H, W) or (B, C, H, W); got {type(img).__name__}")
    if img.ndim not in (3, 4):
        raise ValueError(f"{name} must be (C, H, W) or (B, C, H, W); got shape {tuple(img.shape)}")


def _rand(generator) -> float:
    return float(torch.rand((), generator=generator))


# --------------------------------------------------------------------------- geometry
def flip_rot(img: torch.Tensor, hflip: bool = False, vflip: bool = False, rot90: int = 0) -> torch.Tensor:
    """Horizontal flip, then vertical flip, then ``rot90`` counter-clockwise quarter turns."""
    _check_image(img)
    if hflip:
        img = img.flip(-1)
    if vflip:
        img = img.flip(-2)
    if rot90 % 4:
        img = torch.rot90(img, int(rot90) % 4, dims=(-2, -1))
    return img


def sample_flip_rot(generator: torch.Generator | None = None, hflip: bool = True, vflip: bool = True,
                    rot: bool = True) -> dict:
    """Draw ``{'hflip', 'vflip', 'rot90'}`` (each enabled one with probability 1/2; rot90 in {0, 1}).

    With everything enabled the 8 outcomes are the 8 symmetries of the square, equally likely.
    """
    return {
        "hflip": bool(hflip) and _rand(generator) < 0.5,
        "vflip": bool(vflip) and _rand(generator) < 0.5,
        "rot90": int(bool(rot) and _rand(generator) < 0.5),
    }


def augment_pair(hr: torch.Tensor, lr: torch.Tensor, ref: torch.Tensor | None = None,
                 generator: torch.Generator | None = None, hflip: bool = True, vflip: bool = True,
                 rot: bool = True, ref_mode: str = "independent"):
    """Random flips / rotations applied identically to ``hr`` and ``lr``.

    ``ref_mode``: ``'independent'`` (the Ref gets its own draw), ``'same'`` (the HR/LR draw)
    or ``'none'`` (Ref untouched). Returns ``(hr, lr, ref)``; ``ref`` stays None if not given.
    """
    _check_image(hr, "hr")
    _check_image(lr, "lr")
    if ref_mode not in ("independent", "same", "none"):
        raise ValueError(f"ref_mode must be 'independent', 'same' or 'none'; got {ref_mode!r}")
    params = sample_flip_rot(generator, hflip, vflip, rot)
    hr, lr = flip_rot(hr, **params), flip_rot(lr, **params)
    if ref is not None:
        _check_image(ref, "ref")
        if ref_mode == "independent":
            ref = flip_rot(ref, **sample_flip_rot(generator, hflip, vflip, rot))
        elif ref_mode == "same":
            ref = flip_rot(ref, **params)
    return hr, lr, ref


# --------------------------------------------------------------------------- block shuffle
def _split_sizes(length: int, n: int) -> list[int]:
    """``n`` sizes summing to ``length``, the first ``length % n`` one larger (numpy.array_split)."""
    q, r = divmod(length, n)
    return [q + 1] * r + [q] * (n - r)


def _resolve_level(n) -> int:
    if isinstance(n, str):
        if n not in SHUFFLE_LEVELS:
            raise ValueError(f"unknown shuffle level {n!r}; accepted: {', '.join(SHUFFLE_LEVELS)} or a positive int")
        return SHUFFLE_LEVELS[n]
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise ValueError(f"n must be a positive int or one of {', '.join(SHUFFLE_LEVELS)}; got {n!r}")
    return int(n)


def _draw_layout(hs: list[int], ws: list[int], generator) -> list[list[tuple[int, int]]]:
    """For every output slot (k, l) the source block (i, j); block sizes always fit."""
    n_r, n_c = len(hs), len(ws)
    row_order = torch.randperm(n_r, generator=generator).tolist()  # output row k has the height of row_order[k]
    col_order = torch.randperm(n_c, generator=generator).tolist()
    src_by_class: dict[tuple[int, int], list[tuple[int, int]]] = {}
    dst_by_class: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for i in range(n_r):
        for j in range(n_c):
            src_by_class.setdefault((hs[i], ws[j]), []).append((i, j))
            dst_by_class.setdefault((hs[row_order[i]], ws[col_order[j]]), []).append((i, j))
    layout = [[(0, 0)] * n_c for _ in range(n_r)]
    for cls in sorted(src_by_class):
        src, dst = src_by_class[cls], dst_by_class[cls]
        for d, s in zip(dst, torch.randperm(len(src), generator=generator).tolist()):
            layout[d[0]][d[1]] = src[s]
    return layout


def shuffle_blocks(img: torch.Tensor, n, generator: torch.Generator | None = None) -> torch.Tensor:
    """Cut ``img`` into ``n`` x ``n`` blocks and rearrange them randomly.

    ``n`` is a positive int or a level name of :data:`SHUFFLE_LEVELS` (easy=2, medium=4,
    hard=8). The output has the input's shape and holds every input pixel exactly once (all
    channels / batch items move together). Block heights follow ``numpy.array_split``: when
    ``H % n != 0`` the first ``H % n`` block rows are one pixel taller (widths likewise). A
    block can only land in a slot of its own size, so the positions of the taller rows / wider
    columns are shuffled and blocks are permuted randomly within each size class; when H and W
    are divisible by ``n`` this is a uniform random permutation of all n^2 blocks. For n >= 2
    the identity arrangement is redrawn, so the output always differs in block order.
    """
    _check_image(img)
    n = _resolve_level(n)
    h, w = img.shape[-2:]
    if h < n or w < n:
        raise ValueError(f"cannot cut a {h}x{w} image into {n}x{n} non-empty blocks")
    if n == 1:
        return img.clone()
    hs, ws = _split_sizes(h, n), _split_sizes(w, n)
    y0 = [sum(hs[:i]) for i in range(n)]
    x0 = [sum(ws[:j]) for j in range(n)]
    identity = [[(i, j) for j in range(n)] for i in range(n)]
    for _ in range(1000):
        layout = _draw_layout(hs, ws, generator)
        if layout != identity:
            break
    rows = []
    for k in range(n):
        blocks = [img[..., y0[i]:y0[i] + hs[i], x0[j]:x0[j] + ws[j]] for i, j in layout[k]]
        rows.append(torch.cat(blocks, dim=-1))
    return torch.cat(rows, dim=-2)


# --------------------------------------------------------------------------- colour
def _range(value, name: str, center: float, bound: float | None = None) -> tuple[float, float] | None:
    """Turn a jitter strength (float s -> [center - s, center + s]) or (lo, hi) into a range."""
    if value is None:
        return None
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"{name} must be non-negative; got {value}")
        if value == 0:
            return None
        lo, hi = center - float(value), center + float(value)
        if bound is None:
            lo = max(lo, 0.0)
    elif isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, numbers.Real) for v in value):
        lo, hi = float(value[0]), float(value[1])
        if lo > hi or (bound is None and lo < 0):
            raise ValueError(f"{name} range must be (lo, hi) with {'0 <= ' if bound is None else ''}lo <= hi; got {value}")
    else:
        raise ValueError(f"{name} must be a non-negative number or a (lo, hi) pair; got {value!r}")
    if bound is not None and (lo < -bound or hi > bound):
        raise ValueError(f"{name} must lie within [-{bound}, {bound}]; got range ({lo}, {hi})")
    return lo, hi


def _gray(img: torch.Tensor) -> torch.Tensor:
    r, g, b = img.unbind(-3)
    return (0.299 * r + 0.587 * g + 0.114 * b).unsqueeze(-3)


def _rgb_to_hsv(img: torch.Tensor) -> torch.Tensor:
    r, g, b = img.unbind(-3)
    maxc, _ = img.max(dim=-3)
    minc, _ = img.min(dim=-3)
    delta = maxc - minc
    s = torch.where(maxc > 0, delta / maxc.clamp_min(1e-12), torch.zeros_like(maxc))
    safe = delta.clamp_min(1e-12)
    h = torch.where(maxc == r, ((g - b) / safe) % 6.0,
                    torch.where(maxc == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0))
    h = torch.where(delta > 0, h / 6.0, torch.zeros_like(h)) % 1.0
    return torch.stack([h, s, maxc], dim=-3)


def _hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    h, s, v = hsv.unbind(-3)
    h6 = (h % 1.0) * 6.0
    i = torch.floor(h6)
    f = h6 - i
    i = i.long() % 6
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    choices = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    out = []
    for ch in range(3):
        val = torch.zeros_like(v)
        for k, trip in enumerate(choices):
            val = torch.where(i == k, trip[ch], val)
        out.append(val)
    return torch.stack(out, dim=-3)


def color_jitter(ref: torch.Tensor, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Random brightness / contrast / saturation / hue change of an RGB image in [0, 1].

    Like torchvision's ``ColorJitter``: a strength ``s`` draws a factor uniformly from
    ``[max(0, 1 - s), 1 + s]`` (a ``(lo, hi)`` pair gives the range directly; ``hue`` is a
    shift in [-0.5, 0.5] drawn from ``[-hue, hue]``). Brightness scales the image, contrast
    blends with the mean gray level, saturation blends with the gray image, hue rotates the
    HSV hue; the four are applied in a random order and the result is clamped to [0, 1].
    Batches ``(B, 3, H, W)`` get an independent draw per image.
    """
    _check_image(ref, "ref")
    if not ref.is_floating_point():
        raise TypeError(f"color_jitter expects a float image in [0, 1]; got dtype {ref.dtype}")
    if ref.shape[-3] != 3:
        raise ValueError(f"color_jitter expects 3 (RGB) channels; got {ref.shape[-3]}")
    b_rng = _range(brightness, "brightness", 1.0)
    c_rng = _range(contrast, "contrast", 1.0)
    s_rng = _range(saturation, "saturation", 1.0)
    h_rng = _range(hue, "hue", 0.0, bound=0.5)
    if ref.ndim == 4:
        return torch.stack([color_jitter(x, b_rng or 0.0, c_rng or 0.0, s_rng or 0.0, h_rng or 0.0, generator)
                            for x in ref])

    def draw(rng):
        return rng[0] + (rng[1] - rng[0]) * _rand(generator)

    img = ref.clamp(0.0, 1.0)
    for op in torch.randperm(4, generator=generator).tolist():
        if op == 0 and b_rng:
            img = (img * draw(b_rng)).clamp(0.0, 1.0)
        elif op == 1 and c_rng:
            f = draw(c_rng)
            img = (f * img + (1 - f) * _gray(img).mean()).clamp(0.0, 1.0)
        elif op == 2 and s_rng:
            f = draw(s_rng)
            img = (f * img + (1 - f) * _gray(img)).clamp(0.0, 1.0)
        elif op == 3 and h_rng:
            shift = draw(h_rng)
            if shift != 0.0 and not math.isnan(shift):
                hsv = _rgb_to_hsv(img)
                hsv = torch.cat([(hsv[:1] + shift) % 1.0, hsv[1:]], dim=0)
                img = _hsv_to_rgb(hsv).clamp(0.0, 1.0)
    return img
