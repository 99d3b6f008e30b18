"""Peak host memory and time of encoding one Ref (FRFSR.encode_refs), whole versus in tiles.

    python benchmarks/bench_ref_memory.py --size 4000x3000 --preset paper --tiles 0 1024

Each case runs in a fresh process on the CPU (random weights; the cost does not depend on
them). Peak = the process's maximum resident memory during encoding minus its resident
memory just before; "kept" = the bytes of the encoded Ref (frfsr.models.frfsr.ref_bytes_per_pixel
per Ref pixel). Prints one JSON line per case and a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time, torch
from frfsr import FRFSR, FRFSRConfig
from frfsr.models.frfsr import ref_bytes_per_pixel
w, h, tile, preset = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]) or None, sys.argv[4]
torch.manual_seed(0)
model = FRFSR(FRFSRConfig.preset(preset)).eval()
ref = torch.rand(1, 3, h, w)
page = resource.getpagesize()
rss = lambda: int(open("/proc/self/statm").read().split()[1]) * page
before = rss()
t = time.perf_counter()
with torch.no_grad():
    enc = model.encode_refs(ref, tile=tile)
seconds = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
kept = sum(x.numel() * x.element_size() for x in enc.textures + enc.feats)
print(json.dumps({"ref": f"{w}x{h}", "preset": preset, "tile": tile, "seconds": round(seconds, 1),
                  "peak_gib": round((peak - before) / 2**30, 2), "kept_gib": round(kept / 2**30, 2),
                  "bytes_per_ref_pixel": ref_bytes_per_pixel(model.config)}))
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="4000x3000", help="Ref size WxH")
    ap.add_argument("--preset", default="paper", choices=["paper", "tiny"])
    ap.add_argument("--tiles", nargs="+", type=int, default=[0, 1024], help="extractor tiles (0: the whole Ref)")
    args = ap.parse_args(argv)
    w, h = (int(v) for v in args.size.lower().split("x"))
    rows = []
    for tile in args.tiles:
        proc = subprocess.run([sys.executable, "-c", CHILD, str(w), str(h), str(tile), args.preset],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            row = {"ref": args.size, "tile": tile or None, "error": (proc.stderr.strip().splitlines() or ["killed"])[-1]}
        else:
            row = json.loads(proc.stdout.strip().splitlines()[-1])
        print(json.dumps(row), flush=True)
        rows.append(row)
    from frfsr.devices import cpu_name
    print(f"\nCPU: {cpu_name()}, {os.cpu_count()} cores, torch threads: default")
    print("| Ref | preset | extractor tile | peak during encoding | kept (encoded Ref) | time |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        if "error" in r:
            print(f"| {r['ref']} | {args.preset} | {r['tile'] or 'whole'} | failed: {r['error']} | | |")
        else:
            print(f"| {r['ref']} | {r['preset']} | {r['tile'] or 'whole'} | {r['peak_gib']} GiB | {r['kept_gib']} GiB | "
                  f"{r['seconds']} s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
