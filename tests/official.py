"""Helpers to rebuild the authors' deterministic fixture weights by parameter NAME and
convert them to frfsr's layout (tests only)."""
from __future__ import annotations

import zlib
from pathlib import Path

import torch
from safetensors.torch import load_file

from frfsr import FRFSR, FRFSRConfig
from frfsr.convert import official_to_frfsr

FIXTURES = Path(__file__).parent / "fixtures"
IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def official_entries():
    """(name, shape, kind) of every official stage-1 state-dict entry, in order."""
    out = []
    for line in (FIXTURES / "official_stage1_param_names.txt").read_text().splitlines():
        name, rest = line.split(" ", 1)
        shape_txt, kind = rest.rsplit(" ", 1)
        shape = tuple(int(s) for s in shape_txt.strip("()").split(",") if s.strip())
        out.append((name, shape, kind))
    return out


def seeded_tensor(name: str, shape, gain: float = 0.5) -> torch.Tensor:
    """The fixtures' weight recipe: float64 randn seeded by crc32(name), scaled, cast to float32."""
    g = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    if len(shape) >= 2:
        fan_in = 1
        for s in shape[1:]:
            fan_in *= s
        x = x * gain / fan_in ** 0.5
    else:
        x = x * 0.02
    if "conv_offset_mask" in name:
        x = x * 0.1
    return x.to(torch.float32)


def official_seeded_state_dict() -> dict:
    sd = {}
    for name, shape, kind in official_entries():
        if kind == "buffer":
            sd[name] = torch.tensor(IMAGENET[name.rsplit(".", 1)[1]]).view(shape)
        else:
            sd[name] = seeded_tensor(name, shape)
    return sd


def seeded_paper_model() -> FRFSR:
    model = FRFSR(FRFSRConfig.paper()).eval()
    converted, report = official_to_frfsr(official_seeded_state_dict(), model.state_dict().keys())
    assert report.ok, str(report)
    model.load_state_dict(converted, strict=True)
    return model


def load_fixture(name: str) -> dict:
    return load_file(str(FIXTURES / name))
