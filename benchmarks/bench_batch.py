"""Images per second of `frfsr upscale` on a folder, one process against several (CPU).

    python benchmarks/bench_batch.py --count 32 --size 64 --processes 1 2

The folder holds ``--count`` LRs of ``--size`` x ``--size`` pixels (crops of the bundled demo
LR at different places), the Ref is the bundled demo Ref, and the model the bundled default
weights. Each case is the real command in a fresh output folder: one process with every
core's thread, or ``ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes N``
with ``cores / N`` threads each (OMP_NUM_THREADS; ``--threads`` sets it for every case). "run" is the time the command itself
reports from listing the inputs to the last output (images/s over it), "wall" the whole
command, process starts and model loading included. Prints one JSON line per case and a
Markdown table with the commands.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUMMARY = re.compile(r"(\d+) written, (\d+) skipped .*? in ([\d.]+) s")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_inputs(folder: Path, count: int, size: int) -> Path:
    """``count`` LR crops of the demo image in ``folder``, and the demo Ref beside it; returns the Ref's path."""
    import numpy as np
    from PIL import Image

    from frfsr.demo import ASSETS
    lr = Image.open(ASSETS / "lr.png").convert("RGB")
    if min(lr.size) < size:
        lr = lr.resize((max(size, lr.width), max(size, lr.height)), Image.BICUBIC)
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        x, y = (int(rng.integers(0, d - size + 1)) for d in lr.size)
        lr.crop((x, y, x + size, y + size)).save(folder / f"lr_{i:03d}.png")
    ref = folder.parent / "ref.png"
    Image.open(ASSETS / "ref.png").save(ref)
    return ref


def command(processes: int, lrs: str, ref: str, out: str, model: str) -> list[str]:
    upscale = ["-m", "frfsr.cli", "upscale", lrs, "--ref", ref, "-o", out, "--model", model,
               "--device", "cpu", "--no-progress"]
    if processes == 1:
        return [sys.executable, *upscale]
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
            str(_free_port()), *upscale]


def run_case(processes: int, work: Path, model: str, cores: int, threads: int | None = None) -> dict:
    """One run over ``work/lrs`` with ``work/ref.png`` into a fresh ``work/out_<processes>_<threads>``."""
    threads = threads or max(1, cores // processes)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads),
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    if processes > 1:
        env["ACCELERATE_USE_CPU"] = "1"
    cmd = command(processes, "lrs", "ref.png", f"out_{processes}_{threads}", model)
    t = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=work)
    wall = time.perf_counter() - t
    found = SUMMARY.findall(res.stdout)
    if res.returncode != 0 or not found:
        raise SystemExit(f"{shlex.join(cmd)} failed ({res.returncode}):\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
    written, _, seconds = found[-1]
    shown = (("ACCELERATE_USE_CPU=1 " if processes > 1 else "") + f"OMP_NUM_THREADS={threads} "
             + shlex.join(["python" if c == sys.executable else c for c in cmd]))
    return {"processes": processes, "threads_each": threads, "images": int(written), "run_s": float(seconds),
            "images_per_s": round(int(written) / float(seconds), 2), "wall_s": round(wall, 1), "command": shown}


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=32, help="LRs in the folder (default: %(default)s)")
    ap.add_argument("--size", type=int, default=64, help="LR side in pixels (default: %(default)s)")
    ap.add_argument("--processes", type=int, nargs="+", default=[1, 2], help="process counts (default: 1 2)")
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 1,
                    help="threads shared out between the processes (default: this machine's cores, %(default)s)")
    ap.add_argument("--threads", type=int, help="threads per process (default: cores / processes)")
    ap.add_argument("--model", default="frfsr-default", help="model (default: the bundled weights)")
    args = ap.parse_args(argv)
    if args.count < 1 or args.size < 15:
        ap.error("--count must be >= 1 and --size >= 15 (the minimum LR size)")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_inputs(tmp / "lrs", args.count, args.size)
        for n in args.processes:
            row = run_case(n, tmp, args.model, args.cores, args.threads)
            if row["images"] != args.count:
                raise SystemExit(f"{row['images']} of {args.count} images written: {row}")
            print(json.dumps(row), flush=True)
            rows.append(row)
    from frfsr.devices import cpu_name
    print(f"\n`{shlex.join(['python', 'benchmarks/bench_batch.py', *(argv if argv is not None else sys.argv[1:])])}`; "
          f"CPU: {cpu_name()}, {args.cores} cores; {args.count} LRs of {args.size}x{args.size}, Ref 400x400 "
          f"(bundled demo), {args.model}\n")
    print("| processes x threads | images | run (s) | images/s | wall incl. start (s) | command |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['processes']} x {r['threads_each']} | {r['images']} | {r['run_s']:.1f} | {r['images_per_s']:.2f} "
              f"| {r['wall_s']:.1f} | `{r['command']}` |")
    return rows


if __name__ == "__main__":
    main()
