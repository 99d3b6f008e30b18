"""The Comfy Registry metadata: LICENSE, and pyproject.toml as ComfyUI 0.8.0's own
``comfy_config`` parser reads it (run in the 0.8.0 test server's environment, which has
pydantic-settings), plus the ComfyUI requirements and the package's dependencies agreeing."""
from __future__ import annotations

import json
import re
import subprocess
import tomllib

import pytest

import comfy_server as cs
from test_comfy_nodes import REPO_ROOT

PARSE = """
import json, sys
sys.path.insert(0, sys.argv[1])
from comfy_config import config_parser
c = config_parser.extract_node_configuration(sys.argv[2])
print(json.dumps({"project": c.project.model_dump(), "comfy": c.tool_comfy.model_dump()}))
"""


def _names(lines) -> list[str]:
    return [re.split(r"[<>=!~;\[ ]", x.strip(), maxsplit=1)[0].lower() for x in lines
            if x.strip() and not x.strip().startswith("#")]


def test_license_is_mit():
    text = (REPO_ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "Copyright (c) frfsr contributors" in text
    assert "WITHOUT WARRANTY OF ANY KIND" in text


def test_pyproject_as_comfyui_0_8_0_reads_it():
    why = cs.missing(cs.BUILD_080)
    if why:
        pytest.skip(why)
    install = cs.prepare(cs.BUILD_080)
    out = subprocess.run([str(install.python), "-c", PARSE, str(install.comfyui), str(REPO_ROOT)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    config = json.loads(out.stdout.strip().splitlines()[-1])
    project, comfy = config["project"], config["comfy"]
    assert project["name"] == "frfsr" and project["description"]
    assert project["supported_comfyui_version"].startswith(">=")             # requires-comfyui
    assert comfy["publisher_id"] and comfy["display_name"]
    assert comfy["icon"].startswith("https://") and comfy["icon"].endswith("/docs/images/icon.png")
    assert (REPO_ROOT / "docs" / "images" / "icon.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert project["license"]["file"] == "LICENSE"
    assert project["urls"]["repository"]
    # the Registry's accelerator list: non-empty (its parser empties it for a classifier it does
    # not know; it has no CPU entry, so CPU support is stated in the docs, not here)
    assert "GPU :: NVIDIA CUDA" in project["supported_accelerators"]
    assert project["supported_os"] == ["OS Independent"]
    # what the Registry installs is what ComfyUI installers read from requirements.txt
    assert _names(project["dependencies"]) == _names((REPO_ROOT / "requirements.txt").read_text().splitlines())


def test_torch_is_an_extra_not_a_dependency():
    meta = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    assert "torch" not in _names(meta["dependencies"])
    assert _names(meta["optional-dependencies"]["torch"]) == ["torch"]
    assert "frfsr[torch]" in meta["optional-dependencies"]["test"]
