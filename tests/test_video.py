"""frfsr.video on short clips made here with PyAV (32x24, 10 fps, a sine-wave audio track) and
the tiny random-weight model: frame count, rate, 4x size, audio copied or re-encoded, Refs
encoded once, batches bounded, atomic writes on failure and Ctrl-C, clear errors."""
import sys
import warnings
from fractions import Fraction

import numpy as np
import pytest
import torch

av = pytest.importorskip("av")

from frfsr import FRFSR, FRFSRConfig, FRFSRPipeline  # noqa: E402
from frfsr.checks import FRFSRWarning  # noqa: E402
from frfsr.models import EncodedRefs  # noqa: E402
from frfsr.video import VIDEO_SUFFIXES, VideoFileError, VideoResult, upscale_video  # noqa: E402
from benchmark_scripts import load_benchmark  # noqa: E402

W, H, FPS, N = 32, 24, 10, 12
SAMPLE_RATE = 16000


def _frames(n=N, w=W, h=H):
    """Smooth moving colour gradients (which a codec keeps well, unlike noise)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    for i in range(n):
        r = 128 + 100 * np.sin((x + 2 * i) / 5)
        g = 128 + 100 * np.cos((y - i) / 4)
        b = 128 + 60 * np.sin((x + y + 3 * i) / 7)
        yield np.stack([r, g, b], -1).clip(0, 255).astype(np.uint8)


def make_clip(path, n=N, fps=FPS, audio="aac", sar=None):
    out = av.open(str(path), "w")
    v = out.add_stream("libx264", rate=fps)
    v.width, v.height, v.pix_fmt = W, H, "yuv420p"
    if sar:
        v.codec_context.sample_aspect_ratio = sar
    v.options = {"crf": "10"}
    a = None
    if audio:
        a = out.add_stream(audio, rate=SAMPLE_RATE)
        a.layout = "mono"
    for i, img in enumerate(_frames(n)):
        f = av.VideoFrame.from_ndarray(img, format="rgb24")
        f.pts = i
        out.mux(v.encode(f))
    if a is not None:
        total, fmt = int(n / fps * SAMPLE_RATE), a.codec_context.format.name
        for k in range(0, total, 1000):
            s = 0.5 * np.sin(2 * np.pi * 440 * np.arange(k, min(total, k + 1000)) / SAMPLE_RATE)[None]
            s = (s * 32767).astype(np.int16) if fmt == "s16" else s.astype(np.float32)
            af = av.AudioFrame.from_ndarray(s, format=fmt, layout="mono")
            af.sample_rate, af.pts = SAMPLE_RATE, k
            out.mux(a.encode(af))
        out.mux(a.encode(None))
    out.mux(v.encode(None))
    out.close()
    return path


def probe(path):
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        c.seek(0)
        audio = [(s.codec_context.name, s.codec_context.sample_rate) for s in c.streams.audio]
        # audio duration from the decoded samples (containers differ in what their headers say)
        samples = sum(f.samples for f in c.decode(audio=0)) if audio else 0
        return {"fps": v.average_rate, "frames": frames, "sar": v.codec_context.sample_aspect_ratio, "audio": audio,
                "audio_seconds": samples / c.streams.audio[0].codec_context.sample_rate if audio else 0.0}


def _psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255 ** 2 / max(mse, 1e-10))


@pytest.fixture(scope="module")
def pipe():
    torch.manual_seed(0)
    p = FRFSRPipeline(FRFSR(FRFSRConfig.tiny()))
    p.relevance_threshold = None
    return p


@pytest.fixture(scope="module")
def ref():
    return np.random.default_rng(1).integers(0, 256, (40, 36, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return make_clip(tmp_path_factory.mktemp("clip") / "clip.mp4")


def test_upscale_keeps_frames_rate_and_audio(pipe, ref, clip, tmp_path):
    dst = tmp_path / "out" / "sr.mp4"
    res = upscale_video(pipe, clip, dst, ref, batch_size=4, progress=False)
    assert isinstance(res, VideoResult)
    assert (res.frames, res.fps, res.size, res.codec) == (N, Fraction(FPS), (4 * W, 4 * H), "libx264")
    assert res.audio == "copied" and res.audio_copied and res.audio_streams == 1 and res.audio_codec == "aac"
    assert res.relevance_min is not None and res.relevance_min <= res.relevance_mean
    assert sorted(p.name for p in dst.parent.iterdir()) == ["sr.mp4"]          # no temporary file left
    src, out = probe(clip), probe(dst)
    assert out["fps"] == FPS and len(out["frames"]) == N
    assert all(f.shape == (4 * H, 4 * W, 3) for f in out["frames"])
    assert out["audio"] == [("aac", SAMPLE_RATE)]
    assert abs(out["audio_seconds"] - src["audio_seconds"]) < 0.05 and abs(out["audio_seconds"] - N / FPS) < 0.1
    # the frames are the pipeline's output on the decoded frames, in order, up to the codec's loss
    direct = pipe(torch.from_numpy(np.stack(src["frames"])).permute(0, 3, 1, 2), ref, output_type="np", progress=False)
    scores = [_psnr(a, b) for a, b in zip(out["frames"], direct)]
    assert min(scores) > 30, scores
    assert _psnr(out["frames"][0], direct[5]) < min(scores) - 3               # and not any frame will do


def test_refs_encoded_once_and_batches_bounded(pipe, ref, clip, tmp_path, monkeypatch):
    calls = {"encode": 0, "batches": []}
    encode = pipe.model.encode_refs

    def counting_encode(refs, *a, **k):
        calls["encode"] += not isinstance(refs, EncodedRefs)        # (encoded Refs pass through)
        return encode(refs, *a, **k)

    monkeypatch.setattr(pipe.model, "encode_refs", counting_encode)

    class Spy:                              # the pipeline, recording the batch of each call
        relevance_threshold = None

        def prepare_refs(self, *a, **k):
            return pipe.prepare_refs(*a, **k)

        def __call__(self, x, refs, **kw):
            calls["batches"].append(x.shape[0])
            return pipe(x, refs, **kw)

    res = upscale_video(Spy(), clip, tmp_path / "sr.mkv", [ref, ref[::-1].copy()], batch_size=5, progress=True)
    assert calls["encode"] == 1 and calls["batches"] == [5, 5, 2]
    assert res.frames == N and res.audio == "copied"
    out = probe(tmp_path / "sr.mkv")
    assert len(out["frames"]) == N and out["fps"] == FPS and out["audio"] == [("aac", SAMPLE_RATE)]
    # already encoded Refs are used as they are
    encoded = pipe.prepare_refs(ref)
    calls["encode"] = 0
    upscale_video(pipe, clip, tmp_path / "sr2.mp4", encoded, batch_size=N, progress=False, audio="drop")
    assert calls["encode"] == 0 and probe(tmp_path / "sr2.mp4")["audio"] == []


def test_audio_the_container_refuses_is_reencoded_and_said(pipe, ref, clip, tmp_path):
    with pytest.warns(FRFSRWarning, match="re-encoding it to libopus"):
        res = upscale_video(pipe, clip, tmp_path / "sr.webm", ref, batch_size=6, progress=False)
    assert res.audio == "re-encoded" and res.audio_codec == "libopus" and res.codec in ("libvpx-vp9", "libvpx")
    out = probe(tmp_path / "sr.webm")
    assert len(out["frames"]) == N and out["fps"] == FPS and out["audio"][0][0] == "opus"
    assert abs(out["audio_seconds"] - N / FPS) < 0.1
    with pytest.raises(VideoFileError, match="audio copied"):
        upscale_video(pipe, clip, tmp_path / "copy.webm", ref, progress=False, audio="copy")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sr.webm"]


def test_mpeg4_codec_with_quality(pipe, ref, tmp_path):
    src = make_clip(tmp_path / "silent.mov", n=5, audio=None, sar=Fraction(4, 3))
    res = upscale_video(pipe, src, tmp_path / "sr.avi", ref, codec="mpeg4", crf=2, progress=False)
    assert (res.codec, res.audio, res.frames) == ("mpeg4", "none", 5)
    out = probe(tmp_path / "sr.avi")
    assert len(out["frames"]) == 5 and out["fps"] == FPS and out["frames"][0].shape == (4 * H, 4 * W, 3)
    assert out["sar"] == Fraction(4, 3)                     # anamorphic pixels stay so
    upscale_video(pipe, src, tmp_path / "coarse.avi", ref, codec="mpeg4", crf=31, progress=False)
    assert (tmp_path / "coarse.avi").stat().st_size < 0.7 * (tmp_path / "sr.avi").stat().st_size


@pytest.mark.parametrize("stop", ["interrupt", "ctrl-c"])
def test_a_failed_run_leaves_no_file(pipe, ref, clip, tmp_path, stop):
    dst = tmp_path / "sr.mp4"
    dst.write_bytes(b"the previous result")
    n = {"tiles": 0}

    def interrupt():
        n["tiles"] += 1
        if n["tiles"] < 2:                  # the first batch goes through (and is encoded)
            return False
        if stop == "ctrl-c":
            raise KeyboardInterrupt
        return True

    with pytest.raises(KeyboardInterrupt if stop == "ctrl-c" else InterruptedError):
        upscale_video(pipe, clip, dst, ref, batch_size=4, progress=False, interrupt=interrupt, tile=None)
    assert n["tiles"] == 2
    assert dst.read_bytes() == b"the previous result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sr.mp4"]
    dst.unlink()
    with pytest.raises(InterruptedError):
        upscale_video(pipe, clip, dst, ref, progress=False, interrupt=lambda: True)
    assert list(tmp_path.iterdir()) == []


def test_clear_errors(pipe, ref, clip, tmp_path, monkeypatch):
    with pytest.raises(VideoFileError, match=r"'\.gif' is not a video container.*\.mp4, \.mkv"):
        upscale_video(pipe, clip, tmp_path / "sr.gif", ref)
    with pytest.raises(FileNotFoundError, match="video not found"):
        upscale_video(pipe, tmp_path / "missing.mp4", tmp_path / "sr.mp4", ref)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        upscale_video(pipe, clip, tmp_path / "sr.mp4", ref, batch_size=0)
    with pytest.raises(TypeError, match="sets output_type"):
        upscale_video(pipe, clip, tmp_path / "sr.mp4", ref, output_type="pil")
    with pytest.raises(VideoFileError, match="not in this PyAV build"):
        upscale_video(pipe, clip, tmp_path / "sr.mp4", ref, codec="no-such-codec")
    (tmp_path / "notvideo.mp4").write_bytes(b"not a video")
    with pytest.raises(VideoFileError, match="cannot read the video"):
        upscale_video(pipe, tmp_path / "notvideo.mp4", tmp_path / "sr.mp4", ref)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notvideo.mp4"]
    monkeypatch.setitem(sys.modules, "av", None)              # PyAV not installed
    with pytest.raises(ImportError, match=r"video needs PyAV: pip install 'frfsr\[video\]'"):
        upscale_video(pipe, clip, tmp_path / "sr.mp4", ref)


def test_low_relevance_is_one_warning_for_the_clip(ref, clip, tmp_path):
    torch.manual_seed(0)
    p = FRFSRPipeline(FRFSR(FRFSRConfig.tiny()))
    p.relevance_threshold = 2.0            # above any cosine similarity: every frame is "low"
    from PIL import Image
    ref_file = tmp_path / "ref.png"        # a Ref given as an image path, as the command line has it
    Image.fromarray(ref).save(ref_file)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = upscale_video(p, clip, tmp_path / "sr.mp4", [str(ref_file)], batch_size=6, progress=False)
    msgs = [str(w.message) for w in caught if issubclass(w.category, FRFSRWarning)]
    assert len(msgs) == 1 and f"{N} of {N} frames" in msgs[0]
    assert res.low_relevance_frames == N


def test_suffixes_are_writable_here():
    for s in VIDEO_SUFFIXES:
        assert av.format.ContainerFormat({".mkv": "matroska", ".mp4": "mp4", ".mov": "mov", ".avi": "avi",
                                          ".webm": "webm"}[s], "w")


def test_bench_video_runs(monkeypatch, capsys):
    bench = load_benchmark("bench_video")
    rows = bench.main(["--seconds", "0.3", "--size", "16x16", "--batch-size", "2", "--threads", "1"])
    assert len(rows) == 1 and "error" not in rows[0], rows
    r = rows[0]
    assert (r["frames"], r["size"], r["audio"]) == (3, "64x64", "copied") and r["peak_mib"] >= r["over_baseline_mib"] > 0
    assert "| 0.3 s @ 10 fps | 16x16 | 3 | tiny |" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        bench.main(["--size", "15x16"])


def test_cli_upscales_a_clip_and_a_folder_with_a_clip(clip, tmp_path, capsys):
    """`frfsr upscale clip.mp4 --ref still.png -o out.mp4`, and a clip inside a folder run
    (skipped when complete on the second run)."""
    from PIL import Image

    from frfsr import cli
    torch.manual_seed(0)
    FRFSR(FRFSRConfig.tiny()).save_pretrained(tmp_path / "model")
    still = tmp_path / "still.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 36, 3), dtype=np.uint8)).save(still)
    common = ["--ref", str(still), "--model", str(tmp_path / "model"), "--device", "cpu", "--no-progress"]
    assert cli.main(["upscale", str(clip), "-o", str(tmp_path / "out.mp4"), *common]) == 0
    out = probe(tmp_path / "out.mp4")
    assert len(out["frames"]) == N and out["frames"][0].shape == (4 * H, 4 * W, 3) and out["audio"]
    folder = tmp_path / "inputs"
    folder.mkdir()
    (folder / "clip.mp4").write_bytes(clip.read_bytes())
    args = ["upscale", str(folder), "-o", str(tmp_path / "sr"), *common]
    assert cli.main(args) == 0 and "1 written" in capsys.readouterr().out
    assert len(probe(tmp_path / "sr" / "clip.mp4")["frames"]) == N
    assert cli.main(args) == 0 and "0 written, 1 skipped" in capsys.readouterr().out
