"""The `frfsr` command: upscale, convert, info, and the subcommand registry."""
import copy
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from frfsr import FRFSR, FRFSRConfig, FRFSRPipeline, cli
from frfsr.devices import resolve_dtype

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    model = FRFSR(FRFSRConfig.tiny())
    model.save_pretrained(root / "model", description="tiny CLI test model")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (16, 20, 3), dtype=np.uint8)).save(root / "lr.png")
    Image.fromarray(rng.integers(0, 256, (16, 20, 4), dtype=np.uint8)).save(root / "lr_rgba.png")
    Image.fromarray(rng.integers(0, 256, (40, 44, 3), dtype=np.uint8)).save(root / "ref.png")
    Image.fromarray(rng.integers(0, 256, (30, 24, 3), dtype=np.uint8)).save(root / "ref2.jpg")
    sife = {k[len("sife."):]: v for k, v in model.state_dict().items() if k.startswith("sife.")}
    torch.save({"params_ema": sife}, root / "rrdb.pth")
    return root, model


def test_upscale_writes_the_image_and_the_confidence_map(files, tmp_path, capsys):
    root, model = files
    out, conf = tmp_path / "sr.png", tmp_path / "conf.png"
    code = cli.main(["upscale", str(root / "lr.png"), "--ref", str(root / "ref.png"), "--ref", str(root / "ref2.jpg"),
                     "-o", str(out), "--model", str(root / "model"), "--device", "cpu", "--tile", "0",
                     "--save-confidence", str(conf), "--no-progress"])
    assert code == 0
    sr = Image.open(out)
    assert sr.size == (80, 64) and sr.mode == "RGB"
    c = Image.open(conf)
    assert c.size == (20, 16) and c.mode == "L"
    # the CLI's --dtype auto: bfloat16 on a CPU with native bf16, float32 elsewhere; the same here
    pipe = FRFSRPipeline(copy.deepcopy(model).to(resolve_dtype("auto", torch.device("cpu"))))
    pipe.relevance_threshold = None
    expected = pipe(Image.open(root / "lr.png"), [Image.open(root / "ref.png"), Image.open(root / "ref2.jpg")])
    assert np.array_equal(np.asarray(sr), np.asarray(expected))
    printed = capsys.readouterr()
    assert "relevance" in printed.out and "hardly matches" in printed.err


def test_upscale_keeps_alpha_and_tiles(files, tmp_path):
    root, _ = files
    out = tmp_path / "sr_rgba.png"
    assert cli.main(["upscale", str(root / "lr_rgba.png"), "--ref", str(root / "ref.png"), "-o", str(out),
                     "--model", str(root / "model"), "--device", "cpu", "--tile", "15", "--overlap", "4",
                     "--no-progress"]) == 0
    assert Image.open(out).mode == "RGBA"


