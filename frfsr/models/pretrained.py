"""The model owns its weights: ``FRFSR.from_pretrained`` / ``save_pretrained`` /
``push_to_hub``, through huggingface_hub's :class:`~huggingface_hub.ModelHubMixin` with
:class:`FRFSRConfig` as its config.

What the mixin does not give is kept here and in :mod:`frfsr.hub`: names are resolved and
Hub downloads verified before anything is built (:func:`frfsr.hub.resolve_model_files`), the
config, every tensor's shape and finiteness are checked, and a save replaces the folder as a
whole, atomically (:func:`frfsr._fs.replace_folder`): a crash or a kill at any moment leaves
the old model or the new one, files that are not ours are carried over, a README.md that is
not our model card is kept, and another program's config is never overwritten.
"""
from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path

import torch
from huggingface_hub import ModelCard, ModelHubMixin

from .. import hub
from .._fs import replace_folder, sha256
from ..checks import check_finite_state_dict, check_state_dict
from ..config import CLASS_NAME, FRFSRConfig
from ..devices import parse_device, parse_dtype, warn_if_emulated


def _is_ours(path: Path) -> bool:
    """Whether an existing config.json / README.md was written by FRFSR."""
    try:
        if path.name == hub.CARD_NAME:
            head = path.read_text(errors="replace")[:400]
            return head.startswith("---") and "library_name: frfsr" in head
        return json.loads(path.read_text()).get("_class_name") == CLASS_NAME
    except (OSError, ValueError, AttributeError):
        return False


def entries_to_keep(out: Path) -> list[Path]:
    """What of an existing folder a new save keeps: every entry that is not ours (a README.md
    that is not our card included). Refuses a file, and a folder of another program's model."""
    if not out.exists():
        return []
    if not out.is_dir():
        raise ValueError(f"{out} exists and is a file, not a folder; save_pretrained writes a folder "
                         f"({', '.join(hub.OUR_FILES)}): pass a folder path")
    config, weights = out / hub.CONFIG_NAME, out / hub.WEIGHTS_NAME
    if config.exists() and not _is_ours(config):
        raise FileExistsError(f"{config} is not an FRFSR config (no \"_class_name\": \"{CLASS_NAME}\"); "
                              "save_pretrained will not overwrite another program's files: choose another folder")
    if weights.exists() and not config.exists():
        raise FileExistsError(f"{weights} exists without an FRFSR {hub.CONFIG_NAME}; save_pretrained will not "
                              "overwrite a file it did not write: choose another folder")
    return [p for p in out.iterdir() if p.name not in hub.OUR_FILES or (p.name == hub.CARD_NAME and not _is_ours(p))]


