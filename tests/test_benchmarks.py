"""The benchmark scripts run end to end (tiny sizes, CPU), so a GPU run does not fail on them."""
import json
import math
import re
from pathlib import Path

import pytest
from benchmark_scripts import load_benchmark

ROOT = Path(__file__).resolve().parents[1]




def test_bench_inference_cpu_with_accuracy(tmp_path):
    bench = load_benchmark("bench_inference")
    out = tmp_path / "inf"
    # tiny sizes (bf16 autocast is emulated, slowly, on CPUs without native bf16): HR 132x64, LR 33x16, two
    # tiles of 32 (the smallest with the default overlap of 16); the bundled weights on the central 16x16 LR
    # of the demo image; one timed run per case
    rows = bench.main(["--device", "cpu", "--preset", "tiny", "--sizes", "132x64", "--reps", "1", "--warmup", "0",
                       "--dtypes", "fp32", "bf16", "--tile", "32", "--channels-last", "--accuracy", "--accuracy-crop", "16",
                       "--ref-scales", "1", "0.71", "--out", str(out)])
    assert [r["model"] for r in rows] == ["frfsr fp32", "frfsr bf16", "frfsr bf16 channels_last",
                                          "frfsr bf16 Ref pyramid 1/0.71", "frfsr bf16 tiled 32"]
    assert all(isinstance(r["ms"], (int, float)) and "error" not in r for r in rows)     # well formed, not a speed
    saved = json.loads(out.with_suffix(".json").read_text())
    assert saved["env"]["preset"] == "tiny"
    acc = saved["accuracy"]
    assert [a["weights"].split(",")[0] for a in acc] == ["bundled default weights", "bundled robust weights",
                                                         "tiny preset (seed 0)"]
    for a in acc:   # bf16 autocast changes the output, a little
        assert 30 < a["psnr_bf16_vs_fp32"] < math.inf
    assert "psnr_bf16_vs_fp32" in out.with_suffix(".md").read_text()



def test_bench_inference_times_the_prior_preset(tmp_path):
    """The `prior` preset (SIFE with the RRDB's x4 upsampler) is timed like the others (gpu_check.sh step 3p)."""
    bench = load_benchmark("bench_inference")
    rows = bench.main(["--device", "cpu", "--preset", "prior", "--sizes", "64x64", "--reps", "1", "--warmup", "0",
                       "--dtypes", "fp32", "--no-accuracy", "--out", str(tmp_path / "prior")])
    assert [r["model"] for r in rows] == ["frfsr fp32"] and "error" not in rows[0]
    assert json.loads((tmp_path / "prior.json").read_text())["env"]["preset"] == "prior"

def test_bench_inference_rejects_sizes_not_divisible_by_4():
    bench = load_benchmark("bench_inference")
    with pytest.raises(SystemExit):
        bench.main(["--device", "cpu", "--sizes", "97x64"])
    with pytest.raises(SystemExit):
        bench.main(["--device", "cpu", "--sizes", "64x64", "--accuracy-crop", "14"])


