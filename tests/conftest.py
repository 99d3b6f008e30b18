import os
import sys
from pathlib import Path

# The fused Triton kernels run under Triton's interpreter on CPU-only machines; the
# variable must be set before anything imports triton.
if os.environ.get("FRFSR_TEST_CUDA") != "1":
    os.environ.setdefault("TRITON_INTERPRET", "1")

# One intra-op thread (unless OMP_NUM_THREADS says otherwise), here and in the subprocesses
# the tests start. The tests run tiny models, whose many small ops gain nothing from a
# second thread; on a busy 2-core machine two OpenMP threads per op wait on each other and
# every forward gets 10-20x slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

sys.path.insert(0, str(Path(__file__).parent))
