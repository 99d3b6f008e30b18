#!/usr/bin/env bash
# One prepared GPU run for an H100/H200 (or any CUDA machine) that produces every GPU figure
# BENCHMARKS.md asks for. Steps, in the order they run (what matters most first):
#   0. `frfsr info`: the fused kernels' first-use self-check on this GPU (fp32 and bf16, each
#      operator against its reference op; a failure means that case runs the reference op);
#   1. tests/test_ops_fused.py, tests/test_match_fast.py and tests/test_compile.py with
#      FRFSR_TEST_CUDA=1 (and FRFSR_FUSED_SELFCHECK=0, tests/conftest.py, so the parity tests
#      test the fused kernels themselves): the Triton kernels (exact and windowed matching,
#      deformable conv, DDF) compiled for the GPU (no interpreter) against the reference ops,
#      forward and backward through the custom operators, larger cases too, the fast matching
#      mode, and the whole tiny model on the fused path under torch.compile(fullgraph=True)
#      against eager;
#   2. benchmarks/bench_ops.py: each kernel against its reference op (CUDA-event medians), the
#      matching kernels' share of the measured bf16 matmul rate, and the fast matching mode
#      against exact matching at LR 250 / Ref 1000 and LR 500 / Ref 2000 texture maps;
#   3. benchmarks/bench_inference.py: end-to-end fp32 / bf16 at HR 500x332 ... 4000x4000, bf16
#      with the Ref scale pyramid 1 / 0.71 / 0.5 up to 2000x2000, the bf16-vs-fp32 and
#      fused-vs-reference PSNR (bundled default and robust weights, paper preset), and the
#      released architecture in the same run when FRFSR_OFFICIAL_PORT (the oracle port script)
#      and FRFSR_OFFICIAL_SRC (an extracted copy of the authors' repository) are set;
#   4. benchmarks/bench_train.py: the stage-1 training step, batch 9 at 160x160, fp32 and
#      bf16, beside the released architecture's step when the port is set;
#   3p. bench_inference.py --preset prior: the `prior` preset (SIFE with the RRDB x4 prior's
#      upsampler; random weights) at HR 500x332 and 2000x2000, fp32 and bf16;
#   3b. bench_inference.py --channels-last --compile: copies with channels_last weights and
#      torch.compile'd (COMPILE_MODE, default reduce-overhead = CUDA graphs), HR 500x332, bf16;
#   aot (only when named in STEPS): tests/test_kernels_aot.py, every launched specialisation
#      compiled ahead of time for sm_80/86/89/90 and gfx942/gfx90a/gfx1100 with this machine's
#      Triton (CI runs it on a CPU with the Triton it installs).
# STEPS picks steps (default "0 1 2 3 4 3p 3b"). BUDGET (seconds, default 540) bounds the whole
# run: each step runs under the smaller of its own limit and what is left of the budget, and a
# step that would start with less than MIN_STEP (default 30) seconds left is skipped and named
# in summary.txt, so that a second call with STEPS set to the skipped steps completes the set.
# Own limits (seconds): INFO_TIMEOUT 60, TEST_TIMEOUT 180, OPS_TIMEOUT 120, INFER_TIMEOUT 240,
# TRAIN_TIMEOUT 80 for each of the two training precisions, PRIOR_TIMEOUT 90, COMPILE_TIMEOUT 100,
# AOT_TIMEOUT 240.
# Nothing is installed from the network (the machine may have none): the checkout goes on
# PYTHONPATH, and a package the steps import that the machine lacks is named up front.
# Outputs go to "$OUT" when set (else ./gpu_check_out): gpu_check.log (everything printed,
# tables included), bench_ops.json, bench_inference.json, bench_train.json, bench_prior.json,
# bench_compile.json, summary.txt.
# SIZES overrides the inference sizes (default "500x332 1000x1000 2000x2000 4000x4000"); TILE the
# LR tile side of the tiled bf16 case timed where the LR is larger (default 500).
set -u
cd "$(dirname "$0")/.."
OUT_DIR="${OUT:-gpu_check_out}"
mkdir -p "$OUT_DIR"
LOG="$OUT_DIR/gpu_check.log"
export PYTHONUNBUFFERED=1

run_all() {
start=$SECONDS
nvidia-smi || true
export PYTHONPATH="$PWD:$PWD/train${PYTHONPATH:+:$PYTHONPATH}"
unset TRITON_INTERPRET
python -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, 'device', torch.cuda.get_device_name() if torch.cuda.is_available() else None)"
python -c "
import importlib.util
need = ['torch', 'triton', 'frfsr', 'pytest', 'safetensors', 'einops', 'numpy', 'PIL', 'huggingface_hub', 'tqdm',
        'accelerate', 'yaml']
missing = [n for n in need if importlib.util.find_spec(n) is None]
if missing:
    print('missing Python packages:', ' '.join(missing), '(the steps that import them fail; install them and rerun)')
"
official=()
if [ -n "${FRFSR_OFFICIAL_PORT:-}" ] && [ -n "${FRFSR_OFFICIAL_SRC:-}" ]; then
    official=(--official-port "$FRFSR_OFFICIAL_PORT")
else
    echo "FRFSR_OFFICIAL_PORT / FRFSR_OFFICIAL_SRC not set: no released-architecture baseline"
fi

