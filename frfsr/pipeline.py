"""FRFSRPipeline: images in, a 4x image out.

>>> from frfsr import FRFSRPipeline
>>> pipe = FRFSRPipeline.from_pretrained()            # bundled "frfsr-default", a folder or a Hub repo id
>>> sr = pipe(lr_image, ref_image)                     # PIL in, PIL out
>>> out = pipe(lr, [ref1, ref2], return_details=True)  # images, confidence, warped_ref, relevance

Inputs may be PIL images, numpy arrays (H, W[, C]; uint8, uint16 or float in [0, 1]) or
tensors (C, H, W) / (B, C, H, W); grayscale is expanded to RGB for the model and given
back as grayscale, an alpha channel is upscaled separately (bicubic) and put back. The
result has the input's kind and bit depth unless ``output_type`` / ``output_dtype`` say
otherwise. Large LRs are processed in tiles (:mod:`frfsr.tiling`).

Relevance: how well the Refs and the LR match, both ways (the mean cosine similarity of each
LR texture patch with its best Ref patch, and of each Ref patch with its best LR patch),
computed by :func:`frfsr.models.correspondence.relevance_of` for the whole image (also when
tiled), as :attr:`Correspondence.relevance` computes it. Below ``relevance_threshold`` (the
weights' ``config.relevance_threshold``) the Ref hardly matches the LR and the output is mostly the model's own reconstruction; the
pipeline then warns with :class:`FRFSRWarning`.
"""
from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Any

import torch

from .checks import FRFSRWarning
from .image_io import from_model_output, map_to_output, to_model_input, upscale_alpha
from .models.correspondence import relevance_of
from .memory import encode_within_memory
from .models.frfsr import RefViews
from .tiling import DEFAULT_OVERLAP, checked_and_encoded, run_tiles, sr_step, tile_size

@dataclass
class FRFSRPipelineOutput:
    """``pipe(..., return_details=True)``. For one input image: the SR image, the match
    confidence on the LR grid (tensor / float32 array kept raw, PIL clamped to [0, 1]),
    the Ref warped onto the HR grid (an image like ``images``) and the relevance (float).
    For a list of inputs, lists of those; for a (B, C, H, W) tensor, batched tensors and a
    list of B relevances."""

    images: Any
    confidence: Any
    warped_ref: Any
    relevance: float | list[float]


