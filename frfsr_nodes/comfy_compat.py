"""Optional access to ComfyUI's runtime, with plain fallbacks when ComfyUI is absent.

ComfyUI modules (``folder_paths``, ``comfy.utils``, ``comfy.model_management``,
``comfy.model_patcher``) exist only inside a running ComfyUI. Everything here works without
them, so the node pack can be imported and tested anywhere; inside ComfyUI the same calls
use ComfyUI's model folders, progress bar, cancel button and model memory management.
Nothing of ComfyUI is imported when it is not already importable.
"""
from __future__ import annotations

import contextlib
import importlib
import inspect
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
# the model patcher is ComfyUI's handle on a model for its memory management; only looked
# for where model management itself exists
model_patcher = _optional("comfy.model_patcher") if model_management is not None else None


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


def _real_roots() -> list[str]:
    """The resolved model folders: a file counts as inside when its resolved path is under
    one of them (ComfyUI's own folders for ``frfsr``, extra_model_paths.yaml included)."""
    return [os.path.realpath(r) for r in models_dirs() if Path(r).is_dir()]


def _inside(path, real_roots: list[str]) -> bool:
    real = os.path.realpath(path)
    return any(os.path.commonpath([real, root]) == root for root in real_roots)


def list_models() -> list[str]:
    """Every ``.safetensors`` file under the model folders, as sorted POSIX paths relative to
    its folder (``paper/model.safetensors``, ``frfsr_x4.safetensors``). This list is the
    whitelist LoadFRFSR accepts. Symbolic links are followed only where they resolve into
    one of the model folders: a link to anywhere else is left out."""
    names = set()
    allowed = _real_roots()
    for root in models_dirs():
        if not root.is_dir():
            continue
        seen = set()
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            real = os.path.realpath(dirpath)
            if real in seen or not _inside(real, allowed):   # a loop, a folder reached twice, or outside
                dirnames[:] = []
                continue
            seen.add(real)
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for f in filenames:
                if f.lower().endswith(MODEL_EXTENSIONS) and not f.startswith(".") and _inside(Path(dirpath, f), allowed):
                    names.add(Path(dirpath, f).relative_to(root).as_posix())
    return sorted(names)


def resolve_model(name: str, offered: tuple[str, ...] = ()) -> Path:
    """The file for a LoadFRFSR model name. Only names that :func:`list_models` lists are
    accepted; absolute paths and ``..`` are refused before anything is looked up, and so is
    a name whose resolved path (symbolic links followed) leaves the model folders.
    ``offered``: other choices the node lists first (named in the error message)."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError("no FRFSR model selected; put models in ComfyUI/models/frfsr/ and refresh")
    pure = PurePosixPath(name.replace("\\", "/"))
    if pure.is_absolute() or os.path.isabs(name) or (len(name) > 1 and name[1] == ":"):
        raise ValueError(f"model name {name!r} is an absolute path; choose a file listed from "
                         f"the models/{MODEL_FOLDER} folder")
    if ".." in pure.parts:
        raise ValueError(f"model name {name!r} leaves the models/{MODEL_FOLDER} folder ('..' is not allowed)")
    allowed = _real_roots()
    for root in models_dirs():
        path = root / pure
        if path.is_file() and not _inside(path, allowed):
            raise ValueError(f"model {name!r} is a symbolic link that leads outside the model folders "
                             f"(to {os.path.realpath(path)}); link only into a folder configured for "
                             f"'{MODEL_FOLDER}' (models/{MODEL_FOLDER} or extra_model_paths.yaml), or copy the model")
    available = list_models()
    if name not in available:
        hint = ", ".join([*offered, *available][:10]) or f"none: put models in models/{MODEL_FOLDER}/"
        raise ValueError(f"model {name!r} is not in the models/{MODEL_FOLDER} folder; available: {hint}")
    for root in models_dirs():
        path = root / pure
        if path.is_file() and _inside(path, allowed):
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


def shows_previews() -> bool:
    """True inside ComfyUI: its progress bar takes a preview image (every build the pack
    supports draws it on the node while the node runs)."""
    return comfy_utils is not None and hasattr(comfy_utils, "ProgressBar")


def check_interrupt() -> None:
    """Raise ComfyUI's interrupt exception if the user pressed cancel (no-op outside ComfyUI)."""
    if model_management is not None and hasattr(model_management, "throw_exception_if_processing_interrupted"):
        model_management.throw_exception_if_processing_interrupted()


# ---------------------------------------------------------------------- devices
DEVICE_CHOICES = ["auto", "cpu", "cuda", "mps"]


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


def soft_empty_cache() -> None:
    """Return cached GPU memory to ComfyUI / the driver."""
    if model_management is not None and hasattr(model_management, "soft_empty_cache"):
        model_management.soft_empty_cache()
    elif torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------- model memory
def _same_device(a: torch.device, b: torch.device) -> bool:
    a, b = torch.device(a), torch.device(b)
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


def _on(module: torch.nn.Module, device: torch.device) -> bool:
    return all(_same_device(t.device, device) for t in module.state_dict().values())


def uses_comfy_memory_management() -> bool:
    """True where ComfyUI's model management and model patcher can hold the model."""
    return (model_management is not None and hasattr(model_management, "load_models_gpu")
            and getattr(model_patcher, "ModelPatcher", None) is not None)


