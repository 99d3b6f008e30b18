"""End-to-end inference benchmark: frfsr (paper preset) against the released architecture.

For every HR size (LR = HR/4, Ref = HR size) it times ``model(lr, ref)``:
  * CUDA: fp32 (TF32 convolutions) and bf16 autocast, median of ``--reps`` (>= 10) runs
    after warm-up, timed with CUDA events; peak memory; achieved TFLOP/s (FLOPs counted
    once with torch.utils.flop_counter) against a bf16 8192^3 matmul rate measured in the
    same run.
  * CPU (``--device cpu``, the 2-core machine): wall-clock median of ``--reps`` runs.
Accuracy of the fast paths (``--accuracy``, on by default on CUDA): PSNR (RGB, [0, 1]) of
the bf16 output against the fp32 output, and of the fused-kernel path against the
reference-op path in fp32, on the same weights and inputs: the bundled default and robust
weights on the bundled demo image and Ref, and the paper preset (random weights, seed 0) at
the first size.
The released architecture (the authors' code rebuilt on today's PyTorch by an oracle
port) runs in the same process when ``--official-port`` names that port's script and
``FRFSR_OFFICIAL_SRC`` points at an extracted copy of the authors' repository. Neither is
part of this project.

    python benchmarks/bench_inference.py --device cpu --sizes 160x160 --reps 5
    python benchmarks/bench_inference.py --sizes 500x332 1000x1000 2000x2000 4000x4000 \\
        --official-port PATH/official_port.py --out results/bench_inference
"""
from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from frfsr import FRFSR, FRFSRConfig, RefViews  # noqa: E402
from frfsr.config import PRESETS  # noqa: E402
from frfsr.checks import MIN_LR_SIZE  # noqa: E402
from frfsr.tiling import upscale_tiled  # noqa: E402


def parse_size(s: str) -> tuple[int, int]:
    w, h = (int(v) for v in s.lower().split("x"))
    if w % 4 or h % 4:
        raise argparse.ArgumentTypeError(f"HR size {s} must be a multiple of 4 on both sides")
    return h, w


def timed(fn, device, warmup: int, reps: int):
    """(median ms, all ms, peak GiB) of ``fn()``."""
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            torch.cuda.synchronize()
            times.append(a.elapsed_time(b))
        else:
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e3)
    peak = torch.cuda.max_memory_allocated() / 2 ** 30 if device.type == "cuda" else float("nan")
    return statistics.median(times), times, peak


