"""Contrastive training of the FRFSR texture encoder on skimage photos (known correspondence).

    python train/encoder.py --config train/configs/encoder_default.yaml \
        [--output_dir outputs/encoder_default] [--max_steps N] [--max_minutes M]
    accelerate launch train/encoder.py --config ...        # same, on the configured devices

Writes ``texture_encoder.safetensors`` (``texture_encoder.*`` keys, load into an FRFSR of the
same config with ``load_state_dict(sd, strict=False)``), ``encoder.json`` (configs and held-out
matching accuracy before / after) and ``log.jsonl``. See train/frfsr_train/training/contrastive.py.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))     # run from a checkout without installing

from frfsr_train.training.contrastive import train_encoder  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True, help="YAML file (sections model, data, train, eval)")
    ap.add_argument("--output_dir", default=None, help="default: the config's output_dir, else outputs/<config name>")
    ap.add_argument("--max_steps", type=int, default=None, help="override train.steps")
    ap.add_argument("--max_minutes", type=float, default=None, help="stop after this much wall time (and save)")
    args = ap.parse_args(argv)
    config = yaml.safe_load(Path(args.config).read_text()) or {}
    output_dir = args.output_dir or config.pop("output_dir", None) or f"outputs/{Path(args.config).stem}"
    config.pop("output_dir", None)
    train_encoder(config, output_dir, max_steps=args.max_steps, max_minutes=args.max_minutes)


if __name__ == "__main__":
    main()
