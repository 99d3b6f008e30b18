"""FRFSR nodes for ComfyUI. ``NODE_CLASS_MAPPINGS`` / ``NODE_DISPLAY_NAME_MAPPINGS`` are
re-exported by the repository root ``__init__.py``, which ComfyUI imports from
``custom_nodes/``."""
from .comfy_compat import register_model_folder
from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

register_model_folder()   # ComfyUI/models/frfsr (a no-op outside ComfyUI)

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
