"""FRFSR nodes for ComfyUI; the repository root ``__init__.py``, which ComfyUI imports from
``custom_nodes/``, re-exports :data:`EXPORTS`.

ComfyUI reads a pack either through the V1 interface (``NODE_CLASS_MAPPINGS`` and
``NODE_DISPLAY_NAME_MAPPINGS``) or through the V3 one (``comfy_entrypoint``), never both: a
pack that exports both loses its V3 nodes. So the pack exports ``comfy_entrypoint`` where
``comfy_api.latest`` (ComfyUI's V3 interface) is importable, and the V1 mappings elsewhere
(older ComfyUI, and plain Python). The nodes are the same, made from one definition each
(:mod:`frfsr_nodes.nodes`). ``FRFSR_COMFY_NODE_API=v1`` forces the V1 interface.
"""
import importlib
import os

from . import comfy_compat
from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS


def v3_available() -> bool:
    """True where ComfyUI's V3 node interface can be imported (and is not turned off)."""
    if os.environ.get("FRFSR_COMFY_NODE_API", "").strip().lower() == "v1":
        return False
    try:
        importlib.import_module("comfy_api.latest")
    except Exception:  # noqa: BLE001 - absent, or a ComfyUI too old or broken for it: V1
        return False
    return True


if v3_available():
    from .v3 import comfy_entrypoint

    INTERFACE = "v3"
    EXPORTS = {"comfy_entrypoint": comfy_entrypoint}          # start-up work: in comfy_entrypoint
else:
    INTERFACE = "v1"
    EXPORTS = {"NODE_CLASS_MAPPINGS": NODE_CLASS_MAPPINGS, "NODE_DISPLAY_NAME_MAPPINGS": NODE_DISPLAY_NAME_MAPPINGS}
    comfy_compat.startup()      # V1: start-up work at import (no-ops outside ComfyUI)

__all__ = ["EXPORTS", "INTERFACE", "NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
