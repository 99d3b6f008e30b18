"""``frfsr demo``: super-resolve the bundled sample and write a comparison image, offline.

The sample (``frfsr/assets/demo/``) is cut from scikit-image's ``coffee`` photo, one of the
held-out photos the default weights never saw (the training data's held-out list):

* ``hr.png``: a 400 x 400 crop (the ground truth, used only to print PSNR-Y);
* ``lr.png``: its bicubic x1/4 downsampling (100 x 100), the input;
* ``ref.png``: another view of the same scene (shifted, zoomed, rotated, colour-changed),
  the reference. ``python train/make_demo_inputs.py`` regenerates all three.

The demo writes ``sr.png`` and ``comparison.png``: four columns (bicubic | FRFSR | Ref |
match confidence) with, below each, one region enlarged (for the Ref column, the Ref
warped onto that region: the texture the model transferred).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = ["ASSETS", "PANEL", "ZOOM_REGION", "COLUMNS", "comparison_size", "run_demo", "DemoResult"]

ASSETS = Path(__file__).resolve().parent / "assets" / "demo"
PANEL = 400             # side of each panel in the comparison (HR pixels)
ZOOM_REGION = 100       # side of the enlarged region (HR pixels), shown PANEL/ZOOM_REGION times larger
LABEL_H = 22            # height of a caption band
GAP = 6                 # white space between panels
COLUMNS = ("bicubic", "FRFSR", "Ref", "confidence")


def comparison_size(panel: int = PANEL) -> tuple[int, int]:
    """(width, height) of ``comparison.png``: 4 columns; caption + panel + caption + zoom."""
    n = len(COLUMNS)
    return n * panel + (n + 1) * GAP, 2 * (LABEL_H + panel) + 3 * GAP


def _load(path: Path) -> torch.Tensor:
    from PIL import Image
    arr = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255
    return torch.from_numpy(arr).permute(2, 0, 1)[None].contiguous()


def _bicubic_x4(lr: torch.Tensor) -> torch.Tensor:
    """(1, 3, h, w) -> (1, 3, 4h, 4w): PIL's bicubic filter on each float channel (mode F), clamped to [0, 1]."""
    from PIL import Image
    h, w = lr.shape[-2:]
    planes = [np.asarray(Image.fromarray(c.numpy()).resize((4 * w, 4 * h), Image.BICUBIC)) for c in lr[0].float()]
    return torch.from_numpy(np.stack(planes)).clamp_(0, 1)[None]


def _b4(t: torch.Tensor) -> torch.Tensor:
    """A float CPU tensor with batch (and channel) dims: (1, C, H, W)."""
    t = t.detach().float().cpu()
    while t.dim() < 4:
        t = t[None]
    return t


def _to_pil(t: torch.Tensor):
    from PIL import Image
    arr = t[0].clamp(0, 1).permute(1, 2, 0).mul(255).round().byte().cpu().numpy()
    return Image.fromarray(arr)


def _confidence_image(conf: torch.Tensor, size: int):
    """Confidence (1, 1, h, w) in [-1, 1] -> a colour map (dark blue low, yellow high) at ``size``."""
    from PIL import Image
    c = conf[0, 0].clamp(0, 1).cpu().numpy()
    rgb = np.stack([c, 0.2 + 0.6 * c, 0.6 * (1 - c)], -1)
    img = Image.fromarray((rgb * 255).round().astype(np.uint8))
    return img.resize((size, size), Image.NEAREST)


