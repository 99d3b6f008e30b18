"""Video files: decode, super-resolve and encode frame by frame (``pip install "frfsr[video]"``).

>>> from frfsr import FRFSRPipeline
>>> from frfsr.video import upscale_video
>>> pipe = FRFSRPipeline.from_pretrained()
>>> res = upscale_video(pipe, "clip.mp4", "clip_4x.mp4", ref_image)   # VideoResult
>>> res.frames, res.fps, res.size, res.audio

The clip is read with PyAV packet by packet; decoded frames are gathered into batches of
``batch_size``, each batch is upscaled in one pipeline call against Refs encoded once for
the whole clip, and the 4x frames are encoded straight away, so memory holds at most one
batch of decoded frames and its outputs (plus what the codecs keep), however long the clip.
Frames keep their timestamps and the stream its average frame rate. Audio streams are
copied packet for packet where the output container holds their codec, else re-encoded
(AAC; Opus in WebM), which the result and a warning say. Subtitle, data and further video
streams are left out.

The output is written to a temporary file beside ``dst`` and renamed into place at the
end: an error or Ctrl-C leaves no partial file under ``dst`` (and an existing ``dst``
untouched).
"""
from __future__ import annotations

import os
import tempfile
import warnings
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from ._fs import WriteError, fsync, temp_prefix, umask
from .checks import FRFSRWarning

# containers whose writers PyAV/FFmpeg has here; the first codec available is used by default
VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov", ".avi", ".webm")
_VIDEO_CODECS = {".webm": ("libvpx-vp9", "libvpx")}
_DEFAULT_VIDEO_CODECS = ("libx264", "mpeg4")
_AUDIO_CODECS = {".webm": "libopus"}
_DEFAULT_AUDIO_CODEC = "aac"
# constant-quality defaults: the encoder option and its value (mpeg4 has no CRF: its qscale)
_QUALITY = {"libx264": ("crf", 18), "libx265": ("crf", 20), "libvpx-vp9": ("crf", 31), "libvpx": ("crf", 10),
            "libsvtav1": ("crf", 30), "mpeg4": ("qscale", 3)}
# pipeline options that the video writer sets itself
_RESERVED = ("output_type", "output_dtype", "return_details")


def _import_av():
    try:
        import av
    except ImportError:
        raise ImportError("video needs PyAV: pip install 'frfsr[video]'") from None
    return av


class VideoFileError(ValueError):
    """A video file that cannot be read, or a path or codec a result cannot be written with."""


@dataclass
class VideoResult:
    """What :func:`upscale_video` wrote. ``audio``: ``"copied"`` (packets remuxed as they
    were), ``"re-encoded"`` (the container does not hold the source codec; ``audio_codec``
    says which was used) or ``"none"`` (no audio in the source). Relevance: the mean match
    confidence per frame (see :mod:`frfsr.pipeline`); ``low_relevance_frames`` counts the
    frames below the pipeline's ``relevance_threshold``."""

    path: Path
    frames: int
    fps: Fraction
    size: tuple[int, int]                       # (width, height) of the output frames
    codec: str
    audio: str = "none"
    audio_streams: int = 0
    audio_codec: str | None = None
    relevance_mean: float | None = None
    relevance_min: float | None = None
    low_relevance_frames: int = 0
    dropped_streams: list[str] = field(default_factory=list)

    @property
    def audio_copied(self) -> bool:
        return self.audio == "copied"


def _codec_available(av, name: str) -> bool:
    try:
        av.codec.Codec(name, "w")
    except (ValueError, av.FFmpegError):
        return False
    return True


def _pick_video_codec(av, codec: str | None, suffix: str) -> str:
    if codec is not None:
        if not _codec_available(av, codec):
            have = [c for c in (*_DEFAULT_VIDEO_CODECS, *_VIDEO_CODECS[".webm"]) if _codec_available(av, c)]
            raise VideoFileError(f"video encoder {codec!r} is not in this PyAV build; available here: {', '.join(have)}")
        return codec
    candidates = _VIDEO_CODECS.get(suffix, _DEFAULT_VIDEO_CODECS)
    for name in candidates:
        if _codec_available(av, name):
            return name
    raise VideoFileError(f"no encoder for {suffix} video in this PyAV build (tried {', '.join(candidates)}); "
                         "pass codec=... with one it has")


