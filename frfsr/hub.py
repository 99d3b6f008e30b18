"""Saving, loading and sharing FRFSR weights: a folder or a Hugging Face Hub repository with

* ``config.json``: the :class:`FRFSRConfig` (plus ``"_class_name": "FRFSR"``),
* ``model.safetensors``: the full state dict (a stage-2 model includes the stage-1
  ``reuse_net`` it reuses features from); its metadata holds a one-line description,
* ``README.md``: a model card with Hub metadata saying what the weights are.

:func:`load_pretrained` looks a name up in this order: an existing local directory ->
the bundled name ``"frfsr-default"`` (also what ``None`` means: the weights shipped in
``frfsr/weights/default/``) -> a Hub repo id, validated before any request and
downloaded with ``huggingface_hub.hf_hub_download`` (cache, revision pinning, offline
mode via ``HF_HUB_OFFLINE=1`` or ``local_files_only``, token). ``HF_ENDPOINT`` is read at
call time, so a mirror can be chosen after import. Downloads are verified: the file's
sha256 (LFS) or git blob hash must equal the ETag the Hub gave, and the weights must be
a valid safetensors file that fits the config.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import CONFIG_VERSION, FRFSRConfig

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
DEFAULT_MODEL = "frfsr-default"
BUNDLED_DIR = Path(__file__).parent / "weights" / "default"
CLASS_NAME = "FRFSR"
_DESCRIPTION_KEY = "frfsr.description"

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float64": torch.float64, "fp64": torch.float64, "double": torch.float64,
}


@dataclass(frozen=True)
class ModelFiles:
    """Where a model's files were found: ``source`` is the name that was asked for,
    ``kind`` "local", "bundled" or "hub", ``commit`` the Hub commit (None elsewhere)."""

    config: Path
    weights: Path
    source: str
    kind: str
    commit: str | None = None


# ------------------------------------------------------------------ small parsers
def parse_dtype(dtype) -> torch.dtype | None:
    """torch dtype, a name ("float16", "fp16", "bf16", ...) or None / "auto" (-> None)."""
    if dtype is None or isinstance(dtype, torch.dtype):
        if isinstance(dtype, torch.dtype) and not dtype.is_floating_point:
            raise ValueError(f"torch_dtype must be a floating dtype, got {dtype}")
        return dtype
    if isinstance(dtype, str):
        key = dtype.lower().replace("torch.", "")
        if key == "auto":
            return None
        if key in _DTYPES:
            return _DTYPES[key]
        raise ValueError(f"unknown dtype {dtype!r}; accepted: {', '.join(sorted(_DTYPES))}, 'auto' or a torch.dtype")
    raise TypeError(f"dtype must be a torch.dtype or a string, got {type(dtype).__name__}")


def parse_device(device) -> torch.device:
    """torch.device, a string ("cpu", "cuda", "cuda:1", "mps") or "auto" / None (CUDA if
    available, else CPU)."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(device, torch.device):
        return device
    if isinstance(device, int) and not isinstance(device, bool):
        return torch.device("cuda", device)
    if isinstance(device, str):
        try:
            return torch.device(device)
        except RuntimeError as e:
            raise ValueError(f"unknown device {device!r}: {e}; "
                             "accepted e.g. 'cpu', 'cuda', 'cuda:0', 'mps', 'auto'") from None
    raise TypeError(f"device must be a torch.device, a string or an int, got {type(device).__name__}")


def _offline() -> bool:
    from huggingface_hub import constants
    env = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")
    return env or bool(constants.HF_HUB_OFFLINE)


