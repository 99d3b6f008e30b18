"""The bundled ComfyUI workflows: valid for ComfyUI (UI format 0.4 and API format), and the
API format runs end to end with a tiny model, executed as ComfyUI's executor does.

ComfyUI's core nodes used by the workflows (LoadImage, SaveImage, PreviewImage, and
ImageBatch for the batch tests) are replaced by minimal stand-ins with the same inputs and
outputs as ComfyUI's own definitions.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
import torch
from PIL import Image

from test_comfy_nodes import (MODEL_NAME, PRIMITIVES, REPO_ROOT, models_dir, pack,  # noqa: F401
                              pack_modules, save_tiny_model, value_error, widget_inputs)

pytestmark = pytest.mark.usefixtures("one_thread")

WORKFLOWS = REPO_ROOT / "workflows"
API_FILES = sorted(p.name for p in WORKFLOWS.glob("*_api.json"))
UI_FILES = [name.replace("_api.json", ".json") for name in API_FILES]
FRONTEND_ONLY = {"Note", "MarkdownNote"}          # drawn by the frontend, never sent to the server
DYNAMIC_COMBOS = {("LoadImage", "image"), ("LoadFRFSR", "model_name")}   # lists of the user's files


# ---------------------------------------------------------------------- ComfyUI core stand-ins
class LoadImage:
    input_dir: Path = Path(".")

    @classmethod
    def INPUT_TYPES(cls):
        files = sorted(p.name for p in cls.input_dir.glob("*.png"))
        return {"required": {"image": (files, {"image_upload": True})}}

    RETURN_TYPES = ("IMAGE", "MASK")
    FUNCTION = "load_image"
    CATEGORY = "image"

    def load_image(self, image):
        arr = np.asarray(Image.open(self.input_dir / image).convert("RGB"), dtype=np.float32) / 255.0
        t = torch.from_numpy(arr)[None]
        return (t, torch.zeros(1, *t.shape[1:3]))


class SaveImage:
    saved: list = []

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",), "filename_prefix": ("STRING", {"default": "ComfyUI"})}}

    RETURN_TYPES = ()
    FUNCTION = "save_images"
    OUTPUT_NODE = True
    CATEGORY = "image"

    def save_images(self, images, filename_prefix="ComfyUI"):
        type(self).saved.append((filename_prefix, images))
        return ()


class PreviewImage(SaveImage):
    saved: list = []

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",)}}

    def save_images(self, images):
        PreviewImage.saved.append(("preview", images))
        return ()


class ImageBatch:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image1": ("IMAGE",), "image2": ("IMAGE",)}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "batch"
    CATEGORY = "image"

    def batch(self, image1, image2):
        return (torch.cat([image1, image2]),)


CORE = {"LoadImage": LoadImage, "SaveImage": SaveImage, "PreviewImage": PreviewImage, "ImageBatch": ImageBatch}


def node_classes(pack) -> dict:
    return {**CORE, **pack.NODE_CLASS_MAPPINGS}


def load(name: str) -> dict:
    return json.loads((WORKFLOWS / name).read_text())


def declared_inputs(cls) -> dict[str, tuple]:
    spec = cls.INPUT_TYPES()
    return {**spec.get("required", {}), **spec.get("optional", {})}


def widget_error(node_type: str, name: str, spec: tuple, value) -> str | None:
    """Like ComfyUI's validation; file-list combos are checked for a safe file name instead
    (the user's folders decide the list)."""
    if (node_type, name) not in DYNAMIC_COMBOS:
        return value_error(f"{node_type}.{name}", spec, value)
    if not isinstance(value, str) or not value:
        return f"{node_type}.{name}: {value!r} is not a file name"
    pure = PurePosixPath(value)
    if pure.is_absolute() or ".." in pure.parts:
        return f"{node_type}.{name}: {value!r} is not a plain relative file name"
    if node_type == "LoadFRFSR" and not (value == "frfsr-default" or pure.name == "model.safetensors"):
        return f"LoadFRFSR.model_name: {value!r} is not <folder>/model.safetensors"
    return None


# ---------------------------------------------------------------------- API format: check and run
def validate_prompt(prompt: dict, classes: dict) -> list[str]:
    """What ComfyUI's validate_prompt checks: known classes, every required input given, links
    to an existing node's output of the same type, widget values valid, an output node."""
    errors = []
    for nid, node in prompt.items():
        cls = classes.get(node.get("class_type"))
        if cls is None:
            errors.append(f"{nid}: unknown class_type {node.get('class_type')!r}")
            continue
        spec = cls.INPUT_TYPES()
        declared = declared_inputs(cls)
        for name in spec["required"]:
            if name not in node["inputs"]:
                errors.append(f"{nid}: required input {name!r} missing")
        for name, value in node["inputs"].items():
            if name not in declared:
                errors.append(f"{nid}: unknown input {name!r}")
                continue
            kind = declared[name][0]
            if isinstance(value, list):
                src_id, slot = value
                src = prompt.get(src_id)
                src_cls = classes.get(src["class_type"]) if src else None
                if src_cls is None or not 0 <= slot < len(src_cls.RETURN_TYPES):
                    errors.append(f"{nid}.{name}: link to missing output {value}")
                elif src_cls.RETURN_TYPES[slot] != kind:
                    errors.append(f"{nid}.{name}: {src_cls.RETURN_TYPES[slot]} linked to a {kind} input")
            elif isinstance(kind, str) and kind not in PRIMITIVES:
                errors.append(f"{nid}.{name}: a {kind} input needs a link, got {value!r}")
            else:
                e = widget_error(node["class_type"], name, declared[name], value)
                if e:
                    errors.append(f"{nid}: {e}")
    if not any(getattr(classes.get(n["class_type"]), "OUTPUT_NODE", False) for n in prompt.values()):
        errors.append("no output node")
    return errors


def topological_order(prompt: dict) -> list[str]:
    deps = {nid: {v[0] for v in n["inputs"].values() if isinstance(v, list)} for nid, n in prompt.items()}
    order, done = [], set()
    while len(order) < len(prompt):
        ready = sorted((nid for nid in prompt if nid not in done and deps[nid] <= done), key=int)
        assert ready, f"cycle among {set(prompt) - done}"
        order.extend(ready)
        done.update(ready)
    return order


def execute(prompt: dict, classes: dict) -> dict:
    """Run an API prompt as ComfyUI's executor does: validate, then every node in dependency
    order, links resolved to the source node's output tuple by slot index."""
    errors = validate_prompt(prompt, classes)
    assert not errors, "\n".join(errors)
    outputs = {}
    for nid in topological_order(prompt):
        node = prompt[nid]
        cls = classes[node["class_type"]]
        kwargs = {k: outputs[v[0]][v[1]] if isinstance(v, list) else v for k, v in node["inputs"].items()}
        result = getattr(cls(), cls.FUNCTION)(**kwargs)
        assert isinstance(result, tuple) and len(result) == len(cls.RETURN_TYPES), (nid, result)
        outputs[nid] = result
    return outputs


# ---------------------------------------------------------------------- UI format
@pytest.mark.parametrize("name", UI_FILES)
def test_ui_workflow_has_the_0_4_layout(name):
    wf = load(name)
    assert wf["version"] == 0.4
    for key in ("last_node_id", "last_link_id", "nodes", "links"):
        assert key in wf
    ids = [n["id"] for n in wf["nodes"]]
    assert len(ids) == len(set(ids)) and wf["last_node_id"] >= max(ids)
    assert wf["last_link_id"] >= max(link[0] for link in wf["links"])
    for n in wf["nodes"]:
        for key in ("id", "type", "pos", "size", "flags", "order", "mode", "properties"):
            assert key in n, (n["id"], key)
        assert len(n["pos"]) == 2 and len(n["size"]) == 2
        for i in n.get("inputs", []):
            assert {"name", "type", "link"} <= set(i)
        for o in n.get("outputs", []):
            assert {"name", "type", "links"} <= set(o)
    for link in wf["links"]:
        assert len(link) == 6 and isinstance(link[5], str)


@pytest.mark.parametrize("name", UI_FILES)
def test_ui_workflow_nodes_exist_and_links_join_matching_types(pack, name):
    wf, classes = load(name), node_classes(pack)
    nodes = {n["id"]: n for n in wf["nodes"]}
    for n in wf["nodes"]:
        if n["type"] in FRONTEND_ONLY:
            continue
        cls = classes.get(n["type"])
        assert cls is not None, f"unknown node type {n['type']}"
        names = getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES)
        assert [(o["name"], o["type"]) for o in n["outputs"]] == list(zip(names, cls.RETURN_TYPES)), n["type"]
        declared = declared_inputs(cls)
        for i in n["inputs"]:
            assert declared[i["name"]][0] == i["type"], (n["type"], i["name"])
        linkable = {k for k, s in cls.INPUT_TYPES()["required"].items() if isinstance(s[0], str) and s[0] not in PRIMITIVES}
        assert {i["name"] for i in n["inputs"] if i["link"] is not None} == linkable, f"{n['type']}: unconnected inputs"
    for lid, src, src_slot, dst, dst_slot, kind in wf["links"]:
        out, inp = nodes[src]["outputs"][src_slot], nodes[dst]["inputs"][dst_slot]
        assert out["type"] == kind == inp["type"], f"link {lid}: {out['type']} -> {inp['type']} as {kind}"
        assert classes[nodes[src]["type"]].RETURN_TYPES[src_slot] == kind
        assert lid in out["links"] and inp["link"] == lid
    linked = {lid for n in wf["nodes"] for o in n.get("outputs", []) for lid in (o["links"] or [])}
    assert linked == {link[0] for link in wf["links"]}


