"""Patch matching, exact against fast, on this machine: time against LR size, fitted
exponents, FLOP counts at a large size, and (``--heldout``) agreement and SR PSNR-Y on the
held-out pairs with the bundled weights.

Timing: the matching op alone (:func:`frfsr.ops.patch_match` vs
:func:`frfsr.ops.fast_patch_match`, the latter with the backend's windowed-search kernel (the
native one on a CPU where it is built) and with the reference kernel) on per-pixel normalised random texture features of the
bundled model's width, LR side L (texture map L x L) against a Ref of side 4L (texture map
4L/4 = L x L). Exact sizes whose predicted time exceeds ``--exact-limit`` seconds are not
run but extrapolated from the fit over the measured exact sizes (marked "extrapolated").
Random features are the fast mode's worst case: no two cells share a candidate, so every
search cell gets the most flows. ``--photo NAME`` times the texture maps of a photo pair
instead (bundled weights): the LR is the photo's top-left 4L x 4L square shrunk 4x, the Ref
the 4L x 4L square a quarter of its side to the right (three quarters of it overlap).

    python benchmarks/bench_match.py                                   # timing table + FLOPs
    python benchmarks/bench_match.py --photo wallpapers:ColorfulCups   # the same on a held-out photo
    python benchmarks/bench_match.py --sizes 64 128 --heldout          # plus the held-out table
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

try:
    import frfsr  # noqa: F401
except ImportError:  # a source checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))   # frfsr_train (training, data, evaluation)

from frfsr import ops
from frfsr.devices import cpu_name
from frfsr.ops.fast_match import FAST_MATCH_DEFAULTS, flop_counts


def features(side: int, channels: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(1, channels, side, side, generator=g), dim=1)


def timed(fn, reps: int) -> float:
    best = math.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def fit_exponent(sizes, times) -> float:
    """Least-squares slope of log(time) against log(LR area)."""
    xs = [math.log(s * s) for s in sizes]
    ys = [math.log(t) for t in times]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


@torch.inference_mode()
def photo_features(side: int, photo: str, model) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised texture maps (LR, Ref) of ``photo`` for an LR of side ``side`` (see the module
    docstring)."""
    from frfsr_train.data.degrade import bicubic_downsample
    from frfsr_train.data.photos import load_photo
    img = load_photo(photo)
    n = 4 * side
    if img.shape[0] < n or img.shape[1] < n + side:
        raise ValueError(f"photo {photo!r} is {img.shape[0]}x{img.shape[1]}; LR {side} needs at least {n}x{n + side}")
    x = torch.from_numpy(img[:n, :n + side].copy()).permute(2, 0, 1)[None].float() / 255
    lr = torch.from_numpy(bicubic_downsample(np.ascontiguousarray(img[:n, :n]), 4)).permute(2, 0, 1)[None].float() / 255
    lr_tex = model.texture_encoder.encode_lr(F.interpolate(lr, scale_factor=4, mode="bicubic", align_corners=False))
    ref_tex = model.encode_refs(x[..., side:]).textures[0]
    return F.normalize(lr_tex, dim=1), F.normalize(ref_tex, dim=1)


def timing(sizes, make, exact_limit: float, reps: int) -> tuple[list[dict], dict]:
    """``make(side)``: the (query, key) texture maps for an LR of side ``side``."""
    rows, exact_measured = [], []
    for side in sizes:
        q, k = make(side)
        fast_t = timed(lambda: ops.fast_patch_match(q, k), reps)
        fast_ref_t = timed(lambda: ops.fast_patch_match(q, k, backend="reference"), reps)
        predicted = None
        if len(exact_measured) >= 2:
            e = fit_exponent([s for s, _ in exact_measured], [t for _, t in exact_measured])
            s0, t0 = exact_measured[-1]
            predicted = t0 * (side * side / (s0 * s0)) ** e
        if predicted is not None and predicted > exact_limit:
            exact_t, measured = predicted, False
        else:
            exact_t, measured = timed(lambda: ops.patch_match(q, k), 1 if side >= 128 else reps), True
            exact_measured.append((side, exact_t))
        rows.append({"lr": side, "ref": 4 * side, "exact": exact_t, "exact_measured": measured, "fast": fast_t,
                     "fast_ref": fast_ref_t})
        print(f"  LR {side}: fast {fast_t:.2f} s (reference kernel {fast_ref_t:.2f} s), exact {exact_t:.2f} s"
              f"{'' if measured else ' (extrapolated)'}", file=sys.stderr, flush=True)
    fits = {"fast": fit_exponent(sizes, [r["fast"] for r in rows]),
            "fast_ref": fit_exponent(sizes, [r["fast_ref"] for r in rows]),
            "exact": fit_exponent([s for s, _ in exact_measured], [t for _, t in exact_measured])}
    return rows, fits


