"""The repository as a ComfyUI custom-node pack, without ComfyUI.

The pack is imported the way ComfyUI imports ``custom_nodes/<folder>/__init__.py``; node
definitions are checked against ComfyUI's rules for V1 nodes; model names and Hub repo ids
are checked for safety. Helpers here are shared with test_comfy_workflows.py.
"""
from __future__ import annotations

import importlib.util
import inspect
import json
import os
import re
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest
import torch

from frfsr import FRFSR, FRFSRConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
PACK_CLASSES = {"LoadFRFSR", "LoadFRFSRFromHub", "FRFSRMatchReference", "FRFSRAlignTextures", "FRFSRSuperResolve",
                "FRFSRUpscale", "FRFSRSelectReferences"}
PRIMITIVES = {"INT", "FLOAT", "STRING", "BOOLEAN"}
MODEL_NAME = "frfsr-paper/model.safetensors"      # a model folder in models/frfsr (the workflows use frfsr-default)


# ---------------------------------------------------------------------- helpers
pytestmark = pytest.mark.usefixtures("one_thread")


def load_pack(name: str):
    """Import the repository root as ComfyUI's ``load_custom_node`` does: by the path of its
    ``__init__.py``, as a package called ``name``."""
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


_PACK = {}


def get_pack():
    """The pack imported once per test session, under the name today's ComfyUI gives it:
    its path with '.' -> '_x_'."""
    if "module" not in _PACK:
        _PACK["module"] = load_pack(str(REPO_ROOT).replace(".", "_x_"))
    return _PACK["module"]


@pytest.fixture
def pack():
    return get_pack()


def pack_modules(pack):
    """(nodes module, comfy_compat module) of the imported pack."""
    return sys.modules[pack.__name__ + ".frfsr_nodes.nodes"], sys.modules[pack.__name__ + ".frfsr_nodes.comfy_compat"]


def save_tiny_model(folder: Path, seed: int = 0) -> FRFSR:
    """A tiny FRFSR saved by the pipeline (config.json + model.safetensors) in ``folder``."""
    from frfsr.pipeline import FRFSRPipeline

    torch.manual_seed(seed)
    model = FRFSR(FRFSRConfig.tiny()).eval()
    FRFSRPipeline(model).save_pretrained(folder)
    return model


@pytest.fixture
def models_dir(tmp_path, monkeypatch, pack):
    """A models folder (``.root``) holding MODEL_NAME, a tiny model (``.model``); LoadFRFSR looks only there."""
    root = tmp_path / "models" / "frfsr"
    model = save_tiny_model(root / Path(MODEL_NAME).parent)
    _, cc = pack_modules(pack)
    monkeypatch.setattr(cc, "models_dirs", lambda: [root])
    return types.SimpleNamespace(root=root, model=model)


def widget_inputs(cls) -> list[tuple[str, tuple]]:
    """The inputs the UI shows as widgets (primitives and combos), in widgets_values order."""
    spec = cls.INPUT_TYPES()
    out = []
    for section in ("required", "optional"):
        for name, s in spec.get(section, {}).items():
            if isinstance(s[0], (list, tuple)) or s[0] in PRIMITIVES:
                out.append((name, s))
    return out


def value_error(name: str, spec: tuple, value, dynamic: bool = False) -> str | None:
    """Why ``value`` is not valid for a widget input, as ComfyUI's validation sees it (None if valid)."""
    kind, opts = spec[0], (spec[1] if len(spec) > 1 else {})
    if isinstance(kind, (list, tuple)):
        if dynamic:
            return None if isinstance(value, str) and value else f"{name}: {value!r} is not a file name"
        return None if value in kind else f"{name}: {value!r} not in {list(kind)}"
    if kind == "INT":
        if isinstance(value, bool) or not isinstance(value, int):
            return f"{name}: {value!r} is not an int"
    elif kind == "FLOAT":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"{name}: {value!r} is not a number"
    elif kind == "STRING":
        return None if isinstance(value, str) else f"{name}: {value!r} is not a string"
    elif kind == "BOOLEAN":
        return None if isinstance(value, bool) else f"{name}: {value!r} is not a bool"
    if "min" in opts and value < opts["min"]:
        return f"{name}: {value} < min {opts['min']}"
    if "max" in opts and value > opts["max"]:
        return f"{name}: {value} > max {opts['max']}"
    return None


