"""Faults below the `frfsr` command: EXIF-rotated inputs, configs and weights that are not
what they claim, temporary files of runs going on at once, and the training command line's
expected failures (one line, exit 1, nothing written is lost)."""
import errno
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from frfsr import FRFSR, FRFSRConfig, FRFSRPipeline

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "train" / "configs" / "tiny.yaml"
TIMEOUT = 600


def _env(tmp_path: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["OMP_NUM_THREADS"] = "1"
    env["HF_HOME"] = str(tmp_path / "hf_home")
    env["FRFSR_CACHE"] = str(tmp_path / "cache")
    env["FRFSR_NATIVE"] = "0"
    return env


def _snapshot(folder: Path) -> dict:
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_line(text: str) -> str:
    assert "Traceback" not in text, text
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert len(lines) == 1, text
    return lines[0]


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return FRFSR(FRFSRConfig.tiny()).eval()


# ------------------------------------------------------------------ EXIF orientation
def _rotated_jpeg(path: Path, orientation: int = 6) -> np.ndarray:
    """A JPEG stored sideways with the EXIF orientation that turns it upright; returns the upright pixels."""
    rng = np.random.default_rng(0)
    stored = Image.fromarray(rng.integers(0, 256, (16, 24, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored.save(path, quality=95, exif=exif)
    from PIL import ImageOps
    return np.asarray(ImageOps.exif_transpose(Image.open(path)))


def test_exif_orientation_is_applied_on_reading(tmp_path):
    from frfsr.image_files import read_image
    upright = _rotated_jpeg(tmp_path / "cam.jpg")
    img = read_image(tmp_path / "cam.jpg", "LR")
    assert img.size == (16, 24) and np.array_equal(np.asarray(img), upright)
    assert img.getexif().get(0x0112, 1) == 1                      # the tag is dropped once applied


def test_the_pipeline_applies_exif_orientation_to_lr_and_ref(tmp_path, tiny):
    upright = _rotated_jpeg(tmp_path / "cam.jpg")
    _rotated_jpeg(tmp_path / "ref.jpg")
    pipe = FRFSRPipeline(tiny)
    pipe.relevance_threshold = None
    out = pipe(Image.open(tmp_path / "cam.jpg"), Image.open(tmp_path / "ref.jpg"), tile=None)
    assert out.size == (64, 96)                                     # the upright 16x24 LR, 4x
    want = pipe(Image.fromarray(upright), Image.fromarray(upright), tile=None)
    assert np.array_equal(np.asarray(out), np.asarray(want))


def test_the_cli_writes_the_output_upright(tmp_path, tiny):
    from frfsr import cli
    tiny.save_pretrained(tmp_path / "model")
    _rotated_jpeg(tmp_path / "cam.jpg")
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 44, 3), dtype=np.uint8)).save(tmp_path / "r.png")
    before = _snapshot(tmp_path)
    assert cli.main(["upscale", str(tmp_path / "cam.jpg"), "--ref", str(tmp_path / "r.png"), "-o",
                     str(tmp_path / "sr.png"), "--model", str(tmp_path / "model"), "--device", "cpu",
                     "--tile", "0", "--no-progress"]) == 0
    assert Image.open(tmp_path / "sr.png").size == (64, 96)
    assert {p: b for p, b in _snapshot(tmp_path).items() if p.name != "sr.png"} == before
    # a folder run sees the output complete (4x the upright size) and skips it the next time
    from frfsr.batch import BatchItem, is_complete
    assert is_complete(BatchItem(tmp_path / "cam.jpg", tmp_path / "sr.png"))


def test_upscale_files_never_writes_over_a_ref(tmp_path, tiny):
    from frfsr.batch import BatchError, upscale_files
    rng = np.random.default_rng(0)
    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "in" / "a.png")
    Image.fromarray(rng.integers(0, 256, (40, 44, 3), dtype=np.uint8)).save(tmp_path / "out" / "a.png")
    os.symlink(tmp_path / "out" / "a.png", tmp_path / "ref_link.png")
    before = _snapshot(tmp_path)
    for ref in (tmp_path / "out" / "a.png", tmp_path / "ref_link.png"):
        with pytest.raises(BatchError, match=r"the output .*out/a.png is the Ref .*(out/a|ref_link).png: an output "
                                             "never overwrites an input"):
            upscale_files(FRFSRPipeline(tiny), [tmp_path / "in"], [str(ref)], tmp_path / "out", progress=False,
                          state=None)
    assert _snapshot(tmp_path) == before


