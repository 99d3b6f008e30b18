"""PSNR-Y / SSIM-Y of model folders on held-out photos (never trained on), as a markdown table.

Real-input kinds (the default; :mod:`frfsr_train.real_inputs`, the same code as
``python train/evaluate.py --layout heldout``): the held-out photos of every source of
:mod:`frfsr_train.data.photos` (fetch them first: ``python train/fetch_photos.py``), an LR that is
clean, saved as JPEG (q50 / 70 / 90) or blurred and noisy, with a Ref that is another view at
the same zoom, at half or twice the zoom, rotated 15 or 30 degrees, the LR itself (the model
alone) or another photo. Per kind: bicubic, the model with the kind's Ref, the model alone,
the gain over bicubic, the Ref's gain over the model alone and the mean relevance.

    python benchmarks/eval_default.py                                   # the bundled weights
    python benchmarks/eval_default.py --weights default outputs/run/final --names bundled new
    python benchmarks/eval_default.py --kinds clean jpeg50 --sources skimage --json out.json

``--views``: the earlier table instead, on :func:`frfsr_train.data.views.heldout_pairs`
(scikit-image's coffee, rocket and chelsea only): ``relevant`` (another view of the same
scene), ``unrelated`` (a Ref from another held-out photo) and ``easy`` / ``medium`` /
``hard`` (the relevant Ref cut into 2x2 / 4x4 / 8x8 shuffled blocks); all kinds share their
HR crops, so the bicubic row is one row. Metrics: :func:`frfsr.metrics.psnr_y` / ``ssim_y``
(4-px border crop, float images).

    python benchmarks/eval_default.py --views outputs/default_stage2/final outputs/default_stage2_noreuse/final \
        --names "stage 2, reuse" "stage 2, no reuse"        # compare model folders
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import torch

try:
    import frfsr  # noqa: F401
except ImportError:  # a source checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))   # frfsr_train (training, data, evaluation)

from frfsr_train import real_inputs
from frfsr_train.data.degrade import bicubic_upsample
from frfsr_train.data.views import HELDOUT_KINDS, heldout_pairs
from frfsr.metrics import psnr_y, ssim_y


def load_model(name):
    """An eval-mode FRFSR from a folder, or the bundled weights for None / 'default'."""
    from frfsr import FRFSR
    return FRFSR.from_pretrained(None if name in (None, "default") else name, device="cpu")


@torch.inference_mode()
def super_resolve(model, items: list[dict], batch: int = 8) -> torch.Tensor:
    """SR of every item's LR with its own Ref, in batches: (N, 3, 4h, 4w)."""
    out = []
    for i in range(0, len(items), batch):
        chunk = items[i:i + batch]
        lr = torch.stack([it["lr"] for it in chunk])
        ref = torch.stack([it["ref"] for it in chunk])
        out.append(model(lr, ref).clamp(0, 1))
    return torch.cat(out)


def evaluate(models: dict, kinds=HELDOUT_KINDS, patch: int = 128, n: int = 24, seed: int = 0) -> list[dict]:
    """Rows ``{model, kind, psnr, ssim, n}``: one bicubic row, then every model x kind."""
    rows = []
    for k, kind in enumerate(kinds):
        items = heldout_pairs(kind, patch=patch, n=n, seed=seed)
        hr = torch.stack([it["hr"] for it in items])
        if k == 0:
            bic = torch.stack([bicubic_upsample(it["lr"], 4) for it in items]).clamp(0, 1)
            rows.append({"model": "bicubic", "kind": "(any Ref)", "psnr": psnr_y(bic, hr), "ssim": ssim_y(bic, hr), "n": n})
        for name, model in models.items():
            sr = super_resolve(model, items)
            rows.append({"model": name, "kind": kind, "psnr": psnr_y(sr, hr), "ssim": ssim_y(sr, hr), "n": n})
    return rows


def markdown(rows: list[dict], command: str) -> str:
    """The rows as a markdown table whose last column is the command reproducing them."""
    lines = ["| model | Ref | PSNR-Y (dB) | SSIM-Y | pairs | command |", "|---|---|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['kind']} | {r['psnr']:.2f} | {r['ssim']:.4f} | {r['n']} | `{command}` |")
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--views" in argv:
        return main_views([a for a in argv if a != "--views"])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="*", help="model folders (same as --weights)")
    p.add_argument("--seed", type=int, default=0, help="seed of the crops")
    p.add_argument("--device", default="cpu")
    real_inputs.add_arguments(p)
    args = p.parse_args(argv)
    if args.models and args.weights:
        p.error("give the models as arguments or with --weights, not both")
    args.weights = args.models or args.weights
    command = "python benchmarks/eval_default.py " + " ".join(shlex.quote(a) for a in argv)
    try:
        return real_inputs.run(args, command=command.strip())
    except (ValueError, FileNotFoundError) as e:
        p.exit(2, f"eval_default: error: {e}\n")


def main_views(argv=None) -> int:
    """The earlier table (``--views``): heldout_pairs kinds on scikit-image's held-out photos."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="*", default=["default"],
                   help="model folders (config.json + model.safetensors); 'default' = the bundled weights")
    p.add_argument("--names", nargs="*", help="a label per model (default: the folder names)")
    p.add_argument("--kinds", nargs="*", default=list(HELDOUT_KINDS), choices=HELDOUT_KINDS)
    p.add_argument("--patch", type=int, default=128, help="HR side of the held-out crops (default: %(default)s)")
    p.add_argument("--n", type=int, default=24, help="pairs per kind (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.names or args.models
    if len(names) != len(args.models):
        p.error("give one --names label per model")
    t0 = time.perf_counter()
    models = {name: load_model(m) for name, m in zip(names, args.models)}
    rows = evaluate(models, args.kinds, args.patch, args.n, args.seed)
    command = "python benchmarks/eval_default.py --views " + " ".join(shlex.quote(a) for a in (argv or []))
    print(markdown(rows, command.strip()))
    print(f"\n({time.perf_counter() - t0:.1f} s; held-out photos only, patch {args.patch}, {args.n} pairs per kind, "
          f"seed {args.seed})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
