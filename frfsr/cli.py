"""The ``frfsr`` command.

    frfsr upscale LR --ref REF [--ref REF2] -o OUT [--model ID_OR_DIR] [--tile N] [--device D]
                 [--dtype T] [--save-confidence PATH] [--save-warped-ref PATH] [--match-mode M]
    frfsr upscale INPUT [INPUT ...] (--ref REF ... | --ref-dir DIR) -o OUT_DIR [--ext .png] [--overwrite]
                 (folders, globs; resumable; split between processes under accelerate launch)
    frfsr convert CKPT [CKPT ...] -o OUT_DIR [--kind auto|official|c2matching|esrgan|vgg16|vgg19]
                 [--config paper|tiny|config.json] [--base ID_OR_DIR] [--allow-partial]
    frfsr info [ID_OR_DIR_OR_CHECKPOINT]
    frfsr demo [-o OUT_DIR] [--model ID_OR_DIR] [--device D]

Subcommands live in :data:`SUBCOMMANDS`: a builder per name that adds its arguments to a
parser and returns the function to run. Adding one is one decorated function::

    @subcommand("demo", "run the bundled demo")
    def _demo(p: argparse.ArgumentParser):
        p.add_argument("-o", "--output", default="demo_out")
        return lambda args: ...          # returns an exit code (or None for 0)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

Builder = Callable[[argparse.ArgumentParser], Callable[[argparse.Namespace], "int | None"]]
SUBCOMMANDS: dict[str, tuple[str, Builder]] = {}


def subcommand(name: str, help: str):
    """Register ``builder(parser) -> run(args)`` as ``frfsr <name>``."""
    def register(builder: Builder) -> Builder:
        SUBCOMMANDS[name] = (help, builder)
        return builder
    return register


class CLIError(Exception):
    """A user-facing error: printed without a traceback, exit code 2."""


def _model_args(p: argparse.ArgumentParser, default_model: str | None = "frfsr-default") -> None:
    from . import hub
    p.add_argument("--model", default=default_model,
                   help="a model folder, a bundled model (" +
                        ", ".join(f"'{n}': {use}" for n, use in hub.BUNDLED_USES.items()) +
                        ") or a Hub repo id (default: %(default)s)")
    p.add_argument("--revision", help="Hub branch, tag or commit to pin")
    p.add_argument("--local-files-only", action="store_true", help="use the Hub cache only, no downloads")
    p.add_argument("--cache-dir", help="Hub cache folder (default: the huggingface_hub cache)")
    p.add_argument("--token", help="Hub token (default: the saved login, if any)")


def _load_pipeline(args, device="cpu", dtype=None):
    from .devices import parse_device, resolve_dtype
    from .pipeline import FRFSRPipeline
    device = parse_device(device)                 # a missing device fails before anything is loaded
    return FRFSRPipeline.from_pretrained(args.model, revision=args.revision, torch_dtype=resolve_dtype(dtype, device),
                                         device=device, local_files_only=args.local_files_only,
                                         cache_dir=args.cache_dir, token=args.token)


def _open_image(path: str, what: str):
    from .image_files import read_image
    return read_image(path, what)


def _jpeg_hint(args, paths) -> None:
    """A note on stderr when the bundled clean-LR model is asked to upscale JPEG files, naming the
    bundled model trained for them."""
    from PIL import Image

    from . import hub
    if args.model != hub.DEFAULT_MODEL:
        return
    for path in paths:
        try:
            with Image.open(path) as im:
                if im.format != "JPEG":
                    continue
        except OSError:                  # not an image (a video, say): its reader says what is wrong
            continue
        print(f"note: {path} is a JPEG; --model {hub.ROBUST_MODEL} is the bundled model for "
              f"{hub.BUNDLED_USES[hub.ROBUST_MODEL]} ({hub.DEFAULT_MODEL}: {hub.BUNDLED_USES[hub.DEFAULT_MODEL]})",
              file=sys.stderr)
        return


def _tile(value: str):
    if value.lower() == "auto":
        return "auto"
    if value.lower() in ("0", "none", "off"):
        return None
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--tile takes an integer (LR pixels), 'auto' or 0 (no tiling), got {value!r}")


# ---------------------------------------------------------------------- upscale
def _single_file(args) -> bool:
    """One input file and ``-o`` a file name: the one-image mode (``-o`` ending in a path
    separator, several inputs, a folder or a glob: the batch mode, ``-o`` a folder)."""
    import glob
    import os
    if len(args.inputs) != 1 or args.output.endswith(("/", os.sep)):
        return False
    src = args.inputs[0]
    if Path(src).is_dir():
        return False
    return Path(src).is_file() or not glob.has_magic(src)     # an existing file is a file, whatever its name


def _check_apart(outputs, inputs) -> None:
    """Refuse, before any work, an output path that names an input or another output."""
    from ._fs import check_apart
    try:
        check_apart(outputs, inputs)
    except ValueError as e:
        raise CLIError(str(e)) from None


def _ref_inputs(args) -> list[tuple[str, str]]:
    return [("--ref", r) for r in (args.ref or [])] + [("the --ref-dir image", r) for r in _candidates(args)]


def _candidates(args) -> list[str]:
    from .batch import list_inputs
    from .image_files import IMAGE_SUFFIXES
    if not args.ref_dir:
        return []
    if not Path(args.ref_dir).is_dir():
        raise CLIError(f"--ref-dir {args.ref_dir}: not a folder")
    return [str(p) for p, _ in list_inputs([args.ref_dir], IMAGE_SUFFIXES)]


def _ref_paths(args) -> list[str]:
    refs = list(args.ref or []) + _candidates(args)
    if not refs:
        raise CLIError("give the reference image(s): --ref REF (repeat for several) or --ref-dir DIR")
    return refs


def _check_top_k(args) -> None:
    if args.top_k is None:
        if args.rerank is not None:
            raise CLIError("--rerank goes with --top-k (how many of the best candidates are re-ranked)")
        return
    if not args.ref_dir:
        raise CLIError("--top-k chooses among the images of --ref-dir; give --ref-dir DIR")
    if args.top_k < 1 or (args.rerank is not None and args.rerank < 0):
        raise CLIError(f"--top-k must be >= 1 and --rerank >= 0, got {args.top_k} and {args.rerank}")


def _ref_chooser(args, pipe, outputs):
    """refs(input) choosing --top-k of --ref-dir per input (sidecar JSON beside each output)."""
    from .retrieval import RefChooser, RefIndex
    candidates = _candidates(args)
    if not candidates:
        raise CLIError(f"--ref-dir {args.ref_dir} holds no images to choose from")
    index = RefIndex(pipe.model, candidates)
    print(f"{len(candidates)} candidate Refs described ({index.cache_hits} from the cache)", flush=True)
    return RefChooser(index, args.top_k, args.rerank, extra=list(args.ref or []), outputs=outputs)


def _ref_views(args):
    """The Ref views of ``--ref-scales`` / ``--ref-angles`` (checked here, by
    :class:`frfsr.models.frfsr.RefViews`), or None: the pipeline's."""
    if args.ref_scales is None and args.ref_angles is None:
        return None
    from .models.frfsr import RefViews
    return RefViews.of(args.ref_scales, args.ref_angles)