def check_v1_node(node_id: str, cls) -> list[str]:
    """ComfyUI's rules for a V1 node class (what nodes.py / server.py / execution.py rely on)."""
    errors = []
    spec = cls.INPUT_TYPES()
    if not isinstance(spec, dict) or "required" not in spec or set(spec) - {"required", "optional", "hidden"}:
        return [f"{node_id}: INPUT_TYPES must be a dict with 'required' (and optional 'optional'/'hidden')"]
    try:
        json.dumps(spec)                   # /object_info serialises it
    except TypeError as e:
        errors.append(f"{node_id}: INPUT_TYPES is not JSON-serialisable: {e}")
    for attr in ("RETURN_TYPES", "FUNCTION", "CATEGORY"):
        if not hasattr(cls, attr):
            errors.append(f"{node_id}: missing {attr}")
    if errors:
        return errors
    if not isinstance(cls.RETURN_TYPES, tuple) or not all(isinstance(t, str) for t in cls.RETURN_TYPES):
        errors.append(f"{node_id}: RETURN_TYPES must be a tuple of type names")
    for attr in ("RETURN_NAMES", "OUTPUT_TOOLTIPS", "OUTPUT_IS_LIST"):
        if hasattr(cls, attr) and len(getattr(cls, attr)) != len(cls.RETURN_TYPES):
            errors.append(f"{node_id}: {attr} has {len(getattr(cls, attr))} entries for {len(cls.RETURN_TYPES)} outputs")
    if cls.CATEGORY != "FRFSR":
        errors.append(f"{node_id}: CATEGORY is {cls.CATEGORY!r}, expected 'FRFSR'")
    fn = getattr(cls, cls.FUNCTION, None)
    if not callable(fn):
        return errors + [f"{node_id}: FUNCTION {cls.FUNCTION!r} is not a method"]
    params = inspect.signature(fn).parameters
    takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in params.values())
    for section in ("required", "optional"):
        for name, s in spec.get(section, {}).items():
            if not name.isidentifier():
                errors.append(f"{node_id}.{name}: input names are passed as keyword arguments")
            if name not in params and not takes_kwargs:
                errors.append(f"{node_id}.{name}: not a parameter of {cls.FUNCTION}()")
            elif section == "optional" and name in params and params[name].default is inspect.Parameter.empty:
                errors.append(f"{node_id}.{name}: optional input needs a default in {cls.FUNCTION}()")
            if not isinstance(s, tuple) or len(s) not in (1, 2) or (len(s) == 2 and not isinstance(s[1], dict)):
                errors.append(f"{node_id}.{name}: spec must be (type,) or (type, options)")
                continue
            kind, opts = s[0], (s[1] if len(s) == 2 else {})
            if isinstance(kind, (list, tuple)):
                if "default" in opts and opts["default"] not in kind:
                    errors.append(f"{node_id}.{name}: default {opts['default']!r} not among the choices")
            elif not isinstance(kind, str) or not kind or kind != kind.upper():
                errors.append(f"{node_id}.{name}: type {kind!r} must be an upper-case type name")
            elif kind in ("INT", "FLOAT"):
                lo, hi, d = opts.get("min"), opts.get("max"), opts.get("default")
                if None in (lo, hi, d) or not lo <= d <= hi or opts.get("step", 1) <= 0:
                    errors.append(f"{node_id}.{name}: needs min <= default <= max and a positive step")
            if "default" in opts and isinstance(kind, str) and kind in PRIMITIVES and value_error(name, s, opts["default"]):
                errors.append(f"{node_id}.{name}: default {opts['default']!r} is not a valid {kind}")
    return errors


# ---------------------------------------------------------------------- import as ComfyUI does
def test_pack_exports_node_mappings_without_comfyui(pack):
    assert set(pack.NODE_CLASS_MAPPINGS) == PACK_CLASSES
    assert set(pack.NODE_DISPLAY_NAME_MAPPINGS) == PACK_CLASSES
    assert not hasattr(pack, "WEB_DIRECTORY")
    assert "folder_paths" not in sys.modules and "comfy" not in sys.modules
    _, cc = pack_modules(pack)
    assert not cc.in_comfyui()


def test_pack_imports_by_folder_name(pack):
    """Older ComfyUI names the package after its folder (here the checkout's folder name)."""
    name = REPO_ROOT.name
    saved = {k: sys.modules[k] for k in list(sys.modules) if k == name or k.startswith(name + ".")}
    try:
        module = load_pack(name)
        assert module.NODE_CLASS_MAPPINGS.keys() == pack.NODE_CLASS_MAPPINGS.keys()
    finally:
        for k in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
            del sys.modules[k]
        sys.modules.update(saved)


_LOADER = textwrap.dedent("""
    import importlib.util, sys
    path, name = sys.argv[1], sys.argv[2]
    spec = importlib.util.spec_from_file_location(name, path + "/__init__.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    import frfsr
    assert hasattr(frfsr, "FRFSR"), frfsr
    print(sorted(module.NODE_CLASS_MAPPINGS))
""")


