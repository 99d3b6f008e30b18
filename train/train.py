"""Training of FRFSR, either stage (the config's ``stage`` says which):
`accelerate launch train/train.py --config train/configs/paper_stage1.yaml`.

train/stage1.py and train/stage2.py run this script, refusing a config of the other stage.
All logic lives in :mod:`frfsr_train.training`; see `--help` for the options.
"""
import sys
from pathlib import Path

try:
    import frfsr  # noqa: F401
except ImportError:  # running from a source checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from frfsr_train.training.run import main


def launch(stage: int | None = None) -> None:
    """Run the command line; ``stage`` (1 or 2): refuse a config of the other stage."""
    sys.exit(main(stage=stage))


if __name__ == "__main__":
    launch()
