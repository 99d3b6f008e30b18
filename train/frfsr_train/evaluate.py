"""Evaluate a model on CUFED5 or a folder of (HR, Ref) pairs, as the Ref-SR literature does,
or on the held-out photos with real-input kinds (:mod:`frfsr_train.real_inputs`).

    python train/evaluate.py --model DIR --data ROOT --layout cufed5|pairs
                             [--levels 1,2,3,4,5] [--shuffle easy,medium,hard] --out DIR
    python train/evaluate.py --layout heldout [--weights A B] [--kinds clean jpeg50 ...]
                             [--ref-scales 1 0.71 0.5] [--ref-angles 0 30 -30] [--json out.json]

The LR is the HR (cropped to a multiple of 4) downsampled with PIL bicubic; the SR is
rounded to 8 bits (as when saved as PNG) and compared with the HR by PSNR and SSIM on the
Y channel of MATLAB's ``rgb2ycbcr`` (BT.601 studio range), ``--crop-border`` pixels (4)
removed on every side (:mod:`frfsr.metrics`). Rows are reported per Ref relevance level
(CUFED5: 1 = most similar ... 5 = least) and per Ref shuffle level (the Ref cut into 2x2 /
4x4 / 8x8 blocks and permuted, seeded per image), plus a bicubic baseline. LPIPS (AlexNet)
is added when the ``lpips`` package is installed and loads. Writes ``per_image.csv``,
``summary.csv`` and comparison images ``samples/NAME.png`` under ``--out`` and prints the
summary table.
"""
from __future__ import annotations

import argparse
import csv
import logging
import math
import sys
from collections import defaultdict
from pathlib import Path

import torch

from .seeds import seed_of

logger = logging.getLogger(__name__)

__all__ = ["evaluate", "summarize", "format_table", "configure_parser", "add_evaluate_parser", "main"]

FIELDS = ("name", "method", "ref_level", "shuffle", "psnr", "ssim", "lpips", "relevance")


def _load_model(path: str, device: str):
    from frfsr.models import FRFSR
    return FRFSR.from_pretrained(path, device=device)


def _load_lpips(device):
    """An LPIPS(AlexNet) callable on [0, 1] images, or None when unavailable."""
    try:
        import lpips
        net = lpips.LPIPS(net="alex", verbose=False).to(device).eval()
    except Exception as e:  # not installed, or its backbone weights cannot be loaded offline
        logger.info("LPIPS skipped: %s", e)
        return None
    return lambda a, b: float(net(a * 2 - 1, b * 2 - 1).mean())


def _conditions(item: dict, layout: str, levels):
    """(ref_level label, Ref tensor) pairs of one dataset item."""
    if layout == "cufed5":
        return [(str(lv), ref) for lv, ref in zip(item["ref_levels"], item["refs"]) if lv in levels]
    return [("-", item["ref"])]


def _label(img, text: str):
    from PIL import ImageDraw
    d = ImageDraw.Draw(img)
    box = d.textbbox((2, 2), text)
    d.rectangle((box[0] - 2, box[1] - 2, box[2] + 2, box[3] + 2), fill=(0, 0, 0))
    d.text((2, 2), text, fill=(255, 255, 255))
    return img