@pytest.mark.parametrize("name", UI_FILES)
def test_ui_workflow_widget_values_are_valid(pack, name):
    wf, classes = load(name), node_classes(pack)
    for n in wf["nodes"]:
        if n["type"] in FRONTEND_ONLY:
            assert isinstance(n["widgets_values"][0], str)
            continue
        widgets = widget_inputs(classes[n["type"]])
        expected = []
        for w_name, spec in widgets:
            expected.append((w_name, spec))
            if len(spec) > 1 and spec[1].get("image_upload"):
                expected.append(("upload", (["image"],)))          # the upload button's value
        values = n.get("widgets_values", [])
        assert len(values) == len(expected), f"{n['type']}: {values} for widgets {[w for w, _ in expected]}"
        for (w_name, spec), value in zip(expected, values):
            error = widget_error(n["type"], w_name, spec, value)
            assert error is None, error


def ui_to_api(wf: dict, classes: dict) -> dict:
    """What the frontend's 'Export (API)' writes for a UI workflow."""
    links = {link[0]: link for link in wf["links"]}
    prompt = {}
    for n in wf["nodes"]:
        if n["type"] in FRONTEND_ONLY:
            continue
        names = [w for w, _ in widget_inputs(classes[n["type"]])]
        inputs = dict(zip(names, n.get("widgets_values", [])))
        for i in n["inputs"]:
            if i["link"] is not None:
                _, src, slot, *_ = links[i["link"]]
                inputs[i["name"]] = [str(src), slot]
        prompt[str(n["id"])] = {"class_type": n["type"], "inputs": inputs}
    return prompt


