"""Microbenchmark of the fused Triton operators against the PyTorch reference operators.

On CUDA every case is timed with CUDA events: warm-up calls (which also run Triton's
compilation and autotuning) and then the median of ``--reps`` (>= 10) timed calls. For
``patch_match`` the achieved TFLOP/s (2 * B * Nq * Nk * C*p*p) is compared with the rate
of a bf16 ``torch.matmul`` measured in the same run; for ``window_match`` (the fast mode's
windowed search, on the flows :func:`frfsr.ops.fast_match.candidate_flows` gives) the
TFLOP/s count the windows' correlations (2 * C*p*p per query patch and key corner of every
flow a cell needs), and a "match" row times the whole fast mode against exact matching,
both on the fused kernels. Peak extra memory per call and the
max abs difference to the reference are reported too. The result is a markdown table on
stdout (and in ``--out`` as .md and .json when given).

Without CUDA (or with ``--cpu-check``) the script runs every case once at tiny sizes under
the Triton interpreter, only to check that it works; those timings mean nothing.

    python benchmarks/bench_ops.py [--reps 20] [--warmup 5] [--out results/bench_ops]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

_CPU_CHECK = "--cpu-check" in sys.argv or not torch.cuda.is_available()
if _CPU_CHECK:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede the first Triton import

import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import frfsr.ops as ops  # noqa: E402
import frfsr.ops.triton as fused  # noqa: E402
from frfsr.ops import reference as ref  # noqa: E402
from frfsr.ops import window as window_ref  # noqa: E402
from frfsr.ops.fast_match import FAST_MATCH_DEFAULTS, candidate_flows  # noqa: E402


# --------------------------------------------------------------------------------------
# timing
# --------------------------------------------------------------------------------------

def _time(fn, warmup: int, reps: int, device: torch.device):
    """Median milliseconds of ``reps`` calls, and the peak memory one call adds (MiB)."""
    if device.type != "cuda":
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3, float("nan")
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    peak = (torch.cuda.max_memory_allocated() - base) / 2 ** 20
    times = []
    for _ in range(reps):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times), peak


def _matmul_tflops(warmup: int, reps: int, device: torch.device, n: int = 8192) -> float:
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    ms, _ = _time(lambda: torch.matmul(a, b), warmup, reps, device)
    return 2 * n ** 3 / (ms * 1e-3) / 1e12


def _maxdiff(a, b) -> float:
    if isinstance(a, (tuple, list)):
        return max(_maxdiff(x, y) for x, y in zip(a, b))
    if a is None or b is None:
        return 0.0
    if not a.is_floating_point():
        return float((a != b).float().mean().item())  # mismatch fraction for indices
    return float((a.float() - b.float()).abs().max().item())


# --------------------------------------------------------------------------------------
# cases
# --------------------------------------------------------------------------------------

def _patch_match_cases(cpu: bool):
    if cpu:
        return [dict(B=1, C=4, h=9, w=8, H=11, W=10, p=3)]
    return [
        dict(B=2, C=256, h=40, w=40, H=40, W=40, p=3),    # VGG relu3-like features, LR vs ref
        dict(B=1, C=64, h=64, w=64, H=96, W=96, p=3),
        dict(B=4, C=128, h=48, w=48, H=64, W=64, p=3),
    ]


def _window_cases(cpu: bool):
    """Texture maps of the bundled model's width: an LR tile of 250 (Ref 1000) and of 500 (Ref 2000)."""
    if cpu:
        return [dict(B=1, C=4, h=9, w=10, H=12, W=11, p=3)]
    return [dict(B=1, C=128, h=250, w=250, H=250, W=250, p=3), dict(B=1, C=128, h=500, w=500, H=500, W=500, p=3)]


def _deform_cases(cpu: bool):
    if cpu:
        return [dict(B=1, Cin=8, Cout=8, Hin=6, Win=7, Ho=6, Wo=7, G=2)]
    return [
        dict(B=2, Cin=64, Cout=64, Hin=64, Win=64, Ho=64, Wo=64, G=8),
        dict(B=2, Cin=64, Cout=64, Hin=40, Win=40, Ho=160, Wo=160, G=8),  # ref-size input, HR grid
    ]


def _ddf_cases(cpu: bool):
    if cpu:
        return [dict(B=1, C=4, H=6, W=7, k=3, d=1)]
    return [
        dict(B=2, C=64, H=160, W=160, k=3, d=1),
        dict(B=2, C=64, H=160, W=160, k=3, d=2),
        dict(B=2, C=64, H=160, W=160, k=5, d=1),
    ]