def _pipe_kwargs(args) -> dict:
    return dict(tile=args.tile, overlap=args.overlap, match_mode=args.match_mode)


@subcommand("upscale", "4x super-resolve images using reference image(s)")
def _upscale(p: argparse.ArgumentParser):
    from .checks import MIN_LR_SIZE, MIN_REF_SIZE
    p.description = (f"4x super-resolve images using reference image(s). The LR must be at least "
                     f"{MIN_LR_SIZE}x{MIN_LR_SIZE} pixels and every Ref at least {MIN_REF_SIZE}x{MIN_REF_SIZE}. "
                     "Large LRs are processed in tiles automatically (--tile auto): the tile size comes from the "
                     "free memory and is halved on out-of-memory. 8- and 16-bit, grayscale, alpha and float TIFF "
                     "inputs give the same kind of output. One input file: -o names the output file. Several "
                     "inputs, folders or globs (or -o ending in '/'): -o is a folder, the inputs' layout is kept "
                     "below it, outputs already complete are skipped (the run is resumable), a failing input is "
                     "reported and the others go on (exit code 1 if any failed). Under 'accelerate launch' the "
                     "inputs are split between the processes.")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help=f"low-resolution image(s) (at least {MIN_LR_SIZE}x{MIN_LR_SIZE}), folders (searched "
                        "recursively) or glob patterns (quoted, e.g. 'photos/**/*.jpg'); videos where frfsr[video] "
                        "is installed")
    p.add_argument("--ref", action="append",
                   help=f"a reference image, at least {MIN_REF_SIZE}x{MIN_REF_SIZE} (repeat for several); every "
                        "input uses every Ref, encoded once")
    p.add_argument("--ref-dir", metavar="DIR", help="use every image in this folder as a Ref (with or instead of --ref)")
    p.add_argument("--top-k", type=int, metavar="K",
                   help="with --ref-dir: give each input only the K candidates of the folder most relevant to it "
                        "(ranked by a texture descriptor, cached by file hash, the best re-ranked by the match); "
                        "which ones, and their relevance, is written beside each output as <output>.refs.json; "
                        "--ref Refs are added to every input")
    p.add_argument("--rerank", type=int, metavar="R",
                   help="with --top-k: how many of the best candidates are matched and re-ranked (default: "
                        "max(K, 3); 0: the descriptor order alone)")
    p.add_argument("-o", "--output", required=True,
                   help="one input: where to write the 4x image (the format comes from the extension, checked "
                        "before the run); otherwise the output folder")
    p.add_argument("--ext", help="batch mode: the outputs' suffix, e.g. .png (default: each input's)")
    p.add_argument("--overwrite", action="store_true",
                   help="batch mode: compute outputs that already exist complete too (default: skip them)")
    _model_args(p)
    p.add_argument("--tile", type=_tile, default="auto",
                   help="LR tile side in pixels; 'auto' (default: from free memory, halved on out-of-memory) or 0 "
                        "(the whole image at once)")
    p.add_argument("--overlap", type=int, default=16, help="LR pixels shared by neighbouring tiles (default: 16)")
    p.add_argument("--device", default="auto",
                   help="cpu, cuda, cuda:N, mps or auto (default: CUDA if available; under accelerate launch, "
                        "auto and cuda mean each process's own GPU)")
    p.add_argument("--dtype", default="auto",
                   help="auto (default: bfloat16 on GPUs and CPUs that compute it natively, else float32), "
                        "float32, float16, bfloat16")
    p.add_argument("--save-confidence", metavar="PATH",
                   help="one input image only: also write the match confidence map (grayscale, LR size)")
    p.add_argument("--save-warped-ref", metavar="PATH",
                   help="one input image only: also write the Ref warped onto the output grid")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--ref-scales", type=float, nargs="+", metavar="S",
                   help="also match every Ref resized by these factors (the Ref scale pyramid), e.g. "
                        "--ref-scales 1 0.71 0.5 for a Ref shot closer than the LR (default: the Ref as given)")
    p.add_argument("--ref-angles", type=float, nargs="+", metavar="DEG",
                   help="also match every Ref rotated by these angles (degrees, counter-clockwise), e.g. "
                        "--ref-angles 0 30 -30 for a Ref shot at another camera roll (default: upright as given)")
    p.add_argument("--match-mode", choices=("auto", "exact", "fast"), default="auto",
                   help="patch matching: exact (every LR patch against every Ref patch), fast (coarse-to-fine, "
                        "linear in the image) or auto (fast for large inputs; default)")

    def run(args):
        if _single_file(args):
            return _upscale_one(args)
        return _upscale_many(args)
    return run


