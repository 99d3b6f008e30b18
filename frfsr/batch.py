"""Many inputs at once: folders, globs, resumable runs, and work split across processes.

>>> from frfsr import FRFSRPipeline
>>> from frfsr.batch import upscale_files
>>> pipe = FRFSRPipeline.from_pretrained()
>>> res = upscale_files(pipe, ["photos/", "more/*.jpg"], ["ref1.jpg", "ref2.jpg"], "out/")
>>> res.done, res.skipped, res.failed                  # output paths; (input, error) pairs

Inputs are image files, folders (every image below them, hidden files and folders left
out) and glob patterns (``**`` included). An output keeps its input's path relative to the
folder it was found under (for a glob: the pattern's leading folders without wildcards;
for a file: its name), below ``out_dir``, with the input's suffix unless ``ext`` says
otherwise. Inputs below ``out_dir`` are left out, so an output folder inside an input
folder is never read back as input.

Resumable: an output that exists, reads as a whole image (every PNG chunk's checksum) and
is 4x its input's size is skipped; everything else is computed. Every image is written to
a temporary file beside its name and renamed into place (:func:`frfsr.image_files.write_image`),
so a run that is killed leaves no partial file under an output's name. Temporary names carry
the writing process's id: the ones a killed run left are removed when a later run reaches
that output, and runs going on at once never remove each other's.

Refs: one list for every input (encoded once, :meth:`FRFSRPipeline.prepare_refs`), or a
choice per input: a mapping from input path to Refs, or a callable ``refs(input_path)``
returning them (e.g. a retrieval over a Ref collection); consecutive inputs with the same
Refs share one encoding.

A failing input is recorded in :attr:`BatchResult.failed` and the run goes on; an
interruption (Ctrl-C, :class:`InterruptedError` from ``interrupt``) stops it.

Several processes: under ``accelerate launch`` or ``torchrun`` (``WORLD_SIZE`` > 1) the
inputs still to do are split between the processes with Accelerate's
``PartialState.split_between_processes``, after every process has looked at what is
complete, so each input is done once, by one process. Accelerate is imported only then.

Video inputs (suffixes of :data:`frfsr.video.VIDEO_SUFFIXES`, where that module is
installed) go to :func:`frfsr.video.upscale_video`, which needs PyAV (``frfsr[video]``).
"""
from __future__ import annotations

import functools
import glob
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .checks import FRFSRWarning
from .image_files import IMAGE_SUFFIXES

RefsChoice = Any       # Ref images / paths (one or a list), a mapping input path -> Refs, or a callable(Path) -> Refs


class BatchError(ValueError):
    """Inputs or outputs that a batch run cannot use (nothing matches, two inputs with one output name, ...)."""


@functools.lru_cache(maxsize=None)
def video_suffixes() -> tuple[str, ...]:
    """The video suffixes :mod:`frfsr.video` handles, () where that module is not installed."""
    try:
        from .video import VIDEO_SUFFIXES
    except ModuleNotFoundError as e:
        if e.name != f"{__package__}.video":
            raise
        return ()
    return tuple(s.lower() for s in VIDEO_SUFFIXES)


def input_suffixes() -> tuple[str, ...]:
    """Every suffix taken from folders and globs: images and, where installed, videos."""
    return IMAGE_SUFFIXES + video_suffixes()


# ---------------------------------------------------------------------- what to do
@dataclass(frozen=True)
class BatchItem:
    """One input and where its output goes."""

    src: Path
    dst: Path

    @property
    def is_video(self) -> bool:
        return self.src.suffix.lower() in video_suffixes()


def _hidden(rel: Path) -> bool:
    return any(part.startswith(".") for part in rel.parts)