def run(args) -> list[dict]:
    cpu = _CPU_CHECK
    device = torch.device("cpu" if cpu else "cuda")
    warmup, reps = args.warmup, max(10, args.reps)
    torch.manual_seed(0)
    rows = []
    mm_tflops = None if cpu else _matmul_tflops(warmup, reps, device)

    def add(op, case, mode, fn_fused, fn_ref, flops=None, diff=None):
        f_ms, f_mem = _time(fn_fused, warmup, reps, device)
        r_ms, r_mem = _time(fn_ref, warmup, reps, device)
        row = dict(op=op, case=case, mode=mode, fused_ms=f_ms, ref_ms=r_ms, speedup=r_ms / f_ms,
                   fused_mib=f_mem, ref_mib=r_mem, maxdiff=diff)
        if flops is not None:
            row["fused_tflops"] = flops / (f_ms * 1e-3) / 1e12
            if mm_tflops:
                row["vs_bf16_matmul"] = row["fused_tflops"] / mm_tflops
        rows.append(row)

    for c in _patch_match_cases(cpu):
        q = F.normalize(torch.randn(c["B"], c["C"], c["h"], c["w"], device=device), dim=1)
        k = F.normalize(torch.randn(c["B"], c["C"], c["H"], c["W"], device=device), dim=1)
        p = c["p"]
        nq = (c["h"] - p + 1) * (c["w"] - p + 1)
        nk = (c["H"] - p + 1) * (c["W"] - p + 1)
        flops = 2.0 * c["B"] * nq * nk * c["C"] * p * p
        name = f"B{c['B']} C{c['C']} {c['h']}x{c['w']} vs {c['H']}x{c['W']} p{p}"
        precisions = ["ieee"] if cpu else ["bf16", "tf32"]
        r = ref.patch_match(q, k, p)
        for prec in precisions:
            out = fused.patch_match(q, k, p, precision=prec)
            diff = _maxdiff(out[0], r[0])
            add("patch_match", name, f"fwd {prec}",
                lambda: fused.patch_match(q, k, p, precision=prec), lambda: ref.patch_match(q, k, p),
                flops=flops, diff=diff)

    s, r = FAST_MATCH_DEFAULTS["search_cell"], FAST_MATCH_DEFAULTS["radius"]
    for c in _window_cases(cpu):
        q = F.normalize(torch.randn(c["B"], c["C"], c["h"], c["w"], device=device), dim=1)
        k = F.normalize(torch.randn(c["B"], c["C"], c["H"], c["W"], device=device), dim=1)
        p = c["p"]
        flows = candidate_flows(q, k, p)
        flops = 2.0 * float(window_ref.flows_needed(flows).sum()) * s * s * (s + 2 * r) ** 2 * c["C"] * p * p
        name = f"B{c['B']} C{c['C']} {c['h']}x{c['w']} vs {c['H']}x{c['W']} p{p}, {flows.shape[3]} flows"
        out, r_out = fused.window_match(q, k, flows, s, r, p), window_ref.window_match(q, k, flows, s, r, p)
        add("window_match", name, "fwd", lambda: fused.window_match(q, k, flows, s, r, p),
            lambda: window_ref.window_match(q, k, flows, s, r, p), flops=flops, diff=_maxdiff(out[0], r_out[0]))
        fast, exact = _op("fast_patch_match", "fused"), _op("patch_match", "fused")
        fs, es = fast(q, k, p)[0], exact(q, k, p)[0]
        add("match", name, "fast vs exact (fused)", lambda: fast(q, k, p), lambda: exact(q, k, p),
            diff=float((fs < es - 1e-3).float().mean()))

    for c in _deform_cases(cpu):
        K = 9
        x = torch.randn(c["B"], c["Cin"], c["Hin"], c["Win"], device=device, requires_grad=True)
        off = (torch.randn(c["B"], 2 * c["G"] * K, c["Ho"], c["Wo"], device=device) * 2).requires_grad_()
        m = torch.rand(c["B"], c["G"] * K, c["Ho"], c["Wo"], device=device, requires_grad=True)
        w = (torch.randn(c["Cout"], c["Cin"], 3, 3, device=device) * 0.05).requires_grad_()
        b = torch.randn(c["Cout"], device=device, requires_grad=True)
        ins = (x, off, m, w, b)
        name = (f"B{c['B']} {c['Cin']}->{c['Cout']} G{c['G']} in {c['Hin']}x{c['Win']} "
                f"out {c['Ho']}x{c['Wo']}")
        flops = 2.0 * c["B"] * c["Ho"] * c["Wo"] * c["Cout"] * c["Cin"] * K
        with torch.no_grad():
            diff = _maxdiff(fused.deform_conv(*ins), ref.deform_conv(*ins))
        add("deform_conv", name, "fwd",
            lambda: fused.deform_conv(*[t.detach() for t in ins]),
            lambda: ref.deform_conv(*[t.detach() for t in ins]), flops=flops, diff=diff)
        go = torch.randn(c["B"], c["Cout"], c["Ho"], c["Wo"], device=device)
        f_op, r_op = _op("deform_conv", "fused"), _op("deform_conv", "reference")
        gdiff = _maxdiff(torch.autograd.grad(f_op(*ins), ins, go), torch.autograd.grad(r_op(*ins), ins, go))
        add("deform_conv", name, "fwd+bwd",
            lambda: torch.autograd.grad(f_op(*ins), ins, go),
            lambda: torch.autograd.grad(r_op(*ins), ins, go), flops=3 * flops, diff=gdiff)

    for c in _ddf_cases(cpu):
        kk = c["k"] * c["k"]
        x = torch.randn(c["B"], c["C"], c["H"], c["W"], device=device, requires_grad=True)
        cf = torch.randn(c["B"], c["C"], kk, device=device, requires_grad=True)
        sf = torch.randn(c["B"], kk, c["H"], c["W"], device=device, requires_grad=True)
        ins = (x, cf, sf)
        kw = dict(kernel_size=c["k"], dilation=c["d"])
        name = f"B{c['B']} C{c['C']} {c['H']}x{c['W']} k{c['k']} d{c['d']}"
        with torch.no_grad():
            diff = _maxdiff(fused.ddf(*ins, **kw), ref.ddf(*ins, **kw))
        add("ddf", name, "fwd", lambda: fused.ddf(*[t.detach() for t in ins], **kw),
            lambda: ref.ddf(*[t.detach() for t in ins], **kw), diff=diff)
        go = torch.randn_like(x)
        f_op, r_op = _op("ddf", "fused"), _op("ddf", "reference")
        gdiff = _maxdiff(torch.autograd.grad(f_op(*ins, **kw), ins, go),
                         torch.autograd.grad(r_op(*ins, **kw), ins, go))
        add("ddf", name, "fwd+bwd",
            lambda: torch.autograd.grad(f_op(*ins, **kw), ins, go),
            lambda: torch.autograd.grad(r_op(*ins, **kw), ins, go), diff=gdiff)

    return rows, mm_tflops