def count_flops(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def matmul_rate(device) -> float:
    """Measured bf16 matmul TFLOP/s (8192^3) on this card."""
    n = 8192
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    ms, _, _ = timed(lambda: a @ b, device, 3, 10)
    return 2 * n ** 3 / (ms * 1e-3) / 1e12


def center_crop(x: torch.Tensor, side: int) -> torch.Tensor:
    """The central ``side`` x ``side`` pixels of ``x`` (B, C, H, W) (the whole side where shorter)."""
    h, w = x.shape[-2:]
    y0, x0 = max(h - side, 0) // 2, max(w - side, 0) // 2
    return x[..., y0:y0 + side, x0:x0 + side]


def accuracy_rows(model, size, device, crop: int | None = None) -> list[dict]:
    """PSNR of bf16 vs fp32 and fused vs reference ops (fp32) on the same weights; ``crop``
    (LR pixels) runs the bundled weights on the central ``crop`` x ``crop`` of the demo LR and
    the central 4x that of its Ref (smoke runs)."""
    from frfsr import ops
    from frfsr.demo import ASSETS, _load
    from frfsr import FRFSR
    from frfsr.metrics import psnr

    bundled = FRFSR.from_pretrained(None, device=device)
    robust = FRFSR.from_pretrained("frfsr-robust", device=device)
    for net in (bundled, robust):
        net.check_inputs = False
    h, w = size
    g = torch.Generator().manual_seed(1)
    demo_lr, demo_ref = _load(ASSETS / "lr.png"), _load(ASSETS / "ref.png")
    demo = "demo image"
    if crop is not None:
        demo_lr, demo_ref = center_crop(demo_lr, crop), center_crop(demo_ref, 4 * crop)
        demo = f"demo image (central {demo_lr.shape[-1]}x{demo_lr.shape[-2]} LR crop)"
    cases = [(f"bundled default weights, {demo}", bundled, demo_lr, demo_ref),
             (f"bundled robust weights, {demo}", robust, demo_lr, demo_ref),
             (f"{model.config.name if model is not None else ''} preset (seed 0), random {w}x{h} input", model,
              torch.rand(1, 3, h // 4, w // 4, generator=g), torch.rand(1, 3, h, w, generator=g))]
    fused = ops.fused_available() and device.type == "cuda"
    rows = []
    for name, net, lr, ref in cases:
        if net is None:
            continue
        lr, ref = lr.to(device), ref.to(device)
        net.set_ops_backend("fused" if fused else "reference")
        fp32 = run_ours(net, lr, ref, "fp32").float().clamp(0, 1)
        bf16 = run_ours(net, lr, ref, "bf16").float().clamp(0, 1)
        row = {"weights": name, "psnr_bf16_vs_fp32": round(psnr(bf16, fp32), 2)}
        if fused:
            net.set_ops_backend("reference")
            ref32 = run_ours(net, lr, ref, "fp32").float().clamp(0, 1)
            row["psnr_fused_vs_reference_fp32"] = round(psnr(fp32, ref32), 2)
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def load_official(port_path: str):
    spec = importlib.util.spec_from_file_location("official_port", port_path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run_ours(model, lr, ref, dtype, tile=None, ref_scales=None):
    """One forward; with ``tile`` (LR pixels) through frfsr.tiling as the pipeline runs large
    images: the Refs encoded once, the LR in overlapping tiles, blended. ``ref_scales``: the
    Ref encoded as that scale pyramid first (:meth:`FRFSR.encode_refs`)."""
    ctx = torch.autocast(lr.device.type, dtype=torch.bfloat16) if dtype == "bf16" else torch.autocast(lr.device.type, enabled=False)
    with torch.no_grad(), ctx:
        if ref_scales is not None:
            ref = model.encode_refs(ref, lr.shape[0], views=RefViews(ref_scales))
        if tile is None:
            return model(lr, ref)
        return upscale_tiled(model, lr, ref, tile=tile, keep_warped_ref=False)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", type=parse_size, default=[parse_size(s) for s in ("500x332", "1000x1000", "2000x2000", "4000x4000")],
                    help="HR sizes WxH (Ref = HR size, LR = HR/4)")
    ap.add_argument("--preset", default="paper", choices=sorted(PRESETS),
                    help="architecture of 'ours' (random weights); prior: with the RRDB x4 prior's upsampler")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtypes", nargs="+", default=None, choices=["fp32", "bf16"])
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    ap.add_argument("--official-port", default=os.environ.get("FRFSR_OFFICIAL_PORT"),
                    help="path of the oracle port script of the authors' release (needs FRFSR_OFFICIAL_SRC)")
    ap.add_argument("--no-ours", action="store_true")
    ap.add_argument("--compile", nargs="?", const="default", default=None, metavar="MODE",
                    help="also time a torch.compile'd copy of ours (FRFSR.compile_for_inference; MODE e.g. "
                         "max-autotune or reduce-overhead; channels_last with --channels-last) in the last of "
                         "--dtypes; warm-up includes compiling")
    ap.add_argument("--channels-last", action="store_true",
                    help="also time a copy of ours with channels_last weights (in the last of --dtypes)")
    ap.add_argument("--tile", type=int, default=None,
                    help="also time ours through frfsr.tiling with this LR tile side (last of --dtypes), at sizes whose LR "
                         "exceeds it")
    ap.add_argument("--accuracy", action=argparse.BooleanOptionalAction, default=None,
                    help="bf16-vs-fp32 and fused-vs-reference PSNR (default: on for CUDA)")
    ap.add_argument("--accuracy-crop", type=int, default=None, metavar="N",
                    help="with --accuracy: run the bundled weights on the central N x N LR pixels of the demo image "
                         "(and the central 4N x 4N of its Ref) instead of the whole image (smoke runs)")
    ap.add_argument("--ref-scales", nargs="+", type=float, default=None, metavar="S",
                    help="also time ours with this Ref scale pyramid (e.g. 1 0.71 0.5; the Ref's encoding "
                         "included) in the last of --dtypes, at HR sizes up to --ref-scales-up-to")
    ap.add_argument("--ref-scales-up-to", type=int, default=2000, metavar="SIDE",
                    help="largest HR side timed with --ref-scales (default: %(default)s)")
    ap.add_argument("--out", help="write OUT.md and OUT.json")
    a = ap.parse_args(argv)
    if a.accuracy_crop is not None and a.accuracy_crop < MIN_LR_SIZE:
        ap.error(f"--accuracy-crop must be at least {MIN_LR_SIZE} LR pixels (the model's minimum input), got {a.accuracy_crop}")
    device = torch.device(a.device)
    cuda = device.type == "cuda"
    reps = a.reps or (10 if cuda else 5)
    warmup = a.warmup if a.warmup is not None else (3 if cuda else 1)
    dtypes = a.dtypes or (["fp32", "bf16"] if cuda else ["fp32"])
    if a.threads:
        torch.set_num_threads(a.threads)
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    env = {"device": torch.cuda.get_device_name() if cuda else f"cpu ({torch.get_num_threads()} threads)",
           "preset": a.preset, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv)}
    if cuda:
        env["bf16_matmul_tflops"] = round(matmul_rate(device), 1)
    print(json.dumps(env))

    torch.manual_seed(0)
    ours = None if a.no_ours else FRFSR(FRFSRConfig.preset(a.preset)).to(device).eval()
    if ours is not None:
        ours.check_inputs = False
    nhwc = compiled = None
    if ours is not None and a.channels_last:
        nhwc = copy.deepcopy(ours).to(memory_format=torch.channels_last)
    if ours is not None and a.compile:     # from the channels_last copy when there is one
        compiled = copy.deepcopy(nhwc if nhwc is not None else ours)
        compiled.compile_for_inference(**({} if a.compile == "default" else {"mode": a.compile}))
    official = None
    if a.official_port:
        port = load_official(a.official_port)
        official = port.OfficialFRFSR(port.load_official()).to(device).eval()

    acc_rows = []
    if a.accuracy if a.accuracy is not None else cuda:
        acc_rows = accuracy_rows(ours, a.sizes[0], device, a.accuracy_crop)

    rows = []
    for h, w in a.sizes:
        g = torch.Generator().manual_seed(0)
        lr = torch.rand(1, 3, h // 4, w // 4, generator=g).to(device)
        ref = torch.rand(1, 3, h, w, generator=g).to(device)
        cases = []
        if ours is not None:
            cases += [(f"frfsr {dt}", dt, (lambda dt=dt: run_ours(ours, lr, ref, dt))) for dt in dtypes]
            last = dtypes[-1]        # the variants below run in the last precision listed (bf16 by default on CUDA)
            if nhwc is not None:
                cases.append((f"frfsr {last} channels_last", last, lambda: run_ours(nhwc, lr, ref, last)))
            if compiled is not None:
                layout = " channels_last" if nhwc is not None else ""
                cases.append((f"frfsr {last}{layout} compiled ({a.compile})", last,
                              lambda: run_ours(compiled, lr, ref, last)))
            if a.ref_scales and max(h, w) <= a.ref_scales_up_to:
                scales = tuple(a.ref_scales)
                cases.append((f"frfsr {last} Ref pyramid {'/'.join(f'{x:g}' for x in scales)}", last,
                              lambda: run_ours(ours, lr, ref, last, ref_scales=scales)))
            if a.tile and max(h, w) // 4 > a.tile:
                cases.append((f"frfsr {last} tiled {a.tile}", last, lambda: run_ours(ours, lr, ref, last, a.tile)))
        if official is not None:
            up = F.interpolate(lr, size=(h, w), mode="bicubic", align_corners=False)
            cases.append(("released (port) fp32", "fp32", lambda: official(lr, up, ref)))
        for name, dt, fn in cases:
            row = {"hr": f"{w}x{h}", "model": name}
            try:
                ms, times, peak = timed(fn, device, warmup, reps)
                row.update(ms=round(ms, 2), min_ms=round(min(times), 2), peak_gib=round(peak, 2))
                if cuda:
                    flops = count_flops(fn)
                    row.update(tflop=round(flops / 1e12, 3), tflops_per_s=round(flops / (ms * 1e-3) / 1e12, 1))
                    row["of_bf16_peak"] = f"{100 * row['tflops_per_s'] / env['bf16_matmul_tflops']:.0f}%"
            except torch.cuda.OutOfMemoryError as e:
                row.update(error="out of memory")
                torch.cuda.empty_cache()
            except RuntimeError as e:
                row.update(error=str(e).splitlines()[0][:80])
            print(json.dumps(row), flush=True)
            rows.append(row)
            if cuda:
                torch.cuda.empty_cache()

    cols = ["hr", "model", "ms", "min_ms", "peak_gib", "tflop", "tflops_per_s", "of_bf16_peak", "error"]
    cols = [c for c in cols if any(c in r for r in rows)]
    table = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    table += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    text = "\n".join(table)
    if acc_rows:
        acols = [c for c in ("weights", "psnr_bf16_vs_fp32", "psnr_fused_vs_reference_fp32") if any(c in r for r in acc_rows)]
        text += "\n\n| " + " | ".join(acols) + " |\n|" + "---|" * len(acols) + "\n"
        text += "\n".join("| " + " | ".join(str(r.get(c, "")) for c in acols) + " |" for r in acc_rows)
    print(text)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out + ".md").write_text(f"{json.dumps(env)}\n\n{text}\n")
        Path(a.out + ".json").write_text(json.dumps({"env": env, "rows": rows, "accuracy": acc_rows}, indent=2))
    return rows


if __name__ == "__main__":
    main()