def list_inputs(inputs: Sequence, suffixes: Sequence[str] | None = None) -> list[tuple[Path, Path]]:
    """``(file, relative name)`` for every input file of ``inputs`` (paths, folders and glob
    patterns), in order, each file once; folders are searched recursively and sorted, and
    only files whose suffix is in ``suffixes`` (default :func:`input_suffixes`) are taken
    from folders and globs. A file given by name with another suffix, a path that does not
    exist, or a folder or pattern without any input raises."""
    accepted = tuple(s.lower() for s in (suffixes if suffixes is not None else input_suffixes()))
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    found: list[tuple[Path, Path]] = []
    seen: set[Path] = set()

    def add(path: Path, rel: Path) -> None:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            found.append((path, rel))

    def walk(folder: Path, base: Path) -> int:
        n = 0
        for p in sorted(folder.rglob("*")):
            rel = p.relative_to(base)
            if p.is_file() and p.suffix.lower() in accepted and not _hidden(p.relative_to(folder)):
                add(p, rel)
                n += 1
        return n

    for item in inputs:
        text = os.fspath(item)
        if glob.has_magic(text) and not os.path.lexists(text):     # an existing path is a file before a pattern
            parts = Path(text).parts
            fixed = next((i for i, part in enumerate(parts) if glob.has_magic(part)), len(parts))
            base = Path(*parts[:fixed]) if fixed else Path(".")
            n = 0
            for match in sorted(glob.glob(text, recursive=True)):
                p = Path(match)
                if p.is_dir():
                    n += walk(p, base)
                elif p.suffix.lower() in accepted and not _hidden(p.relative_to(base)):
                    add(p, p.relative_to(base))
                    n += 1
            if not n:
                raise BatchError(f"no input files match {text!r} (suffixes taken: {', '.join(accepted)})")
            continue
        p = Path(text)
        if p.is_dir():
            if not walk(p, p):
                raise BatchError(f"the folder {p} holds no input files (suffixes taken: {', '.join(accepted)})")
        elif p.is_file():
            if p.suffix.lower() not in accepted:
                raise BatchError(f"{p}: {p.suffix or 'no suffix'!r} is not an input this installation reads; "
                                 f"accepted: {', '.join(accepted)}")
            add(p, Path(p.name))
        else:
            raise FileNotFoundError(f"input not found: {p}")
    return found


def output_path(rel, out_dir, ext: str | None = None) -> Path:
    """Where the output of the input named ``rel`` (relative to its folder) goes: ``out_dir/rel``,
    with the suffix ``ext`` (e.g. ".png") for images where given."""
    dst = Path(out_dir) / rel
    if ext is not None and dst.suffix.lower() not in video_suffixes():
        dst = dst.with_suffix(ext if ext.startswith(".") else "." + ext)
    return dst


def plan(inputs, out_dir, ext: str | None = None, keep=()) -> list[BatchItem]:
    """The :class:`BatchItem` of every input (see :func:`list_inputs`, :func:`output_path`);
    inputs below ``out_dir`` are left out. Two inputs with one output name raise, and so does
    an output that would be written over a file of ``keep`` (``(what, path)`` pairs such as
    ``("--ref", "refs/a.png")``: files read by the run besides the inputs)."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise BatchError(f"the output folder {out} is a file; with several inputs, a folder or a glob, -o names a "
                         "folder")
    out_key = out.resolve()
    items, by_dst = [], {}
    for src, rel in list_inputs(inputs):
        if src.resolve().is_relative_to(out_key):
            continue
        item = BatchItem(src, output_path(rel, out, ext))
        key = item.dst.resolve()
        if key in by_dst:
            raise BatchError(f"{by_dst[key].src} and {src} would both be written to {item.dst}; give their folder "
                             "instead of the files (the layout below it is kept), or run them separately")
        by_dst[key] = item
        items.append(item)
    if keep:
        from ._fs import check_apart
        for item in items:
            try:
                check_apart([("the output", item.dst)], keep)
            except ValueError as e:
                raise BatchError(str(e)) from None
    if not items:
        raise BatchError(f"no inputs left outside the output folder {out}")
    return items


def is_complete(item: BatchItem) -> bool:
    """Whether ``item``'s output is already there whole: it reads as an image (for PNG, every
    chunk's checksum is verified) 4x the input's size. A video output counts where it exists
    and is not empty (it is renamed into place only when finished)."""
    dst = item.dst
    if not dst.is_file():
        return False
    if item.is_video:
        return dst.stat().st_size > 0
    from PIL import Image
    try:
        with Image.open(item.src) as src:
            w, h = src.size
            if src.getexif().get(0x0112, 1) in (5, 6, 7, 8):     # read upright (EXIF orientation): turned
                w, h = h, w
        with Image.open(dst) as out:
            size = out.size
            out.verify()
    except Exception:            # unreadable or truncated: do it again
        return False
    return size == (4 * w, 4 * h)


def remove_leftovers(dst: Path) -> list[Path]:
    """Remove the temporary files that runs no longer running left beside ``dst`` (images and
    videos alike, :func:`frfsr._fs.remove_leftovers`); returns them. A run going on beside this
    one keeps its own."""
    from ._fs import remove_leftovers as remove
    return remove(dst)


# ---------------------------------------------------------------------- the result
@dataclass
class BatchResult:
    """What a run did: outputs written (``done``), outputs already complete (``skipped``) and
    ``(input, error message)`` for inputs that failed; ``warnings``: input -> the pipeline's
    warnings (e.g. a Ref that hardly matches); ``process_index`` / ``num_processes``: which
    process of how many this is (0 / 1 without Accelerate); ``seconds``: the run's time."""

    done: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    warnings: dict[Path, list[str]] = field(default_factory=dict)
    process_index: int = 0
    num_processes: int = 1
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        rate = f" ({len(self.done) / self.seconds:.2f} images/s)" if self.done and self.seconds > 0 else ""
        who = f" by {self.num_processes} processes" if self.num_processes > 1 else ""
        lines = [f"{len(self.done)} written, {len(self.skipped)} skipped (already complete), {len(self.failed)} failed"
                 f"{who} in {self.seconds:.1f} s{rate}"]
        lines += [f"  failed: {src}: {err}" for src, err in self.failed]
        return "\n".join(lines)

    @classmethod
    def merge(cls, results: Sequence["BatchResult"]) -> "BatchResult":
        """One result for the results of several processes."""
        out = cls(num_processes=max((r.num_processes for r in results), default=1))
        for r in results:
            out.done += r.done
            out.skipped += r.skipped
            out.failed += r.failed
            out.warnings.update(r.warnings)
            out.seconds = max(out.seconds, r.seconds)
        return out


