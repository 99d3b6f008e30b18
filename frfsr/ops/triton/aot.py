"""Ahead-of-time compilation of every kernel specialisation the fused wrappers launch, for GPU
targets this machine does not have (no GPU needed; Triton ships ptxas and the AMD linker).

1. *Record.* :func:`record_launches` runs the wrappers of :mod:`frfsr.ops.triton` on meta
   tensors that describe GPU tensors (shapes, strides, dtypes) with the launch itself replaced
   by a recorder (``JITFunction.run``; an autotuned kernel records every config it would try),
   and with the device questions of :mod:`frfsr.ops.triton._device` answered for the chosen
   target (tf32 dots or not, multiprocessor count). Nothing runs and nothing is allocated, so
   16 MP sizes cost nothing.
2. *Specialise.* Each launch is specialised by Triton's own launch-time binder
   (``create_function_from_signature`` + ``JITFunction._pack_args``): ints equal to 1 become
   constants, multiples of 16 get the divisibility attribute, ints of 2^31 and more become
   i64, exactly as a launch on the device would. Identical specialisations are compiled once.
3. *Compile* with ``triton.compile`` to a cubin (NVIDIA) or hsaco (AMD) and read the register
   count, spills and shared memory: from ptxas's ``-v`` log on NVIDIA, from the AMDGCN
   assembly's kernel descriptor on AMD.

:func:`check` applies the limits (shared memory per target, spills per kernel budget,
:data:`SPILL_BUDGET`). Run it in a process without ``TRITON_INTERPRET`` (the interpreter
replaces the kernels): ``python -m frfsr.ops.triton.aot`` or
``benchmarks/bench_kernels_aot.py``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import re
from typing import Callable, Iterable

import torch

# Compile targets: (backend, arch, warp size) and the largest shared memory a block may use
# (NVIDIA: the opt-in maximum per block; AMD: 64 KiB of LDS).
TARGETS = {
    "sm_80": (("cuda", 80, 32), 166912),
    "sm_86": (("cuda", 86, 32), 101376),
    "sm_89": (("cuda", 89, 32), 101376),
    "sm_90": (("cuda", 90, 32), 232448),
    "gfx942": (("hip", "gfx942", 64), 65536),
    "gfx90a": (("hip", "gfx90a", 64), 65536),
    "gfx1100": (("hip", "gfx1100", 32), 65536),
}

# Spill budget (bytes of spill stores + loads on NVIDIA; spilled registers x 4 or scratch
# bytes on AMD) per kernel on NVIDIA targets: none where spills cost, in the inner loops of
# the windowed search and the input backward of the deformable conv. Every other kernel, and
# every kernel on AMD, is held to DEFAULT_SPILL_BUDGET, a bound that still catches a config
# that falls off a cliff.
SPILL_BUDGET = {
    "_window_match_kernel": 0,
    "_dcn_bwd_input_kernel": 0,
}
DEFAULT_SPILL_BUDGET = 2048


@dataclasses.dataclass
class Launch:
    kernel: object          # the JITFunction
    args: tuple
    kwargs: dict
    case: str
    config: int | None = None      # index of the autotuner config, None without autotuning


@dataclasses.dataclass
class Result:
    kernel: str
    target: str
    case: str
    key: str
    registers: int | None
    spill_bytes: int
    shared: int
    num_warps: int
    error: str | None = None


def _gpu_target(name: str):
    from triton.backends.compiler import GPUTarget
    return GPUTarget(*TARGETS[name][0])


@contextlib.contextmanager
def describing(target_name: str, sm_count: int = 132):
    """Within the block, the fused wrappers take meta tensors for GPU tensors of ``target_name``
    and record their launches (:class:`Launch`, in the yielded recorder's ``launches``)
    instead of running them."""
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.jit import JITFunction

    from . import _device
    if _device.is_interpreted(_probe_kernel()):
        raise RuntimeError("frfsr.ops.triton.aot needs compiled kernels: run it without TRITON_INTERPRET=1")
    tgt = _gpu_target(target_name)
    launches: list[Launch] = []
    case = [""]
    config = [None]

    def jit_run(self, *args, grid, warmup, **kwargs):
        launches.append(Launch(self, args, dict(kwargs), case[0], config[0]))
        return None

    def autotune_run(self, *args, **kwargs):
        kwargs.pop("warmup", None)
        self.nargs = dict(zip(self.arg_names, args))
        configs = self.prune_configs(kwargs)          # the configs a launch would time
        self.nargs = None
        for i, cfg in enumerate(configs):
            config[0] = i
            self.fn.run(*args, **kwargs, warmup=False, **cfg.all_kwargs())
        config[0] = None
        return None

    saved = {
        (JITFunction, "run"): JITFunction.run,
        (Autotuner, "run"): Autotuner.run,
        (_device, "on_gpu"): _device.on_gpu,
        (_device, "device_ctx"): _device.device_ctx,
        (_device, "target"): _device.target,
        (_device, "sm_count"): _device.sm_count,
    }
    JITFunction.run = jit_run
    Autotuner.run = autotune_run
    _device.on_gpu = lambda t: t.device.type == "meta"
    _device.device_ctx = lambda t: contextlib.nullcontext()
    _device.target = lambda device: tgt
    _device.sm_count = lambda device: sm_count
    try:
        yield _Recorder(launches, case)
    finally:
        for (obj, name), val in saved.items():
            setattr(obj, name, val)


class _Recorder:
    """The launches recorded so far (``.launches``); ``.case(name)`` labels the ones after it."""

    def __init__(self, launches: list[Launch], case: list[str]):
        self.launches, self._case = launches, case

    def case(self, name: str) -> None:
        self._case[0] = name


def _probe_kernel():
    from .ddf import _ddf_fwd_kernel
    return _ddf_fwd_kernel


# --------------------------------------------------------------------------------------
# the cases: what the pipeline launches
# --------------------------------------------------------------------------------------
def _meta(*shape, dtype=torch.float32, channels_last=False):
    t = torch.empty(*shape, device="meta", dtype=dtype)
    return t.contiguous(memory_format=torch.channels_last) if channels_last else t


def _dcn(B, C, G, Hin, Win, Ho, Wo, dtype, tf32, backward, channels_last=False):
    from . import deform_conv, deform_conv_backward
    K = 9
    x = _meta(B, C, Hin, Win, dtype=dtype, channels_last=channels_last)
    off = _meta(B, 2 * G * K, Ho, Wo, dtype=dtype, channels_last=channels_last)
    mask = _meta(B, G * K, Ho, Wo, dtype=dtype, channels_last=channels_last)
    w = _meta(C, C, 3, 3, dtype=dtype)
    b = _meta(C, dtype=dtype)
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        out = deform_conv(x, off, mask, w, b)
        if backward:
            deform_conv_backward(_meta(*out.shape, dtype=dtype, channels_last=channels_last), x, off, mask, w, b)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev


def _ddf(B, C, H, W, dtype, backward, k=3):
    from . import ddf, ddf_backward
    x = _meta(B, C, H, W, dtype=dtype)
    cf = _meta(B, C, k * k, dtype=dtype)
    sf = _meta(B, k * k, H, W, dtype=dtype)
    out = ddf(x, cf, sf, k, 1)
    if backward:
        ddf_backward(_meta(*out.shape, dtype=dtype), x, cf, sf, k, 1)


def _patch_match(B, C, h, w, H, W, precision):
    from . import patch_match
    patch_match(_meta(B, C, h, w), _meta(B, C, H, W), 3, precision=precision)


def _window_match(B, C, h, w, H, W, cell, radius, M=22):
    from . import window_match
    hq, wq = h - 2, w - 2
    flows = torch.empty(B, -(-hq // cell), -(-wq // cell), M, 2, device="meta", dtype=torch.int64)
    window_match(_meta(B, C, h, w), _meta(B, C, H, W), flows, cell, radius, 3)


# Paper config: deformable conv at relu1_1 (64 ch, HR grid), relu2_1 (128, HR/2), relu3_1 (256,
# HR/4), 8 groups; DDF at ngf = 64 on the three U-Net scales; matching on relu3_1 (256 ch) at
# the LR grid: exact (patch_match) or fast (window_match, search cell 4, radius 1). Tiny config:
# widths 8 / 16 / 32, 2 groups, ngf 16. Sizes: a 256 px HR tile (LR tile 64) and the 16 MP
# goal, a 4000 x 4000 output with a 4000 x 4000 Ref (LR and Ref features 1000 x 1000 at relu3_1).
def cases(full: bool = True) -> list[tuple[str, Callable[[], None]]]:
    """(name, thunk) pairs; each thunk calls wrappers on meta tensors. ``full=False`` keeps a
    representative subset (every kernel, every dtype and precision branch, the 16 MP sizes)."""
    out = []
    sizes = {"tile": (256, 256), "16MP": (4000, 4000)}
    for size_name, (H, W) in sizes.items():
        for dtype, dname in ((torch.float32, "fp32"), (torch.bfloat16, "bf16"), (torch.float16, "fp16")):
            if not full and dtype == torch.float16:
                continue
            tf32s = (False, True) if dtype == torch.float32 else (False,)
            for tf32 in tf32s:
                for scale, C in ((1, 64), (2, 128), (4, 256)):
                    if not full and scale == 2:
                        continue
                    h, w = H // scale, W // scale
                    train = size_name == "tile"
                    out.append((f"dcn paper C{C} {size_name} {dname}{' tf32' if tf32 else ''}",
                                lambda C=C, h=h, w=w, dt=dtype, tf=tf32, tr=train:
                                _dcn(9 if tr else 1, C, 8, h, w, h, w, dt, tf, tr)))
            for scale in (1, 2, 4):
                if not full and scale == 2:
                    continue
                out.append((f"ddf paper {size_name} /{scale} {dname}",
                            lambda s=scale, dt=dtype, tr=size_name == "tile":
                            _ddf(9 if tr else 1, 64, H // s, W // s, dt, tr)))
        lr = (H // 4, W // 4)
        for prec in ("bf16", "tf32", "ieee") if full else ("bf16", "ieee"):
            out.append((f"patch_match paper {size_name} {prec}",
                        lambda prec=prec, lr=lr: _patch_match(1, 256, lr[0], lr[1], lr[0], lr[1], prec)))
        out.append((f"window_match paper {size_name} cell4",
                    lambda lr=lr: _window_match(1, 256, lr[0], lr[1], lr[0], lr[1], 4, 1)))
    # channels-last model (bench_inference --channels-last) and the tiny config
    out.append(("dcn paper C64 tile bf16 channels_last",
                lambda: _dcn(1, 64, 8, 256, 256, 256, 256, torch.bfloat16, False, False, channels_last=True)))
    out.append(("dcn paper C64 16MP bf16 channels_last",
                lambda: _dcn(1, 64, 8, 4000, 4000, 4000, 4000, torch.bfloat16, False, False,
                             channels_last=True)))
    if full:
        for C in (8, 16, 32):
            out.append((f"dcn tiny C{C} fp32", lambda C=C: _dcn(2, C, 2, 32, 32, 32, 32, torch.float32, False, True)))
        out.append(("ddf tiny fp32", lambda: _ddf(2, 16, 32, 32, torch.float32, True)))
        out.append(("patch_match tiny", lambda: _patch_match(1, 32, 16, 16, 24, 24, "bf16")))
        out.append(("window_match tiny", lambda: _window_match(1, 32, 16, 16, 24, 24, 4, 1)))
    return out


def record_launches(target_name: str, full: bool = True) -> list[Launch]:
    """Every launch of :func:`cases` for ``target_name``."""
    with describing(target_name) as rec:
        for name, thunk in cases(full):
            rec.case(name)
            thunk()
        return list(rec.launches)


# --------------------------------------------------------------------------------------
# specialise and compile
# --------------------------------------------------------------------------------------
def specialise(launch: Launch, target_name: str):
    """(signature, constexprs, attrs, options) of ``launch`` as Triton's launch-time binder
    specialises it for ``target_name``."""
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature
    fn = launch.kernel
    backend = make_backend(_gpu_target(target_name))
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    kwargs = dict(launch.kwargs)
    bound_args, specialization, options = binder(*launch.args, **kwargs)
    return fn._pack_args(backend, kwargs, bound_args, specialization, options)


def _key(fn, signature, constexprs, attrs, options) -> str:
    return repr((fn.__name__, sorted(signature.items()), sorted(constexprs.items()), sorted(attrs.items()),
                 options.num_warps, options.num_stages))


_PTXAS_REGS = re.compile(r"Used (\d+) registers")
_PTXAS_SPILL = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")


def _amd_counts(asm: str) -> tuple[int | None, int]:
    def grab(pattern):
        m = re.search(pattern, asm)
        return int(m.group(1)) if m else 0
    vgpr = grab(r"\.vgpr_count:\s+(\d+)") or grab(r"NumVgprs:\s+(\d+)")
    spills = 4 * (grab(r"\.vgpr_spill_count:\s+(\d+)") + grab(r"\.sgpr_spill_count:\s+(\d+)"))
    scratch = grab(r"ScratchSize:\s+(\d+)")
    return (vgpr or None), max(spills, scratch)


def compile_one(launch: Launch, target_name: str, spec=None) -> Result:
    """Compile ``launch`` for ``target_name`` and measure it."""
    import triton
    from triton import knobs
    from triton.compiler import ASTSource
    fn = launch.kernel
    signature, constexprs, attrs, options = None, None, None, None
    try:
        options, signature, constexprs, attrs = spec or specialise(launch, target_name)
        key = _key(fn, signature, constexprs, attrs, options)
        log = io.StringIO()
        with knobs.nvidia.scope(), knobs.compilation.scope():
            knobs.nvidia.dump_ptxas_log = True
            knobs.compilation.always_compile = True
            with contextlib.redirect_stdout(log):
                kern = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=_gpu_target(target_name),
                                      options=options.__dict__)
        if target_name.startswith("sm_"):
            text = log.getvalue()
            regs = [int(r) for r in _PTXAS_REGS.findall(text)]
            spills = [int(a) + int(b) for a, b in _PTXAS_SPILL.findall(text)]
            registers, spill = (max(regs) if regs else None), (max(spills) if spills else 0)
        else:
            registers, spill = _amd_counts(kern.asm.get("amdgcn", ""))
        return Result(fn.__name__, target_name, launch.case, key, registers, spill, int(kern.metadata.shared),
                      int(kern.metadata.num_warps))
    except Exception as exc:  # noqa: BLE001 - reported, the caller fails on it
        key = _key(fn, signature, constexprs, attrs, options) if signature is not None else repr(launch.case)
        return Result(fn.__name__, target_name, launch.case, key, None, 0, 0, 0,
                      error=f"{type(exc).__name__}: {str(exc)[:2000]}")


def _coarse_key(launch: Launch, spec) -> str:
    """The specialisation without the integer attributes (value 1, divisibility, i64)."""
    options, signature, constexprs, _ = spec
    ptrs = sorted((k, v) for k, v in signature.items() if v.startswith("*"))
    return repr((launch.kernel.__name__, ptrs, sorted(constexprs.items()), options.num_warps, options.num_stages))


def select(launches: Iterable[Launch], target: str, full: bool = True) -> list[tuple[Launch, tuple]]:
    """(launch, specialisation) of every distinct specialisation among ``launches``. With
    ``full=False`` (the CI subset): all of them on sm_90; on sm_80 one per kernel, config and
    operand dtypes (integer attributes aside); on the other targets likewise but only the
    first config of an autotuned kernel."""
    seen = {}
    for launch in launches:
        spec = specialise(launch, target)
        if full or target == "sm_90":
            key = _key(launch.kernel, spec[1], spec[2], spec[3], spec[0])
        elif target == "sm_80" or not launch.config:
            key = _coarse_key(launch, spec)
        else:
            continue
        seen.setdefault(key, (launch, spec))
    return list(seen.values())


def compile_all(targets: Iterable[str], full: bool = True, jobs: int = 1,
                progress: Callable[[str], None] | None = None) -> list[Result]:
    """Record, specialise and compile every distinct launch for every target (``jobs`` worker
    processes, forked, when more than one); ``full=False``: the CI subset (:func:`cases`,
    :func:`select`)."""
    work = []
    for t in targets:
        work.extend((launch, t, spec) for launch, spec in select(record_launches(t, full), t, full))
    if jobs > 1:
        import multiprocessing as mp
        global _WORK
        _WORK = work
        with mp.get_context("fork").Pool(jobs) as pool:
            results = pool.map(_compile_index, range(len(work)), chunksize=1)
    else:
        results = []
        for launch, t, spec in work:
            results.append(compile_one(launch, t, spec))
            if progress:
                progress(f"{t} {results[-1].kernel} {results[-1].case}")
    return results


_WORK: list = []


def _compile_index(i: int) -> Result:
    launch, t, spec = _WORK[i]
    return compile_one(launch, t, spec)


# Tensor arguments a kernel addresses with 64-bit offsets (tests/test_kernels_index.py runs
# them beyond 2^31); every other tensor argument is addressed with 32-bit offsets within a
# batch sample (the batch offset is 64-bit), which is exact while one sample spans less than
# 2^31 elements.
INDEX64 = {
    "_dcn_fwd_kernel": {"off_ptr", "msk_ptr"},
    "_dcn_bwd_input_kernel": {"off_ptr", "msk_ptr", "goff_ptr", "gmsk_ptr"},
    "_dcn_bwd_weight_kernel": {"off_ptr", "msk_ptr"},
    "_patch_match_kernel": {"q_ptr", "k_ptr"},
}


# Batch strides: the kernels multiply them by the batch index in 64 bits only, so Triton's
# i64 specialisation of a batch stride of 2^31 or more (144 x 16 M offset values) is exact.
_BATCH_STRIDE = re.compile(r"s_[a-z]b")


def sample_span(t: torch.Tensor) -> int:
    """Elements one batch sample of ``t`` spans (1 + the largest offset within it)."""
    if t.dim() == 0 or t.numel() == 0:
        return 1
    dims = list(zip(t.shape, t.stride()))
    if t.dim() > 1:
        dims = dims[1:]
    return 1 + sum((n - 1) * abs(st) for n, st in dims)


def index_problems(launches: Iterable[Launch]) -> list[str]:
    """Launches where a tensor addressed with 32-bit offsets spans 2^31 elements or more per
    sample, or an int argument other than a batch stride is 2^31 or more (Triton passes it
    as i64, but the kernels' other arithmetic on it is not checked for that)."""
    problems = []
    for launch in launches:
        fn = launch.kernel
        wide = INDEX64.get(fn.__name__, set())
        for name, arg in zip(fn.arg_names, launch.args):
            if isinstance(arg, torch.Tensor) and name not in wide and sample_span(arg) >= 2 ** 31:
                problems.append(f"{fn.__name__} ({launch.case}): {name} {tuple(arg.shape)} spans "
                                f"{sample_span(arg)} elements per sample")
            if (isinstance(arg, int) and not isinstance(arg, bool) and abs(arg) >= 2 ** 31
                    and not _BATCH_STRIDE.fullmatch(name)):
                problems.append(f"{fn.__name__} ({launch.case}): int argument {name} = {arg}")
    return problems


def spill_budget(kernel: str, target: str) -> int:
    if target.startswith("sm_"):
        return SPILL_BUDGET.get(kernel, DEFAULT_SPILL_BUDGET)
    return DEFAULT_SPILL_BUDGET


def check(results: Iterable[Result]) -> list[str]:
    """What breaks the limits: compile errors, shared memory above the target's limit,
    spills above :func:`spill_budget`."""
    problems = []
    for r in results:
        where = f"{r.kernel} on {r.target} ({r.case})"
        if r.error:
            problems.append(f"{where}: compile error: {r.error}")
            continue
        limit = TARGETS[r.target][1]
        if r.shared > limit:
            problems.append(f"{where}: {r.shared} bytes of shared memory > {limit}")
        if r.spill_bytes > spill_budget(r.kernel, r.target):
            problems.append(f"{where}: {r.spill_bytes} bytes of spills > budget {spill_budget(r.kernel, r.target)}")
    return problems


def table(results: Iterable[Result]) -> str:
    """Markdown table, one row per kernel and target: specialisations compiled and the worst
    registers / spills / shared memory among them."""
    rows: dict[tuple[str, str], list[Result]] = {}
    for r in results:
        rows.setdefault((r.kernel, r.target), []).append(r)
    order = list(TARGETS)
    lines = ["| kernel | target | specialisations | registers (max) | spill bytes (max) | shared memory (max) | "
             "errors |", "|---|---|---:|---:|---:|---:|---:|"]
    for (kernel, tgt), rs in sorted(rows.items(), key=lambda kv: (kv[0][0], order.index(kv[0][1]))):
        ok = [r for r in rs if not r.error]
        regs = max((r.registers or 0 for r in ok), default=0)
        lines.append(f"| {kernel} | {tgt} | {len(rs)} | {regs or '-'} | {max((r.spill_bytes for r in ok), default=0)} | "
                     f"{max((r.shared for r in ok), default=0)} | {len(rs) - len(ok)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import argparse
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--targets", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    p.add_argument("--subset", action="store_true", help="the representative subset of cases (CI)")
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--details", action="store_true", help="one line per specialisation")
    args = p.parse_args(argv)
    results = compile_all(args.targets, full=not args.subset, jobs=args.jobs)
    if args.details:
        for r in results:
            print(f"{r.target} {r.kernel} regs={r.registers} spill={r.spill_bytes} shared={r.shared} "
                  f"warps={r.num_warps} [{r.case}]" + (f" ERROR {r.error}" if r.error else ""))
    print(table(results))
    problems = check(results)
    print(f"{len(results)} specialisations compiled; {len(problems)} problems")
    for line in problems:
        print("PROBLEM", line)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
