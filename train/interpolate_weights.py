"""Interpolate two trained models of one architecture, weight by weight (a "model soup").

    python train/interpolate_weights.py frfsr-default outputs/robust_stage1/final --alpha 0.5 \
        --out outputs/robust_mix50

Writes ``(1 - alpha) * A + alpha * B`` as a model folder (``save_pretrained``). For a model B
fine-tuned from A (the robust weights from the bundled ones), the mix trades B's gains on
degraded LRs against A's results on clean ones, without training (Wortsman et al., "Robust
fine-tuning of zero-shot models", CVPR 2022, call this WiSE-FT). Integer buffers are copied
from B; the two state dicts must have the same keys and shapes.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    import frfsr  # noqa: F401
except ImportError:  # a source checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from frfsr import FRFSR


def interpolate(a: FRFSR, b: FRFSR, alpha: float) -> FRFSR:
    """A copy of ``b`` whose floating-point weights are ``(1 - alpha) * a + alpha * b``."""
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1]; got {alpha}")
    sa, sb = a.state_dict(), b.state_dict()
    if sa.keys() != sb.keys() or any(sa[k].shape != sb[k].shape for k in sa):
        raise ValueError("the two models have different architectures (state dict keys or shapes differ)")
    mixed = {k: torch.lerp(sa[k].float(), sb[k].float(), alpha).to(sb[k].dtype) if sb[k].is_floating_point()
             else sb[k] for k in sb}
    out = FRFSR(b.config)
    out.load_state_dict(mixed)
    return out.eval()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("a", help="model A: a folder, a Hub repo id or frfsr-default (alpha 0)")
    p.add_argument("b", help="model B (alpha 1)")
    p.add_argument("--alpha", type=float, required=True, help="weight of B, in [0, 1]")
    p.add_argument("--out", required=True, help="the model folder to write")
    args = p.parse_args(argv)
    load = lambda name: FRFSR.from_pretrained(None if name == "frfsr-default" else name)  # noqa: E731
    model = interpolate(load(args.a), load(args.b), args.alpha)
    model.save_pretrained(args.out, description=f"(1 - {args.alpha}) x {args.a} + {args.alpha} x {args.b}, "
                                                "weight by weight (train/interpolate_weights.py)")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
