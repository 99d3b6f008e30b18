"""The installed library is inference: importing it pulls in no training, data or evaluation
module (they live in train/frfsr_train), and the frfsr package holds none of them."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MOVED = ("training", "data", "evaluate", "real_inputs")


def test_inference_imports_nothing_of_training():
    script = ("import sys\n"
              "import frfsr, frfsr.pipeline, frfsr.cli, frfsr.batch, frfsr.video, frfsr.retrieval, frfsr.hub, "
              "frfsr.convert, frfsr.demo, frfsr_nodes.nodes\n"
              "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('frfsr_train', 'accelerate')\n"
              "             or m.startswith(tuple('frfsr.' + n for n in " + repr(MOVED) + ")))\n"
              "print('loaded:', bad)\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "loaded: []" in proc.stdout, proc.stdout


def test_frfsr_package_holds_no_training_code():
    pkg = ROOT / "frfsr"
    for name in MOVED:
        assert not (pkg / name).exists() and not (pkg / f"{name}.py").exists(), name
    assert (ROOT / "train" / "frfsr_train" / "training" / "loop.py").is_file()
    for path in pkg.rglob("*.py"):
        assert "frfsr_train" not in path.read_text(), f"{path.relative_to(ROOT)} refers to frfsr_train"


def test_train_scripts_find_their_package_without_the_test_path(tmp_path):
    """A script run as `python train/X.py` imports frfsr_train from its own folder."""
    proc = subprocess.run([sys.executable, str(ROOT / "train" / "evaluate.py"), "--help"], capture_output=True,
                          text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0 and "--layout" in proc.stdout, proc.stderr[-3000:]