def test_upscale_from_a_shell(files, tmp_path):
    """The real command line: a new Python process running the CLI module."""
    root, _ = files
    out = tmp_path / "shell.png"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    res = subprocess.run([sys.executable, "-m", "frfsr.cli", "upscale", str(root / "lr.png"), "--ref",
                          str(root / "ref.png"), "-o", str(out), "--model", str(root / "model"), "--device", "cpu",
                          "--no-progress"], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    assert Image.open(out).size == (80, 64)


@pytest.mark.parametrize("args, message", [
    (["upscale", "{root}/absent.png", "--ref", "{root}/ref.png", "-o", "{tmp}/x.png", "--model", "{root}/model"],
     "LR image not found"),
    (["upscale", "{root}/lr.png", "--ref", "{root}/ref.png", "-o", "{tmp}/x.png", "--model", "{tmp}/nomodel"],
     "no such model folder"),
    (["upscale", "{root}/lr.png", "--ref", "{root}/ref.png", "-o", "{tmp}/x.xyz", "--model", "{root}/model",
      "--tile", "0", "--no-progress"], "cannot write"),
    (["convert", "{root}/rrdb.pth", "--kind", "vgg16", "--config", "tiny", "-o", "{tmp}/c"],
     "not in the torchvision VGG16 layout"),
    (["convert", "{root}/rrdb.pth", "--config", "tiny", "-o", "{tmp}/c"], "would stay at their random init"),
    (["convert", "{root}/lr.png", "--config", "tiny", "-o", "{tmp}/c"], "not a readable PyTorch checkpoint"),
])
def test_errors_are_reported_without_traceback(files, tmp_path, capsys, args, message):
    root, _ = files
    argv = [a.format(root=root, tmp=tmp_path) for a in args]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_convert_then_upscale(files, tmp_path, capsys):
    root, model = files
    out = tmp_path / "converted"
    assert cli.main(["convert", str(root / "rrdb.pth"), "--config", "tiny", "-o", str(out), "--allow-partial"]) == 0
    n_sife = sum(k.startswith("sife.") for k in model.state_dict())
    assert f"converted {n_sife} tensors" in capsys.readouterr().out
    loaded = FRFSR.from_pretrained(out)
    assert torch.equal(loaded.sife.conv_first.weight, model.sife.conv_first.weight)
    assert "Converted with `frfsr convert` from rrdb.pth" in (out / "README.md").read_text()
    base = tmp_path / "based"
    assert cli.main(["convert", str(root / "rrdb.pth"), "--kind", "esrgan", "--base", str(root / "model"),
                     "-o", str(base)]) == 0


def test_info(files, capsys):
    root, _ = files
    assert cli.main(["info", str(root / "model")]) == 0
    out = capsys.readouterr().out
    assert "tiny CLI test model" in out and "stage 1, config 'tiny'" in out and "ngf: 16" in out
    assert cli.main(["info", str(root / "rrdb.pth")]) == 0
    assert "layout: esrgan" in capsys.readouterr().out
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert "bundled weights frfsr-default" in out and "bundled weights frfsr-robust" in out


def test_subcommand_registry_takes_new_commands(capsys):
    assert {"upscale", "convert", "info"} <= set(cli.SUBCOMMANDS)

    @cli.subcommand("hello", "say hello")
    def _hello(p):
        p.add_argument("--name", default="world")
        return lambda args: print(f"hello {args.name}")

    try:
        assert cli.main(["hello", "--name", "frfsr"]) == 0
        assert capsys.readouterr().out == "hello frfsr\n"
    finally:
        del cli.SUBCOMMANDS["hello"]
    with pytest.raises(SystemExit):
        cli.main(["hello"])


# ---------------------------------------------------------------------- what the input was, the output is
def _upscale(files, lr, out, *extra):
    root, _ = files
    return cli.main(["upscale", str(lr), "--ref", str(root / "ref.png"), "-o", str(out), "--model",
                     str(root / "model"), "--device", "cpu", "--tile", "0", "--no-progress", *extra])


@pytest.mark.parametrize("name,make,ext,mode_or_shape", [
    ("gray16", lambda r: Image.fromarray(r.integers(0, 65536, (16, 18), dtype=np.uint16)), ".png", "I;16"),
    ("float", lambda r: Image.fromarray(r.random((16, 18), dtype=np.float32)), ".tif", "F"),
    ("rgb16", lambda r: r.integers(0, 65536, (16, 18, 3), dtype=np.uint16), ".png", (64, 72, 3)),
    ("rgba16", lambda r: r.integers(0, 65536, (16, 18, 4), dtype=np.uint16), ".png", (64, 72, 4)),
])
def test_upscale_keeps_bit_depth_and_kind(files, tmp_path, name, make, ext, mode_or_shape):
    from frfsr.image_files import _write_png16, read_image
    img = make(np.random.default_rng(1))
    lr = tmp_path / f"lr_{name}{ext}"
    if isinstance(img, np.ndarray):
        with open(lr, "wb") as f:
            _write_png16(img, f)
        assert read_image(lr).dtype == np.uint16             # read as 16 bits, not truncated to 8
    else:
        img.save(lr)
    out, conf, warped = tmp_path / f"sr{ext}", tmp_path / "conf.png", tmp_path / "warped.png"
    assert _upscale(files, lr, out, "--save-confidence", str(conf), "--save-warped-ref", str(warped)) == 0
    res = read_image(out)
    if isinstance(mode_or_shape, str):
        assert res.mode == mode_or_shape and res.size == (72, 64)
    else:
        assert res.dtype == np.uint16 and res.shape == mode_or_shape
        assert len(np.unique(res)) > 256                      # real 16-bit values
    assert Image.open(conf).size == (18, 16) and Image.open(warped).size == (72, 64)


def test_upscale_checks_the_output_before_computing(files, tmp_path, monkeypatch, capsys):
    root, _ = files
    from frfsr import pipeline
    monkeypatch.setattr(pipeline.FRFSRPipeline, "__call__", lambda *a, **k: pytest.fail("computed anyway"))
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    float_lr = tmp_path / "f.tif"
    Image.fromarray(np.random.default_rng(0).random((16, 18), dtype=np.float32)).save(float_lr)
    cases = [(root / "lr.png", tmp_path / "out.xyz", "'.xyz' is not an image format"),
             (root / "lr.png", tmp_path / "noext", "no extension is not an image format"),
             (root / "lr.png", tmp_path, "it is a folder"),
             (root / "lr.png", a_file / "sr.png", "is a file, not a folder"),
             (float_lr, tmp_path / "sr.jpg", "JPEG format does not hold a PIL mode F image"),
             (root / "lr.png", tmp_path / "missing_lr_is_first.png", None)]
    for lr, out, message in cases[:-1]:
        assert _upscale(files, lr, out) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
        assert not any(p.name.startswith(".") for p in tmp_path.iterdir())
    assert _upscale(files, tmp_path / "nope.png", tmp_path / "x.png") == 2
    assert "LR image not found" in capsys.readouterr().err


def test_missing_device_is_one_clear_line(files, tmp_path, capsys):
    root, _ = files
    for device in ("cuda", "cuda:7", "mps"):
        if device.startswith("cuda") and torch.cuda.is_available() and device == "cuda":
            continue
        assert _upscale(files, root / "lr.png", tmp_path / "sr.png", "--device", device) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"device {device!r}" in err and "available: cpu" in err, err
        assert not (tmp_path / "sr.png").exists()
    with pytest.raises(ValueError, match="device 'cuda:7'"):
        FRFSRPipeline.from_pretrained(root / "model", device="cuda:7")
    pipe = FRFSRPipeline.from_pretrained(root / "model")
    with pytest.raises(ValueError, match="device 'mps' is not available"):
        pipe.to("mps")
    assert FRFSR.from_pretrained(root / "model", device="cpu").device.type == "cpu"


def test_info_reports_fused_ops_only_with_cuda(capsys):
    assert cli.main(["info"]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    if not torch.cuda.is_available():
        assert "fused ops not available (no CUDA device)" in line, line


def test_upscale_help_states_minimum_sizes_and_automatic_tiles(capsys):
    with pytest.raises(SystemExit):
        cli.main(["upscale", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "at least 15x15" in text and "at least 12x12" in text
    assert "tiles automatically" in text and "'auto' (default" in text


def test_a_jpeg_lr_with_the_clean_model_gets_a_note_naming_the_jpeg_model(files, tmp_path, capsys):
    """frfsr-default is for clean LRs: a JPEG LR given to it gets one note naming frfsr-robust
    (one input and a folder alike); a PNG, or a JPEG given to frfsr-robust, gets none."""
    root, _ = files
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (16, 20, 3), dtype=np.uint8)).save(tmp_path / "lr.jpg", quality=70)
    common = ["--ref", str(root / "ref.png"), "--device", "cpu", "--tile", "0", "--no-progress"]

    def note(argv):
        assert cli.main(argv) == 0
        err = capsys.readouterr().err
        return [line for line in err.splitlines() if line.startswith("note:")]

    got = note(["upscale", str(tmp_path / "lr.jpg"), "-o", str(tmp_path / "a.png"), *common])
    assert len(got) == 1 and "lr.jpg is a JPEG" in got[0] and "--model frfsr-robust" in got[0]
    assert note(["upscale", str(tmp_path / "lr.jpg"), "-o", str(tmp_path / "b.png"), "--model", "frfsr-robust",
                 *common]) == []
    assert note(["upscale", str(root / "lr.png"), "-o", str(tmp_path / "c.png"), *common]) == []
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "x.png").write_bytes((root / "lr.png").read_bytes())
    (folder / "y.jpg").write_bytes((tmp_path / "lr.jpg").read_bytes())
    got = note(["upscale", str(folder), "-o", str(tmp_path / "out") + "/", *common])
    assert len(got) == 1 and "y.jpg is a JPEG" in got[0]
