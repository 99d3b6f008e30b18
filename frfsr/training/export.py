"""Final weights in the pretrained-folder format the pipeline loads: ``config.json``
(:meth:`FRFSRConfig.to_json`) + ``model.safetensors`` (the :class:`FRFSR` state dict)."""
from __future__ import annotations

from pathlib import Path

import torch

from ..config import FRFSRConfig
from ..models import FRFSR

__all__ = ["export_pretrained", "read_export", "load_pretrained"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def export_pretrained(model: FRFSR, out_dir, description: str | None = None) -> Path:
    """Write ``model`` so that ``FRFSRPipeline.from_pretrained(out_dir)`` loads it, through the
    pipeline's ``save_pretrained`` (config.json, model.safetensors, model card) when
    :mod:`frfsr.pipeline` is available, else config.json + model.safetensors directly."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    try:
        from ..pipeline import FRFSRPipeline
    except ImportError:
        FRFSRPipeline = None
    if FRFSRPipeline is not None and hasattr(FRFSRPipeline, "save_pretrained"):
        modes = [(m, m.training) for m in model.modules()]
        try:
            FRFSRPipeline(model).save_pretrained(out, description=description)
            return out
        finally:
            for m, mode in modes:               # the pipeline puts the model in eval mode
                m.training = mode
    from safetensors.torch import save_file
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / WEIGHTS_NAME), metadata={"format": "pt"})
    model.config.to_json(out / CONFIG_NAME)
    return out


def read_export(path) -> tuple[FRFSRConfig, dict[str, torch.Tensor]]:
    """(config, state dict) of an exported folder."""
    p = Path(path)
    cfg_file, weights = p / CONFIG_NAME, p / WEIGHTS_NAME
    if not cfg_file.is_file() or not weights.is_file():
        raise FileNotFoundError(f"{p} is not an FRFSR export: it needs {CONFIG_NAME} and {WEIGHTS_NAME}")
    from safetensors.torch import load_file
    return FRFSRConfig.from_json(cfg_file), load_file(str(weights))


def load_pretrained(path, device=None) -> FRFSR:
    """An :class:`FRFSR` model from an exported folder, in eval mode (through
    ``FRFSRPipeline.from_pretrained`` when the pipeline is available)."""
    try:
        from ..pipeline import FRFSRPipeline
    except ImportError:
        FRFSRPipeline = None
    if FRFSRPipeline is not None:
        return FRFSRPipeline.from_pretrained(str(path), device=device or "cpu").model.eval()
    cfg, state = read_export(path)
    model = FRFSR(cfg)
    model.load_state_dict(state, strict=True)
    return model.to(device or "cpu").eval()