info_rc=0 test_rc=0 ops_rc=0 infer_rc=0 train_rc=0 prior_rc=0 compile_rc=0 aot_rc=0 skipped="" limit=0
# want STEP OWN_LIMIT: true when STEP is asked for and at least MIN_STEP seconds of BUDGET are
# left; sets $limit to the smaller of OWN_LIMIT and what is left; a skipped step is recorded
want() {
    [[ " ${STEPS:-0 1 2 3 4 3p 3b} " == *" $1 "* ]] || return 1
    local left=$(( ${BUDGET:-540} - (SECONDS - start) ))
    if [ "$left" -lt "${MIN_STEP:-30}" ]; then
        echo "== $1: skipped, ${left}s left of BUDGET=${BUDGET:-540}"
        skipped="$skipped $1"
        return 1
    fi
    limit=$(( $2 < left ? $2 : left ))
}

if want 0 "${INFO_TIMEOUT:-60}"; then
echo "== 0. frfsr info (the fused kernels' self-check on this GPU)"
timeout "$limit" python -m frfsr.cli info || info_rc=$?
fi

if want 1 "${TEST_TIMEOUT:-180}"; then
echo "== 1. pytest tests/test_ops_fused.py tests/test_match_fast.py tests/test_compile.py (FRFSR_TEST_CUDA=1)"
FRFSR_TEST_CUDA=1 timeout "$limit" python -m pytest tests/test_ops_fused.py tests/test_match_fast.py \
    tests/test_compile.py -q -rs -p no:cacheprovider
test_rc=$?
fi

if want 2 "${OPS_TIMEOUT:-120}"; then
echo "== 2. benchmarks/bench_ops.py"
timeout "$limit" python benchmarks/bench_ops.py --out "$OUT_DIR/bench_ops"
ops_rc=$?
fi

if want 3 "${INFER_TIMEOUT:-240}"; then
echo "== 3. benchmarks/bench_inference.py"
# shellcheck disable=SC2086
timeout "$limit" python benchmarks/bench_inference.py --sizes ${SIZES:-500x332 1000x1000 2000x2000 4000x4000} \
    --tile "${TILE:-500}" --ref-scales 1 0.71 0.5 --accuracy "${official[@]}" --out "$OUT_DIR/bench_inference"
infer_rc=$?
fi

if want 4 $(( 2 * ${TRAIN_TIMEOUT:-80} )); then
echo "== 4. benchmarks/bench_train.py (batch 9, 160x160)"
for prec in no bf16; do
    timeout "$(( limit / 2 ))" python benchmarks/bench_train.py --precision "$prec" "${official[@]}" \
        --json "$OUT_DIR/bench_train_$prec.json" || train_rc=$?
done
python - "$OUT_DIR" <<'EOF'
import json, sys, pathlib
d = pathlib.Path(sys.argv[1])
parts = {p.stem[len("bench_train_"):]: json.loads(p.read_text()) for p in sorted(d.glob("bench_train_*.json"))}
(d / "bench_train.json").write_text(json.dumps(parts, indent=2) + "\n")
for p in d.glob("bench_train_*.json"):
    p.unlink()
EOF
fi

if want 3p "${PRIOR_TIMEOUT:-90}"; then
echo "== 3p. benchmarks/bench_inference.py --preset prior (SIFE with the RRDB x4 prior's upsampler, random weights)"
timeout "$limit" python benchmarks/bench_inference.py --preset prior --sizes 500x332 2000x2000 --no-accuracy \
    --out "$OUT_DIR/bench_prior"
prior_rc=$?
fi

if want 3b "${COMPILE_TIMEOUT:-100}"; then
echo "== 3b. channels_last and torch.compile'd inference (HR 500x332, bf16; warm-up compiles)"
timeout "$limit" python benchmarks/bench_inference.py --sizes 500x332 --dtypes bf16 --channels-last \
    --compile "${COMPILE_MODE:-reduce-overhead}" --no-accuracy --out "$OUT_DIR/bench_compile"
compile_rc=$?
fi

if want aot "${AOT_TIMEOUT:-240}"; then
echo "== aot. tests/test_kernels_aot.py (every target, this machine's Triton)"
timeout "$limit" python -m pytest tests/test_kernels_aot.py -q -rs -p no:cacheprovider || aot_rc=$?
fi

rm -f "$OUT_DIR"/bench_*.md       # the same tables are in gpu_check.log; $OUT returns at most 8 files

echo "info rc=$info_rc tests rc=$test_rc bench_ops rc=$ops_rc bench_inference rc=$infer_rc bench_train rc=$train_rc" \
     "prior rc=$prior_rc compile rc=$compile_rc aot rc=$aot_rc; $(( SECONDS - start ))s of BUDGET=${BUDGET:-540}; skipped:${skipped:- none}" \
    | tee "$OUT_DIR/summary.txt"
[ -z "$skipped" ] && [ "$info_rc" -eq 0 ] && [ "$test_rc" -eq 0 ] && [ "$ops_rc" -eq 0 ] && [ "$infer_rc" -eq 0 ] \
    && [ "$train_rc" -eq 0 ] && [ "$prior_rc" -eq 0 ] && [ "$compile_rc" -eq 0 ] && [ "$aot_rc" -eq 0 ]
}

run_all 2>&1 | tee "$LOG"
exit "${PIPESTATUS[0]}"
