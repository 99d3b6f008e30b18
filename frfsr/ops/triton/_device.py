"""What the fused wrappers ask about the device they launch on, in one place.

Every decision a wrapper takes from the device (is this a GPU tensor, which compile target is
it, may ``tl.dot`` take tf32 operands there, how many multiprocessors does it have, which
device context to launch under) goes through a function of this module, so that
:mod:`frfsr.ops.triton.aot` can run the wrappers on meta tensors that *describe* GPU tensors
and record, for a chosen compile target, the kernel specialisations they would launch.
"""
from __future__ import annotations

import contextlib
import functools

import torch


def is_interpreted(kernel) -> bool:
    """True when ``kernel`` runs under the Triton interpreter (``TRITON_INTERPRET=1``)."""
    return type(kernel).__name__ == "InterpretedFunction"


def on_gpu(t: torch.Tensor) -> bool:
    """True for tensors the compiled kernels run on (CUDA and ROCm devices are both "cuda")."""
    return t.device.type == "cuda"


def device_ctx(t: torch.Tensor):
    """The context a launch on ``t``'s device runs under."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


@functools.lru_cache(maxsize=None)
def _target(index: int):
    import triton
    with torch.cuda.device(index):
        return triton.runtime.driver.active.get_current_target()


def target(device: torch.device):
    """The ``triton.backends.compiler.GPUTarget`` of a GPU device."""
    return _target(device.index if device.index is not None else torch.cuda.current_device())


@functools.lru_cache(maxsize=None)
def _dot_precisions(tgt) -> tuple:
    from triton.compiler import make_backend
    return tuple(make_backend(tgt).parse_options({}).allowed_dot_input_precisions)


def tf32_dot(device: torch.device) -> bool:
    """True where ``tl.dot`` accepts ``input_precision="tf32"`` (NVIDIA sm_80 and later, AMD
    gfx942; not gfx90a, gfx950 or RDNA GPUs, where Triton knows only 'ieee' and the bf16x3/x6
    splits), as Triton's backend for the device's target says."""
    return "tf32" in _dot_precisions(target(device))


def fp32_dot_precision(device: torch.device, want_tf32: bool) -> str:
    """``input_precision`` of an fp32-operand ``tl.dot``: 'tf32' when asked for and the device
    has it, else 'ieee'."""
    return "tf32" if want_tf32 and tf32_dot(device) else "ieee"


def sm_count(device: torch.device) -> int:
    """Number of multiprocessors (CUDA SMs, AMD compute units) of a GPU device."""
    return torch.cuda.get_device_properties(device).multi_processor_count