# ---------------------------------------------------------------------- processes
def distributed_state(cpu: bool | None = None):
    """Accelerate's ``PartialState`` where this process is one of several (``WORLD_SIZE`` > 1,
    as ``accelerate launch`` and ``torchrun`` set it), else None; accelerate is imported only
    in the first case. ``cpu``: processes on the CPU, joined with gloo (None: where
    ``ACCELERATE_USE_CPU`` is set or there is no CUDA device)."""
    try:
        world = int(os.environ.get("WORLD_SIZE") or 1)
    except ValueError:
        world = 1
    if world <= 1:
        return None
    try:
        from accelerate import PartialState
    except ImportError:
        raise ImportError(f"this process is one of {world} (WORLD_SIZE={world}); splitting the inputs between "
                          "processes needs accelerate: pip install 'frfsr[train]'") from None
    if cpu is None:
        import torch
        cpu = (os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
               or not torch.cuda.is_available())
    state = PartialState(cpu=cpu)
    if state.num_processes != world:           # each would do every input: refuse rather than repeat the work
        raise BatchError(f"WORLD_SIZE is {world} but Accelerate joined {state.num_processes} process(es); on the "
                         "CPU set ACCELERATE_USE_CPU=1")
    return state


def gather_results(result: BatchResult, state) -> BatchResult:
    """Every process's :class:`BatchResult` merged into one, on every process (call it on all
    of them); ``result`` itself where ``state`` is None or a single process."""
    if state is None or state.num_processes <= 1:
        return result
    from accelerate.utils import gather_object
    return BatchResult.merge(gather_object([result]))


# ---------------------------------------------------------------------- refs
def _as_list(refs) -> list:
    return list(refs) if isinstance(refs, (list, tuple)) else [refs]


def _refs_for(refs: RefsChoice, src: Path) -> list:
    if callable(refs) and not isinstance(refs, Mapping):
        return _as_list(refs(src))
    if isinstance(refs, Mapping):
        for key in (src, str(src), src.resolve(), str(src.resolve())):
            if key in refs:
                return _as_list(refs[key])
        raise KeyError(f"no Refs given for {src}")
    return _as_list(refs)


class _EncodedRefs:
    """The last Refs encoded, reused while consecutive inputs have the same ones."""

    def __init__(self, pipe, views):
        self.pipe, self.views = pipe, views
        self.key, self.held, self.encoded = None, None, None

    @staticmethod
    def _key(refs: list) -> tuple:
        # paths by name; other objects by identity (kept alive in ``held``, so an id is not reused)
        return tuple(("path", str(Path(r).resolve())) if isinstance(r, (str, os.PathLike)) else ("obj", id(r))
                     for r in refs)

    def __call__(self, refs: list):
        if not refs:
            raise ValueError("at least one Ref is required")
        key = self._key(refs)
        if key != self.key:
            from .image_files import read_image
            self.encoded = None                       # free the previous encoding first
            images = [read_image(r, "Ref") if isinstance(r, (str, os.PathLike)) else r for r in refs]
            self.encoded = self.pipe.prepare_refs(images, ref_views=self.views)
            self.key, self.held = key, refs
        return self.encoded


# ---------------------------------------------------------------------- the run
def _upscale_image(pipe, item: BatchItem, encoded, progress: bool, pipe_kwargs: dict) -> None:
    from .image_files import check_output, read_image, write_image
    lr = read_image(item.src, "LR")
    check_output(item.dst, lr)
    out = pipe(lr, encoded, progress=progress, **pipe_kwargs)
    write_image(out, item.dst)


