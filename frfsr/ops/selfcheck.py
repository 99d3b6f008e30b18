"""First-use self-check of the fused (Triton) kernels on a real device.

Before an operator first runs its fused kernel for a (operator, device, dtype), the kernel
and the reference op run on a small input of that dtype on that device (forward, and
backward for ``deform_conv`` and ``ddf``). If the fused kernel raises (a compile error, an
unsupported instruction, a launch failure) or disagrees with the reference beyond the
dtype's tolerance, one ``RuntimeWarning`` says so and that (operator, device, dtype) runs
the reference op from then on, in this process; otherwise the fused kernel runs. The outcome
is recorded, :func:`report` lists it and ``frfsr info`` prints it (running the check for
the current device).

This is the only way the fused backend falls back, and it is decided once, before the first
fused result is produced: a process never mixes fused and reference results for one
(operator, device, dtype). It applies to GPU tensors only; CPU tensors (which run the fused
kernels only under the Triton interpreter, in tests) skip it, so CPU runs cost nothing more.
``FRFSR_FUSED_SELFCHECK=0`` turns it off (the fused kernels then always run).
"""
from __future__ import annotations

import os
import threading
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

OPERATORS = ("patch_match", "window_match", "deform_conv", "ddf")


@dataclass(frozen=True)
class Outcome:
    operator: str
    device: str
    dtype: str
    ok: bool
    detail: str          # "" when ok, else what failed


_results: dict[tuple[str, str, str], Outcome] = {}
_lock = threading.Lock()


def enabled() -> bool:
    return os.environ.get("FRFSR_FUSED_SELFCHECK", "1").strip().lower() not in ("0", "false", "no", "off")


def _applies(device: torch.device) -> bool:
    """GPU devices only (CUDA and ROCm)."""
    return device.type == "cuda"


def use_fused(operator: str, device: torch.device, dtype: torch.dtype) -> bool:
    """True when ``operator`` may run its fused kernel for ``device`` and ``dtype``: the
    self-check passed (running it on first use) or does not apply. False: run the reference."""
    if not _applies(device) or not enabled():
        return True
    key = (operator, str(device), str(dtype))
    outcome = _results.get(key)
    if outcome is None:
        with _lock:
            outcome = _results.get(key)
            if outcome is None:
                outcome = _run(operator, device, dtype)
                _results[key] = outcome
                if not outcome.ok:
                    warnings.warn(f"frfsr: the fused {operator} kernel failed its self-check on {device} for {dtype} "
                                  f"({outcome.detail}); the reference op runs instead for this operator, device and "
                                  "dtype", RuntimeWarning, stacklevel=3)
    return outcome.ok


def report() -> list[Outcome]:
    """The self-checks run so far in this process."""
    return list(_results.values())


