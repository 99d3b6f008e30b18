"""Optional access to ComfyUI's runtime, with plain fallbacks when ComfyUI is absent.

ComfyUI modules (``folder_paths``, ``comfy.utils``, ``comfy.model_management``) exist only
inside a running ComfyUI. Everything here works without them, so the node pack can be
imported and tested anywhere; inside ComfyUI the same calls use ComfyUI's model folders,
progress bar, cancel button and device/memory management.
"""
from __future__ import annotations

import importlib
import logging
import os
from pathlib import Path, PurePosixPath

import torch

log = logging.getLogger("frfsr_nodes")

MODEL_FOLDER = "frfsr"                 # ComfyUI/models/frfsr
MODEL_EXTENSIONS = (".safetensors",)   # only safetensors: no pickle is ever loaded
ENV_MODELS_DIR = "FRFSR_MODELS_DIR"    # outside ComfyUI: where LoadFRFSR looks (os.pathsep-separated)


def _optional(name: str):
    """Import ``name`` or return None. Any failure counts as absent: a broken or foreign
    module of that name must not break the node pack's import."""
    try:
        return importlib.import_module(name)
    except Exception:  # noqa: BLE001 - ImportError, or an unrelated module that fails to import
        return None


folder_paths = _optional("folder_paths")
comfy_utils = _optional("comfy.utils")
model_management = _optional("comfy.model_management")


def in_comfyui() -> bool:
    """True when running inside ComfyUI (its model-folder registry is importable)."""
    return folder_paths is not None


# ---------------------------------------------------------------------- model folder
def register_model_folder() -> None:
    """Register ``models/frfsr`` with ComfyUI's ``folder_paths`` (once; keeps paths that
    extra_model_paths.yaml already added)."""
    if folder_paths is None:
        return
    registry = getattr(folder_paths, "folder_names_and_paths", None)
    default = os.path.join(folder_paths.models_dir, MODEL_FOLDER)
    if registry is None:
        folder_paths.add_model_folder_path(MODEL_FOLDER, default)
    elif MODEL_FOLDER not in registry:
        registry[MODEL_FOLDER] = ([default], set(MODEL_EXTENSIONS))
    else:
        paths, exts = registry[MODEL_FOLDER]
        if default not in paths:
            paths.insert(0, default)
        registry[MODEL_FOLDER] = (paths, set(exts) | set(MODEL_EXTENSIONS))


def models_dirs() -> list[Path]:
    """The folders LoadFRFSR lists: ComfyUI's registered ``frfsr`` folders inside ComfyUI,
    else the folders in $FRFSR_MODELS_DIR."""
    if folder_paths is not None:
        try:
            return [Path(p) for p in folder_paths.get_folder_paths(MODEL_FOLDER)]
        except KeyError:
            return []
    env = os.environ.get(ENV_MODELS_DIR, "")
    return [Path(p) for p in env.split(os.pathsep) if p]


def list_models() -> list[str]:
    """Every ``.safetensors`` file under the model folders, as sorted POSIX paths relative to
    its folder (``paper/model.safetensors``, ``frfsr_x4.safetensors``). This list is the
    whitelist LoadFRFSR accepts."""
    names, seen = set(), set()
    for root in models_dirs():
        if not root.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            real = os.path.realpath(dirpath)
            if real in seen:                   # a symlink loop, or a folder reached twice
                dirnames[:] = []
                continue
            seen.add(real)
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for f in filenames:
                if f.lower().endswith(MODEL_EXTENSIONS) and not f.startswith("."):
                    names.add(Path(dirpath, f).relative_to(root).as_posix())
    return sorted(names)