@pytest.mark.parametrize("folder", ["frfsr", "ComfyUI-FRFSR"])
def test_pack_imports_from_custom_nodes_when_not_pip_installed(tmp_path, folder):
    """A fresh interpreter with the clone only in custom_nodes/ (not on sys.path, not
    installed), named as ComfyUI names it; a folder called 'frfsr' must not shadow the library."""
    custom_nodes = tmp_path / "custom_nodes"
    custom_nodes.mkdir()
    (custom_nodes / folder).symlink_to(REPO_ROOT, target_is_directory=True)
    names = {"frfsr": "frfsr", "ComfyUI-FRFSR": str(custom_nodes / folder).replace(".", "_x_")}
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    res = subprocess.run([sys.executable, "-c", _LOADER, str(custom_nodes / folder), names[folder]],
                         cwd=custom_nodes, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == repr(sorted(PACK_CLASSES))


# ---------------------------------------------------------------------- node definitions
def test_node_definitions_follow_comfyui_rules(pack):
    errors = [e for node_id, cls in pack.NODE_CLASS_MAPPINGS.items() for e in check_v1_node(node_id, cls)]
    assert not errors, "\n".join(errors)


def test_custom_types_flow_from_producers_to_consumers(pack):
    produced = {t for cls in pack.NODE_CLASS_MAPPINGS.values() for t in cls.RETURN_TYPES}
    consumed = {s[0] for cls in pack.NODE_CLASS_MAPPINGS.values()
                for sec in cls.INPUT_TYPES().values() for s in sec.values() if isinstance(s[0], str)}
    custom = {t for t in produced | consumed if t.startswith("FRFSR_")}
    assert custom == {"FRFSR_MODEL", "FRFSR_MATCH", "FRFSR_TEXTURES"}
    assert custom <= produced and custom <= consumed


def test_signatures_of_the_nodes(pack):
    m = pack.NODE_CLASS_MAPPINGS
    assert m["LoadFRFSR"].RETURN_TYPES == ("FRFSR_MODEL",)
    assert m["LoadFRFSRFromHub"].RETURN_TYPES == ("FRFSR_MODEL",)
    assert m["FRFSRMatchReference"].RETURN_TYPES == ("FRFSR_MATCH", "IMAGE")
    assert m["FRFSRAlignTextures"].RETURN_TYPES == ("FRFSR_TEXTURES", "IMAGE")
    assert m["FRFSRSuperResolve"].RETURN_TYPES == ("IMAGE",)
    assert m["FRFSRUpscale"].RETURN_TYPES == ("IMAGE",)
    assert list(m["FRFSRUpscale"].INPUT_TYPES()["required"]) == ["model", "image", "reference", "reference_mode",
                                                                 "tile_size", "tile_overlap"]
    assert {"repo_id", "revision"} <= set(m["LoadFRFSRFromHub"].INPUT_TYPES()["required"])
    assert "file" in m["LoadFRFSRFromHub"].INPUT_TYPES()["optional"]
    assert "tile_size" in m["FRFSRSuperResolve"].INPUT_TYPES()["required"]
    assert m["FRFSRSelectReferences"].RETURN_TYPES == ("IMAGE", "STRING")
    assert list(m["FRFSRSelectReferences"].INPUT_TYPES()["required"]) == ["model", "image", "candidates", "k", "rerank"]


# ---------------------------------------------------------------------- model folder safety
def test_models_are_listed_from_the_models_folder(pack, models_dir):
    save_tiny_model(models_dir.root / "other")
    (models_dir.root / "notes.txt").write_text("not a model")
    (models_dir.root / "old.ckpt").write_bytes(b"pickle")
    from frfsr.hub import bundled_models
    bundled = [n for n, d in bundled_models().items() if d.is_dir()]  # the shipped weights come first
    assert pack.NODE_CLASS_MAPPINGS["LoadFRFSR"].INPUT_TYPES()["required"]["model_name"][0] == bundled + [
        MODEL_NAME, "other/model.safetensors"]


def test_model_listing_survives_a_symlink_loop(pack, models_dir):
    (models_dir.root / "frfsr-paper" / "loop").symlink_to(models_dir.root, target_is_directory=True)
    _, cc = pack_modules(pack)
    assert MODEL_NAME in cc.list_models()


@pytest.mark.parametrize("name", ["../outside.safetensors", "frfsr-paper/../../outside.safetensors",
                                  "..\\outside.safetensors", "/abs/outside.safetensors", "C:\\models\\x.safetensors"])
def test_path_traversal_is_refused(pack, models_dir, name):
    (models_dir.root.parent / "outside.safetensors").write_bytes(b"")      # exists, but outside the folder
    nodes, cc = pack_modules(pack)
    with pytest.raises(ValueError, match=r"absolute path|leaves the models/frfsr folder|not in the models/frfsr"):
        nodes.LoadFRFSR().load(name)


def test_absolute_path_to_a_listed_file_is_refused(pack, models_dir):
    nodes, _ = pack_modules(pack)
    with pytest.raises(ValueError, match="absolute path"):
        nodes.LoadFRFSR().load(str(models_dir.root / MODEL_NAME))


def test_unknown_model_name_lists_what_is_available(pack, models_dir):
    nodes, _ = pack_modules(pack)
    with pytest.raises(ValueError, match=f"'missing.safetensors' is not in .*available: frfsr-default, frfsr-robust, {MODEL_NAME}"):
        nodes.LoadFRFSR().load("missing.safetensors")


def test_load_frfsr_matches_the_saved_model(pack, models_dir):
    nodes, _ = pack_modules(pack)
    (handle,) = nodes.LoadFRFSR().load(MODEL_NAME, "cpu", "float32")
    ref_state = models_dir.model.state_dict()
    assert all(torch.equal(v, ref_state[k]) for k, v in handle.model.state_dict().items())
    assert handle.device == torch.device("cpu") and not handle.model.training


def test_a_file_that_is_not_a_model_folder_is_refused(pack, tmp_path, monkeypatch):
    from safetensors.torch import save_file

    nodes, cc = pack_modules(pack)
    save_file({"a": torch.zeros(1)}, str(tmp_path / "bare.safetensors"))
    monkeypatch.setattr(cc, "models_dirs", lambda: [tmp_path])
    assert "bare.safetensors" in pack.NODE_CLASS_MAPPINGS["LoadFRFSR"].INPUT_TYPES()["required"]["model_name"][0]
    with pytest.raises(ValueError, match="not an FRFSR model folder: put config.json and model.safetensors"):
        nodes.LoadFRFSR().load("bare.safetensors")


def test_bundled_weights_are_offered_when_present(pack, models_dir, tmp_path, monkeypatch):
    from frfsr import hub

    nodes, _ = pack_modules(pack)
    monkeypatch.setattr(hub, "BUNDLED_DIR", tmp_path / "absent")
    monkeypatch.setattr(hub, "ROBUST_DIR", tmp_path / "absent")
    assert "frfsr-default" not in nodes.model_choices() and "frfsr-robust" not in nodes.model_choices()
    save_tiny_model(tmp_path / "bundled")
    monkeypatch.setattr(hub, "BUNDLED_DIR", tmp_path / "bundled")
    assert nodes.model_choices() == ["frfsr-default", MODEL_NAME]
    (handle,) = nodes.LoadFRFSR().load("frfsr-default", "cpu", "float32")
    assert handle.name == "frfsr-default"
    save_tiny_model(tmp_path / "robust")
    monkeypatch.setattr(hub, "ROBUST_DIR", tmp_path / "robust")
    assert nodes.model_choices() == ["frfsr-default", "frfsr-robust", MODEL_NAME]
    (handle,) = nodes.LoadFRFSR().load("frfsr-robust", "cpu", "float32")
    assert handle.name == "frfsr-robust"


def test_load_in_half_precision(pack, models_dir):
    nodes, _ = pack_modules(pack)
    (handle,) = nodes.LoadFRFSR().load(MODEL_NAME, "cpu", "float16")
    assert handle.dtype == torch.float16


def test_weights_that_do_not_fit_the_config_are_refused(pack, tmp_path, monkeypatch):
    nodes, cc = pack_modules(pack)
    save_tiny_model(tmp_path / "bad")
    FRFSRConfig.tiny(ngf=32).to_json(tmp_path / "bad" / "config.json")
    monkeypatch.setattr(cc, "models_dirs", lambda: [tmp_path])
    with pytest.raises(ValueError, match="does not fit the config"):
        nodes.LoadFRFSR().load("bad/model.safetensors")


# ---------------------------------------------------------------------- Hub ids
BAD_REPO_IDS = ["", " ", "../etc/passwd", "owner/../x", "a/b/c", "/abs/path", "https://huggingface.co/a/b",
                "owner/na me", "owner--x/y", "owner/.hidden", "owner/x.git", "-owner/x", "C:\\models", "x" * 200]


@pytest.mark.parametrize("repo_id", BAD_REPO_IDS)
def test_malformed_repo_ids_are_refused_before_any_request(pack, monkeypatch, repo_id):
    nodes, _ = pack_modules(pack)
    calls = []
    monkeypatch.setattr(nodes, "load_model", lambda *a, **kw: calls.append(a))
    cls = pack.NODE_CLASS_MAPPINGS["LoadFRFSRFromHub"]
    message = cls.VALIDATE_INPUTS(repo_id=repo_id, revision="main")
    assert isinstance(message, str) and "invalid Hugging Face repo id" in message
    with pytest.raises(ValueError, match="invalid Hugging Face repo id"):
        cls().load(repo_id, "main", "cpu", "float32")
    assert calls == []


def test_hub_inputs_linked_from_other_nodes_are_checked_at_run_time(pack):
    """At queue time ComfyUI passes None for an input that another node will compute."""
    cls = pack.NODE_CLASS_MAPPINGS["LoadFRFSRFromHub"]
    assert cls.VALIDATE_INPUTS(repo_id=None, revision="main", file=None) is True


@pytest.mark.parametrize("field,value", [("revision", "main; rm -rf"), ("revision", "../x"),
                                         ("file", "../model.safetensors"), ("file", "/etc/model.safetensors"),
                                         ("file", "weights.pt"), ("file", "other.safetensors")])
def test_bad_revision_or_file_is_refused(pack, field, value):
    cls = pack.NODE_CLASS_MAPPINGS["LoadFRFSRFromHub"]
    kwargs = {"repo_id": "owner/frfsr", "revision": "main", "file": ""} | {field: value}
    assert isinstance(cls.VALIDATE_INPUTS(**kwargs), str)


def test_hub_loader_downloads_weights_and_config_of_one_commit(pack, tmp_path, monkeypatch):
    nodes, _ = pack_modules(pack)
    snapshot = tmp_path / "models--owner--frfsr-x4" / "snapshots" / "c0ffee"
    save_tiny_model(snapshot / "stage2")
    requests = []

    def fake_download(repo_id, filename, *, revision=None, **kw):     # what frfsr.hub calls
        requests.append((repo_id, filename, revision))
        return str(snapshot / filename)

    import huggingface_hub
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    cls = pack.NODE_CLASS_MAPPINGS["LoadFRFSRFromHub"]
    assert cls.VALIDATE_INPUTS(repo_id="owner/frfsr-x4", revision="v1.0", file="stage2/model.safetensors") is True
    (handle,) = cls().load("owner/frfsr-x4", "v1.0", "cpu", "float32", file="stage2/model.safetensors")
    # the config at the asked revision, then the weights of the very commit the config came from
    assert requests == [("owner/frfsr-x4", "stage2/config.json", "v1.0"),
                        ("owner/frfsr-x4", "stage2/model.safetensors", "c0ffee")]
    assert handle.name == "owner/frfsr-x4@v1.0:stage2/model.safetensors"


# ---------------------------------------------------------------------- running the steps
def _images(b, h, w, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, h, w, 3, generator=g)


@pytest.fixture
def handle(pack, models_dir):
    nodes, _ = pack_modules(pack)
    return nodes.LoadFRFSR().load(MODEL_NAME, "cpu", "float32")[0]


def test_steps_match_the_model_and_take_any_channel_count(pack, handle):
    m = pack.NODE_CLASS_MAPPINGS
    lr, ref = _images(1, 16, 20, 1), _images(1, 16, 16, 2)
    match, conf = m["FRFSRMatchReference"]().match(handle, lr, ref)
    tex, warped = m["FRFSRAlignTextures"]().align(handle, match)
    (sr,) = m["FRFSRSuperResolve"]().upscale(handle, lr, tex, 0, 16)
    assert sr.shape == (1, 64, 80, 3) and conf.shape == (1, 16, 20, 3) and warped.shape == (1, 64, 80, 3)
    assert sr.dtype == torch.float32 and 0 <= float(sr.min()) and float(sr.max()) <= 1
    with torch.no_grad():
        direct = handle.model(lr.permute(0, 3, 1, 2), ref.permute(0, 3, 1, 2)).clamp(0, 1).permute(0, 2, 3, 1)
    torch.testing.assert_close(sr, direct, atol=1e-5, rtol=0)
    # RGBA LR and grayscale Ref are accepted (alpha dropped, gray repeated)
    rgba = torch.cat([lr, torch.ones(1, 16, 20, 1)], -1)
    match2, _ = m["FRFSRMatchReference"]().match(handle, rgba, ref[..., :1])
    assert match2.confidence.shape == (1, 1, 16, 20)


def test_reference_modes(pack, handle):
    match = pack.NODE_CLASS_MAPPINGS["FRFSRMatchReference"]().match
    lr = _images(2, 16, 16, 3)
    corr, _ = match(handle, lr, _images(3, 16, 16, 4))            # 3 Refs for 2 LRs: every Ref for every LR
    assert len(corr.refs.images) == 3
    corr, _ = match(handle, lr, _images(2, 16, 16, 4), "all")
    assert len(corr.refs.images) == 2 and corr.refs.batch_size == 1
    corr, _ = match(handle, lr, _images(2, 16, 16, 4), "auto")    # paired
    assert len(corr.refs.images) == 1 and corr.refs.batch_size == 2
    with pytest.raises(ValueError, match="'pair' needs one Reference per image"):
        match(handle, lr, _images(3, 16, 16, 4), "pair")


def test_superresolve_refuses_textures_of_another_image(pack, handle):
    m = pack.NODE_CLASS_MAPPINGS
    match, _ = m["FRFSRMatchReference"]().match(handle, _images(1, 16, 16, 1), _images(1, 16, 16, 2))
    tex, _ = m["FRFSRAlignTextures"]().align(handle, match)
    with pytest.raises(ValueError, match="connect the same image"):
        m["FRFSRSuperResolve"]().upscale(handle, _images(1, 16, 24, 1), tex, 0, 16)
    with pytest.raises(ValueError, match=r"ComfyUI IMAGE of shape \[B, H, W, C\]"):
        m["FRFSRMatchReference"]().match(handle, torch.rand(16, 16, 3), _images(1, 16, 16, 2))


class _FakeProgressBar:
    instances: list = []

    def __init__(self, total):
        self.total, self.current = total, 0
        _FakeProgressBar.instances.append(self)

    def update_absolute(self, value, total=None, preview=None):
        self.current, self.total = value, total if total is not None else self.total

    def update(self, value):
        self.update_absolute(self.current + value)


class _Interrupted(Exception):
    pass


def test_progress_per_tile_and_cancel_between_tiles(pack, handle, monkeypatch):
    """Inside ComfyUI: comfy.utils.ProgressBar advances once per tile, and the interrupt
    check runs before every tile (pressing cancel stops the node)."""
    nodes, cc = pack_modules(pack)
    checks = {"n": 0, "stop_at": None}

    def throw_exception_if_processing_interrupted():
        checks["n"] += 1
        if checks["stop_at"] is not None and checks["n"] >= checks["stop_at"]:
            raise _Interrupted()

    monkeypatch.setattr(cc, "comfy_utils", types.SimpleNamespace(ProgressBar=_FakeProgressBar))
    monkeypatch.setattr(cc, "model_management", types.SimpleNamespace(
        throw_exception_if_processing_interrupted=throw_exception_if_processing_interrupted))
    m = pack.NODE_CLASS_MAPPINGS
    lr = _images(1, 24, 24, 1)
    match, _ = m["FRFSRMatchReference"]().match(handle, lr, _images(1, 16, 16, 2))
    tex, _ = m["FRFSRAlignTextures"]().align(handle, match)
    _FakeProgressBar.instances.clear()
    checks["n"] = 0
    (sr,) = m["FRFSRSuperResolve"]().upscale(handle, lr, tex, 16, 4)     # 2 x 2 tiles
    assert sr.shape == (1, 96, 96, 3)
    bar = _FakeProgressBar.instances[-1]
    assert (bar.current, bar.total) == (4, 4) and checks["n"] == 4
    checks.update(n=0, stop_at=3)
    with pytest.raises(_Interrupted):
        m["FRFSRSuperResolve"]().upscale(handle, lr, tex, 16, 4)
    assert _FakeProgressBar.instances[-1].current == 2


def test_tile_widgets_map_to_the_tiler(pack):
    nodes, _ = pack_modules(pack)
    assert nodes.tile_args(0, 16) == ("auto", 16)
    assert nodes.tile_args(8, 16) == (15, 7)            # raised to the minimum, overlap capped at half
    assert nodes.tile_args(128, 16) == (128, 16)


def test_device_choices_outside_comfyui(pack):
    _, cc = pack_modules(pack)
    assert cc.compute_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            cc.compute_device("cuda")
    with pytest.raises(ValueError, match="device must be one of"):
        cc.compute_device("tpu")



# ---------------------------------------------------------------------- symbolic links (resolved paths)
@pytest.fixture
def outside_model(tmp_path):
    """A model folder outside every model folder."""
    save_tiny_model(tmp_path / "elsewhere" / "stolen")
    return tmp_path / "elsewhere" / "stolen"


@pytest.mark.parametrize("how", ["file", "folder"])
def test_a_symlink_out_of_the_model_folder_is_refused(pack, models_dir, outside_model, how):
    nodes, cc = pack_modules(pack)
    if how == "folder":
        (models_dir.root / "evil").symlink_to(outside_model, target_is_directory=True)
    else:
        (models_dir.root / "evil").mkdir()
        (models_dir.root / "evil" / "model.safetensors").symlink_to(outside_model / "model.safetensors")
        (models_dir.root / "evil" / "config.json").symlink_to(outside_model / "config.json")
    assert "evil/model.safetensors" not in cc.list_models()
    with pytest.raises(ValueError, match=r"'evil/model.safetensors' is a symbolic link that leads outside the model "
                                         r"folders \(to .*stolen.*model.safetensors\)"):
        nodes.LoadFRFSR().load("evil/model.safetensors", "cpu", "float32")
    message = pack.NODE_CLASS_MAPPINGS["LoadFRFSR"].VALIDATE_INPUTS("evil/model.safetensors")
    assert isinstance(message, str) and "leads outside the model folders" in message


def test_a_symlink_into_a_configured_extra_model_folder_is_allowed(pack, models_dir, outside_model, monkeypatch):
    """extra_model_paths.yaml folders for frfsr are model folders too: links into them count as inside."""
    nodes, cc = pack_modules(pack)
    extra = outside_model.parent
    monkeypatch.setattr(cc, "models_dirs", lambda: [models_dir.root, extra])
    (models_dir.root / "linked").symlink_to(outside_model, target_is_directory=True)
    assert {"linked/model.safetensors", "stolen/model.safetensors"} <= set(cc.list_models())
    (handle,) = nodes.LoadFRFSR().load("linked/model.safetensors", "cpu", "float32")
    assert handle.name == "linked/model.safetensors"
    assert pack.NODE_CLASS_MAPPINGS["LoadFRFSR"].VALIDATE_INPUTS("linked/model.safetensors") is True


def test_the_model_name_is_validated_at_queue_time(pack, models_dir):
    cls = pack.NODE_CLASS_MAPPINGS["LoadFRFSR"]
    assert cls.VALIDATE_INPUTS(MODEL_NAME) is True
    assert cls.VALIDATE_INPUTS(None) is True                      # linked from another node
    message = cls.VALIDATE_INPUTS("nope/model.safetensors")
    assert "'nope/model.safetensors' is not in the models/frfsr folder; available: " in message and MODEL_NAME in message
    assert "absolute path" in cls.VALIDATE_INPUTS("/etc/model.safetensors")


# ---------------------------------------------------------------------- repo ids: ASCII, huggingface_hub's validator
@pytest.mark.parametrize("repo_id,shown", [("owner/modèle", "'è'"), ("ówner/x", "'ó'"), ("owner/ｘ", "'ｘ'"),
                                           ("owner/x\u200b", "'\\u200b'"), ("владелец/модель", "'в'")])
def test_non_ascii_repo_ids_are_refused(pack, monkeypatch, repo_id, shown):
    nodes, _ = pack_modules(pack)
    calls = []
    monkeypatch.setattr(nodes, "load_model", lambda *a, **kw: calls.append(a))
    cls = pack.NODE_CLASS_MAPPINGS["LoadFRFSRFromHub"]
    with pytest.raises(ValueError, match=f"invalid Hugging Face repo id .*: it must be ASCII, but holds {re.escape(shown)}"):
        cls().load(repo_id, "main", "cpu", "float32")
    assert "it must be ASCII" in cls.VALIDATE_INPUTS(repo_id=repo_id, revision="main")
    assert calls == []


def test_repo_ids_go_through_huggingface_hubs_validator(pack, monkeypatch):
    import huggingface_hub.utils
    from huggingface_hub.utils import HFValidationError

    nodes, _ = pack_modules(pack)
    seen = []

    def validator(repo_id):
        seen.append(repo_id)
        if repo_id == "owner/refused-by-hf":
            raise HFValidationError("a rule of the Hub's own")

    monkeypatch.setattr(huggingface_hub.utils, "validate_repo_id", validator)
    assert nodes.validate_repo_id(" owner/frfsr ") == "owner/frfsr"
    with pytest.raises(ValueError, match="invalid Hugging Face repo id 'owner/refused-by-hf'.*a rule of the Hub's own"):
        nodes.validate_repo_id("owner/refused-by-hf")
    assert seen == ["owner/frfsr", "owner/refused-by-hf"]


# ---------------------------------------------------------------------- IMAGE values
@pytest.mark.parametrize("make,message", [
    (lambda x: x * 255, r"image values span \[0, 25\d\.?\d*\], but a ComfyUI IMAGE holds values in \[0, 1\] \(is it a 0-255 image\?\)"),
    (lambda x: x * 2 - 1, r"image values span \[-1, 1\], but a ComfyUI IMAGE holds values in \[0, 1\] \(is it a \[-1, 1\] tensor\?\)"),
    (lambda x: x.index_fill(1, torch.tensor([3]), float("nan")), r"image holds NaN or infinite values"),
    (lambda x: x[:, :0], r"image is empty \(shape \(1, 0, 20, 3\)\)"),
])
def test_image_values_outside_0_1_are_refused(pack, handle, make, message):
    lr = _images(1, 16, 20, 1)
    lr[0, 0, 0, 0], lr[0, 0, 1, 0] = 0.0, 1.0                    # the exact range ends
    with pytest.raises(ValueError, match=message):
        pack.NODE_CLASS_MAPPINGS["FRFSRUpscale"]().upscale(handle, make(lr), _images(1, 16, 16, 2))


def test_a_small_overshoot_is_clipped_with_a_warning(pack, handle):
    nodes, _ = pack_modules(pack)
    ref = _images(1, 16, 16, 2)
    ref[0, 0, 0, 0], ref[0, 0, 0, 1] = -0.02, 1.05
    with pytest.warns(nodes.FRFSRImageWarning, match=r"reference values span \[-0.02, 1.05\], outside \[0, 1\]; "
                                                    r"they are clipped to \[0, 1\]"):
        (sr,) = pack.NODE_CLASS_MAPPINGS["FRFSRUpscale"]().upscale(handle, _images(1, 16, 20, 1), ref)
    (clipped,) = pack.NODE_CLASS_MAPPINGS["FRFSRUpscale"]().upscale(handle, _images(1, 16, 20, 1), ref.clamp(0, 1))
    torch.testing.assert_close(sr, clipped, atol=1e-6, rtol=0)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")                          # rounding-sized overshoot: silent
        nodes.check_image_values(ref.clamp(0, 1) * (1 + 5e-4), "reference")


# ---------------------------------------------------------------------- the one-node upscale
def _three_steps(m, handle, lr, ref, mode="auto", tile=0, overlap=16):
    match, _ = m["FRFSRMatchReference"]().match(handle, lr, ref, mode)
    tex, _ = m["FRFSRAlignTextures"]().align(handle, match)
    return m["FRFSRSuperResolve"]().upscale(handle, lr, tex, tile, overlap)[0]


@pytest.mark.parametrize("n_lr,n_ref,mode", [(1, 1, "auto"), (2, 2, "pair"), (2, 3, "auto"), (1, 2, "all")])
def test_one_node_upscale_gives_the_three_step_image(pack, handle, n_lr, n_ref, mode):
    m = pack.NODE_CLASS_MAPPINGS
    lr, ref = _images(n_lr, 16, 20, 1), _images(n_ref, 16, 16, 2)
    (one,) = m["FRFSRUpscale"]().upscale(handle, lr, ref, mode, 0, 16)
    assert one.shape == (n_lr, 64, 80, 3) and one.dtype == torch.float32
    torch.testing.assert_close(one, _three_steps(m, handle, lr, ref, mode), atol=1e-5, rtol=0)


def test_one_node_upscale_in_tiles_stays_close_to_the_three_steps(pack, handle):
    """Tiled, the one node matches each tile against the Reference (memory bounded by the
    tile), the three steps match the whole image once: the same image up to tile borders."""
    m = pack.NODE_CLASS_MAPPINGS
    lr, ref = _images(1, 32, 40, 1), _images(1, 24, 24, 2)
    (one,) = m["FRFSRUpscale"]().upscale(handle, lr, ref, "auto", 24, 8)
    steps = _three_steps(m, handle, lr, ref, "auto", 24, 8)
    psnr = 10 * torch.log10(1 / ((one - steps) ** 2).mean())
    assert float(psnr) >= 40, float(psnr)


def test_one_node_upscale_reports_progress_and_stops_between_tiles(pack, handle, monkeypatch):
    nodes, cc = pack_modules(pack)
    checks = {"n": 0}

    def throw_exception_if_processing_interrupted():
        checks["n"] += 1
        if checks["n"] >= 3:
            raise _Interrupted()

    monkeypatch.setattr(cc, "comfy_utils", types.SimpleNamespace(ProgressBar=_FakeProgressBar))
    monkeypatch.setattr(cc, "model_management", types.SimpleNamespace(
        throw_exception_if_processing_interrupted=throw_exception_if_processing_interrupted))
    _FakeProgressBar.instances.clear()
    with pytest.raises(_Interrupted):
        pack.NODE_CLASS_MAPPINGS["FRFSRUpscale"]().upscale(handle, _images(1, 24, 24, 1), _images(1, 16, 16, 2),
                                                           "auto", 16, 4)
    bar = _FakeProgressBar.instances[-1]
    assert (bar.current, bar.total) == (1, 4)      # one check before the work, then one before each tile


# ---------------------------------------------------------------------- upscale_by, alpha, previews
def test_upscale_by_2_gives_a_2x_image_resized_from_the_4x_one(pack, handle):
    nodes, _ = pack_modules(pack)
    m = pack.NODE_CLASS_MAPPINGS
    lr, ref = _images(1, 16, 20, 1), _images(1, 16, 16, 2)
    (four,) = m["FRFSRUpscale"]().upscale(handle, lr, ref)
    (two,) = m["FRFSRUpscale"]().upscale(handle, lr, ref, upscale_by=2)
    assert four.shape == (1, 64, 80, 3) and two.shape == (1, 32, 40, 3)
    expected = nodes.resize(four.permute(0, 3, 1, 2), (32, 40)).permute(0, 2, 3, 1)
    torch.testing.assert_close(two, expected, atol=1e-6, rtol=0)
    (odd,) = m["FRFSRUpscale"]().upscale(handle, lr, ref, upscale_by=1.5)
    assert odd.shape == (1, 24, 30, 3) and float(odd.min()) >= 0 and float(odd.max()) <= 1
    with pytest.raises(ValueError, match="upscale_by must be between 1 and 4"):
        m["FRFSRUpscale"]().upscale(handle, lr, ref, upscale_by=5)


def test_alpha_is_kept_through_the_nodes(pack, handle):
    """An RGBA LR: the SR nodes return RGBA, the colour as for the RGB image, the alpha the
    LR's enlarged; Select References keeps its candidates' alpha."""
    m = pack.NODE_CLASS_MAPPINGS
    rgb, ref = _images(1, 16, 20, 1), _images(1, 16, 16, 2)
    alpha = torch.ones(1, 16, 20, 1)
    alpha[:, :, 10:] = torch.linspace(0, 1, 16)[None, :, None, None].expand(1, 16, 10, 1)
    rgba = torch.cat([rgb, alpha], dim=-1)
    (plain,) = m["FRFSRUpscale"]().upscale(handle, rgb, ref)
    (kept,) = m["FRFSRUpscale"]().upscale(handle, rgba, ref)
    assert kept.shape == (1, 64, 80, 4)
    torch.testing.assert_close(kept[..., :3], plain, atol=1e-6, rtol=0)
    assert float(kept[..., :36, 3].min()) > 0.99                      # opaque where the LR is
    assert abs(float(kept[..., 3].mean()) - float(alpha.mean())) < 0.01
    (two,) = m["FRFSRUpscale"]().upscale(handle, rgba, ref, upscale_by=2)
    assert two.shape == (1, 32, 40, 4)
    match, _ = m["FRFSRMatchReference"]().match(handle, rgba, ref)
    tex, _ = m["FRFSRAlignTextures"]().align(handle, match)
    (steps,) = m["FRFSRSuperResolve"]().upscale(handle, rgba, tex, 0, 16)
    assert steps.shape == (1, 64, 80, 4)
    torch.testing.assert_close(steps[..., 3], kept[..., 3])
    cands = torch.cat([_images(3, 16, 16, 5), torch.rand(3, 16, 16, 1)], dim=-1)
    picked, _ = m["FRFSRSelectReferences"]().select(handle, rgb, cands, 2, 0)
    assert picked.shape == (2, 16, 16, 4)
    assert any(torch.allclose(picked[0], c) for c in cands)


def test_a_tiled_run_shows_a_preview_of_the_result_so_far(pack, handle, monkeypatch):
    _, cc = pack_modules(pack)
    previews = []

    class Bar(_FakeProgressBar):
        def update_absolute(self, value, total=None, preview=None):
            super().update_absolute(value, total, preview)
            previews.append(preview)

    monkeypatch.setattr(cc, "comfy_utils", types.SimpleNamespace(ProgressBar=Bar))
    lr, ref = _images(1, 24, 24, 1), _images(1, 16, 16, 2)
    (sr,) = pack.NODE_CLASS_MAPPINGS["FRFSRUpscale"]().upscale(handle, lr, ref, "auto", 16, 4)
    assert len(previews) == 4 and previews[-1] is None              # 2 x 2 tiles; the last one: the result itself
    kind, image, side = previews[-2]
    assert kind == "JPEG" and side == 512 and image.size == (96, 96)
    # the restored tiles are in it: after 3 of 4 tiles, the top-left tile is the SR's
    import numpy as np
    got = np.asarray(image, dtype=np.float32) / 255
    want = sr[0, :40, :40].numpy()
    assert np.abs(got[:40, :40] - want).mean() < 0.03


def test_optional_choices_are_checked_for_early_2024_comfyui(pack):
    m = pack.NODE_CLASS_MAPPINGS
    assert m["FRFSRMatchReference"].VALIDATE_INPUTS(match_mode="fast") is True
    assert "'bogus' is not one of" in m["FRFSRMatchReference"].VALIDATE_INPUTS(match_mode="bogus")
    assert m["FRFSRUpscale"].VALIDATE_INPUTS(match_mode="auto", upscale_by=2.5) is True
    assert "outside 1 to 4" in m["FRFSRUpscale"].VALIDATE_INPUTS(upscale_by=4.5)
    for cls in m.values():                 # every choice input is a list (ComfyUI ignores a tuple)
        for section in cls.INPUT_TYPES().values():
            for name, spec in section.items():
                assert not isinstance(spec[0], tuple), (cls.__name__, name)


def test_v1_or_v3_is_chosen_by_what_comfyui_offers(tmp_path):
    """Plain Python: V1 mappings. With a ``comfy_api.latest`` on the path: only
    ``comfy_entrypoint`` (a pack exporting both loses its V3 nodes in ComfyUI);
    FRFSR_COMFY_NODE_API=v1 forces V1."""
    fake = tmp_path / "comfy_api" / "latest"
    fake.mkdir(parents=True)
    (tmp_path / "comfy_api" / "__init__.py").write_text("")
    (fake / "__init__.py").write_text(textwrap.dedent("""
        class ComfyExtension:
            pass
        class _Any:
            def __getattr__(self, name):
                return _Any()
            def __call__(self, *a, **k):
                return _Any()
        class io:
            class ComfyNode:
                pass
            Image = String = Int = Float = Boolean = Combo = _Any()
            Schema = NodeOutput = _Any()
            @staticmethod
            def Custom(name):
                return _Any()
    """))
    script = ("import importlib, sys; sys.path.insert(0, sys.argv[1]); m = importlib.import_module('frfsr_nodes'); "
              "print(m.INTERFACE, sorted(m.EXPORTS))")
    base = {k: v for k, v in os.environ.items() if k not in ("FRFSR_COMFY_NODE_API", "PYTHONPATH")}
    envs = {"plain": base, "v3": {**base, "PYTHONPATH": str(tmp_path)},
            "forced": {**base, "PYTHONPATH": str(tmp_path), "FRFSR_COMFY_NODE_API": "v1"}}
    procs = {name: subprocess.Popen([sys.executable, "-c", script, str(REPO_ROOT)], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, env=env, cwd=REPO_ROOT)
             for name, env in envs.items()}            # at once: each mostly waits for torch to import
    out = {}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=180)
        out[name] = (stdout.split("\n")[0], stderr)
    assert out["plain"][0] == "v1 ['NODE_CLASS_MAPPINGS', 'NODE_DISPLAY_NAME_MAPPINGS']", out["plain"][1]
    assert out["v3"][0] == "v3 ['comfy_entrypoint']", out["v3"][1]
    assert out["forced"][0].startswith("v1 "), out["forced"][1]
