"""Registers, spills and shared memory of every fused-kernel specialisation the wrappers launch,
compiled ahead of time for NVIDIA and AMD targets on any machine (no GPU needed).

    python benchmarks/bench_kernels_aot.py [--targets sm_80 sm_90 ...] [--subset] [--jobs 2] [--details]

Runs :mod:`frfsr.ops.triton.aot` in a process without TRITON_INTERPRET: the wrappers run on
meta tensors describing GPU tensors (paper and tiny configs, a 256 px tile and a 4000 x 4000
output with a 4000 x 4000 Ref, fp32 / tf32 / bf16 / fp16, channels-last), every launch is
specialised as Triton does at launch and compiled for sm_80, sm_86, sm_89, sm_90, gfx942,
gfx90a and gfx1100. Prints the kernel x target table (the worst registers / spills / shared
memory over each kernel's specialisations) and the problems tests/test_kernels_aot.py fails
on; exits 1 when there are any.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    return subprocess.call([sys.executable, "-m", "frfsr.ops.triton.aot", *argv], env=env, cwd=ROOT)


if __name__ == "__main__":
    raise SystemExit(main())
