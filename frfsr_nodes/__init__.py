"""FRFSR nodes for ComfyUI. ``NODE_CLASS_MAPPINGS`` / ``NODE_DISPLAY_NAME_MAPPINGS`` are
re-exported by the repository root ``__init__.py``, which ComfyUI imports from
``custom_nodes/``."""
from .comfy_compat import install_example_inputs, register_model_folder
from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

register_model_folder()     # ComfyUI/models/frfsr (a no-op outside ComfyUI)
install_example_inputs()    # the bundled workflows' two images in ComfyUI/input, if absent (likewise)

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
