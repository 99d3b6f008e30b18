"""The `frfsr` command as users meet it when things go wrong, run as a subprocess: outputs
never overwrite inputs, names are files before patterns, OS errors and Ctrl-C are one line
with the documented exit code (1 a failed run, 2 refused before any work, 130 Ctrl-C), and
every input and earlier output is byte-identical afterwards."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from frfsr import FRFSR, FRFSRConfig

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 600


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("safety_model")
    torch.manual_seed(0)
    FRFSR(FRFSRConfig.tiny()).save_pretrained(root / "model", description="tiny test model")
    return root / "model"


def _image(path: Path, h: int, w: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def work(tmp_path):
    """A folder with an LR, a Ref and an earlier output, and a snapshot of their bytes."""
    _image(tmp_path / "lr.png", 16, 20, 0)
    _image(tmp_path / "ref.png", 40, 44, 1)
    _image(tmp_path / "earlier.png", 64, 80, 2)          # an output of an earlier run
    return tmp_path


def _snapshot(folder: Path) -> dict:
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink()}


def _env(tmp_path: Path, **extra) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["OMP_NUM_THREADS"] = "1"
    env["FRFSR_CACHE"] = str(tmp_path / "cache")
    env["FRFSR_NATIVE"] = "0"                   # no native build per test, except where it is the subject
    env.update(extra)
    return env


def frfsr(args, tmp_path, prelude: str = "", preexec=None, **env) -> subprocess.CompletedProcess:
    """Run ``frfsr ARGS`` in a new Python process (``prelude``: code run first, e.g. a fault)."""
    code = textwrap.dedent(prelude) + "\nimport sys\nfrom frfsr import cli\nsys.exit(cli.main(sys.argv[1:]))\n"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          env=_env(tmp_path, **env), timeout=TIMEOUT, cwd=tmp_path, preexec_fn=preexec)


def upscale(work, model_dir, *extra, **kw):
    return frfsr(["upscale", *extra, "--model", model_dir, "--device", "cpu", "--tile", "0", "--no-progress"],
                 work, **kw)


def one_error_line(res) -> str:
    """The single line the command printed on stderr besides its warnings (e.g. a Ref that
    hardly matches), and no traceback anywhere."""
    assert "Traceback" not in res.stderr + res.stdout, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip() and not ln.startswith("warning: ")]
    assert len(lines) == 1, res.stderr
    return lines[0]


# ------------------------------------------------------------------ outputs never overwrite inputs
@pytest.mark.parametrize("how", ["same", "dotdot", "symlink", "hardlink"])
def test_output_equal_to_the_lr_is_refused_before_any_work(work, model_dir, how):
    (work / "sub").mkdir()
    out = {"same": "lr.png", "dotdot": "./sub/../lr.png", "symlink": "link.png", "hardlink": "hard.png"}[how]
    if how == "symlink":
        os.symlink(work / "lr.png", work / "link.png")
    if how == "hardlink":
        os.link(work / "lr.png", work / "hard.png")
    before = _snapshot(work)
    res = upscale(work, model_dir, "lr.png", "--ref", "ref.png", "-o", out)
    assert res.returncode == 2
    line = one_error_line(res)
    assert line.startswith("frfsr upscale: error: -o ") and out in line and "the input lr.png" in line
    assert "never overwrites an input" in line
    assert _snapshot(work) == before


def test_output_equal_to_a_ref_is_refused(work, model_dir):
    before = _snapshot(work)
    res = upscale(work, model_dir, "lr.png", "--ref", "earlier.png", "--ref", "ref.png", "-o", "./ref.png")
    assert res.returncode == 2
    line = one_error_line(res)
    assert "-o ./ref.png is --ref ref.png" in line
    assert _snapshot(work) == before


@pytest.mark.parametrize("flag", ["--save-warped-ref", "--save-confidence"])
def test_side_outputs_equal_to_an_input_are_refused(work, model_dir, flag):
    before = _snapshot(work)
    res = upscale(work, model_dir, "lr.png", "--ref", "ref.png", "-o", "sr.png", flag, "lr.png")
    assert res.returncode == 2
    assert f"{flag} lr.png is the input lr.png" in one_error_line(res)
    assert _snapshot(work) == before and not (work / "sr.png").exists()


def test_two_outputs_with_one_name_are_refused(work, model_dir):
    before = _snapshot(work)
    res = upscale(work, model_dir, "lr.png", "--ref", "ref.png", "-o", "earlier.png",
                  "--save-confidence", "sub/../earlier.png")
    assert res.returncode == 2
    line = one_error_line(res)
    assert "-o earlier.png and --save-confidence sub/../earlier.png are the same file" in line
    assert _snapshot(work) == before


def test_a_batch_output_over_a_ref_is_refused(work, model_dir):
    (work / "in").mkdir()
    _image(work / "in" / "a.png", 16, 16, 3)
    (work / "out").mkdir()
    _image(work / "out" / "a.png", 44, 40, 4)               # a Ref that lives where a.png's output would go
    before = _snapshot(work)
    res = upscale(work, model_dir, "in", "--ref", "out/a.png", "-o", "out/")
    assert res.returncode == 2
    assert "the output out/a.png is --ref out/a.png" in one_error_line(res)
    assert _snapshot(work) == before


# ------------------------------------------------------------------ a file before a pattern
@pytest.mark.parametrize("name", ["photo [1].png", "what?.png", "star*.png"])
def test_an_existing_file_is_a_file_before_a_pattern(work, model_dir, name):
    os.rename(work / "lr.png", work / name)
    _image(work / "whatX.png", 16, 20, 5)                   # what?.png as a pattern would match this too
    before = _snapshot(work)
    res = upscale(work, model_dir, name, "--ref", "ref.png", "-o", "sr.png")
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    assert (work / "sr.png").is_file() and Image.open(work / "sr.png").size == (80, 64)
    assert {p: b for p, b in _snapshot(work).items() if p.name != "sr.png"} == before


# ------------------------------------------------------------------ OS errors at write time, Ctrl-C
_NO_LARGE_FILES = """
    import resource, signal
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)       # writes past the limit fail with EFBIG, like a full disk
    resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000))
