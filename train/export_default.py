"""Export a trained model folder as the bundled default weights (``frfsr/weights/default``).

    python train/export_default.py outputs/default_stage2_noreuse/final --card train/default_card.md
    python train/export_default.py outputs/compact_stage1/checkpoints/ckpt-000800 --card ... --out DIR

``model`` is an exported model folder or a training checkpoint (``<output_dir>/checkpoints/
ckpt-N``: its architecture comes from the run's ``config_stage1.yaml`` or ``config_stage2.yaml``
beside ``checkpoints/``).
Writes config.json, model.safetensors (float32, or ``--fp16``) and README.md (the library's
model card around the text of ``--card``, which states data, steps, machine and results).
The weights are checked to load back through ``FRFSRPipeline.from_pretrained()`` offline.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

try:
    import frfsr  # noqa: F401
except ImportError:  # a source checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from frfsr import FRFSR
from frfsr.hub import BUNDLED_DIR, WEIGHTS_NAME

MAX_BYTES = 20 * 2 ** 20


def from_checkpoint(ckpt: Path) -> FRFSR:
    """The model of a training checkpoint folder (accelerate state of a stage-1 or stage-2 run).

    The architecture comes from the run's ``config_stage1.yaml`` (the preset) or
    ``config_stage2.yaml`` (the stage-1 export's ``config.json`` that ``init.stage1`` names,
    made a feature-reuse model when ``init.reuse``)."""
    from safetensors.torch import load_file

    from frfsr import FRFSRConfig
    from frfsr.hub import CONFIG_NAME
    from frfsr_train.training.config import load_config
    from frfsr_train.training.stage2 import stage2_config

    run = ckpt.parent.parent
    if (run / "config_stage2.yaml").is_file():
        cfg = load_config(run / "config_stage2.yaml")
        config = stage2_config(FRFSRConfig.from_json(Path(cfg.init.stage1) / CONFIG_NAME), cfg.init.reuse)
    else:
        cfg = load_config(run / "config_stage1.yaml")
        config = FRFSRConfig.preset(cfg.model.preset, **cfg.model.overrides)
    model = FRFSR(config)
    state = {k.removeprefix("model."): v for k, v in load_file(str(ckpt / "model.safetensors")).items()}
    model.load_state_dict(state, strict=True)
    return model


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="the trained model folder (e.g. outputs/default_stage2_noreuse/final)")
    p.add_argument("--card", required=True, help="markdown file: the model card's description")
    p.add_argument("--out", default=str(BUNDLED_DIR), help="default: %(default)s")
    p.add_argument("--fp16", action="store_true", help="store float16 weights (half the size)")
    args = p.parse_args(argv)
    src = Path(args.model)
    model = from_checkpoint(src) if (src / "trainer_state.json").is_file() else FRFSR.from_pretrained(args.model)
    if args.fp16:
        model = model.to(torch.float16)
    out = model.save_pretrained(args.out, description=Path(args.card).read_text().strip())
    size = (out / WEIGHTS_NAME).stat().st_size
    if size > MAX_BYTES:
        raise SystemExit(f"{out / WEIGHTS_NAME} is {size / 2 ** 20:.1f} MiB, over the {MAX_BYTES // 2 ** 20} MiB package limit; use --fp16")
    os.environ["HF_HUB_OFFLINE"] = "1"
    FRFSR.from_pretrained(str(out))
    print(f"wrote {out} ({size / 2 ** 20:.1f} MiB {WEIGHTS_NAME})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