# ------------------------------------------------------------------ configs, weights, sizes
@pytest.mark.parametrize("field,value,accepted", [
    ("ddf_filter_norm", "no", "true or false"),
    ("ddf_filter_norm", 1, "true or false"),
    ("n_res_blocks", 1e8, "an integer"),
    ("ngf", True, "an integer"),
    ("ngf", "64", "an integer"),
    ("vgg_widths", [8, 16.5, 32], "a list of three integers"),
    ("ddf_se_ratio", "0.2", "a number"),
])
def test_config_values_are_checked_by_type(field, value, accepted):
    d = FRFSRConfig.tiny().to_dict()
    d[field] = value
    with pytest.raises(ValueError, match=rf"config field {field} must be {accepted}, got"):
        FRFSRConfig.from_dict(d)
    with pytest.raises(ValueError, match=rf"config.json: config field {field} must be {accepted}"):
        import tempfile
        with tempfile.TemporaryDirectory() as d2:
            (Path(d2) / "config.json").write_text(json.dumps(d))
            FRFSRConfig.from_json(Path(d2) / "config.json")


def test_the_parameter_count_is_known_before_the_model_is_built():
    from frfsr.models.frfsr import MAX_PARAMETERS, estimate_parameters
    for cfg in (FRFSRConfig.tiny(), FRFSRConfig.paper(), FRFSRConfig.tiny(stage=2),
                FRFSRConfig.tiny(n_res_blocks=3, n_ddf_blocks=0, sife_blocks=2)):
        assert estimate_parameters(cfg) == FRFSR(cfg).num_parameters()
    for overrides in ({"ngf": 65536}, {"n_res_blocks": 10 ** 8}, {"sife_blocks": 10 ** 7}):
        cfg = FRFSRConfig.paper(**overrides)
        assert estimate_parameters(cfg) > MAX_PARAMETERS
        with pytest.raises(ValueError, match=r"parameters .* more than the 1,000,000,000 accepted"):
            FRFSR(cfg)


def test_weights_of_a_non_float_dtype_are_refused(tmp_path, tiny):
    from safetensors.torch import load_file, save_file
    tiny.save_pretrained(tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    state = load_file(str(weights))
    save_file({k: (v * 100).to(torch.int32) if v.is_floating_point() else v for k, v in state.items()},
              str(weights))
    before = _snapshot(tmp_path)
    with pytest.raises(ValueError, match=r"does not fit the config: \d+ non-float \(.*int32.*weights are float32"):
        FRFSR.from_pretrained(tmp_path / "m")
    assert _snapshot(tmp_path) == before


# ------------------------------------------------------------------ temporary files and their owners
def test_cleanup_removes_only_what_dead_runs_left(tmp_path):
    from frfsr._fs import atomic_file, remove_leftovers, temp_owner, temp_pattern
    dest = tmp_path / "photo [1].png"
    dead = tmp_path / f".{dest.name}.frfsr-999999999-abcd.part"           # no such process
    dead_video = tmp_path / f".{dest.name}.frfsr-999999999-efgh.part.mp4"
    dead_folder = tmp_path / f".{dest.name}.frfsr-new-999999999-ijkl"
    parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = tmp_path / f".{dest.name}.frfsr-{parent.pid}-mnop.part"     # a run going on
        for p in (dead, dead_video, live):
            p.write_bytes(b"partial")
        dead_folder.mkdir()
        other = tmp_path / ".other.png.frfsr-999999999-qrst.part"           # another output's
        other.write_bytes(b"x")
        assert sorted(tmp_path.glob(temp_pattern(dest))) == sorted([dead, dead_video, dead_folder, live])
        assert temp_owner(live) == parent.pid and temp_owner(dead_folder) == 999999999
        assert sorted(remove_leftovers(dest)) == sorted([dead, dead_video, dead_folder])
        assert live.exists() and other.exists()
        with atomic_file(dest) as tmp:                                       # our own name carries our pid
            assert temp_owner(tmp) == os.getpid()
            tmp.write_bytes(b"new")
            assert remove_leftovers(dest) == [] and tmp.exists()
        assert dest.read_bytes() == b"new"
    finally:
        parent.kill()
        parent.wait()


_SAVE = """
    import sys, torch
    from frfsr import FRFSR, FRFSRConfig
    torch.manual_seed(int(sys.argv[2]))
    model = FRFSR(FRFSRConfig.tiny())
    for i in range(4):
        model.save_pretrained(sys.argv[1], description=f"writer {sys.argv[2]} save {i}")
    print("saved")
"""


def test_two_save_pretrained_into_one_folder_at_once_both_succeed(tmp_path):
    folder = tmp_path / "model"
    runs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(_SAVE), str(folder), str(seed)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(tmp_path))
            for seed in (1, 2)]
    for r in runs:
        out, err = r.communicate(timeout=TIMEOUT)
        assert r.returncode == 0 and out.strip() == "saved" and "Traceback" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir() if p.name not in ("hf_home", "cache")) == ["model"]
    loaded = FRFSRPipeline.from_pretrained(folder)
    assert loaded.description.startswith("writer ") and loaded.description.endswith("save 3")