def _upscale_one(args):
    import os
    import warnings

    from PIL import Image

    from .batch import video_suffixes
    from .image_files import check_output, to_writable, write_image
    from .pipeline import FRFSRWarning
    src = args.inputs[0]
    if (os.environ.get("RANK") or "0") != "0":     # one output file: under accelerate launch the first process writes it
        print(f"process {os.environ['RANK']}: one input file, written by process 0")
        return 0
    _check_apart([("-o", args.output), ("--save-confidence", args.save_confidence),
                  ("--save-warped-ref", args.save_warped_ref)], [("the input", src)] + _ref_inputs(args))
    if Path(src).suffix.lower() in video_suffixes():
        return _upscale_one_video(args)
    _check_top_k(args)
    views = _ref_views(args)
    lr = _open_image(src, "LR")
    _jpeg_hint(args, [src])
    refs = [_open_image(r, "Ref") for r in _ref_paths(args)] if args.top_k is None else None
    check_output(args.output, lr)                   # before any computation
    for extra in (args.save_confidence, args.save_warped_ref):
        if extra:
            check_output(extra, Image.new("RGB", (1, 1)))
    pipe = _load_pipeline(args, device=args.device, dtype=args.dtype)
    if refs is None:
        refs = [_open_image(r, "Ref") if isinstance(r, str) else r
                for r in _ref_chooser(args, pipe, {src: args.output})(src)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", FRFSRWarning)
        out = pipe(lr, refs, return_details=True, progress=not args.no_progress, ref_views=views,
                   **_pipe_kwargs(args))
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    write_image(out.images, args.output)
    w, h = out.images.size if isinstance(out.images, Image.Image) else out.images.shape[1::-1]
    print(f"wrote {args.output} ({w}x{h}), relevance {out.relevance:.3f}")
    if args.save_confidence:
        write_image(to_writable(out.confidence), args.save_confidence)
        print(f"wrote {args.save_confidence} (match confidence)")
    if args.save_warped_ref:
        write_image(to_writable(out.warped_ref), args.save_warped_ref)
        print(f"wrote {args.save_warped_ref} (warped Ref)")


def _upscale_one_video(args):
    if args.save_confidence or args.save_warped_ref:
        raise CLIError("--save-confidence and --save-warped-ref take an input image, not a video")
    if args.top_k is not None:
        raise CLIError("--top-k chooses Refs for images; for a video name its Refs with --ref (or all of --ref-dir)")
    views = _ref_views(args)
    try:
        from .video import upscale_video
    except ImportError as e:
        raise CLIError(f"{args.inputs[0]} is a video; video needs PyAV: pip install 'frfsr[video]' ({e})") from None
    refs = [_open_image(r, "Ref") for r in _ref_paths(args)]
    pipe = _load_pipeline(args, device=args.device, dtype=args.dtype)
    try:
        upscale_video(pipe, args.inputs[0], args.output, pipe.prepare_refs(refs, ref_views=views),
                      progress=not args.no_progress, **_pipe_kwargs(args))
    except ImportError as e:
        raise CLIError(f"video needs PyAV: pip install 'frfsr[video]' ({e})") from None
    print(f"wrote {args.output}")


def _upscale_many(args):
    from .batch import distributed_state, gather_results, plan, upscale_files
    if args.save_confidence or args.save_warped_ref:
        raise CLIError("--save-confidence and --save-warped-ref take one input image with -o a file name; "
                       "leave them out for several inputs, folders or globs")
    _check_top_k(args)
    views = _ref_views(args)
    refs = _ref_paths(args)
    try:
        state = distributed_state(cpu=True if args.device == "cpu" else None)   # None in a single process
    except ImportError as e:
        raise CLIError(str(e)) from None
    device = args.device
    if state is not None and device in ("auto", "cuda"):
        device = str(state.device)                  # each process its own GPU (or the CPU)
    prefix = f"[process {state.process_index}/{state.num_processes}] " if state is not None else ""

    def log(message: str) -> None:
        # one write per line (text and newline together): the processes of a launch share the pipe,
        # and an unbuffered stream would otherwise write the newline separately
        print(prefix + message + "\n", end="", file=sys.stderr if message.startswith(("failed", "warning")) else sys.stdout,
              flush=True)

    items = plan(args.inputs, args.output, args.ext, keep=_ref_inputs(args))    # checked before the model loads
    if state is None or state.is_main_process:
        _jpeg_hint(args, [i.src for i in items])
    pipe = _load_pipeline(args, device=device, dtype=args.dtype)
    if args.top_k is not None:
        refs = _ref_chooser(args, pipe, {i.src: i.dst for i in items})
    result = upscale_files(pipe, args.inputs, refs, args.output, ext=args.ext, overwrite=args.overwrite,
                           progress=not args.no_progress, state=state, ref_views=views, log=log,
                           **_pipe_kwargs(args))
    total = gather_results(result, state)
    if state is None or state.is_main_process:
        print(total.summary(), flush=True)
    if state is not None and hasattr(state, "destroy_process_group"):
        state.destroy_process_group()
    return 1 if total.failed else 0


# ---------------------------------------------------------------------- convert
@subcommand("convert", "convert foreign checkpoints (authors', C2-Matching, ESRGAN, torchvision VGG) to a model folder")
def _convert(p: argparse.ArgumentParser):
    from .convert import KINDS
    p.add_argument("checkpoints", nargs="+", help="checkpoint files (.pth, .pt, .bin, .safetensors)")
    p.add_argument("-o", "--output", required=True, help="model folder to write (config.json, model.safetensors)")
    p.add_argument("--kind", default="auto", choices=("auto",) + KINDS,
                   help="what the checkpoints are (default: detect from their parameter names)")
    p.add_argument("--config", default="paper", help="preset (paper, tiny) or a config.json (default: paper)")
    p.add_argument("--stage", type=int, choices=(1, 2), help="override the config's stage")
    p.add_argument("--base", help="start from this model (folder or Hub repo id) instead of a fresh init")
    p.add_argument("--key", help="the checkpoint entry holding the weights (default: params_ema, params, state_dict)")
    p.add_argument("--allow-partial", action="store_true", help="write even if some tensors stay at their init")
    p.add_argument("--description", help="what the weights are, for the model card")

    def run(args):
        import torch
        from .config import FRFSRConfig
        from .convert import convert_state_dict, load_checkpoint
        from .models import FRFSR
        if args.base:
            model = FRFSR.from_pretrained(args.base)
        else:
            cfg_path = Path(args.config)
            cfg = FRFSRConfig.from_json(cfg_path) if cfg_path.suffix == ".json" else FRFSRConfig.preset(args.config)
            if args.stage:
                cfg.stage = args.stage
                cfg.validate()
            model = FRFSR(cfg)
        _check_apart([("-o", args.output)], [("the checkpoint", c) for c in args.checkpoints])
        merged, sources = {}, []
        for path in args.checkpoints:
            state = load_checkpoint(path, args.key)
            try:
                converted, report = convert_state_dict(state, args.kind, model)
            except ValueError as e:
                raise CLIError(f"{path}: {e}") from None
            print(f"{path}:\n  " + str(report).replace("\n", "\n  "))
            merged.update(converted)
            sources.append(Path(path).name)
        left = sorted(set(model.state_dict()) - set(merged))
        if left and not args.base and not args.allow_partial:
            parts = sorted({k.split(".")[0] for k in left})
            raise CLIError(f"{len(left)} tensors would stay at their random init (in: {', '.join(parts)}); add the "
                           "checkpoints for those parts, start from a model with --base, or pass --allow-partial")
        with torch.no_grad():
            model.load_state_dict(merged, strict=False)
        desc = args.description or (f"Converted with `frfsr convert` from {', '.join(sources)}"
                                    + (f"; {len(left)} tensors left at their initial values" if left and not args.base
                                       else "") + ".")
        model.save_pretrained(args.output, description=desc)
        print(f"wrote {args.output}")
    return run


# ---------------------------------------------------------------------- info
@subcommand("info", "describe a model, a foreign checkpoint, or this installation")
def _info(p: argparse.ArgumentParser):
    p.add_argument("target", nargs="?", help="a model folder / Hub repo id / 'frfsr-default', or a checkpoint file")
    p.add_argument("--revision")
    p.add_argument("--local-files-only", action="store_true")
    p.add_argument("--cache-dir")
    p.add_argument("--token")

    def run(args):
        import torch
        from . import __version__, ops
        yes = {True: "available", False: "not available"}
        cuda = torch.cuda.is_available()
        fused = cuda and ops.fused_available()
        why = "" if fused else (" (no CUDA device)" if not cuda else " (Triton is not installed)")
        print(f"frfsr {__version__}, torch {torch.__version__}, CUDA {yes[cuda]}, fused ops {yes[fused]}{why}")
        if fused:
            from .ops import selfcheck
            if not selfcheck.enabled():
                print("fused ops self-check: off (FRFSR_FUSED_SELFCHECK=0)")
            else:
                device = torch.device("cuda", torch.cuda.current_device())
                for o in selfcheck.check_device(device):
                    state = "passed" if o.ok else f"FAILED, the reference op runs instead ({o.detail})"
                    print(f"fused {o.operator} on {o.device} {o.dtype.replace('torch.', '')}: self-check {state}")
        if args.target is None:
            from .hub import bundled_models
            for name, folder in bundled_models().items():
                print(f"bundled weights {name}: {'installed' if folder.is_dir() else 'not installed'} ({folder})")
            return 0
        target = Path(args.target)
        if target.is_file():
            from .convert import detect_kind, load_checkpoint
            state = load_checkpoint(target)
            n = sum(t.numel() for t in state.values())
            print(f"{target}: {len(state)} tensors, {n:,} values; layout: {detect_kind(state) or 'unknown'}")
            return 0
        args.model = args.target
        pipe = _load_pipeline(args)
        cfg = pipe.config
        print(f"model: {pipe.source}" + (f" (commit {pipe.commit})" if pipe.commit else ""))
        if pipe.description:
            print(f"description: {pipe.description}")
        print(f"stage {cfg.stage}, config {cfg.name!r}, dtype {pipe.dtype}, {pipe.model.num_parameters():,} parameters")
        for k, v in cfg.to_dict().items():
            print(f"  {k}: {v}")
        return 0
    return run


# ---------------------------------------------------------------------- entry
@subcommand("demo", "super-resolve the bundled sample with the bundled weights and write a comparison image (offline)")
def _demo(p: argparse.ArgumentParser):
    p.add_argument("-o", "--output", default="demo_out", help="output folder (default: %(default)s)")
    p.add_argument("--model", default=None, help="a model folder or Hub repo id (default: the bundled weights)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, auto, ... (default: %(default)s)")

    def run(args):
        from .demo import main as demo_main
        return demo_main(args)
    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="frfsr", description="Reference-based 4x image super-resolution (FRFSR)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (help_text, builder) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_run=builder(p))
    return parser


EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code: 0 ok, 1 a run that failed (an OS error
    such as a full disk or a read-only folder while writing: earlier outputs are kept), 2
    usage or input error (refused before any work), 130 interrupted (Ctrl-C). Every failure
    is one line on stderr."""
    parser = build_parser()
    args = parser.parse_args(argv)
    import warnings
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning        # warnings as one line each, as the CLI's own
            code = args._run(args)
    except CLIError as e:
        print(f"frfsr {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (ValueError, TypeError, FileNotFoundError, FileExistsError, ConnectionError, MemoryError) as e:
        print(f"frfsr {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as e:                 # at write time: disk full, read-only folder, name too long, ...
        from ._fs import describe_os_error
        print(f"frfsr {args.command}: error: {_one_line(describe_os_error(e))}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"frfsr {args.command}: interrupted; outputs already written are complete, none is half-written",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    return int(code or 0)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {_one_line(message)}", file=sys.stderr if file is None else file)


def _one_line(e) -> str:
    """A message on one line (its lines joined), or the error's type where it has none."""
    text = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
    return text or type(e).__name__


if __name__ == "__main__":
    sys.exit(main())
