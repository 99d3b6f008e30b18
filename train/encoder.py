"""Contrastive training of the FRFSR texture encoder on skimage photos (known correspondence).

    python train/encoder.py --config train/configs/encoder_default.yaml \
        [--output_dir outputs/encoder_default] [--max_steps N] [--max_minutes M] [--set train.lr=1e-3]
    accelerate launch train/encoder.py --config ...        # same, on the configured devices

Writes ``texture_encoder.safetensors`` (``texture_encoder.*`` keys, load into an FRFSR of the
same config with ``load_state_dict(sd, strict=False)``), ``encoder.json`` (configs and held-out
matching accuracy before / after) and ``log.jsonl``. The config is an
:class:`frfsr_train.training.config.EncoderConfig`, read by the loader of the restoration
net's configs (the same overrides and messages); the training is
:func:`frfsr_train.training.contrastive.train_encoder`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    import frfsr  # noqa: F401
except ImportError:  # a source checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from frfsr_train.training.config import EncoderConfig, config_from_command_line  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True, help="YAML file (sections model, data, degradation, train, eval)")
    ap.add_argument("--output_dir", default=None, help="default: the config's output_dir, else outputs/<config name>")
    ap.add_argument("--max_steps", type=int, default=None, help="override train.steps")
    ap.add_argument("--max_minutes", type=float, default=None, help="stop after this much wall time (and save)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override any config key, e.g. --set train.lr=1e-3 --set data.p_shuffle=0")
    args = ap.parse_args(argv)
    config = config_from_command_line(ap, args.config, args.set, kind=EncoderConfig, steps=args.max_steps,
                                      max_minutes=args.max_minutes)
    output_dir = args.output_dir or config.output_dir or f"outputs/{Path(args.config).stem}"
    from frfsr_train.training.contrastive import train_encoder
    train_encoder(config, output_dir)


if __name__ == "__main__":
    main()