def _check_paths(src: Path, dst: Path) -> None:
    if not src.is_file():
        raise FileNotFoundError(f"video not found: {src}" if not src.is_dir() else f"video {src} is a folder")
    if dst.is_dir():
        raise VideoFileError(f"cannot write {dst}: it is a folder; give a file name such as {dst / 'sr.mp4'}")
    from ._fs import check_apart
    check_apart([("the output", dst)], [("the input", src)])
    if dst.suffix.lower() not in VIDEO_SUFFIXES:
        raise VideoFileError(f"cannot write {dst}: {dst.suffix or 'no extension'!r} is not a video container "
                             f"frfsr writes; accepted: {', '.join(VIDEO_SUFFIXES)}")


def _load_refs(pipe, refs, views):
    """Refs encoded once for every frame (paths are read as image files)."""
    from .models import EncodedRefs
    if isinstance(refs, EncodedRefs):
        if views is not None:
            raise ValueError("ref_views apply when the Refs are encoded; these Refs are encoded "
                             "already (pass them to pipe.prepare_refs)")
        return refs
    items = list(refs) if isinstance(refs, (list, tuple)) else [refs]
    if any(isinstance(r, (str, os.PathLike)) for r in items):
        from .image_files import read_image
        items = [read_image(r, "Ref") if isinstance(r, (str, os.PathLike)) else r for r in items]
    return pipe.prepare_refs(items, 1, views)


def _frame_rate(stream) -> Fraction:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            return Fraction(rate)
    raise VideoFileError(f"the video stream has no frame rate (codec {stream.codec_context.name})")


def _frame_count_estimate(stream, fps: Fraction) -> int | None:
    if stream.frames:
        return stream.frames
    if stream.duration is not None and stream.time_base is not None:
        return round(stream.duration * stream.time_base * fps) or None
    return None


class _CopyRefused(Exception):
    """The output container does not take the source's audio packets as they are."""


class _Writer:
    """The output container: the 4x video stream and the audio streams, copied or re-encoded."""

    def __init__(self, av, path: str, vin, ains, codec: str, size, fps: Fraction, crf, options, reencode_audio: bool,
                 audio_codec: str):
        self.av = av
        self.out = av.open(path, "w")
        try:
            self._add_video(vin, codec, size, fps, crf, options)
            self.audio = {}
            self.reencode = reencode_audio
            if reencode_audio:
                self.audio = {s.index: self._reencoded_audio(s, audio_codec) for s in ains}
                self.out.start_encoding()
            else:
                try:
                    self.audio = {s.index: self.out.add_stream_from_template(s) for s in ains}
                    self.out.start_encoding()   # opens the codecs, writes the header: fails now if a copy is refused
                except (ValueError, av.FFmpegError) as e:
                    raise _CopyRefused(str(e)) from None
        except BaseException:
            self.close_quietly()
            raise

    def _add_video(self, vin, codec, size, fps, crf, options):
        w, h = size
        opts = {k: str(v) for k, v in (options or {}).items()}
        c = self.av.codec.Codec(codec, "w")
        formats = [f.name for f in c.video_formats or ()]
        self.v = self.out.add_stream(codec, rate=fps)
        self.v.width, self.v.height = w, h
        sar = vin.codec_context.sample_aspect_ratio
        if sar:                                      # anamorphic sources keep their pixel shape
            self.v.codec_context.sample_aspect_ratio = sar
        self.v.pix_fmt = "yuv420p" if not formats or "yuv420p" in formats else formats[0]
        # the source's time base where the encoder and container take it (MPEG-4 part 2 needs a
        # denominator < 2^16; AVI has one frame per time-base tick)
        tb = vin.time_base or 1 / fps
        if (codec == "mpeg4" and tb.denominator > 65535) or self.out.format.name == "avi":
            tb = 1 / fps
        self.v.codec_context.time_base = self.tb = Fraction(tb)
        self.v.time_base = self.tb
        key, default = _QUALITY.get(codec, (None, None))
        if key == "qscale":                          # a fixed quantiser: the rate control's bounds pinned to it
            q = str(int(crf if crf is not None else default))
            opts.setdefault("qmin", q)
            opts.setdefault("qmax", q)
        elif key is not None:
            opts.setdefault(key, str(crf if crf is not None else default))
            if codec.startswith("libvpx"):
                opts.setdefault("b", "0")            # constant quality, no bit-rate target
        elif crf is not None:
            raise VideoFileError(f"crf: frfsr knows no constant-quality option of the {codec!r} encoder; "
                                 f"set it in options=... (crf is understood for {', '.join(_QUALITY)})")
        self.v.options = opts

    def _reencoded_audio(self, s, codec: str):
        c = self.av.codec.Codec(codec, "w")
        rate = s.codec_context.sample_rate
        rates = list(c.audio_rates or ())
        if rates and rate not in rates:
            rate = min(rates, key=lambda r: (r < rate, abs(r - rate)))      # the nearest above, else below
        a = self.out.add_stream(codec, rate=rate)
        a.layout = s.codec_context.layout.name if s.codec_context.layout.nb_channels <= 2 else "stereo"
        return a

    def write_frames(self, frames: np.ndarray, pts: list[int]) -> None:
        for img, t in zip(frames, pts):
            f = self.av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            f.pts, f.time_base = t, self.tb
            self.out.mux(self.v.encode(f))

    def audio_packet(self, packet) -> None:
        ostream = self.audio[packet.stream.index]
        if not self.reencode:
            if packet.dts is None:               # the demuxer's end-of-stream marker
                return
            packet.stream = ostream
            self.out.mux(packet)
            return
        for frame in packet.decode():
            frame.pts = None                     # the encoder numbers the samples itself
            self.out.mux(ostream.encode(frame))

    def finish(self) -> None:
        self.out.mux(self.v.encode(None))
        if self.reencode:
            for a in self.audio.values():
                self.out.mux(a.encode(None))
        self.out.close()

    def close_quietly(self) -> None:
        try:
            self.out.close()
        except Exception:
            pass


