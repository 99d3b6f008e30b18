"""Command line of ``train/train.py`` and of ``train/stage1.py`` / ``train/stage2.py`` (which check the
config's stage); run them with ``accelerate launch``."""
from __future__ import annotations

import argparse
import logging
import sys

from .config import ConfigError, load_config, parse_overrides

__all__ = ["build_parser", "main"]


def build_parser(stage: int | None = None) -> argparse.ArgumentParser:
    what = f"stage-{stage}" if stage else "FRFSR"
    p = argparse.ArgumentParser(description=f"Train the {what} model (run with `accelerate launch`).")
    p.add_argument("--config", required=True, help="YAML training config (train/configs/*.yaml)")
    p.add_argument("--output_dir", help="override train.output_dir")
    p.add_argument("--max_steps", type=int, help="override train.max_steps")
    p.add_argument("--resume", nargs="?", const="latest", default=None, metavar="CKPT",
                   help="resume from the latest checkpoint of output_dir (or from the given checkpoint folder); "
                        "starts from scratch when there is none")
    p.add_argument("--stop_after", type=int, metavar="N",
                   help="stop after step N without exporting, as a killed run would (testing)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set data.root=/data/CUFED --set optim.lr=2e-4")
    p.add_argument("--dump_rank_hashes", action="store_true",
                   help="write every process's weight hash to <output_dir>/rank_state/ (testing)")
    return p


def main(argv=None, stage: int | None = None) -> int:
    parser = build_parser(stage)
    args = parser.parse_args(argv)
    try:
        overrides = parse_overrides(args.set)
        if args.output_dir is not None:
            overrides.setdefault("train", {})["output_dir"] = args.output_dir
        if args.max_steps is not None:
            overrides.setdefault("train", {})["max_steps"] = args.max_steps
        cfg = load_config(args.config, overrides)
    except ConfigError as e:
        parser.error(str(e))
    if stage is not None and cfg.stage != stage:
        parser.error(f"{args.config} is a stage-{cfg.stage} config; run train/stage{cfg.stage}.py with it")
    from .loop import Trainer
    trainer = Trainer(cfg)
    logging.basicConfig(level=logging.INFO if trainer.acc.is_main_process else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    from .loop import NonFiniteLossError
    try:
        trainer.fit(resume=args.resume, stop_after=args.stop_after)
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.dump_rank_hashes:
        trainer.dump_rank_state()
    return 0
