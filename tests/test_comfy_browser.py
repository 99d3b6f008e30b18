"""The UI workflows in the frontend that ComfyUI 0.8.0 serves (comfyui-frontend-package 1.35.9),
in headless Chromium driven over the DevTools protocol (the websocket client of
tests/comfy_server.py; no browser-automation package).

One page, on the 0.8.0 server shared with tests/test_comfy_server.py: every UI workflow in
workflows/ is loaded into the graph; no node type may be missing, no JavaScript exception
may be raised (nor an error logged to the console), and ``app.graphToPrompt()`` must give the workflow's API twin; then the
one-node workflow is queued from the page and its image awaited. The canvas is captured
(``FRFSR_WRITE_SCREENSHOT=1`` writes it to docs/images/, where docs/comfyui.md shows it).

Chromium: Debian's ``chromium`` (``.ci/run`` installs it when missing); without it the test
is skipped.
"""
from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from comfy_server import BUILD_080, WebSocket
from test_comfy_nodes import REPO_ROOT

WORKFLOWS = REPO_ROOT / "workflows"
UI_FILES = sorted(p.name for p in WORKFLOWS.glob("*.json") if not p.name.endswith("_api.json"))
SCREENSHOT = REPO_ROOT / "docs" / "images" / "comfyui-upscale-workflow.png"
FRONTEND_ONLY = {"Note", "MarkdownNote"}
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--remote-debugging-port=0", "--window-size=1500,820", "--hide-scrollbars"]
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