# ------------------------------------------------------------------ locating files
def _local_files(directory: Path, source: str, kind: str) -> ModelFiles:
    missing = [n for n in (CONFIG_NAME, WEIGHTS_NAME) if not (directory / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{directory} is not an FRFSR model folder: {' and '.join(missing)} missing "
                                f"(a model folder holds {CONFIG_NAME} and {WEIGHTS_NAME}, as save_pretrained writes)")
    return ModelFiles(directory / CONFIG_NAME, directory / WEIGHTS_NAME, source, kind)


def _verify_blob(path: str, filename: str, where: str) -> None:
    """Compare a downloaded file with the ETag it is stored under in the Hub cache
    (blobs/<sha256> for LFS files, blobs/<git sha1> for small ones). On a mismatch the
    damaged file is removed from the cache and ValueError raised."""
    real = os.path.realpath(path)
    etag = os.path.basename(real)
    if os.path.basename(os.path.dirname(real)) != "blobs":
        return                                  # cache without symlinks: the etag is not recorded
    if re.fullmatch(r"[0-9a-f]{64}", etag):
        h = hashlib.sha256()
    elif re.fullmatch(r"[0-9a-f]{40}", etag):
        h = hashlib.sha1(b"blob %d\0" % os.path.getsize(real))
    else:
        return
    with open(real, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    if h.hexdigest() != etag:
        for p in {path, real}:
            try:
                os.remove(p)
            except OSError:
                pass
        raise ValueError(f"the download of {filename} from {where} is corrupt: its hash is {h.hexdigest()} but the "
                         f"Hub announced {etag}. The damaged file was removed from the cache; try again")


def _download(repo_id: str, filename: str, *, revision, cache_dir, token, local_files_only, force_download) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                        RevisionNotFoundError)
    from . import __version__

    endpoint = os.environ.get("HF_ENDPOINT") or None
    offline = bool(local_files_only) or _offline()
    where = f"{repo_id}@{revision or 'main'}"
    try:
        path = hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache_dir, token=token,
                               local_files_only=offline, force_download=force_download, endpoint=endpoint,
                               library_name="frfsr", library_version=__version__)
    except LocalEntryNotFoundError as e:
        if offline:
            raise FileNotFoundError(f"{filename} of {where} is not in the local Hub cache and downloads are off "
                                    "(HF_HUB_OFFLINE=1 or local_files_only=True). Download it once online, or pass a "
                                    "local model folder") from e
        raise ConnectionError(f"could not download {filename} of {where} from {endpoint or 'the Hub'} and no cached "
                              f"copy exists: {e}") from e
    except RevisionNotFoundError as e:
        raise FileNotFoundError(f"revision {revision!r} does not exist in the Hub repository {repo_id}") from e
    except RepositoryNotFoundError as e:
        raise FileNotFoundError(f"{repo_id!r} is not a Hub model repository that this token can read "
                                "(wrong name, private or gated: pass token=...)") from e
    except EntryNotFoundError as e:
        raise FileNotFoundError(f"the Hub repository {where} has no {filename}; is it an FRFSR model "
                                f"(saved with save_pretrained)?") from e
    _verify_blob(path, filename, where)
    return Path(path)


def resolve_model_files(pretrained: str | os.PathLike | None = None, *, revision: str | None = None,
                        cache_dir=None, token=None, local_files_only: bool = False,
                        force_download: bool = False) -> ModelFiles:
    """Find ``config.json`` and ``model.safetensors`` for ``pretrained``: a local folder,
    ``"frfsr-default"`` / None (the bundled weights), or a Hub repo id."""
    if pretrained is None:
        pretrained = DEFAULT_MODEL
    if not isinstance(pretrained, (str, os.PathLike)):
        raise TypeError(f"the model must be a folder path, {DEFAULT_MODEL!r} or a Hub repo id (str), "
                        f"got {type(pretrained).__name__}")
    name = os.fspath(pretrained)
    path = Path(name).expanduser()
    if path.is_dir():
        if revision is not None:
            warnings.warn(f"revision={revision!r} is ignored for the local folder {path}", stacklevel=3)
        return _local_files(path, name, "local")
    if name == DEFAULT_MODEL:
        if not BUNDLED_DIR.is_dir():
            raise FileNotFoundError(f"the bundled default weights ({BUNDLED_DIR}) are not installed with this copy of "
                                    "frfsr; pass a local model folder or a Hub repo id, e.g. "
                                    "FRFSRPipeline.from_pretrained('path/to/model') or --model namespace/name")
        return _local_files(BUNDLED_DIR, name, "bundled")
    if path.is_file():
        raise ValueError(f"{name} is a file; pass the folder that holds {CONFIG_NAME} and {WEIGHTS_NAME} "
                         "(to bring in a foreign checkpoint use `frfsr convert`)")
    if isinstance(pretrained, os.PathLike) or name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name:
        raise FileNotFoundError(f"no such model folder: {name}")
    from huggingface_hub.utils import HFValidationError, validate_repo_id
    try:
        validate_repo_id(name)
    except HFValidationError as e:
        raise ValueError(f"{name!r} is neither an existing folder, nor {DEFAULT_MODEL!r}, nor a valid Hub repo id "
                         f"('name' or 'namespace/name'): {e}") from None
    kw = dict(revision=revision, cache_dir=cache_dir, token=token, local_files_only=local_files_only,
              force_download=force_download)
    config = _download(name, CONFIG_NAME, **kw)
    weights = _download(name, WEIGHTS_NAME, **kw)
    commit = weights.parent.name if weights.parent.parent.name == "snapshots" else None
    return ModelFiles(config, weights, name, "hub", commit)


