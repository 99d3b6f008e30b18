"""Evaluate models: PSNR / SSIM (Y channel) per Ref level and shuffle level on CUFED5 or pair
folders, or on the held-out photos with real inputs (``--layout heldout``: JPEG / noisy LRs,
Refs at other zooms and angles).

    python train/evaluate.py --model DIR --data CUFED5 --layout cufed5 --shuffle easy,medium,hard --out eval/
    python train/evaluate.py --layout heldout --weights frfsr-default frfsr-robust [--json out.json]

``--help`` lists every option; the code is :mod:`frfsr_train.evaluate`.
"""
import sys
from pathlib import Path

try:
    import frfsr  # noqa: F401
except ImportError:  # a source checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from frfsr_train.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
