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

import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from ._fs import fsync, umask
from .config import CONFIG_VERSION, FRFSRConfig
from .devices import parse_device, parse_dtype, warn_if_emulated

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
DEFAULT_MODEL = "frfsr-default"
BUNDLED_DIR = Path(__file__).parent / "weights" / "default"
CLASS_NAME = "FRFSR"
_DESCRIPTION_KEY = "frfsr.description"

@dataclass(frozen=True)
class ModelFiles:
    """Where a model's files were found: ``source`` is the name that was asked for,
    ``kind`` "local", "bundled" or "hub", ``commit`` the Hub commit (None elsewhere)."""

    config: Path
    weights: Path
    source: str
    kind: str
    commit: str | None = None


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


def _unresolvable(endpoint: str | None) -> str | None:
    """Why the Hub endpoint's host cannot be reached at all (its name does not resolve), or
    None; checked once per download so that an offline machine fails at once instead of
    after the client's retries."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants
    host = urlparse(endpoint or constants.ENDPOINT).hostname
    if not host:
        return None
    try:
        socket.getaddrinfo(host, None)
    except socket.gaierror as e:
        return f"the Hub host {host} does not resolve ({e.strerror or e})"
    except OSError:
        return None
    return None


def _download(repo_id: str, filename: str, *, revision, cache_dir, token, local_files_only, force_download) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                        RevisionNotFoundError)
    from . import __version__

    endpoint = os.environ.get("HF_ENDPOINT") or None
    offline = bool(local_files_only) or _offline()
    where = f"{repo_id}@{revision or 'main'}"
    unreachable = None if offline else _unresolvable(endpoint)
    if unreachable:                      # no retries against a host that does not resolve: the cache or an error
        offline = True
    try:
        path = hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache_dir, token=token,
                               local_files_only=offline, force_download=force_download, endpoint=endpoint,
                               library_name="frfsr", library_version=__version__)
    except LocalEntryNotFoundError as e:
        if unreachable:
            raise ConnectionError(f"could not download {filename} of {where}: {unreachable}, and no cached copy "
                                  "exists. Check the network (or HF_ENDPOINT), or pass a local model folder") from e
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
    if not name.strip():
        raise ValueError(f"the model name is empty; give a model folder, {DEFAULT_MODEL!r} or a Hub repo id")
    path = Path(name).expanduser()
    recover_interrupted_save(path)
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
    # a name is tried on the Hub only when it can only mean a repo: a valid "namespace/name"
    # where no folder "namespace" exists here; any other name that is not a folder is a
    # missing folder, reported at once (no request)
    from huggingface_hub.utils import HFValidationError, validate_repo_id
    pathlike = isinstance(pretrained, os.PathLike) or name.startswith((".", "/", "~")) or "\\" in name
    if not pathlike and name.count("/") <= 1:
        try:
            validate_repo_id(name)
        except HFValidationError as e:
            raise ValueError(f"{name!r} is neither an existing folder, nor {DEFAULT_MODEL!r}, nor a valid Hub repo "
                             f"id ('namespace/name'): {e}") from None
    if pathlike or name.count("/") != 1 or path.parent.is_dir():
        hint = (f" (the folder {path.parent} exists but holds no {path.name!r})" if path.parent.is_dir()
                and str(path.parent) != "." else "")
        raise FileNotFoundError(f"no such model folder: {name}{hint}; pass an existing folder (with {CONFIG_NAME} "
                                f"and {WEIGHTS_NAME}), {DEFAULT_MODEL!r}, or a Hub repo id 'namespace/name'")
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
    if Path(path).stat().st_size == 0:
        raise ValueError(f"{path} is empty (0 bytes): not a safetensors file (an interrupted copy or download?)")
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


def check_finite_state_dict(state: dict, what: str) -> None:
    """ValueError naming the floating tensors that hold NaN or Inf (weights that would turn
    every output into NaN)."""
    floats = [v for v in state.values() if v.is_floating_point()]
    if not floats or bool(torch.isfinite(torch.cat([v.reshape(-1).float() for v in floats])).all()):
        return                             # one pass over all weights; names are looked up only on failure
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise ValueError(f"{what} holds non-finite weights (NaN or Inf) in {len(bad)} tensor(s): "
                         f"{', '.join(bad[:6])}{', ...' if len(bad) > 6 else ''}; the file is damaged or was saved "
                         "from a diverged training run")


def load_pretrained(pretrained=None, *, revision=None, torch_dtype=None, device=None, cache_dir=None, token=None,
                    local_files_only: bool = False, force_download: bool = False):
    """Build an :class:`FRFSR` from saved weights. Returns ``(model, files, description)``.
    ``torch_dtype``: None (float32), "auto" (as stored) or a dtype; ``device``: as
    :func:`parse_device` (default: CPU)."""
    from .models import FRFSR

    device = parse_device(device) if device is not None else torch.device("cpu")
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
    check_finite_state_dict(state, f"{files.weights} ({files.source})")
    model.load_state_dict(state, strict=True)
    dtype = dtype or torch.float32
    warn_if_emulated(dtype, device, stacklevel=4)
    model.eval().to(device=device, dtype=dtype)
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


OUR_FILES = (CONFIG_NAME, WEIGHTS_NAME, CARD_NAME)
_STAGING = ".frfsr-"                 # sibling folders: .<name>.frfsr-new-* (being written), .<name>.frfsr-old-*


def _is_our_card(path: Path) -> bool:
    try:
        head = path.read_text(errors="replace")[:400]
    except OSError:
        return False
    return head.startswith("---") and "library_name: frfsr" in head


def _is_our_config(path: Path) -> bool:
    try:
        return json.loads(path.read_text()).get("_class_name") == CLASS_NAME
    except (OSError, ValueError, AttributeError):
        return False


def _siblings(out: Path, kind: str = "") -> list[Path]:
    return sorted(out.parent.glob(f".{out.name}{_STAGING}{kind}*"))


def recover_interrupted_save(out: Path) -> None:
    """Where a save was killed between its two renames (only on systems without an atomic
    folder exchange), ``out`` is missing and the previous model waits in a sibling folder:
    put it back."""
    out = Path(out)
    if not out.exists():
        for old in reversed(_siblings(out, "old-")):
            if (old / CONFIG_NAME).is_file() and (old / WEIGHTS_NAME).is_file():
                os.rename(old, out)
                return


def _exchange(a: Path, b: Path) -> bool:
    """Swap two folders atomically (Linux renameat2 RENAME_EXCHANGE); False where the system
    or file system has no such call."""
    import ctypes
    import sys
    if not sys.platform.startswith("linux"):
        return False
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _check_target(out: Path) -> tuple[list[Path], bool]:
    """What of an existing folder the new save keeps: the entries that are not ours (carried
    over), and whether a README.md there is someone else's (kept instead of our card)."""
    if not out.exists():
        return [], False
    if not out.is_dir():
        raise ValueError(f"{out} exists and is a file, not a folder; save_pretrained writes a folder "
                         f"({', '.join(OUR_FILES)}): pass a folder path")
    config, weights = out / CONFIG_NAME, out / WEIGHTS_NAME
    if config.exists() and not _is_our_config(config):
        raise FileExistsError(f"{config} is not an FRFSR config (no \"_class_name\": \"{CLASS_NAME}\"); "
                              "save_pretrained will not overwrite another program's files: choose another folder")
    if weights.exists() and not config.exists():
        raise FileExistsError(f"{weights} exists without an FRFSR {CONFIG_NAME}; save_pretrained will not "
                              "overwrite a file it did not write: choose another folder")
    card = out / CARD_NAME
    foreign_card = card.exists() and not _is_our_card(card)
    keep = [p for p in out.iterdir() if p.name not in OUR_FILES or (p.name == CARD_NAME and foreign_card)]
    return keep, foreign_card


