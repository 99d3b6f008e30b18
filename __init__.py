"""ComfyUI entry point: this repository is a ComfyUI custom-node pack.

ComfyUI imports ``custom_nodes/<folder>/__init__.py`` as a package and reads either
``comfy_entrypoint`` (its V3 node interface, where ComfyUI has it) or ``NODE_CLASS_MAPPINGS``
and ``NODE_DISPLAY_NAME_MAPPINGS`` (V1, older ComfyUI and plain Python); see docs/comfyui.md. The nodes live in ``frfsr_nodes/``; they need the ``frfsr`` library,
which is used as installed when ``pip install`` put it on the path, or else straight from
this clone. Nothing here needs ComfyUI, so the pack also imports in plain Python (tests).
"""
import importlib.util
import os
import sys

_ROOT = os.path.dirname(os.path.abspath(__file__))
# An older ComfyUI names the package after its folder; a clone in custom_nodes/frfsr
# would then take the library's own name. Step aside so that ``frfsr`` is the library.
_NAMED_LIKE_LIBRARY = __name__ == "frfsr"
if _NAMED_LIKE_LIBRARY:
    sys.modules.pop("frfsr", None)


def _library_importable() -> bool:
    """True when ``import frfsr`` finds the library, not this node-pack folder."""
    try:
        spec = importlib.util.find_spec("frfsr")
    except (ImportError, ValueError):
        return False
    return spec is not None and spec.origin is not None and os.path.abspath(spec.origin) != os.path.abspath(__file__)


if not _library_importable():
    sys.path.insert(0, _ROOT)         # cloned but not pip-installed: use the library in this clone

try:
    if _NAMED_LIKE_LIBRARY or not __package__:
        from frfsr_nodes import EXPORTS
    else:
        from .frfsr_nodes import EXPORTS
except ImportError as e:
    raise ImportError(f"FRFSR nodes could not be imported ({e}); install the requirements with "
                      f"'pip install -r {os.path.join(_ROOT, 'requirements.txt')}'") from e

globals().update(EXPORTS)       # comfy_entrypoint (V3), or the two V1 mappings
__all__ = list(EXPORTS)
