import os
import sys
from pathlib import Path

# The fused Triton kernels run under Triton's interpreter on CPU-only machines; the
# variable must be set before anything imports triton.
if os.environ.get("FRFSR_TEST_CUDA") != "1":
    os.environ.setdefault("TRITON_INTERPRET", "1")
else:
    # the parity tests compare the fused kernels themselves with the reference ops: no
    # first-use self-check, which would swap a failing kernel for the reference op
    os.environ.setdefault("FRFSR_FUSED_SELFCHECK", "0")

# One intra-op thread (unless OMP_NUM_THREADS says otherwise, e.g. OMP_NUM_THREADS=2), here
# and in the subprocesses the tests start. The tests run tiny models, whose many small ops
# gain little from a second thread; on a busy 2-core machine two OpenMP threads per op wait
# on each other and a tiny forward gets 10-20x slower (measured: 0.4 s -> 7-13 s).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

try:
    torch.set_num_threads(max(1, int(os.environ["OMP_NUM_THREADS"])))
except ValueError:          # e.g. "4,2" (nested levels) or empty: leave torch's default
    pass

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture
def one_thread():
    """One intra-op thread for the test, whatever OMP_NUM_THREADS says (tiny models run
    fastest so, and a busy CI box does not oversubscribe); restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
