"""Peak host memory of frfsr.video.upscale_video against the clip's length: flat when frames
are streamed (one batch of decoded and 4x frames at a time, whatever the clip's length).

    python benchmarks/bench_video.py --seconds 2 20 --size 48x32 --fps 10 --model tiny

The clips (moving colour gradients with a 440 Hz sine audio track, H.264 + AAC in MP4) are
made first; each is then upscaled in a fresh process on the CPU. Peak = the process's
maximum resident memory (getrusage's high-water mark) at the end; "over baseline" = that
minus the resident memory just before ``upscale_video`` (model loaded, Ref read). Prints one
JSON line per clip and a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, resource, sys, time, torch
import av  # noqa: F401  (its libraries loaded before the baseline)
import numpy as np
from PIL import Image
from frfsr import FRFSR, FRFSRConfig, FRFSRPipeline
from frfsr.demo import ASSETS
from frfsr.video import upscale_video
src, dst, model, batch, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
if threads:
    torch.set_num_threads(threads)
torch.manual_seed(0)
pipe = FRFSRPipeline.from_pretrained() if model == "bundled" else FRFSRPipeline(FRFSR(FRFSRConfig.tiny()))
pipe.relevance_threshold = None
ref = Image.open(ASSETS / "ref.png").convert("RGB")
ref = ref.resize((192, round(192 * ref.height / ref.width)))
page = resource.getpagesize()
rss = lambda: int(open("/proc/self/statm").read().split()[1]) * page
before = rss()
t = time.perf_counter()
res = upscale_video(pipe, src, dst, ref, batch_size=batch, progress=False)
seconds = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"frames": res.frames, "fps": float(res.fps), "size": "x".join(map(str, res.size)),
                  "audio": res.audio, "seconds": round(seconds, 1), "frames_per_s": round(res.frames / seconds, 2),
                  "peak_mib": round(peak / 2**20), "over_baseline_mib": round((peak - before) / 2**20),
                  "baseline_mib": round(before / 2**20)}))
"""


def make_clip(path: Path, seconds: float, width: int, height: int, fps: int, sample_rate: int = 16000) -> int:
    """A clip of moving gradients with a sine audio track; returns its frame count."""
    import av
    import numpy as np
    n = max(1, round(seconds * fps))
    with av.open(str(path), "w") as out:
        v = out.add_stream("libx264", rate=fps)
        v.width, v.height, v.pix_fmt = width, height, "yuv420p"
        a = out.add_stream("aac", rate=sample_rate)
        a.layout = "mono"
        y, x = np.mgrid[0:height, 0:width].astype(np.float32)
        samples_per_frame = sample_rate // fps
        for i in range(n):
            rgb = np.stack([128 + 100 * np.sin((x + 2 * i) / 5), 128 + 100 * np.cos((y - i) / 4),
                            128 + 60 * np.sin((x + y + 3 * i) / 7)], -1).clip(0, 255).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            out.mux(v.encode(frame))
            k = i * samples_per_frame
            tone = 0.5 * np.sin(2 * np.pi * 440 * np.arange(k, k + samples_per_frame) / sample_rate)
            af = av.AudioFrame.from_ndarray(tone[None].astype(np.float32), format="fltp", layout="mono")
            af.sample_rate, af.pts = sample_rate, k
            out.mux(a.encode(af))
        out.mux(v.encode(None))
        out.mux(a.encode(None))
    return n


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", nargs="+", type=float, default=[2, 20], help="clip lengths")
    ap.add_argument("--size", default="48x32", help="LR frame size WxH (even)")
    ap.add_argument("--fps", type=int, default=10)
    ap.add_argument("--model", default="tiny", choices=["tiny", "bundled"],
                    help="tiny: the tiny preset, random weights (seed 0); bundled: the default weights")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--threads", type=int, default=0, help="torch threads in the child (0: torch's default)")
    args = ap.parse_args(argv)
    w, h = (int(v) for v in args.size.lower().split("x"))
    if w % 2 or h % 2:
        ap.error(f"--size {args.size}: the clips are H.264 yuv420p, which needs even sides")
    rows = []
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH")) if p))
    with tempfile.TemporaryDirectory(prefix="frfsr-bench-video-") as tmp:
        for seconds in args.seconds:
            src, dst = Path(tmp) / f"clip_{seconds:g}s.mp4", Path(tmp) / f"sr_{seconds:g}s.mp4"
            make_clip(src, seconds, w, h, args.fps)
            proc = subprocess.run([sys.executable, "-c", CHILD, str(src), str(dst), args.model, str(args.batch_size),
                                   str(args.threads)], capture_output=True, text=True, env=env)
            row = {"clip_s": seconds, "lr": f"{w}x{h}", "model": args.model, "batch": args.batch_size}
            if proc.returncode != 0:
                row["error"] = (proc.stderr.strip().splitlines() or ["killed"])[-1]
            else:
                row.update(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(json.dumps(row), flush=True)
            rows.append(row)
    from frfsr.devices import cpu_name
    print(f"\nCPU: {cpu_name()}, {os.cpu_count()} cores, torch threads: {args.threads or 'default'}")
    print("| clip | LR | frames | model | batch | peak RSS | over baseline | time | frames/s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        if "error" in r:
            print(f"| {r['clip_s']:g} s | {r['lr']} | | {r['model']} | {r['batch']} | failed: {r['error']} | | | |")
        else:
            print(f"| {r['clip_s']:g} s @ {r['fps']:g} fps | {r['lr']} | {r['frames']} | {r['model']} | {r['batch']} | "
                  f"{r['peak_mib']} MiB | {r['over_baseline_mib']} MiB | {r['seconds']} s | {r['frames_per_s']} |")
    return rows


if __name__ == "__main__":
    main()
