"""`frfsr demo` on the shipped weights, and the bundled weights loading offline."""
import contextlib
import io

import numpy as np
import pytest
from PIL import Image

from frfsr import FRFSRPipeline
from frfsr.cli import main
from frfsr.demo import ASSETS, COLUMNS, GAP, LABEL_H, PANEL, comparison_size
from frfsr.hub import BUNDLED_DIR

pytestmark = pytest.mark.skipif(not (BUNDLED_DIR / "model.safetensors").is_file(),
                                reason="the bundled default weights are not in this checkout")


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """One `frfsr demo` run for the module: its output folder and what it printed."""
    out = tmp_path_factory.mktemp("demo")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["demo", "-o", str(out)]) == 0
    return out, printed.getvalue()


@pytest.fixture(scope="module")
def demo_out(demo_run):
    return demo_run[0]


def test_demo_writes_sr_and_comparison(demo_out, capsys):
    lr = Image.open(ASSETS / "lr.png")
    sr = Image.open(demo_out / "sr.png")
    assert sr.size == (4 * lr.width, 4 * lr.height)
    comp = Image.open(demo_out / "comparison.png").convert("RGB")
    assert comp.size == comparison_size()
    arr = np.asarray(comp).astype(float)
    for i in range(len(COLUMNS)):                       # every panel, top and enlarged, has content
        x = GAP + i * (PANEL + GAP)
        for y in (GAP + LABEL_H, 2 * GAP + 2 * LABEL_H + PANEL):
            panel = arr[y + 4:y + PANEL - 4, x + 4:x + PANEL - 4]
            assert panel.std() > 3, f"panel {COLUMNS[i]} at y={y} is flat"
    gap = arr[:, GAP + PANEL + 1:GAP + PANEL + GAP - 1]  # white gutters between columns
    assert gap.min() == 255


def test_demo_prints_paths_and_psnr(demo_run):
    folder, out = demo_run
    assert str(folder / "comparison.png") in out and "PSNR-Y" in out


def test_bundled_weights_load_offline_with_a_truthful_card(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")      # any network use would fail
    pipe = FRFSRPipeline.from_pretrained()
    assert pipe.config.stage in (1, 2) and pipe.config.ngf == 32
    assert (BUNDLED_DIR / "model.safetensors").stat().st_size < 20 * 2 ** 20
    card = (BUNDLED_DIR / "README.md").read_text()
    for must in ("scikit-image", "astronaut", "coffee", "rocket", "chelsea", "steps", "2-core CPU", "held-out"):
        assert must in card, f"the model card does not mention {must!r}"


def test_shipped_assets_come_from_a_heldout_photo():
    for name in ("lr.png", "ref.png", "hr.png"):
        assert (ASSETS / name).is_file()
    hr, lr = Image.open(ASSETS / "hr.png"), Image.open(ASSETS / "lr.png")
    assert hr.size == (4 * lr.width, 4 * lr.height)
    import inspect

    from benchmark_scripts import load_script
    from frfsr_train.data.views import HELDOUT_PHOTOS
    make_demo_inputs = load_script("train", "make_demo_inputs").make_demo_inputs
    assert inspect.signature(make_demo_inputs).parameters["photo"].default in HELDOUT_PHOTOS
