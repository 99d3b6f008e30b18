"""Fused cosine patch matching (Triton).

For every ``p x p`` query patch the kernel finds the best-matching ``p x p`` key patch
without ever writing the (Nq x Nk) similarity matrix:

* patch vectors are formed outside the kernel with ``F.unfold`` (memory
  ``O(C*p*p*(h*w + H*W))``) and L2-normalised in PyTorch: key patches by
  ``||k|| + 1e-5``, query patches by ``||q|| + 1e-5`` (the latter turns the best
  correlation directly into the score, ``<q, k^>/(||q||+1e-5)``);
* one program owns ``BLOCK_M`` query patches of one batch sample (grid =
  ``(cdiv(Nq, BLOCK_M), B)``, no Python loop over the batch) and sweeps all key patches
  in ``BLOCK_N`` tiles; each tile is a blocked matrix product over the patch dimension
  (``tl.dot``, fp32 accumulation) and is folded into a running max/argmax held in
  registers. Ties keep the lowest key index (left tie-break inside a tile, strict ``>``
  across tiles, which are visited in increasing order).

Precision: on CUDA the normalised patch vectors are cast to bfloat16 by default (fp32
accumulation), or fed as fp32 with ``precision="tf32"`` / ``"ieee"``; under the Triton
interpreter (CPU tensors) everything stays fp32 (``"ieee"``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ..reference import check_patch_match_args
from . import _device
from ._device import is_interpreted as _is_interpreted

_EPS = 1e-5


# Sizes and batch strides change with every tile and Ref: no specialisation on them (value 1,
# divisibility by 16), or each new size would compile anew; the key rows are padded to a
# multiple of 16 values (s_kd) so their alignment is always known. Nq_bucket / Nk_bucket
# (powers of two) are the autotuner's key in place of the exact sizes.
@triton.jit(do_not_specialize=["Nq", "Nk", "s_qb", "s_kb", "s_sb", "s_ib", "Nq_bucket", "Nk_bucket"])
def _patch_match_kernel(
    q_ptr, k_ptr, score_ptr, index_ptr,
    Nq, Nk, D,
    s_qb, s_qm, s_qd,
    s_kb, s_kd, s_kn,
    s_sb, s_ib,
    Nq_bucket, Nk_bucket,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pid_m = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)

    # 64-bit offsets where a product reaches 2^31: the (Nq, D) queries and (D, Nk) keys of a
    # 4000 px Ref hold 2304 x 1e6 values; within a tile the offsets stay 32-bit
    m0 = pid_m * BLOCK_M
    ar_m = tl.arange(0, BLOCK_M)
    offs_m = m0 + ar_m
    m_mask = offs_m < Nq
    q_base = q_ptr + b * s_qb + m0.to(tl.int64) * s_qm + ar_m[:, None] * s_qm
    k_base = k_ptr + b * s_kb
    s_kd64 = s_kd.to(tl.int64)
    ar_d = tl.arange(0, BLOCK_D)

    best = tl.full([BLOCK_M], float("-inf"), tl.float32)
    best_idx = tl.zeros([BLOCK_M], tl.int32)

    for n0 in range(0, Nk, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        n_mask = offs_n < Nk
        acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        for d0 in range(0, D, BLOCK_D):
            offs_d = d0 + ar_d
            d_mask = offs_d < D
            a = tl.load(q_base + offs_d[None, :] * s_qd,
                        mask=m_mask[:, None] & d_mask[None, :], other=0.0)
            k_rows = k_base + d0 * s_kd64
            kb = tl.load(k_rows + ar_d[:, None] * s_kd + offs_n[None, :] * s_kn,
                         mask=d_mask[:, None] & n_mask[None, :], other=0.0)
            acc = tl.dot(a, kb, acc, input_precision=PRECISION)
        acc = tl.where(n_mask[None, :], acc, float("-inf"))
        tile_max = tl.max(acc, axis=1)
        tile_arg = tl.argmax(acc, axis=1, tie_break_left=True).to(tl.int32) + n0
        upd = tile_max > best
        best = tl.where(upd, tile_max, best)
        best_idx = tl.where(upd, tile_arg, best_idx)

    tl.store(score_ptr + b * s_sb + offs_m, best, mask=m_mask)
    tl.store(index_ptr + b * s_ib + offs_m, best_idx.to(tl.int64), mask=m_mask)


# Configs compiled ahead of time for NVIDIA and AMD targets (frfsr.ops.triton.aot; BENCHMARKS.md).
_CUDA_CONFIGS_BF16 = [
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_D": 32}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_D": 64}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_D": 64}, num_warps=8, num_stages=4),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_D": 64}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_D": 32}, num_warps=4, num_stages=4),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_D": 32}, num_warps=4, num_stages=2),
]
_CUDA_CONFIGS_FP32 = [
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_D": 32}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_D": 32}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_D": 32}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_D": 16}, num_warps=4, num_stages=3),
]


def _fits_the_device(configs, named_args, **kwargs):
    """Autotuner prune: on RDNA GPUs (gfx11xx, gfx12xx: 64 KiB of LDS, wave32) keep the configs
    whose pipelined operand tiles fit in 64 KiB (the largest bf16 ones took 96 KiB there)."""
    q = named_args["q_ptr"]
    tgt = _device.target(q.device)
    if tgt.backend != "hip" or not str(tgt.arch).startswith(("gfx11", "gfx12")):
        return configs
    size = q.element_size()
    fit = [c for c in configs
           if (c.kwargs["BLOCK_M"] + c.kwargs["BLOCK_N"]) * c.kwargs["BLOCK_D"] * size * c.num_stages <= 65536]
    return fit or configs[-1:]


if _is_interpreted(_patch_match_kernel):
    _AUTOTUNED = {}
else:  # pragma: no cover - needs a GPU
    _PRUNE = {"early_config_prune": _fits_the_device}
    _AUTOTUNED = {
        "bf16": triton.autotune(configs=_CUDA_CONFIGS_BF16, key=["Nq_bucket", "Nk_bucket", "D"],
                                prune_configs_by=_PRUNE)(_patch_match_kernel),
        "fp32": triton.autotune(configs=_CUDA_CONFIGS_FP32, key=["Nq_bucket", "Nk_bucket", "D", "PRECISION"],
                                prune_configs_by=_PRUNE)(_patch_match_kernel),
    }


def _default_precision(t: torch.Tensor) -> str:
    return "bf16" if _device.on_gpu(t) else "ieee"


def _bucket(n: int) -> int:
    """The autotuner's size class of ``n``: the next power of two, at least 1024 (the configs
    differ in tiles of 64-128 rows; a re-tune per power of two is plenty)."""
    return max(1024, triton.next_power_of_2(max(1, n)))


def _operands(qp: torch.Tensor, kp: torch.Tensor, dtype: torch.dtype):
    """The kernel's operands from the (B, D, N) patch vectors: queries (B, Nq, D) with D
    contiguous, keys (B, D, Nk) with Nk contiguous and rows padded to a multiple of 16 values
    (any row and batch strides work: tests hand out rows more than 2^31 apart)."""
    B, D, Nk = kp.shape
    q = qp.transpose(1, 2).to(dtype).contiguous()
    k = kp.new_empty(B, D, -(-Nk // 16) * 16, dtype=dtype)
    k[..., :Nk] = kp
    return q, k


@torch.no_grad()
def patch_match(query: torch.Tensor, key: torch.Tensor, patch_size: int = 3,
                max_block_elems: int | None = None, precision: str | None = None):
    """Best cosine match of every query patch among all key patches.

    ``query`` (B, C, h, w) and ``key`` (B, C, H, W) are per-pixel L2-normalised by the
    caller. Returns ``score`` (B, h-p+1, w-p+1) float32 and ``index`` (same shape, int64,
    row-major into the (H-p+1, W-p+1) key-patch grid). ``max_block_elems`` exists for
    signature compatibility with the reference (which chunks its similarity matrix); the
    fused kernel only ever holds ``BLOCK_M x BLOCK_N`` similarities in registers, so it is
    ignored. ``precision``: ``"bf16"`` (CUDA default), ``"tf32"`` or ``"ieee"`` (fp32
    operands; the only choice under the interpreter). The kernel has no backward: call
    :func:`frfsr.ops.patch_match` (the ``frfsr::patch_match`` custom operator) for a
    differentiable score.
    """
    del max_block_elems
    p = check_patch_match_args(query, key, patch_size)
    B, C, h, w = query.shape
    H, W = key.shape[-2:]
    interpreted = _is_interpreted(_patch_match_kernel)
    if not _device.on_gpu(query) and not interpreted:
        raise RuntimeError("frfsr.ops.triton.patch_match needs CUDA tensors (or TRITON_INTERPRET=1 for CPU tensors)")
    if precision is None:
        precision = _default_precision(query)
    if interpreted:
        precision = "ieee"  # the interpreter has no bf16/tf32 dot
    if precision not in ("bf16", "tf32", "ieee"):
        raise ValueError(f"unknown precision {precision!r}")

    hq, wq = h - p + 1, w - p + 1
    hk, wk = H - p + 1, W - p + 1
    Nq, Nk, D = hq * wq, hk * wk, C * p * p

    # Patch vectors: (B, D, N). Normalise in fp32.
    qp = F.unfold(query.float(), p)
    kp = F.unfold(key.float(), p)
    qp = qp / (qp.norm(dim=1, keepdim=True) + _EPS)
    kp = kp / (kp.norm(dim=1, keepdim=True) + _EPS)
    op_dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    qp, kp = _operands(qp, kp, op_dtype)
    # bf16 operands ignore the input precision ('ieee' compiles on every target); tf32 only
    # where the device has it (not AMD gfx90a / gfx950 / RDNA), 'ieee' elsewhere
    if precision == "tf32" and not interpreted:
        dot_precision = _device.fp32_dot_precision(query.device, True)
    else:
        dot_precision = "ieee"

    score = torch.empty(B, Nq, device=query.device, dtype=torch.float32)
    index = torch.empty(B, Nq, device=query.device, dtype=torch.int64)
    args = (qp, kp, score, index, Nq, Nk, D,
            qp.stride(0), qp.stride(1), qp.stride(2),
            kp.stride(0), kp.stride(1), kp.stride(2),
            score.stride(0), index.stride(0), _bucket(Nq), _bucket(Nk))
    if interpreted:
        bm = min(64, max(16, triton.next_power_of_2(Nq)))
        bn = min(64, max(16, triton.next_power_of_2(Nk)))
        bd = min(64, max(16, triton.next_power_of_2(D)))
        _patch_match_kernel[(triton.cdiv(Nq, bm), B)](*args, BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd,
                                                       PRECISION=dot_precision)
    else:  # pragma: no cover - needs a GPU
        grid = lambda meta: (triton.cdiv(Nq, meta["BLOCK_M"]), B)  # noqa: E731
        with _device.device_ctx(query):
            _AUTOTUNED["bf16" if precision == "bf16" else "fp32"][grid](*args, PRECISION=dot_precision)
    score = score.view(B, hq, wq)
    index = index.view(B, hq, wq)
    if query.is_floating_point() and query.dtype != torch.float32:
        score = score.to(query.dtype)
    return score, index
