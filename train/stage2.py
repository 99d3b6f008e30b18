"""Stage-2 training of FRFSR: `accelerate launch train/stage2.py --config train/configs/paper_stage2.yaml`.

train/train.py for a stage-2 config; see `--help` for the options.
"""
import runpy
from pathlib import Path

if __name__ == "__main__":
    runpy.run_path(str(Path(__file__).with_name("train.py")))["launch"](stage=2)