"""


def test_a_failing_write_is_one_line_exit_1_and_keeps_the_previous_output(work, model_dir):
    before = _snapshot(work)
    res = upscale(work, model_dir, "lr.png", "--ref", "ref.png", "-o", "earlier.png", prelude=_NO_LARGE_FILES)
    assert res.returncode == 1
    line = one_error_line(res)
    assert line.startswith("frfsr upscale: error: cannot write earlier.png: File too large")
    assert "unchanged" in line
    assert _snapshot(work) == before                      # the earlier output intact, no temporary file left


def test_an_immutable_output_is_one_line_exit_1_and_stays_as_it_was(work, model_dir):
    immutable = """
        import errno, os
        real = os.replace                                   # as for a file with the immutable attribute
        def replace(src, dst, **kw):
            if os.path.basename(str(dst)) == "earlier.png":
                raise PermissionError(errno.EPERM, os.strerror(errno.EPERM), str(dst))
            return real(src, dst, **kw)
        os.replace = replace
    """
    before = _snapshot(work)
    res = upscale(work, model_dir, "lr.png", "--ref", "ref.png", "-o", "earlier.png", prelude=immutable)
    assert res.returncode == 1
    assert one_error_line(res) == ("frfsr upscale: error: cannot write earlier.png: Operation not permitted "
                                   "(the file already there is unchanged)")
    assert _snapshot(work) == before                      # no temporary file left either


def test_a_failing_write_in_a_folder_run_is_reported_and_the_run_goes_on(work, model_dir):
    (work / "in").mkdir()
    _image(work / "in" / "a.png", 16, 16, 3)
    before = _snapshot(work)
    res = upscale(work, model_dir, "in", "--ref", "ref.png", "-o", "out/", prelude=_NO_LARGE_FILES)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert "failed in/a.png: cannot write out/a.png: File too large" in res.stderr
    assert _snapshot(work) == before


def test_ctrl_c_is_one_line_exit_130_and_keeps_the_written_outputs(work, model_dir):
    (work / "in").mkdir()
    for i in range(4):
        _image(work / "in" / f"{i}.png", 16, 16, 10 + i)
    interrupt_second = """
        import os, signal
        from frfsr import pipeline
        signal.signal(signal.SIGINT, signal.default_int_handler)   # as in a terminal, also when started in the background
        call, calls = pipeline.FRFSRPipeline.__call__, []
        def interrupted(self, *a, **kw):                   # a real SIGINT, as Ctrl-C sends, during the 2nd image
            calls.append(1)
            if len(calls) == 2:
                os.kill(os.getpid(), signal.SIGINT)
            return call(self, *a, **kw)
        pipeline.FRFSRPipeline.__call__ = interrupted
    """
    before = _snapshot(work)
    res = upscale(work, model_dir, "in", "--ref", "ref.png", "-o", "out/", prelude=interrupt_second)
    assert res.returncode == 130
    assert one_error_line(res).startswith("frfsr upscale: interrupted")
    assert [p.name for p in sorted((work / "out").iterdir())] == ["0.png"]    # complete, no temporary file
    assert Image.open(work / "out" / "0.png").size == (64, 64)
    assert {p: b for p, b in _snapshot(work).items() if p.parent.name != "out"} == before


def test_a_name_too_long_is_refused_up_front_and_a_long_one_works(work, model_dir):
    before = _snapshot(work)
    res = upscale(work, model_dir, "lr.png", "--ref", "ref.png", "-o", "x" * 300 + ".png")
    assert res.returncode == 2
    assert "more than the 255 the file system allows" in one_error_line(res)
    assert _snapshot(work) == before
    long = "y" * 240 + ".png"                              # fits, though ".<name>.<tag>.part" would not
    res = upscale(work, model_dir, "lr.png", "--ref", "ref.png", "-o", long)
    assert res.returncode == 0, res.stderr
    assert Image.open(work / long).size == (80, 64)
    assert {p: b for p, b in _snapshot(work).items() if p.name != long} == before


def test_an_output_folder_that_is_a_file_is_refused(work, model_dir):
    before = _snapshot(work)
    res = upscale(work, model_dir, "lr.png", "--ref", "ref.png", "-o", "earlier.png/sr.png")
    assert res.returncode == 2
    assert "earlier.png is a file, not a folder" in one_error_line(res)
    assert _snapshot(work) == before


def test_a_read_only_output_folder_is_refused_up_front(work, model_dir):
    (work / "ro").mkdir()
    read_only = """
        import os
        real = os.access                                    # the folder reads as read-only even to root
        os.access = lambda p, mode, **kw: False if os.path.basename(str(p)) == "ro" and mode & os.W_OK \\
            else real(p, mode, **kw)
    """
    before = _snapshot(work)
    res = upscale(work, model_dir, "lr.png", "--ref", "ref.png", "-o", "ro/sr.png", prelude=read_only)
    assert res.returncode == 2
    assert one_error_line(res) == "frfsr upscale: error: cannot write ro/sr.png: the folder ro is not writable"
    assert _snapshot(work) == before


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    pytest.importorskip("av")
    from test_video import make_clip
    return make_clip(tmp_path_factory.mktemp("safety_clip") / "clip.mp4")


def test_a_video_on_a_full_disk_is_one_line_and_leaves_nothing(work, model_dir, clip):
    import shutil
    shutil.copy(clip, work / "clip.mp4")
    before = _snapshot(work)
    res = upscale(work, model_dir, "clip.mp4", "--ref", "ref.png", "-o", "sr.mp4", prelude=_NO_LARGE_FILES)
    assert res.returncode == 1
    assert one_error_line(res) == "frfsr upscale: error: cannot write sr.mp4: File too large"
    assert _snapshot(work) == before                      # no output, no .part.mp4


def test_a_killed_videos_leftover_is_removed_by_the_next_folder_run(work, model_dir, clip):
    import shutil
    (work / "in").mkdir()
    shutil.copy(clip, work / "in" / "clip.mp4")
    (work / "out").mkdir()
    left = work / "out" / ".clip.mp4.frfsr-999999999-abcd1234.part.mp4"    # its run was killed
    left.write_bytes(b"partial video")
    res = upscale(work, model_dir, "in", "--ref", "ref.png", "-o", "out/")
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    assert [p.name for p in (work / "out").iterdir()] == ["clip.mp4"]


# ------------------------------------------------------------------ model files that are not
@pytest.mark.parametrize("command", ["info", "convert"])
def test_a_text_file_as_a_checkpoint_says_so(work, command):
    (work / "notes.pth").write_text("these are my notes, not weights\n")
    before = _snapshot(work)
    args = ["info", "notes.pth"] if command == "info" else ["convert", "notes.pth", "-o", "converted"]
    res = frfsr(args, work)
    assert res.returncode == 2
    line = one_error_line(res)
    assert f"frfsr {command}: error: notes.pth is not a readable PyTorch checkpoint (it is a text file)" in line
    assert "KeyError" not in line
    assert _snapshot(work) == before and not (work / "converted").exists()


def test_a_config_value_of_the_wrong_type_is_refused(work, model_dir):
    import json
    import shutil
    bad = work / "bad_model"
    shutil.copytree(model_dir, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["ddf_filter_norm"] = "no"
    (bad / "config.json").write_text(json.dumps(cfg))
    before = _snapshot(work)
    res = upscale(work, bad, "lr.png", "--ref", "ref.png", "-o", "sr.png")
    assert res.returncode == 2
    assert "config field ddf_filter_norm must be true or false, got 'no'" in one_error_line(res)
    assert _snapshot(work) == before


# ------------------------------------------------------------------ a damaged native library cache
def _damage(cache: Path, how: str) -> None:
    (lib,) = sorted((cache / "native").glob("fast_match-*.so"))
    if how == "truncated":
        lib.write_bytes(lib.read_bytes()[:5000])
    else:                                                   # another library under its name
        src = cache / "other.cpp"
        src.write_text('extern "C" int other_function() { return 1; }\n')
        subprocess.run([shutil_which_cxx(), "-shared", "-fPIC", str(src), "-o", str(lib)], check=True,
                       capture_output=True, timeout=TIMEOUT)
        src.unlink()


@pytest.mark.parametrize("how", ["truncated", "wrong"])
def test_a_damaged_native_library_is_rebuilt_with_a_warning(work, model_dir, how):
    if shutil_which_cxx() is None:
        pytest.skip("no C++ compiler: the native kernels are never built here")
    cache = work / "cache"
    build = subprocess.run([sys.executable, "-c", "from frfsr.ops import native; print(native.available())"],
                           capture_output=True, text=True, env=_env(work, FRFSR_NATIVE="1"), timeout=TIMEOUT)
    assert build.stdout.strip() == "True", build.stderr
    _damage(cache, how)
    before = _snapshot(work)
    res = upscale(work, model_dir, "lr.png", "--ref", "ref.png", "-o", "sr.png", "--match-mode", "fast",
                  FRFSR_NATIVE="1")
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    assert "warning: the cached native CPU kernel is unusable" in res.stderr and "rebuilding it" in res.stderr
    assert Image.open(work / "sr.png").size == (80, 64)
    assert {p: b for p, b in _snapshot(work).items() if p.name != "sr.png" and "cache" not in p.parts} == \
        {p: b for p, b in before.items() if "cache" not in p.parts}
    again = upscale(work, model_dir, "lr.png", "--ref", "ref.png", "-o", "sr2.png", "--match-mode", "fast",
                    FRFSR_NATIVE="1")
    assert again.returncode == 0 and "native" not in again.stderr, again.stderr   # rebuilt: no warning again


def shutil_which_cxx():
    import shutil
    return shutil.which(os.environ.get("CXX") or "c++")


# ------------------------------------------------------------------ two runs at once
def test_the_same_folder_command_twice_at_once_completes_both(work, model_dir):
    (work / "in").mkdir()
    for i in range(8):
        _image(work / "in" / f"{i}.png", 16, 16, 20 + i)
    args = [sys.executable, "-c", "import sys\nfrom frfsr import cli\nsys.exit(cli.main(sys.argv[1:]))",
            "upscale", "in", "--ref", "ref.png", "-o", "out/", "--overwrite", "--model", str(model_dir),
            "--device", "cpu", "--tile", "0", "--no-progress"]
    before = _snapshot(work)
    runs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(work),
                             cwd=work) for _ in range(2)]
    results = [(r.wait(timeout=TIMEOUT), *r.communicate()) for r in runs]
    for code, out, err in results:
        assert code == 0, err
        assert "Traceback" not in err and "8 written, 0 skipped" in out
    outputs = sorted((work / "out").iterdir())
    assert [p.name for p in outputs] == [f"{i}.png" for i in range(8)]        # no temporary file left
    for p in outputs:
        with Image.open(p) as im:
            im.verify()
        assert Image.open(p).size == (64, 64)
    assert {p: b for p, b in _snapshot(work).items() if p.parent.name != "out"} == before