def test_bench_train_smoke(tmp_path):
    bench = load_benchmark("bench_train")
    out = tmp_path / "train.json"
    assert bench.main(["--smoke", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["preset"] == "tiny" and r["batch"] == 2
    assert all(isinstance(r[k], (int, float)) and r[k] >= 0 for k in ("samples_per_s", "median_step_ms"))


def test_bench_train_official_needs_the_paper_stage1(tmp_path):
    bench = load_benchmark("bench_train")
    with pytest.raises(SystemExit, match="paper preset"):
        bench.main(["--smoke", "--official-port", str(tmp_path / "port.py")])


def test_bench_match_times_random_and_photo_features(tmp_path, capsys):
    import numpy as np
    from PIL import Image
    bench = load_benchmark("bench_match")
    photo = tmp_path / "photo.png"               # LR 16 and 20 need 80x100 (4L x 5L)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (80, 100, 3), dtype=np.uint8)).save(photo)
    for extra in ([], ["--photo", str(photo)]):
        assert bench.main(["--sizes", "16", "20", "--reps", "1"] + extra) == 0
        out = capsys.readouterr().out
        rows = [line for line in out.splitlines() if line.startswith("| 16 |") or line.startswith("| 20 |")]
        # the speed-up column is a number followed by "x" (its value depends on the machine's load: not checked)
        assert len(rows) == 2 and all(re.fullmatch(r"\d+(\.\d+)?x", r.split("|")[-2].strip()) for r in rows)
        assert ("photo " + str(photo)) in out if extra else "random normalised features" in out
    with pytest.raises(ValueError, match="needs at least"):
        bench.main(["--sizes", "20", "24", "--photo", str(photo)])
    with pytest.raises(SystemExit):                  # one size: no exponent to fit
        bench.main(["--sizes", "16"])


def test_bench_ops_cpu_check_runs_every_case_under_the_interpreter(tmp_path):
    # the GPU benchmark of the fused kernels, once at tiny sizes under the Triton interpreter (a
    # subprocess: TRITON_INTERPRET must be set before Triton is imported)
    import os
    import subprocess
    import sys
    pytest.importorskip("triton")
    out = tmp_path / "ops"
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_ops.py"), "--cpu-check", "--out", str(out)],
                   check=True, env=env, cwd=ROOT, timeout=600, capture_output=True)
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    ops = {r["op"] for r in rows}
    assert ops == {"patch_match", "window_match", "match", "deform_conv", "ddf"}
    for r in rows:
        assert r["maxdiff"] is not None
        assert r["maxdiff"] < (0.05 if r["op"] == "match" else 1e-4), r


def test_bench_upscale_times_each_model_in_its_own_process(capsys):
    bench = load_benchmark("bench_upscale")
    assert bench.main(["--models", "frfsr-default", "frfsr-robust", "--size", "24", "--ref-size", "96"]) == 0
    out = capsys.readouterr().out
    rows = [r for r in out.splitlines() if r.startswith("| frfsr-")]
    assert [r.split("|")[1].strip() for r in rows] == ["frfsr-default", "frfsr-robust"]
    assert all(r.split("|")[2].strip() == "24x24" and float(r.split("|")[4]) > 0 for r in rows)
    assert re.search(r"frfsr-robust: \d+\.\d\dx the time of frfsr-default", out)
    with pytest.raises(RuntimeError, match="failed"):
        bench.main(["--models", "no-such-model", "--size", "24", "--ref-size", "96"])


def test_eval_beside_realesrgan_table_and_grid(tmp_path):
    """The evaluation loop, table and picture grid (the methods here: bicubic, the truth half
    mixed in, and a tiny random FRFSR model with and without its Ref; the real run adds the
    converted Real-ESRGAN, which needs the prior in the cache)."""
    import torch
    from PIL import Image

    from frfsr import FRFSR, FRFSRConfig
    from frfsr_train.data.degrade import bicubic_upsample
    from frfsr_train.real_inputs import build_cases
    bench = load_benchmark("eval_beside_realesrgan")
    cases = build_cases(photos=["skimage:coffee", "skimage:rocket"], kinds=["clean", "jpeg70", "unrelated"],
                        patch=64, crops=1)
    torch.manual_seed(0)
    model = FRFSR(FRFSRConfig.tiny()).eval()
    bic = lambda c: bicubic_upsample(c.lr, 4).clamp(0, 1)
    fns = {"bicubic": bic, "half truth": lambda c: 0.5 * c.hr + 0.5 * bic(c),
           "tiny": lambda c: bench.frfsr_sr(model, c.lr, c.ref),
           "tiny (no Ref)": lambda c: bench.frfsr_sr(model, c.lr, bic(c))}
    rows, kept = bench.evaluate(cases, fns, keep=lambda c: c.kind != "jpeg70")
    by = {(r["method"], r["kind"]): r for r in rows}
    assert by[("half truth", "clean")]["fidelity"] > by[("bicubic", "clean")]["fidelity"]
    assert by[("half truth", "clean")]["psnr"] > by[("bicubic", "clean")]["psnr"] + 3
    assert ("tiny (no Ref)", "unrelated") not in by and by[("tiny (no Ref)", "jpeg70")]["n"] == 2
    assert all(r["n"] == 2 and r["seconds"] >= 0 for r in rows)
    table = bench.markdown(rows)
    assert "| LR as JPEG q70, no Ref (LR as its Ref) | 2 | - | - | " in table
    assert table.count("\n") == 1 + 5 + 1 and "tiny (no Ref)" not in table.splitlines()[0]
    grid = bench.grid_table(rows)
    assert grid.count("\n") == 1 + 5 and "seconds" not in grid
    cells = grid.splitlines()[2].split(" | ")
    assert cells[1] == "2" and float(cells[2]) < 1.0      # clean LR: bicubic has less grid energy than the truth
    bench.picture_grid(cases, kept, ["bicubic", "half truth", "tiny"], tmp_path / "grid.png", region=16, zoom=2)
    w, h = Image.open(tmp_path / "grid.png").size
    assert w == 4 + 4 * (32 + 4) and h == 18 + 4 * (32 + 4 + 14)       # HR + 3 methods; 2 photos x 2 kinds


def _gpu_check(tmp_path, **env):
    import os
    import subprocess
    e = {k: v for k, v in os.environ.items() if k not in ("STEPS", "BUDGET", "MIN_STEP", "OUT")}
    e.update(OUT=str(tmp_path), **env)
    r = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], env=e, capture_output=True, text=True,
                       timeout=300)
    return r, (tmp_path / "summary.txt").read_text()


def test_gpu_check_skips_what_the_budget_leaves_no_time_for(tmp_path):
    """BUDGET bounds the whole run: a step that cannot get MIN_STEP seconds does not start, is
    named in summary.txt, and the run does not pass."""
    r, summary = _gpu_check(tmp_path, BUDGET="0")
    assert r.returncode != 0
    assert "skipped: 0 1 2 3 4 3p 3b" in summary
    assert "== 0." not in r.stdout and "== 1." not in r.stdout
    assert (tmp_path / "gpu_check.log").is_file()


def test_gpu_check_runs_a_step_under_the_budget(tmp_path):
    """One named step (the fused self-check of `frfsr info`, which a CPU also runs) within the
    budget: it runs, nothing is skipped, the exit status is the step's."""
    r, summary = _gpu_check(tmp_path, STEPS="0", BUDGET="200")
    assert "== 0. frfsr info" in r.stdout
    assert "info rc=0" in summary and "skipped: none" in summary, summary
    assert r.returncode == 0, r.stdout[-3000:]