def test_an_unwritable_descriptor_cache_warns_and_the_ranking_goes_on(tmp_path, tiny):
    from frfsr.checks import FRFSRWarning
    from frfsr.retrieval import RefIndex
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (40, 44, 3), dtype=np.uint8)).save(tmp_path / f"c{i}.png")
    (tmp_path / "cache").write_text("a file where the cache folder would be")
    before = _snapshot(tmp_path)
    with pytest.warns(FRFSRWarning, match=r"descriptor cache .*cache.* cannot be written .*going on without it"):
        index = RefIndex(tiny, [tmp_path / "c0.png", tmp_path / "c1.png"], cache_dir=tmp_path / "cache" / "d")
    assert index.computed == 2 and len(index.descriptors) == 2
    assert _snapshot(tmp_path) == before


_PROBE_NATIVE = """
    import warnings
    from frfsr.ops import native
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        print("AVAILABLE", native.available())
    for w in caught:
        print("WARNING", w.message)
"""


def test_a_wrong_library_with_a_matching_checksum_is_removed_and_the_reference_used(tmp_path):
    import hashlib
    import shutil
    cxx = shutil.which(os.environ.get("CXX") or "c++")
    if cxx is None:
        pytest.skip("no C++ compiler: the native kernels are never built here")
    env = dict(_env(tmp_path), FRFSR_NATIVE="1")

    def probe():
        res = subprocess.run([sys.executable, "-c", textwrap.dedent(_PROBE_NATIVE)], capture_output=True, text=True,
                             env=env, timeout=TIMEOUT)
        assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
        return res.stdout
    assert "AVAILABLE True" in probe()
    (lib,) = sorted((tmp_path / "cache" / "native").glob("fast_match-*.so"))
    src = tmp_path / "other.cpp"
    src.write_text('extern "C" int frfsr_vector_width() { return 3; }\n')       # ours in name only
    subprocess.run([cxx, "-shared", "-fPIC", str(src), "-o", str(lib)], check=True, capture_output=True)
    Path(str(lib) + ".sha256").write_text(hashlib.sha256(lib.read_bytes()).hexdigest() + "\n")
    out = probe()
    assert "AVAILABLE False" in out and "is not a working build" in out and "using the reference kernel" in out
    assert not lib.exists()                                                       # removed: rebuilt next time
    assert "AVAILABLE True" in probe() and lib.is_file()


# ------------------------------------------------------------------ training's command line
def _train(args, tmp_path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "train" / "stage1.py"), "--config", str(TINY), *args],
                          capture_output=True, text=True, env=_env(tmp_path), timeout=TIMEOUT, cwd=tmp_path)


def test_train_output_dir_that_is_a_file(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    before = _snapshot(tmp_path)
    res = _train(["--output_dir", str(tmp_path / "notes.txt" / "run")], tmp_path)
    assert res.returncode == 1
    line = _one_line("\n".join(ln for ln in res.stderr.splitlines() if ln.startswith(("error", "Traceback"))))
    assert "Traceback" not in res.stderr and line.startswith("error: train.output_dir") and "notes.txt is a file, not a folder" in line
    assert _snapshot(tmp_path) == before


def _data(root: Path, n: int = 4) -> Path:
    rng = np.random.default_rng(0)
    for sub in ("input", "ref"):
        (root / sub).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (80, 80, 3), dtype=np.uint8)).save(root / sub / f"{i}.png")
    return root


