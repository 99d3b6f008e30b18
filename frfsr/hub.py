"""What is FRFSR's own in loading and saving models (``FRFSR.from_pretrained`` /
``save_pretrained`` / ``push_to_hub`` go through huggingface_hub's ``ModelHubMixin``): the
file names, where a name's files are (:func:`resolve_model_files`: a local folder, the
bundled ``"frfsr-default"`` (also None) or ``"frfsr-robust"``, or a Hub repo id, validated before any request,
fetched with ``hf_hub_download`` and verified against the Hub's hashes), the model card.
"""
from __future__ import annotations

import hashlib
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from ._fs import digest, recover_interrupted_replace
from .config import FRFSRConfig

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
OUR_FILES = (CONFIG_NAME, WEIGHTS_NAME, CARD_NAME)
DEFAULT_MODEL = "frfsr-default"
ROBUST_MODEL = "frfsr-robust"
BUNDLED_DIR = Path(__file__).parent / "weights" / "default"      # DEFAULT_MODEL: clean LRs
ROBUST_DIR = Path(__file__).parent / "weights" / "robust"        # ROBUST_MODEL: JPEG / noisy / blurred LRs
#: What each bundled model is for (CLI help, the Load node's description).
BUNDLED_USES = {DEFAULT_MODEL: "clean LRs", ROBUST_MODEL: "JPEG / blurred / noisy LRs"}
_DESCRIPTION_KEY = "frfsr.description"
_CARD_TEMPLATE = Path(__file__).parent / "assets" / "model_card.md"


@dataclass(frozen=True)
class ModelFiles:
    """Where a model's files were found: ``source`` is the name that was asked for,
    ``kind`` "local", "bundled" or "hub", ``commit`` the Hub commit (None elsewhere)."""

    config: Path
    weights: Path
    source: str
    kind: str
    commit: str | None = None


