"""Time `frfsr upscale` end to end, LR 500x500 with a 2000x2000 Ref, for several weights in one run.

    python benchmarks/bench_upscale.py --models frfsr-default frfsr-robust

Inputs (written to a temporary folder): scikit-image's ``coffee`` photo, ``crop((0, 0, 400,
400))`` resized bicubic to 2000x2000 (Ref) and ``crop((50, 50, 450, 400))`` resized to 500x500
(LR). Each model runs the command-line tool as a user would (default options), in its own
process; prints wall time and peak resident memory per model (Linux: the child's ru_maxrss).
``--size`` / ``--ref-size`` change the sides (the test suite runs it small).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def make_inputs(folder: Path, size: int, ref_size: int) -> tuple[Path, Path]:
    import skimage.data
    from PIL import Image

    photo = Image.fromarray(skimage.data.coffee())
    lr, ref = folder / "lr.png", folder / "ref.png"
    photo.crop((0, 0, 400, 400)).resize((ref_size, ref_size), Image.BICUBIC).save(ref)
    photo.crop((50, 50, 450, 400)).resize((size, size), Image.BICUBIC).save(lr)
    return lr, ref


def run_one(model: str, lr: Path, ref: Path, out: Path, extra: list[str]) -> tuple[float, float]:
    """(seconds, peak resident GB) of one `frfsr upscale` process (its own rusage, by wait4)."""
    cmd = [sys.executable, "-m", "frfsr.cli", "upscale", str(lr), "--ref", str(ref), "-o", str(out),
           "--model", model, *extra]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{err.decode(errors='replace')[-2000:]}")
    return seconds, usage.ru_maxrss / 2 ** 20


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["frfsr-default", "frfsr-robust"])
    p.add_argument("--size", type=int, default=500, help="LR side (default %(default)s)")
    p.add_argument("--ref-size", type=int, default=2000, help="Ref side (default %(default)s)")
    p.add_argument("extra", nargs=argparse.REMAINDER, help="more `frfsr upscale` options, after --")
    a = p.parse_args(argv)
    extra = [x for x in a.extra if x != "--"]
    with tempfile.TemporaryDirectory() as tmp:
        lr, ref = make_inputs(Path(tmp), a.size, a.ref_size)
        print(f"| model | LR | Ref | seconds | peak resident memory (GB) |\n|---|---|---|---:|---:|")
        times = {}
        for m in a.models:
            sec, gb = run_one(m, lr, ref, Path(tmp) / f"sr-{len(times)}.png", extra)
            times[m] = sec
            print(f"| {m} | {a.size}x{a.size} | {a.ref_size}x{a.ref_size} | {sec:.1f} | {gb:.1f} |", flush=True)
    first = a.models[0]
    for m in a.models[1:]:
        print(f"{m}: {times[m] / times[first]:.2f}x the time of {first}")
    print(f"(load average at the end: {os.getloadavg()[0]:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