def test_train_unreadable_data_is_found_before_step_1(tmp_path):
    data = _data(tmp_path / "data")
    (data / "ref" / "2.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    before = _snapshot(tmp_path)
    res = _train(["--output_dir", str(tmp_path / "run"), "--set", f"data.root={data}", "--set", "data.synthetic=null"],
                 tmp_path)
    assert res.returncode == 1
    line = _one_line("\n".join(ln for ln in res.stderr.splitlines() if ln.startswith(("error", "Traceback"))))
    assert "Traceback" not in res.stderr
    assert line.startswith("error: 1 training image(s) cannot be read: ") and "2.png" in line
    assert not (tmp_path / "run" / "checkpoints").exists()
    assert {p: b for p, b in _snapshot(tmp_path).items() if "run" not in p.relative_to(tmp_path).parts} == before


@pytest.fixture(autouse=True)
def _clean_accelerate():
    yield
    from accelerate.state import AcceleratorState
    AcceleratorState._reset_state(reset_partial_state=True)


def _main(args, capsys):
    from frfsr_train.training.run import main
    code = main(["--config", str(TINY), *args], stage=1)
    err = capsys.readouterr().err
    return code, [ln for ln in err.splitlines() if ln.startswith("error:")], err


def test_train_empty_data_and_missing_init_weights(tmp_path, capsys):
    (tmp_path / "data" / "input").mkdir(parents=True)
    (tmp_path / "data" / "ref").mkdir()
    code, errors, err = _main(["--output_dir", str(tmp_path / "run"), "--set", f"data.root={tmp_path / 'data'}",
                               "--set", "data.synthetic=null"], capsys)
    assert code == 1 and len(errors) == 1 and "Traceback" not in err
    assert "no input images" in errors[0] and str(tmp_path / "data" / "input") in errors[0]
    code, errors, err = _main(["--output_dir", str(tmp_path / "run2"), "--set",
                               f"init.vgg19={tmp_path / 'vgg19.pth'}"], capsys)
    assert code == 1 and len(errors) == 1 and "Traceback" not in err
    assert errors[0] == f"error: init.vgg19={tmp_path / 'vgg19.pth'}: no such checkpoint file: {tmp_path / 'vgg19.pth'}"


@pytest.fixture(scope="module")
def two_steps(tmp_path_factory):
    """A tiny stage-1 run stopped after step 2 (one checkpoint)."""
    from frfsr_train.training.run import main
    out = tmp_path_factory.mktemp("two_steps") / "run"
    assert main(["--config", str(TINY), "--output_dir", str(out), "--stop_after", "2"], stage=1) == 0
    from accelerate.state import AcceleratorState
    AcceleratorState._reset_state(reset_partial_state=True)
    return out


def _copy_run(src: Path, dst: Path) -> Path:
    import shutil
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("final"))
    return dst


def test_resume_with_another_architecture_says_so(two_steps, tmp_path, capsys):
    run = _copy_run(two_steps, tmp_path / "run")
    before = _snapshot(run / "checkpoints")
    code, errors, err = _main(["--output_dir", str(run), "--resume", "--set", "model.overrides.ngf=32"], capsys)
    assert code == 1 and len(errors) == 1 and "Traceback" not in err
    assert "was written by a model of another architecture (ngf 16 there, 32 here)" in errors[0]
    assert "damaged" not in errors[0]
    assert _snapshot(run / "checkpoints") == before


def test_a_garbled_latest_falls_back_to_the_newest_complete_checkpoint(two_steps, tmp_path, capsys):
    from frfsr_train.training.checkpoint import resolve_checkpoint
    run = _copy_run(two_steps, tmp_path / "run")
    (run / "checkpoints" / "latest").write_bytes(b"\xff\xfe garbage \x00/..")
    with pytest.warns(RuntimeWarning, match="does not name a complete checkpoint; using the newest complete one "
                                            r"\(ckpt-000002\)"):
        assert resolve_checkpoint(run).name == "ckpt-000002"
    with pytest.warns(RuntimeWarning):
        code, errors, err = _main(["--output_dir", str(run), "--resume", "--max_steps", "3"], capsys)
    assert code == 0 and not errors and "Traceback" not in err
    assert (run / "checkpoints" / "ckpt-000003").is_dir()


def test_a_full_disk_at_a_checkpoint_is_one_line_and_keeps_the_earlier_ones(two_steps, tmp_path, capsys,
                                                                           monkeypatch):
    from frfsr_train.training import loop
    run = _copy_run(two_steps, tmp_path / "run")
    before = _snapshot(run / "checkpoints")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(run / "checkpoints" / "ckpt-000004.tmp"))
    monkeypatch.setattr(loop, "save_checkpoint", full)
    code, errors, err = _main(["--output_dir", str(run), "--resume"], capsys)
    assert code == 1 and len(errors) == 1 and "Traceback" not in err, err
    assert errors[0] == f"error: No space left on device: {run / 'checkpoints' / 'ckpt-000004.tmp'}"
    assert _snapshot(run / "checkpoints") == before


def test_train_ctrl_c_is_one_line_exit_130_and_keeps_the_checkpoints(two_steps, tmp_path, capsys, monkeypatch):
    from frfsr_train.training import loop
    run = _copy_run(two_steps, tmp_path / "run")
    before = _snapshot(run / "checkpoints")
    step, calls = loop.Trainer.train_step, []

    def interrupted(self, batches):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return step(self, batches)
    monkeypatch.setattr(loop.Trainer, "train_step", interrupted)
    from frfsr_train.training.run import main
    code = main(["--config", str(TINY), "--output_dir", str(run), "--resume"], stage=1)
    err = capsys.readouterr().err
    assert code == 130 and "Traceback" not in err
    assert [ln for ln in err.splitlines() if ln.startswith("train:")] == [
        "train: interrupted; the checkpoints already written are complete (resume with --resume)"]
    assert _snapshot(run / "checkpoints") == before