def test_every_workflow_comes_in_both_formats():
    assert API_FILES and sorted(p.name for p in WORKFLOWS.glob("*.json")) == sorted(UI_FILES + API_FILES)


@pytest.mark.parametrize("ui,api", list(zip(UI_FILES, API_FILES)))
def test_ui_and_api_files_describe_the_same_graph(pack, ui, api):
    expected = ui_to_api(load(ui), node_classes(pack))
    got = {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in load(api).items()}
    assert got == expected


@pytest.mark.parametrize("name", API_FILES)
def test_api_workflow_is_valid(pack, name):
    errors = validate_prompt(load(name), node_classes(pack))
    assert not errors, "\n".join(errors)


def test_validation_catches_bad_workflows(pack):
    """The checks above are not vacuous."""
    classes = node_classes(pack)
    prompt = load("frfsr_basic_api.json")
    bad = copy.deepcopy(prompt)
    bad["6"]["inputs"]["textures"] = ["4", 0]                     # FRFSR_MATCH into FRFSR_TEXTURES
    bad["6"]["inputs"]["tile_size"] = -1
    bad["3"]["inputs"]["model_name"] = "../x.safetensors"
    bad["4"]["inputs"]["reference_mode"] = "every"
    errors = "\n".join(validate_prompt(bad, classes))
    for needle in ("FRFSR_MATCH linked to a FRFSR_TEXTURES", "tile_size: -1 < min 0", "not a plain relative",
                   "'every' not in"):
        assert needle in errors


