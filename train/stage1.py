"""Stage-1 training of FRFSR: `accelerate launch train/stage1.py --config train/configs/paper_stage1.yaml`.

train/train.py for a stage-1 config; see `--help` for the options.
"""
import runpy
from pathlib import Path

if __name__ == "__main__":
    runpy.run_path(str(Path(__file__).with_name("train.py")))["launch"](stage=1)