def resolve_model(name: str) -> Path:
    """The file for a LoadFRFSR model name. Only names that :func:`list_models` lists are
    accepted; absolute paths and ``..`` are refused before anything is looked up."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError("no FRFSR model selected; put models in ComfyUI/models/frfsr/ and refresh")
    pure = PurePosixPath(name.replace("\\", "/"))
    if pure.is_absolute() or os.path.isabs(name) or (len(name) > 1 and name[1] == ":"):
        raise ValueError(f"model name {name!r} is an absolute path; choose a file listed from "
                         f"the models/{MODEL_FOLDER} folder")
    if ".." in pure.parts:
        raise ValueError(f"model name {name!r} leaves the models/{MODEL_FOLDER} folder ('..' is not allowed)")
    available = list_models()
    if name not in available:
        hint = ", ".join(available[:10]) or f"none: put models in models/{MODEL_FOLDER}/"
        raise ValueError(f"model {name!r} is not in the models/{MODEL_FOLDER} folder; available: {hint}")
    for root in models_dirs():
        path = root / pure
        # the listing came from walking ``root``; check the joined path stays inside it anyway
        if path.is_file() and os.path.commonpath([os.path.abspath(root), os.path.abspath(path)]) == os.path.abspath(root):
            return path
    raise FileNotFoundError(f"model {name!r} was listed but is gone from models/{MODEL_FOLDER}")


# ---------------------------------------------------------------------- progress and cancel
class _NullProgress:
    def update(self, value: float) -> None:
        pass

    def update_absolute(self, value: float, total: float | None = None, preview=None) -> None:
        pass


def progress_bar(total: int):
    """ComfyUI's progress bar (drawn on the node), or a no-op outside ComfyUI."""
    if comfy_utils is not None and hasattr(comfy_utils, "ProgressBar"):
        return comfy_utils.ProgressBar(total)
    return _NullProgress()


def check_interrupt() -> None:
    """Raise ComfyUI's interrupt exception if the user pressed cancel (no-op outside ComfyUI)."""
    if model_management is not None and hasattr(model_management, "throw_exception_if_processing_interrupted"):
        model_management.throw_exception_if_processing_interrupted()


# ---------------------------------------------------------------------- devices
DEVICE_CHOICES = ["auto", "cpu", "cuda", "mps"]
DTYPE_CHOICES = ["float32", "float16", "bfloat16"]


def compute_device(choice: str = "auto") -> torch.device:
    """The device to run on: ComfyUI's device for ``auto`` inside ComfyUI, else CUDA or MPS
    when present, else CPU. An explicit choice that is not available is an error."""
    if choice not in DEVICE_CHOICES:
        raise ValueError(f"device must be one of {DEVICE_CHOICES}, got {choice!r}")
    if choice == "auto":
        if model_management is not None and hasattr(model_management, "get_torch_device"):
            return model_management.get_torch_device()
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was chosen but no CUDA GPU is available; choose 'auto' or 'cpu'")
    if choice == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device 'mps' was chosen but Apple MPS is not available; choose 'auto' or 'cpu'")
    return torch.device(choice)


def offload_device(device: torch.device) -> torch.device:
    """Where the model waits between runs: ComfyUI's offload device (CPU unless --gpu-only),
    or the compute device itself outside ComfyUI."""
    if model_management is not None and hasattr(model_management, "unet_offload_device"):
        return model_management.unet_offload_device()
    return device


def intermediate_device() -> torch.device:
    """Where IMAGE outputs and cached intermediates live between nodes (CPU in ComfyUI by default)."""
    if model_management is not None and hasattr(model_management, "intermediate_device"):
        return model_management.intermediate_device()
    return torch.device("cpu")


def free_memory(num_bytes: int, device: torch.device) -> None:
    """Ask ComfyUI to unload other models until ``num_bytes`` fit on ``device``."""
    if model_management is not None and hasattr(model_management, "free_memory") and device.type != "cpu":
        try:
            model_management.free_memory(num_bytes, device)
        except Exception as e:  # noqa: BLE001 - memory management is best effort
            log.warning("FRFSR: comfy.model_management.free_memory failed: %s", e)


def soft_empty_cache() -> None:
    """Return cached GPU memory to ComfyUI / the driver."""
    if model_management is not None and hasattr(model_management, "soft_empty_cache"):
        model_management.soft_empty_cache()
    elif torch.cuda.is_available():
        torch.cuda.empty_cache()