class DevTools:
    """A Chromium page over the DevTools protocol: commands, and the events seen meanwhile."""

    def __init__(self, ws_url: str):
        host_port, path = ws_url[len("ws://"):].split("/", 1)
        host, port = host_port.split(":")
        self.ws = WebSocket(host, int(port), "/" + path, timeout=60)
        self.ids = itertools.count(1)
        self.events: list[dict] = []

    def call(self, method: str, timeout: float = 60, **params):
        mid = next(self.ids)
        self.ws.send_text(json.dumps({"id": mid, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        for msg in self.ws.messages(timeout):
            if msg.get("id") == mid:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)
            if time.monotonic() > deadline:
                break
        raise TimeoutError(f"{method}: no answer within {timeout} s")

    def js(self, expression: str, timeout: float = 60):
        """Evaluate ``expression`` (awaited when it is a promise) and return its JSON value."""
        res = self.call("Runtime.evaluate", timeout, expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in res:
            raise RuntimeError(f"{expression[:200]}: {json.dumps(res['exceptionDetails'])[:2000]}")
        return res["result"].get("value")

    def wait_for(self, expression: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.js(f"Boolean({expression})"):
                return
            time.sleep(0.25)
        raise TimeoutError(f"{expression} was not true within {timeout} s")

    def exceptions(self) -> list[str]:
        """JavaScript exceptions thrown, and errors logged to the console, so far."""
        return [json.dumps(e["params"])[:1500] for e in self.events
                if e["method"] == "Runtime.exceptionThrown"
                or (e["method"] == "Runtime.consoleAPICalled" and e["params"].get("type") == "error")]

    def close(self) -> None:
        self.ws.close()


@pytest.fixture(scope="module")
def server(comfy_servers):
    return comfy_servers(BUILD_080)


@pytest.fixture(scope="module")
def page(server):
    exe = chromium()
    if exe is None:
        pytest.skip("no chromium on this machine (Debian: apt-get install chromium; .ci/run installs it)")
    # settings the frontend reads on start: no first-run template browser over the canvas
    for key, value in {"Comfy.TutorialCompleted": True, "Comfy.Workflow.ShowMissingNodesWarning": True,
                       "Comfy.Minimap.Visible": False}.items():
        status, _ = server.request(f"/settings/{key}", value)
        assert status == 200
    profile = tempfile.mkdtemp(prefix="frfsr-chromium-")
    proc = subprocess.Popen([exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    devtools = None
    try:
        port_file = Path(profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.is_file() and port_file.read_text().strip()):
            assert proc.poll() is None, f"chromium exited with {proc.returncode}"
            assert time.monotonic() < deadline, "chromium did not open its DevTools port"
            time.sleep(0.2)
        port = int(port_file.read_text().split()[0])
        with NO_PROXY.open(f"http://127.0.0.1:{port}/json/list", timeout=30) as r:
            target = next(t for t in json.loads(r.read()) if t["type"] == "page")
        devtools = DevTools(target["webSocketDebuggerUrl"])
        devtools.call("Runtime.enable")
        devtools.call("Page.enable")
        devtools.call("Emulation.setDeviceMetricsOverride", width=1500, height=860, deviceScaleFactor=1, mobile=False)
        devtools.call("Page.navigate", url=server.url + "/")
        devtools.wait_for("window.app && window.app.graph && window.LiteGraph && "
                          "LiteGraph.registered_node_types['FRFSRUpscale'] && document.querySelector('canvas')", 120)
        yield devtools
    finally:
        if devtools is not None:
            devtools.close()
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(15)
        shutil.rmtree(profile, ignore_errors=True)


def _api_twin(name: str) -> dict:
    return json.loads((WORKFLOWS / name.replace(".json", "_api.json")).read_text())


def test_every_ui_workflow_loads_and_gives_its_api_twin(page):
    for name in UI_FILES:
        workflow = json.loads((WORKFLOWS / name).read_text())
        page.js(f"app.loadGraphData({json.dumps(workflow)})")
        missing = page.js("app.graph._nodes.map(n => n.type).filter(t => !LiteGraph.registered_node_types[t])")
        assert missing == [], f"{name}: node types missing in the frontend: {missing}"
        assert page.js("app.graph._nodes.length") == len(workflow["nodes"]), name
        prompt = page.js("app.graphToPrompt().then(p => p.output)")
        assert prompt == _api_twin(name), f"{name}: graphToPrompt differs from its API twin:\n{json.dumps(prompt)[:3000]}"
    assert page.exceptions() == [], "\n".join(page.exceptions())


FIT_VIEW = """(() => {
  const nodes = app.graph._nodes, c = app.canvas.canvas, top = 50;
  const x0 = Math.min(...nodes.map(n => n.pos[0])), y0 = Math.min(...nodes.map(n => n.pos[1] - 32));
  const x1 = Math.max(...nodes.map(n => n.pos[0] + n.size[0])), y1 = Math.max(...nodes.map(n => n.pos[1] + n.size[1]));
  const w = c.clientWidth - 60, h = c.clientHeight - top - 20;
  const s = Math.min(w / (x1 - x0 + 40), h / (y1 - y0 + 40), 1.25);
  app.canvas.ds.scale = s;
  app.canvas.ds.offset = [60 / s + (w / s - (x1 - x0)) / 2 - x0, top / s + (h / s - (y1 - y0)) / 2 - y0];
  app.graph.setDirtyCanvas(true, true);
})()"""


def test_a_workflow_queued_from_the_page_saves_its_image(page, server):
    name = "frfsr_upscale.json"
    page.js(f"app.loadGraphData({json.dumps(json.loads((WORKFLOWS / name).read_text()))})")
    writing = os.environ.get("FRFSR_WRITE_SCREENSHOT") == "1"
    if writing:            # the picture for the docs: the bundled demo pair at full size (slower)
        from frfsr.demo import ASSETS
        for asset, target, title in (("lr.png", "frfsr_demo_lr.png", "LR image"),
                                     ("ref.png", "frfsr_demo_reference.png", "Reference image")):
            shutil.copyfile(ASSETS / asset, server.input / target)
            page.js(f"(() => {{ const n = app.graph._nodes.find(n => n.type === 'LoadImage' && "
                    f"n.title.startsWith({json.dumps(title)})); n.widgets[0].value = {json.dumps(target)}; "
                    "n.widgets[0].callback?.(n.widgets[0].value); })()")
    before = set(server.get("/history"))
    page.js("app.queuePrompt(0, 1)")
    deadline, done = time.monotonic() + 600, None
    while done is None and time.monotonic() < deadline:
        time.sleep(0.5)
        done = next((h for pid, h in server.get("/history").items()
                     if pid not in before and h.get("status", {}).get("completed")), None)
    assert done is not None, "the prompt queued from the page did not finish"
    assert done["status"]["status_str"] == "success", done["status"]
    (image,) = [img for out in done["outputs"].values() for img in out.get("images", []) if img["type"] == "output"]
    assert (server.output / image.get("subfolder", "") / image["filename"]).is_file()
    # the page got it too: the Save Image node shows the output
    page.wait_for("Object.values(app.nodeOutputs || {}).some(o => (o.images || []).some("
                  f"i => i.filename === {json.dumps(image['filename'])}))", 30)
    time.sleep(1.0)                  # let the canvas draw the image
    page.js(FIT_VIEW)
    time.sleep(0.5)
    shot = base64.b64decode(page.call("Page.captureScreenshot", format="png")["data"])
    assert shot[:8] == b"\x89PNG\r\n\x1a\n" and len(shot) > 20_000
    if writing:
        SCREENSHOT.parent.mkdir(exist_ok=True)
        SCREENSHOT.write_bytes(shot)
    assert page.exceptions() == [], "\n".join(page.exceptions())


def test_the_screenshot_is_in_the_docs():
    assert SCREENSHOT.is_file() and SCREENSHOT.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    doc = (REPO_ROOT / "docs" / "comfyui.md").read_text()
    assert f"({SCREENSHOT.relative_to(REPO_ROOT / 'docs').as_posix()})" in doc