def _upscale_video(pipe, item: BatchItem, encoded, progress: bool, pipe_kwargs: dict, video_kwargs: dict) -> None:
    try:
        from .video import upscale_video
    except ImportError as e:
        raise ImportError(f"{item.src} is a video; video needs PyAV: pip install 'frfsr[video]' ({e})") from None
    item.dst.parent.mkdir(parents=True, exist_ok=True)
    upscale_video(pipe, item.src, item.dst, encoded, progress=progress, **video_kwargs, **pipe_kwargs)


def upscale_files(pipe, inputs, refs: RefsChoice, out_dir, *, ext: str | None = None, overwrite: bool = False,
                  progress: bool = True, state="auto", ref_views=None, log: Callable[[str], None] | None = None,
                  video_kwargs: dict | None = None, **pipe_kwargs) -> BatchResult:
    """4x SR of every input of ``inputs`` (files, folders, globs: :func:`plan`) into ``out_dir``.

    ``refs``: Ref images or paths for every input (encoded once, before the first input:
    a Ref that cannot be read raises), a mapping input path -> Refs, or a callable
    ``refs(input_path)`` -> Refs (see the module docstring); ``ext``: the outputs' suffix
    (default: each input's); ``overwrite``: compute outputs that are already complete too
    (default: skip them); ``progress``: a tqdm bar over inputs (and tiles, as the pipeline
    shows them), on the main process; ``state``: "auto" (Accelerate's ``PartialState`` when
    several processes run, :func:`distributed_state`), None (this process does everything)
    or a ``PartialState``; ``ref_views``: the Ref copies to match (:class:`frfsr.models.frfsr.RefViews`;
    None: the pipeline's);
    ``log(message)``: told of every output written and every failure; ``video_kwargs``:
    keywords for :func:`frfsr.video.upscale_video` (e.g. ``batch_size``). Other keywords go
    to every pipeline call (``tile``, ``overlap``, ``match_mode``, ``interrupt``).

    Returns this process's :class:`BatchResult` (:func:`gather_results` merges the
    processes'). ``KeyboardInterrupt`` and :class:`InterruptedError` stop the run; any
    other error of one input is recorded and the run goes on."""
    start = time.perf_counter()
    if state == "auto":
        state = distributed_state()
    several = state is not None and state.num_processes > 1
    rank, world = (state.process_index, state.num_processes) if several else (0, 1)
    main = not several or state.is_main_process
    shared = not callable(refs) and not isinstance(refs, Mapping)
    ref_files = [("the Ref", r) for r in (_as_list(refs) if shared else []) if isinstance(r, (str, os.PathLike))]
    items = plan(inputs, out_dir, ext, keep=ref_files)
    if ext is not None:
        from PIL import Image

        from .image_files import check_output
        check_output(output_path("x", out_dir, ext), Image.new("RGB", (1, 1)))
    todo, skipped = [], []
    for item in items:
        (skipped if not overwrite and is_complete(item) else todo).append(item)
    if several:
        state.wait_for_everyone()          # every process has looked at what is complete before anything is written
        with state.split_between_processes(todo) as mine:
            todo = list(mine)
    result = BatchResult(skipped=[i.dst for i in skipped] if main else [], process_index=rank, num_processes=world)
    cache = _EncodedRefs(pipe, ref_views)
    if shared and todo:
        cache(_as_list(refs))
    log = log or (lambda message: None)
    video_kwargs = dict(video_kwargs or {})
    bar = None
    if progress and main and len(todo) > 1:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(todo), desc="FRFSR images", unit="image")
    try:
        for item in todo:
            remove_leftovers(item.dst)
            try:
                encoded = cache(_refs_for(refs, item.src))
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", FRFSRWarning)
                    if item.is_video:
                        _upscale_video(pipe, item, encoded, progress and main, pipe_kwargs, video_kwargs)
                    else:
                        _upscale_image(pipe, item, encoded, progress and main, pipe_kwargs)
            except InterruptedError:
                raise
            except Exception as e:
                message = str(e) or type(e).__name__
                result.failed.append((item.src, message))
                log(f"failed {item.src}: {message}")
            else:
                found = [str(w.message) for w in caught if issubclass(w.category, FRFSRWarning)]
                for w in caught:                   # other warnings go on as usual
                    if not issubclass(w.category, FRFSRWarning):
                        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
                if found:
                    result.warnings[item.src] = found
                    for w in found:
                        log(f"warning: {item.src}: {w}")
                result.done.append(item.dst)
                log(f"wrote {item.dst}")
            if bar is not None:
                bar.update()
    finally:
        if bar is not None:
            bar.close()
        result.seconds = time.perf_counter() - start
    return result