def _to_pil(t: torch.Tensor):
    from PIL import Image
    arr = (t.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(arr)


def _fit(img, size):
    """``img`` scaled to fit in ``size`` (w, h), centred on black."""
    from PIL import Image
    w, h = size
    s = min(w / img.width, h / img.height)
    small = img.resize((max(1, round(img.width * s)), max(1, round(img.height * s))), Image.BICUBIC)
    canvas = Image.new("RGB", size)
    canvas.paste(small, ((w - small.width) // 2, (h - small.height) // 2))
    return canvas


def _save_sample(path: Path, hr, bicubic, panels) -> None:
    """A grid: [bicubic | HR] then one [Ref | SR] row per condition."""
    from PIL import Image
    w, h = hr.shape[-1], hr.shape[-2]
    rows = [(_label(_to_pil(bicubic), "bicubic"), _label(_to_pil(hr), "HR"))]
    for text, ref, sr, psnr in panels:
        rows.append((_label(_fit(_to_pil(ref), (w, h)), f"Ref {text}"),
                     _label(_to_pil(sr), f"SR {text}  {psnr:.2f} dB")))
    grid = Image.new("RGB", (2 * w, h * len(rows)))
    for r, (a, b) in enumerate(rows):
        grid.paste(a, (0, r * h))
        grid.paste(b, (w, r * h))
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)


@torch.no_grad()
def evaluate(model, dataset, layout: str, levels=(1, 2, 3, 4, 5), shuffles=(), crop_border: int = 4,
             lpips_fn=None, samples: int = 0, out_dir=None, seed: int = 0, limit: int | None = None,
             progress: bool = True) -> list[dict]:
    """Per-image rows (dicts with :data:`FIELDS`) for ``dataset`` items (CUFED5Dataset with all
    levels, or PairFolderDataset). ``shuffles``: shuffle level names or ints, evaluated in
    addition to the unshuffled Ref."""
    from tqdm.auto import tqdm

    from .data import shuffle_blocks
    from frfsr.metrics import psnr_y, ssim_y
    device, dtype = model.device, model.dtype
    conds = [("none", None)] + [(str(s), s) for s in shuffles]
    n = len(dataset) if limit is None else min(limit, len(dataset))
    rows = []
    for idx in tqdm(range(n), desc="evaluate", unit="img", disable=not progress):
        item = dataset[idx]
        hr, lr = item["hr"], item["lr"].to(device, dtype)[None]
        name = item["name"]

        def metrics(img):
            return (psnr_y(img, hr, crop_border, quantize=True), ssim_y(img, hr, crop_border, quantize=True),
                    lpips_fn(img[None].to(device), hr[None].to(device)) if lpips_fn else None)

        p, s, lp = metrics(item["lr_up"])
        rows.append(dict(name=name, method="bicubic", ref_level="-", shuffle="-", psnr=p, ssim=s, lpips=lp,
                         relevance=None))
        panels = []
        for level, ref in _conditions(item, layout, levels):
            for shuffle_name, shuffle in conds:
                r = ref
                if shuffle is not None:
                    g = torch.Generator().manual_seed(seed_of(seed, name, level, shuffle_name))
                    r = shuffle_blocks(ref, shuffle, generator=g)
                corr = model.match(lr, r.to(device, dtype)[None])
                sr = model.restore(lr, model.align(corr)).sr[0].float().clamp(0, 1).cpu()
                p, s, lp = metrics(sr)
                rows.append(dict(name=name, method="frfsr", ref_level=level, shuffle=shuffle_name, psnr=p, ssim=s,
                                 lpips=lp, relevance=float(corr.relevance[0])))
                if idx < samples:
                    panels.append((f"L{level} {shuffle_name}" if layout == "cufed5" else shuffle_name, r, sr, p))
        if idx < samples and out_dir is not None:
            _save_sample(Path(out_dir) / "samples" / f"{name}.png", hr, item["lr_up"], panels)
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    """Mean metrics per (method, ref_level, shuffle), in first-seen order."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["method"], r["ref_level"], r["shuffle"])].append(r)
    out = []
    for (method, level, shuffle), rs in groups.items():
        row = {"method": method, "ref_level": level, "shuffle": shuffle, "n": len(rs)}
        for k in ("psnr", "ssim", "lpips", "relevance"):
            vals = [r[k] for r in rs if r[k] is not None]
            row[k] = sum(vals) / len(vals) if vals else None
        out.append(row)
    return out


def format_table(summary: list[dict]) -> str:
    """The summary as an aligned text table."""
    cols = ["method", "ref_level", "shuffle", "n", "psnr", "ssim", "lpips", "relevance"]
    fmt = {"psnr": "{:.2f}", "ssim": "{:.4f}", "lpips": "{:.4f}", "relevance": "{:.3f}"}

    def cell(row, c):
        v = row[c]
        if v is None:
            return "-"
        if isinstance(v, float) and math.isinf(v):
            return "inf"
        return fmt[c].format(v) if c in fmt else str(v)

    table = [cols] + [[cell(r, c) for c in cols] for r in summary]
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    lines = ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _write_csv(path: Path, rows: list[dict], fields) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(fields))
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r[k]) for k in fields})


# ---------------------------------------------------------------------- command line
def _int_list(text: str) -> list[int]:
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not vals or any(not 1 <= v <= 5 for v in vals):
        raise argparse.ArgumentTypeError(f"Ref levels are 1..5, got {text!r}")
    return vals


def _shuffle_list(text: str) -> list:
    from .data import SHUFFLE_LEVELS
    out = []
    for v in (s.strip() for s in text.split(",") if s.strip()):
        if v in SHUFFLE_LEVELS:
            out.append(v)
        elif v.isdigit() and int(v) >= 1:
            out.append(int(v))
        else:
            raise argparse.ArgumentTypeError(f"shuffle levels are {', '.join(SHUFFLE_LEVELS)} or positive ints, got {v!r}")
    return out


def configure_parser(p: argparse.ArgumentParser):
    """Add the evaluation arguments to ``p``; returns ``run(args) -> exit code``."""
    p.add_argument("--model", help="model folder (config.json + model.safetensors), "
                   "'frfsr-default' or a Hub repo id (required for cufed5 / pairs)")
    p.add_argument("--data", help="dataset root (cufed5 / pairs)")
    p.add_argument("--layout", required=True, choices=["cufed5", "pairs", "heldout"],
                   help="cufed5: ROOT/NNN_0 (HR) + NNN_1..5 (Refs); pairs: ROOT/hr/ + ROOT/ref/ or ROOT/NAME/{hr,ref}; "
                        "heldout: the held-out photos of frfsr_train.data.photos with real-input kinds (JPEG, noisy LRs, "
                        "Refs at other zooms and angles; no --data)")
    p.add_argument("--levels", type=_int_list, default=[1, 2, 3, 4, 5], help="CUFED5 Ref levels (default 1,2,3,4,5)")
    p.add_argument("--shuffle", type=_shuffle_list, default=[], help="also evaluate with shuffled Refs: easy,medium,hard")
    p.add_argument("--out", help="output folder for the CSVs and sample images (cufed5 / pairs)")
    p.add_argument("--crop-border", type=int, default=4, help="pixels removed per side before the metrics (default 4)")
    p.add_argument("--samples", type=int, default=4, help="comparison images for the first N images (default 4)")
    p.add_argument("--limit", type=int, help="evaluate the first N images only")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--no-lpips", dest="lpips", action="store_false", help="skip LPIPS even when installed")
    p.add_argument("--seed", type=int, default=0, help="seed of the Ref shuffles (heldout: of the crops)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    from .real_inputs import add_arguments
    add_arguments(p)
    return run


def run(args: argparse.Namespace) -> int:
    if args.layout == "heldout":
        from .real_inputs import run as run_heldout
        if args.weights and args.model:
            raise ValueError("give the models with --weights or --model, not both")
        return run_heldout(args)
    missing = [f"--{k}" for k in ("model", "data", "out") if not getattr(args, k)]
    if missing:
        raise ValueError(f"--layout {args.layout} needs {', '.join(missing)}")
    from .data import CUFED5Dataset, PairFolderDataset
    dataset = CUFED5Dataset(args.data) if args.layout == "cufed5" else PairFolderDataset(args.data)
    model = _load_model(args.model, args.device)
    lpips_fn = _load_lpips(model.device) if args.lpips else None
    out = Path(args.out)
    rows = evaluate(model, dataset, args.layout, levels=args.levels, shuffles=args.shuffle,
                    crop_border=args.crop_border, lpips_fn=lpips_fn, samples=args.samples, out_dir=out,
                    seed=args.seed, limit=args.limit, progress=not args.quiet)
    summary = summarize(rows)
    _write_csv(out / "per_image.csv", rows, FIELDS)
    _write_csv(out / "summary.csv", summary, ("method", "ref_level", "shuffle", "n", "psnr", "ssim", "lpips", "relevance"))
    print(format_table(summary))
    print(f"\nwrote {out / 'summary.csv'}, {out / 'per_image.csv'}" + (f", {out / 'samples'}/" if args.samples else ""))
    return 0


def add_evaluate_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``evaluate`` on an ``argparse`` subparsers object (``set_defaults(func=run)``)."""
    p = subparsers.add_parser("evaluate", help="PSNR / SSIM (Y channel) per Ref level and shuffle level",
                              description=__doc__.split("\n\n")[0])
    p.set_defaults(func=configure_parser(p))
    return p


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python train/evaluate.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    configure_parser(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"evaluate: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