# ---------------------------------------------------------------------- running the API workflow
LR_SIZE, REF_SIZE = (16, 20), (16, 16)


def _png(path: Path, size: tuple[int, int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray((rng.random((*size, 3)) * 255).astype(np.uint8)).save(path)


def test_workflows_use_the_bundled_weights():
    """A fresh install has frfsr-default and nothing else: every workflow must run on it."""
    for name in API_FILES:
        loaders = [n["inputs"] for n in load(name).values() if n["class_type"].startswith("LoadFRFSR")]
        assert loaders, name
        for inputs in loaders:
            assert inputs.get("model_name", "frfsr-default") == "frfsr-default", name
            assert inputs.get("repo_id", "frfsr/frfsr-default") == "frfsr/frfsr-default", name
        images = {n["inputs"]["image"] for n in load(name).values() if n["class_type"] == "LoadImage"}
        assert images == {"frfsr_lr.png", "frfsr_reference.png"}, name     # the examples the pack installs


@pytest.fixture
def comfy_env(tmp_path, monkeypatch, models_dir):
    """ComfyUI's input folder with two LRs and two References; recorded saves cleared;
    frfsr-default is the tiny model of ``models_dir`` (fast)."""
    from frfsr import hub

    monkeypatch.setattr(hub, "BUNDLED_DIR", models_dir.root / "frfsr-paper")
    inputs = tmp_path / "input"
    inputs.mkdir()
    for i, name in enumerate(["frfsr_lr.png", "frfsr_lr_2.png"]):
        _png(inputs / name, LR_SIZE, i)
    for i, name in enumerate(["frfsr_reference.png", "frfsr_reference_2.png"]):
        _png(inputs / name, REF_SIZE, 10 + i)
    monkeypatch.setattr(LoadImage, "input_dir", inputs)
    monkeypatch.setattr(SaveImage, "saved", [])
    monkeypatch.setattr(PreviewImage, "saved", [])
    return models_dir


def _as_model_input(name: str) -> torch.Tensor:
    arr = np.asarray(Image.open(LoadImage.input_dir / name).convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1)[None]


def test_basic_api_workflow_runs(pack, comfy_env):
    outputs = execute(load("frfsr_basic_api.json"), node_classes(pack))
    h, w = LR_SIZE
    ((prefix, sr),) = SaveImage.saved
    assert prefix == "FRFSR" and sr.shape == (1, 4 * h, 4 * w, 3) and sr.dtype == torch.float32
    assert 0 <= float(sr.min()) and float(sr.max()) <= 1
    previews = {tuple(img.shape) for _, img in PreviewImage.saved}
    assert previews == {(1, h, w, 3), (1, 4 * h, 4 * w, 3)}          # confidence, warped Reference
    assert outputs["4"][1].shape == (1, h, w, 3) and outputs["5"][1].shape == (1, 4 * h, 4 * w, 3)
    with torch.no_grad():
        direct = comfy_env.model(_as_model_input("frfsr_lr.png"), _as_model_input("frfsr_reference.png"))
    torch.testing.assert_close(sr, direct.clamp(0, 1).permute(0, 2, 3, 1), atol=1e-5, rtol=0)


@pytest.mark.parametrize("n_refs", [1, 2])
def test_api_workflow_runs_a_batch_of_two(pack, comfy_env, n_refs):
    """LoadImage x2 -> ImageBatch gives a batch of 2 LRs; one Reference serves both, or a
    batch of 2 References pairs with them one to one."""
    prompt = load("frfsr_basic_api.json")
    prompt["11"] = {"class_type": "LoadImage", "inputs": {"image": "frfsr_lr_2.png"}}
    prompt["12"] = {"class_type": "ImageBatch", "inputs": {"image1": ["1", 0], "image2": ["11", 0]}}
    prompt["4"]["inputs"]["image"] = prompt["6"]["inputs"]["image"] = ["12", 0]
    refs = ["frfsr_reference.png", "frfsr_reference.png"]
    if n_refs == 2:
        prompt["13"] = {"class_type": "LoadImage", "inputs": {"image": "frfsr_reference_2.png"}}
        prompt["14"] = {"class_type": "ImageBatch", "inputs": {"image1": ["2", 0], "image2": ["13", 0]}}
        prompt["4"]["inputs"]["reference"] = ["14", 0]
        refs[1] = "frfsr_reference_2.png"
    execute(prompt, node_classes(pack))
    h, w = LR_SIZE
    ((_, sr),) = SaveImage.saved
    assert sr.shape == (2, 4 * h, 4 * w, 3)
    assert {tuple(img.shape) for _, img in PreviewImage.saved} == {(2, h, w, 3), (2, 4 * h, 4 * w, 3)}
    with torch.no_grad():
        for i, (lr, ref) in enumerate(zip(["frfsr_lr.png", "frfsr_lr_2.png"], refs)):
            direct = comfy_env.model(_as_model_input(lr), _as_model_input(ref)).clamp(0, 1).permute(0, 2, 3, 1)
            torch.testing.assert_close(sr[i:i + 1], direct, atol=1e-5, rtol=0)


def test_upscale_api_workflow_gives_the_basic_workflows_image(pack, comfy_env):
    execute(load("frfsr_basic_api.json"), node_classes(pack))
    execute(load("frfsr_upscale_api.json"), node_classes(pack))
    (_, three_steps), (prefix, one_node) = SaveImage.saved
    assert prefix == "FRFSR" and one_node.shape == (1, 4 * LR_SIZE[0], 4 * LR_SIZE[1], 3)
    torch.testing.assert_close(one_node, three_steps, atol=1e-5, rtol=0)


def test_hub_api_workflow_runs(pack, comfy_env, tmp_path, monkeypatch):
    """The Hub variant downloads config.json + model.safetensors of the workflow's repo id."""
    import huggingface_hub

    prompt = load("frfsr_hub_api.json")
    loader = prompt["3"]["inputs"]
    snapshot = tmp_path / "hub_snapshot"
    save_tiny_model(snapshot)
    requests = []

    def fake_download(repo_id, filename, *, revision=None, **kw):
        requests.append((repo_id, filename, revision))
        return str(snapshot / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    execute(prompt, node_classes(pack))
    assert {(r, f) for r, f, _ in requests} == {(loader["repo_id"], "config.json"), (loader["repo_id"], "model.safetensors")}
    assert {rev for *_, rev in requests} == {loader["revision"]}
    ((_, sr),) = SaveImage.saved
    assert sr.shape == (1, 4 * LR_SIZE[0], 4 * LR_SIZE[1], 3)