# ------------------------------------------------------------------ config and weights
def read_config(path: Path) -> FRFSRConfig:
    """Parse and validate a config.json (class name, version, every field)."""
    try:
        d = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(d, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(d).__name__}")
    cls = d.get("_class_name", CLASS_NAME)
    if cls != CLASS_NAME:
        raise ValueError(f"{path} describes a {cls!r}, not an {CLASS_NAME} model")
    version = d.get("version", CONFIG_VERSION)
    if version != CONFIG_VERSION:
        raise ValueError(f"{path} has config version {version!r}, but this frfsr reads version {CONFIG_VERSION} "
                         "(upgrade frfsr, or re-save the model with a matching version)")
    try:
        return FRFSRConfig.from_dict({k: v for k, v in d.items() if not k.startswith("_")})
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from None


def read_weights(path: Path) -> tuple[dict, dict]:
    """(state dict, metadata) of a safetensors file; ValueError if it is not one."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        return load_file(str(path), device="cpu"), meta
    except (SafetensorError, OSError, RuntimeError) as e:
        raise ValueError(f"{path} is not a valid safetensors file: {e}") from None


def check_state_dict(state: dict, model: torch.nn.Module, what: str) -> None:
    """ValueError naming every missing, unexpected or mis-shaped tensor."""
    ours = model.state_dict()
    missing = sorted(set(ours) - set(state))
    unexpected = sorted(set(state) - set(ours))
    shapes = [f"{k}: {tuple(state[k].shape)} in the file, {tuple(ours[k].shape)} for this config"
              for k in ours if k in state and state[k].shape != ours[k].shape]
    if missing or unexpected or shapes:
        parts = []
        for title, items in (("wrong shapes", shapes), ("missing", missing), ("unexpected", unexpected)):
            if items:
                parts.append(f"{len(items)} {title} ({'; '.join(items[:4])}{', ...' if len(items) > 4 else ''})")
        raise ValueError(f"{what} does not fit the config: " + ", ".join(parts))


def load_pretrained(pretrained=None, *, revision=None, torch_dtype=None, device=None, cache_dir=None, token=None,
                    local_files_only: bool = False, force_download: bool = False):
    """Build an :class:`FRFSR` from saved weights. Returns ``(model, files, description)``.
    ``torch_dtype``: None (float32), "auto" (as stored) or a dtype; ``device``: as
    :func:`parse_device` (default: CPU)."""
    from .models import FRFSR

    files = resolve_model_files(pretrained, revision=revision, cache_dir=cache_dir, token=token,
                                local_files_only=local_files_only, force_download=force_download)
    auto = isinstance(torch_dtype, str) and torch_dtype.lower() == "auto"
    dtype = parse_dtype(torch_dtype)
    config = read_config(files.config)
    state, meta = read_weights(files.weights)
    model = FRFSR(config)
    check_state_dict(state, model, f"{files.weights} ({files.source})")
    if auto and state:
        dtype = next(iter(state.values())).dtype
    model.load_state_dict(state, strict=True)
    model.eval().to(device=parse_device(device) if device is not None else "cpu", dtype=dtype or torch.float32)
    return model, files, meta.get(_DESCRIPTION_KEY)


# ------------------------------------------------------------------ saving
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def model_card(config: FRFSRConfig, *, parameters: dict[str, int], dtype: torch.dtype, description: str | None = None,
               weights_sha256: str | None = None, repo_id: str | None = None, license: str = "mit") -> str:
    """A Hub model card (README.md with YAML metadata) that says what the weights are."""
    name = repo_id or "path/to/this/folder"
    kind = ("stage-2 (feature reuse) net; it carries the frozen stage-1 net whose HR feature it reuses"
            if config.stage == 2 else "stage-1 (reconstruction) net")
    rows = [("model", f"FRFSR {kind}"), ("config", f"`{config.name}` (ngf={config.ngf}, "
            f"{config.n_res_blocks} ESA + {config.n_ddf_blocks} DDF blocks per scale, SIFE {config.sife_blocks} RRDB)"),
            ("dtype", str(dtype).replace("torch.", ""))]
    rows += [(f"parameters: {part}", f"{n:,}") for part, n in parameters.items()]
    if weights_sha256:
        rows.append((f"sha256 of {WEIGHTS_NAME}", f"`{weights_sha256}`"))
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    text = description or "FRFSR weights (no description was recorded when they were saved)."
    return f"""---