def save_pretrained(model, save_directory, *, description: str | None = None, repo_id: str | None = None) -> Path:
    """Write config.json, model.safetensors and README.md (the model card) as the folder
    ``save_directory``.

    The folder is replaced as a whole: everything is written into a sibling folder, which
    then takes the target's place in one atomic exchange, so a crash or a kill at any moment
    leaves either the old model or the new one, both complete. Files in the folder that are
    not ours are carried over untouched, and a README.md that is not our model card is kept
    (our card is then not written). Leftovers of an interrupted save are removed."""
    from safetensors.torch import save_file

    if not hasattr(model, "config") or not isinstance(model.config, FRFSRConfig):
        raise TypeError(f"save_pretrained needs an FRFSR model, got {type(model).__name__}")
    if description is not None and not isinstance(description, str):
        raise TypeError(f"description must be a string, got {type(description).__name__}")
    if not isinstance(save_directory, (str, os.PathLike)) or not os.fspath(save_directory).strip():
        raise ValueError(f"save_directory must be a folder path, got {save_directory!r}")
    out = Path(save_directory).expanduser().resolve()      # a symlinked folder: write where it points
    out.parent.mkdir(parents=True, exist_ok=True)
    recover_interrupted_save(out)
    keep, foreign_card = _check_target(out)
    for left in _siblings(out):
        shutil.rmtree(left, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}{_STAGING}new-", dir=out.parent))
    try:
        os.chmod(staging, 0o777 & ~umask())
        (staging / CONFIG_NAME).write_text(json.dumps({"_class_name": CLASS_NAME, **model.config.to_dict()},
                                                      indent=2, sort_keys=True) + "\n")
        state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
        meta = {"format": "pt"}
        if description:
            meta[_DESCRIPTION_KEY] = description
        save_file(state, str(staging / WEIGHTS_NAME), metadata=meta)
        names = [CONFIG_NAME, WEIGHTS_NAME]
        if foreign_card:
            warnings.warn(f"{out / CARD_NAME} is not an FRFSR model card; it is kept and no card is written",
                          stacklevel=3)
        else:
            parts = {"total": model.num_parameters()}
            for part in ("texture_encoder", "ref_extractor", "sife", "restoration", "reuse_net"):
                if hasattr(model, part):
                    parts[part] = model.num_parameters(part)
            card = model_card(model.config, parameters=parts, dtype=model.dtype, description=description,
                              weights_sha256=_sha256(staging / WEIGHTS_NAME), repo_id=repo_id)
            (staging / CARD_NAME).write_text(card)
            names.append(CARD_NAME)
        mode = 0o666 & ~umask()          # as a plain open() would (safetensors writes 0600)
        for name in names:
            os.chmod(staging / name, mode)
            fsync(staging / name)
        for p in keep:                     # other files of the folder stay (hard links: no copy)
            _carry(p, staging / p.name)
        fsync(staging)
        if not out.exists():
            os.rename(staging, out)
        elif _exchange(staging, out):
            shutil.rmtree(staging)         # now the old folder
        else:                              # no atomic exchange: two renames, undone by recover_interrupted_save
            old = out.with_name(staging.name.replace(f"{_STAGING}new-", f"{_STAGING}old-"))
            os.rename(out, old)
            os.rename(staging, out)
            shutil.rmtree(old)
        fsync(out.parent)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return Path(save_directory).expanduser()


def _carry(src: Path, dst: Path) -> None:
    if src.is_dir() and not src.is_symlink():
        shutil.copytree(src, dst, symlinks=True, copy_function=_link_or_copy)
    elif src.is_symlink():
        os.symlink(os.readlink(src), dst)
    else:
        _link_or_copy(src, dst)


def _link_or_copy(src, dst) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


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
