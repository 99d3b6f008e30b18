"""Folders, globs and resumable runs (frfsr.batch, `frfsr upscale` with several inputs), and the
work split between two Accelerate processes on the CPU."""
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from frfsr import FRFSR, FRFSRConfig, FRFSRPipeline, cli
from frfsr.batch import BatchError, is_complete, list_inputs, plan, upscale_files
from benchmark_scripts import load_benchmark

REPO_ROOT = Path(__file__).resolve().parents[1]
N_LR = 20


def _image(rng, h, w):
    """Structured content (a gradient, a few bars) plus noise, so Refs match something."""
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([x, y, (x + y) / 2], -1) + 0.3 * (np.sin(x * rng.uniform(5, 20)) > 0)[..., None]
    return Image.fromarray((np.clip(base + rng.normal(0, 0.05, base.shape), 0, 1) * 255).astype(np.uint8))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("batch")
    torch.manual_seed(0)
    FRFSR(FRFSRConfig.tiny()).save_pretrained(root / "model")
    rng = np.random.default_rng(0)
    for i in range(N_LR):
        sub = root / "lrs" / ("day" if i % 2 else "night")
        sub.mkdir(parents=True, exist_ok=True)
        _image(rng, 24, 24).save(sub / f"lr_{i:02d}.png")
    (root / "refs").mkdir()
    _image(rng, 64, 56).save(root / "refs" / "a.png")
    _image(rng, 48, 64).save(root / "refs" / "b.jpg")
    return root


@pytest.fixture(scope="module")
def pipe(files):
    p = FRFSRPipeline.from_pretrained(files / "model", torch_dtype=torch.float32)
    p.relevance_threshold = None
    return p


class Counting:
    """A pipeline that counts its model calls and Ref encodings (and can stop the run)."""

    def __init__(self, pipe, stop_at=None):
        self.pipe, self.calls, self.encodes, self.stop_at = pipe, 0, 0, stop_at

    def prepare_refs(self, *args, **kwargs):
        self.encodes += 1
        return self.pipe.prepare_refs(*args, **kwargs)

    def __call__(self, lr, refs, **kwargs):
        if self.stop_at is not None and self.calls == self.stop_at:
            raise KeyboardInterrupt
        self.calls += 1
        return self.pipe(lr, refs, **kwargs)


def _refs(files):
    return [files / "refs" / "a.png", files / "refs" / "b.jpg"]


def _outputs(out: Path) -> list[Path]:
    return sorted(p for p in out.rglob("*") if p.is_file() and not p.name.startswith("."))


def _leftovers(out: Path) -> list[Path]:
    return sorted(out.rglob(".*.part"))


