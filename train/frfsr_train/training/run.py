"""Command line of ``train/train.py`` and of ``train/stage1.py`` / ``train/stage2.py`` (which check the
config's stage); run them with ``accelerate launch``."""
from __future__ import annotations

import argparse
import logging
import sys

from .config import config_from_command_line

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
    """Run the command line; returns the exit code: 0 done, 1 a failed run (data, init
    weights, output folder, disk, resume, a diverged loss: one line on stderr), 2 a bad
    command line or config, 130 interrupted."""
    parser = build_parser(stage)
    args = parser.parse_args(argv)
    cfg = config_from_command_line(parser, args.config, args.set, output_dir=args.output_dir,
                                   max_steps=args.max_steps)
    if stage is not None and cfg.stage != stage:
        parser.error(f"{args.config} is a stage-{cfg.stage} config; run train/stage{cfg.stage}.py with it")
    problem = _output_dir_problem(cfg.train.output_dir)
    if problem:
        return _fail(problem)
    try:
        return _train(cfg, args)
    except KeyboardInterrupt:
        print("train: interrupted; the checkpoints already written are complete (resume with --resume)",
              file=sys.stderr)
        return 130
    except OSError as e:                      # disk full at a checkpoint, unreadable data, ...
        from frfsr._fs import describe_os_error
        return _fail(describe_os_error(e))
    except (ValueError, TypeError, RuntimeError, MemoryError) as e:   # data, init weights, resume, diverged loss
        return _fail(e)


def _fail(message) -> int:
    text = " ".join(line.strip() for line in str(message).splitlines() if line.strip())
    print(f"error: {text or type(message).__name__}", file=sys.stderr)
    return 1


def _output_dir_problem(output_dir) -> str | None:
    """Why ``output_dir`` cannot hold the run (a file, a folder that cannot be written), or None."""
    import os
    from pathlib import Path
    out = Path(output_dir)
    existing = next((a for a in (out, *out.parents) if a.exists()), None)
    if existing is None:
        return None
    if not existing.is_dir():
        return (f"train.output_dir {out}: {existing} is a file, not a folder; give a folder path "
                "(--output_dir or --set train.output_dir=...)")
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"train.output_dir {out}: the folder {existing} is not writable"
    return None


def _train(cfg, args) -> int:
    from .loop import Trainer
    trainer = Trainer(cfg)
    logging.basicConfig(level=logging.INFO if trainer.acc.is_main_process else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    trainer.fit(resume=args.resume, stop_after=args.stop_after)
    if args.dump_rank_hashes:
        trainer.dump_rank_state()
    return 0
