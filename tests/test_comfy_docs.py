"""docs/comfyui.md says what the nodes are: its table of each node's inputs (name, type,
optional or not, choices, default, range) and its list of outputs, compared with what a
running ComfyUI 0.8.0 serves in /object_info (the server shared with tests/test_comfy_server.py)
and with the node definitions themselves (no server needed)."""
from __future__ import annotations

import re


from comfy_server import BUILD_080
from test_comfy_nodes import REPO_ROOT, get_pack
from test_comfy_server import served_input

DOC = (REPO_ROOT / "docs" / "comfyui.md").read_text()
DYNAMIC = {("LoadFRFSR", "model_name")}            # the list of the user's files


def documented() -> dict[str, dict]:
    """node id -> {"display": ..., "inputs": [(name, row cells)], "outputs": [(name, type)]}."""
    nodes = {}
    for m in re.finditer(r"^#### ([^\n]+) \(`(\w+)`\)\n(.*?)(?=^#### |^### |\Z)", DOC, flags=re.M | re.S):
        display, node_id, body = m.groups()
        rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in body.splitlines()
                if line.startswith("| `")]
        outputs = re.search(r"^Outputs: (.*)\.$", body, flags=re.M)
        nodes[node_id] = {"display": display, "inputs": [(r[0].strip("`"), r) for r in rows],
                          "outputs": re.findall(r"`(\w+)` \((\w+)\)", outputs.group(1)) if outputs else []}
    return nodes


def _number(text: str) -> float:
    return float(text)


def check(node_id: str, doc: dict, info: dict) -> None:
    """One node's documentation against its /object_info entry (V1 or V3 form)."""
    assert doc["display"] == info["display_name"], node_id
    assert doc["outputs"] == list(zip(info["output_name"], info["output"])), node_id
    served = [(name, section, served_input(spec)) for section in ("required", "optional")
              for name, spec in info["input"].get(section, {}).items()]
    assert [n for n, _ in doc["inputs"]] == [n for n, _, _ in served], f"{node_id}: inputs or their order differ"
    for (name, cells), (_, section, spec) in zip(doc["inputs"], served):
        kind, values = cells[1], cells[2]
        assert kind.endswith(" (optional)") == (section == "optional"), (node_id, name, kind)
        kind = kind.removesuffix(" (optional)")
        assert kind == ("choice" if spec["type"] == "COMBO" else spec["type"]), (node_id, name, kind, spec["type"])
        if spec["type"] == "COMBO" and (node_id, name) not in DYNAMIC:
            listed = values.split(";")[0]
            assert re.findall(r"`([^`]+)`", listed) == [str(v) for v in spec["options"]], (node_id, name, values)
        if "default" in spec and (node_id, name) not in DYNAMIC:
            default = re.search(r"default (`[^`]*`|empty)", values)
            assert default, (node_id, name, values)
            text = "" if default.group(1) == "empty" else default.group(1).strip("`")
            if spec["type"] in ("INT", "FLOAT"):
                assert _number(text) == spec["default"], (node_id, name)
            else:
                assert text == str(spec["default"]), (node_id, name, text, spec["default"])
        if spec["type"] in ("INT", "FLOAT"):
            lo, hi, step = re.match(r"([\d.]+) to ([\d.]+), step ([\d.]+)", values).groups()
            assert (_number(lo), _number(hi), _number(step)) == (spec["min"], spec["max"], spec["step"]), (node_id, name)


def test_every_node_is_documented():
    assert set(documented()) == set(get_pack().NODE_CLASS_MAPPINGS)


def test_the_docs_match_the_node_definitions():
    pack = get_pack()
    for node_id, doc in documented().items():
        cls = pack.NODE_CLASS_MAPPINGS[node_id]
        info = {"display_name": pack.NODE_DISPLAY_NAME_MAPPINGS[node_id], "input": cls.input_spec(),
                "output": list(cls.RETURN_TYPES), "output_name": list(cls.RETURN_NAMES)}
        check(node_id, doc, info)


def test_the_docs_match_what_comfyui_0_8_0_serves(comfy_servers):
    server = comfy_servers(BUILD_080)
    info = server.get("/object_info")
    for node_id, doc in documented().items():
        check(node_id, doc, info[node_id])