def check_device(device: torch.device, dtypes=(torch.float32, torch.bfloat16)) -> list[Outcome]:
    """Run the self-check of every operator for ``device`` and ``dtypes`` (``frfsr info``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for op in OPERATORS:
            for dt in dtypes:
                use_fused(op, device, dt)
    return [o for o in report() if o.device == str(device)]


def _reset() -> None:
    """Forget every outcome (tests)."""
    _results.clear()


# --------------------------------------------------------------------------------------
# the checks
# --------------------------------------------------------------------------------------
def _tolerance(dtype: torch.dtype) -> float:
    # relative to the largest reference value (at least 1): fp32 may run tf32 dots (about 1e-3),
    # half dtypes round operands and results to 8 / 11 bits; a wrong kernel is off by O(1)
    return 5e-2 if dtype in (torch.float16, torch.bfloat16) else 5e-3


def _compare(name: str, actual, expected, tol: float) -> str:
    if actual is None or expected is None:
        return "" if actual is None and expected is None else f"{name}: missing"
    if actual.shape != expected.shape:
        return f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    a, e = actual.float(), expected.float()
    if not torch.isfinite(a).all():
        return f"{name}: non-finite values"
    scale = max(1.0, e.abs().max().item())
    err = (a - e).abs().max().item()
    return f"{name}: max abs error {err:.3g} > {tol:.1g} x {scale:.3g}" if err > tol * scale else ""


def _separated(device, dtype, g):
    """A normalised key and a query cropped from it: every query patch has one clear best
    match (index known), whatever the precision."""
    key = F.normalize(torch.randn(1, 16, 10, 11, generator=g), dim=1)
    query = key[..., 2:8, 3:10].clone()
    return query.to(device, dtype), key.to(device, dtype)


def _check(operator: str, device: torch.device, dtype: torch.dtype) -> str:
    from . import reference as ref
    from . import triton as fused
    from . import window
    g = torch.Generator().manual_seed(1234)
    tol = _tolerance(dtype)
    if operator in ("patch_match", "window_match"):
        query, key = _separated(device, dtype, g)
        if operator == "patch_match":
            f_score, f_index = fused.patch_match(query, key, 3)
            r_score, r_index = ref.patch_match(query, key, 3)
        else:
            hq, wq = query.shape[-2] - 2, query.shape[-1] - 2
            flows = torch.zeros(1, 2, 3, 2, 2, dtype=torch.int64)
            flows[..., 0, 0], flows[..., 0, 1] = 2, 3                   # the true displacement first
            flows[..., 1, 0], flows[..., 1, 1] = 0, -1
            flows = flows[:, : -(-hq // 4), : -(-wq // 4)].to(device)
            f_score, f_index = fused.window_match(query, key, flows, 4, 1, 3)
            r_score, r_index = window.window_match(query, key, flows, 4, 1, 3)
        if not torch.equal(f_index.cpu(), r_index.cpu()):
            return "index differs from the reference"
        return _compare("score", f_score, r_score, tol)
    if operator == "deform_conv":
        x = torch.randn(1, 16, 6, 7, generator=g)
        off = torch.randn(1, 2 * 2 * 9, 5, 6, generator=g) * 2
        mask = torch.rand(1, 2 * 9, 5, 6, generator=g)
        w = torch.randn(8, 16, 3, 3, generator=g) * 0.2
        b = torch.randn(8, generator=g)
        go = torch.randn(1, 8, 5, 6, generator=g)
        x, off, mask, w, b, go = (t.to(device, dtype) for t in (x, off, mask, w, b, go))
        problems = [_compare("output", fused.deform_conv(x, off, mask, w, b), ref.deform_conv(x, off, mask, w, b), tol)]
        needs = (True, True, True, True, True)
        f_grads = fused.deform_conv_backward(go, x, off, mask, w, b, 1, 1, 1, needs)
        r_grads = ref.deform_conv_backward(go.float(), x.float(), off.float(), mask.float(), w.float(), b.float(),
                                           (1, 1), (1, 1), (1, 1), needs)
        for name, a, e in zip(("grad_x", "grad_offset", "grad_mask", "grad_weight", "grad_bias"), f_grads, r_grads):
            problems.append(_compare(name, a, e, tol))
        return "; ".join(p for p in problems if p)
    if operator == "ddf":
        x = torch.randn(1, 8, 6, 7, generator=g)
        cf = torch.randn(1, 8, 9, generator=g)
        sf = torch.randn(1, 9, 6, 7, generator=g)
        go = torch.randn(1, 8, 6, 7, generator=g)
        x, cf, sf, go = (t.to(device, dtype) for t in (x, cf, sf, go))
        problems = [_compare("output", fused.ddf(x, cf, sf, 3, 1), ref.ddf(x, cf, sf, 3, 1), tol)]
        f_grads = fused.ddf_backward(go, x, cf, sf, 3, 1, (True, True, True))
        r_grads = ref.ddf_backward(go.float(), x.float(), cf.float(), sf.float(), 3, 1, (True, True, True))
        for name, a, e in zip(("grad_x", "grad_channel_filter", "grad_spatial_filter"), f_grads, r_grads):
            problems.append(_compare(name, a, e.reshape(a.shape) if e is not None and a is not None else e, tol))
        return "; ".join(p for p in problems if p)
    raise ValueError(f"unknown operator {operator!r}")


def _run(operator: str, device: torch.device, dtype: torch.dtype) -> Outcome:
    try:
        with torch.no_grad():
            detail = _check(operator, device, dtype)
    except Exception as exc:  # noqa: BLE001 - any failure of the fused kernel means: use the reference
        detail = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}"
    return Outcome(operator, str(device), str(dtype), not detail, detail)
