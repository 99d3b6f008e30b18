"""Validation of inputs and of loaded weights, with messages that say what was wrong and
what is accepted."""
from __future__ import annotations

import torch

MIN_LR_SIZE = 15    # the ESA branch at LR scale needs a 7x7 max-pool window after a stride-2 conv
MIN_REF_SIZE = 12   # 3x3 texture patches at 1/4 scale


class FRFSRWarning(UserWarning):
    """Something about the inputs or settings makes the result less useful, or the run
    slower, than it could be (e.g. a Ref that hardly matches the LR)."""


def check_image(t, name: str, min_size: int, check_finite: bool = True, what: str = "") -> torch.Tensor:
    """A (B, 3, H, W) floating tensor in [0, 1], at least ``min_size`` on each side
    (``what``: "LR" or "Ref", for the message).

    ``check_finite``: NaN/Inf raise ``ValueError`` (one host sync). Under ``torch.compile``
    the check is an assertion inside the graph instead (no graph break): ``RuntimeError`` on
    CPU, a device-side assertion on CUDA; pass False to leave it out."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (B, 3, H, W), got {type(t).__name__}")
    if t.dim() != 4:
        raise ValueError(f"{name} must be 4-D (B, 3, H, W); got a {t.dim()}-D tensor of shape {tuple(t.shape)}")
    if t.shape[1] != 3:
        raise ValueError(f"{name} must have 3 (RGB) channels in dim 1; got shape {tuple(t.shape)} "
                         "(convert grayscale or RGBA to RGB first, or use FRFSRPipeline, which does)")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor with values in [0, 1], got dtype {t.dtype} "
                        "(for 8-bit images use img.float() / 255)")
    if t.shape[0] < 1:
        raise ValueError(f"{name} has an empty batch")
    h, w = t.shape[-2:]
    if h < min_size or w < min_size:
        raise ValueError(f"{name} is {h}x{w}; the minimum {what + ' ' if what else ''}size is {min_size}x{min_size}")
    if check_finite:
        finite = torch.isfinite(t).all()
        if torch.compiler.is_compiling():
            # a traced graph cannot branch on tensor values: the check runs as an assertion in the graph
            torch._assert_async(finite, f"{name} contains NaN or Inf values")
        elif not bool(finite):
            raise ValueError(f"{name} contains NaN or Inf values")
    return t


def check_dtype(t: torch.Tensor, name: str, dtype: torch.dtype) -> None:
    if t.dtype != dtype and not torch.is_autocast_enabled(t.device.type):
        raise TypeError(f"{name} has dtype {t.dtype} but the model's weights are {dtype}; "
                        f"convert the input with .to({dtype}) or the model with .to({t.dtype})")


def check_state_dict(state: dict, model: torch.nn.Module, what: str) -> None:
    """ValueError naming every missing, unexpected or mis-shaped tensor of the weights
    ``state`` for ``model`` (``what`` names the file)."""
    ours = model.state_dict()
    problems = {"wrong shapes": [f"{k}: {tuple(state[k].shape)} in the file, {tuple(ours[k].shape)} for this config"
                                 for k in ours if k in state and state[k].shape != ours[k].shape],
                "non-float": [f"{k}: {str(state[k].dtype).replace('torch.', '')}" for k in ours
                              if k in state and ours[k].is_floating_point() and not state[k].is_floating_point()],
                "missing": sorted(set(ours) - set(state)), "unexpected": sorted(set(state) - set(ours))}
    found = [f"{len(v)} {title} ({'; '.join(v[:4])}{', ...' if len(v) > 4 else ''})" for title, v in problems.items() if v]
    if found:
        accepted = ("; weights are float32, float16, bfloat16 or float64" if problems["non-float"] else "")
        raise ValueError(f"{what} does not fit the config: " + ", ".join(found) + accepted)


def check_finite_state_dict(state: dict, what: str) -> None:
    """ValueError naming the floating tensors that hold NaN or Inf (weights that would turn
    every output into NaN)."""
    floats = [v for v in state.values() if v.is_floating_point()]
    if not floats or bool(torch.isfinite(torch.cat([v.reshape(-1).float() for v in floats])).all()):
        return                             # one pass over all weights; names are looked up only on failure
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    raise ValueError(f"{what} holds non-finite weights (NaN or Inf) in {len(bad)} tensor(s): "
                     f"{', '.join(bad[:6])}{', ...' if len(bad) > 6 else ''}; the file is damaged or was saved "
                     "from a diverged training run")