def _op(name: str, backend: str):
    """``frfsr.ops.<name>`` on one backend: the custom operator, whose autograd is the
    backend's backward kernel (the kernel functions themselves record no autograd)."""
    fn = getattr(ops, name)

    def call(*args, **kwargs):
        return fn(*args, backend=backend, **kwargs)
    return call


def _fmt(v, spec):
    if v is None or (isinstance(v, float) and v != v):
        return "-"
    return format(v, spec)


def to_markdown(rows, mm_tflops, device_name: str) -> str:
    lines = [f"Device: {device_name}"]
    if mm_tflops:
        lines.append(f"bf16 torch.matmul (8192^3) in this run: {mm_tflops:.1f} TFLOP/s")
    else:
        lines.append("CPU check mode (Triton interpreter): timings are not meaningful")
    lines += ["", "| op | case | mode | fused ms | reference ms | speed-up | fused TFLOP/s | "
                  "vs bf16 matmul | fused peak MiB | ref peak MiB | max diff |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append("| " + " | ".join([
            r["op"], r["case"], r["mode"], _fmt(r["fused_ms"], ".3f"), _fmt(r["ref_ms"], ".3f"),
            _fmt(r["speedup"], ".2f") + "x", _fmt(r.get("fused_tflops"), ".1f"),
            _fmt(r.get("vs_bf16_matmul"), ".0%"), _fmt(r["fused_mib"], ".1f"), _fmt(r["ref_mib"], ".1f"),
            _fmt(r["maxdiff"], ".2e")]) + " |")
    lines.append("")
    lines.append("max diff: max abs difference to the reference (fwd: output; fwd+bwd: all gradients; "
                 "patch_match, window_match: score; match: the share of positions where fast's cosine is more than "
                 "1e-3 below exact's). \"match\" rows: the fused column is the fast mode, the reference column exact "
                 "matching. TFLOP/s for deform_conv fwd+bwd counts 3x the forward GEMM.")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=20, help="timed repetitions (at least 10)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--out", type=str, default=None, help="write OUT.md and OUT.json as well")
    ap.add_argument("--cpu-check", action="store_true", help="tiny sizes under the Triton interpreter")
    args = ap.parse_args(argv)
    rows, mm = run(args)
    dev = "CPU (Triton interpreter)" if _CPU_CHECK else torch.cuda.get_device_name()
    md = to_markdown(rows, mm, dev)
    print(md)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".md").write_text(md + "\n")
        out.with_suffix(".json").write_text(json.dumps(dict(device=dev, bf16_matmul_tflops=mm, rows=rows),
                                                       indent=2) + "\n")


if __name__ == "__main__":
    main()