library_name: frfsr
license: {license}
pipeline_tag: image-to-image
tags:
- frfsr
- super-resolution
- reference-based-super-resolution
- image-to-image
---

# FRFSR: {config.name}

{text}

FRFSR is reference-based 4x image super-resolution: a low-resolution image and one or more
high-resolution reference photos in, a 4x image out whose detail is transferred from the
references where they match and reconstructed by the model where they do not.

## What these weights are

| | |
| --- | --- |
{table}

Files: `{CONFIG_NAME}` (the `FRFSRConfig`, version {config.version}) and `{WEIGHTS_NAME}`.

## Usage

```python
from PIL import Image
from frfsr import FRFSRPipeline

pipe = FRFSRPipeline.from_pretrained("{name}")
sr = pipe(Image.open("lr.png"), Image.open("ref.png"))
sr.save("sr.png")
```

```bash
frfsr upscale lr.png --ref ref.png -o sr.png --model {name}
```
"""


def save_pretrained(model, save_directory, *, description: str | None = None, repo_id: str | None = None) -> Path:
    """Write config.json, model.safetensors and README.md into ``save_directory``."""
    from safetensors.torch import save_file

    if not hasattr(model, "config") or not isinstance(model.config, FRFSRConfig):
        raise TypeError(f"save_pretrained needs an FRFSR model, got {type(model).__name__}")
    if description is not None and not isinstance(description, str):
        raise TypeError(f"description must be a string, got {type(description).__name__}")
    out = Path(save_directory)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    # every file is written beside its final name and moved into place only once all three
    # are complete: a failure (full disk, a kill) leaves a model saved earlier untouched
    tmp = {name: out / f".{name}.{os.getpid()}.tmp" for name in (WEIGHTS_NAME, CONFIG_NAME, CARD_NAME)}
    try:
        d = {"_class_name": CLASS_NAME, **model.config.to_dict()}
        tmp[CONFIG_NAME].write_text(json.dumps(d, indent=2, sort_keys=True) + "\n")
        state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
        meta = {"format": "pt"}
        if description:
            meta[_DESCRIPTION_KEY] = description
        save_file(state, str(tmp[WEIGHTS_NAME]), metadata=meta)
        parts = {"total": model.num_parameters()}
        for part in ("texture_encoder", "ref_extractor", "sife", "restoration", "reuse_net"):
            if hasattr(model, part):
                parts[part] = model.num_parameters(part)
        card = model_card(model.config, parameters=parts, dtype=model.dtype, description=description,
                          weights_sha256=_sha256(tmp[WEIGHTS_NAME]), repo_id=repo_id)
        tmp[CARD_NAME].write_text(card)
        mode = 0o666 & ~_umask()          # as a plain open() would (safetensors writes 0600)
        for name, path in tmp.items():
            os.chmod(path, mode)
            os.replace(path, out / name)
    finally:
        for path in tmp.values():
            path.unlink(missing_ok=True)
    return out


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def push_to_hub(model, repo_id: str, *, token=None, private: bool | None = None, revision: str | None = None,
                commit_message: str = "Upload FRFSR weights", create_pr: bool = False,
                description: str | None = None):
    """Save to a temporary folder and upload it with ``HfApi.create_repo`` +
    ``HfApi.upload_folder``. Returns the commit info (its ``commit_url``)."""
    from huggingface_hub import HfApi
    from huggingface_hub.utils import HFValidationError, validate_repo_id
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise ValueError(f"{repo_id!r} is not a valid Hub repo id ('name' or 'namespace/name'): {e}") from None
    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None, token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    with tempfile.TemporaryDirectory(prefix="frfsr-push-") as tmp:
        save_pretrained(model, tmp, description=description, repo_id=repo_id)
        return api.upload_folder(repo_id=repo_id, folder_path=tmp, repo_type="model", revision=revision,
                                 commit_message=commit_message, create_pr=create_pr)
