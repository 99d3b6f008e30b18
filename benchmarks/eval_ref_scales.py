"""Does the Ref scale pyramid pay? PSNR-Y of the bundled weights on held-out photos, for a Ref
at the LR's zoom and a Ref shot 2x closer, matched as given or with a pyramid.

A held-out photo (scikit-image's coffee, rocket, chelsea: never trained on) at half its
resolution gives the HR crop (and the LR, its bicubic 1/4); the Ref is a crop around the same
place: at the HR's resolution shifted by a quarter of its side ("same zoom"), or the HR's
central half from the full-resolution photo ("2x closer": twice the detail over half the
field of view, what a closer shot gives).

    python benchmarks/eval_ref_scales.py --n 4 --patch 96
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

try:
    import frfsr  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))   # frfsr_train (training, data, evaluation)

from frfsr_train.data.views import HELDOUT_PHOTOS, load_skimage_photos
from frfsr.metrics import psnr_y
from frfsr.models.frfsr import RefViews

PYRAMIDS = {"as given": (1.0,), "1, 0.71, 0.5": (1.0, 0.71, 0.5), "1, 0.5": (1.0, 0.5)}


def _down(x, f):
    return F.interpolate(x, scale_factor=f, mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)


def pairs(n: int, patch: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for name, arr in load_skimage_photos(HELDOUT_PHOTOS).items():
        full = torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div(255).unsqueeze(0)
        half = _down(full, 0.5)
        H, W = half.shape[-2:]
        for _ in range(n):
            s = patch // 4
            y = int(torch.randint(0, H - patch - s, (1,), generator=g))
            x = int(torch.randint(0, W - patch - s, (1,), generator=g))
            hr = half[..., y:y + patch, x:x + patch]
            same = half[..., y + s: y + s + patch, x + s: x + s + patch]        # the scene, shifted by a quarter
            cy, cx = 2 * (y + s), 2 * (x + s)                                  # the HR's central half, 2x the detail
            closer = full[..., cy: cy + patch, cx: cx + patch]
            out.append({"photo": name, "hr": hr, "lr": _down(hr, 0.25), "same zoom": same, "2x closer": closer})
    return out


@torch.inference_mode()
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=4, help="crops per held-out photo")
    ap.add_argument("--patch", type=int, default=96, help="HR crop side")
    args = ap.parse_args(argv)
    from frfsr import FRFSRPipeline
    pipe = FRFSRPipeline.from_pretrained()
    pipe.relevance_threshold = None
    model = pipe.model
    items = pairs(args.n, args.patch)
    hr = torch.cat([it["hr"] for it in items])
    bic = torch.cat([F.interpolate(it["lr"], scale_factor=4, mode="bicubic", align_corners=False) for it in items])
    own = torch.cat([model(it["lr"], it["lr"]) for it in items]).clamp(0, 1)
    print(f"{len(items)} pairs, HR {args.patch}px; bicubic {psnr_y(bic.clamp(0, 1), hr):.2f} dB, "
          f"LR as its own Ref {psnr_y(own, hr):.2f} dB")
    print("| Ref | pyramid | PSNR-Y (dB) | gain over bicubic | seconds |")
    print("| --- | --- | ---: | ---: | ---: |")
    base = psnr_y(bic.clamp(0, 1), hr)
    for kind in ("same zoom", "2x closer"):
        for label, scales in PYRAMIDS.items():
            t = time.perf_counter()
            sr = torch.cat([model(it["lr"], model.encode_refs(it[kind], views=RefViews(scales))) for it in items]).clamp(0, 1)
            p = psnr_y(sr, hr)
            print(f"| {kind} | {label} | {p:.2f} | {p - base:+.2f} | {time.perf_counter() - t:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