def test_folder_run_then_nothing_to_do(files, pipe, tmp_path):
    out = tmp_path / "out"
    counting = Counting(pipe)
    res = upscale_files(counting, [files / "lrs"], _refs(files), out, progress=False, state=None, tile=None)
    assert res.ok and len(res.done) == N_LR and not res.skipped
    assert counting.calls == N_LR and counting.encodes == 1          # both Refs encoded once for all 20
    written = _outputs(out)
    assert [p.relative_to(out) for p in written] == sorted(p.relative_to(files / "lrs")
                                                           for p in (files / "lrs").rglob("*.png"))
    assert all(Image.open(p).size == (96, 96) for p in written)
    mtimes = {p: p.stat().st_mtime_ns for p in written}

    again = Counting(pipe)
    res = upscale_files(again, [files / "lrs"], _refs(files), out, progress=False, state=None, tile=None)
    assert again.calls == 0 and again.encodes == 0 and not res.done and len(res.skipped) == N_LR
    assert {p: p.stat().st_mtime_ns for p in _outputs(out)} == mtimes

    # a truncated output and a temporary file left by a killed write: that one output is done again
    broken = written[3]
    broken.write_bytes(broken.read_bytes()[: broken.stat().st_size // 2])
    (broken.parent / f".{broken.name}.frfsr-999999999-x1y2.part").write_bytes(b"partial")   # its process is gone
    assert not is_complete(plan([files / "lrs"], out)[3])
    third = Counting(pipe)
    res = upscale_files(third, [files / "lrs"], _refs(files), out, progress=False, state=None, tile=None)
    assert third.calls == 1 and res.done == [broken] and not _leftovers(out)
    assert Image.open(broken).size == (96, 96)


def test_interrupted_run_resumes_with_only_the_rest(files, pipe, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        upscale_files(Counting(pipe, stop_at=7), [files / "lrs"], _refs(files), out, progress=False, state=None,
                      tile=None)
    assert len(_outputs(out)) == 7 and not _leftovers(out)
    # the pipeline's own interrupt hook (checked before each tile) stops the run too
    calls = iter(range(100))
    with pytest.raises(InterruptedError):
        upscale_files(pipe, [files / "lrs"], _refs(files), out, progress=False, state=None, tile=None,
                      interrupt=lambda: next(calls) >= 2)
    assert len(_outputs(out)) == 9 and not _leftovers(out)
    rest = Counting(pipe)
    res = upscale_files(rest, [files / "lrs"], _refs(files), out, progress=False, state=None, tile=None)
    assert rest.calls == N_LR - 9 and len(res.skipped) == 9 and len(_outputs(out)) == N_LR


def test_killed_process_leaves_no_partial_file_and_restart_does_the_rest(files, pipe, tmp_path):
    """A real `frfsr upscale` process, killed with SIGKILL while it writes an output (each
    write is slowed down inside the temporary file, before its rename)."""
    out = tmp_path / "out"
    script = textwrap.dedent(f"""
        import sys, time
        from PIL import Image
        save = Image.Image.save
        def slow_save(self, *args, **kwargs):
            save(self, *args, **kwargs)
            time.sleep(0.3)
        Image.Image.save = slow_save
        from frfsr import cli
        sys.exit(cli.main(["upscale", r"{files / 'lrs'}", "--ref", r"{files / 'refs' / 'a.png'}", "--ref",
                           r"{files / 'refs' / 'b.jpg'}", "-o", r"{out}", "--model", r"{files / 'model'}",
                           "--device", "cpu", "--dtype", "float32", "--tile", "0", "--no-progress"]))
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if out.is_dir() and len(_outputs(out)) >= 4 and _leftovers(out):
                break
            time.sleep(0.01)
        assert proc.poll() is None, "the run ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    done = _outputs(out)
    assert 4 <= len(done) < N_LR
    assert _leftovers(out)                                   # the write the kill cut short
    assert all(Image.open(p).size == (96, 96) for p in done)  # nothing partial under an output's name
    for p in done:
        Image.open(p).verify()
    rest = Counting(pipe)
    res = upscale_files(rest, [files / "lrs"], _refs(files), out, progress=False, state=None, tile=None)
    assert rest.calls == N_LR - len(done) and len(res.skipped) == len(done)
    assert len(_outputs(out)) == N_LR and not _leftovers(out)


def test_refs_per_input_share_an_encoding_while_they_repeat(files, pipe, tmp_path):
    """The seam for choosing Refs per input (a callable or a mapping)."""
    a, b = _refs(files)
    inputs = sorted((files / "lrs" / "day").glob("*.png"))[:4]
    counting = Counting(pipe)
    res = upscale_files(counting, inputs, lambda src: [a] if src.name < inputs[2].name else [a, b], tmp_path / "o",
                        progress=False, state=None, tile=None)
    assert res.ok and counting.calls == 4 and counting.encodes == 2
    mapping = {str(inputs[0]): [b], inputs[1]: b}
    res = upscale_files(pipe, inputs[:3], mapping, tmp_path / "m", progress=False, state=None, tile=None)
    assert len(res.done) == 2 and len(res.failed) == 1 and "no Refs given" in res.failed[0][1]


def test_listing_globs_folders_and_collisions(files, tmp_path):
    lrs = files / "lrs"
    found = list_inputs([str(lrs / "*" / "lr_0*.png")])
    assert [rel for _, rel in found] == sorted(Path(d) / f"lr_{i:02d}.png" for i in range(10)
                                               for d in ["night" if i % 2 == 0 else "day"])
    assert len(list_inputs([lrs, lrs / "day" / "lr_01.png", str(lrs / "**" / "*.png")])) == N_LR   # each file once
    with pytest.raises(BatchError, match="no input files match"):
        list_inputs([str(lrs / "*.webp")])
    with pytest.raises(FileNotFoundError, match="input not found"):
        list_inputs([lrs / "absent.png"])
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(BatchError, match="'.txt' is not an input"):
        list_inputs([tmp_path / "notes.txt"])
    (tmp_path / "lr_01.png").write_bytes((lrs / "day" / "lr_01.png").read_bytes())
    with pytest.raises(BatchError, match="would both be written to"):
        plan([lrs / "day" / "lr_01.png", tmp_path / "lr_01.png"], tmp_path / "out")
    # an output folder inside the input folder is not read back as input; --ext changes the suffix
    inside = tmp_path / "photos"
    inside.mkdir()
    Image.new("RGB", (16, 16)).save(inside / "p.png")
    (inside / "sr").mkdir()
    Image.new("RGB", (64, 64)).save(inside / "sr" / "p.png")
    items = plan([inside], inside / "sr", ext=".tif")
    assert [(i.src.name, i.dst.relative_to(inside)) for i in items] == [("p.png", Path("sr/p.tif"))]


def test_cli_folder_with_a_failing_input_and_ref_dir(files, tmp_path, capsys):
    lrs = tmp_path / "lrs"
    lrs.mkdir()
    for name in ("a.png", "b.png"):
        (lrs / name).write_bytes((files / "lrs" / "day" / "lr_01.png").read_bytes())
    (lrs / "broken.png").write_bytes(b"not an image")
    Image.new("RGB", (8, 8)).save(lrs / "tiny.png")                    # under the minimum LR size
    out = tmp_path / "out"
    args = ["upscale", str(lrs), "--ref-dir", str(files / "refs"), "-o", str(out), "--model", str(files / "model"),
            "--device", "cpu", "--tile", "0", "--no-progress"]
    assert cli.main(args) == 1
    printed = capsys.readouterr()
    assert sorted(p.name for p in _outputs(out)) == ["a.png", "b.png"]
    assert "2 written, 0 skipped (already complete), 2 failed" in printed.out
    assert "broken.png: cannot read the LR image" in printed.err and "tiny.png" in printed.err
    assert cli.main(args) == 1 and "0 written, 2 skipped" in capsys.readouterr().out
    # one-image options are refused with several inputs, before anything is computed
    assert cli.main(args + ["--save-confidence", str(tmp_path / "c.png")]) == 2
    assert "take one input image" in capsys.readouterr().err
    assert cli.main(["upscale", str(lrs / "a.png"), "-o", str(tmp_path / "x.png"), "--model",
                     str(files / "model")]) == 2
    assert "--ref REF" in capsys.readouterr().err
    # one file into a folder: -o ending in a slash
    assert cli.main(["upscale", str(lrs / "a.png"), "--ref", str(files / "refs" / "a.png"), "-o",
                     str(tmp_path / "one") + "/", "--model", str(files / "model"), "--device", "cpu",
                     "--no-progress"]) == 0
    assert "1 written" in capsys.readouterr().out and Image.open(tmp_path / "one" / "a.png").size == (96, 96)


def test_bench_batch_runs(files):
    bench = load_benchmark("bench_batch")
    rows = bench.main(["--count", "2", "--size", "16", "--processes", "1", "--cores", "1", "--model",
                       str(files / "model")])
    assert [(r["processes"], r["images"]) for r in rows] == [(1, 2)] and rows[0]["images_per_s"] > 0
    assert "frfsr.cli upscale lrs --ref ref.png" in rows[0]["command"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_accelerate_processes_split_the_folder(files, tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2` on the CPU (gloo): every output is
    written once, by one process, and outputs already complete are left alone."""
    pytest.importorskip("accelerate")
    out = tmp_path / "out"
    lrs = files / "lrs" / "day"                                         # 10 LRs
    pre = out / "lr_01.png"
    out.mkdir()
    Image.open(lrs / "lr_01.png").resize((96, 96)).save(pre)            # complete already: skipped
    before = pre.stat().st_mtime_ns
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), "-m", "frfsr.cli", "upscale", str(lrs), "--ref",
           str(files / "refs" / "a.png"), "--ref", str(files / "refs" / "b.jpg"), "-o", str(out), "--model",
           str(files / "model"), "--device", "cpu", "--dtype", "float32", "--tile", "0", "--no-progress"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=400, cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    wrote = [line.split("] wrote ", 1) for line in res.stdout.splitlines() if "] wrote " in line]
    by_output = {}
    for who, path in wrote:
        by_output.setdefault(path, []).append(who)
    expected = {str(out / p.name) for p in lrs.glob("*.png")} - {str(pre)}
    assert set(by_output) == expected and all(len(w) == 1 for w in by_output.values()), by_output
    assert {w[0] for w in by_output.values()} == {"[process 0/2", "[process 1/2"}
    assert "9 written, 1 skipped (already complete), 0 failed by 2 processes" in res.stdout
    assert pre.stat().st_mtime_ns == before
    assert all(Image.open(out / p.name).size == (96, 96) for p in lrs.glob("*.png"))


def test_cli_top_k_chooses_each_inputs_refs_and_records_them(tmp_path, monkeypatch):
    """--ref-dir with --top-k: every LR gets the candidate of its own scene (bundled weights),
    written beside its output as <output>.refs.json; the fixed --ref is added to each."""
    skimage_data = pytest.importorskip("skimage.data")
    monkeypatch.setenv("FRFSR_CACHE", str(tmp_path / "cache"))
    scenes = {"astronaut": skimage_data.astronaut(), "coffee": skimage_data.coffee(), "camera": skimage_data.camera(),
              "rocket": skimage_data.rocket()}
    lrs, cands = tmp_path / "lrs", tmp_path / "cands"
    lrs.mkdir()
    cands.mkdir()
    for name, a in scenes.items():
        img = Image.fromarray(a).convert("RGB")
        img.crop((40, 40, 296, 296)).resize((160, 160), Image.BICUBIC).save(cands / f"{name}.png")
        if name in ("astronaut", "coffee"):
            img.crop((72, 72, 264, 264)).resize((48, 48), Image.BICUBIC).save(lrs / f"{name}.png")
    fixed = cands / "camera.png"
    out = tmp_path / "out"
    args = ["upscale", str(lrs), "--ref-dir", str(cands), "--top-k", "1", "--ref", str(fixed), "-o", str(out),
            "--device", "cpu", "--dtype", "float32", "--tile", "0", "--no-progress"]
    assert cli.main(args) == 0
    for name in ("astronaut", "coffee"):
        assert Image.open(out / f"{name}.png").size == (192, 192)
        record = json.loads((out / f"{name}.png.refs.json").read_text())
        assert [Path(r["name"]).name for r in record["refs"]] == [f"{name}.png"]
        assert record["refs"][0]["relevance"] is not None and record["fixed_refs"] == [str(fixed)]
        assert Path(record["lr"]).name == f"{name}.png"
    stamps = {p: p.stat().st_mtime_ns for p in out.iterdir()}
    assert cli.main(args) == 0                                        # complete: nothing chosen or written again
    assert {p: p.stat().st_mtime_ns for p in out.iterdir()} == stamps
    # --top-k needs --ref-dir (refused before anything is written)
    assert cli.main(["upscale", str(lrs), "--ref", str(fixed), "--top-k", "2", "-o", str(tmp_path / "o2")]) == 2
    assert not (tmp_path / "o2").exists()
