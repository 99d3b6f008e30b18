#!/usr/bin/env bash
# One prepared GPU check for a lent H100/H200 (or any CUDA machine):
#   1. makes `frfsr` importable (pip install -e .[test] only if something is missing;
#      falls back to PYTHONPATH when there is no network),
#   2. runs tests/test_ops_fused.py with FRFSR_TEST_CUDA=1: the kernels are compiled for
#      the GPU (no interpreter) and the larger cuda_* cases run too,
#   3. runs benchmarks/bench_ops.py (CUDA-event medians, markdown table).
# Outputs go to "$OUT" when set (else ./gpu_check_out): nvidia-smi.txt, pytest.txt,
# bench.txt, bench_ops.md, bench_ops.json, summary.txt.
# Time limits: TEST_TIMEOUT (default 300 s) and BENCH_TIMEOUT (default 240 s).
set -u
cd "$(dirname "$0")/.."
OUT_DIR="${OUT:-gpu_check_out}"
mkdir -p "$OUT_DIR"

{ nvidia-smi || true; python -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, 'device', torch.cuda.get_device_name() if torch.cuda.is_available() else None)"; } \
    > "$OUT_DIR/nvidia-smi.txt" 2>&1
cat "$OUT_DIR/nvidia-smi.txt"

if ! python -c "import frfsr.ops, triton, pytest" >/dev/null 2>&1; then
    echo "installing: pip install -e .[test]"
    pip install -e '.[test]' > "$OUT_DIR/pip.log" 2>&1 || echo "pip install failed (see pip.log); relying on PYTHONPATH"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
unset TRITON_INTERPRET

echo "== pytest tests/test_ops_fused.py (FRFSR_TEST_CUDA=1)"
FRFSR_TEST_CUDA=1 timeout "${TEST_TIMEOUT:-300}" python -m pytest tests/test_ops_fused.py -q -rs -p no:cacheprovider \
    2>&1 | tee "$OUT_DIR/pytest.txt"
test_rc=${PIPESTATUS[0]}

echo "== benchmarks/bench_ops.py"
timeout "${BENCH_TIMEOUT:-240}" python benchmarks/bench_ops.py --out "$OUT_DIR/bench_ops" 2>&1 | tee "$OUT_DIR/bench.txt"
bench_rc=${PIPESTATUS[0]}

echo "pytest rc=$test_rc bench rc=$bench_rc" | tee "$OUT_DIR/summary.txt"
[ "$test_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