class PretrainedMixin(ModelHubMixin, library_name="frfsr", license="mit", pipeline_tag="image-to-image",
                      tags=["frfsr", "super-resolution", "reference-based-super-resolution", "image-to-image"],
                      repo_url="https://github.com/frfsr/frfsr"):
    """Loading and saving for :class:`frfsr.FRFSR` (the class defines ``config``,
    ``num_parameters`` and ``dtype``). A loaded model knows where it came from:
    ``model.description`` (the one-line description saved with the weights) and
    ``model.files`` (:class:`frfsr.hub.ModelFiles`: source, kind, Hub commit)."""

    description: str | None = None
    files: hub.ModelFiles | None = None

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path=None, *, revision: str | None = None,
                        subfolder: str | None = None, torch_dtype=None, device=None, cache_dir=None, token=None,
                        local_files_only: bool = False, force_download: bool = False, hub_only: bool = False):
        """Load saved weights: a local folder, ``"frfsr-default"`` / None (the bundled weights)
        or a Hub repo id (``revision`` pins a branch, tag or commit; ``subfolder``: where in
        the repo). ``torch_dtype``: None (float32), "auto" (as stored), a dtype or its name;
        ``device``: "cpu" (default), "cuda", "auto", ... Downloads are cached (``cache_dir``),
        verified, and skipped when ``local_files_only`` or ``HF_HUB_OFFLINE=1``; ``hub_only``:
        the name is a Hub repo id even where a folder of that name exists."""
        device = parse_device(device) if device is not None else torch.device("cpu")
        parse_dtype(torch_dtype)                  # a bad dtype fails before any download
        files = hub.resolve_model_files(pretrained_model_name_or_path, revision=revision, subfolder=subfolder,
                                        cache_dir=cache_dir, token=token, local_files_only=local_files_only,
                                        force_download=force_download, hub_only=hub_only)
        config = FRFSRConfig.from_json(files.config)   # checked here: the mixin reads the same file again
        return super().from_pretrained(files.config.parent, config=config, files=files, torch_dtype=torch_dtype,
                                       device=device)

    @classmethod
    def _from_pretrained(cls, *, model_id, config, files, torch_dtype, device, **_hub_kwargs):
        from ..convert import read_safetensors
        state, meta = read_safetensors(files.weights)
        model = cls(config)
        what = f"{files.weights} ({files.source})"
        check_state_dict(state, model, what)
        check_finite_state_dict(state, what)
        model.load_state_dict(state, strict=True)
        auto = isinstance(torch_dtype, str) and torch_dtype.strip().lower() == "auto"
        dtype = (next(iter(state.values())).dtype if auto and state else parse_dtype(torch_dtype)) or torch.float32
        warn_if_emulated(dtype, device, stacklevel=5)
        model.description, model.files = meta.get(hub._DESCRIPTION_KEY), files
        return model.eval().to(device=device, dtype=dtype)

    # ------------------------------------------------------------------ saving
    def save_pretrained(self, save_directory, *, description: str | None = None, repo_id: str | None = None,
                        **mixin_kwargs) -> Path:
        """Write ``config.json``, ``model.safetensors`` and ``README.md`` (the model card) as
        the folder ``save_directory``, replacing it as a whole, atomically (see the module
        docstring). ``description``: one line saved with the weights and shown on the card
        (default: the model's ``description``); ``repo_id``: named in the card's examples."""
        if description is not None and not isinstance(description, str):
            raise TypeError(f"description must be a string, got {type(description).__name__}")
        if not isinstance(save_directory, (str, os.PathLike)) or not os.fspath(save_directory).strip():
            raise ValueError(f"save_directory must be a folder path, got {save_directory!r}")
        out = Path(save_directory).expanduser().resolve()      # a symlinked folder: write where it points
        hub.recover_interrupted_save(out)
        keep = entries_to_keep(out)
        if any(p.name == hub.CARD_NAME for p in keep):
            warnings.warn(f"{out / hub.CARD_NAME} is not an FRFSR model card; it is kept and no card is written",
                          stacklevel=2)
        def write(staging: Path) -> None:
            card = {"repo_id": repo_id, "weights": staging / hub.WEIGHTS_NAME}
            ModelHubMixin.save_pretrained(self, staging, model_card_kwargs=card, **mixin_kwargs)

        previous = self.description
        self.description = previous if description is None else description
        try:
            replace_folder(out, write, keep)
        except BaseException:
            self.description = previous
            raise
        return Path(save_directory).expanduser()

    def _save_pretrained(self, save_directory: Path) -> None:
        from safetensors.torch import save_file
        self.config.to_json(save_directory / hub.CONFIG_NAME)
        state = {k: v.detach().to("cpu").contiguous() for k, v in self.state_dict().items()}
        meta = {"format": "pt", **({hub._DESCRIPTION_KEY: self.description} if self.description else {})}
        save_file(state, str(save_directory / hub.WEIGHTS_NAME), metadata=meta)

    def generate_model_card(self, repo_id: str | None = None, weights: Path | None = None, **_kwargs) -> ModelCard:
        """Our card (:func:`frfsr.hub.model_card`), with the sha256 of the ``weights`` just written."""
        parts = {"total": self.num_parameters()}
        parts.update({p: self.num_parameters(p) for p in ("texture_encoder", "ref_extractor", "sife", "restoration",
                                                          "reuse_net") if hasattr(self, p)})
        return ModelCard(hub.model_card(self.config, parameters=parts, dtype=self.dtype, description=self.description,
                                        weights_sha256=sha256(weights) if weights else None, repo_id=repo_id))

    def push_to_hub(self, repo_id: str, *, token=None, private: bool | None = None, revision: str | None = None,
                    commit_message: str = "Upload FRFSR weights", create_pr: bool = False,
                    description: str | None = None):
        """Save to a temporary folder and upload it (``HfApi.create_repo`` + ``upload_folder``,
        at ``HF_ENDPOINT`` as set now). Returns the commit info (its ``commit_url``)."""
        from huggingface_hub import HfApi
        from huggingface_hub.utils import HFValidationError, validate_repo_id
        try:
            validate_repo_id(repo_id)
        except HFValidationError as e:
            raise ValueError(f"{repo_id!r} is not a valid Hub repo id ('name' or 'namespace/name'): {e}") from None
        api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None, token=token)
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        with tempfile.TemporaryDirectory(prefix="frfsr-push-") as tmp:
            self.save_pretrained(tmp, description=description, repo_id=repo_id)
            return api.upload_folder(repo_id=repo_id, folder_path=tmp, repo_type="model", revision=revision,
                                     commit_message=commit_message, create_pr=create_pr)