# ------------------------------------------------------------------ locating files
def _local_files(directory: Path, source: str, kind: str) -> ModelFiles:
    missing = [n for n in (CONFIG_NAME, WEIGHTS_NAME) if not (directory / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{directory} is not an FRFSR model folder: {' and '.join(missing)} missing "
                                f"(a model folder holds {CONFIG_NAME} and {WEIGHTS_NAME}, as save_pretrained writes)")
    return ModelFiles(directory / CONFIG_NAME, directory / WEIGHTS_NAME, source, kind)


def _verify_blob(path: str, filename: str, where: str) -> None:
    """Compare a downloaded file with the ETag it is stored under in the Hub cache
    (blobs/<sha256> for LFS files, blobs/<git sha1> for small ones); on a mismatch remove
    the damaged file from the cache and raise ValueError."""
    real = os.path.realpath(path)
    etag = os.path.basename(real)
    hashes = {64: hashlib.sha256, 40: lambda: hashlib.sha1(b"blob %d\0" % os.path.getsize(real))}
    if os.path.basename(os.path.dirname(real)) != "blobs" or not re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", etag):
        return                                  # cache without symlinks: the etag is not recorded
    actual = digest(real, hashes[len(etag)]())
    if actual != etag:
        for p in {path, real}:
            if os.path.lexists(p):
                os.remove(p)
        raise ValueError(f"the download of {filename} from {where} is corrupt: its hash is {actual} but the "
                         f"Hub announced {etag}. The damaged file was removed from the cache; try again")


def _unresolvable(endpoint: str | None) -> str | None:
    """Why the Hub's host cannot be reached at all (its name does not resolve), or None:
    an offline machine then fails at once instead of after the client's retries."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants
    host = urlparse(endpoint or constants.ENDPOINT).hostname
    try:
        socket.getaddrinfo(host, None) if host else None
    except socket.gaierror as e:
        return f"the Hub host {host} does not resolve ({e.strerror or e})"
    except OSError:
        pass                             # some other failure: left to the client
    return None


def _download(repo_id: str, filename: str, *, revision, cache_dir, token, local_files_only, force_download) -> Path:
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import (EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    from . import __version__
    endpoint = os.environ.get("HF_ENDPOINT") or None
    offline = bool(local_files_only) or constants.HF_HUB_OFFLINE or \
        os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")
    where = f"{repo_id}@{revision or 'main'}"
    unreachable = None if offline else _unresolvable(endpoint)
    try:                                 # a host that does not resolve: the cache or an error, no retries
        path = hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache_dir, token=token,
                               local_files_only=offline or bool(unreachable), force_download=force_download,
                               endpoint=endpoint, library_name="frfsr", library_version=__version__)
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


def bundled_models() -> dict[str, Path]:
    """The names of the weights shipped with the package and their folders (present or not)."""
    return {DEFAULT_MODEL: BUNDLED_DIR, ROBUST_MODEL: ROBUST_DIR}


def resolve_model_files(pretrained: str | os.PathLike | None = None, *, revision: str | None = None,
                        subfolder: str | None = None, cache_dir=None, token=None, local_files_only: bool = False,
                        force_download: bool = False, hub_only: bool = False) -> ModelFiles:
    """Find ``config.json`` and ``model.safetensors`` for ``pretrained``: a local folder,
    ``"frfsr-default"`` / None or ``"frfsr-robust"`` (bundled weights), or a Hub repo id (the weights are
    taken from the very commit the config came from; ``subfolder``: where in the repo).
    ``hub_only``: the name is a Hub repo id, never a local folder."""
    if pretrained is None:
        pretrained = DEFAULT_MODEL
    if not isinstance(pretrained, (str, os.PathLike)):
        raise TypeError(f"the model must be a folder path, {DEFAULT_MODEL!r} or a Hub repo id (str), "
                        f"got {type(pretrained).__name__}")
    name = os.fspath(pretrained)
    if not name.strip():
        raise ValueError(f"the model name is empty; give a model folder, {DEFAULT_MODEL!r} or a Hub repo id")
    path = Path(name).expanduser()
    if not hub_only:
        recover_interrupted_save(path)
        if path.is_dir():
            if revision is not None:
                warnings.warn(f"revision={revision!r} is ignored for the local folder {path}", stacklevel=4)
            return _local_files(path / (subfolder or ""), name, "local")
        bundled = bundled_models()
        if name in bundled:
            if not bundled[name].is_dir():
                raise FileNotFoundError(f"the bundled weights {name} ({bundled[name]}) are not installed with this "
                                        "copy of frfsr; pass a local model folder or a Hub repo id, e.g. "
                                        "FRFSR.from_pretrained('path/to/model') or --model namespace/name")
            return _local_files(bundled[name], name, "bundled")
        if path.is_file():
            raise ValueError(f"{name} is a file; pass the folder that holds {CONFIG_NAME} and {WEIGHTS_NAME} "
                             "(to bring in a foreign checkpoint use `frfsr convert`)")
    # a name is tried on the Hub only when it can only mean a repo: a valid "namespace/name"
    # where no folder "namespace" exists here; any other name that is not a folder is a
    # missing folder, reported at once (no request)
    from huggingface_hub.utils import HFValidationError, validate_repo_id
    pathlike = not hub_only and (isinstance(pretrained, os.PathLike) or name.startswith((".", "/", "~"))
                                 or "\\" in name)
    if not pathlike and name.count("/") <= 1:
        try:
            validate_repo_id(name)
        except HFValidationError as e:
            raise ValueError(f"{name!r} is neither an existing folder, nor {DEFAULT_MODEL!r}, nor a valid Hub repo "
                             f"id ('namespace/name'): {e}") from None
    if not hub_only and (pathlike or name.count("/") != 1 or path.parent.is_dir()):
        hint = (f" (the folder {path.parent} exists but holds no {path.name!r})" if path.parent.is_dir()
                and str(path.parent) != "." else "")
        raise FileNotFoundError(f"no such model folder: {name}{hint}; pass an existing folder (with {CONFIG_NAME} "
                                f"and {WEIGHTS_NAME}), {DEFAULT_MODEL!r}, or a Hub repo id 'namespace/name'")
    prefix = f"{subfolder.strip('/')}/" if subfolder else ""
    kw = dict(cache_dir=cache_dir, token=token, local_files_only=local_files_only, force_download=force_download)
    config = _download(name, prefix + CONFIG_NAME, revision=revision, **kw)
    parts = config.parts[::-1]         # .../snapshots/<commit>/[subfolder/]config.json: pin the weights to it
    commit = parts[parts.index("snapshots") - 1] if "snapshots" in parts else None
    weights = _download(name, prefix + WEIGHTS_NAME, revision=commit or revision, **kw)
    return ModelFiles(config, weights, name, "hub", commit)


# ------------------------------------------------------------------ saving
def model_card(config: FRFSRConfig, *, parameters: dict[str, int], dtype: torch.dtype, description: str | None = None,
               weights_sha256: str | None = None, repo_id: str | None = None, license: str = "mit") -> str:
    """A Hub model card (README.md with YAML metadata, ``assets/model_card.md``) that says
    what the weights are."""
    kind = ("stage-2 (feature reuse) net; it carries the frozen stage-1 net whose HR feature it reuses"
            if config.stage == 2 else "stage-1 (reconstruction) net")
    rows = [("model", f"FRFSR {kind}"), ("config", f"`{config.name}` (ngf={config.ngf}, "
            f"{config.n_res_blocks} ESA + {config.n_ddf_blocks} DDF blocks per scale, SIFE {config.sife_blocks} RRDB)"),
            ("dtype", str(dtype).replace("torch.", "")),
            ("matching", "`subpixel_match: true`: each match refined to a fraction of an LR pixel" if config.subpixel_match
             else "whole LR pixels, as the authors' release (`subpixel_match: false`)")]
    rows += [(f"parameters: {part}", f"{n:,}") for part, n in parameters.items()]
    if weights_sha256:
        rows.append((f"sha256 of {WEIGHTS_NAME}", f"`{weights_sha256}`"))
    return _CARD_TEMPLATE.read_text().format(
        license=license, config_name=config.name, version=config.version, name=repo_id or "path/to/this/folder",
        text=description or "FRFSR weights (no description was recorded when they were saved).",
        table="\n".join(f"| {k} | {v} |" for k, v in rows), config_file=CONFIG_NAME, weights_file=WEIGHTS_NAME)


def recover_interrupted_save(out: Path) -> None:
    """Put back a model folder whose save was killed between two renames (see
    :func:`frfsr._fs.replace_folder`)."""
    recover_interrupted_replace(out, lambda f: (f / CONFIG_NAME).is_file() and (f / WEIGHTS_NAME).is_file())
