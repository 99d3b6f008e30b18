"""The pack's nodes in ComfyUI's V3 interface (``comfy_api.latest``), made from the node
definitions in :mod:`frfsr_nodes.nodes`.

Each node class there declares its inputs (``input_spec``: ``(type, options)`` pairs, the form
of V1's INPUT_TYPES) and its outputs (``OUTPUTS``) once. :func:`v3_node` turns such a class
into an ``io.ComfyNode``: ``define_schema`` translates the inputs and outputs into V3 inputs and
outputs (asked again on every ``/object_info``, so the model list stays current),
``execute`` runs the node's own method, ``validate_inputs`` and ``fingerprint_inputs`` are its
``VALIDATE_INPUTS`` and ``IS_CHANGED``. Node ids, input names, their order and defaults stay
the V1 ones, so saved workflows load on either interface.

Imported only inside a ComfyUI that has ``comfy_api.latest`` (see :mod:`frfsr_nodes`).
"""
from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from . import comfy_compat as cc
from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

_KNOWN_TYPES = {"IMAGE": io.Image, "STRING": io.String, "INT": io.Int, "FLOAT": io.Float, "BOOLEAN": io.Boolean}
_CUSTOM_TYPES: dict[str, type] = {}
# the options each kind of input understands (V1 key -> V3 argument); anything else is an error,
# so that an option added to a definition is never silently dropped on one interface
_OPTIONS = {
    "COMBO": {"default": "default", "tooltip": "tooltip"},
    "INT": {"default": "default", "min": "min", "max": "max", "step": "step", "tooltip": "tooltip"},
    "FLOAT": {"default": "default", "min": "min", "max": "max", "step": "step", "round": "round", "tooltip": "tooltip"},
    "STRING": {"default": "default", "multiline": "multiline", "tooltip": "tooltip"},
    "BOOLEAN": {"default": "default", "tooltip": "tooltip"},
    None: {"tooltip": "tooltip"},                       # a link: IMAGE or one of the pack's types
}


def comfy_type(name: str):
    """The V3 type for a V1 type name: ComfyUI's own, or ``io.Custom(name)`` (made once)."""
    if name in _KNOWN_TYPES:
        return _KNOWN_TYPES[name]
    if name not in _CUSTOM_TYPES:
        _CUSTOM_TYPES[name] = io.Custom(name)
    return _CUSTOM_TYPES[name]


def v3_input(name: str, spec: tuple, optional: bool):
    """One V1 input ``(type, options)`` as a V3 input."""
    kind, options = spec[0], dict(spec[1]) if len(spec) > 1 else {}
    if isinstance(kind, (list, tuple)):
        key, cls = "COMBO", io.Combo
        options["options"] = list(kind)
    elif kind in ("INT", "FLOAT", "STRING", "BOOLEAN"):
        key, cls = kind, comfy_type(kind)
    else:
        key, cls = None, comfy_type(kind)
    allowed = _OPTIONS[key]
    unknown = set(options) - set(allowed) - {"options"}
    if unknown:
        raise ValueError(f"input {name!r}: options {sorted(unknown)} have no V3 translation here")
    kwargs = {allowed[k]: v for k, v in options.items() if k != "options"}
    if "options" in options:
        kwargs["options"] = options["options"]
    return cls.Input(name, optional=optional, **kwargs)


def v3_output(kind: str, name: str, tooltip: str):
    return comfy_type(kind).Output(name, display_name=name, tooltip=tooltip)


def v3_node(node_id: str, node: type) -> type:
    """An ``io.ComfyNode`` for the node class ``node`` (its one definition)."""
    display_name = NODE_DISPLAY_NAME_MAPPINGS[node_id]

    def define_schema(cls):
        spec = node.input_spec()
        inputs = [v3_input(name, s, False) for name, s in spec.get("required", {}).items()]
        inputs += [v3_input(name, s, True) for name, s in spec.get("optional", {}).items()]
        return io.Schema(node_id=node_id, display_name=display_name, category=node.CATEGORY,
                         description=node.DESCRIPTION, inputs=inputs,
                         outputs=[v3_output(*o) for o in node.OUTPUTS])

    def execute(cls, **inputs):
        return io.NodeOutput(*getattr(node(), node.FUNCTION)(**inputs))

    namespace = {"__doc__": node.__doc__, "__module__": __name__, "__qualname__": node.__name__,
                 "define_schema": classmethod(define_schema), "execute": classmethod(execute)}
    # ComfyUI reads the argument names of these two to know which inputs to pass: the
    # definition's own functions, with their own signatures
    if "VALIDATE_INPUTS" in dir(node) and not getattr(node, "VALIDATE_INPUTS_V1_ONLY", False):
        namespace["validate_inputs"] = classmethod(node.VALIDATE_INPUTS.__func__)
    if "IS_CHANGED" in dir(node):
        namespace["fingerprint_inputs"] = classmethod(node.IS_CHANGED.__func__)
    return type(node.__name__, (io.ComfyNode,), namespace)


NODES = [v3_node(node_id, node) for node_id, node in NODE_CLASS_MAPPINGS.items()]


class FRFSRExtension(ComfyExtension):
    """The pack as a V3 extension: its nodes, and its start-up work."""

    async def on_load(self) -> None:           # a ComfyUI that calls it; comfy_entrypoint did it already
        cc.startup()

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


async def comfy_entrypoint() -> FRFSRExtension:
    """What ComfyUI calls once when it loads the pack (V3)."""
    cc.startup()          # ComfyUI 0.8.0 does not call on_load; start-up happens here
    return FRFSRExtension()