@torch.inference_mode()
def heldout(n: int, patch: int, seed: int) -> list[dict]:
    """Per kind: share of LR positions where fast finds exact's match or one within 1e-3,
    and PSNR-Y of the SR with exact and with fast matching (bundled weights)."""
    from frfsr_train.data.views import heldout_pairs
    from frfsr.metrics import psnr_y
    from frfsr.models.correspondence import match_refs
    from frfsr import FRFSR
    model = FRFSR.from_pretrained(device="cpu")
    rows = []
    for kind in ("relevant", "medium", "hard", "unrelated"):
        items = heldout_pairs(kind, patch=patch, n=n, seed=seed)
        agree = total = 0
        srs = {"exact": [], "fast": []}
        for it in items:
            lr, ref = it["lr"][None], it["ref"][None]
            refs = model.encode_refs(ref)
            lr_tex = model.texture_encoder.encode_lr(F.interpolate(lr, scale_factor=4, mode="bicubic",
                                                                   align_corners=False))
            ke = match_refs(lr_tex, list(refs.textures), refs.layout, mode="exact")
            kf = match_refs(lr_tex, list(refs.textures), refs.layout, mode="fast")
            same = (ke[1] == kf[1]) & (ke[2] == kf[2])
            good = same | (kf[0] >= ke[0] - 1e-3)
            agree += int(good.sum())
            total += good.numel()
            for mode in srs:
                srs[mode].append(model.restore(lr, model.align(model.match(lr, refs, mode=mode))).sr.clamp(0, 1))
        hr = torch.stack([it["hr"] for it in items])
        p = {m: psnr_y(torch.cat(v), hr) for m, v in srs.items()}
        rows.append({"kind": kind, "agree": agree / total, "psnr_exact": p["exact"], "psnr_fast": p["fast"],
                     "n": n, "lr": items[0]["lr"].shape[-1], "ref": items[0]["ref"].shape[-1]})
        print(f"  {kind}: agree {100 * agree / total:.1f} %, PSNR-Y exact {p['exact']:.3f} fast {p['fast']:.3f}",
              file=sys.stderr, flush=True)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 192, 256, 384], help="LR sides (px)")
    p.add_argument("--channels", type=int, default=None, help="texture channels (default: the bundled model's)")
    p.add_argument("--photo", default=None,
                   help="time on this photo's texture maps (e.g. wallpapers:ColorfulCups) instead of random features")
    p.add_argument("--exact-limit", type=float, default=600.0,
                   help="extrapolate exact where the fit predicts more than this many seconds (default: %(default)s)")
    p.add_argument("--reps", type=int, default=2, help="timing repetitions, best kept (exact: 1 from LR 128)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--heldout", action="store_true", help="also the held-out agreement / PSNR-Y table")
    p.add_argument("--heldout-n", type=int, default=6)
    p.add_argument("--heldout-patch", type=int, default=256)
    p.add_argument("--no-timing", action="store_true")
    args = p.parse_args(argv)
    if not args.no_timing and len(set(args.sizes)) < 2:
        p.error(f"--sizes needs at least two different LR sides to fit the time exponent; got {args.sizes}")
    if args.threads:
        torch.set_num_threads(args.threads)
    channels = args.channels
    model = None
    if channels is None or args.photo:
        from frfsr import FRFSR
        model = FRFSR.from_pretrained(device="cpu")
        if channels is not None and channels != model.config.vgg_widths[2]:
            raise SystemExit(f"--channels {channels} does not match the bundled model's {model.config.vgg_widths[2]} "
                             "texture channels, which --photo uses")
        channels = model.config.vgg_widths[2]
    if args.photo:
        inputs = f"texture maps of photo {args.photo} (bundled weights)"
        make = lambda side: photo_features(side, args.photo, model)  # noqa: E731
    else:
        inputs = "random normalised features"
        make = lambda side: (features(side, channels, 1), features(side, channels, 2))  # noqa: E731
    command = "python benchmarks/bench_match.py " + " ".join(argv if argv is not None else sys.argv[1:])
    from frfsr.ops.custom_ops import kernel_backend
    kernel = kernel_backend(ops.requested_backend(), torch.device("cpu"))
    if kernel == "native":
        from frfsr.ops import native
        kernel += f" ({native.vector_width() * 32}-bit vectors)"
    print(f"Machine: {cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
          f"windowed-search kernel of the fast column: {kernel}; "
          f"date {time.strftime('%Y-%m-%d')}; fast parameters {FAST_MATCH_DEFAULTS}; texture channels {channels}; "
          f"timing inputs: {inputs}\n")
    if not args.no_timing:
        rows, fits = timing(args.sizes, make, args.exact_limit, args.reps)
        print("| LR | Ref | texture maps | exact (s) | fast (s) | speed-up | fast, reference kernel (s) | speed-up |")
        print("| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |")
        for r in rows:
            ex = f"{r['exact']:.2f}" + ("" if r["exact_measured"] else " (extrapolated)")
            print(f"| {r['lr']} | {r['ref']} | {r['lr']}x{r['lr']} vs {r['lr']}x{r['lr']} | {ex} | {r['fast']:.2f} | "
                  f"{r['exact'] / r['fast']:.1f}x | {r['fast_ref']:.2f} | {r['exact'] / r['fast_ref']:.1f}x |")
        print(f"\nFitted exponent of time against LR area: fast {fits['fast']:.2f} (reference kernel "
              f"{fits['fast_ref']:.2f}), exact {fits['exact']:.2f} (exact fitted over its measured sizes only)")
        fl = flop_counts(1000 * 1000, 1000 * 1000, channels)
        print(f"FLOPs at LR 1000 / Ref 4000 (texture maps 1000x1000 vs 1000x1000, {channels} channels): "
              f"exact {fl['exact']:.3g}, fast {fl['fast']:.3g} (coarse top-k {fl['fast_coarse']:.3g}, "
              f"windowed search {fl['fast_window']:.3g} with at most {fl['max_flows']} flows per search cell)")
    if args.heldout:
        rows = heldout(args.heldout_n, args.heldout_patch, 0)
        print("\n| Ref | pairs | LR | Ref | same match or within 1e-3 | PSNR-Y exact (dB) | PSNR-Y fast (dB) | diff (dB) |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for r in rows:
            print(f"| {r['kind']} | {r['n']} | {r['lr']} | {r['ref']} | {100 * r['agree']:.1f} % | {r['psnr_exact']:.3f} | "
                  f"{r['psnr_fast']:.3f} | {r['psnr_fast'] - r['psnr_exact']:+.3f} |")
    print(f"\nCommand: `{command.strip()}`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
