"""Every kernel specialisation the fused wrappers launch, compiled ahead of time for real GPU
targets on this CPU-only machine (:mod:`frfsr.ops.triton.aot`).

The wrappers run on meta tensors that describe GPU tensors (the paper and tiny configs, a
256 px tile and a 4000 x 4000 output with a 4000 x 4000 Ref, fp32 with and without TF32,
bf16, channels-last); their launches are recorded, specialised by Triton's launch-time binder
(ints equal to 1, multiples of 16, i64 from 2^31) and compiled for sm_80, sm_86, sm_89,
sm_90, gfx942, gfx90a and gfx1100. The test fails on a compile error, on shared memory above
a target's limit and on spills above the per-kernel budget (none at all for window_match and
the deformable conv's input backward). It runs in a subprocess without TRITON_INTERPRET (the
interpreter would replace the kernels).

The CI run takes a representative subset, about 160 compilations (``aot.cases(full=False)``:
every kernel, dtype and precision branch at both sizes, fp16, the relu2_1 scale and the tiny
config left out; ``aot.select``: every distinct specialisation on sm_90, on sm_80 one per
kernel, config and operand dtypes, on the other targets likewise with only the first config
of the autotuned patch_match). The full set (about 450) runs with
``python benchmarks/bench_kernels_aot.py``; its table is in BENCHMARKS.md.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[1]

_SCRIPT = r"""
import json, os, sys
from frfsr.ops.triton import aot
targets = sys.argv[1].split(",")
results = aot.compile_all(targets, full=False, jobs=int(sys.argv[2]))
launches = {t: aot.record_launches(t, full=False) for t in targets}
out = {
    "problems": aot.check(results),
    "index": aot.index_problems(launches["sm_90"]),
    "table": aot.table(results),
    "compiled": {t: sorted({r.kernel for r in results if r.target == t and not r.error}) for t in targets},
    "precisions": {t: sorted({str(l.kwargs.get("PRECISION")) for l in ls if "PRECISION" in l.kwargs})
                   for t, ls in launches.items()},
    "i64": sorted({name for l in launches["sm_90"] for name, spec in aot.specialise(l, "sm_90")[1].items()
                   if spec == "i64"}),
    "n": len(results),
}
print("AOT-JSON" + json.dumps(out))
"""

KERNELS = {"_patch_match_kernel", "_window_match_kernel", "_dcn_fwd_kernel", "_dcn_bwd_input_kernel",
           "_dcn_bwd_weight_kernel", "_ddf_fwd_kernel", "_ddf_bwd_x_kernel", "_ddf_bwd_filters_kernel"}


@pytest.fixture(scope="module")
def aot_report(tmp_path_factory):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env["TRITON_CACHE_DIR"] = str(tmp_path_factory.mktemp("triton-cache"))
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    targets = "sm_80,sm_86,sm_89,sm_90,gfx942,gfx90a,gfx1100"
    jobs = max(1, min(2, os.cpu_count() or 1))
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, targets, str(jobs)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("AOT-JSON"))
    return json.loads(line[len("AOT-JSON"):])


def test_every_launched_specialisation_compiles_within_limits(aot_report):
    """No compile error, shared memory within each target's limit, spills within budget
    (window_match at search cell 4 and dcn_bwd_input: none) on every target."""
    assert not aot_report["problems"], "\n".join(aot_report["problems"]) + "\n" + aot_report["table"]
    for target, kernels in aot_report["compiled"].items():
        assert set(kernels) == KERNELS, (target, kernels)


def test_amd_without_tf32_gets_ieee_dots(aot_report):
    """gfx90a and gfx1100 have no tf32 dot in Triton: the wrappers ask for 'ieee' there (and
    compile, above); sm_90 and gfx942 take tf32 where the user allows it."""
    for target in ("gfx90a", "gfx1100"):
        assert aot_report["precisions"][target] == ["ieee"], aot_report["precisions"]
    for target in ("sm_90", "gfx942"):
        assert "tf32" in aot_report["precisions"][target], aot_report["precisions"]


def test_16mp_indexing_fits_the_kernels_offsets(aot_report):
    """At a 4000 x 4000 output with a 4000 x 4000 Ref, every tensor a kernel addresses with
    32-bit offsets spans less than 2^31 elements per sample (the 64-bit ones:
    tests/test_kernels_index.py), and the batch strides beyond 2^31 were specialised as i64."""
    assert not aot_report["index"], "\n".join(aot_report["index"])
    assert {"s_ob", "s_qb", "s_kb"} <= set(aot_report["i64"]), aot_report["i64"]