class _ProgressBar:
    """tqdm over tiles, opened on the first report of more than one tile."""

    def __init__(self, enabled: bool, config: dict):
        self.enabled, self.config, self.bar = enabled, config, None

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled or total <= 1:
            return
        if self.bar is None or self.bar.total != total:
            self.close()
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total, desc="FRFSR tiles", unit="tile", **self.config)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class FRFSRPipeline:
    """Reference-based 4x super-resolution from images (see the module docstring)."""

    def __init__(self, model, *, description: str | None = None, source: str | None = None,
                 commit: str | None = None):
        from .models import FRFSR
        if not isinstance(model, FRFSR):
            raise TypeError(f"FRFSRPipeline needs an frfsr.FRFSR model, got {type(model).__name__}")
        self.model = model.eval()
        self.description = description
        self.source = source
        self.commit = commit
        # the weights' (config.relevance_threshold); None turns the warning off
        self.relevance_threshold: float | None = model.config.relevance_threshold
        # the copies of the Refs matched when a call does not say: the Refs as given
        self.ref_views: RefViews = RefViews()
        self._progress_config: dict = {}

    # ------------------------------------------------------------------ loading / saving
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path=None, **kwargs) -> "FRFSRPipeline":
        """A pipeline over :meth:`frfsr.FRFSR.from_pretrained` (same arguments: a folder,
        ``"frfsr-default"`` / None, or a Hub repo id; ``revision``, ``torch_dtype``,
        ``device``, ``cache_dir``, ``token``, ``local_files_only``, ...)."""
        from .models import FRFSR
        model = FRFSR.from_pretrained(pretrained_model_name_or_path, **kwargs)
        return cls(model, description=model.description, source=model.files.source, commit=model.files.commit)

    def save_pretrained(self, save_directory, *, description: str | None = None):
        """Write config.json, model.safetensors and a model card (README.md):
        :meth:`frfsr.FRFSR.save_pretrained`."""
        return self.model.save_pretrained(save_directory, description=description or self.description)

    def push_to_hub(self, repo_id: str, **kwargs):
        """Upload the weights, config and model card to a Hub repository (created if needed):
        :meth:`frfsr.FRFSR.push_to_hub`."""
        kwargs.setdefault("description", self.description)
        return self.model.push_to_hub(repo_id, **kwargs)

    # ------------------------------------------------------------------ device, dtype, progress
    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @property
    def config(self):
        return self.model.config

    def to(self, device=None, dtype=None, *, memory_format: torch.memory_format | None = None) -> "FRFSRPipeline":
        """Move the model: ``pipe.to("cuda")``, ``pipe.to(torch.float16)``, ``pipe.to("cuda", "fp16")``;
        ``dtype="auto"`` picks the fastest precision that keeps the results on that device
        (:func:`frfsr.devices.auto_dtype`). A device this machine lacks raises ValueError.

        ``memory_format=torch.channels_last`` stores the convolution weights NHWC, so that
        the convolutions run in that layout (BENCHMARKS.md); the results equal the default
        layout's up to float rounding. ``torch.contiguous_format`` goes back."""
        from .devices import is_dtype_name, parse_device, resolve_dtype
        if isinstance(device, torch.dtype) or (isinstance(device, str) and dtype is None and is_dtype_name(device)):
            device, dtype = None, device
        kw = {}
        if device is not None:
            kw["device"] = parse_device(device)
        if dtype is not None:
            kw["dtype"] = resolve_dtype(dtype, kw.get("device", self.device))
        elif "device" in kw:
            from .devices import warn_if_emulated
            warn_if_emulated(self.dtype, kw["device"])
        if memory_format is not None:
            if memory_format not in (torch.channels_last, torch.contiguous_format):
                raise ValueError(f"memory_format must be torch.channels_last or torch.contiguous_format, "
                                 f"got {memory_format!r}")
            kw["memory_format"] = memory_format
        self.model.to(**kw)
        return self

    def compile(self, **compile_kwargs) -> "FRFSRPipeline":
        """``torch.compile`` the model's networks in place (see
        :meth:`FRFSR.compile_for_inference`); returns the pipeline. Pays where many images of
        one size are processed on a GPU; the first image of each size is slow."""
        self.model.compile_for_inference(**compile_kwargs)
        return self

    def set_progress_bar_config(self, **kwargs) -> None:
        """Options for the tqdm bar shown over tiles (e.g. ``disable=True``, ``leave=False``)."""
        self._progress_config = dict(kwargs)

    def __repr__(self) -> str:
        src = f", source={self.source!r}" if self.source else ""
        return (f"FRFSRPipeline(config={self.config.name!r}, stage={self.config.stage}, device={self.device}, "
                f"dtype={self.dtype}{src})")

    # ------------------------------------------------------------------ refs
    def prepare_refs(self, ref_or_refs, batch_size: int = 1, ref_views: RefViews | None = None, *,
                     ref_scales=None, ref_angles=None):
        """Convert and encode Ref image(s) once, to reuse for many LRs: ``pipe(lr, prepared)``
        (an :class:`~frfsr.EncodedRefs`, :meth:`FRFSR.encode_refs` within the free memory).
        ``ref_views``, ``ref_scales``, ``ref_angles``: as in :meth:`__call__`."""
        from .models import EncodedRefs
        if isinstance(ref_or_refs, EncodedRefs):
            return ref_or_refs
        views = self._views(ref_views, ref_scales, ref_angles)
        with torch.no_grad():
            return encode_within_memory(self.model, self._ref_tensors(ref_or_refs), batch_size, views=views)

    def _views(self, ref_views, ref_scales, ref_angles) -> RefViews:
        """The Ref views of a call: ``ref_views`` (else the pipeline's) with the scales and
        angles given (checked here, by :class:`RefViews`)."""
        return RefViews.of(ref_scales, ref_angles, ref_views if ref_views is not None else self.ref_views)

    def _ref_tensors(self, ref_or_refs) -> list[torch.Tensor]:
        """Ref images as the model takes them (converted once, here; checked by the model)."""
        refs = list(ref_or_refs) if isinstance(ref_or_refs, (list, tuple)) else [ref_or_refs]
        if not refs:
            raise ValueError("at least one Ref image is required")
        return [to_model_input(r, "ref" if len(refs) == 1 else f"ref[{i}]")[0].to(self.device, self.dtype)
                for i, r in enumerate(refs)]

    # ------------------------------------------------------------------ inference
    def __call__(self, lr, ref_or_refs, *, tile="auto", overlap: int = DEFAULT_OVERLAP, output_type: str | None = None,
                 output_dtype=None, return_details: bool = False, progress: bool = True, interrupt=None,
                 match_mode: str | None = None, ref_views: RefViews | None = None, ref_scales=None, ref_angles=None):
        """4x SR of ``lr`` (an image, a (B, C, H, W) tensor, or a list of images) using
        ``ref_or_refs`` (one Ref image, a list of Refs for every LR, or :meth:`prepare_refs`).

        ``tile``: LR tile side, "auto" (from free memory) or None (whole image);
        ``overlap``: LR pixels shared by tiles; ``output_type``: "pil", "np", "pt" or None
        (like the input); ``output_dtype``: e.g. "uint16" (None: like the input);
        ``progress``: a tqdm bar over tiles; ``interrupt``: called before each tile, return
        True to stop; ``match_mode``: "exact", "fast" or "auto" (see :meth:`FRFSR.match`; None:
        "auto"); ``ref_views``: the copies of every Ref that are matched (:class:`RefViews`;
        None: ``self.ref_views``, the Refs as given); ``ref_scales``, ``ref_angles``: the same
        given by their parts, e.g. ``ref_scales=(1, 0.71, 0.5)`` for a Ref shot closer than the
        LR, ``ref_angles=(0, 30, -30)`` (degrees) for one shot at another camera roll. Returns
        the image(s), or :class:`FRFSRPipelineOutput` with ``return_details=True``."""
        from .models import EncodedRefs
        # 1. convert the inputs: the LR image(s) and the Refs to model tensors
        many = isinstance(lr, (list, tuple))
        if many and not lr:
            raise ValueError("lr is an empty list; give at least one image")
        refs = ref_or_refs if isinstance(ref_or_refs, EncodedRefs) else self._ref_tensors(ref_or_refs)
        views = self._views(ref_views, ref_scales, ref_angles)
        names = [f"lr[{i}]" for i in range(len(lr))] if many else ["lr"]
        inputs = [to_model_input(x, n) for x, n in zip(lr if many else [lr], names)]
        outs = []
        with torch.no_grad():
            for (rgb, alpha, info), name in zip(inputs, names):
                # 2. encode the Refs once (for every LR of a list when they are shared), the LR checked
                encoded = checked_and_encoded(self.model, rgb, refs, tile=tile, overlap=overlap, name=name,
                                              views=views)
                if many and not isinstance(refs, EncodedRefs) and all(r.shape[0] == 1 for r in refs):
                    refs = encoded
                # 3. the tiles: match, align and restore each, blended
                step = sr_step(self.model, encoded, match_mode=match_mode or "auto", details=True,
                               keep_warped_ref=return_details, out_device=rgb.device)
                bar = _ProgressBar(progress and not self._progress_config.get("disable", False),
                                   {k: v for k, v in self._progress_config.items() if k != "disable"})
                try:
                    res, _ = run_tiles(rgb, step, tile=tile_size(tile, self.model, rgb.shape[0]), overlap=overlap,
                                       progress=bar, interrupt=interrupt, device=self.device, dtype=self.dtype)
                finally:
                    bar.close()
                # 4. the relevance of the Refs to this LR, and the warning when they hardly match
                relevance = [float(r) for r in relevance_of(res["confidence"].float(), res["ref_confidence"])]
                self._warn_relevance(relevance, name)
                # 5. convert back: the input's kind and bit depth, the alpha channel put back
                outs.append(self._output(res, alpha, info, output_type, output_dtype, relevance, return_details))
        if not many:
            return outs[0] if return_details else outs[0].images
        if not return_details:
            return [o.images for o in outs]
        return FRFSRPipelineOutput([o.images for o in outs], [o.confidence for o in outs],
                                   [o.warped_ref for o in outs], [o.relevance for o in outs])

    @staticmethod
    def _output(res: dict, alpha, info, output_type, output_dtype, relevance: list[float], details: bool):
        """One LR's blended tiles as the caller's kind of image (and the details)."""
        alpha_hr = upscale_alpha(alpha.to(res["sr"].device)) if alpha is not None else None
        images = from_model_output(res["sr"].float(), alpha_hr, info, output_type, output_dtype)
        if not details:
            return FRFSRPipelineOutput(images, None, None, None)
        otype = info.kind if output_type is None else output_type
        ref_info = dataclasses.replace(info, gray=False, alpha=False, squeeze_channels=False)
        # a colour preview: as 8-bit RGB where the result is a PIL image (PIL has no 16-bit or float colour)
        warped = from_model_output(res["warped_ref"].float(), None, ref_info, output_type,
                                   "uint8" if otype == "pil" else output_dtype)
        confidence = map_to_output(res["confidence"].float(), otype, info.batched)
        return FRFSRPipelineOutput(images, confidence, warped, relevance if info.batched else relevance[0])

    def _warn_relevance(self, relevance: list[float], name: str) -> None:
        t = self.relevance_threshold
        low = [r for r in relevance if t is not None and r < t]
        if low:
            warnings.warn(f"the Ref hardly matches {name} (relevance {min(low):.2f} < {t}); the output is mostly the "
                          "model's own reconstruction, not detail transferred from the Ref. A Ref showing the same "
                          "scene or content helps", FRFSRWarning, stacklevel=3)