class FRFSRForComfyUI(torch.nn.Module):
    """What ComfyUI's ModelPatcher holds: the network as its only submodule. Current
    ModelPatcher versions set plain attributes on the module they hold (``device``,
    ``model_loaded_weight_memory``, ...), and the network's own ``device`` is a read-only
    property. ComfyUI's log names this class when it loads the model."""

    def __init__(self, net: torch.nn.Module, device: torch.device):
        super().__init__()
        self.net = net
        self.device = device


class ManagedModel:
    """A network that moves to its compute device for one node's work.

    Inside ComfyUI it is wrapped in ComfyUI's ``ModelPatcher`` and loaded with
    ``comfy.model_management.load_models_gpu(..., memory_required=...)``, as ComfyUI loads
    its own models: ComfyUI counts it, frees other models first when the estimate does not
    fit, and keeps it loaded afterwards, from node to node and from prompt to prompt (a
    model already loaded is not loaded again). ComfyUI unloads it itself, through its own
    ``free_memory`` / ``unload_all_models``, when another model needs the memory or when
    the user frees memory (``/free``, "Unload models"). Outside ComfyUI the network is
    moved with ``.to()`` and back to its offload device after each use."""

    def __init__(self, module: torch.nn.Module, device: torch.device, offload: torch.device):
        self.module, self.device, self.offload = module, torch.device(device), torch.device(offload)
        self.patcher = None
        if uses_comfy_memory_management():
            self.patcher = model_patcher.ModelPatcher(FRFSRForComfyUI(module, self.offload), load_device=self.device,
                                                      offload_device=self.offload)

    @contextlib.contextmanager
    def use(self, memory_required: int = 0):
        """The module on the compute device for the ``with`` block; ``memory_required`` is the
        estimate of what the work needs besides the weights (bytes)."""
        self.load(memory_required)
        try:
            yield self.module
        finally:
            if self.patcher is None:
                self.unload()

    def load(self, memory_required: int = 0) -> None:
        if self.patcher is not None:
            kwargs = {"memory_required": int(memory_required)}
            if "force_full_load" in _parameters(model_management.load_models_gpu):
                kwargs["force_full_load"] = True          # the network needs all its weights on one device
            model_management.load_models_gpu([self.patcher], **kwargs)
        else:
            _free_memory(int(memory_required) + _module_bytes(self.module), self.device)
        if not _on(self.module, self.device):              # outside ComfyUI, or loaded in part (low-VRAM mode)
            self.module.to(self.device)

    def unload(self) -> None:
        """Outside ComfyUI: the module back on its offload device (inside ComfyUI, ComfyUI
        decides when to unload it)."""
        if not _on(self.module, self.offload):
            self.module.to(self.offload)
        if self.offload.type != self.device.type:
            soft_empty_cache()


def _parameters(fn) -> set[str]:
    try:
        return set(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return set()


def _module_bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


def _free_memory(num_bytes: int, device: torch.device) -> None:
    """Outside a patcher: ask ComfyUI (if present) to unload other models until ``num_bytes`` fit."""
    if model_management is not None and hasattr(model_management, "free_memory") and device.type != "cpu":
        try:
            model_management.free_memory(num_bytes, device)
        except Exception as e:  # noqa: BLE001 - memory management is best effort
            log.warning("FRFSR: comfy.model_management.free_memory failed: %s", e)


# ---------------------------------------------------------------------- start-up
def startup() -> None:
    """What the pack does once when ComfyUI loads it: register ``models/frfsr`` and put the
    bundled workflows' example images into the input folder (both no-ops outside ComfyUI)."""
    register_model_folder()
    install_example_inputs()


# ---------------------------------------------------------------------- example inputs
EXAMPLE_INPUTS = {"frfsr_lr.png": "lr.png", "frfsr_reference.png": "ref.png"}   # name in input/ -> bundled demo file
_examples_done: set[str] = set()       # input folders already seen


def install_example_inputs() -> list[str]:
    """Copy the bundled demo LR and Reference into ComfyUI's input folder under the names the
    bundled workflows load (frfsr_lr.png, frfsr_reference.png), so that every workflow runs
    as shipped. A file already there is never replaced. Called at start-up, and on V1 (older
    ComfyUI, which sets ``--input-directory`` only after loading custom nodes) again when
    the frontend asks for the node list; once per folder. Returns the names copied."""
    if folder_paths is None or not hasattr(folder_paths, "get_input_directory"):
        return []
    import shutil

    import frfsr

    assets = Path(frfsr.__file__).resolve().parent / "assets" / "demo"
    copied = []
    try:
        target = Path(folder_paths.get_input_directory())
        if str(target) in _examples_done:
            return []
        target.mkdir(parents=True, exist_ok=True)
        for name, source in EXAMPLE_INPUTS.items():
            dest = target / name
            if not os.path.lexists(dest) and (assets / source).is_file():
                tmp = dest.with_name(f".{name}.tmp{os.getpid()}")
                shutil.copyfile(assets / source, tmp)
                os.replace(tmp, dest)
                copied.append(name)
        _examples_done.add(str(target))
    except OSError as e:       # a read-only input folder must not stop the pack from loading
        log.warning("FRFSR: could not copy the example images into ComfyUI's input folder: %s", e)
    return copied
