import os
import sys
from pathlib import Path

# The fused Triton kernels run under Triton's interpreter on CPU-only machines; the
# variable must be set before anything imports triton.
if os.environ.get("FRFSR_TEST_CUDA") != "1":
    os.environ.setdefault("TRITON_INTERPRET", "1")

sys.path.insert(0, str(Path(__file__).parent))