def _region(sr: torch.Tensor, bic: torch.Tensor, r: int) -> tuple[int, int]:
    """Top-left (y, x) of the ``r`` x ``r`` window where FRFSR differs most from bicubic."""
    diff = (sr - bic).abs().mean(1, keepdim=True)
    score = torch.nn.functional.avg_pool2d(diff, r, stride=max(1, r // 4))
    idx = int(score.flatten().argmax())
    y, x = divmod(idx, score.shape[-1])
    return y * max(1, r // 4), x * max(1, r // 4)


def _comparison(bic, sr, ref, warped, conf, region: tuple[int, int]):
    from PIL import Image, ImageDraw
    w, h = comparison_size(PANEL)
    canvas = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(canvas)
    y0, x0 = region
    r, hr_side = ZOOM_REGION, sr.shape[-1]
    scale = PANEL / hr_side
    conf_big = _confidence_image(conf, hr_side)
    ref_img = _to_pil(ref).resize((PANEL, PANEL), Image.BICUBIC)
    tops = [_to_pil(bic).resize((PANEL, PANEL), Image.NEAREST), _to_pil(sr).resize((PANEL, PANEL), Image.NEAREST),
            ref_img, conf_big.resize((PANEL, PANEL), Image.NEAREST)]
    box = (x0, y0, x0 + r, y0 + r)
    zooms = [_to_pil(bic).crop(box), _to_pil(sr).crop(box), _to_pil(warped).crop(box), conf_big.crop(box)]
    captions = ["bicubic", "FRFSR (default weights)", "Ref", "match confidence (0..1)"]
    zoom_captions = ["bicubic, enlarged", "FRFSR, enlarged", "Ref warped onto the region", "confidence, enlarged"]
    for i, (top, zoom) in enumerate(zip(tops, zooms)):
        x = GAP + i * (PANEL + GAP)
        draw.text((x + 4, GAP + 4), captions[i], fill="black")
        canvas.paste(top, (x, GAP + LABEL_H))
        if i != 2:              # mark the enlarged region (the Ref is not on the LR grid)
            s = [x + box[0] * scale, GAP + LABEL_H + box[1] * scale, x + box[2] * scale, GAP + LABEL_H + box[3] * scale]
            draw.rectangle(s, outline=(255, 0, 0), width=2)
        yz = 2 * GAP + LABEL_H + PANEL
        draw.text((x + 4, yz + 4), zoom_captions[i], fill="black")
        canvas.paste(zoom.resize((PANEL, PANEL), Image.NEAREST), (x, yz + LABEL_H))
    return canvas


@dataclass
class DemoResult:
    """Paths written and what was measured."""

    sr_path: Path
    comparison_path: Path
    psnr_bicubic: float | None
    psnr_frfsr: float | None
    relevance: float
    load_s: float
    run_s: float


def run_demo(out_dir="demo_out", model=None, device: str = "cpu", assets=ASSETS) -> DemoResult:
    """Super-resolve ``assets/lr.png`` with ``assets/ref.png`` and write ``sr.png`` and
    ``comparison.png`` to ``out_dir``. ``model``: a folder / Hub id, None = the bundled
    default weights. PSNR-Y is measured when ``assets/hr.png`` exists."""
    from .metrics import psnr_y
    from .pipeline import FRFSRPipeline

    assets, out = Path(assets), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    pipe = FRFSRPipeline.from_pretrained(model, device=device)
    pipe.set_progress_bar_config(disable=True)
    t1 = time.perf_counter()
    lr, ref = _load(assets / "lr.png"), _load(assets / "ref.png")
    with torch.inference_mode():
        res = pipe(lr[0].to(pipe.device), ref[0].to(pipe.device), return_details=True, output_type="pt")
    sr = _b4(res.images)
    t2 = time.perf_counter()
    bic = _bicubic_x4(lr)
    _to_pil(sr).save(out / "sr.png")
    region = _region(sr, bic, ZOOM_REGION)
    comp = _comparison(bic, sr, ref, _b4(res.warped_ref), _b4(torch.as_tensor(res.confidence)), region)
    comp.save(out / "comparison.png")
    p_bic = p_sr = None
    if (assets / "hr.png").is_file():
        hr = _load(assets / "hr.png")
        p_bic, p_sr = psnr_y(bic, hr), psnr_y(sr, hr)
    return DemoResult(out / "sr.png", out / "comparison.png", p_bic, p_sr, float(res.relevance), t1 - t0, t2 - t1)


def main(args) -> int:
    """The ``frfsr demo`` command (see :mod:`frfsr.cli`)."""
    r = run_demo(args.output, model=args.model, device=args.device)
    print(f"wrote {r.sr_path}\nwrote {r.comparison_path}")
    print(f"model load {r.load_s:.1f} s, super-resolution {r.run_s:.1f} s; Ref relevance {r.relevance:.2f}")
    if r.psnr_frfsr is not None:
        print(f"PSNR-Y against the ground truth: bicubic {r.psnr_bicubic:.2f} dB, FRFSR {r.psnr_frfsr:.2f} dB")
    return 0
