"""Stage-1 training of FRFSR: `accelerate launch train/stage1.py --config train/configs/paper_stage1.yaml`.

All logic lives in :mod:`frfsr.training`; see `--help` for the options.
"""
import sys
from pathlib import Path

try:
    import frfsr  # noqa: F401
except ImportError:  # running from a source checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from frfsr.training.run import main

if __name__ == "__main__":
    sys.exit(main(stage=1))
