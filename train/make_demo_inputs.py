"""Regenerate the sample of ``frfsr demo`` (``frfsr/assets/demo/``) from a held-out photo.

    python train/make_demo_inputs.py                  # coffee, 400 x 400, into frfsr/assets/demo
    python train/make_demo_inputs.py --photo rocket --out DIR

Writes ``hr.png`` (the ground truth), ``lr.png`` (its bicubic x1/4) and ``ref.png`` (another
view of the same scene). Needs scikit-image (the ``train`` extra).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    import frfsr  # noqa: F401
except ImportError:  # a source checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from frfsr.demo import ASSETS


def make_demo_inputs(out_dir=ASSETS, photo: str = "coffee", hr_size: int = 400, seed: int = 3) -> Path:
    """Write ``hr.png``, ``lr.png`` and ``ref.png`` from a held-out scikit-image photo. The Ref
    is a :class:`~frfsr_train.data.views.ViewPairDataset` view of the same scene, never
    block-shuffled."""
    from PIL import Image

    from frfsr_train.data.views import HELDOUT_PHOTOS, ViewPairDataset, load_skimage_photos
    if photo not in HELDOUT_PHOTOS:
        raise ValueError(f"the demo uses a held-out photo ({', '.join(HELDOUT_PHOTOS)}), got {photo!r}")
    ds = ViewPairDataset(load_skimage_photos([photo]), patch=hr_size, length=1, p_unrelated=0.0, p_shuffle=0.0,
                         flip=False, seed=seed)
    item = ds[0]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for key in ("hr", "lr", "ref"):
        arr = item[key].permute(1, 2, 0).mul(255).round().clamp(0, 255).byte().numpy()
        Image.fromarray(arr).save(out / f"{key}.png", optimize=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(ASSETS), help="default: %(default)s")
    p.add_argument("--photo", default="coffee", help="a held-out scikit-image photo (default: %(default)s)")
    p.add_argument("--size", type=int, default=400, help="HR side (default: %(default)s)")
    p.add_argument("--seed", type=int, default=3)
    a = p.parse_args(argv)
    print(f"wrote {make_demo_inputs(a.out, a.photo, a.size, a.seed)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