def upscale_video(pipe, src, dst, refs, *, batch_size: int = 4, progress: bool = True, codec: str | None = None,
                  crf: int | None = None, options: dict | None = None, audio: str = "auto",
                  **pipe_kwargs) -> VideoResult:
    """4x SR of the video ``src`` into ``dst`` (.mp4, .mkv, .mov, .avi or .webm:
    :data:`VIDEO_SUFFIXES`), frame by frame, against ``refs``: Ref image(s) (PIL, arrays,
    tensors or image paths, one or a list) or :meth:`FRFSRPipeline.prepare_refs`'s result;
    Refs are encoded once for the whole clip.

    ``batch_size``: frames per pipeline call (memory holds one batch and its 4x frames);
    ``progress``: a tqdm bar over frames; ``codec``: the video encoder (None: libx264,
    else mpeg4; libvpx-vp9, else libvpx, for .webm); ``crf``: its constant-quality level
    (CRF for libx264 / libx265 / libvpx / libsvtav1, qscale for mpeg4; None: 18 for
    libx264, 31 for VP9, 3 for mpeg4); ``options``: further encoder options (e.g.
    ``{"preset": "slow"}``); ``audio``: "auto" (copy, re-encode where the container does not
    hold the codec), "copy" (fail instead of re-encoding), "reencode" or "drop".
    Other keywords go to the pipeline call (``tile``, ``overlap``, ``match_mode``,
    ``interrupt``; ``ref_views`` to the Ref encoding). Returns a :class:`VideoResult`."""
    av = _import_av()
    src, dst = Path(src), Path(dst)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1 (frames per pipeline call), got {batch_size!r}")
    if audio not in ("auto", "copy", "reencode", "drop"):
        raise ValueError(f"audio must be 'auto', 'copy', 'reencode' or 'drop', got {audio!r}")
    reserved = sorted(set(pipe_kwargs) & set(_RESERVED))
    if reserved:
        raise TypeError(f"upscale_video sets {', '.join(reserved)} itself (it writes 8-bit video frames)")
    _check_paths(src, dst)
    suffix = dst.suffix.lower()
    vcodec = _pick_video_codec(av, codec, suffix)
    acodec = _AUDIO_CODECS.get(suffix, _DEFAULT_AUDIO_CODEC)
    encoded = _load_refs(pipe, refs, pipe_kwargs.pop("ref_views", None))

    try:
        container = av.open(str(src))
    except av.FFmpegError as e:
        raise VideoFileError(f"cannot read the video {src}: {e}") from None
    tmp = None
    writer = None
    try:
        if not container.streams.video:
            raise VideoFileError(f"{src} has no video stream")
        vin = container.streams.video[0]
        vin.thread_type = "AUTO"
        ains = list(container.streams.audio) if audio != "drop" else []
        dropped = [f"{s.type} #{s.index}" for s in container.streams if s is not vin and s not in ains]
        fps = _frame_rate(vin)
        w, h = vin.codec_context.width, vin.codec_context.height
        size = (4 * w, 4 * h)

        dst.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(dst), suffix=f".part{dst.suffix}", dir=dst.parent)
        os.close(fd)
        how = "none" if not ains else ("re-encoded" if audio == "reencode" else "copied")
        try:
            writer = _Writer(av, tmp, vin, ains, vcodec, size, fps, crf, options, how == "re-encoded", acodec)
        except _CopyRefused as e:
            if audio == "copy":
                raise VideoFileError(f"cannot write {dst} with the source audio copied: {e}; use audio='auto' "
                                     "(re-encode where needed) or another container") from None
            names = ", ".join(sorted({s.codec_context.name for s in ains}))
            warnings.warn(f"the {suffix} container does not hold the source's {names} audio ({e}); re-encoding it "
                          f"to {acodec}", FRFSRWarning, stacklevel=2)
            how = "re-encoded"
            writer = _Writer(av, tmp, vin, ains, vcodec, size, fps, crf, options, True, acodec)

        from tqdm.auto import tqdm
        bar = tqdm(total=_frame_count_estimate(vin, fps), desc="FRFSR video", unit="frame", disable=not progress)
        relevance: list[float] = []
        state = {"last": None, "index": 0}
        batch: list[np.ndarray] = []
        stamps: list[int] = []

        def out_pts(frame) -> int:
            # the frame's time on the output time base, strictly increasing (generated where missing)
            if frame.pts is not None and frame.time_base is not None:
                t = round(frame.pts * frame.time_base / writer.tb)
            else:
                t = round(state["index"] / fps / writer.tb)
            if state["last"] is not None and t <= state["last"]:
                t = state["last"] + 1
            state["last"], state["index"] = t, state["index"] + 1
            return t

        def run_batch() -> None:
            x = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2)
            with warnings.catch_warnings():       # one summary for the clip instead of one warning per batch
                warnings.filterwarnings("ignore", message="the Ref hardly matches", category=FRFSRWarning)
                out = pipe(x, encoded, output_type="np", output_dtype="uint8", return_details=True,
                           progress=False, **pipe_kwargs)
            relevance.extend(out.relevance)
            writer.write_frames(out.images, stamps)
            bar.update(len(batch))
            batch.clear()
            stamps.clear()

        try:
            for packet in container.demux(vin, *ains):
                if packet.stream.index != vin.index:
                    writer.audio_packet(packet)
                    continue
                for frame in packet.decode():
                    batch.append(frame.to_ndarray(format="rgb24"))
                    stamps.append(out_pts(frame))
                    if len(batch) == batch_size:
                        run_batch()
            if batch:
                run_batch()
            writer.finish()
        finally:
            bar.close()
        if not relevance:
            raise VideoFileError(f"{src} has no video frames")
        os.chmod(tmp, 0o666 & ~umask())
        fsync(tmp)
        os.replace(tmp, dst)
        tmp = None
        fsync(dst.parent)
    except BaseException as e:
        if writer is not None:
            writer.close_quietly()
        if isinstance(e, OSError) and tmp is not None and e.filename is not None and \
                os.fspath(e.filename) == os.fspath(tmp):      # writing failed (disk full, ...): name the output
            raise WriteError(f"cannot write {dst}: {e.strerror or e}") from None
        raise
    finally:
        container.close()
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)

    threshold = getattr(pipe, "relevance_threshold", None)
    low = sum(r < threshold for r in relevance) if threshold is not None else 0
    if low:
        warnings.warn(f"the Ref hardly matches {low} of {len(relevance)} frames of {src.name} (relevance down to "
                      f"{min(relevance):.2f} < {threshold}); there the output is mostly the model's own "
                      "reconstruction. A Ref showing the same scene helps", FRFSRWarning, stacklevel=2)
    return VideoResult(dst, len(relevance), fps, size, vcodec, how, len(ains),
                       None if how == "none" else (acodec if how == "re-encoded" else
                                                   ", ".join(s.codec_context.name for s in ains)),
                       float(np.mean(relevance)), float(min(relevance)), int(low), dropped)
